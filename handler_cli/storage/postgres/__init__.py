"""The shared backend: one PostgreSQL for every machine of a scaled-out installation.

Requests, documents, the ledger's effects, the poll's journal and the forgotten addresses
are tables of one database (prefix `handler_`), beside huey's own queue tables (`huey_*`,
huey's `PostgresStorage`): so a request taken in on one machine is run on another and its
reply acted on by a poll on a third, and a claim in the ledger holds across machines.

| module | holds |
| --- | --- |
| `connections` | a connection per thread, the schema |
| `requests` | the request store (`handler_requests`, `handler_idempotency`) |
| `documents` | the documents (`handler_documents`) |
| `effects` | the ledger's effects (`handler_effects`) |
| `journal` | the poll's journal (`handler_replies`) |
| `forgotten` | keyed hashes of forgotten addresses (`handler_forgotten`) |
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property

from handler_cli.storage import Removed, finished_in, requests_in
from handler_cli.storage.postgres.connections import POLL_LOCK, Connections, connect_pool
from handler_cli.storage.postgres.documents import PostgresDocuments
from handler_cli.storage.postgres.effects import PostgresEffects
from handler_cli.storage.postgres.forgotten import PostgresForgotten
from handler_cli.storage.postgres.journal import PostgresJournal
from handler_cli.storage.postgres.requests import PostgresRequestStore


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

    @cached_property
    def forgotten(self) -> PostgresForgotten:
        return PostgresForgotten(self.db)

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
            if not (conn.closed or conn.broken):  # else the server let go of it already
                conn.execute("SELECT pg_advisory_unlock(%s)", (POLL_LOCK,))

    def finished_before(self, cutoff: float) -> list[str]:
        return finished_in((self.requests, self.documents), cutoff)

    def requests_of(self, email: str) -> list[str]:
        return requests_in((self.requests, self.documents), email)

    def remove(self, request_ids: Sequence[str]) -> Removed:
        """One transaction: a request is gone from every store, or from none."""
        removed = Removed(request_ids=list(request_ids))
        if not request_ids:
            return removed
        with self.db.transaction():  # the stores use this thread's connection: all in it
            removed.add("journal", self.journal.remove(request_ids))
            removed.add("ledger", self.effects.remove(request_ids))
            removed.add("documents", self.documents.remove(request_ids))
            removed.add("requests", self.requests.remove(request_ids))
        return removed

    def close(self) -> None:
        self.db.close()


__all__ = ["Connections", "PostgresDocuments", "PostgresEffects", "PostgresForgotten",
           "PostgresJournal", "PostgresRequestStore", "PostgresStorage", "connect_pool"]
