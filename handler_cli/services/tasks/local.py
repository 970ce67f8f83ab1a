"""The embedded task board: subtasks in an SQLite table, shaped like ClickUp's."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from handler_cli.sqlite import connect

if TYPE_CHECKING:
    from handler_cli.checks import Finding


class LocalTaskBoard:
    name = "local"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    @cached_property
    def _db(self) -> sqlite3.Connection:
        """Opened (and created) on first use, under the lock (see LocalCRM._db)."""
        return connect(self.path, "CREATE TABLE IF NOT EXISTS subtasks (id INTEGER PRIMARY KEY,"
                                  " parent_id TEXT NOT NULL, name TEXT NOT NULL,"
                                  " description TEXT NOT NULL, created_at TEXT NOT NULL)")

    def describe(self) -> str:
        return f"local SQLite task board at {self.path}"

    def check(self) -> list[Finding]:
        from handler_cli.checks import sqlite_rows, writable_place

        found = [writable_place(self.path, "task board file")]
        if self.path.exists():
            found.append(sqlite_rows(self.path, "subtasks", "the local task board"))
        return found

    def find_subtask(self, parent_id: str, marker: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM subtasks WHERE parent_id = ? AND instr(description, ?) > 0",
                (parent_id, marker),
            ).fetchone()
        return f"local-{row[0]}" if row else None

    def create_subtask(self, parent_id: str, name: str, description: str) -> str:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO subtasks (parent_id, name, description, created_at)"
                " VALUES (?, ?, ?, ?)",
                (parent_id, name, description, datetime.now(UTC).isoformat()),
            )
        return f"local-{cur.lastrowid}"

    def erase_subtasks(self, markers: list[str]) -> int:
        """Delete the subtasks whose description carries one of these markers (retention
        and `forget`: handler_cli.retention); how many."""
        with self._lock:
            return sum(self._db.execute("DELETE FROM subtasks WHERE instr(description, ?) > 0",
                                        (marker,)).rowcount for marker in markers)

    def subtasks(self, parent_id: str) -> list[tuple[str, str, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, description FROM subtasks WHERE parent_id = ? ORDER BY id",
                (parent_id,),
            ).fetchall()
        return [(f"local-{r[0]}", r[1], r[2]) for r in rows]
