"""Small test steps and helpers for the queue and runner tests: each durability rule shown
on its own, with chains made of test steps (the real chain is exercised by `test_server*`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from handler_cli.config import Settings, load_settings
from handler_cli.context import Context
from handler_cli.document import Document
from handler_cli.intake.records import NewRequest
from handler_cli.queue import RequestQueue
from handler_cli.services import ServiceError
from handler_cli.steps import Step
from tests.conftest import clean_environ

NOW = 1_800_000_000.0


def new(n: int | str, key: str | None = None, fingerprint: str | None = None) -> NewRequest:
    doc = Document.model_validate({
        "source": "contact", "objet": f"objet {n}", "description": f"description {n}",
        "user_email": "a@example.fr", "user_name": "A B", "request_id": f"req_{n}"})
    return NewRequest(doc.request_id, doc.to_json(), fingerprint or f"fp{n}", key)


@dataclass(frozen=True)
class FnStep(Step):
    """A chain step backed by a test function instead of a handler_cli.steps module."""

    fn: Callable[[Document, Context], Document] | None = field(default=None, compare=False)

    def load(self) -> Callable[[Document, Context], Document]:
        assert self.fn is not None
        return self.fn


@dataclass
class Recorder:
    """Counts real runs of each test step (a step with its output present does nothing)."""

    runs: dict[str, int] = field(default_factory=dict)
    gates: dict[str, threading.Event] = field(default_factory=dict)
    entered: dict[str, threading.Event] = field(default_factory=dict)
    failures: dict[str, list[ServiceError]] = field(default_factory=dict)

    def step(self, name: str) -> FnStep:
        def run(doc: Document, ctx: Context) -> Document:
            if name in doc.notes:
                return doc
            self.entered.setdefault(name, threading.Event()).set()
            gate = self.gates.get(name)
            if gate is not None:
                assert gate.wait(30)
            pending = self.failures.get(name)
            if pending:
                raise pending.pop(0)
            self.runs[name] = self.runs.get(name, 0) + 1
            doc.add_note(name)
            return doc

        return FnStep(name, name, f"test step {name}", fn=run)

    def chain(self, *names: str) -> list[Step]:
        return [self.step(n) for n in names]


def queue_settings(tmp_path: Path, **env: str) -> Settings:
    base = {"HANDLER_QUEUE_POLL_SECONDS": "0.05", "HANDLER_QUEUE_RETRY_SECONDS": "0.05",
            "HANDLER_QUEUE_RETRY_MAX_SECONDS": "0.2", "HANDLER_QUEUE_MAX_ATTEMPTS": "3"}
    return load_settings(environ=clean_environ(tmp_path / "data", **{**base, **env}))


def accept(rq: RequestQueue, n: int) -> str:
    rq.store.accept_many([new(n)], time.time())
    return f"req_{n}"


def status(rq: RequestQueue, request_id: str) -> str:
    rec = rq.store.get(request_id)
    assert rec is not None
    return rec.status


def wait_status(rq: RequestQueue, request_id: str, wanted: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while status(rq, request_id) != wanted:
        assert time.monotonic() < deadline, f"{request_id} still {status(rq, request_id)}"
        time.sleep(0.02)
