"""The embedded document store: `documents.sqlite3`, a revision per document, compare-and-set."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from handler_cli.sqlite import add_columns, connect, delete_in
from handler_cli.storage import WAITING_STATUSES, SavedDocument, SavedTicket
from handler_cli.storage.rows import RevisedDocuments, where_equal

if TYPE_CHECKING:
    from handler_cli.document import Document


class SqliteDocuments(RevisedDocuments):
    """`DocumentStore` in `documents.sqlite3`: a revision per document, saved by compare-and-set."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = connect(path, """
            CREATE TABLE IF NOT EXISTS documents (request_id TEXT PRIMARY KEY, ticket_id TEXT,
              body TEXT NOT NULL, updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
              revision INTEGER NOT NULL DEFAULT 1);
            CREATE INDEX IF NOT EXISTS documents_ticket ON documents (ticket_id);
            CREATE INDEX IF NOT EXISTS documents_saved ON documents (updated_at);
        """)
        with self._lock:
            add_columns(self._db, "documents", {"revision": "INTEGER NOT NULL DEFAULT 1"})

    def _one(self, where: str, arg: str) -> Document | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT body, revision FROM documents WHERE {where} = ?", (arg,)).fetchone()
        return self._loaded(*row) if row else None

    def get(self, request_id: str) -> Document | None:
        return self._one("request_id", request_id)

    def by_ticket(self, ticket_id: str) -> Document | None:
        return self._one("ticket_id", ticket_id)

    def _insert(self, doc: Document, body: str) -> bool:
        with self._lock:
            return self._db.execute(
                "INSERT INTO documents (request_id, ticket_id, body, revision)"
                " VALUES (?, ?, ?, 1) ON CONFLICT(request_id) DO NOTHING",
                (doc.request_id, doc.ticket_id, body)).rowcount == 1

    def _update(self, doc: Document, body: str) -> bool:
        with self._lock:
            return self._db.execute(
                "UPDATE documents SET ticket_id = ?, body = ?, revision = revision + 1,"
                " updated_at = CURRENT_TIMESTAMP WHERE request_id = ? AND revision = ?",
                (doc.ticket_id, body, doc.request_id, doc._revision)).rowcount == 1

    def validated_without_subtask(self) -> list[Document]:
        """Validated requests whose production subtask is still missing: the poll retries them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body, revision FROM documents"
                " WHERE json_extract(body, '$.validation_status') = 'validated'"
                " AND json_extract(body, '$.clickup_subtask_id') IS NULL"
            ).fetchall()
        return [self._loaded(*row) for row in rows]

    def tickets_saved_since(self, since: datetime) -> list[SavedTicket]:
        # updated_at is CURRENT_TIMESTAMP's text (UTC, to the second): compared as text.
        with self._lock:
            rows = self._db.execute(
                "SELECT ticket_id, request_id, json_extract(body, '$.validation_status'),"
                " json_extract(body, '$.contact_id') FROM documents"
                " WHERE updated_at >= ? AND ticket_id IS NOT NULL ORDER BY updated_at",
                (since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),)).fetchall()
        return [SavedTicket(*row) for row in rows]

    def listing(self, *, request_id: str | None = None, ticket_id: str | None = None
                ) -> list[SavedDocument]:
        where, args = where_equal("?", request_id=request_id, ticket_id=ticket_id)
        with self._lock:
            rows = self._db.execute(
                f"SELECT request_id, ticket_id, body, updated_at FROM documents{where}"
                " ORDER BY request_id", args).fetchall()
        return [SavedDocument.from_row(rid, ticket, body, _saved_at(at))
                for rid, ticket, body, at in rows]

    # retention and forgetting (handler_cli.retention)

    def finished_before(self, cutoff: float) -> tuple[set[str], set[str]]:
        """(untouched since `cutoff`, to keep: still waiting on the client, the admin or a
        subtask, or touched since) request ids."""
        marks = ", ".join("?" * len(WAITING_STATUSES))
        keep_sql = (f"json_extract(body, '$.validation_status') IN ({marks}) OR"
                    " (json_extract(body, '$.validation_status') = 'validated'"
                    " AND json_extract(body, '$.clickup_subtask_id') IS NULL)"
                    " OR updated_at >= datetime(?, 'unixepoch')")
        with self._lock:
            keep = {r[0] for r in self._db.execute(
                f"SELECT request_id FROM documents WHERE {keep_sql}", (*WAITING_STATUSES, cutoff))}
            every = {r[0] for r in self._db.execute("SELECT request_id FROM documents")}
        return every - keep, keep

    def requests_of(self, email: str) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute(
                "SELECT request_id FROM documents WHERE"
                " lower(json_extract(body, '$.user_email')) = ?", (email.strip().lower(),))}

    def remove(self, request_ids: Sequence[str]) -> int:
        with self._lock:
            return delete_in(self._db, "documents", "request_id", request_ids)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _saved_at(value: str | None) -> datetime | None:
    """`updated_at`: SQLite's CURRENT_TIMESTAMP, UTC without a zone."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC) if value else None
