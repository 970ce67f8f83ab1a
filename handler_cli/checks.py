"""What `handler-cli doctor --check` learns about a backend: one line per fact, proved or not.

A backend's `check()` returns a list of findings rather than one sentence, so a run that
would fail for three reasons (a scope missing, a property missing, a wrong pipeline) says
all three at once, each on its own line, each with what to do. A `ServiceError` raised by
`check()` is a finding too: the backend could not even be asked.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    """One fact `doctor --check` proved (`ok`) or found missing, in one line."""

    ok: bool
    text: str

    def __str__(self) -> str:
        return f"{'ok' if self.ok else 'FAILED'} — {self.text}"


def proved(text: str) -> Finding:
    return Finding(True, text)


def missing(text: str) -> Finding:
    return Finding(False, text)
