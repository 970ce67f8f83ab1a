"""Step 5b: the client's e-mail, chosen by the analysis status (templates 1 to 4).

| status          | client receives                          |
| pending_info    | missing information (1)                  |
| pending_credits | quote, 1 or 2 credits (2, 3)             |
| pending_admin   | acknowledgement (the admin's summary of step 7 is the complex case, 4) |
| SUPPORT         | acknowledgement with the ticket number   |

One e-mail per event: the admin hears of a new complex case once, in step 7's summary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from handler_cli.mailing import send_once
from handler_cli.steps import MissingInput

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document

CLIENT_TEMPLATES = {
    "pending_info": "client_missing_info",
    "pending_admin": "client_admin_ack",
}


def client_template(doc: Document) -> str:
    if doc.type_final == "SUPPORT":
        return "client_support_ack"
    if doc.validation_status is None:
        raise MissingInput("validation_status", "analyze")
    if doc.validation_status == "pending_credits":
        return f"client_quote_{doc.credits_estimes}"
    return CLIENT_TEMPLATES[doc.validation_status]


def run(doc: Document, ctx: Context) -> Document:
    if doc.type_final is None:
        raise MissingInput("type_final", "classify")
    if not doc.ticket_id:
        raise MissingInput("ticket_id", "ticket")
    if doc.validation_status in ("validated", "rejected"):
        return doc  # the client already answered: the poll speaks to them from here on
    send_once(ctx, doc, "client", client_template(doc), doc.user_email)
    return doc
