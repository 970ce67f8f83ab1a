"""Run `handler-cli` with a pseudo-terminal where an operator's terminal would be.

What a command does on a terminal (progress bars, spinners, tables, the no-input hint)
differs from what it does in a pipe or under cron, so those tests give it a real one.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT


@dataclass
class OnTerminal:
    returncode: int
    stdout: str  # a pipe, as when output is redirected to a file
    terminal: bytes  # everything the command drew on its terminal (stderr, raw)

    @property
    def text(self) -> str:
        return self.terminal.decode(errors="replace")


def run_on_terminal(*args: str, env: dict[str, str], stdin: str | None = None,
                    stdin_is_terminal: bool = False, stdout_is_terminal: bool = False,
                    cwd: Path = ROOT, timeout: float = 120) -> OnTerminal:
    """stderr (and stdin, stdout when asked) on a pseudo-terminal, stdout piped otherwise."""
    leader, follower = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "handler_cli", *args], cwd=cwd,
        stdin=follower if stdin_is_terminal else subprocess.PIPE if stdin is not None
        else subprocess.DEVNULL,
        stdout=follower if stdout_is_terminal else subprocess.PIPE, stderr=follower,
        env={**env, "COLUMNS": "100", "LINES": "40", "TERM": "xterm-256color"},
    )
    os.close(follower)
    if stdin is not None and proc.stdin is not None:
        proc.stdin.write(stdin.encode())
        proc.stdin.close()
    chunks: list[bytes] = []
    stdout: list[bytes] = []
    open_fds = {leader} | ({proc.stdout.fileno()} if proc.stdout is not None else set())
    while open_fds:
        ready, _, _ = select.select(list(open_fds), [], [], timeout)
        assert ready, "the command stopped talking"
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the terminal is gone: the child closed it
                data = b""
            if not data:
                open_fds.discard(fd)
            elif fd == leader:
                chunks.append(data)
            else:
                stdout.append(data)
    os.close(leader)
    code = proc.wait(timeout=timeout)
    return OnTerminal(code, b"".join(stdout).decode(), b"".join(chunks))
