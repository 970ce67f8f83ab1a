"""The shared poll journal: `handler_replies` (the poll's side: handler_cli.poll.journal)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from handler_cli.storage.postgres.connections import Connections
from handler_cli.storage.rows import where_equal

if TYPE_CHECKING:
    from handler_cli.poll.journal import Begun, JournalEntry
    from handler_cli.replies import Reply


class PostgresJournal:
    """`PollJournal` in `handler_replies` (see handler_cli.poll.journal, imported only when
    an entry is read back: the storage layer does not load the poll)."""

    # Begun.values(), then state and error.
    _WRITE = ("INSERT INTO handler_replies (ticket_id, reply_key, crm_id, source, request_id,"
              " intent, confiance, method, action, forward, text, reply, started_at, state,"
              " error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
              " ON CONFLICT (ticket_id, reply_key) DO ")

    def __init__(self, db: Connections) -> None:
        self.db = db

    def begin(self, entry: Begun, at: datetime) -> None:
        self.db.conn().execute(self._WRITE + "NOTHING", (*entry.values(at), "acting", None))

    def finish(self, reply: Reply, at: datetime) -> None:
        self.db.conn().execute(
            "UPDATE handler_replies SET state = 'done', handled_at = %s WHERE ticket_id = %s"
            " AND reply_key = %s", (at.isoformat(), reply.ticket_id, reply.key))

    def park(self, entry: Begun, error: str, at: datetime) -> None:
        self.db.conn().execute(
            self._WRITE + "UPDATE SET state = 'failed', error = excluded.error",
            (*entry.values(at), "failed", error))

    def retry_failed(self) -> int:
        from handler_cli.poll.journal import UNREAD

        with self.db.transaction() as conn:
            resumed = conn.execute(
                "UPDATE handler_replies SET state = 'acting', error = NULL"
                " WHERE state = 'failed' AND action != %s", (UNREAD,)).rowcount
            forgotten = conn.execute(
                "DELETE FROM handler_replies WHERE state = 'failed' AND action = %s",
                (UNREAD,)).rowcount
        return resumed + forgotten

    def unfinished(self) -> list[Begun]:
        from handler_cli.poll.journal import Begun

        rows = self.db.conn().execute(
            "SELECT reply, request_id, action, intent, confiance, method, text, forward"
            " FROM handler_replies WHERE state = 'acting' ORDER BY started_at").fetchall()
        return [Begun.from_row(r) for r in rows]

    def rows(self, ticket_ids: Sequence[str]) -> list[tuple[str, str, str | None, str]]:
        found = self.db.conn().execute(
            "SELECT ticket_id, reply_key, crm_id, started_at FROM handler_replies"
            " WHERE ticket_id = ANY(%s)", (list(ticket_ids),)).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in found]

    def decided_since(self, since: datetime) -> list[tuple[str, str, str]]:
        found = self.db.conn().execute(
            "SELECT ticket_id, MAX(request_id),"
            " (SELECT d.action FROM handler_replies d WHERE d.ticket_id = r.ticket_id"
            "  AND d.state = 'done' AND d.action IN ('validated', 'rejected')"
            "  ORDER BY d.handled_at DESC LIMIT 1)"
            " FROM handler_replies r WHERE state = 'done' GROUP BY ticket_id"
            " HAVING MAX(handled_at) >= %s"
            " AND COUNT(*) FILTER (WHERE action IN ('validated', 'rejected')) > 0",
            (since.isoformat(),)).fetchall()
        return [(r[0], r[1], r[2]) for r in found]

    def actions(self, ticket_id: str) -> list[tuple[str, str, str, str]]:
        found = self.db.conn().execute(
            "SELECT reply_key, intent, action, state FROM handler_replies WHERE ticket_id = %s"
            " ORDER BY started_at", (ticket_id,)).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in found]

    def entries(self, request_id: str | None = None) -> list[JournalEntry]:
        from handler_cli.poll.journal import JournalEntry

        where, args = where_equal("%s", request_id=request_id)
        rows = self.db.conn().execute(
            "SELECT request_id, ticket_id, reply, started_at, handled_at, intent, action, state,"
            f" text, error FROM handler_replies{where} ORDER BY started_at", args).fetchall()
        return [JournalEntry.from_row(r) for r in rows]

    def remove(self, request_ids: Sequence[str]) -> int:
        return self.db.conn().execute("DELETE FROM handler_replies WHERE request_id = ANY(%s)",
                                      (list(request_ids),)).rowcount

    def close(self) -> None:
        self.db.close()
