"""Where an installation keeps its durable state: the ports, the data dir's map, the chooser.

The request store (what the webhook accepted, with leases and retries) is described here
as a Protocol; each backend lives in a module of its own (`sqlite.py`, the embedded
default in the data dir). `open_store(settings)` is the one place that picks one, and it
imports the backend inside its branch so a network client is only loaded where used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from handler_cli.config import ConfigError

if TYPE_CHECKING:
    from handler_cli.config import Settings
    from handler_cli.intake.records import Accepted, NewRequest, RequestRecord

BUSY_TIMEOUT_MS = 30_000  # how long an SQLite writer waits for another's lock


class StoreBusy(Exception):
    """Another process holds the store's write lock (`accept_now` never waits for it)."""


@dataclass(frozen=True)
class DataDir:
    """Every file and folder an installation keeps in its data dir, named once."""

    root: Path

    @property
    def requests(self) -> Path:
        return self.root / "requests.sqlite3"

    @property
    def queue(self) -> Path:
        return self.root / "queue.sqlite3"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite3"

    @property
    def documents(self) -> Path:
        return self.root / "documents.sqlite3"

    @property
    def poll_journal(self) -> Path:
        return self.root / "poll.sqlite3"

    @property
    def poll_lock(self) -> Path:
        return self.root / "poll.lock"

    @property
    def crm(self) -> Path:
        return self.root / "crm.sqlite3"

    @property
    def tasks(self) -> Path:
        return self.root / "tasks.sqlite3"

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"


class RequestStore(Protocol):
    """Where accepted requests live. Every transition of a running request is conditional on
    the worker still holding its lease, so a worker that lost it cannot overwrite another's."""

    accept_blocks: bool
    """True when accepting waits on the network (the webhook then calls it from a thread);
    False when `accept_now` is fast enough for the event loop itself."""

    def accept_many(self, items: Sequence[NewRequest], now: float) -> list[Accepted]:
        """Store a batch durably (new requests and their idempotency keys); repeats map to
        the request they repeat. Waits for another writer's lock."""
        ...

    def accept_now(self, items: Sequence[NewRequest], now: float) -> list[Accepted]:
        """`accept_many`, but raise StoreBusy at once rather than wait for a lock."""
        ...

    def get(self, request_id: str) -> RequestRecord | None: ...
    def recent(self, status: str | None = None, limit: int = 50) -> list[RequestRecord]: ...
    def open_requests(self) -> list[RequestRecord]:
        """Queued, retrying and running requests, without their documents."""
        ...
    def claim(
        self, request_id: str, owner: str, now: float, lease_until: float
    ) -> RequestRecord | None: ...
    def update_owned(
        self, request_id: str, owner: str, status: str, fields: dict[str, Any]
    ) -> bool: ...
    def renew(self, request_ids: Iterable[str], owner: str, lease_until: float) -> None: ...
    def requeue(self, request_id: str, now: float, allowed: Sequence[str]) -> str | None:
        """Put a request back to `queued` if its status is in `allowed`; the previous status."""
        ...
    def prune(self, now: float) -> None: ...
    def ping(self, now: float) -> None: ...
    def close(self) -> None: ...


def open_store(settings: Settings) -> RequestStore:
    """Redis when `HANDLER_QUEUE_URL` is set, else SQLite in the data dir."""
    url = settings.handler_queue_url
    if url:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("HANDLER_QUEUE_URL: expected a redis://, rediss:// or unix:// URL")
        from handler_cli.storage.redis import RedisRequestStore

        return RedisRequestStore(url)
    from handler_cli.storage.sqlite import SqliteRequestStore

    return SqliteRequestStore(DataDir(settings.data_dir).requests)
