"""The record of side effects, so an effect (ticket, e-mail, note, subtask) happens once.

Every effect that creates something outside goes through `Ledger.once(key, perform,
recover)`. Before doing it, the caller **claims** the key in the storage layer (an atomic
insert, or a take-over, under a lease): whoever claims it does it, and records the result.
A second claimant, in another thread, process or machine, waits for that result instead of
doing the effect again (two `run`s on one batch, a webhook worker and a shell). A claim whose
holder died (its process is gone on this host, or its lease ran out) is taken over, and the
new holder first asks `recover` whether the effect happened (e.g. a HubSpot search by request
id) before doing it again. The happy path costs no extra API call.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from handler_cli.intake.leases import owner_id, owner_is_dead

CLAIM_SECONDS = 600.0  # a claim outlives any one effect (the HTTP clients' retries included)
_REQUEST_ID = re.compile(r"req_[A-Za-z0-9]+")


def request_of(key: str) -> str | None:
    """The request an effect key belongs to: every key names it (`ticket:<id>`,
    `subtask:<id>`, `note:<id>:…`, `email:<<id>.<kind>@…>`), which prune and forget use."""
    found = _REQUEST_ID.search(key)
    return found.group(0) if found else None


@dataclass(frozen=True)
class Claim:
    """What claiming a key found: `new` (ours, never tried), `stale` (ours, taken over from a
    holder that died or gave up mid-effect: recover first), `done` (with its result) or
    `held` (a live holder is doing it right now)."""

    state: Literal["new", "stale", "done", "held"]
    result: str | None = None


class EffectStore(Protocol):
    """The ledger's table in the storage layer: one row per key (state, result, holder)."""

    def claim(self, key: str, owner: str, now: float, until: float,
              is_dead: Callable[[str | None], bool]) -> Claim:
        """Atomically: insert the key as ours, or take it over from a dead or expired holder,
        or report it done or held."""
        ...

    def complete(self, key: str, owner: str, result: str, now: float) -> None: ...
    def release(self, key: str, owner: str) -> None:
        """Our effect failed: keep the key pending (it may have happened) but let the next
        claimant take it over at once, and recover first."""
        ...
    def get(self, key: str) -> tuple[str, str | None] | None: ...
    def forget(self, key: str) -> None: ...
    def close(self) -> None: ...


class Ledger:
    """`once` and `do_once` over an `EffectStore`; one per process, shared by its threads."""

    def __init__(self, store: EffectStore, *, claim_seconds: float = CLAIM_SECONDS,
                 poll_seconds: float = 0.05) -> None:
        self.store = store
        self.claim_seconds = claim_seconds
        self.poll_seconds = poll_seconds
        self._owner = owner_id()

    def owner(self) -> str:
        """This thread's name as a claimant: two threads of a process are two claimants."""
        return f"{self._owner}-{threading.get_ident()}"

    def get(self, key: str) -> tuple[str, str | None] | None:
        return self.store.get(key)

    def forget(self, key: str) -> None:
        self.store.forget(key)

    def once(
        self,
        key: str,
        perform: Callable[[], str],
        recover: Callable[[], str | None] | None = None,
    ) -> str:
        """Run `perform` at most once for `key` and return its result, now or from before."""
        owner = self.owner()
        wait = self.poll_seconds
        while True:
            now = time.time()
            claim = self.store.claim(key, owner, now, now + self.claim_seconds, owner_is_dead)
            if claim.state == "done" and claim.result is not None:
                return claim.result
            if claim.state == "held":  # someone is doing it: wait for their result
                time.sleep(wait)
                wait = min(wait * 2, 1.0)
                continue
            break
        try:
            if claim.state == "stale" and recover is not None:
                recovered = recover()
                if recovered is not None:
                    self.store.complete(key, owner, recovered, time.time())
                    return recovered
            result = perform()
        except BaseException:
            self.store.release(key, owner)
            raise
        self.store.complete(key, owner, result, time.time())
        return result

    def do_once(self, key: str, action: Callable[[], None]) -> None:
        """`once` for an effect with no result to keep (a note, an e-mail logged on a ticket)."""

        def perform() -> str:
            action()
            return "done"

        self.once(key, perform)

    def close(self) -> None:
        self.store.close()
