"""Step 2: store a modelling request's attachments (R2, or the local folder).

A file the client got wrong (bad type, too big, unreachable) becomes a note and the others go
on. When the store itself fails, the step records the failure and leaves `fichiers_urls`
unset, so the ticket is created without the files (with a note saying why) and a later run
uploads them and adds them to the ticket.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from handler_cli.services import ServiceError
from handler_cli.steps import MissingInput, note

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document

log = logging.getLogger("handler_cli")


def storage_key(doc: Document, ctx: Context, name: str) -> str:
    return f"requests/{ctx.now():%Y-%m-%d}/{doc.request_id}/{name}"


def run(doc: Document, ctx: Context) -> Document:
    from handler_cli.attachments import FileRejected, fetch

    if doc.type_final is None:
        raise MissingInput("type_final", "classify")
    if doc.type_final != "MODELISATION" or not doc.fichiers or doc.fichiers_urls is not None:
        return doc
    urls: list[str] = []
    failed: list[str] = []
    names = doc.file_names()
    for position, item in enumerate(doc.fichiers):
        label = names[position] or f"fichier n°{position + 1}"
        try:
            attachment = fetch(item, ctx.settings)
        except FileRejected as exc:
            note(doc, ctx, f"Fichier « {label} » écarté : {exc}.")
            continue
        try:
            urls.append(ctx.files.put(
                storage_key(doc, ctx, attachment.name), attachment.data, attachment.content_type
            ))
        except ServiceError as exc:
            failed.append(label)
            note(doc, ctx, f"Fichier « {label} » non stocké ({exc}) ; le ticket est créé sans "
                           "ce fichier, un nouvel essai l'ajoutera.")
    if failed:
        raise ServiceError(ctx.files.name, f"{len(failed)} file(s) not stored: {', '.join(failed)}")
    if doc.ticket_id:
        ctx.crm.update_ticket(doc.ticket_id, {"fichiers_urls": "\n".join(urls)})
    doc.fichiers_urls = urls
    return doc
