"""What `handler-cli doctor --check` learns about a backend: one line per fact, proved or not.

A backend's `check()` returns a list of findings rather than one sentence, so a run that
would fail for three reasons (a scope missing, a property missing, a wrong pipeline) says
all three at once, each on its own line, each with what to do. A `ServiceError` raised by
`check()` is a finding too: the backend could not even be asked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Finding:
    """One fact `doctor --check` proved (`ok`) or found missing, in one line."""

    ok: bool
    text: str

    def __str__(self) -> str:
        return f"{'ok' if self.ok else 'FAILED'} — {self.text}"


def proved(text: str) -> Finding:
    return Finding(True, text)


def missing(text: str) -> Finding:
    return Finding(False, text)


def writable_place(path: Path, what: str) -> Finding:
    """Whether a local backend can write `path` (a file or folder of the data dir), proved
    without creating anything: `doctor --check` on a fresh machine leaves no trace."""
    where = path
    while not where.exists() and where.parent != where:
        where = where.parent
    if where == path:
        mode = os.W_OK | (os.X_OK if path.is_dir() else 0)
        if os.access(path, mode):
            return proved(f"{what} {path} is writable")
        return missing(f"{what} {path} is not writable (check its owner and HANDLER_DATA_DIR)")
    if where.is_dir() and os.access(where, os.W_OK | os.X_OK):
        return proved(f"{what} {path} does not exist yet; the first run creates it "
                      f"({where} is writable)")
    return missing(f"{what} {path} cannot be created: {where} is not a writable folder "
                   "(set HANDLER_DATA_DIR)")


def sqlite_rows(path: Path, table: str, what: str) -> Finding:
    """How many rows a local SQLite store holds, read without writing (and only if it exists)."""
    import sqlite3
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            count = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.Error as exc:
        return missing(f"{what} {path} cannot be read: {exc}")
    return proved(f"{what} opens: {count} {table}")
