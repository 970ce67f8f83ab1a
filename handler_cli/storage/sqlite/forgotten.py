"""The embedded list of forgotten addresses: keyed hashes only, beside the requests they held."""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from handler_cli.sqlite import connect
from handler_cli.storage import email_hash

OWED = "files_owed:"  # meta keys of the requests whose files are still to erase

SCHEMA = """
CREATE TABLE IF NOT EXISTS forgotten (email_hash TEXT PRIMARY KEY, forgotten_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SqliteForgotten:
    """`ForgottenAddresses` in `requests.sqlite3` (tables `forgotten` and `meta`)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._salt = ""

    def _db(self) -> sqlite3.Connection:
        """The tables, made on first use (the caller holds the lock)."""
        if self._conn is None:
            self._conn = connect(self._path, SCHEMA)
            # This installation's key for the hashes, made once: a hash cannot be matched
            # against a list of addresses without it.
            self._conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES"
                               " ('email_salt', ?)", (secrets.token_hex(32),))
            self._salt = str(self._conn.execute(
                "SELECT value FROM meta WHERE key = 'email_salt'").fetchone()[0])
        return self._conn

    def remember(self, email: str, at: float) -> None:
        with self._lock:
            self._db().execute(
                "INSERT INTO forgotten (email_hash, forgotten_at) VALUES (?, ?)"
                " ON CONFLICT (email_hash) DO UPDATE SET forgotten_at = excluded.forgotten_at",
                (email_hash(email, self._salt), at))

    def forgotten_at(self, email: str) -> float | None:
        with self._lock:
            if self._conn is None and not self._path.exists():
                return None  # nothing was forgotten here; asking (`run`) creates no store
            row = self._db().execute("SELECT forgotten_at FROM forgotten WHERE email_hash = ?",
                                     (email_hash(email, self._salt),)).fetchone()
        return float(row[0]) if row else None

    def lift(self, email: str) -> bool:
        with self._lock:
            return self._db().execute("DELETE FROM forgotten WHERE email_hash = ?",
                                      (email_hash(email, self._salt),)).rowcount > 0

    def owe_files(self, request_ids: Sequence[str], at: float) -> None:
        with self._lock:
            self._db().executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                                 [(OWED + rid, repr(at)) for rid in request_ids])

    def files_owed(self) -> list[str]:
        with self._lock:
            rows = self._db().execute("SELECT key FROM meta WHERE substr(key, 1, ?) = ?"
                                    " ORDER BY key", (len(OWED), OWED)).fetchall()
        return [str(row[0])[len(OWED):] for row in rows]

    def files_erased(self, request_ids: Sequence[str]) -> None:
        with self._lock:
            self._db().executemany("DELETE FROM meta WHERE key = ?",
                                 [(OWED + rid,) for rid in request_ids])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
