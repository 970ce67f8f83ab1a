"""The shared document store: `handler_documents`, saved by compare-and-set on a revision."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from handler_cli.storage import WAITING_STATUSES, SavedDocument, SavedTicket
from handler_cli.storage.postgres.connections import Connections
from handler_cli.storage.rows import RevisedDocuments, where_equal

if TYPE_CHECKING:
    from handler_cli.document import Document


class PostgresDocuments(RevisedDocuments):
    """`DocumentStore` in `handler_documents`, saved by compare-and-set on `revision`."""

    def __init__(self, db: Connections) -> None:
        self.db = db

    def get(self, request_id: str) -> Document | None:
        row = self.db.conn().execute("SELECT body, revision FROM handler_documents"
                                     " WHERE request_id = %s", (request_id,)).fetchone()
        return self._loaded(*row) if row else None

    def by_ticket(self, ticket_id: str) -> Document | None:
        row = self.db.conn().execute("SELECT body, revision FROM handler_documents"
                                     " WHERE ticket_id = %s LIMIT 1", (ticket_id,)).fetchone()
        return self._loaded(*row) if row else None

    def _insert(self, doc: Document, body: str) -> bool:
        return self.db.conn().execute(
            "INSERT INTO handler_documents (request_id, ticket_id, body, revision, updated_at)"
            " VALUES (%s, %s, %s, 1, %s) ON CONFLICT (request_id) DO NOTHING",
            (doc.request_id, doc.ticket_id, body, datetime.now(UTC).timestamp())).rowcount == 1

    def _update(self, doc: Document, body: str) -> bool:
        return self.db.conn().execute(
            "UPDATE handler_documents SET ticket_id = %s, body = %s, revision = revision + 1,"
            " updated_at = %s WHERE request_id = %s AND revision = %s",
            (doc.ticket_id, body, datetime.now(UTC).timestamp(), doc.request_id,
             doc._revision)).rowcount == 1

    def validated_without_subtask(self) -> list[Document]:
        rows = self.db.conn().execute(
            "SELECT body, revision FROM handler_documents"
            " WHERE body::jsonb ->> 'validation_status' = 'validated'"
            " AND coalesce(body::jsonb ->> 'clickup_subtask_id', '') = ''").fetchall()
        return [self._loaded(*r) for r in rows]

    def tickets_saved_since(self, since: datetime) -> list[SavedTicket]:
        rows = self.db.conn().execute(
            "SELECT ticket_id, request_id, body::jsonb ->> 'validation_status',"
            " body::jsonb ->> 'contact_id' FROM handler_documents"
            " WHERE updated_at >= %s AND ticket_id IS NOT NULL ORDER BY updated_at",
            (since.timestamp(),)).fetchall()
        return [SavedTicket(*row) for row in rows]

    def listing(self, *, request_id: str | None = None, ticket_id: str | None = None
                ) -> list[SavedDocument]:
        where, args = where_equal("%s", request_id=request_id, ticket_id=ticket_id)
        rows = self.db.conn().execute(
            f"SELECT request_id, ticket_id, body, updated_at FROM handler_documents{where}"
            " ORDER BY request_id", args).fetchall()
        return [SavedDocument.from_row(rid, ticket, body, datetime.fromtimestamp(at, UTC))
                for rid, ticket, body, at in rows]

    # retention and forgetting (handler_cli.retention)

    def finished_before(self, cutoff: float) -> tuple[set[str], set[str]]:
        """(untouched since `cutoff`, to keep: still waiting on the client, the admin or a
        subtask, or touched since) request ids."""
        conn = self.db.conn()
        keep = {r[0] for r in conn.execute(
            "SELECT request_id FROM handler_documents WHERE updated_at >= %s"
            " OR body::jsonb ->> 'validation_status' = ANY(%s)"
            " OR (body::jsonb ->> 'validation_status' = 'validated'"
            "     AND coalesce(body::jsonb ->> 'clickup_subtask_id', '') = '')",
            (cutoff, list(WAITING_STATUSES)))}
        old = {r[0] for r in conn.execute(
            "SELECT request_id FROM handler_documents WHERE updated_at < %s", (cutoff,))}
        return old - keep, keep

    def requests_of(self, email: str) -> set[str]:
        return {r[0] for r in self.db.conn().execute(
            "SELECT request_id FROM handler_documents"
            " WHERE lower(body::jsonb ->> 'user_email') = %s", (email.strip().lower(),))}

    def remove(self, request_ids: Sequence[str]) -> int:
        return self.db.conn().execute("DELETE FROM handler_documents WHERE request_id = ANY(%s)",
                                      (list(request_ids),)).rowcount

    def close(self) -> None:
        self.db.close()
