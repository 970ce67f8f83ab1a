"""The poll: tickets waiting for the client, their new replies, understood and acted on.

One pass, run by cron (`handler-cli poll`):

1. the waiting tickets (`pending_credits`, `pending_info`, `pending_admin`) from the CRM, the
   watched ones (tickets the client is not asked about: support requests, decided by the
   poll or by hand, that this installation touched within `HANDLER_WATCH_DECIDED_DAYS`:
   from the documents store and the journal), and the request document behind each;
2. their new replies, from every configured source (HubSpot, IMAP, `.eml` folder, local CRM);
3. each reply, quoted history stripped, read for its intent and acted on exactly once:
   validation → `validated`, step 6, admin told, client confirmed; refusal → `rejected`, admin
   told; question or unsure reading → forwarded to the admin; missing information brought →
   analysed again; any message on a ticket the client is not asked about (pending_admin,
   validated, rejected, a support request, a status set by hand) → forwarded to the admin;
4. tickets with no reply: one reminder after `HANDLER_REMIND_DAYS`, the admin told after
   `HANDLER_STALE_DAYS`;
5. validated requests whose ClickUp subtask failed earlier: step 6 again.

Exactly once: before acting on a reply the poll writes it in its journal (`poll.sqlite3` in
the data dir) as begun, with what it decided; it ends with one CRM update that moves the status
and records the reply in the ticket's `handler_replies_handled`, then marks the journal entry
done. Every e-mail goes through `send_once`, the subtask through its ledger key, so a pass
that dies half-way is finished by the next one (journal entries still "acting" are resumed
first) and each effect is found done instead of repeated. A file lock keeps two overlapping
runs from acting at once.

The modules: `decide` (the rules, pure), `actions` (carrying a decision out), `follow_up`
(no reply; subtask retries), `journal` (exactly once), `report` (what an operator sees),
`runner` (the pass).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from handler_cli.poll.decide import (
    DECIDED_STATUSES,
    WAITING_STATUSES,
    Plan,
    Reading,
    complemented,
    decide,
    question_kind,
)
from handler_cli.poll.journal import (
    HANDLED_PROPERTY,
    HANDLED_PROPERTY_LIMIT,
    UNREAD,
    Begun,
    HandledIndex,
    Journal,
    PollJournal,
    parse_tokens,
)
from handler_cli.poll.report import PollReport, TicketOutcome
from handler_cli.poll.runner import Poller, next_step, read_reply, watched_tickets

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.replies import ReplySource

log = logging.getLogger("handler_cli")


@contextmanager
def poll_lock(data_dir: Path) -> Iterator[str | None]:
    """Hold `poll.lock` in the data dir; yield None when held, else who holds it."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "poll.lock"
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            yield holder
            return
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            yield None
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def poll(ctx: Context, *, dry_run: bool = False, retry_failed: bool = False,
         sources: Sequence[ReplySource] | None = None) -> PollReport:
    """One pass under the lock (a dry run takes no lock: it changes nothing).

    `retry_failed` first gives the replies parked after an unexpected failure back to the
    pass (once their cause is fixed).
    """
    if dry_run:
        return Poller(ctx, dry_run=True, sources=sources).run()
    with ctx.storage.poll_lock() as holder:  # a file lock, or one across machines
        if holder is not None:
            return PollReport(locked_by=holder)
        poller = Poller(ctx, sources=sources)
        if retry_failed:
            count = poller.journal.retry_failed()
            log.info("poll: %d parked repl(ies) given back to this pass", count)
        report = poller.run()
        from handler_cli.retention import prune_after_poll  # personal data past retention

        problem = prune_after_poll(ctx)
        if problem:
            report.fail(problem)
        return report


__all__ = [
    "DECIDED_STATUSES", "HANDLED_PROPERTY", "HANDLED_PROPERTY_LIMIT", "WAITING_STATUSES",
    "Begun", "HandledIndex", "Journal", "Plan", "PollJournal", "PollReport", "Poller",
    "Reading", "TicketOutcome", "UNREAD", "complemented", "decide", "next_step",
    "parse_tokens", "poll", "poll_lock", "question_kind", "read_reply", "watched_tickets",
]
