"""What both backends do alike above their SQL: rows into records and documents, and back.

`sqlite/` and `postgres/` each write their own SQL. How a request's row (its columns, its
JSON fields) becomes a `RequestRecord`, how a replayed request's last run joins its
history, and the compare-and-set rule of a document's save do not depend on the engine, so
they are written once, here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from handler_cli.intake.records import RequestRecord, past_attempt
from handler_cli.storage import StaleDocument, adopt

if TYPE_CHECKING:
    from handler_cli.document import Document

CLOCK_SKEW = 1.0  # a due request is claimable this long before its time (machines' clocks)
REQUEST_COLUMNS = ("request_id", "status", "document", "steps", "attempts", "created_at",
                   "updated_at", "due_at", "lease_owner", "lease_until", "last_error",
                   "idempotency_key", "history")
# Without the document: for the lists that do not show it (open requests).
LIGHT_COLUMNS = tuple(c for c in REQUEST_COLUMNS if c != "document")


def request_record(row: Sequence[Any], columns: Sequence[str] = REQUEST_COLUMNS
                   ) -> RequestRecord:
    """A request store's row (`columns`, in that order) as a record, its JSON read."""
    values = dict(zip(columns, row, strict=True))
    values["steps"] = json.loads(values.get("steps") or "{}")
    values["history"] = json.loads(values.get("history") or "[]")
    return RequestRecord(**values)


def owned_update(status: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The columns `update_owned` writes, by name: the status and `fields`, steps as JSON."""
    values = {**fields, "status": str(status)}
    if "steps" in values:
        values["steps"] = json.dumps(values["steps"])
    return values


def replayed_history(row: Sequence[Any], now: float) -> str:
    """A record's `history` (JSON) with its last run added, when `requeue` replays it at
    `now`; `row` is the record's (status, attempts, last_error, steps, updated_at, history)."""
    status, attempts, last_error, steps, updated_at, history = row
    earlier = json.loads(history or "[]")
    earlier.append(past_attempt(status, attempts, last_error, json.loads(steps or "{}"),
                                updated_at, now))
    return json.dumps(earlier, ensure_ascii=False)


def where_equal(placeholder: str, **columns: str | None) -> tuple[str, tuple[str, ...]]:
    """A listing's filter: " WHERE a = ? AND b = ?" on the columns given a value (the
    engine's `placeholder`, ? or %s), and those values; nothing when none is given."""
    given = {name: value for name, value in columns.items() if value is not None}
    if not given:
        return "", ()
    return (" WHERE " + " AND ".join(f"{name} = {placeholder}" for name in given),
            tuple(given.values()))


class RevisedDocuments:
    """What both document stores share: a document read with its revision, saved by
    compare-and-set on it, refreshed in place. A backend writes the SQL: `get`, `_insert`
    and `_update`, the last two saying whether they wrote the row."""

    def get(self, request_id: str) -> Document | None:
        raise NotImplementedError

    def _insert(self, doc: Document, body: str) -> bool:
        """Store `doc` (JSON `body`) as revision 1, unless the store has that request."""
        raise NotImplementedError

    def _update(self, doc: Document, body: str) -> bool:
        """Store `doc` as the next revision, if the stored one is still `doc._revision`."""
        raise NotImplementedError

    def save(self, doc: Document) -> None:
        body = doc.to_json()
        written = self._insert(doc, body) if doc._revision is None else self._update(doc, body)
        if not written:
            raise StaleDocument(doc.request_id)
        doc._revision = 1 if doc._revision is None else doc._revision + 1

    def refresh(self, doc: Document) -> bool:
        stored = self.get(doc.request_id)
        if stored is None:
            return False
        adopt(doc, stored)
        return True

    @staticmethod
    def _loaded(body: str, revision: int) -> Document:
        """A stored document, with the revision it was read at (what `save` compares)."""
        from handler_cli.document import Document

        doc = Document.model_validate_json(body)
        doc._revision = int(revision)
        return doc
