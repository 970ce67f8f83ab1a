"""Who holds a lease, and the retry delays."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from handler_cli.config import load_settings
from handler_cli.intake.leases import owner_id, owner_is_dead
from handler_cli.intake.runner import retry_delay


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
