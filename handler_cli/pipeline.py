"""The chain of steps `run` applies, shared by the CLI, the webhook workers and the poll."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from handler_cli.steps import PIPELINE, Step, apply

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document

Checkpoint = Callable[["Step", "Document", bool], None]


def run_chain(
    doc: Document,
    ctx: Context,
    steps: Sequence[Step] = PIPELINE,
    checkpoint: Checkpoint | None = None,
) -> bool:
    """Apply `steps` in order; True when every one succeeded.

    `checkpoint(step, doc, ok)` is called after each step, so a caller (the webhook worker)
    can save the document as it grows and resume after a crash. A failed step does not stop
    the chain: later steps that do not depend on it still run (a failed upload still gets
    its ticket), and those that do record a MissingInput error.

    A document that has a ticket is kept in the local document store, where the poll finds
    the request behind a waiting ticket.
    """
    all_ok = True
    for step in steps:
        ok = apply(step, doc, ctx)
        all_ok = all_ok and ok
        if checkpoint is not None:
            checkpoint(step, doc, ok)
    if doc.ticket_id:
        ctx.documents.save(doc)
    return all_ok
