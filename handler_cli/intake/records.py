"""What the request store holds about one request: its status, its record, its new-request form.

The statuses are one enum (`RequestStatus`); `RequestRecord` renders itself for
`requests list/show` and for the webhook's `GET /requests/{id}`, so there is one view of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class RequestStatus(StrEnum):
    """Where a request stands in the store."""

    QUEUED = "queued"
    """Accepted (or handed back), waiting for a worker."""
    RUNNING = "running"
    """Claimed by a worker, under a lease it keeps renewing."""
    RETRYING = "retrying"
    """A transient failure: back on the queue after a growing delay."""
    DONE = "done"
    """Every step went through."""
    FAILED = "failed"
    """The dead letter: a permanent failure, or retries exhausted; `requests retry` replays it."""


OPEN = (RequestStatus.QUEUED, RequestStatus.RUNNING, RequestStatus.RETRYING)
KEY_WINDOW = 30 * 24 * 3600  # how long a webhook-id / Idempotency-Key is remembered

def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class NewRequest:
    """What the webhook hands to the store: the document plus its idempotency keys."""

    request_id: str
    document: str  # JSON
    fingerprint: str  # Payload.payload_fingerprint(): a key back with another payload is a 422
    key: str | None = None  # "webhook-id:..." or "idempotency-key:...", when the sender gave one


@dataclass(frozen=True)
class Accepted:
    """The store's answer: the request's id and status; `created` False for a repeat."""

    request_id: str
    status: str
    created: bool


@dataclass
class RequestRecord:
    request_id: str
    status: str
    document: str = "{}"
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    due_at: float | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    last_error: str | None = None
    idempotency_key: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    """The earlier attempts, oldest first: what each ended as before `requests retry`
    (see `past_attempt`)."""

    def data(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.document or "{}")
        return loaded

    def summary(self) -> dict[str, Any]:
        """One line of `requests list`: enough to decide what to look at."""
        data = self.data()
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "status": self.status,
            "attempts": self.attempts,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "source": data.get("source"),
            "objet": data.get("objet"),
            "ticket_id": data.get("ticket_id"),
        }
        if self.status == RequestStatus.RETRYING:
            out["next_attempt_at"] = iso(self.due_at)
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything, for `requests show`."""
        return {
            **self.summary(),
            "idempotency_key": self.idempotency_key,
            "steps": self.steps,
            "history": self.history,
            "document": self.data(),
        }

    def status_view(self, step_names: Iterable[str]) -> dict[str, Any]:
        """What the webhook answers on `GET /requests/{id}`: each step pending, ok or error."""
        data = self.data()
        steps: dict[str, str] = {}
        for name in step_names:
            outcome = self.steps.get(name)
            steps[name] = "pending" if outcome is None else ("ok" if outcome["ok"] else "error")
        view: dict[str, Any] = {
            "request_id": self.request_id,
            "status": self.status,
            "attempts": self.attempts,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "steps": steps,
            "type_final": data.get("type_final"),
            "ticket_id": data.get("ticket_id"),
            "ticket_url": data.get("ticket_url"),
            "validation_status": data.get("validation_status"),
            "errors": data.get("errors") or [],
        }
        if self.status == RequestStatus.RETRYING:
            view["next_attempt_at"] = iso(self.due_at)
        if self.last_error:
            view["last_error"] = self.last_error
        return view


def past_attempt(status: str, attempts: int, last_error: str | None,
                 steps: dict[str, dict[str, Any]], ended_at: float, retried_at: float
                 ) -> dict[str, Any]:
    """One entry of a record's `history`, written when an operator replays the request: how
    the earlier run ended, so `requests show` still tells it after the retry."""
    return {"status": status, "attempts": attempts, "last_error": last_error,
            "steps": steps, "ended_at": iso(ended_at), "retried_at": iso(retried_at)}
