"""The webhook's group commit, against a store another process holds locked."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from handler_cli.intake.records import NewRequest
from handler_cli.intake.writer import IntakeWriter
from handler_cli.queue import RequestQueue
from handler_cli.storage import StoreBusy
from tests.test_server import data_dir, stored_rows, webhook_settings  # noqa: F401 - fixture


def test_a_store_locked_too_long_fails_the_post_instead_of_hanging(
        data_dir: Path) -> None:  # noqa: F811 - fixture
    """The writer retries a locked store without blocking, then gives up (the post gets a
    503 and its sender sends it again); the next batch goes through once the lock is gone."""
    rq = RequestQueue(webhook_settings(data_dir))
    db = sqlite3.connect(data_dir / "requests.sqlite3", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")

    async def posts() -> None:
        writer = IntakeWriter(rq.store, rq.dispatch, asyncio.get_running_loop(),
                              busy_give_up=0.3)
        started = time.monotonic()
        with pytest.raises(StoreBusy):
            await writer.submit(NewRequest("req_locked", "{}", "a" * 64, None))
        assert 0.3 <= time.monotonic() - started < 5
        db.execute("ROLLBACK")
        accepted = await writer.submit(NewRequest("req_free", "{}", "b" * 64, None))
        assert accepted.created
        await writer.close()

    asyncio.run(posts())
    assert [rid for rid, _ in stored_rows(data_dir)] == ["req_free"]
    db.close()
    rq.close()
