"""The chain of steps `run` applies, shared by the CLI, the webhook workers and the poll."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from handler_cli.steps import PIPELINE, Step, apply

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document

Checkpoint = Callable[["Step", "Document", bool], None]
STALE_RETRIES = 3  # the stored copy moved on this many times in a row: report it


def run_chain(
    doc: Document,
    ctx: Context,
    steps: Sequence[Step] = PIPELINE,
    checkpoint: Checkpoint | None = None,
    *,
    keep: bool = False,
) -> bool:
    """Apply `steps` in order; True when every one succeeded.

    `checkpoint(step, doc, ok)` is called after each step, so a caller (the webhook worker)
    can save the document as it grows and resume after a crash. A failed step does not stop
    the chain: later steps that do not depend on it still run (a failed upload still gets
    its ticket), and those that do record a MissingInput error.

    A document that has a ticket is kept in the document store, where the poll finds the
    request behind a waiting ticket. That save never goes back in time: a document given
    with a ticket starts from the stored copy, and when the stored copy moved on meanwhile
    (the poll validated it, another `run`), the chain starts again from it: every step finds
    its output there, or its effect in the ledger, so nothing is done twice.

    With `keep` (the `run` door), a document is kept even without a ticket: a request that
    failed before its ticket shows in `requests list` with its errors, and running it again
    starts from the stored copy.
    """
    if doc.ticket_id or keep:
        ctx.documents.refresh(doc)
    for _ in range(STALE_RETRIES):
        all_ok = True
        for step in steps:
            ok = apply(step, doc, ctx)
            all_ok = all_ok and ok
            if checkpoint is not None:
                checkpoint(step, doc, ok)
        if not (doc.ticket_id or keep):
            return all_ok
        # Imported here: a chain that opens no ticket (classify) never loads the storage layer.
        from handler_cli.storage import StaleDocument

        try:
            ctx.documents.save(doc)
            return all_ok
        except StaleDocument:
            ctx.documents.refresh(doc)
    raise StaleDocument(doc.request_id)
