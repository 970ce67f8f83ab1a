"""The poll: tickets waiting for the client, their new replies, understood and acted on.

One pass, run by cron (`handler-cli poll`):

1. the waiting tickets (`pending_credits`, `pending_info`) from the CRM, and the request
   document behind each one from the local document store;
2. their new replies, from every configured source (HubSpot, IMAP, `.eml` folder, local CRM);
3. each reply, quoted history stripped, read for its intent and acted on exactly once:
   validation → `validated`, step 6, admin told, client confirmed; refusal → `rejected`, admin
   told; question → forwarded to the admin; missing information brought → analysed again;
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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handler_cli.config import ConfigError
from handler_cli.document import SentEmail
from handler_cli.mailing import send_once
from handler_cli.services import ServiceError
from handler_cli.sqlite import connect
from handler_cli.text import fold

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document
    from handler_cli.replies import Reply, ReplySource
    from handler_cli.services import LLM, WaitingTicket
    from handler_cli.steps.analyze import Assessment

log = logging.getLogger("handler_cli")

WAITING_STATUSES = ("pending_credits", "pending_info")
DECIDED_STATUSES = ("validated", "rejected")
HANDLED_PROPERTY = "handler_replies_handled"
HANDLED_PROPERTY_LIMIT = 60_000  # HubSpot string properties hold 65,536 characters
COMPLEMENT_HEADER = "--- Complément du client"
DEFAULT_LOOKBACK = timedelta(days=90)


# -- what was handled ----------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """What a reply was read as (kept in the journal, so a resumed action needs no re-read)."""

    intent: str
    confiance: float
    method: str


@dataclass(frozen=True)
class Begun:
    """A journal entry still "acting": a pass started this action and did not finish it."""

    reply: Reply
    request_id: str
    action: str
    reading: Reading
    text: str
    forward: bool


class Journal:
    """The poll's memory in the data dir: every reply acted on, what was decided, and when.

    An entry is written "acting" before the first effect and "done" after the last, so the
    next pass knows what to finish. The ticket property `handler_replies_handled` records the
    same replies in the CRM (HubSpot then skips reading them); the journal adds the dates the
    reminders need.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = connect(
            path,
            "CREATE TABLE IF NOT EXISTS replies (ticket_id TEXT NOT NULL, reply_key TEXT NOT NULL,"
            " crm_id TEXT, source TEXT NOT NULL, request_id TEXT NOT NULL, state TEXT NOT NULL,"
            " intent TEXT NOT NULL, confiance REAL NOT NULL, method TEXT NOT NULL,"
            " action TEXT NOT NULL, forward INTEGER NOT NULL, text TEXT NOT NULL,"
            " reply TEXT NOT NULL, started_at TEXT NOT NULL, handled_at TEXT,"
            " PRIMARY KEY (ticket_id, reply_key))",
        )

    def begin(self, reply: Reply, request_id: str, plan: Plan, at: datetime) -> None:
        """Note the decision before acting; a resumed action keeps the first decision."""
        with self._lock:
            self._db.execute(
                "INSERT INTO replies (ticket_id, reply_key, crm_id, source, request_id, state,"
                " intent, confiance, method, action, forward, text, reply, started_at)"
                " VALUES (?, ?, ?, ?, ?, 'acting', ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(ticket_id, reply_key) DO NOTHING",
                (reply.ticket_id, reply.key, reply.crm_id, reply.source, request_id,
                 plan.reading.intent, plan.reading.confiance, plan.reading.method, plan.action,
                 int(plan.forward), plan.text, reply_to_json(reply), at.isoformat()),
            )

    def finish(self, reply: Reply, at: datetime) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE replies SET state = 'done', handled_at = ? WHERE ticket_id = ?"
                " AND reply_key = ?", (at.isoformat(), reply.ticket_id, reply.key),
            )

    def unfinished(self) -> list[Begun]:
        with self._lock:
            rows = self._db.execute(
                "SELECT reply, request_id, action, intent, confiance, method, text, forward"
                " FROM replies WHERE state = 'acting' ORDER BY started_at"
            ).fetchall()
        return [Begun(reply_from_json(r[0]), r[1], r[2], Reading(r[3], r[4], r[5]), r[6],
                      bool(r[7])) for r in rows]

    def rows(self, ticket_ids: Sequence[str]) -> list[tuple[str, str, str | None, str]]:
        """(ticket_id, reply_key, crm_id, started_at) of these tickets, begun or done."""
        found: list[tuple[str, str, str | None, str]] = []
        with self._lock:
            for start in range(0, len(ticket_ids), 500):
                chunk = list(ticket_ids[start:start + 500])
                marks = ",".join("?" * len(chunk))
                found += self._db.execute(
                    "SELECT ticket_id, reply_key, crm_id, started_at FROM replies"
                    f" WHERE ticket_id IN ({marks})", chunk,
                ).fetchall()
        return found

    def actions(self, ticket_id: str) -> list[tuple[str, str, str, str]]:
        """(reply_key, intent, action, state) of a ticket, oldest first (tests, operators)."""
        with self._lock:
            return self._db.execute(
                "SELECT reply_key, intent, action, state FROM replies WHERE ticket_id = ?"
                " ORDER BY started_at", (ticket_id,),
            ).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def reply_to_json(reply: Reply) -> str:
    """The reply without its file bytes (they are stored before anything else is done)."""
    data = {k: v for k, v in vars(reply).items() if k != "files"}
    data["at"] = reply.at.isoformat()
    data["files"] = [{"name": f.name, "url": f.url} for f in reply.files]
    return json.dumps(data, ensure_ascii=False)


def reply_from_json(raw: str) -> Reply:
    from handler_cli.replies import Reply, ReplyFile

    data = json.loads(raw)
    data["at"] = datetime.fromisoformat(data["at"])
    data["files"] = tuple(ReplyFile(name=f["name"], url=f["url"]) for f in data["files"])
    return Reply(**data)


def parse_tokens(value: str | None) -> list[str]:
    return [t for t in (value or "").replace(",", " ").replace(";", " ").split() if t]


class HandledIndex:
    """What was handled for the waiting tickets: the journal plus the tickets' own property."""

    def __init__(self, journal: Journal, waiting: Sequence[WaitingTicket]) -> None:
        self.keys: dict[str, set[str]] = {}
        self.tokens: dict[str, list[str]] = {}
        self.last_handled: dict[str, datetime] = {}
        for ticket in waiting:
            self.tokens[ticket.ticket_id] = parse_tokens(ticket.properties.get(HANDLED_PROPERTY))
            self.keys[ticket.ticket_id] = set(self.tokens[ticket.ticket_id])
        for ticket_id, key, crm_id, handled_at in journal.rows([t.ticket_id for t in waiting]):
            self.keys.setdefault(ticket_id, set()).update(k for k in (key, crm_id) if k)
            at = datetime.fromisoformat(handled_at)
            if ticket_id not in self.last_handled or at > self.last_handled[ticket_id]:
                self.last_handled[ticket_id] = at

    def is_handled(self, ticket_id: str, reply: Reply) -> bool:
        known = self.keys.get(ticket_id, set())
        return reply.key in known or (reply.crm_id is not None and reply.crm_id in known)

    def crm_ids(self, ticket_ids: Iterable[str]) -> set[str]:
        return {k for t in ticket_ids for k in self.keys.get(t, set())}

    def add(self, reply: Reply, at: datetime) -> str:
        """Note `reply` as handled; return the ticket's new `handler_replies_handled` value."""
        ticket_id = reply.ticket_id
        self.keys.setdefault(ticket_id, set()).update(k for k in (reply.key, reply.crm_id) if k)
        tokens = self.tokens.setdefault(ticket_id, [])
        if reply.handled_token not in tokens:
            tokens.append(reply.handled_token)
        self.last_handled[ticket_id] = at
        value = " ".join(tokens)
        while len(value) > HANDLED_PROPERTY_LIMIT and len(tokens) > 1:
            tokens.pop(0)  # the oldest replies are long read: the journal still has them
            value = " ".join(tokens)
        return value


# -- the lock ------------------------------------------------------------------------------


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


# -- what a pass reports -------------------------------------------------------------------


@dataclass
class TicketOutcome:
    """One JSON line on stdout: a ticket the poll acted on (or would have, in dry-run)."""

    ticket_id: str
    request_id: str
    status_before: str
    status: str
    actions: list[dict[str, Any]] = field(default_factory=list)
    clickup_subtask_id: str | None = None
    error: str | None = None
    dry_run: bool = False

    def to_json(self) -> str:
        data = {k: v for k, v in vars(self).items() if v is not None and v != []}
        data["dry_run"] = self.dry_run
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


@dataclass
class PollReport:
    outcomes: list[TicketOutcome] = field(default_factory=list)
    waiting: int = 0
    replies: int = 0
    orphans: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    locked_by: str | None = None
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures

    def tally(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            for action in outcome.actions:
                counts[action["action"]] = counts.get(action["action"], 0) + 1
        return counts

    def summary(self) -> str:
        if self.locked_by is not None:
            return f"poll: another poll is running ({self.locked_by}); nothing done"
        done = ", ".join(f"{n} {a}" for a, n in sorted(self.tally().items())) or "nothing to do"
        head = "poll (dry run, nothing changed)" if self.dry_run else "poll"
        text = (f"{head}: {self.waiting} waiting ticket(s), {self.replies} new repl(ies); "
                f"{done}")
        if self.orphans:
            text += f"; {len(self.orphans)} ticket(s) without a request document here"
        if self.failures:
            text += f"; {len(self.failures)} failure(s)"
        return text


# -- acting on one reply -------------------------------------------------------------------


@dataclass
class Plan:
    """What a reply calls for, decided before anything is done (dry-run stops here)."""

    action: str  # validated | rejected | question | info | forwarded | ignored
    reading: Reading
    text: str  # the reply without quoted history and signature
    assessment: Assessment | None = None
    forward: bool = False  # the admin gets the client's words

    def describe(self, reply: Reply) -> dict[str, Any]:
        data: dict[str, Any] = {
            "reply": reply.key, "source": reply.source, "at": reply.at.isoformat(),
            "intent": self.reading.intent, "confiance": round(self.reading.confiance, 3),
            "method": self.reading.method, "action": self.action,
        }
        if self.assessment is not None:
            data["assessment"] = {
                "validation_status": self.assessment.validation_status,
                "credits_estimes": self.assessment.credits,
                "missing_info": list(self.assessment.missing_info),
            }
        if reply.files:
            data["files"] = [f.name for f in reply.files]
        return data


def question_kind(text: str) -> str:
    """The same question (however it is spaced or accented) is forwarded once."""
    return "admin_question_" + hashlib.sha256(fold(text).encode()).hexdigest()[:12]


def awaited_email(doc: Document) -> tuple[str, SentEmail] | None:
    """The latest e-mail that asked the client for an answer (quote or missing information)."""
    asking = [(k, e) for k, e in doc.emails.items() if k == "client" or k.startswith("client_after_")]
    return max(asking, key=lambda item: item[1].sent_at) if asking else None


def read_reply(text: str, llm: LLM | None) -> Reading:
    """The intent of a reply already stripped of its quoted history."""
    from handler_cli.intent import read_intent

    result = read_intent(text, llm=llm)
    return Reading(str(result.intent), float(result.confiance), str(result.method))


class Poller:
    """One pass of the poll. Build it, call `run()`; `dry_run` decides without doing."""

    def __init__(self, ctx: Context, *, dry_run: bool = False,
                 sources: Sequence[ReplySource] | None = None) -> None:
        self.ctx = ctx
        self.dry_run = dry_run
        self._sources = sources
        self.journal = Journal(ctx.settings.data_dir / "poll.sqlite3")
        self.report = PollReport(dry_run=dry_run)

    # -- the pass --------------------------------------------------------------------------

    def run(self) -> PollReport:
        from handler_cli.replies import build_sources

        sources = list(self._sources) if self._sources is not None else build_sources(self.ctx)
        done = self._resume()
        try:
            waiting = self.ctx.crm.waiting_tickets(WAITING_STATUSES)
        except ServiceError as exc:
            self._fail(f"cannot list the waiting tickets: {exc}")
            waiting = []
        docs: dict[str, Document] = {}
        for ticket in waiting:
            doc = self.ctx.documents.by_ticket(ticket.ticket_id) or (
                self.ctx.documents.get(ticket.request_id) if ticket.request_id else None)
            if doc is None:
                self.report.orphans.append(ticket.ticket_id)
            else:
                docs[ticket.ticket_id] = doc
        known = [t for t in waiting if t.ticket_id in docs]
        self.report.waiting = len(known)
        if self.report.orphans:
            log.warning("poll: %d waiting ticket(s) have no request document in %s (e.g. %s); "
                        "their replies are left for the team", len(self.report.orphans),
                        self.ctx.settings.data_dir, ", ".join(self.report.orphans[:5]))

        handled = HandledIndex(self.journal, known)
        replies, owner = self._fetch(sources, known, handled, docs)
        self.report.replies = sum(len(r) for r in replies.values())
        for ticket in known:
            found = replies.get(ticket.ticket_id)
            if found:
                self._answer(ticket, docs[ticket.ticket_id], found, handled, owner)
                done.add(ticket.ticket_id)
            elif ticket.ticket_id not in done:
                self._follow_up(ticket, docs[ticket.ticket_id], handled)
        self._retry_subtasks(done)
        return self.report

    def _fail(self, message: str) -> None:
        log.error("poll: %s", message)
        self.report.failures.append(message)

    def _fetch(
        self, sources: Sequence[ReplySource], waiting: Sequence[WaitingTicket],
        handled: HandledIndex, docs: dict[str, Document],
    ) -> tuple[dict[str, list[Reply]], dict[str, ReplySource]]:
        """New replies per ticket from every source, oldest first, each reply once."""
        if not waiting:
            return {}, {}
        firsts = [e.sent_at for d in docs.values() for k, e in d.emails.items()
                  if k == "client" or k.startswith("client_after_")]
        since = min(firsts) if firsts else self.ctx.now() - DEFAULT_LOOKBACK
        merged: dict[str, dict[str, Reply]] = {}
        owner: dict[str, ReplySource] = {}
        for source in sources:
            try:
                found = source.fetch(waiting, handled, since)
            except ServiceError as exc:
                self._fail(f"reply source {source.name}: {exc}")
                continue
            for ticket_id, replies in found.items():
                for reply in replies:
                    if reply.key not in merged.setdefault(ticket_id, {}):
                        merged[ticket_id][reply.key] = reply
                        owner[reply.key] = source
        return ({t: sorted(r.values(), key=lambda x: x.at) for t, r in merged.items() if r},
                owner)

    # -- replies ---------------------------------------------------------------------------

    def _outcome(self, ticket_id: str, request_id: str, status: str) -> TicketOutcome:
        outcome = TicketOutcome(ticket_id=ticket_id, request_id=request_id,
                                status_before=status, status=status, dry_run=self.dry_run)
        self.report.outcomes.append(outcome)
        return outcome

    def _answer(self, ticket: WaitingTicket, doc: Document, replies: list[Reply],
                handled: HandledIndex, owner: dict[str, ReplySource]) -> None:
        outcome = self._outcome(ticket.ticket_id, doc.request_id, ticket.validation_status)
        # The CRM is the truth: an admin may have moved the ticket since the document was kept.
        doc.validation_status = ticket.validation_status  # type: ignore[assignment]
        if ticket.properties.get("credits_estimes", "").isdigit():
            doc.credits_estimes = int(ticket.properties["credits_estimes"])
        for reply in replies:
            try:
                plan = self._plan(doc, reply)
                if self.dry_run:
                    self._simulate(doc, plan)
                    outcome.actions.append(plan.describe(reply))
                    continue
                kept = self._keep_files(doc, reply)
                self.journal.begin(kept, doc.request_id, plan, self.ctx.now())
                outcome.actions.append(self._act(doc, kept, plan, handled))
                owner[reply.key].acknowledge(reply)
            except ServiceError as exc:
                outcome.error = str(exc)
                self._fail(f"ticket {ticket.ticket_id}: {exc}; the next poll finishes it")
                break  # later replies wait: they may depend on this one
            except ConfigError:
                raise
            except Exception as exc:  # a bug must not stop the other tickets: report it
                outcome.error = f"unexpected {type(exc).__name__}: {exc}"
                log.debug("poll: ticket %s", ticket.ticket_id, exc_info=True)
                self._fail(f"ticket {ticket.ticket_id}: {outcome.error}")
                break
        outcome.status = doc.validation_status or outcome.status
        outcome.clickup_subtask_id = doc.clickup_subtask_id

    def _resume(self) -> set[str]:
        """Finish the actions an earlier pass began and did not end (crash, backend down)."""
        resumed: set[str] = set()
        for begun in self.journal.unfinished():
            reply = begun.reply
            doc = self.ctx.documents.by_ticket(reply.ticket_id)
            if doc is None:
                self._fail(f"ticket {reply.ticket_id}: cannot finish the action on reply "
                           f"{reply.key}: no request document")
                continue
            outcome = self._outcome(reply.ticket_id, doc.request_id,
                                    doc.validation_status or "")
            resumed.add(reply.ticket_id)
            plan = Plan(begun.action, begun.reading, begun.text, forward=begun.forward)
            if plan.action == "info":
                plan.assessment = self._assess(doc, plan.text, reply)
            if self.dry_run:
                outcome.actions.append({**plan.describe(reply), "resumed": True})
                continue
            try:
                outcome.actions.append({**self._act(doc, reply, plan, None), "resumed": True})
            except ServiceError as exc:
                outcome.error = str(exc)
                self._fail(f"ticket {reply.ticket_id}: still cannot finish: {exc}")
            outcome.status = doc.validation_status or outcome.status
            outcome.clickup_subtask_id = doc.clickup_subtask_id
        return resumed

    def _plan(self, doc: Document, reply: Reply) -> Plan:
        """Read the reply and decide what it calls for, given where the ticket stands."""
        from handler_cli.intent import strip_quoted

        text = strip_quoted(reply.text).strip()
        reading = read_reply(text, self.ctx.llm)
        kind = reading.intent
        status = doc.validation_status
        if reply.automatic:  # an out-of-office says nothing about the quote, whatever its words
            return Plan("ignored", reading, text)
        if status in DECIDED_STATUSES:  # an earlier reply of this pass decided already
            action = "forwarded" if (kind != "none" or reply.files) else "ignored"
            return Plan(action, reading, text, forward=action == "forwarded")
        if kind == "refus":
            return Plan("rejected", reading, text)
        if status == "pending_info":
            assessment = self._reassess(doc, text, reply)
            if assessment is not None:
                return Plan("info", reading, text, assessment=assessment,
                            forward=kind == "question")
            if kind == "question":
                return Plan("question", reading, text, forward=True)
            # "Je valide" with no quote sent yet, or files the grid cannot use: a person reads it.
            forward = kind == "validation" or bool(reply.files)
            return Plan("forwarded" if forward else "ignored", reading, text, forward=forward)
        if kind == "validation":
            return Plan("validated", reading, text)
        if kind == "question":
            return Plan("question", reading, text, forward=True)
        if reply.files:
            return Plan("forwarded", reading, text, forward=True)
        return Plan("ignored", reading, text)

    def _assess(self, doc: Document, text: str, reply: Reply) -> Assessment:
        from handler_cli.steps.analyze import assess

        names = self._file_names(doc) + [f.name for f in reply.files]
        return assess(doc.objet, complemented(doc.description, text, reply.at), names)

    def _reassess(self, doc: Document, text: str, reply: Reply) -> Assessment | None:
        """The grid again on the request plus this reply; None when the reply adds nothing."""
        from handler_cli.steps.analyze import load_grid

        result = self._assess(doc, text, reply)
        if reply.files or result.validation_status != "pending_info":
            return result
        # Any reply has words, so "the object is named" alone proves little ("je regarde ça
        # demain"): it counts only when the object's name was all that was missing.
        name_item = load_grid().completeness.missing_info.object
        before, after = set(doc.missing_info or []), set(result.missing_info)
        if before == {name_item}:
            return result if not after else None
        return result if after - {name_item} < before - {name_item} else None

    @staticmethod
    def _file_names(doc: Document) -> list[str]:
        names = doc.file_names()
        for url in doc.fichiers_urls or []:
            name = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
            if name and name not in names:
                names.append(name)
        return names

    @staticmethod
    def _simulate(doc: Document, plan: Plan) -> None:
        """Dry-run: move the in-memory status only, so later replies are planned in context."""
        if plan.action in DECIDED_STATUSES:
            doc.validation_status = plan.action  # type: ignore[assignment]
        elif plan.action == "info" and plan.assessment is not None:
            doc.validation_status = plan.assessment.validation_status

    def _act(self, doc: Document, reply: Reply, plan: Plan,
             handled: HandledIndex | None) -> dict[str, Any]:
        """Carry out `plan`. Every effect is idempotent; the CRM update comes last."""
        assert doc.ticket_id
        sent_before = set(doc.emails)
        props: dict[str, str] = {}
        stored, changed = self._file_lines(doc, reply)
        if changed:
            props["fichiers_urls"] = "\n".join(doc.fichiers_urls or [])
        if plan.action == "validated":
            props.update(self._validate(doc, reply, plan, stored))
        elif plan.action == "rejected":
            doc.validation_status = "rejected"
            props["validation_status"] = "rejected"
            send_once(self.ctx, doc, "admin_refused", "admin_refused",
                      self.ctx.settings.admin_email,
                      {"reply_text": plan.text, "reply": reply, "files": stored,
                       "ticket_url": self._ticket_url(doc)})
        elif plan.action == "info" and plan.assessment is not None:
            props.update(self._complete(doc, reply, plan))
        if plan.forward and plan.text:
            send_once(self.ctx, doc, question_kind(plan.text), "admin_question",
                      self.ctx.settings.admin_email,
                      {"question": plan.text, "reply": reply, "files": stored,
                       "ticket_url": self._ticket_url(doc),
                       "is_question": plan.reading.intent == "question",
                       "after_decision": plan.action == "forwarded"
                       and doc.validation_status in DECIDED_STATUSES})
        now = self.ctx.now()
        if handled is None:  # resuming: the ticket may not be waiting any more
            handled = HandledIndex(self.journal, [])
            current = self.ctx.crm.get_ticket(doc.ticket_id).get(HANDLED_PROPERTY, "")
            handled.tokens[doc.ticket_id] = parse_tokens(current)
        props[HANDLED_PROPERTY] = handled.add(reply, now)
        self.ctx.crm.update_ticket(doc.ticket_id, props)
        self.ctx.documents.save(doc)
        self.journal.finish(reply, now)
        result = plan.describe(reply)
        result["status"] = doc.validation_status
        result["emails"] = [k for k in doc.emails if k not in sent_before]
        log.info("%s: ticket %s: reply %s (%s, %s) → %s", doc.request_id, doc.ticket_id,
                 reply.key, plan.reading.intent, plan.reading.method, plan.action)
        return result

    def _validate(self, doc: Document, reply: Reply, plan: Plan,
                  stored: list[str]) -> dict[str, str]:
        """Step 6 (a ClickUp failure is recorded and retried later), then the two e-mails."""
        from handler_cli.steps import STEPS, apply

        doc.validation_status = "validated"
        ok = apply(STEPS["subtask"], doc, self.ctx)
        error = None if ok else next(
            (e.error for e in doc.errors if e.step == "subtask"), "unknown error")
        if error:
            self._fail(f"ticket {doc.ticket_id}: subtask not created yet ({error}); "
                       "the next poll tries again")
        s = self.ctx.settings
        extra = {"reply_text": plan.text, "reply": reply, "files": stored, "subtask_ok": ok,
                 "subtask_error": error, "ticket_url": self._ticket_url(doc)}
        send_once(self.ctx, doc, "admin_validated", "admin_validated", s.admin_email, extra)
        send_once(self.ctx, doc, "client_validated", "client_validated", doc.user_email, extra)
        return {"validation_status": "validated"}

    def _complete(self, doc: Document, reply: Reply, plan: Plan) -> dict[str, str]:
        """The missing information arrived: record it, and send a quote or what still lacks."""
        from handler_cli.document import Analysis
        from handler_cli.steps.notify_client import client_template

        assessment = plan.assessment
        assert assessment is not None
        doc.description = complemented(doc.description, plan.text, reply.at)
        doc.credits_estimes = assessment.credits
        doc.completeness = assessment.completeness
        doc.missing_info = list(assessment.missing_info)
        doc.validation_status = assessment.validation_status
        doc.analysis = Analysis(rule=assessment.rule, reasons=list(assessment.reasons))
        s = self.ctx.settings
        if assessment.validation_status == "pending_admin":
            send_once(self.ctx, doc, f"admin_complex_after_{reply.key}", "admin_complex",
                      s.admin_email)
        send_once(self.ctx, doc, f"client_after_{reply.key}", client_template(doc),
                  doc.user_email)
        return {"validation_status": assessment.validation_status,
                "credits_estimes": str(assessment.credits) if assessment.credits else ""}

    def _keep_files(self, doc: Document, reply: Reply) -> Reply:
        """Store the reply's attachments before anything else; the reply then carries links.

        A file store that fails here raises before the action begins, so the reply is read
        again (with its bytes) by the next poll; once begun, the journal keeps the links.
        """
        from handler_cli.attachments import (
            ALLOWED_EXTENSIONS,
            EXTRA_TYPES,
            FileRejected,
            extension,
            safe_name,
        )
        from handler_cli.replies import ReplyFile
        from handler_cli.steps import note

        if all(item.data is None for item in reply.files):
            return reply
        kept: list[ReplyFile] = []
        cap = self.ctx.settings.handler_max_file_bytes
        for item in reply.files:
            if item.data is None:
                kept.append(item)
                continue
            try:
                name = safe_name(item.name)
                if extension(name) not in ALLOWED_EXTENSIONS:
                    raise FileRejected(f"type de fichier non accepté (.{extension(name) or '?'})")
                if len(item.data) > cap:
                    raise FileRejected(f"fichier trop volumineux (plus de {cap // 1_048_576} Mo)")
            except FileRejected as exc:
                note(doc, self.ctx, f"Pièce jointe « {item.name} » de la réponse du client "
                                    f"écartée : {exc}.")
                continue
            content_type = EXTRA_TYPES.get(extension(name)) or item.content_type
            key = f"requests/{reply.at:%Y-%m-%d}/{doc.request_id}/reponse-{reply.key}-{name}"
            link = self.ctx.files.put(key, item.data, content_type)
            kept.append(ReplyFile(name=name, url=link, content_type=content_type))
        return dataclasses.replace(reply, files=tuple(kept))

    @staticmethod
    def _file_lines(doc: Document, reply: Reply) -> tuple[list[str], bool]:
        """Add the reply's links to the request's files; return what the admin reads about
        them, and whether the request's files changed."""
        lines: list[str] = []
        new: list[str] = []
        for item in reply.files:
            if item.url:
                lines.append(item.url)
                if item.url not in (doc.fichiers_urls or []) and item.url not in new:
                    new.append(item.url)
            else:
                lines.append(f"{item.name} (pièce jointe restée dans le CRM)")
        if new:
            doc.fichiers_urls = [*(doc.fichiers_urls or []), *new]
        return lines, bool(new)

    def _ticket_url(self, doc: Document) -> str:
        if doc.ticket_url:
            return doc.ticket_url
        return self.ctx.crm.ticket_url(doc.ticket_id) if doc.ticket_id else ""

    # -- no reply: reminder and stale ------------------------------------------------------

    def _follow_up(self, ticket: WaitingTicket, doc: Document, handled: HandledIndex) -> None:
        awaited = awaited_email(doc)
        if awaited is None:
            return
        ref_kind, ref = awaited
        doc.validation_status = ticket.validation_status  # type: ignore[assignment]
        now = self.ctx.now()
        s = self.ctx.settings
        last_reply = handled.last_handled.get(ticket.ticket_id)
        replied = last_reply is not None and last_reply >= ref.sent_at
        last_activity = max(ref.sent_at, last_reply) if replied and last_reply else ref.sent_at
        suffix = "" if ref_kind == "client" else f"_{ref_kind}"
        todo: list[tuple[str, str, str, dict[str, Any]]] = []
        if not replied and now - ref.sent_at >= timedelta(days=s.handler_remind_days):
            todo.append(("reminder", f"reminder{suffix}", "client_reminder",
                         {"awaited": ref, "days": (now - ref.sent_at).days}))
        if now - last_activity >= timedelta(days=s.handler_stale_days):
            todo.append(("stale", f"admin_stale{suffix}", "admin_stale",
                         {"awaited": ref, "days": (now - last_activity).days,
                          "replied": replied, "reminder_kind": f"reminder{suffix}",
                          "ticket_url": self._ticket_url(doc)}))
        todo = [t for t in todo if t[1] not in doc.emails]
        if not todo:
            return
        outcome = self._outcome(ticket.ticket_id, doc.request_id, ticket.validation_status)
        for action, kind, template, extra in todo:
            to = doc.user_email if action == "reminder" else s.admin_email
            entry: dict[str, Any] = {"action": action, "emails": [kind],
                                     "since": ref.sent_at.isoformat()}
            if not self.dry_run:
                try:
                    send_once(self.ctx, doc, kind, template, to, extra)
                except ServiceError as exc:
                    outcome.error = str(exc)
                    self._fail(f"ticket {ticket.ticket_id}: {action}: {exc}")
                    break
                log.info("%s: ticket %s: %s sent", doc.request_id, ticket.ticket_id, action)
            outcome.actions.append(entry)
        if not self.dry_run:
            self.ctx.documents.save(doc)

    # -- step 6 again ----------------------------------------------------------------------

    def _retry_subtasks(self, done: set[str]) -> None:
        """Validated requests whose subtask failed before (ClickUp down): try once more."""
        from handler_cli.steps import STEPS, apply

        for doc in self.ctx.documents.validated_without_subtask():
            if not doc.ticket_id or doc.ticket_id in done:
                continue
            outcome = self._outcome(doc.ticket_id, doc.request_id, "validated")
            outcome.actions.append({"action": "subtask_retry"})
            if not self.dry_run:
                ok = apply(STEPS["subtask"], doc, self.ctx)
                self.ctx.documents.save(doc)
                outcome.clickup_subtask_id = doc.clickup_subtask_id
                if not ok:
                    outcome.error = next((e.error for e in doc.errors if e.step == "subtask"),
                                         "subtask failed")
                    self._fail(f"ticket {doc.ticket_id}: subtask still not created "
                               f"({outcome.error})")


def complemented(description: str, text: str, at: datetime) -> str:
    """The request's description with the client's complement appended (once)."""
    text = text.strip()
    if not text or text in description:
        return description
    added = f"{description}\n\n{COMPLEMENT_HEADER} ({at:%d/%m/%Y}) ---\n{text}"
    return added[:20_000]


def poll(ctx: Context, *, dry_run: bool = False,
         sources: Sequence[ReplySource] | None = None) -> PollReport:
    """One pass under the lock (a dry run takes no lock: it changes nothing)."""
    if dry_run:
        return Poller(ctx, dry_run=True, sources=sources).run()
    with poll_lock(ctx.settings.data_dir) as holder:
        if holder is not None:
            return PollReport(locked_by=holder)
        return Poller(ctx, sources=sources).run()
