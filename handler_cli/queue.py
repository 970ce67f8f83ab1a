"""The huey module: the queue that carries request ids to the workers, and the worker entry point.

The module name is an operator contract: `python -m handler_cli.queue` (the worker process)
and `huey_consumer handler_cli.queue.huey` are documented, and huey names a task after its
module (`handler_cli.queue.process_request`, `handler_cli.queue.dispatch_requests`), so
messages already queued or scheduled must keep finding these names after a deploy. What one
request goes through lives in `handler_cli.intake` (see its docstring for the modules); the
store in `handler_cli.storage`.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from handler_cli.config import Settings
from handler_cli.intake.leases import LEASE_SECONDS, owner_id, owner_is_dead
from handler_cli.intake.records import RequestStatus
from handler_cli.intake.runner import RequestRunner
from handler_cli.steps import PIPELINE, Step
from handler_cli.storage import DataDir, RequestStore, check_urls, open_store

if TYPE_CHECKING:
    from huey import Huey
    from huey.api import Task

    from handler_cli.context import Context

log = logging.getLogger("handler_cli")

QUEUE_NAME = "handler-cli"
TASK_NAME = "process_request"
DISPATCH_NAME = "dispatch_requests"  # one per webhook batch: queues a TASK_NAME per request
RETRYABLE = (RequestStatus.FAILED, RequestStatus.RETRYING)


class RequestQueue:
    """huey's wiring for one process: the tasks, dispatch, the sweep, the workers."""

    def __init__(
        self,
        settings: Settings,
        steps: Sequence[Step] = PIPELINE,
        *,
        store: RequestStore | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        from huey import crontab
        from huey.signals import SIGNAL_INTERRUPTED

        self.settings = settings
        # A request from the web never reads the server's own files, whatever the CLI allows.
        self.worker_settings = settings.model_copy(update={"handler_allow_local_files": False})
        self.steps = tuple(steps)
        self.store = store if store is not None else open_store(settings)
        self.owner = owner_id()
        self.stopping = threading.Event()
        self.huey = make_huey(settings)
        self._task = self.huey.task(name=TASK_NAME)(self.process)
        self._dispatch = self.huey.task(name=DISPATCH_NAME)(self.fan_out)
        self.huey.periodic_task(crontab(), name="sweep_requests")(self.periodic_sweep)
        self.huey.on_startup(name="startup_sweep")(self._startup_sweep)
        self.huey.signal(SIGNAL_INTERRUPTED)(self._interrupted)
        self.runner = RequestRunner(
            self.store, settings, self.steps, owner=self.owner, lease=lease_seconds,
            context=self._context, enqueue=self.enqueue, stopping=self.stopping)
        self._ctx: Context | None = None
        self._ctx_lock = threading.Lock()
        self._swept_at_startup = threading.Lock()
        self._startup_done = False
        self._consumer: Any = None

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    # queue side

    def enqueue(self, request_id: str, delay: float | None = None) -> None:
        if delay:
            self._task.schedule(args=(request_id,), delay=delay)
        else:
            self._task(request_id)

    def dispatch(self, request_ids: Sequence[str]) -> None:
        """Queue the requests the webhook just stored, in one message: the worker that takes
        it queues one task per request. Serializing and writing a message per request was
        a tenth of the webhook's time per post. A message lost on the way loses no request:
        the sweep queues every open request that no message stands for."""
        if request_ids:
            self._dispatch(list(request_ids))

    def fan_out(self, request_ids: Iterable[str]) -> None:
        """One task per request, written at once (what a dispatch message does)."""
        messages = [self.huey.serialize_task(self._task.s(rid)) for rid in request_ids]
        if messages:
            self.huey.storage.enqueue_many(messages)

    def _queued_ids(self) -> set[str]:
        """Request ids some huey message (pending or scheduled) already stands for."""
        ids: set[str] = set()
        tasks: list[Task] = [*self.huey.pending(), *self.huey.scheduled()]
        for task in tasks:
            if task.name == TASK_NAME and task.args:
                ids.add(str(task.args[0]))
            elif task.name == DISPATCH_NAME and task.args:
                ids.update(str(rid) for rid in task.args[0])
        return ids

    def sweep(self, grace: float = 30.0, now: float | None = None) -> list[str]:
        """Re-enqueue open requests that no message stands for; return their ids.

        A running request whose worker is gone (lease run out, or its process dead on this
        host) is taken back first. `grace` leaves alone requests accepted a moment ago,
        whose message the webhook is still writing.
        """
        now = time.time() if now is None else now
        candidates: list[str] = []
        for rec in self.store.open_requests():
            if rec.status == RequestStatus.RUNNING:
                stale = (rec.lease_until or 0) < now or owner_is_dead(rec.lease_owner)
                if stale and rec.lease_owner and self.store.update_owned(
                    rec.request_id, rec.lease_owner, RequestStatus.RUNNING, {"lease_until": 0.0}
                ):
                    candidates.append(rec.request_id)
            elif (rec.due_at or 0) <= now - grace:
                candidates.append(rec.request_id)
        self.store.prune(now)
        if not candidates:
            return []
        present = self._queued_ids()
        missing = [c for c in candidates if c not in present]
        for request_id in missing:
            self.enqueue(request_id)
        if missing:
            log.info("re-queued %d request(s) left open: %s", len(missing),
                     ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        return missing

    def periodic_sweep(self) -> None:
        self.sweep()

    def _startup_sweep(self) -> None:
        """Once per process, when its first worker starts (also under `huey_consumer`)."""
        with self._swept_at_startup:
            if self._startup_done:
                return
            self._startup_done = True
        try:
            self.sweep(grace=0.0)
        except Exception:
            log.exception("start-up sweep failed; the periodic sweep will retry")

    def retry(self, request_id: str) -> str | None:
        """Operator replay of a failed (or waiting) request; the previous status, or None."""
        previous = self.store.requeue(request_id, time.time(), RETRYABLE)
        if previous in RETRYABLE:
            self.enqueue(request_id)
        return previous

    # worker side

    def _context(self) -> Context:
        """One Context for all the worker threads of this process.

        The backends lock around their own writes (the local CRM numbers tickets by counting
        them), so two threads must share one instance, not each build their own: the
        services are built here once, under a lock, before any thread uses them.
        """
        with self._ctx_lock:
            if self._ctx is None:
                from handler_cli.context import Context

                ctx = Context(self.worker_settings)
                for service in ("crm", "files", "mailer", "tasks", "llm", "ledger",
                                "renderer", "documents"):
                    try:
                        getattr(ctx, service)
                    except Exception:  # a missing setting: the step that needs it says so
                        log.debug("%s not built in advance", service, exc_info=True)
                self._ctx = ctx
            return self._ctx

    def process(self, request_id: str) -> None:
        """The huey task: the runner claims the request and runs it."""
        if self.stopping.is_set():
            # Shutting down: leave it queued. Wait a moment first, or this worker would
            # spin through the whole queue before huey's stop flag reaches it.
            self.enqueue(request_id)
            time.sleep(0.2)
            return
        self.runner.run(request_id)

    def _interrupted(self, signal: str, task: Task, *args: Any, **kwargs: Any) -> None:
        """huey is exiting with this task unfinished: hand its request back now. (The
        requests of an unfinished dispatch are still `queued`: the start-up sweep takes them.)"""
        if task.name != TASK_NAME or not task.args:
            return
        request_id = str(task.args[0])
        if self.runner.release(request_id):
            self.enqueue(request_id)

    # in-process workers (`serve`)

    def start_workers(self, count: int, shutdown_timeout: float = 30.0) -> None:
        """Run `count` huey worker threads (and its scheduler) inside this process."""
        poll = self.settings.handler_queue_poll_seconds
        consumer = self.huey.create_consumer(
            workers=count, worker_type="thread", periodic=True,
            initial_delay=min(0.05, poll), backoff=1.15, max_delay=poll,
            check_worker_health=False, shutdown_timeout=shutdown_timeout,
        )
        # Not consumer.run(): uvicorn owns this process's main thread and its signals.
        consumer.scheduler.start()
        for _, thread in consumer.worker_threads:
            thread.start()
        self._consumer = consumer

    def stop_workers(self) -> None:
        """Finish the steps in flight, hand the rest of their chains back, stop."""
        self.stopping.set()
        if self._consumer is not None:
            self._consumer.stop(graceful=True)
            self.huey.notify_interrupted_tasks()
            self._consumer = None

    def run_consumer(self, workers: int, shutdown_timeout: float = 30.0) -> None:
        """Run huey's consumer in this process's main thread until SIGTERM or SIGINT.

        SIGTERM is graceful: each worker finishes the step it is in, hands the rest of its
        chain back to the queue, and the process exits. A second SIGTERM changes nothing
        (systemd and the parent may both send one); SIGINT interrupts at once, handing the
        requests in flight back.
        """
        from huey.consumer import Consumer

        rq = self

        class _Consumer(Consumer):  # type: ignore[misc]
            def _handle_signal(self, signum: int, frame: Any) -> None:
                if signum == signal.SIGTERM and rq.stopping.is_set():
                    return
                rq.stopping.set()
                super()._handle_signal(signum, frame)

        poll = self.settings.handler_queue_poll_seconds
        _Consumer(
            self.huey, workers=workers, worker_type="thread", periodic=True,
            initial_delay=min(0.05, poll), backoff=1.15, max_delay=poll,
            shutdown_timeout=shutdown_timeout, graceful_signal="TERM",
        ).run()

    def close(self) -> None:
        self.runner.close()
        self.store.close()
        self.huey.storage.close()


def make_huey(settings: Settings) -> Huey:
    """huey's own PostgresStorage in the shared database with `HANDLER_DATABASE_URL` (rows
    taken with SKIP LOCKED, workers woken by LISTEN/NOTIFY), else SqliteHuey in the data dir."""
    from huey import Huey
    from huey.storage import SqliteStorage

    class _Sqlite(SqliteStorage):  # type: ignore[misc]
        def _create_connection(self) -> sqlite3.Connection:
            conn: sqlite3.Connection = super()._create_connection()
            # NORMAL, not FULL: the request store is durable; a lost message is re-sent.
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn

        def enqueue_many(self, datas: list[bytes]) -> None:
            # The row huey's own enqueue() writes, for a whole batch in one transaction.
            self.sql_many("insert into task (queue, data, priority) values (?, ?, ?)",
                          [(self.name, self.to_blob(d), 0) for d in datas])

        def sql_many(self, query: str, rows: list[tuple[Any, ...]]) -> None:
            with self.db(commit=True) as curs:
                curs.executemany(query, rows)

    url = check_urls(settings)
    if url:
        from huey.storage import PostgresStorage

        class _Postgres(PostgresStorage):  # type: ignore[misc]
            def enqueue_many(self, datas: list[bytes]) -> None:
                # huey's enqueue() row for each, one transaction, one wake-up.
                with self.db(commit=True) as curs:
                    curs.executemany(
                        f"insert into {self.table_task} (queue, data, priority)"
                        " values (%s, %s, %s)", [(self.name, d, 0) for d in datas])
                    curs.execute("select pg_notify(%s, %s)", (self.channel, ""))

        return Huey(QUEUE_NAME, results=False, utc=True, storage_class=_Postgres, dsn=url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Huey(QUEUE_NAME, results=False, utc=True, storage_class=_Sqlite,
                filename=str(DataDir(settings.data_dir).queue))


def main(argv: Sequence[str] | None = None) -> None:
    """The worker process of `serve` (settings from the environment)."""
    import argparse

    from handler_cli import logs
    from handler_cli.config import load_settings
    from handler_cli.intake.worker_process import die_with, idle_priority

    parser = argparse.ArgumentParser(prog="python -m handler_cli.queue", description=main.__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shutdown-timeout", type=float, default=30.0)
    parser.add_argument("--parent", type=int, help="exit when this process is gone")
    parser.add_argument("--nice", type=int, default=19,
                        help="CPU priority increment; with any, idle scheduling on Linux")
    args = parser.parse_args(argv)
    if args.parent:
        die_with(args.parent)
    if args.nice:
        os.nice(args.nice)
        idle_priority()
    logs.setup(0)
    logging.getLogger("huey").setLevel(logging.WARNING)
    RequestQueue(load_settings()).run_consumer(args.workers, args.shutdown_timeout)


_default: RequestQueue | None = None


def __getattr__(name: str) -> Any:
    """`huey_consumer handler_cli.queue.huey`: separate workers, built from the environment."""
    global _default
    if name == "huey":
        if _default is None:
            from handler_cli.config import load_settings

            _default = RequestQueue(load_settings())
        return _default.huey
    raise AttributeError(name)


if __name__ == "__main__":
    # Through the package, not this `__main__` copy: huey names tasks after their module.
    from handler_cli.queue import main as _main

    _main()
