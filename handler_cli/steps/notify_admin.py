"""Step 7: the admin's summary of the request, with a visible alert when it was reclassified.

It goes out even when earlier steps failed: that is how the admin learns of them (the
original spec's "contact creation fails → admin told").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from handler_cli.mailing import send_once
from handler_cli.steps import MissingInput

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document


def run(doc: Document, ctx: Context) -> Document:
    if doc.type_final is None:
        raise MissingInput("type_final", "classify")
    send_once(ctx, doc, "admin", "admin_summary", ctx.settings.admin_email)
    return doc
