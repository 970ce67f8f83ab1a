"""One view of every request the installation knows, whatever door it came through.

A request lives in up to three stores: the request store (what the webhook accepted: its
processing status, attempts and their history), the documents (the latest copy of every
request that reached the CRM, from the webhook, `run` or a step command, and of every
request `run` processed, ticket or not; kept up to date by the poll), and the poll's journal
(what the client answered, when, and what was done).
`Overview` reads them, never writes, and joins them into one `RequestView` per request;
`requests list/show` and `stats` render it.

The stores are read through the storage layer (`handler_cli.storage`), on the backend it
chose, with their read-only listings (`DocumentStore.listing`, `PollJournal.entries`): this
module knows no table and no SQL. On the embedded backend a store whose file does not exist
is not opened (opening one creates it) and reads as empty, so the view creates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from handler_cli.config import Settings
    from handler_cli.intake.records import RequestRecord
    from handler_cli.poll.journal import JournalEntry, PollJournal
    from handler_cli.storage import DocumentStore, RequestStore, SavedDocument

# The statuses of the view, in the order a request goes through them.
PROCESSING = ("queued", "running", "retrying", "failed")  # the webhook's own, while it works
WAITING = ("pending_info", "pending_credits", "pending_admin")
DONE = ("open", *WAITING, "validated", "rejected")  # the chain went through; the client's turn
# What `requests list --status` takes: a status, or `done` for any of DONE.
STATUSES = (*PROCESSING, "done", "received", *DONE)


@dataclass(frozen=True)
class ClientAnswer:
    """A reply of the client the poll acted on (or is acting on, or parked)."""

    at: str | None  # when the client wrote it
    handled_at: str | None  # when the poll finished acting on it
    intent: str
    action: str
    state: str  # acting, done, or failed (parked until `poll --retry-failed`)
    text: str
    error: str | None = None

    @classmethod
    def of(cls, entry: JournalEntry) -> ClientAnswer:
        """The answer a journal entry records (its start stands in for a reply with no date)."""
        return cls(entry.written_at or entry.started_at, entry.handled_at, entry.intent,
                   entry.action, entry.state, entry.text, entry.error)

    def to_dict(self) -> dict[str, Any]:
        out = {"at": self.at, "intent": self.intent, "action": self.action,
               "state": self.state, "handled_at": self.handled_at, "text": self.text}
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class RequestView:
    """Everything known about one request, from whichever stores hold it."""

    request_id: str
    door: str  # "webhook", or "cli" (run or the step commands)
    status: str  # one of STATUSES
    received_at: datetime | None
    updated_at: datetime | None
    document: dict[str, Any]  # the current copy
    answers: list[ClientAnswer] = field(default_factory=list)
    attempts: int | None = None  # the webhook's
    last_error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier attempts (retry)
    steps: dict[str, Any] = field(default_factory=dict)  # the webhook's outcome per step

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.document.get("errors") or [])

    @property
    def quote(self) -> tuple[int, datetime] | None:
        """(credits, when) of the quote e-mailed to the client, if one was."""
        for email in (self.document.get("emails") or {}).values():
            template = str(email.get("template", ""))
            if template.startswith("client_quote"):
                credits = self.document.get("credits_estimes") or int(template.rsplit("_", 1)[1])
                return int(credits), _time(email.get("sent_at")) or _epoch()
        return None

    @property
    def validated_at(self) -> datetime | None:
        """When the client validated the quote (the reply acted on), if they did."""
        for answer in self.answers:
            if answer.action == "validated" and answer.state == "done":
                return _time(answer.at) or _time(answer.handled_at)
        return None

    def summary(self) -> dict[str, Any]:
        """One line of `requests list`."""
        doc = self.document
        quote = self.quote
        last = self.answers[-1] if self.answers else None
        out: dict[str, Any] = {
            "request_id": self.request_id, "door": self.door, "status": self.status,
            "received_at": _iso(self.received_at), "updated_at": _iso(self.updated_at),
            "source": doc.get("source"), "type_final": doc.get("type_final"),
            "objet": doc.get("objet"), "ticket_id": doc.get("ticket_id"),
            "credits": quote[0] if quote else None,
            "answer": {"intent": last.intent, "at": last.at, "action": last.action}
            if last else None,
            "errors": len(self.errors),
        }
        if self.attempts is not None:
            out["attempts"] = self.attempts
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything, for `requests show --full`."""
        quote = self.quote
        return {
            **self.summary(),
            "ticket_url": self.document.get("ticket_url"),
            "validation_status": self.document.get("validation_status"),
            "quote": {"credits": quote[0], "sent_at": _iso(quote[1])} if quote else None,
            "answers": [a.to_dict() for a in self.answers],
            "error_list": self.errors,
            "steps": self.steps,
            "history": self.history,
            "document": self.document,
        }


ALL = 1_000_000_000  # "no limit" for the request store's `recent`


class StoreReader:
    """The stores a view is made of, only read: the request store (the webhook's records),
    the documents and the poll's journal, each None when an embedded installation never
    wrote it."""

    def __init__(self, settings: Settings) -> None:
        from handler_cli.storage import DataDir, open_storage

        self.storage = open_storage(settings)
        files = DataDir(settings.data_dir)

        def written(path: Path) -> bool:  # a shared database has every table already
            return self.storage.shared or path.exists()

        self.requests: RequestStore | None = (
            self.storage.requests if written(files.requests) else None)
        self.documents: DocumentStore | None = (
            self.storage.documents if written(files.documents) else None)
        self.journal: PollJournal | None = (
            self.storage.journal if written(files.poll_journal) else None)

    def webhook_records(self) -> list[RequestRecord]:
        return [] if self.requests is None else self.requests.recent(None, ALL)

    def webhook_record(self, request_id: str) -> RequestRecord | None:
        return None if self.requests is None else self.requests.get(request_id)

    def saved(self, *, request_id: str | None = None, ticket_id: str | None = None
              ) -> list[SavedDocument]:
        """Every stored document, or this request's, or this ticket's."""
        if self.documents is None:
            return []
        return self.documents.listing(request_id=request_id, ticket_id=ticket_id)

    def answers(self, request_id: str | None = None) -> dict[str, list[ClientAnswer]]:
        """The journal's entries (every one, or this request's), by request id, oldest first."""
        found: dict[str, list[ClientAnswer]] = {}
        for entry in self.journal.entries(request_id) if self.journal is not None else []:
            found.setdefault(entry.request_id, []).append(ClientAnswer.of(entry))
        return found

    def close(self) -> None:
        self.storage.close()


class Overview:
    """Every request the installation knows, joined from its stores."""

    def __init__(self, settings: Settings) -> None:
        self.reader = StoreReader(settings)

    def __enter__(self) -> Overview:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.close()

    def requests(self, *, status: str | None = None, since: datetime | None = None,
                 limit: int | None = None) -> list[RequestView]:
        """Newest first (by when they were received)."""
        records = {r.request_id: r for r in self.reader.webhook_records()}
        stored = {d.request_id: (d.body, d.saved_at) for d in self.reader.saved()}
        answers = self.reader.answers()
        views = [self._view(rid, records.get(rid), stored.get(rid), answers.get(rid, []))
                 for rid in records.keys() | stored.keys()]
        views = [v for v in views if (status is None or v.status == status
                                      or (status == "done" and v.status in DONE))
                 and (since is None or (v.received_at or _epoch()) >= since)]
        views.sort(key=lambda v: (v.received_at or _epoch(), v.request_id), reverse=True)
        return views[:limit] if limit else views

    def get(self, request_id: str) -> RequestView | None:
        """One request by its id, or by its ticket's number."""
        record = self.reader.webhook_record(request_id)
        saved = self.reader.saved(request_id=request_id)
        if record is None and not saved:
            saved = self.reader.saved(ticket_id=request_id)[:1]
            if not saved:
                return None
            request_id = saved[0].request_id
            record = self.reader.webhook_record(request_id)
        answers = self.reader.answers(request_id).get(request_id, [])
        stored = (saved[0].body, None) if saved and saved[0].body else None
        return self._view(request_id, record, stored, answers)

    @staticmethod
    def _view(request_id: str, record: RequestRecord | None,
              stored: tuple[dict[str, Any], datetime | None] | None,
              answers: list[ClientAnswer]) -> RequestView:
        document = stored[0] if stored else (record.data() if record else {})
        received = (datetime.fromtimestamp(record.created_at, UTC) if record else None) \
            or _first_email(document) or (stored[1] if stored else None)
        updated = max((t for t in (
            datetime.fromtimestamp(record.updated_at, UTC) if record else None,
            stored[1] if stored else None, *(_time(a.handled_at) for a in answers))
            if t is not None), default=None)
        if record is not None and record.status in PROCESSING:
            status = record.status
        elif document.get("errors"):
            status = "failed"
        elif document.get("validation_status"):
            status = str(document["validation_status"])
        elif document.get("ticket_id"):
            status = "open"
        else:
            status = "received"
        return RequestView(
            request_id=request_id, door="webhook" if record is not None else "cli",
            status=status, received_at=received, updated_at=updated, document=document,
            answers=answers, attempts=record.attempts if record else None,
            last_error=record.last_error if record else None,
            history=list(getattr(record, "history", None) or []),
            steps=dict(record.steps) if record else {})


def parse_since(text: str, now: datetime) -> datetime:
    """`30d`, `12h`, `2w`, `90m`, or a date (`2026-11-01`): the start of the period."""
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    text = text.strip()
    if text[:-1].isdigit() and text[-1:] in units:
        return now - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected a period (30d, 12h, 2w, 90m) or a date (2026-11-01), "
                         f"not {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _time(value: Any) -> datetime | None:
    """An ISO time, SQLite's CURRENT_TIMESTAMP (UTC, no zone) or a POSIX timestamp."""
    if not value:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _first_email(document: dict[str, Any]) -> datetime | None:
    """The intake's first e-mail: when a request without a webhook record went through."""
    times = [t for t in (_time(e.get("sent_at")) for e in
                         (document.get("emails") or {}).values()) if t is not None]
    return min(times, default=None)


def _epoch() -> datetime:
    return datetime.fromtimestamp(0, UTC)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat(timespec="seconds")
