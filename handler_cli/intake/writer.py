"""The webhook's group commit: posts that arrive together are stored in one transaction.

One fsync for fifty concurrent posts instead of fifty; the huey messages for the stored
requests follow, one per 50 ms of batches. See docs/production.md, "Durability".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from handler_cli.intake.records import Accepted, NewRequest
from handler_cli.storage import BUSY_TIMEOUT_MS, RequestStore, StoreBusy

log = logging.getLogger("handler_cli")


class IntakeWriter:
    """Stores accepted requests in batches (group commit), then hands their ids to huey.

    Whatever arrived while the previous batch was being stored forms the next batch. With
    SQLite the whole batch, COMMIT and its fsync included, is written on the event loop: a
    thread would free the loop during the fsync (well under a millisecond on an SSD) but
    waking it costs more than that, in GIL hand-offs with the busy loop (bench_serve.py:
    ~40 microseconds of CPU per post on a 2-CPU VM). The loop never waits for a worker's
    lock: the batch is tried again a moment later. PostgreSQL is a network round trip: its
    batches go to a thread. The huey messages for stored requests are written by that
    thread too, for all the batches of the last DISPATCH_EVERY_SECONDS at once.
    """

    RETRY_BUSY_SECONDS = 0.001
    DISPATCH_EVERY_SECONDS = 0.05

    def __init__(self, store: RequestStore, dispatch: Callable[[Sequence[str]], None],
                 loop: asyncio.AbstractEventLoop, max_batch: int = 512,
                 busy_give_up: float = BUSY_TIMEOUT_MS / 1000) -> None:
        self.store = store
        self.dispatch = dispatch
        self.loop = loop
        self.max_batch = max_batch
        # A lock held this long is a stuck process: answer 503 (send again) rather than wait.
        self.busy_give_up = busy_give_up
        self._busy_since: float | None = None
        self._pending: list[tuple[NewRequest, asyncio.Future[Accepted]]] = []
        self._busy = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="intake")
        self._undispatched: list[str] = []

    def submit(self, item: NewRequest) -> asyncio.Future[Accepted]:
        future: asyncio.Future[Accepted] = self.loop.create_future()
        self._pending.append((item, future))
        self._kick()
        return future

    def _kick(self) -> None:
        if not self._busy and self._pending:
            self._busy = True
            self._idle.clear()
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        batch = self._pending[:self.max_batch]
        del self._pending[:self.max_batch]
        items = [item for item, _ in batch]
        store = self.store
        if store.accept_blocks:
            done = self._thread.submit(store.accept_many, items, time.time())
            done.add_done_callback(
                lambda f: self.loop.call_soon_threadsafe(self._finished, batch, f))
            return
        outcome: list[Accepted] | Exception
        try:
            outcome = store.accept_now(items, time.time())
        except StoreBusy as exc:
            now = time.monotonic()
            self._busy_since = self._busy_since or now
            if now - self._busy_since < self.busy_give_up:
                self._pending[:0] = batch
                self.loop.call_later(self.RETRY_BUSY_SECONDS, self._flush)
                return
            log.error("could not store %d request(s): the store stayed locked %.0f s",
                      len(batch), self.busy_give_up)
            outcome = exc
        except Exception as exc:
            log.exception("could not store %d request(s)", len(batch))
            outcome = exc
        self._busy_since = None
        self._answer(batch, outcome)

    def _dispatch_stored(self) -> None:
        request_ids, self._undispatched = self._undispatched, []
        if request_ids:
            self._thread.submit(self._push, request_ids)

    def _push(self, request_ids: list[str]) -> None:
        """Queue the new requests. A failure here is no lost request: they are stored, and
        the sweep queues what no message stands for."""
        try:
            self.dispatch(request_ids)
        except Exception:
            log.exception("could not queue %d stored request(s)", len(request_ids))

    def _finished(self, batch: list[tuple[NewRequest, asyncio.Future[Accepted]]],
                  done: Future[list[Accepted]]) -> None:
        error = done.exception()
        if error is not None:
            log.error("could not store %d request(s): %s", len(batch), error)
        self._answer(batch, error if error is not None else done.result())

    def _answer(self, batch: list[tuple[NewRequest, asyncio.Future[Accepted]]],
                results: list[Accepted] | BaseException) -> None:
        for position, (_, future) in enumerate(batch):
            if future.cancelled():
                continue  # the client went away; the request is stored all the same
            if isinstance(results, BaseException):
                future.set_exception(results)
            else:
                future.set_result(results[position])
        if not isinstance(results, BaseException):
            new = [r.request_id for r in results if r.created]
            if new and not self._undispatched:
                self.loop.call_later(self.DISPATCH_EVERY_SECONDS, self._dispatch_stored)
            self._undispatched.extend(new)
        self._busy = False
        if self._pending:
            self._kick()
        else:
            self._idle.set()

    async def close(self) -> None:
        """Wait for the batches in flight (uvicorn has finished the posts by now)."""
        await self._idle.wait()
        self._dispatch_stored()
        self._thread.shutdown(wait=True)

