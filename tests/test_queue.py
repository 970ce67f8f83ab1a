"""The request store and the worker logic, without HTTP.

Every store test runs on both backends: SQLite, and Redis through a real `redis-server`
started on a loopback port (skipped, saying so, when it is not installed). Chains here are
made of small test steps so each durability rule (claim, lease, checkpoint, hand-back,
retry, dead letter) is shown on its own; the real chain is exercised by `test_server*`.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from handler_cli.config import Settings, load_settings
from handler_cli.context import Context
from handler_cli.document import Document
from handler_cli.queue import (
    PAYLOAD_WINDOW,
    NewRequest,
    RedisRequestStore,
    RequestQueue,
    RequestStore,
    SqliteRequestStore,
    StoreBusy,
    owner_id,
    owner_is_dead,
    retry_delay,
)
from handler_cli.services import ServiceError
from handler_cli.steps import Step
from tests.conftest import clean_environ
from tests.peers import free_port

NOW = 1_800_000_000.0

# --- a real redis-server ------------------------------------------------------------------------


@contextmanager
def redis_server() -> Iterator[str]:
    """redis-server on a free loopback port, no persistence; yields its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not on PATH (Debian/Ubuntu: apt-get install redis-server)")
    import redis

    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.02)
    try:
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def redis_session() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
def redis_url(redis_session: str) -> str:
    """A Redis emptied for this test."""
    import redis

    with redis.Redis.from_url(redis_session) as client:
        client.flushall()
    return redis_session


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RequestStore]:
    made: RequestStore
    if request.param == "sqlite":
        made = SqliteRequestStore(tmp_path / "requests.sqlite3")
    else:
        made = RedisRequestStore(request.getfixturevalue("redis_url"))
    yield made
    made.close()


def new(n: int | str, key: str | None = None, fingerprint: str | None = None) -> NewRequest:
    doc = Document.model_validate({
        "source": "contact", "objet": f"objet {n}", "description": f"description {n}",
        "user_email": "a@example.fr", "user_name": "A B", "request_id": f"req_{n}"})
    return NewRequest(doc.request_id, doc.to_json(), fingerprint or f"fp{n}", key)


# --- the store ---------------------------------------------------------------------------------


def test_accept_stores_new_requests_and_maps_repeats_to_the_first(store: RequestStore) -> None:
    results = store.accept_many(
        [new(1, key="webhook-id:m1"), new(2), new(3, key="webhook-id:m1"),  # same id as 1
         new(4, fingerprint="fp2"),  # same payload as 2, no key
         new(5, key="idempotency-key:k", fingerprint="fp2")],  # a key: a new submission
        NOW)
    assert [(r.request_id, r.created) for r in results] == [
        ("req_1", True), ("req_2", True), ("req_1", False), ("req_2", False), ("req_5", True)]
    again = store.accept_many([new(6, key="webhook-id:m1"), new(7, fingerprint="fp1")], NOW + 60)
    assert [(r.request_id, r.status, r.created) for r in again] == [
        ("req_1", "queued", False), ("req_1", "queued", False)]
    assert {r.request_id for r in store.recent()} == {"req_1", "req_2", "req_5"}


def test_identical_payload_is_a_new_request_after_24_hours(store: RequestStore) -> None:
    store.accept_many([new(1)], NOW)
    assert not store.accept_many([new(2, fingerprint="fp1")], NOW + PAYLOAD_WINDOW - 1)[0].created
    later = store.accept_many([new(3, fingerprint="fp1")], NOW + PAYLOAD_WINDOW + 1)[0]
    assert later.created and later.request_id == "req_3"


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


# --- leases and owners -------------------------------------------------------------------------


def test_owner_is_dead_only_when_we_can_tell() -> None:
    assert not owner_is_dead(owner_id())  # this process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    host, _, start, rnd = owner_id().rsplit(":", 3)
    assert owner_is_dead(f"{host}:{child.pid}:{start}:{rnd}")
    # A reused pid: alive, but not the process that took the lease.
    assert owner_is_dead(f"{host}:{os.getppid()}:1:{rnd}")
    assert not owner_is_dead(f"another-host:{child.pid}:{start}:{rnd}")
    assert owner_is_dead(None)


def test_retry_delay_doubles_then_is_capped() -> None:
    settings = load_settings(environ={"HANDLER_QUEUE_RETRY_SECONDS": "60",
                                      "HANDLER_QUEUE_RETRY_MAX_SECONDS": "3600"},
                             env_file=Path("/nonexistent"))
    assert [retry_delay(n, settings) for n in range(1, 9)] == [
        60, 120, 240, 480, 960, 1920, 3600, 3600]
    total = sum(retry_delay(n, settings) for n in range(1, settings.handler_queue_max_attempts))
    assert 5 * 3600 < total < 7 * 3600  # "retried for hours"


# --- the worker logic, with test steps ---------------------------------------------------------


@dataclass(frozen=True)
class FnStep(Step):
    """A chain step backed by a test function instead of a handler_cli.steps module."""

    fn: Callable[[Document, Context], Document] | None = field(default=None, compare=False)

    def load(self) -> Callable[[Document, Context], Document]:
        assert self.fn is not None
        return self.fn


@dataclass
class Recorder:
    """Counts real runs of each test step (a step with its output present does nothing)."""

    runs: dict[str, int] = field(default_factory=dict)
    gates: dict[str, threading.Event] = field(default_factory=dict)
    entered: dict[str, threading.Event] = field(default_factory=dict)
    failures: dict[str, list[ServiceError]] = field(default_factory=dict)

    def step(self, name: str) -> FnStep:
        def run(doc: Document, ctx: Context) -> Document:
            if name in doc.notes:
                return doc
            self.entered.setdefault(name, threading.Event()).set()
            gate = self.gates.get(name)
            if gate is not None:
                assert gate.wait(30)
            pending = self.failures.get(name)
            if pending:
                raise pending.pop(0)
            self.runs[name] = self.runs.get(name, 0) + 1
            doc.add_note(name)
            return doc

        return FnStep(name, name, f"test step {name}", fn=run)

    def chain(self, *names: str) -> list[Step]:
        return [self.step(n) for n in names]


def queue_settings(tmp_path: Path, **env: str) -> Settings:
    base = {"HANDLER_QUEUE_POLL_SECONDS": "0.05", "HANDLER_QUEUE_RETRY_SECONDS": "0.05",
            "HANDLER_QUEUE_RETRY_MAX_SECONDS": "0.2", "HANDLER_QUEUE_MAX_ATTEMPTS": "3"}
    return load_settings(environ=clean_environ(tmp_path / "data", **{**base, **env}))


def accept(rq: RequestQueue, n: int) -> str:
    rq.store.accept_many([new(n)], time.time())
    return f"req_{n}"


def status(rq: RequestQueue, request_id: str) -> str:
    rec = rq.store.get(request_id)
    assert rec is not None
    return rec.status


def wait_status(rq: RequestQueue, request_id: str, wanted: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while status(rq, request_id) != wanted:
        assert time.monotonic() < deadline, f"{request_id} still {status(rq, request_id)}"
        time.sleep(0.02)


def test_a_done_request_is_not_run_again(tmp_path: Path) -> None:
    rec = Recorder()
    rq = RequestQueue(queue_settings(tmp_path), rec.chain("a", "b"))
    rid = accept(rq, 1)
    rq.process(rid)
    rq.process(rid)  # a duplicate message
    assert status(rq, rid) == "done"
    assert rec.runs == {"a": 1, "b": 1}
    stored = rq.store.get(rid)
    assert stored is not None and set(stored.steps) == {"a", "b"}
    rq.close()


def test_transient_failure_is_retried_later_then_done(tmp_path: Path) -> None:
    rec = Recorder(failures={"b": [ServiceError("crm", "503", transient=True)]})
    rq = RequestQueue(queue_settings(tmp_path), rec.chain("a", "b", "c"))
    rid = accept(rq, 1)
    rq.process(rid)
    stored = rq.store.get(rid)
    assert stored is not None and stored.status == "retrying"
    assert "crm: 503" in (stored.last_error or "") and stored.due_at
    # The retry is a real huey message with its due time (huey schedules it on dequeue).
    assert [(t.args, t.eta is not None) for t in rq.huey.pending()] == [((rid,), True)]
    time.sleep(0.06)
    rq.process(rid)
    assert status(rq, rid) == "done"
    assert rec.runs == {"a": 1, "b": 1, "c": 1}  # c ran in the first attempt already
    rq.close()


def test_transient_failures_end_in_the_dead_letter_after_max_attempts(tmp_path: Path) -> None:
    rec = Recorder(failures={"b": [ServiceError("crm", "down", transient=True)] * 5})
    rq = RequestQueue(queue_settings(tmp_path), rec.chain("a", "b"))
    rid = accept(rq, 1)
    for _ in range(3):
        time.sleep(0.25)
        rq.process(rid)
    stored = rq.store.get(rid)
    assert stored is not None and stored.status == "failed" and stored.attempts == 3
    assert (stored.last_error or "").startswith("gave up after 3 attempts")
    assert [r.request_id for r in rq.store.recent("failed")] == [rid]
    # The operator replays it once the service is back.
    rec.failures.clear()
    assert rq.retry(rid) == "failed"
    rq.process(rid)
    assert status(rq, rid) == "done" and rec.runs == {"a": 1, "b": 1}
    rq.close()


def test_permanent_failure_is_failed_at_once(tmp_path: Path) -> None:
    rec = Recorder(failures={"b": [ServiceError("crm", "property unknown", transient=False)]})
    rq = RequestQueue(queue_settings(tmp_path), rec.chain("a", "b"))
    rid = accept(rq, 1)
    rq.process(rid)
    stored = rq.store.get(rid)
    assert stored is not None and stored.status == "failed" and stored.attempts == 1
    assert "property unknown" in (stored.last_error or "")
    assert stored.data()["errors"][0]["step"] == "b"
    rq.close()


def test_an_unexpected_exception_is_retried_not_lost(tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky(doc: Document, ctx: Context) -> Document:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk full")
        return doc

    rq = RequestQueue(queue_settings(tmp_path), [FnStep("x", "x", "x", fn=flaky)])
    rid = accept(rq, 1)
    rq.process(rid)
    stored = rq.store.get(rid)
    assert stored is not None and stored.status == "retrying"
    assert stored.last_error == "x: unexpected OSError: disk full"
    time.sleep(0.06)
    rq.process(rid)
    assert status(rq, rid) == "done"
    rq.close()


def test_a_request_whose_worker_keeps_dying_ends_failed(tmp_path: Path) -> None:
    rq = RequestQueue(queue_settings(tmp_path), Recorder().chain("a"))
    rid = accept(rq, 1)
    for i in range(3):  # claimed, then the worker vanished each time (lease ran out)
        assert rq.store.claim(rid, f"gone{i}", time.time(), time.time() - 1) is not None
    rq.process(rid)
    stored = rq.store.get(rid)
    assert stored is not None and stored.status == "failed"
    assert "never finished" in (stored.last_error or "")
    rq.close()


def test_a_crashed_worker_request_is_taken_over_and_resumes_at_the_unfinished_step(
    tmp_path: Path,
) -> None:
    settings = queue_settings(tmp_path)
    stuck = threading.Event()
    rec = Recorder(gates={"b": stuck})
    first = RequestQueue(settings, rec.chain("a", "b", "c"), lease_seconds=0.5)
    rid = accept(first, 1)
    worker = threading.Thread(target=first.process, args=(rid,), daemon=True)
    worker.start()
    assert rec.entered.setdefault("b", threading.Event()).wait(10)
    first._keeper.stop()  # the worker hangs in step b: nobody renews its lease any more
    time.sleep(0.6)

    second = RequestQueue(settings, rec.chain("a", "b", "c"))
    assert second.sweep(grace=0) == [rid]  # the lease ran out: back on the queue
    rec.gates.clear()  # the new worker's step b does not hang
    second.process(rid)
    assert status(second, rid) == "done"
    assert rec.runs == {"a": 1, "b": 1, "c": 1}  # a was checkpointed, not run again

    # The stuck worker wakes up: its step b runs, but its checkpoint is refused.
    done_doc = second.store.get(rid)
    stuck.set()
    worker.join(10)
    assert not worker.is_alive()
    assert rec.runs["b"] == 2  # it did run (a real side effect would need the ledger)...
    after = second.store.get(rid)
    assert after is not None and done_doc is not None
    assert (after.status, after.document) == ("done", done_doc.document)  # ...but wrote nothing
    assert rec.runs["c"] == 1
    first.close()
    second.close()


def test_sqlite_accept_without_waiting_refuses_while_another_holds_the_lock(
        tmp_path: Path) -> None:
    store = SqliteRequestStore(tmp_path / "requests.sqlite3")
    other = sqlite3.connect(tmp_path / "requests.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreBusy):
        store.accept_many([new(1)], time.time(), wait=False)
    other.execute("ROLLBACK")
    assert store.accept_many([new(1)], time.time(), wait=False)[0].created
    assert store.get("req_1") is not None
    store.close()


def test_sweep_requeues_open_requests_no_message_stands_for(tmp_path: Path) -> None:
    rq = RequestQueue(queue_settings(tmp_path), Recorder().chain("a"))
    lost = accept(rq, 1)  # stored, but the process died before queuing it
    queued = accept(rq, 2)
    rq.enqueue(queued)
    assert rq.sweep(grace=0) == [lost]
    assert rq.sweep(grace=0) == []  # now a message stands for each
    assert sorted(t.args[0] for t in rq.huey.pending()) == [lost, queued]
    # A request accepted a moment ago is left to the webhook that is queuing it.
    fresh = accept(rq, 3)
    assert rq.sweep(grace=30) == []
    assert rq.sweep(grace=0) == [fresh]
    rq.close()


def test_one_dispatch_message_per_webhook_batch_becomes_one_task_per_request(
        tmp_path: Path) -> None:
    rq = RequestQueue(queue_settings(tmp_path), Recorder().chain("a"))
    batch = [accept(rq, n) for n in range(3)]
    rq.announce(batch)
    (message,) = rq.huey.pending()  # one message for the batch...
    assert message.args[0] == batch
    assert rq.sweep(grace=0) == []  # ...which stands for each of its requests
    rq.huey.execute(rq.huey.dequeue())  # the worker that takes it queues one task each
    assert [t.args[0] for t in rq.huey.pending()] == batch
    while (task := rq.huey.dequeue()) is not None:
        rq.huey.execute(task)
    assert [status(rq, rid) for rid in batch] == ["done"] * 3
    rq.close()


def test_running_request_of_a_dead_process_is_taken_back_at_once(tmp_path: Path) -> None:
    rq = RequestQueue(queue_settings(tmp_path), Recorder().chain("a"))
    rid = accept(rq, 1)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    host, _, start, rnd = owner_id().rsplit(":", 3)
    dead = f"{host}:{child.pid}:{start}:{rnd}"
    assert rq.store.claim(rid, dead, time.time(), time.time() + 3600) is not None
    assert rq.sweep(grace=0) == [rid]  # no need to wait out the hour-long lease
    rq.process(rid)
    assert status(rq, rid) == "done"
    rq.close()


def test_shutdown_finishes_the_step_in_flight_and_hands_the_rest_back(tmp_path: Path) -> None:
    settings = queue_settings(tmp_path)
    rec = Recorder(gates={"b": threading.Event()})
    rq = RequestQueue(settings, rec.chain("a", "b", "c"))
    rid = accept(rq, 1)
    rq.enqueue(rid)
    rq.start_workers(1, shutdown_timeout=10)
    assert rec.entered.setdefault("b", threading.Event()).wait(10)
    stopper = threading.Thread(target=rq.stop_workers)
    stopper.start()  # SIGTERM arrives while step b runs
    time.sleep(0.1)
    rec.gates["b"].set()  # b finishes
    stopper.join(15)
    assert not stopper.is_alive()
    stored = rq.store.get(rid)
    assert stored is not None and stored.status == "queued"
    assert set(stored.steps) == {"a", "b"} and stored.attempts == 0
    assert rec.runs == {"a": 1, "b": 1}
    rq.close()

    again = RequestQueue(settings, rec.chain("a", "b", "c"))
    again.start_workers(1)
    wait_status(again, rid, "done")
    again.stop_workers()
    again.close()
    assert rec.runs == {"a": 1, "b": 1, "c": 1}


def test_redis_queue_carries_requests_between_two_processes_worth_of_queues(
    tmp_path: Path, redis_url: str
) -> None:
    """Two RequestQueues on one Redis (as two machines would be): one accepts, one works."""
    settings = queue_settings(tmp_path, HANDLER_QUEUE_URL=redis_url)
    rec = Recorder()
    web = RequestQueue(settings, rec.chain("a"))
    worker = RequestQueue(settings, rec.chain("a"))
    rid = accept(web, 1)
    web.enqueue(rid)
    worker.start_workers(2)
    wait_status(web, rid, "done")
    worker.stop_workers()
    assert rec.runs == {"a": 1}
    assert isinstance(web.store, RedisRequestStore)
    web.close()
    worker.close()
