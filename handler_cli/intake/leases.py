"""Who holds a running request: owner ids, telling a dead owner, and renewing our leases.

A worker claims a request under a lease (LEASE_SECONDS) and one thread per process renews the
leases of everything it runs. A lease whose owner died on this host is taken back at once;
on another host, when it runs out.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time

from handler_cli.storage import RequestStore

log = logging.getLogger("handler_cli")

LEASE_SECONDS = 120.0  # a claimed request's lease, renewed while its worker lives


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a process from /proc, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]


def owner_id() -> str:
    """host:pid:process start time:random; the random part tells apart two queues of one
    process (tests), the start time a reused pid."""
    pid = os.getpid()
    stat = _proc_stat(pid)
    return f"{socket.gethostname()}:{pid}:{stat[1] if stat else ''}:{secrets.token_hex(4)}"


def owner_is_dead(owner: str | None) -> bool:
    """True only when we can tell for sure: the owner ran on this host and is gone."""
    if not owner:
        return True
    try:
        host, pid_text, started, _ = owner.rsplit(":", 3)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        return False  # our own leases are renewed; our workers are alive
    stat = _proc_stat(pid)
    if stat is None:
        if os.path.isdir("/proc"):
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    state, start = stat
    return state in ("Z", "X") or (bool(started) and start != started)


class LeaseKeeper:
    """Renews the leases of the requests this process is working on, from one thread."""

    def __init__(self, store: RequestStore, owner: str, lease: float) -> None:
        self.store, self.owner, self.lease = store, owner, lease
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, request_id: str) -> None:
        with self._lock:
            self._held.add(request_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lease-keeper",
                                                daemon=True)
                self._thread.start()

    def drop(self, request_id: str) -> None:
        with self._lock:
            self._held.discard(request_id)

    def _run(self) -> None:
        while not self._stop.wait(self.lease / 3):
            with self._lock:
                held = list(self._held)
            if held:
                try:
                    self.store.renew(held, self.owner, time.time() + self.lease)
                except Exception:  # a store hiccup: the next round tries again
                    log.exception("could not renew the leases of %d request(s)", len(held))

    def stop(self) -> None:
        self._stop.set()


