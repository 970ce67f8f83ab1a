"""The shared backend: one PostgreSQL for every machine of a scaled-out installation.

Requests, documents, the ledger's effects and the poll's journal are tables of one database
(prefix `handler_`), beside huey's own queue tables (`huey_*`, huey's `PostgresStorage`):
so a request taken in on one machine is run on another and its reply acted on by a poll on a
third, and a claim in the ledger holds across machines. Every change that must be atomic is
one statement or one transaction (row locks, `INSERT … ON CONFLICT`, compare-and-set on a
revision); commits are durable (PostgreSQL's default `synchronous_commit=on`).

psycopg (3) is imported here only, when `HANDLER_DATABASE_URL` is set. Each thread (and each
process after a fork) gets its own autocommit connection.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from handler_cli.intake.records import (
    KEY_WINDOW,
    PAYLOAD_WINDOW,
    Accepted,
    NewRequest,
    RequestRecord,
    RequestStatus,
    past_attempt,
)
from handler_cli.ledger import Claim, request_of
from handler_cli.storage import Removed, StaleDocument, email_hash

if TYPE_CHECKING:
    import psycopg

    from handler_cli.document import Document
    from handler_cli.poll.journal import Begun
    from handler_cli.replies import Reply

CLOCK_SKEW = 1.0  # between machines: a due request is claimable this long before its time
SCHEMA_LOCK = 0x68616E646C6572  # advisory lock id ("handler") around the schema set-up
POLL_LOCK = SCHEMA_LOCK + 1  # one poll at a time across every machine

SCHEMA = """
CREATE TABLE IF NOT EXISTS handler_requests (
  request_id text PRIMARY KEY, status text NOT NULL, document text NOT NULL,
  steps text NOT NULL DEFAULT '{}', fingerprint text NOT NULL, idempotency_key text,
  attempts integer NOT NULL DEFAULT 0, created_at double precision NOT NULL,
  updated_at double precision NOT NULL, due_at double precision, lease_owner text,
  lease_until double precision, last_error text, history text NOT NULL DEFAULT '[]');
CREATE INDEX IF NOT EXISTS handler_requests_status ON handler_requests (status, created_at);
CREATE TABLE IF NOT EXISTS handler_idempotency (
  key text PRIMARY KEY, request_id text NOT NULL, expires_at double precision NOT NULL);
CREATE INDEX IF NOT EXISTS handler_idempotency_request ON handler_idempotency (request_id);
CREATE TABLE IF NOT EXISTS handler_documents (
  request_id text PRIMARY KEY, ticket_id text, body text NOT NULL,
  revision integer NOT NULL, updated_at double precision NOT NULL);
CREATE INDEX IF NOT EXISTS handler_documents_ticket ON handler_documents (ticket_id);
CREATE TABLE IF NOT EXISTS handler_effects (
  key text PRIMARY KEY, state text NOT NULL, result text, owner text,
  lease_until double precision, request_id text, updated_at double precision NOT NULL);
CREATE INDEX IF NOT EXISTS handler_effects_request ON handler_effects (request_id);
CREATE TABLE IF NOT EXISTS handler_replies (
  ticket_id text NOT NULL, reply_key text NOT NULL, crm_id text, source text NOT NULL,
  request_id text NOT NULL, state text NOT NULL, intent text NOT NULL,
  confiance double precision NOT NULL, method text NOT NULL, action text NOT NULL,
  forward boolean NOT NULL, text text NOT NULL, reply text NOT NULL, started_at text NOT NULL,
  handled_at text, error text, PRIMARY KEY (ticket_id, reply_key));
CREATE TABLE IF NOT EXISTS handler_forgotten (
  email_hash text PRIMARY KEY, forgotten_at double precision NOT NULL);
CREATE TABLE IF NOT EXISTS handler_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS handler_probe (id integer PRIMARY KEY, at double precision NOT NULL);
"""
_COLUMNS = ("request_id", "status", "document", "steps", "attempts", "created_at", "updated_at",
            "due_at", "lease_owner", "lease_until", "last_error", "idempotency_key", "history")
_LIGHT = tuple(c for c in _COLUMNS if c != "document")
_OPEN = tuple(str(s) for s in (RequestStatus.QUEUED, RequestStatus.RUNNING,
                               RequestStatus.RETRYING))
_FINISHED = (str(RequestStatus.DONE), str(RequestStatus.FAILED))
_WAITING = ("pending_credits", "pending_info", "pending_admin")


def _record(row: Sequence[Any], columns: Sequence[str] = _COLUMNS) -> RequestRecord:
    values = dict(zip(columns, row, strict=True))
    values["steps"] = json.loads(values.get("steps") or "{}")
    values["history"] = json.loads(values.get("history") or "[]")
    return RequestRecord(**values)


class Connections:
    """One autocommit connection per thread and process; the schema made once per database."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self._psycopg = psycopg
        self._local = threading.local()
        self._all: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            conn.execute(SCHEMA)

    def conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if (conn is None or conn.closed or conn.broken
                or getattr(self._local, "pid", None) != os.getpid()):
            conn = self._psycopg.connect(self.url, autocommit=True)
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self.conn()
        with conn.transaction():
            yield conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                if not conn.closed:
                    conn.close()
            self._all.clear()
        self._local = threading.local()


def connect_pool(url: str) -> Connections:
    return Connections(url)


# --- requests ------------------------------------------------------------------------------


class PostgresRequestStore:
    """`RequestStore` in `handler_requests` and `handler_idempotency`."""

    accept_blocks = True  # a network round trip: the webhook calls it from a thread

    def __init__(self, db: Connections) -> None:
        self.db = db

    def accept_now(self, items: Sequence[NewRequest], now: float) -> list[Accepted]:
        return self.accept_many(items, now)

    def accept_many(self, items: Sequence[NewRequest], now: float) -> list[Accepted]:
        """One transaction. Each submission's lookup key is taken with one INSERT … ON
        CONFLICT (an expired key is taken over): two machines accepting the same delivery at
        once are serialised by the key's row lock, and the second finds the first's request."""
        results: list[Accepted] = []
        known: dict[str, Accepted] = {}
        with self.db.transaction() as conn:
            for item in items:
                payload_key = f"payload:{item.fingerprint}"
                lookup = item.key or payload_key
                if lookup in known:
                    results.append(known[lookup])
                    continue
                window = KEY_WINDOW if item.key else PAYLOAD_WINDOW
                taken = conn.execute(
                    "INSERT INTO handler_idempotency AS i (key, request_id, expires_at)"
                    " VALUES (%s, %s, %s) ON CONFLICT (key) DO UPDATE SET"
                    " request_id = excluded.request_id, expires_at = excluded.expires_at"
                    " WHERE i.expires_at <= %s RETURNING request_id",
                    (lookup, item.request_id, now + window, now)).fetchone()
                if taken is None:
                    prior = conn.execute(
                        "SELECT r.request_id, r.status FROM handler_idempotency i JOIN"
                        " handler_requests r ON r.request_id = i.request_id WHERE i.key = %s",
                        (lookup,)).fetchone()
                    if prior is not None:
                        known[lookup] = Accepted(prior[0], prior[1], False)
                        results.append(known[lookup])
                        continue
                    # The key points to a request removed since (prune, forget): ours now.
                    conn.execute("UPDATE handler_idempotency SET request_id = %s,"
                                 " expires_at = %s WHERE key = %s",
                                 (item.request_id, now + window, lookup))
                # The request id is the submission's identity (document.submission_id): a
                # request stored before, whose keys have expired since, is the same request.
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
                    known[lookup] = Accepted(item.request_id, row[0] if row else "queued", False)
                    results.append(known[lookup])
                    continue
                if item.key:
                    conn.execute(
                        "INSERT INTO handler_idempotency (key, request_id, expires_at)"
                        " VALUES (%s, %s, %s) ON CONFLICT (key) DO UPDATE SET"
                        " request_id = excluded.request_id, expires_at = excluded.expires_at",
                        (payload_key, item.request_id, now + PAYLOAD_WINDOW))
                repeat = Accepted(item.request_id, "queued", False)
                known[lookup] = known[payload_key] = repeat
                results.append(Accepted(item.request_id, "queued", True))
        return results

    def get(self, request_id: str) -> RequestRecord | None:
        row = self.db.conn().execute(
            f"SELECT {', '.join(_COLUMNS)} FROM handler_requests WHERE request_id = %s",
            (request_id,)).fetchone()
        return _record(row) if row else None

    def recent(self, status: str | None = None, limit: int = 50) -> list[RequestRecord]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM handler_requests"
        args: tuple[Any, ...] = ()
        if status:
            sql, args = sql + " WHERE status = %s", (status,)
        rows = self.db.conn().execute(sql + " ORDER BY created_at DESC LIMIT %s", (*args, limit))
        return [_record(r) for r in rows.fetchall()]

    def open_requests(self) -> list[RequestRecord]:
        rows = self.db.conn().execute(
            f"SELECT {', '.join(_LIGHT)} FROM handler_requests WHERE status = ANY(%s)"
            " ORDER BY created_at", (list(_OPEN),)).fetchall()
        return [_record(r, _LIGHT) for r in rows]

    def claim(self, request_id: str, owner: str, now: float, lease_until: float
              ) -> RequestRecord | None:
        row = self.db.conn().execute(
            "UPDATE handler_requests SET status = 'running', lease_owner = %s, lease_until = %s,"
            " attempts = attempts + 1, updated_at = %s WHERE request_id = %s AND ("
            " (status IN ('queued', 'retrying') AND coalesce(due_at, 0) <= %s)"
            " OR (status = 'running' AND coalesce(lease_until, 0) < %s))"
            f" RETURNING {', '.join(_COLUMNS)}",
            (owner, lease_until, now, request_id, now + CLOCK_SKEW, now)).fetchone()
        return _record(row) if row else None

    def update_owned(self, request_id: str, owner: str, status: str, fields: dict[str, Any]
                     ) -> bool:
        values = {**fields, "status": str(status)}
        if "steps" in values:
            values["steps"] = json.dumps(values["steps"])
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
                history = json.loads(row[5] or "[]")
                history.append(past_attempt(row[0], row[1], row[2], json.loads(row[3] or "{}"),
                                            row[4], now))
                conn.execute(
                    "UPDATE handler_requests SET status = 'queued', attempts = 0, due_at = %s,"
                    " updated_at = %s, lease_owner = NULL, lease_until = NULL,"
                    " last_error = NULL, history = %s WHERE request_id = %s",
                    (now, now, json.dumps(history, ensure_ascii=False), request_id))
        return str(row[0]) if row else None

    def prune(self, now: float) -> None:
        self.db.conn().execute("DELETE FROM handler_idempotency WHERE expires_at <= %s", (now,))

    def ping(self, now: float) -> None:
        self.db.conn().execute("INSERT INTO handler_probe (id, at) VALUES (1, %s)"
                               " ON CONFLICT (id) DO UPDATE SET at = excluded.at", (now,))

    def close(self) -> None:
        self.db.close()


# --- documents -----------------------------------------------------------------------------


class PostgresDocuments:
    """`DocumentStore` in `handler_documents`, saved by compare-and-set on `revision`."""

    def __init__(self, db: Connections) -> None:
        self.db = db

    @staticmethod
    def _doc(body: str, revision: int) -> Document:
        from handler_cli.document import Document

        doc = Document.model_validate_json(body)
        doc._revision = int(revision)
        return doc

    def get(self, request_id: str) -> Document | None:
        row = self.db.conn().execute("SELECT body, revision FROM handler_documents"
                                     " WHERE request_id = %s", (request_id,)).fetchone()
        return self._doc(*row) if row else None

    def by_ticket(self, ticket_id: str) -> Document | None:
        row = self.db.conn().execute("SELECT body, revision FROM handler_documents"
                                     " WHERE ticket_id = %s LIMIT 1", (ticket_id,)).fetchone()
        return self._doc(*row) if row else None

    def save(self, doc: Document) -> None:
        now = datetime.now(UTC).timestamp()
        if doc._revision is None:
            cur = self.db.conn().execute(
                "INSERT INTO handler_documents (request_id, ticket_id, body, revision, updated_at)"
                " VALUES (%s, %s, %s, 1, %s) ON CONFLICT (request_id) DO NOTHING",
                (doc.request_id, doc.ticket_id, doc.to_json(), now))
        else:
            cur = self.db.conn().execute(
                "UPDATE handler_documents SET ticket_id = %s, body = %s, revision = revision + 1,"
                " updated_at = %s WHERE request_id = %s AND revision = %s",
                (doc.ticket_id, doc.to_json(), now, doc.request_id, doc._revision))
        if cur.rowcount != 1:
            raise StaleDocument(doc.request_id)
        doc._revision = 1 if doc._revision is None else doc._revision + 1

    def refresh(self, doc: Document) -> bool:
        from handler_cli.storage.sqlite import adopt

        stored = self.get(doc.request_id)
        if stored is None:
            return False
        adopt(doc, stored)
        return True

    def validated_without_subtask(self) -> list[Document]:
        rows = self.db.conn().execute(
            "SELECT body, revision FROM handler_documents"
            " WHERE body::jsonb ->> 'validation_status' = 'validated'"
            " AND coalesce(body::jsonb ->> 'clickup_subtask_id', '') = ''").fetchall()
        return [self._doc(*r) for r in rows]

    def close(self) -> None:
        self.db.close()


# --- the ledger's effects ------------------------------------------------------------------


class PostgresEffects:
    """`EffectStore` in `handler_effects`: a claim is one transaction holding the key's row
    lock, so two machines never both get it."""

    def __init__(self, db: Connections) -> None:
        self.db = db

    def claim(self, key: str, owner: str, now: float, until: float,
              is_dead: Callable[[str | None], bool]) -> Claim:
        with self.db.transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO handler_effects (key, state, owner, lease_until, request_id,"
                " updated_at) VALUES (%s, 'pending', %s, %s, %s, %s)"
                " ON CONFLICT (key) DO NOTHING RETURNING key",
                (key, owner, until, request_of(key), now)).fetchone()
            if inserted is not None:
                return Claim("new")
            row = conn.execute(
                "SELECT state, result, owner, lease_until FROM handler_effects WHERE key = %s"
                " FOR UPDATE", (key,)).fetchone()
            assert row is not None  # inserted or present: never deleted under a claim
            state, result, holder, lease_until = row
            if state == "done":
                return Claim("done", result)
            if holder != owner and (lease_until or 0) > now and not is_dead(holder):
                return Claim("held")
            conn.execute("UPDATE handler_effects SET owner = %s, lease_until = %s,"
                         " updated_at = %s WHERE key = %s", (owner, until, now, key))
            return Claim("stale")

    def complete(self, key: str, owner: str, result: str, now: float) -> None:
        self.db.conn().execute(
            "UPDATE handler_effects SET state = 'done', result = %s, owner = NULL,"
            " lease_until = NULL, updated_at = %s WHERE key = %s", (result, now, key))

    def release(self, key: str, owner: str) -> None:
        self.db.conn().execute("UPDATE handler_effects SET lease_until = 0 WHERE key = %s"
                               " AND owner = %s AND state = 'pending'", (key, owner))

    def get(self, key: str) -> tuple[str, str | None] | None:
        row = self.db.conn().execute("SELECT state, result FROM handler_effects WHERE key = %s",
                                     (key,)).fetchone()
        return (row[0], row[1]) if row else None

    def forget(self, key: str) -> None:
        self.db.conn().execute("DELETE FROM handler_effects WHERE key = %s", (key,))

    def close(self) -> None:
        self.db.close()


# --- the poll's journal --------------------------------------------------------------------


class PostgresJournal:
    """`PollJournal` in `handler_replies` (see handler_cli.poll.journal)."""

    def __init__(self, db: Connections) -> None:
        self.db = db

    def begin(self, entry: Begun, at: datetime) -> None:
        reply, reading = entry.reply, entry.reading
        self.db.conn().execute(
            "INSERT INTO handler_replies (ticket_id, reply_key, crm_id, source, request_id,"
            " state, intent, confiance, method, action, forward, text, reply, started_at)"
            " VALUES (%s, %s, %s, %s, %s, 'acting', %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (ticket_id, reply_key) DO NOTHING",
            (reply.ticket_id, reply.key, reply.crm_id, reply.source, entry.request_id,
             reading.intent, reading.confiance, reading.method, entry.action, entry.forward,
             entry.text, reply.to_json(), at.isoformat()))

    def finish(self, reply: Reply, at: datetime) -> None:
        self.db.conn().execute(
            "UPDATE handler_replies SET state = 'done', handled_at = %s WHERE ticket_id = %s"
            " AND reply_key = %s", (at.isoformat(), reply.ticket_id, reply.key))

    def park(self, entry: Begun, error: str, at: datetime) -> None:
        reply, reading = entry.reply, entry.reading
        self.db.conn().execute(
            "INSERT INTO handler_replies (ticket_id, reply_key, crm_id, source, request_id,"
            " state, intent, confiance, method, action, forward, text, reply, started_at,"
            " error) VALUES (%s, %s, %s, %s, %s, 'failed', %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (ticket_id, reply_key) DO UPDATE SET state = 'failed',"
            " error = excluded.error",
            (reply.ticket_id, reply.key, reply.crm_id, reply.source, entry.request_id,
             reading.intent, reading.confiance, reading.method, entry.action, entry.forward,
             entry.text, reply.to_json(), at.isoformat(), error))

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
        from handler_cli.poll.decide import Reading
        from handler_cli.poll.journal import Begun
        from handler_cli.replies import Reply

        rows = self.db.conn().execute(
            "SELECT reply, request_id, action, intent, confiance, method, text, forward"
            " FROM handler_replies WHERE state = 'acting' ORDER BY started_at").fetchall()
        return [Begun(Reply.from_json(r[0]), r[1], r[2], Reading(r[3], r[4], r[5]), r[6],
                      bool(r[7])) for r in rows]

    def rows(self, ticket_ids: Sequence[str]) -> list[tuple[str, str, str | None, str]]:
        found = self.db.conn().execute(
            "SELECT ticket_id, reply_key, crm_id, started_at FROM handler_replies"
            " WHERE ticket_id = ANY(%s)", (list(ticket_ids),)).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in found]

    def actions(self, ticket_id: str) -> list[tuple[str, str, str, str]]:
        found = self.db.conn().execute(
            "SELECT reply_key, intent, action, state FROM handler_replies WHERE ticket_id = %s"
            " ORDER BY started_at", (ticket_id,)).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in found]

    def remove(self, request_ids: Sequence[str]) -> int:
        return self.db.conn().execute("DELETE FROM handler_replies WHERE request_id = ANY(%s)",
                                      (list(request_ids),)).rowcount

    def close(self) -> None:
        self.db.close()


# --- the whole shared state ----------------------------------------------------------------


class PostgresStorage:
    """`Storage` on one PostgreSQL database shared by every machine."""

    backend = "postgresql"
    shared = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.db = Connections(url)

    def describe(self) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        return f"PostgreSQL {parts.hostname or 'local socket'}{parts.path or ''} (shared)"

    @cached_property
    def requests(self) -> PostgresRequestStore:
        return PostgresRequestStore(self.db)

    @cached_property
    def documents(self) -> PostgresDocuments:
        return PostgresDocuments(self.db)

    @cached_property
    def effects(self) -> PostgresEffects:
        return PostgresEffects(self.db)

    @cached_property
    def journal(self) -> PostgresJournal:
        return PostgresJournal(self.db)

    @contextmanager
    def poll_lock(self) -> Iterator[str | None]:
        """One poll at a time across every machine (a session advisory lock)."""
        conn = self.db.conn()
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (POLL_LOCK,)).fetchone()
        if not (row and row[0]):
            yield "a poll on another machine (PostgreSQL advisory lock)"
            return
        try:
            yield None
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (POLL_LOCK,))

    def finished_before(self, cutoff: float) -> list[str]:
        conn = self.db.conn()
        old = {r[0] for r in conn.execute(
            "SELECT request_id FROM handler_requests WHERE status = ANY(%s) AND updated_at < %s",
            (list(_FINISHED), cutoff))}
        old |= {r[0] for r in conn.execute(
            "SELECT request_id FROM handler_documents WHERE updated_at < %s", (cutoff,))}
        keep = {r[0] for r in conn.execute(
            "SELECT request_id FROM handler_requests WHERE NOT (status = ANY(%s))"
            " OR updated_at >= %s", (list(_FINISHED), cutoff))}
        keep |= {r[0] for r in conn.execute(
            "SELECT request_id FROM handler_documents WHERE updated_at >= %s"
            " OR body::jsonb ->> 'validation_status' = ANY(%s)"
            " OR (body::jsonb ->> 'validation_status' = 'validated'"
            "     AND coalesce(body::jsonb ->> 'clickup_subtask_id', '') = '')",
            (cutoff, list(_WAITING)))}
        return sorted(old - keep)

    def requests_of(self, email: str) -> list[str]:
        address = email.strip().lower()
        conn = self.db.conn()
        found = {r[0] for r in conn.execute(
            "SELECT request_id FROM handler_requests"
            " WHERE lower(document::jsonb ->> 'user_email') = %s", (address,))}
        found |= {r[0] for r in conn.execute(
            "SELECT request_id FROM handler_documents"
            " WHERE lower(body::jsonb ->> 'user_email') = %s", (address,))}
        return sorted(found)

    def remove(self, request_ids: Sequence[str]) -> Removed:
        """One transaction: a request is gone from every store, or from none."""
        removed = Removed(request_ids=list(request_ids))
        ids = list(request_ids)
        if not ids:
            return removed
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM handler_idempotency WHERE request_id = ANY(%s)", (ids,))
            for store, table in (("requests", "handler_requests"),
                                 ("documents", "handler_documents"),
                                 ("ledger", "handler_effects"), ("journal", "handler_replies")):
                removed.add(store, conn.execute(
                    f"DELETE FROM {table} WHERE request_id = ANY(%s)", (ids,)).rowcount)
        return removed

    def _salt(self) -> str:
        conn = self.db.conn()
        conn.execute("INSERT INTO handler_meta (key, value) VALUES ('email_salt', %s)"
                     " ON CONFLICT (key) DO NOTHING", (secrets.token_hex(16),))
        row = conn.execute("SELECT value FROM handler_meta WHERE key = 'email_salt'").fetchone()
        assert row is not None
        return str(row[0])

    def remember_forgotten(self, email: str, at: float) -> None:
        self.db.conn().execute("INSERT INTO handler_forgotten (email_hash, forgotten_at)"
                               " VALUES (%s, %s) ON CONFLICT DO NOTHING",
                               (email_hash(email, self._salt()), at))

    def is_forgotten(self, email: str) -> float | None:
        row = self.db.conn().execute("SELECT forgotten_at FROM handler_forgotten"
                                     " WHERE email_hash = %s",
                                     (email_hash(email, self._salt()),)).fetchone()
        return float(row[0]) if row else None

    def lift_forgotten(self, email: str) -> bool:
        return self.db.conn().execute("DELETE FROM handler_forgotten WHERE email_hash = %s",
                                      (email_hash(email, self._salt()),)).rowcount > 0

    def close(self) -> None:
        self.db.close()
