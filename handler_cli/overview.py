"""One view of every request the installation knows, whatever door it came through.

A request lives in up to three stores: the request store (what the webhook accepted: its
processing status, attempts and their history), the documents (the latest copy of every
request that reached the CRM, from the webhook, `run` or a step command, kept up to date
by the poll), and the poll's journal (what the client answered, when, and what was done).
`Overview` reads them, never writes, and joins them into one `RequestView` per request;
`requests list/show` and `stats` render it.

The stores are read through `StoreReader`, a small read-only port, on the backend the
storage layer uses: `SqliteReader` reads the embedded files of the data dir (opening none
that does not exist, creating nothing), `PostgresReader` the shared database. The request
store is read through its own interface; documents and journal by their tables, as listing
them all is a need of this view only.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from handler_cli.config import Settings
    from handler_cli.intake.records import RequestRecord

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


class StoreReader(Protocol):
    """Read-only access to the stores a view is made of."""

    def webhook_records(self, limit: int | None) -> list[RequestRecord]: ...
    def webhook_record(self, request_id: str) -> RequestRecord | None: ...
    def documents(self) -> Iterator[tuple[str, dict[str, Any], datetime | None]]:
        """(request_id, document, saved at) of every stored document."""
        ...
    def document(self, request_id: str) -> dict[str, Any] | None: ...
    def request_of_ticket(self, ticket_id: str) -> str | None: ...
    def answers(self) -> dict[str, list[ClientAnswer]]:
        """Every journal entry, by request id, oldest first."""
        ...
    def close(self) -> None: ...


class SqliteReader:
    """The embedded stores of the data dir, opened read-only; a file not there is empty."""

    def __init__(self, data_dir: Path) -> None:
        from handler_cli.storage import DataDir

        self.paths = DataDir(data_dir)
        self._store: Any = None

    def _requests(self) -> Any:
        """The request store, when the webhook ever wrote one."""
        if self._store is None and self.paths.requests.exists():
            from handler_cli.storage.sqlite import SqliteRequestStore

            self._store = SqliteRequestStore(self.paths.requests)
        return self._store

    def webhook_records(self, limit: int | None) -> list[RequestRecord]:
        store = self._requests()
        return [] if store is None else list(store.recent(None, limit or ALL))

    def webhook_record(self, request_id: str) -> RequestRecord | None:
        store = self._requests()
        return None if store is None else store.get(request_id)

    def documents(self) -> Iterator[tuple[str, dict[str, Any], datetime | None]]:
        with _read_only(self.paths.documents) as db:
            if db is None:
                return
            for request_id, body, updated_at in db.execute(
                    "SELECT request_id, body, updated_at FROM documents"):
                yield request_id, json.loads(body), _time(updated_at)

    def document(self, request_id: str) -> dict[str, Any] | None:
        with _read_only(self.paths.documents) as db:
            row = db.execute("SELECT body FROM documents WHERE request_id = ?",
                             (request_id,)).fetchone() if db is not None else None
        return json.loads(row[0]) if row else None

    def request_of_ticket(self, ticket_id: str) -> str | None:
        with _read_only(self.paths.documents) as db:
            row = db.execute("SELECT request_id FROM documents WHERE ticket_id = ?",
                             (ticket_id,)).fetchone() if db is not None else None
        return str(row[0]) if row else None

    def answers(self) -> dict[str, list[ClientAnswer]]:
        with _read_only(self.paths.poll_journal) as db:
            if db is None:
                return {}
            columns = {row[1] for row in db.execute("PRAGMA table_info(replies)")}
            error = "error" if "error" in columns else "NULL"
            return _answers(db.execute(f"SELECT {JOURNAL_COLUMNS.replace('error', error)}"
                                       " FROM replies ORDER BY started_at").fetchall())

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


class PostgresReader:
    """The shared PostgreSQL of a scaled-out installation (`HANDLER_DATABASE_URL`): the same
    tables the storage layer writes (`handler_cli.storage.postgres`), only read."""

    def __init__(self, url: str) -> None:
        from handler_cli.storage.postgres import PostgresRequestStore, connect_pool

        self.db = connect_pool(url)
        self.store = PostgresRequestStore(self.db)

    def webhook_records(self, limit: int | None) -> list[RequestRecord]:
        return list(self.store.recent(None, limit or ALL))

    def webhook_record(self, request_id: str) -> RequestRecord | None:
        return self.store.get(request_id)

    def documents(self) -> Iterator[tuple[str, dict[str, Any], datetime | None]]:
        rows = self.db.conn().execute(
            "SELECT request_id, body, updated_at FROM handler_documents").fetchall()
        for request_id, body, updated_at in rows:
            yield request_id, json.loads(body), _time(updated_at)

    def document(self, request_id: str) -> dict[str, Any] | None:
        row = self.db.conn().execute("SELECT body FROM handler_documents WHERE request_id = %s",
                                     (request_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def request_of_ticket(self, ticket_id: str) -> str | None:
        row = self.db.conn().execute("SELECT request_id FROM handler_documents"
                                     " WHERE ticket_id = %s LIMIT 1", (ticket_id,)).fetchone()
        return str(row[0]) if row else None

    def answers(self) -> dict[str, list[ClientAnswer]]:
        return _answers(self.db.conn().execute(
            f"SELECT {JOURNAL_COLUMNS} FROM handler_replies ORDER BY started_at").fetchall())

    def close(self) -> None:
        self.db.close()


def open_reader(settings: Settings) -> StoreReader:
    """The stores of this installation, on the backend the storage layer chose."""
    from handler_cli.storage import check_urls

    url = check_urls(settings)
    return PostgresReader(url) if url else SqliteReader(settings.data_dir)


ALL = 1_000_000_000
JOURNAL_COLUMNS = ("request_id, reply, intent, action, state, text, handled_at, error,"
                   " started_at")


def _answers(rows: list[Any]) -> dict[str, list[ClientAnswer]]:
    found: dict[str, list[ClientAnswer]] = {}
    for request_id, reply, intent, action, state, text, handled_at, err, started in rows:
        at = json.loads(reply).get("at") if reply else None
        found.setdefault(request_id, []).append(ClientAnswer(
            at or started, handled_at, intent, action, state, text, err))
    return found


class Overview:
    """Every request the installation knows, joined from its stores."""

    def __init__(self, settings: Settings, reader: StoreReader | None = None) -> None:
        self.reader = reader if reader is not None else open_reader(settings)

    def __enter__(self) -> Overview:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.close()

    def requests(self, *, status: str | None = None, since: datetime | None = None,
                 limit: int | None = None) -> list[RequestView]:
        """Newest first (by when they were received)."""
        records = {r.request_id: r for r in self.reader.webhook_records(None)}
        stored = {rid: (doc, at) for rid, doc, at in self.reader.documents()}
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
        document = self.reader.document(request_id)
        if record is None and document is None:
            by_ticket = self.reader.request_of_ticket(request_id)
            if by_ticket is None:
                return None
            request_id, document = by_ticket, self.reader.document(by_ticket)
            record = self.reader.webhook_record(request_id)
        answers = self.reader.answers().get(request_id, [])
        return self._view(request_id, record, (document, None) if document else None, answers)

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


class _ReadOnly:
    """`with _read_only(path) as db`: the SQLite file read-only, or None when it is absent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection | None:
        if not self.path.exists():
            return None
        self.db = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=30)
        return self.db

    def __exit__(self, *exc: object) -> None:
        if self.db is not None:
            with closing(self.db):
                pass


_read_only = _ReadOnly


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
