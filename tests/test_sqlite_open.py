"""Opening the embedded stores' SQLite files from several processes at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from handler_cli.sqlite import connect


def _open(path: str, start: multiprocessing.synchronize.Barrier, errors: multiprocessing.Queue
          ) -> None:
    start.wait()
    try:
        connect(Path(path), "CREATE TABLE IF NOT EXISTS t (x INTEGER)").close()
    except Exception as exc:  # reported to the test, which names it
        errors.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_fresh_file_together_all_get_it_in_wal_mode(tmp_path: Path) -> None:
    """Switching a new file to WAL takes an exclusive lock that SQLite refuses at once
    ("database is locked", no busy timeout): two `run`s on a fresh data dir lost a request
    to it. Every opener waits its turn instead."""
    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        path = tmp_path / f"fresh{round_}.sqlite3"
        start, errors = ctx.Barrier(8), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(str(path), start, errors)) for _ in range(8)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        failures = [errors.get() for _ in range(errors.qsize())]
        assert failures == [] and all(p.exitcode == 0 for p in procs), failures
        with connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
