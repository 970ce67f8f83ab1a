"""Step 6: the production subtask of a ticket the client validated, created exactly once.

The CRM stays the source of truth: the ticket is already `validated` when this runs (the
poll set it), so a ClickUp outage only delays the subtask; the error is recorded on the
document and a later run creates it. The ledger keeps one subtask per request even when
the run dies between ClickUp's answer and the CRM update: a re-run gets the same id back
(or finds the subtask by its ticket reference) and only retries the update.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from handler_cli.steps import MissingInput

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document

log = logging.getLogger("handler_cli")


def subtask_name(doc: Document) -> str:
    return f"Demande {doc.user_email}"


def subtask_description(doc: Document) -> str:
    """What the production team reads in ClickUp (French, Markdown).

    The ticket reference sits in a code span on its own line: it is the marker that finds
    the subtask again after a crash, and the code span keeps Markdown from reading its
    brackets as a link.
    """
    credits = "non estimés" if doc.credits_estimes is None else str(doc.credits_estimes)
    lines = [
        f"- **Référence :** `{doc.ticket_ref}`",
        f"- **Ticket CRM :** {doc.ticket_url or 'lien indisponible'}",
        f"- **Client :** {doc.user_name} <{doc.user_email}>",
        f"- **Crédits estimés :** {credits}",
        f"- **Objet :** {doc.objet}",
        f"- **Demande :** `{doc.request_id}`",
        "",
        "## Description",
        "",
        doc.description,
        "",
        "## Fichiers",
        "",
    ]
    if doc.fichiers_urls:
        lines += [f"- {url}" for url in doc.fichiers_urls]
    elif doc.fichiers:
        lines.append("Fichiers joints non stockés : " + ", ".join(doc.file_names()))
    else:
        lines.append("Aucun fichier.")
    return "\n".join(lines)


def run(doc: Document, ctx: Context) -> Document:
    if doc.clickup_subtask_id:
        return doc
    if doc.validation_status != "validated":
        log.info("%s: subtask: nothing to do, the quote is not validated (status %s)",
                 doc.request_id, doc.validation_status or "unset")
        return doc
    if not doc.ticket_id:
        raise MissingInput("ticket_id", "ticket")
    ticket_id = doc.ticket_id
    parent = ctx.settings.clickup_parent_task_id
    marker = doc.ticket_ref
    name, description = subtask_name(doc), subtask_description(doc)
    subtask_id = ctx.ledger.once(
        f"subtask:{doc.request_id}",
        perform=lambda: ctx.tasks.create_subtask(parent, name, description),
        recover=lambda: ctx.tasks.find_subtask(parent, marker),
    )
    # Only once the CRM knows the link is the step done: a failed update is retried on the
    # next run (the ledger hands back the same subtask, nothing is created twice).
    ctx.crm.update_ticket(
        ticket_id, {"validation_status": "validated", "clickup_subtask_id": subtask_id}
    )
    doc.clickup_subtask_id = subtask_id
    log.info("%s: subtask %s created under %s", doc.request_id, subtask_id, parent)
    return doc
