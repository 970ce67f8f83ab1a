"""Logging to stderr only: stdout carries documents and nothing else."""

from __future__ import annotations

import logging
import sys


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
