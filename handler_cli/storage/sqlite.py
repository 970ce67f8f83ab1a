"""The embedded backend: SQLite files in the data dir (one writer at a time, WAL readers).

The request store's webhook commits are at synchronous=FULL (an answered request survives a
power cut); the workers' writes at NORMAL (a lost checkpoint only means a step runs again).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handler_cli.intake.records import (
    KEY_WINDOW,
    PAYLOAD_WINDOW,
    Accepted,
    NewRequest,
    RequestRecord,
    past_attempt,
)
from handler_cli.ledger import Claim, request_of
from handler_cli.sqlite import connect
from handler_cli.storage import (
    BUSY_TIMEOUT_MS,
    DataDir,
    Removed,
    StaleDocument,
    StoreBusy,
    email_hash,
)

if TYPE_CHECKING:
    from handler_cli.document import Document
    from handler_cli.poll.journal import Journal

CLOCK_SKEW = 1.0  # a due request is claimable this long before its time

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
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS forgotten (email_hash TEXT PRIMARY KEY, forgotten_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = ("request_id", "status", "document", "steps", "attempts", "created_at", "updated_at",
            "due_at", "lease_owner", "lease_until", "last_error", "idempotency_key", "history")
_LIGHT = tuple(c for c in _COLUMNS if c != "document")


def _record(row: Sequence[Any], columns: Sequence[str] = _COLUMNS) -> RequestRecord:
    values = dict(zip(columns, row, strict=True))
    values["steps"] = json.loads(values.get("steps") or "{}")
    values["history"] = json.loads(values.get("history") or "[]")
    return RequestRecord(**values)


def _add_columns(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Bring a data dir written by an older version up to date (columns added since)."""
    present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, decl in columns.items():
        if name not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


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
            _add_columns(conn, "requests", {"history": "TEXT NOT NULL DEFAULT '[]'"})

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
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
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
        lookups = [item.key or f"payload:{item.fingerprint}" for item in items]
        known: dict[str, Accepted] = {}
        for start in range(0, len(lookups), 500):  # SQLite's bound-variable limit
            chunk = lookups[start:start + 500]
            for key, request_id, status in conn.execute(
                "SELECT i.key, r.request_id, r.status FROM idempotency i JOIN requests r"
                " ON r.request_id = i.request_id WHERE i.expires_at > ?"
                f" AND i.key IN ({', '.join('?' * len(chunk))})", (now, *chunk),
            ):
                known[key] = Accepted(request_id, status, False)
        # The request id is the submission's identity (document.submission_id): a request
        # stored before, whose keys have expired since, is still the same request.
        unknown = [item.request_id for item, lookup in zip(items, lookups, strict=True)
                   if lookup not in known]
        stored: dict[str, Accepted] = {}
        for start in range(0, len(unknown), 500):
            chunk = unknown[start:start + 500]
            for request_id, status in conn.execute(
                "SELECT request_id, status FROM requests"
                f" WHERE request_id IN ({', '.join('?' * len(chunk))})", chunk,
            ):
                stored[request_id] = Accepted(request_id, status, False)
        results: list[Accepted] = []
        rows: list[tuple[Any, ...]] = []
        keys: list[tuple[str, str, float]] = []
        for item, lookup in zip(items, lookups, strict=True):
            prior = known.get(lookup) or stored.get(item.request_id)
            if prior is not None:
                results.append(prior)
                continue
            stored[item.request_id] = Accepted(item.request_id, "queued", False)
            rows.append((item.request_id, item.document, item.fingerprint, item.key,
                         now, now, now))
            repeat = Accepted(item.request_id, "queued", False)
            payload_key = f"payload:{item.fingerprint}"
            keys.append((payload_key, item.request_id, now + PAYLOAD_WINDOW))
            known[payload_key] = repeat  # a later item of this batch repeats this one
            if item.key:
                keys.append((item.key, item.request_id, now + KEY_WINDOW))
                known[item.key] = repeat
            results.append(Accepted(item.request_id, "queued", True))
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
            f"SELECT {', '.join(_COLUMNS)} FROM requests WHERE request_id = ?", (request_id,)
        ).fetchone()
        return _record(row) if row else None

    def recent(self, status: str | None = None, limit: int = 50) -> list[RequestRecord]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM requests"
        args: tuple[Any, ...] = ()
        if status:
            sql, args = sql + " WHERE status = ?", (status,)
        rows = self._conn().execute(sql + " ORDER BY created_at DESC LIMIT ?", (*args, limit))
        return [_record(r) for r in rows.fetchall()]

    def open_requests(self) -> list[RequestRecord]:
        rows = self._conn().execute(
            f"SELECT {', '.join(_LIGHT)} FROM requests"
            " WHERE status IN ('queued', 'running', 'retrying') ORDER BY created_at"
        ).fetchall()
        return [_record(r, _LIGHT) for r in rows]

    def claim(
        self, request_id: str, owner: str, now: float, lease_until: float
    ) -> RequestRecord | None:
        row = self._conn().execute(
            "UPDATE requests SET status = 'running', lease_owner = ?, lease_until = ?,"
            " attempts = attempts + 1, updated_at = ? WHERE request_id = ? AND ("
            " (status IN ('queued', 'retrying') AND coalesce(due_at, 0) <= ?)"
            " OR (status = 'running' AND coalesce(lease_until, 0) < ?))"
            f" RETURNING {', '.join(_COLUMNS)}",
            (owner, lease_until, now, request_id, now + CLOCK_SKEW, now),
        ).fetchone()
        return _record(row) if row else None

    def update_owned(
        self, request_id: str, owner: str, status: str, fields: dict[str, Any]
    ) -> bool:
        values = {**fields, "status": status}
        if "steps" in values:
            values["steps"] = json.dumps(values["steps"])
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
                f" AND request_id IN ({', '.join('?' * len(ids))})",
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
                history = json.loads(row[5] or "[]")
                history.append(past_attempt(row[0], row[1], row[2], json.loads(row[3] or "{}"),
                                            row[4], now))
                conn.execute(
                    "UPDATE requests SET status = 'queued', attempts = 0, due_at = ?,"
                    " updated_at = ?, lease_owner = NULL, lease_until = NULL, last_error = NULL,"
                    " history = ? WHERE request_id = ?",
                    (now, now, json.dumps(history, ensure_ascii=False), request_id),
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
        """Delete these requests and the idempotency keys that point to them."""
        removed = 0
        conn = self._conn()
        for start in range(0, len(request_ids), 500):
            chunk = list(request_ids[start:start + 500])
            marks = ", ".join("?" * len(chunk))
            conn.execute(f"DELETE FROM idempotency WHERE request_id IN ({marks})", chunk)
            removed += conn.execute(
                f"DELETE FROM requests WHERE request_id IN ({marks})", chunk).rowcount
        return removed

    def salt(self) -> str:
        """This installation's salt for forgotten addresses, made once."""
        import secrets

        conn = self._conn()
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('email_salt', ?)",
                     (secrets.token_hex(16),))
        return str(conn.execute("SELECT value FROM meta WHERE key = 'email_salt'").fetchone()[0])

    def remember_forgotten(self, digest: str, at: float) -> None:
        self._conn().execute("INSERT OR IGNORE INTO forgotten (email_hash, forgotten_at)"
                             " VALUES (?, ?)", (digest, at))

    def forgotten_at(self, digest: str) -> float | None:
        row = self._conn().execute("SELECT forgotten_at FROM forgotten WHERE email_hash = ?",
                                   (digest,)).fetchone()
        return float(row[0]) if row else None

    def lift_forgotten(self, digest: str) -> bool:
        return self._conn().execute("DELETE FROM forgotten WHERE email_hash = ?",
                                    (digest,)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


# --- documents -----------------------------------------------------------------------------

_WAITING = ("pending_credits", "pending_info", "pending_admin")


class SqliteDocuments:
    """`DocumentStore` in `documents.sqlite3`: a revision per document, saved by compare-and-set."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = connect(path, """
            CREATE TABLE IF NOT EXISTS documents (request_id TEXT PRIMARY KEY, ticket_id TEXT,
              body TEXT NOT NULL, updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
              revision INTEGER NOT NULL DEFAULT 1);
            CREATE INDEX IF NOT EXISTS documents_ticket ON documents (ticket_id);
        """)
        with self._lock:
            _add_columns(self._db, "documents", {"revision": "INTEGER NOT NULL DEFAULT 1"})

    def _one(self, where: str, arg: str) -> Document | None:
        from handler_cli.document import Document

        with self._lock:
            row = self._db.execute(
                f"SELECT body, revision FROM documents WHERE {where} = ?", (arg,)).fetchone()
        if row is None:
            return None
        doc = Document.model_validate_json(row[0])
        doc._revision = int(row[1])
        return doc

    def get(self, request_id: str) -> Document | None:
        return self._one("request_id", request_id)

    def by_ticket(self, ticket_id: str) -> Document | None:
        return self._one("ticket_id", ticket_id)

    def save(self, doc: Document) -> None:
        with self._lock:
            if doc._revision is None:
                cur = self._db.execute(
                    "INSERT INTO documents (request_id, ticket_id, body, revision)"
                    " VALUES (?, ?, ?, 1) ON CONFLICT(request_id) DO NOTHING",
                    (doc.request_id, doc.ticket_id, doc.to_json()))
            else:
                cur = self._db.execute(
                    "UPDATE documents SET ticket_id = ?, body = ?, revision = revision + 1,"
                    " updated_at = CURRENT_TIMESTAMP WHERE request_id = ? AND revision = ?",
                    (doc.ticket_id, doc.to_json(), doc.request_id, doc._revision))
        if cur.rowcount != 1:
            raise StaleDocument(doc.request_id)
        doc._revision = 1 if doc._revision is None else doc._revision + 1

    def refresh(self, doc: Document) -> bool:
        stored = self.get(doc.request_id)
        if stored is None:
            return False
        adopt(doc, stored)
        return True

    def validated_without_subtask(self) -> list[Document]:
        """Validated requests whose production subtask is still missing: the poll retries them."""
        from handler_cli.document import Document

        with self._lock:
            rows = self._db.execute(
                "SELECT body, revision FROM documents"
                " WHERE json_extract(body, '$.validation_status') = 'validated'"
                " AND json_extract(body, '$.clickup_subtask_id') IS NULL"
            ).fetchall()
        docs = []
        for body, revision in rows:
            doc = Document.model_validate_json(body)
            doc._revision = int(revision)
            docs.append(doc)
        return docs

    def finished_before(self, cutoff: float) -> tuple[set[str], set[str]]:
        """(finished and untouched since `cutoff`, to keep: still waiting on the client, the
        admin or a subtask, or touched since) request ids."""
        marks = ", ".join("?" * len(_WAITING))
        keep_sql = (f"json_extract(body, '$.validation_status') IN ({marks}) OR"
                    " (json_extract(body, '$.validation_status') = 'validated'"
                    " AND json_extract(body, '$.clickup_subtask_id') IS NULL)"
                    " OR updated_at >= datetime(?, 'unixepoch')")
        with self._lock:
            keep = {r[0] for r in self._db.execute(
                f"SELECT request_id FROM documents WHERE {keep_sql}", (*_WAITING, cutoff))}
            every = {r[0] for r in self._db.execute("SELECT request_id FROM documents")}
        return every - keep, keep

    def requests_of(self, email: str) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute(
                "SELECT request_id FROM documents WHERE"
                " lower(json_extract(body, '$.user_email')) = ?", (email.strip().lower(),))}

    def remove(self, request_ids: Sequence[str]) -> int:
        return _delete_in(self._db, self._lock, "documents", "request_id", request_ids)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def adopt(doc: Document, stored: Document) -> None:
    """Make `doc` the stored copy in place (callers hold `doc`, e.g. the CLI that prints it)."""
    for name in type(doc).model_fields:
        setattr(doc, name, getattr(stored, name))
    if stored.model_extra is not None and doc.model_extra is not None:
        doc.model_extra.clear()
        doc.model_extra.update(stored.model_extra)
    doc._revision = stored._revision


def _delete_in(db: sqlite3.Connection, lock: threading.Lock, table: str, column: str,
               values: Sequence[str]) -> int:
    removed = 0
    with lock:
        for start in range(0, len(values), 500):
            chunk = list(values[start:start + 500])
            removed += db.execute(f"DELETE FROM {table} WHERE {column} IN"
                                  f" ({', '.join('?' * len(chunk))})", chunk).rowcount
    return removed


# --- the ledger's effects ------------------------------------------------------------------


class SqliteEffects:
    """`EffectStore` in `ledger.sqlite3`: a claim is one IMMEDIATE transaction, so two
    processes on one data dir (two `run`s, a worker and a shell) never both get it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = connect(path, "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY,"
                                 " state TEXT NOT NULL, result TEXT, updated_at TEXT NOT NULL,"
                                 " owner TEXT, lease_until REAL, request_id TEXT)")
        with self._lock:
            _add_columns(self._db, "effects", {"owner": "TEXT", "lease_until": "REAL",
                                               "request_id": "TEXT"})
            self._db.execute("CREATE INDEX IF NOT EXISTS effects_request ON effects (request_id)")

    def claim(self, key: str, owner: str, now: float, until: float,
              is_dead: Callable[[str | None], bool]) -> Claim:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT state, result, owner, lease_until FROM effects"
                                       " WHERE key = ?", (key,)).fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO effects (key, state, updated_at, owner, lease_until,"
                        " request_id) VALUES (?, 'pending', ?, ?, ?, ?)",
                        (key, _stamp(now), owner, until, request_of(key)))
                    claim = Claim("new")
                elif row[0] == "done":
                    claim = Claim("done", row[1])
                elif row[2] != owner and (row[3] or 0) > now and not is_dead(row[2]):
                    claim = Claim("held")
                else:
                    self._db.execute("UPDATE effects SET owner = ?, lease_until = ?,"
                                     " updated_at = ? WHERE key = ?",
                                     (owner, until, _stamp(now), key))
                    claim = Claim("stale")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return claim

    def complete(self, key: str, owner: str, result: str, now: float) -> None:
        with self._lock:
            self._db.execute("UPDATE effects SET state = 'done', result = ?, owner = NULL,"
                             " lease_until = NULL, updated_at = ? WHERE key = ?",
                             (result, _stamp(now), key))

    def release(self, key: str, owner: str) -> None:
        with self._lock:
            self._db.execute("UPDATE effects SET lease_until = 0 WHERE key = ? AND owner = ?"
                             " AND state = 'pending'", (key, owner))

    def get(self, key: str) -> tuple[str, str | None] | None:
        with self._lock:
            row = self._db.execute("SELECT state, result FROM effects WHERE key = ?",
                                   (key,)).fetchone()
        return (row[0], row[1]) if row else None

    def forget(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM effects WHERE key = ?", (key,))

    def remove(self, request_ids: Sequence[str]) -> int:
        return _delete_in(self._db, self._lock, "effects", "request_id", request_ids)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _stamp(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()


# --- the whole embedded state --------------------------------------------------------------


class SqliteStorage:
    """`Storage` in the data dir: one SQLite file per store, each opened on first use (a
    step that only classifies opens none)."""

    backend = "sqlite"
    shared = False

    def __init__(self, data_dir: DataDir) -> None:
        self.data_dir = data_dir

    def describe(self) -> str:
        return f"SQLite files in {self.data_dir.root}"

    @cached_property
    def requests(self) -> SqliteRequestStore:
        return SqliteRequestStore(self.data_dir.requests)

    @cached_property
    def documents(self) -> SqliteDocuments:
        return SqliteDocuments(self.data_dir.documents)

    @cached_property
    def effects(self) -> SqliteEffects:
        return SqliteEffects(self.data_dir.ledger)

    @cached_property
    def journal(self) -> Journal:
        from handler_cli.poll.journal import Journal

        return Journal(self.data_dir.poll_journal)

    def finished_before(self, cutoff: float) -> list[str]:
        # Removable where it is found, in every store that has it: a record with no document
        # (no ticket was made), a document with no record (the CLI's `run`), or both.
        old_records, keep_records = self.requests.finished_before(cutoff)
        old_docs, keep_docs = self.documents.finished_before(cutoff)
        return sorted((old_records | old_docs) - keep_records - keep_docs)

    def requests_of(self, email: str) -> list[str]:
        return sorted(self.requests.requests_of(email) | self.documents.requests_of(email))

    def remove(self, request_ids: Sequence[str]) -> Removed:
        removed = Removed(request_ids=list(request_ids))
        if not request_ids:
            return removed
        removed.add("requests", self.requests.remove(request_ids))
        removed.add("documents", self.documents.remove(request_ids))
        removed.add("ledger", self.effects.remove(request_ids))
        removed.add("journal", self.journal.remove(request_ids))
        return removed

    def poll_lock(self) -> AbstractContextManager[str | None]:
        from handler_cli.poll import poll_lock

        return poll_lock(self.data_dir.root)

    def remember_forgotten(self, email: str, at: float) -> None:
        self.requests.remember_forgotten(email_hash(email, self.requests.salt()), at)

    def is_forgotten(self, email: str) -> float | None:
        return self.requests.forgotten_at(email_hash(email, self.requests.salt()))

    def lift_forgotten(self, email: str) -> bool:
        return self.requests.lift_forgotten(email_hash(email, self.requests.salt()))

    def close(self) -> None:
        for part in ("requests", "documents", "effects", "journal"):
            if part in self.__dict__:
                self.__dict__.pop(part).close()


