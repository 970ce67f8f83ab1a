"""A local record of side effects, so a crash between "done" and "saved" never doubles one.

Every effect that creates something outside (a ticket, an e-mail, a subtask) goes through
`Ledger.once(key, perform, recover)`. The key is marked pending before the effect and
completed after it. If a run dies in between, the next run finds the key pending and first
asks `recover` whether the effect happened (e.g. a HubSpot search by request id) before
doing it again. The happy path costs no extra API call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from handler_cli.sqlite import connect


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = connect(path, "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY,"
                                 " state TEXT NOT NULL, result TEXT, updated_at TEXT NOT NULL)")

    def get(self, key: str) -> tuple[str, str | None] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT state, result FROM effects WHERE key = ?", (key,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def _set(self, key: str, state: str, result: str | None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO effects (key, state, result, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET state = excluded.state,"
                " result = excluded.result, updated_at = excluded.updated_at",
                (key, state, result, datetime.now(UTC).isoformat()),
            )

    def forget(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM effects WHERE key = ?", (key,))

    def once(
        self,
        key: str,
        perform: Callable[[], str],
        recover: Callable[[], str | None] | None = None,
    ) -> str:
        """Run `perform` at most once for `key` and return its result, now or from before."""
        found = self.get(key)
        if found is not None:
            state, result = found
            if state == "done" and result is not None:
                return result
            if recover is not None:
                recovered = recover()
                if recovered is not None:
                    self._set(key, "done", recovered)
                    return recovered
        self._set(key, "pending", None)
        result = perform()
        self._set(key, "done", result)
        return result

    def do_once(self, key: str, action: Callable[[], None]) -> None:
        """`once` for an effect with no result to keep (a note, an e-mail logged on a ticket)."""

        def perform() -> str:
            action()
            return "done"

        self.once(key, perform)

    def close(self) -> None:
        with self._lock:
            self._db.close()
