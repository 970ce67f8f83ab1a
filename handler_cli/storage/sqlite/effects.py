"""The embedded ledger: effects claimed in `ledger.sqlite3`, one IMMEDIATE transaction each."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from handler_cli.ledger import Claim, request_of
from handler_cli.services import ServiceError
from handler_cli.sqlite import add_columns, connect, delete_in


@contextmanager
def unavailable_is_transient() -> Iterator[None]:
    """A file locked past the busy timeout (another process stuck on it) or a full disk is
    a reason to try the step later, not a bug: a ServiceError the step records as transient."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise ServiceError("ledger", f"the ledger could not be written: {exc}") from exc


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
            added = add_columns(self._db, "effects", {"owner": "TEXT", "lease_until": "REAL",
                                                      "request_id": "TEXT"})
            if "request_id" in added:  # a ledger written before: name each row's request
                rows = self._db.execute("SELECT key FROM effects").fetchall()
                self._db.executemany("UPDATE effects SET request_id = ? WHERE key = ?",
                                     [(request_of(key), key) for (key,) in rows])
            self._db.execute("CREATE INDEX IF NOT EXISTS effects_request ON effects (request_id)")

    def claim(self, key: str, owner: str, now: float, until: float,
              is_dead: Callable[[str | None], bool]) -> Claim:
        with self._lock, unavailable_is_transient():
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
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return claim

    def complete(self, key: str, owner: str, result: str, now: float) -> None:
        with self._lock, unavailable_is_transient():
            self._db.execute("UPDATE effects SET state = 'done', result = ?, owner = NULL,"
                             " lease_until = NULL, updated_at = ? WHERE key = ?",
                             (result, _stamp(now), key))

    def release(self, key: str, owner: str) -> None:
        with self._lock, unavailable_is_transient():
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
        """Delete every effect of these requests (retention, `forget`); how many."""
        with self._lock:
            return delete_in(self._db, "effects", "request_id", request_ids)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()
