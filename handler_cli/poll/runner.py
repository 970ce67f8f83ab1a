"""One pass of the poll: waiting tickets → their documents → new replies → `decide` → act.

Actions an earlier pass began are finished first (`resume`), then each waiting ticket's new
replies are read and acted on oldest first; a ticket with none gets its follow-up (reminder,
stale); last, validated requests still without their subtask get step 6 again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from handler_cli.config import ConfigError
from handler_cli.poll.actions import act, alert_admin, keep_files
from handler_cli.poll.decide import (
    AWAITING_CLIENT,
    DECIDED_STATUSES,
    UNCLEAR,
    WAITING_STATUSES,
    Plan,
    Reading,
    assess_with,
    decide,
    simulate,
)
from handler_cli.poll.follow_up import follow_up, retry_subtasks
from handler_cli.poll.journal import UNREAD, Begun, HandledIndex
from handler_cli.poll.report import PollReport, TicketOutcome
from handler_cli.services import ServiceError

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document
    from handler_cli.poll.journal import PollJournal
    from handler_cli.replies import Reply, ReplySource
    from handler_cli.services import LLM, WaitingTicket

log = logging.getLogger("handler_cli")

DEFAULT_LOOKBACK = timedelta(days=90)


def read_reply(text: str, llm: LLM | None) -> Reading:
    """The intent of a reply already stripped of its quoted history."""
    from handler_cli.intent import read_intent

    result = read_intent(text, llm=llm)
    # The contract with the reader: "unclear" when it cannot tell and no LLM settled it. A
    # keyword guess it kept without confidence (method "fallback") is read the same way: no
    # ticket is validated or closed on a guess.
    unsure = str(result.intent) == UNCLEAR or str(result.method) == "fallback"
    return Reading(UNCLEAR if unsure else str(result.intent), float(result.confiance),
                   str(result.method))


def next_step(ctx: Context, ticket_id: str) -> str:
    """What the next poll does with a new message on this ticket: "act" (it waits for the
    client), "forward" (the admin gets it: decided and still watched, or the admin's to
    price) or "nothing" (decided by hand, or quiet for longer than the watch)."""
    status = ctx.crm.get_ticket(ticket_id).get("validation_status", "")
    if status in AWAITING_CLIENT:
        return "act"
    if status == "pending_admin":
        return "forward"
    if status in DECIDED_STATUSES:
        since = ctx.now() - timedelta(days=ctx.settings.handler_watch_decided_days)
        if any(t == ticket_id for t, _, _ in ctx.journal.decided_since(since)):
            return "forward"
    return "nothing"


class Poller:
    """One pass of the poll. Build it, call `run()`; `dry_run` decides without doing."""

    def __init__(self, ctx: Context, *, dry_run: bool = False,
                 sources: Sequence[ReplySource] | None = None,
                 journal: PollJournal | None = None) -> None:
        self.ctx = ctx
        self.dry_run = dry_run
        self._sources = sources
        self.journal: PollJournal = journal or ctx.journal
        self.report = PollReport(dry_run=dry_run)

    def run(self) -> PollReport:
        from handler_cli.replies import build_sources

        sources = list(self._sources) if self._sources is not None else build_sources(self.ctx)
        done = self._resume()
        try:
            waiting = self.ctx.crm.waiting_tickets(WAITING_STATUSES)
        except ServiceError as exc:
            self.report.fail(f"cannot list the waiting tickets: {exc}")
            waiting = []
        waiting = [*waiting, *self._watched_decided({t.ticket_id for t in waiting})]
        docs = self._documents(waiting)
        known = [t for t in waiting if t.ticket_id in docs]
        self.report.watched = len([t for t in known if t.validation_status in DECIDED_STATUSES])
        self.report.waiting = len(known) - self.report.watched
        if self.report.orphans:
            log.warning("poll: %d waiting ticket(s) have no request document in %s (e.g. %s); "
                        "their replies are left for the team", len(self.report.orphans),
                        self.ctx.settings.data_dir, ", ".join(self.report.orphans[:5]))

        handled = HandledIndex(self.journal, known)
        for ticket in known:  # not read from the CRM: their handled property is unknown here
            if ticket.validation_status in DECIDED_STATUSES:
                handled.tokens.pop(ticket.ticket_id, None)
        replies, owner = self._fetch(sources, known, handled, docs)
        self.report.replies = sum(len(r) for r in replies.values())
        for ticket in known:
            found = replies.get(ticket.ticket_id)
            if found:
                self._answer(ticket, docs[ticket.ticket_id], found, handled, owner)
                done.add(ticket.ticket_id)
            elif ticket.ticket_id not in done and ticket.validation_status in AWAITING_CLIENT:
                doc = docs[ticket.ticket_id]
                try:
                    follow_up(self.ctx, self.report, ticket, doc, handled)
                except ConfigError:
                    raise
                except Exception as exc:
                    outcome = self.report.outcome(ticket.ticket_id, doc.request_id,
                                                  ticket.validation_status)
                    self._isolate(outcome, exc, None)
        retry_subtasks(self.ctx, self.report, done)
        return self.report

    def _watched_decided(self, waiting: set[str]) -> list[WaitingTicket]:
        """Tickets the poll decided (validated, rejected) and still watches: a message on
        them goes to the admin. Watched until `HANDLER_WATCH_DECIDED_DAYS` after the last
        exchange, from the journal: the CRM is not searched for them, so a quiet pass costs
        no more HubSpot calls than before (their e-mails are read in the same batches)."""
        from handler_cli.services import WaitingTicket

        since = self.ctx.now() - timedelta(days=self.ctx.settings.handler_watch_decided_days)
        found: list[WaitingTicket] = []
        for ticket_id, request_id, status in self.journal.decided_since(since):
            if ticket_id not in waiting:
                found.append(WaitingTicket(ticket_id=ticket_id, request_id=request_id,
                                           validation_status=status, properties={},
                                           updated_at=self.ctx.now()))
        return found

    def _documents(self, waiting: Sequence[WaitingTicket]) -> dict[str, Document]:
        """The request document behind each waiting ticket (one that cannot be read is that
        ticket's failure alone)."""
        docs: dict[str, Document] = {}
        for ticket in waiting:
            try:
                doc = self.ctx.documents.by_ticket(ticket.ticket_id) or (
                    self.ctx.documents.get(ticket.request_id) if ticket.request_id else None)
            except ConfigError:
                raise
            except Exception as exc:
                outcome = self.report.outcome(ticket.ticket_id, ticket.request_id or "",
                                              ticket.validation_status)
                self._isolate(outcome, exc, None)
                continue
            if doc is None:
                self.report.orphans.append(ticket.ticket_id)
            else:
                docs[ticket.ticket_id] = doc
        return docs

    def _isolate(self, outcome: TicketOutcome, exc: Exception, entry: Begun | None) -> None:
        """An unexpected failure on one ticket (a bug, a poison pill) stays that ticket's: the
        error is recorded (outcome, journal, document), the admin is told once, the run goes
        on with the other tickets and exits 1.

        A reply it happened on is parked in the journal: the admin's e-mail carries it, so it
        is in front of a person, and the next passes do not stumble on it again.
        """
        error = f"unexpected {type(exc).__name__}: {exc}"
        log.debug("poll: ticket %s", outcome.ticket_id, exc_info=True)
        outcome.error = error
        self.report.fail(f"ticket {outcome.ticket_id}: {error}")
        if self.dry_run:
            return
        if entry is not None:
            self.journal.park(entry, error, self.ctx.now())
        try:
            alert_admin(self.ctx, outcome.ticket_id, outcome.request_id,
                        entry.reply if entry else None, error)
        except Exception as alert_exc:  # noqa: BLE001 - the run must go on; logged and counted
            self.report.fail(f"ticket {outcome.ticket_id}: the admin could not be told: "
                             f"{type(alert_exc).__name__}: {alert_exc}")

    def _fetch(
        self, sources: Sequence[ReplySource], waiting: Sequence[WaitingTicket],
        handled: HandledIndex, docs: dict[str, Document],
    ) -> tuple[dict[str, list[Reply]], dict[str, ReplySource]]:
        """New replies per ticket from every source, oldest first, each reply once."""
        if not waiting:
            return {}, {}
        firsts = [e.sent_at for d in docs.values() for _, e in d.asking_emails()]
        since = min(firsts) if firsts else self.ctx.now() - DEFAULT_LOOKBACK
        merged: dict[str, dict[str, Reply]] = {}
        owner: dict[str, ReplySource] = {}
        for source in sources:
            try:
                found = source.fetch(waiting, handled, since)
            except ServiceError as exc:
                self.report.fail(f"reply source {source.name}: {exc}")
                continue
            for ticket_id, replies in found.items():
                for reply in replies:
                    if reply.key not in merged.setdefault(ticket_id, {}):
                        merged[ticket_id][reply.key] = reply
                        owner[reply.key] = source
        return ({t: sorted(r.values(), key=lambda x: x.at) for t, r in merged.items() if r},
                owner)

    def _answer(self, ticket: WaitingTicket, doc: Document, replies: list[Reply],
                handled: HandledIndex, owner: dict[str, ReplySource]) -> None:
        outcome = self.report.outcome(ticket.ticket_id, doc.request_id, ticket.validation_status)
        # The CRM is the truth: an admin may have moved the ticket since the document was kept.
        doc.validation_status = ticket.validation_status  # type: ignore[assignment]
        if ticket.properties.get("credits_estimes", "").isdigit():
            doc.credits_estimes = int(ticket.properties["credits_estimes"])
        for reply in replies:
            entry = Begun(reply, doc.request_id, UNREAD, Reading("", 0.0, ""), "", False)
            try:
                if self.dry_run:
                    plan = self._plan(doc, reply)
                    simulate(doc, plan)
                    outcome.actions.append(plan.describe(reply))
                    continue
                # The files first: what is decided depends on what we could keep.
                kept = keep_files(self.ctx, doc, reply)
                plan = self._plan(doc, kept)
                entry = Begun(kept, doc.request_id, plan.action, plan.reading, plan.text,
                              plan.forward)
                self.journal.begin(entry, self.ctx.now())
                outcome.actions.append(
                    act(self.ctx, self.journal, self.report, doc, kept, plan, handled))
                owner[reply.key].acknowledge(reply)
            except ServiceError as exc:
                outcome.error = str(exc)
                self.report.fail(f"ticket {ticket.ticket_id}: {exc}; the next poll finishes it")
                break  # later replies wait: they may depend on this one
            except ConfigError:
                raise
            except Exception as exc:  # a bug must not stop the other tickets
                self._isolate(outcome, exc, entry)
                break
        outcome.status = doc.validation_status or outcome.status
        outcome.clickup_subtask_id = doc.clickup_subtask_id

    def _resume(self) -> set[str]:
        """Finish the actions an earlier pass began and did not end (crash, backend down)."""
        resumed: set[str] = set()
        for begun in self.journal.unfinished():
            reply = begun.reply
            outcome = TicketOutcome(reply.ticket_id, begun.request_id, "", "",
                                    dry_run=self.dry_run)
            try:
                doc = self.ctx.documents.by_ticket(reply.ticket_id)
                if doc is None:
                    self.report.fail(f"ticket {reply.ticket_id}: cannot finish the action on "
                                     f"reply {reply.key}: no request document")
                    continue
                outcome = self.report.outcome(reply.ticket_id, doc.request_id,
                                              doc.validation_status or "")
                resumed.add(reply.ticket_id)
                plan = Plan(begun.action, begun.reading, begun.text, forward=begun.forward)
                if plan.action == "info":
                    plan.assessment = assess_with(doc, plan.text, reply)
                if self.dry_run:
                    outcome.actions.append({**plan.describe(reply), "resumed": True})
                    continue
                outcome.actions.append(
                    {**act(self.ctx, self.journal, self.report, doc, reply, plan, None),
                     "resumed": True})
                outcome.status = doc.validation_status or outcome.status
                outcome.clickup_subtask_id = doc.clickup_subtask_id
            except ServiceError as exc:
                outcome.error = str(exc)
                self.report.fail(f"ticket {reply.ticket_id}: still cannot finish: {exc}")
            except ConfigError:
                raise
            except Exception as exc:  # a bug must not stop the other tickets
                if outcome not in self.report.outcomes:
                    self.report.outcomes.append(outcome)
                self._isolate(outcome, exc, begun)
        return resumed

    def _plan(self, doc: Document, reply: Reply) -> Plan:
        """Read the reply (the one outside call: the LLM may be asked), then `decide`."""
        from handler_cli.intent import strip_quoted

        text = strip_quoted(reply.text).strip()
        return decide(doc, reply, text, read_reply(text, self.ctx.llm))
