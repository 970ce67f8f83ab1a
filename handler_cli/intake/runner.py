"""What one request goes through on a worker: claim, the chain with checkpoints, the outcome.

`RequestRunner.run(request_id)` claims the request (a lease), runs the chain from where the
request stands, saves the document after every step, and ends in `done`, `retrying` (a
transient failure, with a growing delay), `failed` (the dead letter), or handed back to the
queue on shutdown. It knows nothing of huey: re-queuing goes through the `enqueue` it is
given. The operator's story is in docs/production.md, "Durability".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from handler_cli.config import Settings
from handler_cli.intake.leases import LeaseKeeper
from handler_cli.intake.records import RequestRecord, RequestStatus, iso
from handler_cli.steps import Step

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document
    from handler_cli.storage import RequestStore

log = logging.getLogger("handler_cli")

Enqueue = Callable[[str, float | None], None]


class HandBack(Exception):
    """Shutting down: the current step finished and was saved; the rest goes back."""


class LeaseLost(Exception):
    """Another worker took this request over (our lease ran out); stop touching it."""


def retry_delay(attempt: int, settings: Settings) -> float:
    """The wait after the `attempt`-th run failed: doubling from the base, capped."""
    base = settings.handler_queue_retry_seconds
    return float(min(base * 2 ** max(attempt - 1, 0), settings.handler_queue_retry_max_seconds))


class RequestRunner:
    """Runs requests for one worker process: every thread shares it (and its lease keeper)."""

    def __init__(self, store: RequestStore, settings: Settings, steps: Sequence[Step], *,
                 owner: str, lease: float, context: Callable[[], Context], enqueue: Enqueue,
                 stopping: threading.Event) -> None:
        self.store = store
        self.settings = settings
        self.steps = tuple(steps)
        self.owner = owner
        self.lease = lease
        self.context = context
        self.enqueue = enqueue
        self.stopping = stopping
        self.keeper = LeaseKeeper(store, owner, lease)

    def run(self, request_id: str) -> None:
        """Claim the request, run the chain from where it stands, record the outcome."""
        now = time.time()
        rec = self.store.claim(request_id, self.owner, now, now + self.lease)
        if rec is None:
            log.debug("%s: nothing to do (done, not due, or held by a live worker)", request_id)
            return
        self.keeper.hold(request_id)
        try:
            self._run(rec)
        finally:
            self.keeper.drop(request_id)

    def _save(self, rec: RequestRecord, status: str, doc: Document | None,
              steps: dict[str, dict[str, Any]], **fields: Any) -> bool:
        now = time.time()
        values: dict[str, Any] = {"steps": steps, "updated_at": now, **fields}
        if doc is not None:
            values["document"] = doc.to_json()
        if status != RequestStatus.RUNNING:
            values.update(lease_owner=None, lease_until=None)
        return self.store.update_owned(rec.request_id, self.owner, status, values)

    def _run(self, rec: RequestRecord) -> None:
        from handler_cli.document import Document
        from handler_cli.pipeline import run_chain

        max_attempts = self.settings.handler_queue_max_attempts
        if rec.attempts > max_attempts:
            # Claimed again and again without ever finishing: its worker keeps dying on it.
            self._save(rec, RequestStatus.FAILED, None, rec.steps, last_error=(
                f"gave up after {rec.attempts - 1} attempts that never finished"))
            log.error("%s: failed, its workers stopped %d times", rec.request_id,
                      rec.attempts - 1)
            return
        doc = Document.model_validate_json(rec.document)
        steps = dict(rec.steps)
        if self.stopping.is_set():
            self.hand_back(rec, doc, steps)
            return
        ctx = self.context()
        # The stored document is the newest copy when there is one (the poll may have moved
        # the request on since our last attempt): start from it, never write back an older one.
        ctx.documents.refresh(doc)
        if self._forgotten(rec, doc, ctx):
            return

        def checkpoint(step: Step, current: Document, ok: bool) -> None:
            steps[step.name] = {"ok": ok, "at": iso(time.time())}
            if not self._save(rec, RequestStatus.RUNNING, current, steps,
                              lease_until=time.time() + self.lease):
                raise LeaseLost()
            if self.stopping.is_set():
                raise HandBack()

        try:
            ok = run_chain(doc, ctx, self.steps, checkpoint=checkpoint)
        except HandBack:
            self.hand_back(rec, doc, steps)
            return
        except LeaseLost:
            log.warning("%s: lease lost to another worker, leaving it", rec.request_id)
            return
        except Exception as exc:  # a setting, a bug, a full disk: wait and try again
            log.exception("%s: the chain stopped", rec.request_id)
            self._retry_or_fail(rec, doc, steps, f"{type(exc).__name__}: {exc}")
            return
        if ok:
            self._save(rec, RequestStatus.DONE, doc, steps, due_at=None, last_error=None)
            log.info("%s: done (ticket %s)", rec.request_id, doc.ticket_id)
            return
        error = "; ".join(f"{e.step}: {e.error}" for e in doc.errors) or "a step failed"
        # steps.apply() classified each failure once (StepError.transient): only a service
        # that said "later" (down, 429, 5xx, timeout) is worth waiting for.
        if any(e.transient for e in doc.errors):
            self._retry_or_fail(rec, doc, steps, error)
        else:
            self._save(rec, RequestStatus.FAILED, doc, steps, due_at=None, last_error=error)
            log.error("%s: failed (not transient): %s", rec.request_id, error)

    def _forgotten(self, rec: RequestRecord, doc: Document, ctx: Context) -> bool:
        """A request from an address whose data was erased at the client's request
        (`handler-cli forget`) is held in the dead letter, untouched, and the admin told
        once: it may be a replayed webhook (then `forget` erases it again) or the client
        coming back (then `forget --lift` and `requests retry`). Never run silently."""
        when = ctx.storage.forgotten.forgotten_at(doc.user_email)
        if when is None:
            return False
        from handler_cli.mailing import send_once
        from handler_cli.services import ServiceError

        told = ""
        try:
            send_once(ctx, doc, "admin_forgotten_held", "admin_forgotten_held",
                      ctx.settings.admin_email, {"forgotten_at": iso(when)})
        except ServiceError as exc:
            told = f" The admin could not be told ({exc}): tell them."
            log.error("%s: held, and the admin could not be told: %s", rec.request_id, exc)
        self._save(rec, RequestStatus.FAILED, doc, {}, due_at=None, last_error=(
            f"held: this client's data was erased on {iso(when)} at their request "
            "(handler-cli forget); nothing was done. A replayed post: erase it with "
            "`handler-cli forget EMAIL`. The client came back: `handler-cli forget --lift "
            f"EMAIL`, then `handler-cli requests retry {rec.request_id}`.{told}"))
        log.warning("%s: held, from an address erased on %s", rec.request_id, iso(when))
        return True

    def _retry_or_fail(self, rec: RequestRecord, doc: Document,
                       steps: dict[str, dict[str, Any]], error: str) -> None:
        if rec.attempts >= self.settings.handler_queue_max_attempts:
            self._save(rec, RequestStatus.FAILED, doc, steps, due_at=None,
                       last_error=f"gave up after {rec.attempts} attempts: {error}")
            log.error("%s: failed after %d attempts: %s", rec.request_id, rec.attempts, error)
            return
        delay = retry_delay(rec.attempts, self.settings)
        if self._save(rec, RequestStatus.RETRYING, doc, steps, due_at=time.time() + delay,
                      last_error=error):
            self.enqueue(rec.request_id, delay)
            log.warning("%s: attempt %d failed, next in %.0f s: %s", rec.request_id,
                        rec.attempts, delay, error)

    def hand_back(self, rec: RequestRecord, doc: Document,
                  steps: dict[str, dict[str, Any]]) -> None:
        if self._save(rec, RequestStatus.QUEUED, doc, steps, due_at=time.time(),
                      attempts=max(rec.attempts - 1, 0)):
            self.enqueue(rec.request_id, None)
            log.info("%s: handed back to the queue (shutting down)", rec.request_id)

    def release(self, request_id: str) -> bool:
        """Hand back a request this process holds without running it (huey is exiting)."""
        return self.store.update_owned(request_id, self.owner, RequestStatus.QUEUED,
                                       {"due_at": time.time(), "lease_owner": None,
                                        "lease_until": None})

    def close(self) -> None:
        self.keeper.stop()
