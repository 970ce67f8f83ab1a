"""The poll's memory: which replies were acted on, what was decided, and whether it finished.

docs/poll.md "Exactly once": an entry is written *acting* before a reply's first effect and
*done* after its last, so the next pass knows what to finish. The ticket property
`handler_replies_handled` records the same replies in the CRM (HubSpot then skips reading
them); the journal adds the dates the reminders need. A reply whose action failed
unexpectedly is *failed* (parked): handled as far as reading goes, since the admin was given
it, and acted on again only after `handler-cli poll --retry-failed`.

The poll uses the journal only through `PollJournal`, so its storage can move (today one
SQLite file, `poll.sqlite3` in the data dir) without touching the pass.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from handler_cli.poll.decide import Reading
from handler_cli.sqlite import add_columns, chunks, connect, delete_in, marks
from handler_cli.storage.rows import where_equal

if TYPE_CHECKING:
    from handler_cli.replies import Reply
    from handler_cli.services import WaitingTicket

HANDLED_PROPERTY = "handler_replies_handled"
HANDLED_PROPERTY_LIMIT = 60_000  # HubSpot string properties hold 65,536 characters
UNREAD = "unread"  # the action of a parked reply that failed before anything was decided


@dataclass(frozen=True)
class Begun:
    """A journal entry: a reply and what was decided for it (still "acting" until finished)."""

    reply: Reply
    request_id: str
    action: str
    reading: Reading
    text: str
    forward: bool

    # How an entry is written and read back is the same on every backend; only the SQL differs.
    def values(self, at: datetime) -> tuple[Any, ...]:
        """What an entry begun `at` is written with: (ticket_id, reply_key, crm_id, source,
        request_id, intent, confiance, method, action, forward, text, reply, started_at)."""
        reply, reading = self.reply, self.reading
        return (reply.ticket_id, reply.key, reply.crm_id, reply.source, self.request_id,
                reading.intent, reading.confiance, reading.method, self.action, self.forward,
                self.text, reply.to_json(), at.isoformat())

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Begun:
        """An entry from its (reply, request_id, action, intent, confiance, method, text,
        forward)."""
        from handler_cli.replies import Reply

        reply, request_id, action, intent, confiance, method, text, forward = row
        return cls(Reply.from_json(reply), request_id, action, Reading(intent, confiance, method),
                   text, bool(forward))


@dataclass(frozen=True)
class JournalEntry:
    """An entry as the journal has it, for reading only (`requests list/show`, `stats`)."""

    request_id: str
    ticket_id: str
    written_at: str | None  # when the client wrote the reply, as the reply says (ISO)
    started_at: str  # when the poll began acting on it (ISO)
    handled_at: str | None  # when it finished (ISO), None while acting or parked
    intent: str
    action: str
    state: str  # acting, done, or failed (parked until `poll --retry-failed`)
    text: str
    error: str | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> JournalEntry:
        """An entry from its (request_id, ticket_id, reply, started_at, handled_at, intent,
        action, state, text, error)."""
        request_id, ticket_id, reply, started_at, handled_at, *rest = row
        written_at = json.loads(reply).get("at") if reply else None
        return cls(request_id, ticket_id, written_at, started_at, handled_at, *rest)


class PollJournal(Protocol):
    """What the poll needs from its journal, whatever stores it."""

    def begin(self, entry: Begun, at: datetime) -> None:
        """Note the decision before acting; a second begin of the same reply keeps the first."""
        ...

    def finish(self, reply: Reply, at: datetime) -> None:
        """The reply's action is complete."""
        ...

    def unfinished(self) -> list[Begun]:
        """Entries begun and not finished, oldest first."""
        ...

    def park(self, entry: Begun, error: str, at: datetime) -> None:
        """The reply's action failed in a way retrying will not fix (a bug, a poison pill): keep
        it out of the next passes, with the error, until `retry_failed`."""
        ...

    def retry_failed(self) -> int:
        """Give every parked reply to the next pass again (once the cause is fixed)."""
        ...

    def rows(self, ticket_ids: Sequence[str]) -> list[tuple[str, str, str | None, str]]:
        """(ticket_id, reply_key, crm_id, started_at) of these tickets, begun or done."""
        ...

    def decided_since(self, since: datetime) -> list[tuple[str, str, str]]:
        """(ticket_id, request_id, status) of the tickets a reply validated or rejected, whose
        last handled reply is not older than `since`."""
        ...

    def actions(self, ticket_id: str) -> list[tuple[str, str, str, str]]:
        """(reply_key, intent, action, state) of a ticket, oldest first."""
        ...

    def entries(self, request_id: str | None = None) -> list[JournalEntry]:
        """Every entry (or this request's), oldest first: what a read-only view shows of the
        client's answers."""
        ...

    def remove(self, request_ids: Sequence[str]) -> int:
        """Delete these requests' entries; how many."""
        ...

    def close(self) -> None: ...


class Journal:
    """`PollJournal` in one SQLite file (`poll.sqlite3` in the data dir)."""

    # Begun.values(), then state and error.
    _WRITE = ("INSERT INTO replies (ticket_id, reply_key, crm_id, source, request_id, intent,"
              " confiance, method, action, forward, text, reply, started_at, state, error)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
              " ON CONFLICT(ticket_id, reply_key) DO ")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = connect(
            path,
            "CREATE TABLE IF NOT EXISTS replies (ticket_id TEXT NOT NULL, reply_key TEXT NOT NULL,"
            " crm_id TEXT, source TEXT NOT NULL, request_id TEXT NOT NULL, state TEXT NOT NULL,"
            " intent TEXT NOT NULL, confiance REAL NOT NULL, method TEXT NOT NULL,"
            " action TEXT NOT NULL, forward INTEGER NOT NULL, text TEXT NOT NULL,"
            " reply TEXT NOT NULL, started_at TEXT NOT NULL, handled_at TEXT, error TEXT,"
            " PRIMARY KEY (ticket_id, reply_key))",
        )
        with self._lock:  # a journal written before parking existed has no error column
            add_columns(self._db, "replies", {"error": "TEXT"})

    def begin(self, entry: Begun, at: datetime) -> None:
        with self._lock:
            self._db.execute(self._WRITE + "NOTHING", (*entry.values(at), "acting", None))

    def finish(self, reply: Reply, at: datetime) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE replies SET state = 'done', handled_at = ? WHERE ticket_id = ?"
                " AND reply_key = ?", (at.isoformat(), reply.ticket_id, reply.key),
            )

    def park(self, entry: Begun, error: str, at: datetime) -> None:
        with self._lock:
            self._db.execute(self._WRITE + "UPDATE SET state = 'failed', error = excluded.error",
                             (*entry.values(at), "failed", error))

    def retry_failed(self) -> int:
        with self._lock:
            # Decided before it failed: resumed like any unfinished action. Failed before a
            # decision: forgotten, so the reply is read again.
            resumed = self._db.execute(
                "UPDATE replies SET state = 'acting', error = NULL"
                " WHERE state = 'failed' AND action != ?", (UNREAD,)).rowcount
            forgotten = self._db.execute(
                "DELETE FROM replies WHERE state = 'failed' AND action = ?", (UNREAD,)).rowcount
        return resumed + forgotten

    def unfinished(self) -> list[Begun]:
        with self._lock:
            rows = self._db.execute(
                "SELECT reply, request_id, action, intent, confiance, method, text, forward"
                " FROM replies WHERE state = 'acting' ORDER BY started_at"
            ).fetchall()
        return [Begun.from_row(r) for r in rows]

    def rows(self, ticket_ids: Sequence[str]) -> list[tuple[str, str, str | None, str]]:
        found: list[tuple[str, str, str | None, str]] = []
        with self._lock:
            for chunk in chunks(ticket_ids):
                found += self._db.execute(
                    "SELECT ticket_id, reply_key, crm_id, started_at FROM replies"
                    f" WHERE ticket_id IN ({marks(chunk)})", chunk,
                ).fetchall()
        return found

    def decided_since(self, since: datetime) -> list[tuple[str, str, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT ticket_id, MAX(request_id), MAX(handled_at),"
                " (SELECT d.action FROM replies d WHERE d.ticket_id = r.ticket_id"
                "  AND d.state = 'done' AND d.action IN ('validated', 'rejected')"
                "  ORDER BY d.handled_at DESC LIMIT 1)"
                " FROM replies r WHERE state = 'done' GROUP BY ticket_id"
                " HAVING MAX(handled_at) >= ? AND SUM(action IN ('validated', 'rejected')) > 0",
                (since.isoformat(),),
            ).fetchall()
        return [(ticket_id, request_id, status) for ticket_id, request_id, _, status in rows]

    def actions(self, ticket_id: str) -> list[tuple[str, str, str, str]]:
        with self._lock:
            return self._db.execute(
                "SELECT reply_key, intent, action, state FROM replies WHERE ticket_id = ?"
                " ORDER BY started_at", (ticket_id,),
            ).fetchall()

    def entries(self, request_id: str | None = None) -> list[JournalEntry]:
        where, args = where_equal("?", request_id=request_id)
        with self._lock:
            rows = self._db.execute(
                "SELECT request_id, ticket_id, reply, started_at, handled_at, intent, action,"
                f" state, text, error FROM replies{where} ORDER BY started_at", args).fetchall()
        return [JournalEntry.from_row(r) for r in rows]

    def remove(self, request_ids: Sequence[str]) -> int:
        """Forget these requests' entries (retention, `forget`: handler_cli.retention)."""
        with self._lock:
            return delete_in(self._db, "replies", "request_id", request_ids)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def parse_tokens(value: str | None) -> list[str]:
    return [t for t in (value or "").replace(",", " ").replace(";", " ").split() if t]


class HandledIndex:
    """What was handled for the waiting tickets: the journal plus the tickets' own property."""

    def __init__(self, journal: PollJournal, waiting: Sequence[WaitingTicket]) -> None:
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

    def learn(self, ticket_id: str, value: str | None) -> None:
        """A ticket's `handler_replies_handled` read after the index was made (a watched
        ticket, not in the CRM's search): its replies count as handled too."""
        self.tokens[ticket_id] = parse_tokens(value)
        self.keys.setdefault(ticket_id, set()).update(self.tokens[ticket_id])

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
