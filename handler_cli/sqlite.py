"""The one way the embedded stores open their SQLite files."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

BUSY_SECONDS = 30.0  # how long a connection waits for another's lock
MAX_BOUND = 500  # values bound in one statement, well under SQLite's limit of variables


def connect(path: Path, schema: str = "") -> sqlite3.Connection:
    """Open (creating it and its folder) an SQLite file shared by threads and processes.

    WAL lets readers and one writer work at once (the webhook's workers, a cron poll);
    autocommit keeps every statement durable on its own. Callers serialise their own
    threads with a lock, since the connection is shared. Deleted rows are overwritten with
    zeros (`secure_delete`): personal data erased (handler_cli.retention) does not linger in
    the file's free pages.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=BUSY_SECONDS, check_same_thread=False,
                         isolation_level=None)
    wal(db)
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA secure_delete=ON")  # an erased client's data is overwritten: scrub()
    if schema:
        db.executescript(schema)
    return db


def wal(db: sqlite3.Connection, timeout: float = BUSY_SECONDS) -> None:
    """Put the file in WAL mode, waiting for another process that is doing the same.

    Two processes opening a fresh data dir together (two `run`s, a worker and a shell) both
    switch the new file to WAL; the switch takes an exclusive lock, and SQLite answers the
    second "database is locked" at once, without its busy timeout: try again until
    `timeout`, as the busy timeout would."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


def add_columns(db: sqlite3.Connection, table: str, columns: dict[str, str]) -> set[str]:
    """Bring a file written by an older version up to date (columns added since); the names
    of the columns it added."""
    present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    added = set()
    for name, decl in columns.items():
        if name not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
            added.add(name)
    return added


def chunks(values: Sequence[str]) -> Iterator[list[str]]:
    """`values` in slices under SQLite's limit of bound variables (for `IN (...)`)."""
    for start in range(0, len(values), MAX_BOUND):
        yield list(values[start:start + MAX_BOUND])


def marks(values: Sequence[object]) -> str:
    """The placeholders of `IN (...)` for `values`: "?, ?, ?"."""
    return ", ".join("?" * len(values))


def delete_in(db: sqlite3.Connection, table: str, column: str, values: Sequence[str]) -> int:
    """DELETE the rows whose `column` is one of `values` (in chunks under SQLite's limit of
    bound variables); how many."""
    return sum(db.execute(f"DELETE FROM {table} WHERE {column} IN ({marks(chunk)})",
                          chunk).rowcount for chunk in chunks(values))


def scrub(path: Path) -> None:
    """After an erasure: copy the WAL into the file and empty it, so the pages written
    before the deletes (which still hold the erased rows) leave the disk. Best effort: a
    reader holding an old snapshot keeps the WAL until it is done, and the next erasure or
    SQLite's own checkpoints finish the job."""
    if not path.exists():
        return
    db = sqlite3.connect(path, timeout=5, isolation_level=None)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.OperationalError:
        pass
    finally:
        db.close()
