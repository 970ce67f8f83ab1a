"""`serve`'s worker process: started, watched and stopped by the server, and its own set-up.

The child runs `python -m handler_cli.queue` (an operator contract, see handler_cli.queue) at
the lowest CPU priority and dies with its parent.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from handler_cli.config import Settings

log = logging.getLogger("handler_cli")


def settings_environ(settings: Settings) -> dict[str, str]:
    """This process's environment plus `settings` as variables: what a child process needs
    to rebuild the same settings with load_settings()."""
    environ = dict(os.environ)
    for name, value in settings.model_dump(exclude={"sources"}).items():
        if value is not None:
            environ[name.upper()] = str(value)
    return environ


class WorkerProcess:
    """`serve`'s workers in one child process (`python -m handler_cli.queue`), at the lowest
    CPU priority (nice 19, and idle scheduling on Linux): under a burst the webhook keeps
    answering in milliseconds and the chains catch up after. The child dies with its
    parent (even after a `kill -9`), and is started again if it exits on its own."""

    def __init__(self, settings: Settings, workers: int, shutdown_timeout: float = 30.0
                 ) -> None:
        self.command = [sys.executable, "-m", "handler_cli.queue", "--workers", str(workers),
                        "--shutdown-timeout", str(shutdown_timeout), "--parent",
                        str(os.getpid())]
        self.environ = settings_environ(settings)
        self.shutdown_timeout = shutdown_timeout
        self._stopping = threading.Event()
        self.proc = self._spawn()
        self.restarts = 0
        # The watcher spawns replacements, so it must live as long as the server: a child
        # started from a thread is killed when that thread ends (PR_SET_PDEATHSIG).
        self._watcher = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
        self._watcher.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, env=self.environ)

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            code = self.proc.poll()
            if code is not None and not self._stopping.is_set():
                log.error("worker process exited (code %s); starting it again", code)
                self.restarts += 1
                self.proc = self._spawn()

    @property
    def problem(self) -> str | None:
        code = self.proc.poll()
        return None if code is None else f"worker process exited (code {code})"

    def stop(self) -> None:
        """SIGTERM: steps in flight finish, the rest goes back to the queue."""
        self._stopping.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.shutdown_timeout + 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def die_with(parent: int) -> None:
    """Never outlive the `serve` process that started us."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # elsewhere, or if the parent died before prctl
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def idle_priority() -> None:
    """Linux: run only on CPU time nothing else wants (SCHED_IDLE). Under nice 19 alone the
    workers still took a share of the CPU beside a busy webhook, which then answered ~10%
    fewer posts a second (bench/bench_serve.py on 2 CPUs). Threads started later inherit it."""
    if hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:
            log.debug("SCHED_IDLE refused (%s); nice only", exc)


