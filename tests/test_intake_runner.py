"""What one request goes through on a worker: checkpoints, retries, the dead letter, take-over."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from handler_cli.context import Context
from handler_cli.document import Document
from handler_cli.queue import RequestQueue
from handler_cli.services import ServiceError
from tests.intake_helpers import FnStep, Recorder, accept, queue_settings, status


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


def test_an_unexpected_exception_is_a_permanent_failure_not_six_hours_of_retries(
        tmp_path: Path) -> None:
    """A bug or an input nobody foresaw is not fixed by waiting: dead letter at once, where
    `requests retry` replays it after the fix."""
    calls = {"n": 0}

    def flaky(doc: Document, ctx: Context) -> Document:
        calls["n"] += 1
        if calls["n"] == 1:
            raise UnicodeEncodeError("ascii", "jéan", 1, 2, "ordinal not in range")
        return doc

    rq = RequestQueue(queue_settings(tmp_path), [FnStep("x", "x", "x", fn=flaky)])
    rid = accept(rq, 1)
    rq.process(rid)
    stored = rq.store.get(rid)
    assert stored is not None and stored.status == "failed" and stored.attempts == 1
    assert (stored.last_error or "").startswith("x: unexpected UnicodeEncodeError")
    assert list(rq.huey.pending()) == []  # nothing scheduled
    assert rq.retry(rid) == "failed"
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
    first.runner.keeper.stop()  # the worker hangs in step b: nobody renews its lease any more
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
