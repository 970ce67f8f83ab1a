"""One pass of the poll: waiting tickets → their documents → new replies → `decide` → act.

Actions an earlier pass began are finished first (`resume`), then each waiting ticket's new
replies are read and acted on oldest first; a ticket with none gets its follow-up (reminder,
stale); last, validated requests still without their subtask get step 6 again.

Besides the tickets the CRM lists as waiting, the pass reads the *watched* ones: tickets the
client is not asked about (a support request, decided by the poll or by hand) that this
installation touched within `HANDLER_WATCH_DECIDED_DAYS`; whatever the client writes there
goes to the admin (`watched_tickets`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from handler_cli.config import ConfigError
from handler_cli.poll.actions import act, alert_admin, keep_files
from handler_cli.poll.decide import (
    AWAITING_CLIENT,
    STATUSES,
    UNCLEAR,
    WAITING_STATUSES,
    Plan,
    Reading,
    assess_with,
    decide,
    simulate,
)
from handler_cli.poll.follow_up import follow_up, retry_subtasks
from handler_cli.poll.journal import HANDLED_PROPERTY, UNREAD, Begun, HandledIndex
from handler_cli.poll.report import PollReport, TicketOutcome
from handler_cli.services import ServiceError

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document
    from handler_cli.poll.journal import PollJournal
    from handler_cli.replies import Reply, ReplySource
    from handler_cli.services import LLM, WaitingTicket
    from handler_cli.storage import SavedTicket

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


def watch_start(ctx: Context) -> datetime | None:
    """Since when a ticket the client is not asked about is still read: its last activity
    must be this recent (`HANDLER_WATCH_DECIDED_DAYS`); None when the watch is off (0)."""
    days = ctx.settings.handler_watch_decided_days
    return ctx.now() - timedelta(days=days) if days > 0 else None


def watched_tickets(ctx: Context, journal: PollJournal, since: datetime) -> dict[str, SavedTicket]:
    """Every ticket this installation touched since `since`, by id, as it last knew it: a
    request saved with its ticket (the documents store: the ticket step, a client e-mail, a
    reminder, a reply handled) or decided by the poll (the journal, whose status wins).

    Neither is a CRM call, so a quiet pass costs no more of them: the watched tickets' e-mails
    are read in the same batches as the waiting ones'. Which of them are really watched is
    the caller's: the tickets the CRM lists as waiting are read as such.
    """
    from handler_cli.storage import SavedTicket

    found = {t.ticket_id: t for t in ctx.documents.tickets_saved_since(since)}
    for ticket_id, request_id, status in journal.decided_since(since):
        saved = found.get(ticket_id)
        found[ticket_id] = SavedTicket(ticket_id, request_id, status,
                                       saved.contact_id if saved else None)
    return found


def next_step(ctx: Context, ticket_id: str) -> str:
    """What the next poll does with a new message on this ticket: "act" (it waits for the
    client), "forward" (the admin gets it: the admin's to price, or not asked about and
    still watched: a support request, decided by the poll or by hand) or "nothing" (quiet
    for longer than the watch, or no request document here)."""
    status = ctx.crm.get_ticket(ticket_id).get("validation_status", "")
    if ctx.documents.by_ticket(ticket_id) is None:
        return "nothing"  # the poll has nothing to read it with (docs/poll.md)
    if status in AWAITING_CLIENT:
        return "act"
    if status == "pending_admin":
        return "forward"
    since = watch_start(ctx)
    if since is not None and ticket_id in watched_tickets(ctx, ctx.journal, since):
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
        self.watched: set[str] = set()  # tickets read though the CRM did not list them

    def run(self) -> PollReport:
        from handler_cli.replies import build_sources

        sources = list(self._sources) if self._sources is not None else build_sources(self.ctx)
        done = self._resume()
        listed = True
        try:
            waiting = self.ctx.crm.waiting_tickets(WAITING_STATUSES)
        except ServiceError as exc:
            self.report.fail(f"cannot list the waiting tickets: {exc}")
            waiting, listed = [], False
        waiting = [*waiting, *self._watched({t.ticket_id for t in waiting}, listed)]
        docs = self._documents(waiting)
        known = [t for t in waiting if t.ticket_id in docs]
        self.report.watched = len([t for t in known if t.ticket_id in self.watched])
        self.report.waiting = len(known) - self.report.watched
        if self.report.orphans:
            log.warning("poll: %d waiting ticket(s) have no request document in %s (e.g. %s); "
                        "their replies are left for the team", len(self.report.orphans),
                        self.ctx.settings.data_dir, ", ".join(self.report.orphans[:5]))

        handled = HandledIndex(self.journal, known)
        for ticket_id in self.watched:  # not read from the CRM: their property is unknown here
            handled.tokens.pop(ticket_id, None)
        replies, owner = self._fetch(sources, known, handled, docs)
        self.report.replies = sum(len(r) for r in replies.values())
        for ticket in known:
            found = replies.get(ticket.ticket_id)
            if found:
                self._answer(ticket, docs[ticket.ticket_id], found, handled, owner)
                done.add(ticket.ticket_id)
            elif (ticket.ticket_id not in done and ticket.ticket_id not in self.watched
                  and ticket.validation_status in AWAITING_CLIENT):
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

    def _watched(self, waiting: set[str], listed: bool) -> list[WaitingTicket]:
        """The tickets the client is not asked about that are still read (`watched_tickets`):
        those the CRM does not list as waiting. A request still waiting for the client or the
        admin in our store that the CRM no longer lists was decided (or closed) by hand in the
        CRM: watched too, but only when the CRM's list could be read (`listed`), since only
        then does its absence say anything. Their status as the CRM has it is read when a
        message comes (`_answer`)."""
        from handler_cli.services import WaitingTicket

        since = watch_start(self.ctx)
        if since is None:
            return []
        found: list[WaitingTicket] = []
        for saved in watched_tickets(self.ctx, self.journal, since).values():
            if saved.ticket_id in waiting or (
                    saved.validation_status in WAITING_STATUSES and not listed):
                continue
            self.watched.add(saved.ticket_id)
            # Its CRM properties are not known; the contact is ours (as `get_ticket` shows
            # it): a reply source need not read the ticket's associations to find it.
            known = {"contact_id": saved.contact_id} if saved.contact_id else {}
            found.append(WaitingTicket(ticket_id=saved.ticket_id, request_id=saved.request_id,
                                       validation_status=saved.validation_status or "",
                                       properties=known, updated_at=self.ctx.now()))
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
        standing = doc  # what `decide` reads: the ticket as the CRM has it
        for reply in replies:
            entry = Begun(reply, doc.request_id, UNREAD, Reading("", 0.0, ""), "", False)
            try:
                if reply is replies[0]:
                    standing = self._standing(ticket, doc, handled, outcome)
                if handled.is_handled(ticket.ticket_id, reply):
                    continue  # a watched ticket's property named it: handled before
                if self.dry_run:
                    plan = self._plan(standing, reply)
                    simulate(standing, plan)
                    outcome.actions.append(plan.describe(reply))
                    continue
                # The files first: what is decided depends on what we could keep.
                kept = keep_files(self.ctx, doc, reply)
                plan = self._plan(standing, kept)
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
        outcome.status = standing.validation_status or outcome.status
        outcome.clickup_subtask_id = doc.clickup_subtask_id

    def _standing(self, ticket: WaitingTicket, doc: Document, handled: HandledIndex,
                  outcome: TicketOutcome) -> Document:
        """The document as `decide` must see it: with the ticket's status as the CRM has it.

        The CRM is the truth: an admin may have moved the ticket since the document was kept.
        A waiting ticket came with its status and properties from the CRM's search; a watched
        one did not, so it is read now (one call, and only for a ticket with a new message,
        as a quiet pass must not grow with the watched tickets). Its status is adopted when
        the client is asked something there (the search missed it); otherwise the document
        keeps the status this installation recorded and `decide` reads a copy: a ticket
        validated by hand must not look, to the subtask retries, like one the poll validated.
        """
        properties = ticket.properties
        if ticket.ticket_id in self.watched:
            properties = self.ctx.crm.get_ticket(ticket.ticket_id)
            handled.learn(ticket.ticket_id, properties.get(HANDLED_PROPERTY))
        status = properties.get("validation_status", "")
        crm: dict[str, object] = {"validation_status": status if status in STATUSES else None}
        if properties.get("credits_estimes", "").isdigit():
            crm["credits_estimes"] = int(properties["credits_estimes"])
        outcome.status_before = outcome.status = str(crm["validation_status"] or "")
        if crm["validation_status"] in AWAITING_CLIENT or ticket.ticket_id not in self.watched:
            for name, value in crm.items():
                setattr(doc, name, value)
            return doc
        return doc.model_copy(update=crm)

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
                plan = Plan(begun.action, begun.reading, begun.text, forward=begun.forward,
                            status=doc.validation_status)
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
