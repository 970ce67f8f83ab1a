"""Where an installation keeps its durable state: the ports, the data dir's map, the chooser.

Five stores make the state of an installation: the **request store** (what the webhook
accepted, with leases, retries and attempt history), the **documents** (the latest copy of
every request, saved by compare-and-set so a save never goes back in time), the **effects**
of the ledger (claimed before they are done, `handler_cli.ledger`), the poll's **journal**,
and the **forgotten** addresses (keyed hashes, `handler-cli forget`). A backend provides
all five, one module per store: `sqlite/`, the embedded default (files in the data dir), or
`postgres/`, one PostgreSQL shared by every machine of a scaled-out installation
(`HANDLER_DATABASE_URL`), which also carries huey's queue; what both do alike above their
SQL (rows into records, a document's compare-and-set) is `rows`. Read-only views
(`handler_cli.overview`) list the documents and the journal through the same stores
(`DocumentStore.listing`, `PollJournal.entries`). `open_storage` is the one place
that picks one, importing the backend inside its branch so psycopg is loaded only where
used. Retention and forgetting across these stores and the local files:
`handler_cli.retention`. Operators: docs/production.md, "Durability", "Scaled-out mode" and
"Personal data".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from handler_cli.config import ConfigError
from handler_cli.services import ServiceError

if TYPE_CHECKING:
    from handler_cli.config import Settings
    from handler_cli.document import Document
    from handler_cli.intake.records import Accepted, NewRequest, RequestRecord
    from handler_cli.ledger import EffectStore
    from handler_cli.poll.journal import PollJournal

BUSY_TIMEOUT_MS = 30_000  # how long an SQLite writer waits for another's lock
# Document statuses that wait on someone (the client, the admin): never pruned, however old.
WAITING_STATUSES = ("pending_credits", "pending_info", "pending_admin")


class StoreBusy(Exception):
    """Another process holds the store's write lock (`accept_now` never waits for it)."""


class StaleDocument(ServiceError):
    """The stored copy of a document moved on since this one was read (another worker, the
    poll): saving it would go back in time. Start again from the stored copy."""

    def __init__(self, request_id: str) -> None:
        super().__init__("documents", f"{request_id}: the stored document changed since it was "
                         "read; start again from the stored copy", transient=True)
        self.request_id = request_id


def email_hash(email: str, key: str) -> str:
    """How a forgotten address is remembered: HMAC-SHA256 under a key of the installation
    (kept in its store), never in clear; the address is compared case-insensitively."""
    return hmac.new(key.encode(), email.strip().lower().encode(), hashlib.sha256).hexdigest()


def adopt(doc: Document, stored: Document) -> None:
    """Make `doc` the stored copy in place (callers hold `doc`, e.g. the CLI that prints it)."""
    for name in type(doc).model_fields:
        setattr(doc, name, getattr(stored, name))
    if stored.model_extra is not None and doc.model_extra is not None:
        doc.model_extra.clear()
        doc.model_extra.update(stored.model_extra)
    doc._revision = stored._revision


class SavedTicket(NamedTuple):
    """A request's ticket as this installation last saved it (`tickets_saved_since`)."""

    ticket_id: str
    request_id: str
    validation_status: str | None  # as stored: the CRM may have moved the ticket since
    contact_id: str | None  # the client's contact, as the contact step found it


@dataclass(frozen=True)
class SavedDocument:
    """A document as the store has it, for reading only (`requests list/show`, `stats`): its
    JSON as saved, never validated into a `Document` nor saved back, so a view shows what is
    stored, whatever version wrote it."""

    request_id: str
    ticket_id: str | None
    body: dict[str, Any]
    saved_at: datetime | None  # its last save (UTC)

    @classmethod
    def from_row(cls, request_id: str, ticket_id: str | None, body: str,
                 saved_at: datetime | None) -> SavedDocument:
        return cls(request_id, ticket_id, json.loads(body), saved_at)


@dataclass
class Removed:
    """What prune or forget removed, store by store (request ids for the file stores)."""

    counts: dict[str, int] = field(default_factory=dict)
    request_ids: list[str] = field(default_factory=list)

    def add(self, store: str, count: int) -> None:
        if count:
            self.counts[store] = self.counts.get(store, 0) + count


class RetainedStore(Protocol):
    """A store of requests by id, as retention and forgetting ask it (the request store, the
    documents)."""

    def finished_before(self, cutoff: float) -> tuple[set[str], set[str]]:
        """(finished and untouched since `cutoff`, to keep) request ids."""
        ...

    def requests_of(self, email: str) -> set[str]: ...


def finished_in(stores: Iterable[RetainedStore], cutoff: float) -> list[str]:
    """`Storage.finished_before` on any backend: a request is removable where it is found, in
    every store that has it (a record with no document, when no ticket was made; a document
    with no record, from `run`; or both), and kept when any store says it is still open,
    waiting or recent."""
    old: set[str] = set()
    keep: set[str] = set()
    for store in stores:
        found, kept = store.finished_before(cutoff)
        old |= found
        keep |= kept
    return sorted(old - keep)


def requests_in(stores: Iterable[RetainedStore], email: str) -> list[str]:
    """`Storage.requests_of` on any backend: the ids any of these stores has for `email`."""
    return sorted(set().union(*(store.requests_of(email) for store in stores)))


def generated_secret(path: Path) -> bytes:
    """A secret made once in the data dir and shared by every process that uses it.

    Written whole to a temporary file of its own (0600), then linked into place: the link
    fails when another process got there first, and then its complete file is read. Never
    half a secret, however two processes starting together interleave (an empty file left
    by an older version that crashed is replaced)."""
    try:
        existing = path.read_bytes().strip()
    except FileNotFoundError:
        existing = b""
    if existing:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(secrets.token_hex(32).encode())
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        if not path.read_bytes().strip():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()


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

    @property
    def replies(self) -> Path:
        """Client e-mails dropped as `.eml` for the poll (handler_cli.replies.local)."""
        return self.root / "replies"


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
    def prune(self, now: float) -> None:
        """Drop expired idempotency keys."""
        ...
    def ping(self, now: float) -> None: ...
    def close(self) -> None: ...


class DocumentStore(Protocol):
    """The latest copy of each request's document, where the poll finds it hours later.

    `save` is a compare-and-set on the revision the document was read at (`get`,
    `by_ticket`, `refresh` set it): a copy read before another writer's save raises
    StaleDocument instead of overwriting it. A document that was never read from the store
    is inserted, or refused when the store already has one."""

    def get(self, request_id: str) -> Document | None: ...
    def by_ticket(self, ticket_id: str) -> Document | None: ...
    def save(self, doc: Document) -> None: ...
    def refresh(self, doc: Document) -> bool:
        """Make `doc` (in place) the stored copy, when there is one; True if there was."""
        ...
    def validated_without_subtask(self) -> list[Document]: ...
    def tickets_saved_since(self, since: datetime) -> list[SavedTicket]:
        """The requests with a ticket saved since `since` (the store's clock, the save's),
        oldest save first: the tickets this installation touched recently, which the poll
        still reads when the client is not asked about them. An indexed range, not a scan of
        every document."""
        ...
    def listing(self, *, request_id: str | None = None, ticket_id: str | None = None
                ) -> list[SavedDocument]:
        """Every stored document as saved (or only this request's, or this ticket's), by
        request id: what a read-only view shows."""
        ...
    def close(self) -> None: ...


class ForgottenAddresses(Protocol):
    """Addresses whose data was erased (`handler-cli forget`), as keyed hashes: a request
    from one is held for a person to decide instead of quietly bringing the data back."""

    def remember(self, email: str, at: float) -> None: ...
    def forgotten_at(self, email: str) -> float | None:
        """When this address was forgotten, or None."""
        ...
    def lift(self, email: str) -> bool:
        """The client came back and asked us to work for them again; True if it was there."""
        ...
    # Erasures still owed: requests erased from the stores whose files (R2) are not erased
    # yet, by request id only, so the next `forget` or `prune` finishes them (retention.py).
    def owe_files(self, request_ids: Sequence[str], at: float) -> None: ...
    def files_owed(self) -> list[str]: ...
    def files_erased(self, request_ids: Sequence[str]) -> None: ...
    def close(self) -> None: ...


class Storage(Protocol):
    """All the durable state of an installation, on one backend."""

    backend: str  # "sqlite" or "postgresql", for logs and doctor
    shared: bool  # several machines see the same state

    @property
    def requests(self) -> RequestStore: ...
    @property
    def documents(self) -> DocumentStore: ...
    @property
    def effects(self) -> EffectStore: ...
    @property
    def journal(self) -> PollJournal: ...
    @property
    def forgotten(self) -> ForgottenAddresses: ...

    def describe(self) -> str: ...
    def finished_before(self, cutoff: float) -> list[str]:
        """Ids of requests finished (nothing waits on them) and untouched since `cutoff`."""
        ...
    def requests_of(self, email: str) -> list[str]:
        """Ids of every request this address sent (request store and documents)."""
        ...
    def remove(self, request_ids: Sequence[str]) -> Removed:
        """Delete these requests from every store: records and their keys, documents,
        effects, journal entries."""
        ...
    def poll_lock(self) -> AbstractContextManager[str | None]:
        """Held while a poll runs: None when we hold it, else who does."""
        ...
    def close(self) -> None: ...


def check_urls(settings: Settings) -> str | None:
    """The shared database URL, validated; None for the embedded default."""
    if settings.handler_queue_url:
        raise ConfigError(
            "HANDLER_QUEUE_URL: Redis is no longer used; the scaled-out mode keeps requests, "
            "documents, the ledger, the poll journal and the queue in one PostgreSQL: set "
            "HANDLER_DATABASE_URL=postgresql://... (docs/production.md, 'Scaled-out mode')")
    url = settings.handler_database_url
    if url and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("HANDLER_DATABASE_URL: expected a postgresql:// URL")
    return url or None


def open_storage(settings: Settings) -> Storage:
    """PostgreSQL when `HANDLER_DATABASE_URL` is set, else SQLite files in the data dir."""
    url = check_urls(settings)
    if url:
        from handler_cli.storage.postgres import PostgresStorage

        return PostgresStorage(url)
    from handler_cli.storage.sqlite import SqliteStorage

    return SqliteStorage(DataDir(settings.data_dir))


def open_store(settings: Settings) -> RequestStore:
    """The request store alone (the webhook, `requests list`), on the chosen backend."""
    url = check_urls(settings)
    if url:
        from handler_cli.storage.postgres import PostgresRequestStore, connect_pool

        return PostgresRequestStore(connect_pool(url))
    from handler_cli.storage.sqlite import SqliteRequestStore

    return SqliteRequestStore(DataDir(settings.data_dir).requests)
