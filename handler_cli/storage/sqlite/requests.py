"""The embedded request store: `requests.sqlite3` in the data dir (one writer, WAL readers).

The webhook's commits are at synchronous=FULL (an answered request survives a power cut);
the workers' writes at NORMAL (a lost checkpoint only means a step runs again).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from handler_cli.intake.records import KEY_WINDOW, Accepted, NewRequest, RequestRecord
from handler_cli.sqlite import add_columns, chunks, delete_in, marks, wal
from handler_cli.storage import BUSY_TIMEOUT_MS, StoreBusy
from handler_cli.storage.rows import (
    CLOCK_SKEW,
    LIGHT_COLUMNS,
    REQUEST_COLUMNS,
    owned_update,
    replayed_history,
    request_record,
    where_equal,
)

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
  request_id TEXT PRIMARY KEY, status TEXT NOT NULL, document TEXT NOT NULL,
  steps TEXT NOT NULL DEFAULT '{}', fingerprint TEXT NOT NULL, idempotency_key TEXT,
  attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL,
  due_at REAL, lease_owner TEXT, lease_until REAL, last_error TEXT,
  history TEXT NOT NULL DEFAULT '[]');
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, created_at);
CREATE TABLE IF NOT EXISTS idempotency (
  key TEXT PRIMARY KEY, request_id TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS idempotency_request ON idempotency (request_id);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""
_COLUMNS = ", ".join(REQUEST_COLUMNS)


class SqliteRequestStore:
    """One SQLite file; a connection per thread (and per process, after a fork)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self._conn() as conn:
            conn.executescript(_SQLITE_SCHEMA)
            add_columns(conn, "requests", {"history": "TEXT NOT NULL DEFAULT '[]'"})

    def _conn(self, durable: bool = False) -> sqlite3.Connection:
        """This thread's connection. `durable`: FULL, each commit is on disk before it
        returns, even across a power cut: what the webhook needs before answering 202.
        Otherwise NORMAL (WAL: safe from a crashed process, not from a power cut): a lost
        checkpoint or status change only means a step runs again, which steps allow, and
        the workers' writes do not hold the lock the webhook waits for during an fsync."""
        slot = "durable" if durable else "conn"
        conn: sqlite3.Connection | None = getattr(self._local, slot, None)
        if conn is None or getattr(self._local, slot + "_pid", None) != os.getpid():
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                check_same_thread=False
            )
            wal(conn, BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            # Erasures zero what they delete (handler_cli.sqlite.connect). The durable
            # connection only takes requests in: it deletes nothing but replaced idempotency
            # rows (keys and ids, no personal data), and zeroing cost the intake a fifth of
            # its throughput (bench/bench_serve.py), so it is the one connection without it.
            conn.execute(f"PRAGMA secure_delete={'OFF' if durable else 'ON'}")
            setattr(self._local, slot, conn)
            setattr(self._local, slot + "_pid", os.getpid())
            with self._lock:
                self._all.append(conn)
        return conn

    accept_blocks = False  # a local commit: the webhook's event loop writes it itself

    def accept_many(self, items: Sequence[NewRequest], now: float) -> list[Accepted]:
        return self._accept(items, now, wait=True)

    def accept_now(self, items: Sequence[NewRequest], now: float) -> list[Accepted]:
        """For the webhook's event loop: when a worker holds the write lock, raise StoreBusy
        at once instead of waiting for it; the caller tries again shortly."""
        return self._accept(items, now, wait=False)

    def _accept(self, items: Sequence[NewRequest], now: float, wait: bool) -> list[Accepted]:
        """Store a batch in one durable transaction: one lookup query for all its idempotency
        keys, then the new requests and their keys, then COMMIT (the fsync)."""
        conn = self._conn(durable=True)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS if wait else 0}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not wait and exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                raise StoreBusy() from None
            raise
        try:
            results = self._insert(conn, items, now)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    def _insert(self, conn: sqlite3.Connection, items: Sequence[NewRequest], now: float
                ) -> list[Accepted]:
        """A submission is a repeat when its key (webhook-id, Idempotency-Key) names a stored
        request, or when its request id, the payload's identity (document.submission_id), is
        stored already, however long ago. One query for the keys, one for the ids."""
        by_key: dict[str, Accepted] = {}
        keys_given = [item.key for item in items if item.key]
        for chunk in chunks(keys_given):
            for key, request_id, status in conn.execute(
                "SELECT i.key, r.request_id, r.status FROM idempotency i JOIN requests r"
                " ON r.request_id = i.request_id WHERE i.expires_at > ?"
                f" AND i.key IN ({marks(chunk)})", (now, *chunk),
            ):
                by_key[key] = Accepted(request_id, status, False)
        by_id: dict[str, Accepted] = {}
        for chunk in chunks([item.request_id for item in items]):
            for request_id, status in conn.execute(
                f"SELECT request_id, status FROM requests WHERE request_id IN ({marks(chunk)})",
                chunk,
            ):
                by_id[request_id] = Accepted(request_id, status, False)
        results: list[Accepted] = []
        rows: list[tuple[Any, ...]] = []
        keys: list[tuple[str, str, float]] = []
        for item in items:
            prior = (by_key.get(item.key) if item.key else None) or by_id.get(item.request_id)
            if prior is None:
                rows.append((item.request_id, item.document, item.fingerprint, item.key,
                             now, now, now))
                prior = by_id[item.request_id] = Accepted(item.request_id, "queued", False)
                results.append(Accepted(item.request_id, "queued", True))
            else:
                results.append(prior)
            if item.key and item.key not in by_key:  # remembered, so a reuse is recognised
                keys.append((item.key, prior.request_id, now + KEY_WINDOW))
                by_key[item.key] = prior
        conn.executemany(
            "INSERT INTO requests (request_id, status, document, fingerprint,"
            " idempotency_key, created_at, updated_at, due_at)"
            " VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)", rows)
        conn.executemany(
            "INSERT OR REPLACE INTO idempotency (key, request_id, expires_at)"
            " VALUES (?, ?, ?)", keys)
        return results

    def get(self, request_id: str) -> RequestRecord | None:
        row = self._conn().execute(
            f"SELECT {_COLUMNS} FROM requests WHERE request_id = ?", (request_id,)
        ).fetchone()
        return request_record(row) if row else None

    def recent(self, status: str | None = None, limit: int = 50) -> list[RequestRecord]:
        where, args = where_equal("?", status=status or None)
        rows = self._conn().execute(f"SELECT {_COLUMNS} FROM requests{where}"
                                    " ORDER BY created_at DESC LIMIT ?", (*args, limit))
        return [request_record(r) for r in rows.fetchall()]

    def open_requests(self) -> list[RequestRecord]:
        rows = self._conn().execute(
            f"SELECT {', '.join(LIGHT_COLUMNS)} FROM requests"
            " WHERE status IN ('queued', 'running', 'retrying') ORDER BY created_at"
        ).fetchall()
        return [request_record(r, LIGHT_COLUMNS) for r in rows]

    def claim(
        self, request_id: str, owner: str, now: float, lease_until: float
    ) -> RequestRecord | None:
        row = self._conn().execute(
            "UPDATE requests SET status = 'running', lease_owner = ?, lease_until = ?,"
            " attempts = attempts + 1, updated_at = ? WHERE request_id = ? AND ("
            " (status IN ('queued', 'retrying') AND coalesce(due_at, 0) <= ?)"
            " OR (status = 'running' AND coalesce(lease_until, 0) < ?))"
            f" RETURNING {_COLUMNS}",
            (owner, lease_until, now, request_id, now + CLOCK_SKEW, now),
        ).fetchone()
        return request_record(row) if row else None

    def update_owned(
        self, request_id: str, owner: str, status: str, fields: dict[str, Any]
    ) -> bool:
        values = owned_update(status, fields)
        assignments = ", ".join(f"{name} = ?" for name in values)
        cur = self._conn().execute(
            f"UPDATE requests SET {assignments} WHERE request_id = ? AND status = 'running'"
            " AND lease_owner = ?",
            (*values.values(), request_id, owner),
        )
        return cur.rowcount == 1

    def renew(self, request_ids: Iterable[str], owner: str, lease_until: float) -> None:
        ids = list(request_ids)
        if ids:
            self._conn().execute(
                "UPDATE requests SET lease_until = ? WHERE status = 'running' AND lease_owner = ?"
                f" AND request_id IN ({marks(ids)})",
                (lease_until, owner, *ids),
            )

    def requeue(self, request_id: str, now: float, allowed: Sequence[str]) -> str | None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT status, attempts, last_error, steps, updated_at, history FROM requests"
                " WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row is not None and row[0] in allowed:
                conn.execute(
                    "UPDATE requests SET status = 'queued', attempts = 0, due_at = ?,"
                    " updated_at = ?, lease_owner = NULL, lease_until = NULL, last_error = NULL,"
                    " history = ? WHERE request_id = ?",
                    (now, now, replayed_history(row, now), request_id),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return row[0] if row else None

    def prune(self, now: float) -> None:
        self._conn().execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,))

    def ping(self, now: float) -> None:
        self._conn().execute("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)", (now,))

    # retention and forgetting (handler_cli.retention)

    def finished_before(self, cutoff: float) -> tuple[set[str], set[str]]:
        """(finished and untouched since `cutoff`, to keep) request ids."""
        conn = self._conn()
        old = {r[0] for r in conn.execute(
            "SELECT request_id FROM requests WHERE status IN ('done', 'failed')"
            " AND updated_at < ?", (cutoff,))}
        keep = {r[0] for r in conn.execute(
            "SELECT request_id FROM requests WHERE status NOT IN ('done', 'failed')"
            " OR updated_at >= ?", (cutoff,))}
        return old, keep

    def requests_of(self, email: str) -> set[str]:
        rows = self._conn().execute(
            "SELECT request_id FROM requests WHERE lower(json_extract(document, '$.user_email'))"
            " = ?", (email.strip().lower(),)).fetchall()
        return {r[0] for r in rows}

    def remove(self, request_ids: Sequence[str]) -> int:
        """Delete these requests and the idempotency keys that point to them, in one
        transaction; how many requests."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            delete_in(conn, "idempotency", "request_id", request_ids)
            removed = delete_in(conn, "requests", "request_id", request_ids)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return removed

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


