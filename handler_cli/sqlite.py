"""The one way the embedded stores open their SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(path: Path, schema: str = "") -> sqlite3.Connection:
    """Open (creating it and its folder) an SQLite file shared by threads and processes.

    WAL lets readers and one writer work at once (the webhook's workers, a cron poll);
    autocommit keeps every statement durable on its own. Callers serialise their own
    threads with a lock, since the connection is shared.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    if schema:
        db.executescript(schema)
    return db
