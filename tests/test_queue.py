"""huey's wiring: the sweep, dispatch, shutdown, and the queue shared by two processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from handler_cli.intake.leases import owner_id
from handler_cli.queue import RequestQueue
from handler_cli.storage.postgres import PostgresRequestStore
from tests.intake_helpers import Recorder, accept, queue_settings, status, wait_status
from tests.postgres import pg_session, pg_url  # noqa: F401 - fixtures


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
    rq.dispatch(batch)
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


def test_shared_queue_carries_requests_between_two_machines_worth_of_queues(
    tmp_path: Path, pg_url: str  # noqa: F811 - fixture
) -> None:
    """Two RequestQueues on one PostgreSQL (as two machines would be): one accepts, one
    works; huey's messages travel in the same database."""
    settings = queue_settings(tmp_path, HANDLER_DATABASE_URL=pg_url)
    rec = Recorder()
    web = RequestQueue(settings, rec.chain("a"))
    worker = RequestQueue(settings, rec.chain("a"))
    rid = accept(web, 1)
    web.enqueue(rid)
    worker.start_workers(2)
    wait_status(web, rid, "done")
    worker.stop_workers()
    assert rec.runs == {"a": 1}
    assert isinstance(web.store, PostgresRequestStore)
    web.close()
    worker.close()
