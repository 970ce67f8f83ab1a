"""The embedded backend: the installation's state in SQLite files of the data dir.

One file per store, each opened on first use (a step that only classifies opens none):

| module | store | file |
| --- | --- | --- |
| `requests` | the request store (leases, keys, attempt history) | `requests.sqlite3` |
| `documents` | the latest document of each request | `documents.sqlite3` |
| `effects` | the ledger's claimed effects | `ledger.sqlite3` |
| `forgotten` | keyed hashes of forgotten addresses | `requests.sqlite3` |
| (`handler_cli.poll.journal.Journal`) | the poll's journal | `poll.sqlite3` |
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from functools import cached_property
from typing import TYPE_CHECKING

from handler_cli.sqlite import scrub
from handler_cli.storage import DataDir, Removed, finished_in, requests_in
from handler_cli.storage.sqlite.documents import SqliteDocuments
from handler_cli.storage.sqlite.effects import SqliteEffects
from handler_cli.storage.sqlite.forgotten import SqliteForgotten
from handler_cli.storage.sqlite.requests import SqliteRequestStore

if TYPE_CHECKING:
    from handler_cli.poll.journal import Journal


class SqliteStorage:
    """`Storage` in the data dir."""

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

    @cached_property
    def forgotten(self) -> SqliteForgotten:
        return SqliteForgotten(self.data_dir.requests)

    def poll_lock(self) -> AbstractContextManager[str | None]:
        from handler_cli.poll import poll_lock

        return poll_lock(self.data_dir.root)

    def finished_before(self, cutoff: float) -> list[str]:
        return finished_in((self.requests, self.documents), cutoff)

    def requests_of(self, email: str) -> list[str]:
        return requests_in((self.requests, self.documents), email)

    def remove(self, request_ids: Sequence[str]) -> Removed:
        """Store by store (each file is its own transaction): the documents and the record
        last, so an interrupted removal is found again by the next prune or forget. Then
        every file is scrubbed: the erased rows leave the disk, not only the tables."""
        removed = Removed(request_ids=list(request_ids))
        if not request_ids:
            return removed
        removed.add("journal", self.journal.remove(request_ids))
        removed.add("ledger", self.effects.remove(request_ids))
        removed.add("documents", self.documents.remove(request_ids))
        removed.add("requests", self.requests.remove(request_ids))
        for path in (self.data_dir.poll_journal, self.data_dir.ledger, self.data_dir.documents,
                     self.data_dir.requests):
            scrub(path)
        return removed

    def close(self) -> None:
        for part in ("requests", "documents", "effects", "journal", "forgotten"):
            if part in self.__dict__:
                self.__dict__.pop(part).close()


__all__ = ["SqliteDocuments", "SqliteEffects", "SqliteForgotten", "SqliteRequestStore",
           "SqliteStorage"]
