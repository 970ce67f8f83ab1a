"""Step 4: the CRM ticket, created once per request (the ledger and the request id see to it).

Priority is MEDIUM, HIGH when the request was reclassified: a client who used the wrong form
deserves a quick human look. A ticket is opened even when the contact could not be created,
so no request is lost; the admin e-mail then lists the contact failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from handler_cli.services import TicketDraft
from handler_cli.steps import MissingInput, note

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document


def ticket_content(doc: Document) -> str:
    lines = [doc.description, "", f"Formulaire : {doc.source} ; client : {doc.user_name} "
             f"<{doc.user_email}> ; demande {doc.request_id}"]
    if doc.classification is not None:
        lines.append(
            f"Classement : {doc.type_final} (méthode {doc.classification.method}, confiance "
            f"{doc.confiance:.2f}{', RECLASSIFIÉE' if doc.reclassifie else ''}) — "
            + "; ".join(doc.classification.reasons)
        )
    if doc.fichiers_urls:
        lines += ["", "Fichiers :", *doc.fichiers_urls]
    elif doc.fichiers:
        lines += ["", "Fichiers joints (non stockés) : " + ", ".join(doc.file_names())]
    return "\n".join(lines)


def draft_for(doc: Document) -> TicketDraft:
    assert doc.type_final is not None
    properties = {"fichiers_urls": "\n".join(doc.fichiers_urls or [])}
    return TicketDraft(
        request_id=doc.request_id,
        subject=f"[{doc.type_final}] {doc.objet}"[:250],
        content=ticket_content(doc),
        priority="HIGH" if doc.reclassifie else "MEDIUM",
        contact_id=doc.contact_id,
        properties=properties,
    )


def run(doc: Document, ctx: Context) -> Document:
    if doc.ticket_id:
        return doc
    if doc.type_final is None:
        raise MissingInput("type_final", "classify")
    draft = draft_for(doc)
    ticket_id = ctx.ledger.once(
        f"ticket:{doc.request_id}",
        perform=lambda: ctx.crm.create_ticket(draft),
        recover=lambda: ctx.crm.find_ticket(doc.request_id),
    )
    doc.ticket_id = ticket_id
    doc.ticket_url = ctx.crm.ticket_url(ticket_id)
    for text in list(doc.notes):
        note(doc, ctx, text)
    return doc
