"""Logging to stderr only: stdout carries documents and nothing else.

While a progress bar is drawn on the terminal, log lines go through its rich console
(`through_console`), which prints them above the bar: written straight to stderr they would
land in the middle of it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"handler-cli: {prefix}{record.getMessage()}" + (
            "\n" + self.formatException(record.exc_info) if record.exc_info else ""
        )


def setup(verbosity: int) -> None:
    """-1 quiet (errors only), 0 normal (info), 1 verbose (debug, with tracebacks)."""
    level = {-1: logging.ERROR, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    root = logging.getLogger("handler_cli")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class _ConsoleHandler(logging.Handler):
    """Each record printed by a rich console, as plain text (no markup read in a message)."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(_Format())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.out(self.format(record), highlight=False)
        except Exception:
            self.handleError(record)


@contextmanager
def through_console(console: Console) -> Iterator[None]:
    """Our logs (and any library's) printed by `console` for the duration."""
    ours, everyone = logging.getLogger("handler_cli"), logging.getLogger()
    saved = ours.handlers[:], everyone.handlers[:]
    handler = _ConsoleHandler(console)
    if not ours.handlers:  # not set up: the default level of a command
        ours.setLevel(logging.INFO)
        ours.propagate = False
    ours.handlers[:] = [handler]
    everyone.handlers[:] = [handler]
    try:
        yield
    finally:
        ours.handlers[:], everyone.handlers[:] = saved
