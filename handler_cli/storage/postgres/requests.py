"""The shared request store: `handler_requests` and `handler_idempotency` in PostgreSQL.

Every change that must be atomic is one statement or one transaction (row locks,
`INSERT … ON CONFLICT`); commits are durable (PostgreSQL's default `synchronous_commit=on`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from handler_cli.intake.records import (
    KEY_WINDOW,
    Accepted,
    NewRequest,
    RequestRecord,
    RequestStatus,
)
from handler_cli.storage.postgres.connections import Connections
from handler_cli.storage.rows import (
    CLOCK_SKEW,
    LIGHT_COLUMNS,
    REQUEST_COLUMNS,
    owned_update,
    replayed_history,
    request_record,
    where_equal,
)

_COLUMNS = ", ".join(REQUEST_COLUMNS)
_OPEN = tuple(str(s) for s in (RequestStatus.QUEUED, RequestStatus.RUNNING,
                               RequestStatus.RETRYING))
FINISHED = (str(RequestStatus.DONE), str(RequestStatus.FAILED))


class PostgresRequestStore:
    """`RequestStore` in `handler_requests` and `handler_idempotency`."""

    accept_blocks = True  # a network round trip: the webhook calls it from a thread

    def __init__(self, db: Connections) -> None:
        self.db = db

    def accept_now(self, items: Sequence[NewRequest], now: float) -> list[Accepted]:
        return self.accept_many(items, now)

    def accept_many(self, items: Sequence[NewRequest], now: float) -> list[Accepted]:
        """One transaction. A submission is a repeat when its key (webhook-id,
        Idempotency-Key) names a stored request, or when its request id (the payload's
        identity) is stored already. A key is taken with one INSERT … ON CONFLICT (an expired
        key is taken over), a request with another: two machines accepting the same delivery
        at once are serialised by the row's lock, and the second finds the first's request.

        A connection that broke since its last use (the server restarted) is replaced and the
        batch tried once more: accepting is idempotent (a batch that did commit is found by
        its keys and ids), so the sender gets its answer instead of a 503."""
        return self.db.once_more_if_disconnected(lambda: self._accept(items, now))

    def _accept(self, items: Sequence[NewRequest], now: float) -> list[Accepted]:
        results: list[Accepted] = []
        by_key: dict[str, Accepted] = {}
        by_id: dict[str, Accepted] = {}
        with self.db.transaction() as conn:
            for item in items:
                if item.key:
                    if item.key in by_key:
                        results.append(by_key[item.key])
                        continue
                    prior = self._take_key(conn, item, now)
                    if prior is not None:
                        by_key[item.key] = prior
                        results.append(prior)
                        continue
                if item.request_id in by_id:
                    results.append(by_id[item.request_id])
                    continue
                created = conn.execute(
                    "INSERT INTO handler_requests (request_id, status, document, fingerprint,"
                    " idempotency_key, created_at, updated_at, due_at)"
                    " VALUES (%s, 'queued', %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
                    (item.request_id, item.document, item.fingerprint, item.key, now, now, now)
                ).fetchone()
                if created is None:
                    row = conn.execute("SELECT status FROM handler_requests"
                                       " WHERE request_id = %s", (item.request_id,)).fetchone()
                    repeat = Accepted(item.request_id, row[0] if row else "queued", False)
                    results.append(repeat)
                else:
                    repeat = Accepted(item.request_id, "queued", False)
                    results.append(Accepted(item.request_id, "queued", True))
                by_id[item.request_id] = repeat
                if item.key:
                    by_key[item.key] = repeat
        return results

    @staticmethod
    def _take_key(conn: Any, item: NewRequest, now: float) -> Accepted | None:
        """Take `item.key` for this submission; the request it names when it is taken by a
        stored request already (a repeat), None when it is ours now."""
        taken = conn.execute(
            "INSERT INTO handler_idempotency AS i (key, request_id, expires_at)"
            " VALUES (%s, %s, %s) ON CONFLICT (key) DO UPDATE SET"
            " request_id = excluded.request_id, expires_at = excluded.expires_at"
            " WHERE i.expires_at <= %s RETURNING request_id",
            (item.key, item.request_id, now + KEY_WINDOW, now)).fetchone()
        if taken is not None:
            return None
        prior = conn.execute(
            "SELECT r.request_id, r.status FROM handler_idempotency i JOIN"
            " handler_requests r ON r.request_id = i.request_id WHERE i.key = %s",
            (item.key,)).fetchone()
        if prior is not None:
            return Accepted(prior[0], prior[1], False)
        # The key points to a request removed since (prune, forget): ours now.
        conn.execute("UPDATE handler_idempotency SET request_id = %s, expires_at = %s"
                     " WHERE key = %s", (item.request_id, now + KEY_WINDOW, item.key))
        return None

    def get(self, request_id: str) -> RequestRecord | None:
        row = self.db.conn().execute(
            f"SELECT {_COLUMNS} FROM handler_requests WHERE request_id = %s",
            (request_id,)).fetchone()
        return request_record(row) if row else None

    def recent(self, status: str | None = None, limit: int = 50) -> list[RequestRecord]:
        where, args = where_equal("%s", status=status or None)
        rows = self.db.conn().execute(f"SELECT {_COLUMNS} FROM handler_requests{where}"
                                      " ORDER BY created_at DESC LIMIT %s", (*args, limit))
        return [request_record(r) for r in rows.fetchall()]

    def open_requests(self) -> list[RequestRecord]:
        rows = self.db.conn().execute(
            f"SELECT {', '.join(LIGHT_COLUMNS)} FROM handler_requests WHERE status = ANY(%s)"
            " ORDER BY created_at", (list(_OPEN),)).fetchall()
        return [request_record(r, LIGHT_COLUMNS) for r in rows]

    def claim(self, request_id: str, owner: str, now: float, lease_until: float
              ) -> RequestRecord | None:
        row = self.db.conn().execute(
            "UPDATE handler_requests SET status = 'running', lease_owner = %s, lease_until = %s,"
            " attempts = attempts + 1, updated_at = %s WHERE request_id = %s AND ("
            " (status IN ('queued', 'retrying') AND coalesce(due_at, 0) <= %s)"
            " OR (status = 'running' AND coalesce(lease_until, 0) < %s))"
            f" RETURNING {_COLUMNS}",
            (owner, lease_until, now, request_id, now + CLOCK_SKEW, now)).fetchone()
        return request_record(row) if row else None

    def update_owned(self, request_id: str, owner: str, status: str, fields: dict[str, Any]
                     ) -> bool:
        values = owned_update(status, fields)
        assignments = ", ".join(f"{name} = %s" for name in values)
        cur = self.db.conn().execute(
            f"UPDATE handler_requests SET {assignments} WHERE request_id = %s"
            " AND status = 'running' AND lease_owner = %s",
            (*values.values(), request_id, owner))
        return cur.rowcount == 1

    def renew(self, request_ids: Iterable[str], owner: str, lease_until: float) -> None:
        ids = list(request_ids)
        if ids:
            self.db.conn().execute(
                "UPDATE handler_requests SET lease_until = %s WHERE status = 'running'"
                " AND lease_owner = %s AND request_id = ANY(%s)", (lease_until, owner, ids))

    def requeue(self, request_id: str, now: float, allowed: Sequence[str]) -> str | None:
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT status, attempts, last_error, steps, updated_at, history"
                " FROM handler_requests WHERE request_id = %s FOR UPDATE",
                (request_id,)).fetchone()
            if row is not None and row[0] in allowed:
                conn.execute(
                    "UPDATE handler_requests SET status = 'queued', attempts = 0, due_at = %s,"
                    " updated_at = %s, lease_owner = NULL, lease_until = NULL,"
                    " last_error = NULL, history = %s WHERE request_id = %s",
                    (now, now, replayed_history(row, now), request_id))
        return str(row[0]) if row else None

    def prune(self, now: float) -> None:
        self.db.conn().execute("DELETE FROM handler_idempotency WHERE expires_at <= %s", (now,))

    def ping(self, now: float) -> None:
        """A write, as readiness means; on a connection that broke since (the server
        restarted), once more on a new one."""
        self.db.once_more_if_disconnected(lambda: self.db.conn().execute(
            "INSERT INTO handler_probe (id, at) VALUES (1, %s)"
            " ON CONFLICT (id) DO UPDATE SET at = excluded.at", (now,)))

    def close(self) -> None:
        self.db.close()

    # retention and forgetting (handler_cli.retention)

    def finished_before(self, cutoff: float) -> tuple[set[str], set[str]]:
        """(finished and untouched since `cutoff`, to keep) request ids."""
        conn = self.db.conn()
        old = {r[0] for r in conn.execute(
            "SELECT request_id FROM handler_requests WHERE status = ANY(%s) AND updated_at < %s",
            (list(FINISHED), cutoff))}
        keep = {r[0] for r in conn.execute(
            "SELECT request_id FROM handler_requests WHERE NOT (status = ANY(%s))"
            " OR updated_at >= %s", (list(FINISHED), cutoff))}
        return old, keep

    def requests_of(self, email: str) -> set[str]:
        return {r[0] for r in self.db.conn().execute(
            "SELECT request_id FROM handler_requests"
            " WHERE lower(document::jsonb ->> 'user_email') = %s", (email.strip().lower(),))}

    def remove(self, request_ids: Sequence[str]) -> int:
        """Delete these requests and the idempotency keys that point to them."""
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM handler_idempotency WHERE request_id = ANY(%s)",
                         (list(request_ids),))
            return conn.execute("DELETE FROM handler_requests WHERE request_id = ANY(%s)",
                                (list(request_ids),)).rowcount
