"""Our own processes in the tests (`serve`, workers, huey's consumer): waiting for a webhook to
answer, and stopping them the way an operator would."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx


def wait_healthy(proc: subprocess.Popen[Any], url: str, why: Callable[[], str] = str,
                 timeout: float = 30) -> None:
    """Wait until the `serve` process `proc` answers `GET {url}/healthz` with 200. The test
    fails when it exits first or `timeout` passes, saying `why()` (its log, say)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, why()
        time.sleep(0.05)


def stop_processes(procs: Iterable[subprocess.Popen[Any]], sig: int = signal.SIGTERM,
                   grace: float = 30) -> None:
    """Send each live process its graceful signal `sig` (all first, so they stop together),
    then give each `grace` seconds; one still running is killed."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(sig)
    for proc in procs:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
