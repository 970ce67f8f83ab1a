"""The shared database's connections and schema: one autocommit connection per thread.

psycopg (3) is imported here only, when `HANDLER_DATABASE_URL` is set. Each thread (and each
process after a fork) gets its own autocommit connection; one that broke (the server
restarted, the network dropped) is replaced on next use, and one left idle a while is probed
first, so a restarted server costs no failed request. The tables (prefix `handler_`) are made
on first use, under an advisory lock so two machines starting together do not race.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeVar

from handler_cli.services import ServiceError

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

SCHEMA_LOCK = 0x68616E646C6572  # advisory lock id ("handler") around the schema set-up
POLL_LOCK = SCHEMA_LOCK + 1  # one poll at a time across every machine
IDLE_PROBE_SECONDS = 30.0  # a connection idle this long is probed before it is used again
CONNECT_TIMEOUT_SECONDS = 10  # unless the URL says otherwise

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
CREATE INDEX IF NOT EXISTS handler_documents_saved ON handler_documents (updated_at);
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
CREATE INDEX IF NOT EXISTS handler_replies_request ON handler_replies (request_id);
CREATE TABLE IF NOT EXISTS handler_forgotten (
  email_hash text PRIMARY KEY, forgotten_at double precision NOT NULL);
CREATE TABLE IF NOT EXISTS handler_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS handler_probe (id integer PRIMARY KEY, at double precision NOT NULL);
"""


class Connections:
    """One autocommit connection per thread and process; the schema made once per database."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self._psycopg = psycopg
        self._options: dict[str, Any] = (
            {} if "connect_timeout" in url else {"connect_timeout": CONNECT_TIMEOUT_SECONDS})
        self._local = threading.local()
        self._all: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            conn.execute(SCHEMA)

    def conn(self) -> psycopg.Connection[Any]:
        """This thread's connection, a new one when it is missing, broken or dead."""
        local = self._local
        conn: psycopg.Connection[Any] | None = getattr(local, "conn", None)
        now = time.monotonic()
        if conn is not None:
            usable = getattr(local, "pid", None) == os.getpid() and not (
                conn.closed or conn.broken)
            if usable and (now - local.used < IDLE_PROBE_SECONDS or self._alive(conn)):
                local.used = now
                return conn
            self._drop(conn)
        conn = self._psycopg.connect(self.url, autocommit=True, **self._options)
        local.conn, local.pid, local.used = conn, os.getpid(), now
        with self._lock:
            self._all.append(conn)
        return conn

    def _alive(self, conn: psycopg.Connection[Any]) -> bool:
        try:
            conn.execute("SELECT 1")
        except self._psycopg.Error:
            return False
        return True

    def _drop(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
        if os.getpid() == getattr(self._local, "pid", None) and not conn.closed:
            with suppress(self._psycopg.Error):
                conn.close()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self.conn()
        with conn.transaction():
            yield conn

    def once_more_if_disconnected(self, action: Callable[[], T]) -> T:
        """Run `action`; when the connection failed under it (the server restarted, the
        network dropped: not a statement the server refused), run it once more on a new
        connection. Only for idempotent actions."""
        try:
            return action()
        except self._psycopg.OperationalError:
            return action()

    @contextmanager
    def unavailable_is_transient(self, store: str) -> Iterator[None]:
        """The database down or unreachable is a reason to try a step later (a ServiceError
        the step records as transient), not a bug."""
        try:
            yield
        except self._psycopg.OperationalError as exc:
            raise ServiceError(store, f"the shared database is unavailable: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                if not conn.closed:
                    conn.close()
            self._all.clear()
        self._local = threading.local()


def connect_pool(url: str) -> Connections:
    return Connections(url)
