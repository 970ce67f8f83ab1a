"""The pipeline's steps, in order, and the one way a step is applied to a document.

Each step module exposes `run(doc, ctx) -> Document`: pure logic over the document plus the
services in the context. A step returns early when its output is already on the document,
so re-running it (or a whole chain) never repeats a side effect.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from handler_cli.config import ConfigError

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document

log = logging.getLogger("handler_cli")


class MissingInput(Exception):
    """The document lacks a field an earlier step should have added."""

    def __init__(self, field: str, step: str) -> None:
        super().__init__(f"missing '{field}': run `handler-cli {step}` first")
        self.field = field


@dataclass(frozen=True)
class Step:
    name: str  # the subcommand, also the key of errors on the document
    module: str  # handler_cli.steps.<module>
    summary: str

    def load(self) -> Callable[[Document, Context], Document]:
        fn: Callable[[Document, Context], Document] = importlib.import_module(
            f"handler_cli.steps.{self.module}"
        ).run
        return fn


PIPELINE: tuple[Step, ...] = (
    Step("classify", "classify", "Classify as SUPPORT or MODELISATION (keywords, then Claude)."),
    Step("upload", "upload", "Store a modelling request's files (R2 or local folder)."),
    Step("contact", "contact", "Find the client's CRM contact by e-mail, or create it."),
    Step("ticket", "ticket", "Open the CRM ticket (priority HIGH when reclassified)."),
    Step("analyze", "analyze", "Check completeness and price a modelling request in credits."),
    Step("notify-client", "notify_client", "E-mail the client: missing info, quote or receipt."),
    Step("notify-admin", "notify_admin", "E-mail the admin a summary (alert when reclassified)."),
)
SUBTASK = Step("subtask", "subtask", "Create the ClickUp subtask of a validated ticket.")
STEPS: dict[str, Step] = {s.name: s for s in (*PIPELINE, SUBTASK)}


def note(doc: Document, ctx: Context, text: str) -> None:
    """Add a note to the request, and to its ticket once there is one (never twice)."""
    import hashlib

    doc.add_note(text)
    if doc.ticket_id:
        ticket_id = doc.ticket_id
        key = f"note:{doc.request_id}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        ctx.ledger.do_once(key, lambda: ctx.crm.add_note(ticket_id, text))


def apply(step: Step, doc: Document, ctx: Context) -> bool:
    """Run one step on `doc` in place; record a failure on the document instead of raising.

    Returns True when the step succeeded (or had nothing to do). Configuration errors are
    not the document's fault and propagate to the command, which stops.

    This is the one place a failure is classified: the error on the document is transient
    only when a service said so (`ServiceError.transient`: down, 429, 5xx, timeout). A
    missing input waits for another step, which has its own error; an unexpected exception
    is a bug or an input we did not foresee, and neither is fixed by retrying for 6 hours.
    """
    try:
        result = step.load()(doc, ctx)
    except ConfigError:
        raise
    except Exception as exc:
        # Imported here, on failure only: a step that succeeds never needs the services.
        from handler_cli.services import ServiceError

        if isinstance(exc, ServiceError):
            doc.record_error(step.name, str(exc), ctx.now(), transient=exc.transient)
            log.error("%s: %s: %s", doc.request_id, step.name, exc)
            return False
        if isinstance(exc, MissingInput):
            doc.record_error(step.name, str(exc), ctx.now(), transient=False)
            log.error("%s: %s: %s", doc.request_id, step.name, exc)
            return False
        # A bug must not lose the document: record it (permanent), keep going.
        doc.record_error(step.name, f"unexpected {type(exc).__name__}: {exc}", ctx.now(),
                         transient=False)
        log.error("%s: %s: unexpected %s: %s", doc.request_id, step.name,
                  type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return False
    if result is not doc:
        raise TypeError(f"step {step.name} must return the document it was given")
    doc.clear_errors(step.name)
    return True
