"""The store cannot be written: the sender is told to come back (503, Retry-After), nothing is
half accepted, and the same post goes in once the store is back.

On SQLite, another process holding the store's write lock past the give-up time (a stuck
process); on PostgreSQL, the server stopped (a crash, a failover) and started again.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

import httpx
import pytest

from handler_cli.intake.writer import IntakeWriter
from tests.postgres import postgres_cluster
from tests.test_server import AUTH, payload, running, stored_rows, webhook_settings


def test_a_store_locked_too_long_answers_503_then_the_same_post_goes_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The writer gives a locked store 30 s; the test, half a second.
    monkeypatch.setattr("handler_cli.server.IntakeWriter",
                        functools.partial(IntakeWriter, busy_give_up=0.5))
    data_dir = tmp_path / "data"
    settings = webhook_settings(data_dir, HANDLER_WORKERS="0")
    with running(settings) as base, httpx.Client(base_url=base, timeout=30) as http:
        assert http.post("/webhook/request", json=payload(), headers=AUTH).status_code == 202
        body = payload()
        stuck = sqlite3.connect(data_dir / "requests.sqlite3", isolation_level=None)
        stuck.execute("BEGIN IMMEDIATE")
        try:
            down = http.post("/webhook/request", json=body, headers=AUTH)
        finally:
            stuck.execute("ROLLBACK")
            stuck.close()
        assert down.status_code == 503 and down.headers["retry-after"] == "5"
        assert "send it again" in down.json()["error"]
        assert len(stored_rows(data_dir)) == 1  # nothing half accepted

        up = http.post("/webhook/request", json=body, headers=AUTH)
        assert up.status_code == 202
        assert up.json()["request_id"] in [rid for rid, _ in stored_rows(data_dir)]
        again = http.post("/webhook/request", json=body, headers=AUTH)
        assert again.status_code == 200 and again.json()["request_id"] == up.json()["request_id"]


def test_a_stopped_database_answers_503_then_the_same_post_goes_in(tmp_path: Path) -> None:
    with postgres_cluster() as cluster:
        settings = webhook_settings(tmp_path / "data", HANDLER_DATABASE_URL=cluster.url,
                                    HANDLER_WORKERS="0")
        with running(settings) as base, httpx.Client(base_url=base, timeout=30) as http:
            assert http.post("/webhook/request", json=payload(), headers=AUTH
                             ).status_code == 202
            body = payload()
            cluster.stop()
            down = http.post("/webhook/request", json=body, headers=AUTH)
            assert down.status_code == 503 and down.headers["retry-after"] == "5"
            ready = http.get("/readyz")
            assert ready.status_code == 503 and "store" in " ".join(ready.json()["problems"])

            cluster.start()  # the connections the webhook held are dead: it makes new ones
            up = http.post("/webhook/request", json=body, headers=AUTH)
            assert up.status_code == 202
            assert http.get("/readyz").status_code == 200
            again = http.post("/webhook/request", json=body, headers=AUTH)
            assert again.status_code == 200
            assert again.json()["request_id"] == up.json()["request_id"]
            view = http.get(f"/requests/{up.json()['request_id']}", headers=AUTH)
            assert view.status_code == 200 and view.json()["status"] == "queued"
