"""The latest copy of every request document that reached the CRM, kept in the data dir.

Steps write documents to stdout; this store keeps them too so the poll, hours later, can
find the request behind a waiting ticket (the client's name and e-mail, the object, the
files) without asking the CRM for it again.
"""

from __future__ import annotations

import threading
from pathlib import Path

from handler_cli.document import Document
from handler_cli.sqlite import connect


class DocumentStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = connect(path, """
            CREATE TABLE IF NOT EXISTS documents (request_id TEXT PRIMARY KEY, ticket_id TEXT,
              body TEXT NOT NULL, updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
            CREATE INDEX IF NOT EXISTS documents_ticket ON documents (ticket_id);
        """)

    def save(self, doc: Document) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO documents (request_id, ticket_id, body) VALUES (?, ?, ?)"
                " ON CONFLICT(request_id) DO UPDATE SET ticket_id = excluded.ticket_id,"
                " body = excluded.body, updated_at = CURRENT_TIMESTAMP",
                (doc.request_id, doc.ticket_id, doc.to_json()),
            )

    def get(self, request_id: str) -> Document | None:
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM documents WHERE request_id = ?", (request_id,)
            ).fetchone()
        return Document.model_validate_json(row[0]) if row else None

    def validated_without_subtask(self) -> list[Document]:
        """Validated requests whose production subtask is still missing: the poll retries them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM documents"
                " WHERE json_extract(body, '$.validation_status') = 'validated'"
                " AND json_extract(body, '$.clickup_subtask_id') IS NULL"
            ).fetchall()
        return [Document.model_validate_json(r[0]) for r in rows]

    def by_ticket(self, ticket_id: str) -> Document | None:
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM documents WHERE ticket_id = ?", (ticket_id,)
            ).fetchone()
        return Document.model_validate_json(row[0]) if row else None
