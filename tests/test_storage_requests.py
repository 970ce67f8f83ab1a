"""The request store's contract, on every backend.

SQLite, and PostgreSQL through a real server started by the tests (tests/postgres.py;
skipped, saying so, when its binaries are not installed).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from handler_cli.document import Document
from handler_cli.intake.records import KEY_WINDOW
from handler_cli.storage import RequestStore, StoreBusy
from handler_cli.storage.postgres import Connections, PostgresRequestStore
from handler_cli.storage.sqlite import SqliteRequestStore
from tests.intake_helpers import NOW, new
from tests.postgres import pg_session, pg_url  # noqa: F401 - fixtures


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RequestStore]:
    made: RequestStore
    if request.param == "sqlite":
        made = SqliteRequestStore(tmp_path / "requests.sqlite3")
    else:
        made = PostgresRequestStore(Connections(request.getfixturevalue("pg_url")))
    yield made
    made.close()


def test_accept_stores_new_requests_and_maps_repeats_to_the_first(store: RequestStore) -> None:
    results = store.accept_many(
        [new(1, key="webhook-id:m1"), new(2), new(3, key="webhook-id:m1"),  # a retry of 1
         new(2, key="webhook-id:m2"),  # the same submission as 2, under a new key
         new(5, key="idempotency-key:k")],
        NOW)
    assert [(r.request_id, r.created) for r in results] == [
        ("req_1", True), ("req_2", True), ("req_1", False), ("req_2", False), ("req_5", True)]
    again = store.accept_many([new(6, key="webhook-id:m1"), new(1), new(7, key="webhook-id:m2")],
                              NOW + 60)
    assert [(r.request_id, r.status, r.created) for r in again] == [
        ("req_1", "queued", False), ("req_1", "queued", False), ("req_2", "queued", False)]
    assert {r.request_id for r in store.recent()} == {"req_1", "req_2", "req_5"}


def test_a_request_id_is_a_repeat_however_long_ago_and_a_key_for_its_window(
    store: RequestStore
) -> None:
    store.accept_many([new(1, key="webhook-id:m1")], NOW)
    assert not store.accept_many([new(1)], NOW + KEY_WINDOW * 10)[0].created
    after_window = store.accept_many([new(3, key="webhook-id:m1")], NOW + KEY_WINDOW + 1)[0]
    assert after_window.created and after_window.request_id == "req_3"


def test_claim_is_exclusive_under_concurrency(store: RequestStore) -> None:
    store.accept_many([new(1)], NOW)
    winners: list[str] = []
    start = threading.Barrier(12)

    def contend(i: int) -> None:
        start.wait()
        if store.claim("req_1", f"owner{i}", NOW, NOW + 60) is not None:
            winners.append(f"owner{i}")

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    rec = store.get("req_1")
    assert rec is not None and rec.status == "running" and rec.lease_owner == winners[0]
    assert rec.attempts == 1


def test_claim_respects_due_time_lease_and_final_states(store: RequestStore) -> None:
    store.accept_many([new(1), new(2)], NOW)
    rec = store.claim("req_1", "a", NOW, NOW + 60)
    assert rec is not None and rec.attempts == 1
    assert store.claim("req_1", "b", NOW + 30, NOW + 90) is None  # lease still held
    taken = store.claim("req_1", "b", NOW + 61, NOW + 121)  # lease ran out
    assert taken is not None and taken.lease_owner == "b" and taken.attempts == 2
    # The first owner woke up: every write of its is refused now.
    assert not store.update_owned("req_1", "a", "done", {"document": "{}"})
    assert store.update_owned("req_1", "b", "retrying", {"due_at": NOW + 300})
    assert store.claim("req_1", "c", NOW + 200, NOW + 260) is None  # not due yet
    assert store.claim("req_1", "c", NOW + 300, NOW + 360) is not None
    assert store.update_owned("req_1", "c", "done", {"lease_owner": None})
    assert store.claim("req_1", "d", NOW + 999, NOW + 1999) is None
    assert store.claim("req_missing", "d", NOW, NOW + 60) is None


def test_checkpoint_saves_the_document_and_the_step_outcomes(store: RequestStore) -> None:
    store.accept_many([new(1)], NOW)
    rec = store.claim("req_1", "a", NOW, NOW + 60)
    assert rec is not None
    doc = Document.model_validate_json(rec.document)
    doc.ticket_id = "1001"
    steps = {"ticket": {"ok": True, "at": "x"}}
    assert store.update_owned("req_1", "a", "running",
                              {"document": doc.to_json(), "steps": steps, "lease_until": NOW + 90})
    saved = store.get("req_1")
    assert saved is not None
    assert saved.data()["ticket_id"] == "1001" and saved.steps == steps
    assert saved.lease_until == NOW + 90


def test_renew_extends_only_our_leases(store: RequestStore) -> None:
    store.accept_many([new(1), new(2)], NOW)
    store.claim("req_1", "a", NOW, NOW + 60)
    store.claim("req_2", "b", NOW, NOW + 60)
    store.renew(["req_1", "req_2"], "a", NOW + 500)
    one, two = store.get("req_1"), store.get("req_2")
    assert one is not None and two is not None
    assert one.lease_until == NOW + 500 and two.lease_until == NOW + 60


def test_requeue_replays_only_failed_or_retrying_requests(store: RequestStore) -> None:
    store.accept_many([new(1), new(2)], NOW)
    store.claim("req_1", "a", NOW, NOW + 60)
    store.update_owned("req_1", "a", "failed", {"last_error": "boom", "lease_owner": None})
    assert store.requeue("req_1", NOW + 5, ("failed", "retrying")) == "failed"
    rec = store.get("req_1")
    assert rec is not None and (rec.status, rec.attempts, rec.last_error) == ("queued", 0, None)
    assert store.requeue("req_2", NOW + 5, ("failed",)) == "queued"  # left as it was
    assert store.requeue("req_none", NOW, ("failed",)) is None


def test_listing_is_newest_first_and_filters_by_status(store: RequestStore) -> None:
    for n in range(1, 5):
        store.accept_many([new(n)], NOW + n)
    store.claim("req_2", "a", NOW + 10, NOW + 70)
    store.update_owned("req_2", "a", "failed", {"last_error": "x"})
    assert [r.request_id for r in store.recent()] == ["req_4", "req_3", "req_2", "req_1"]
    assert [r.request_id for r in store.recent(limit=2)] == ["req_4", "req_3"]
    assert [r.request_id for r in store.recent("failed")] == ["req_2"]
    assert [r.request_id for r in store.recent("queued")] == ["req_4", "req_3", "req_1"]
    assert {r.request_id for r in store.open_requests()} == {"req_1", "req_3", "req_4"}


def test_sqlite_accept_without_waiting_refuses_while_another_holds_the_lock(
        tmp_path: Path) -> None:
    store = SqliteRequestStore(tmp_path / "requests.sqlite3")
    other = sqlite3.connect(tmp_path / "requests.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreBusy):
        store.accept_now([new(1)], time.time())
    other.execute("ROLLBACK")
    assert store.accept_now([new(1)], time.time())[0].created
    assert store.get("req_1") is not None
    store.close()


def test_retry_keeps_the_history_of_earlier_attempts(store: RequestStore) -> None:
    store.accept_many([new(1)], NOW)
    store.claim("req_1", "a", NOW, NOW + 60)
    store.update_owned("req_1", "a", "failed", {
        "last_error": "crm: 503", "steps": {"classify": {"ok": True, "at": "x"}},
        "updated_at": NOW + 10, "lease_owner": None})
    assert store.requeue("req_1", NOW + 100, ("failed",)) == "failed"
    store.claim("req_1", "b", NOW + 100, NOW + 160)
    store.update_owned("req_1", "b", "failed", {"last_error": "mail: 550", "steps": {},
                                                "updated_at": NOW + 110})
    store.requeue("req_1", NOW + 200, ("failed",))
    rec = store.get("req_1")
    assert rec is not None and rec.status == "queued" and rec.attempts == 0
    assert [(h["status"], h["attempts"], h["last_error"]) for h in rec.history] == [
        ("failed", 1, "crm: 503"), ("failed", 1, "mail: 550")]
    assert rec.history[0]["steps"] == {"classify": {"ok": True, "at": "x"}}
    assert rec.to_dict()["history"] == rec.history
