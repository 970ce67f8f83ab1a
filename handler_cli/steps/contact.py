"""Step 3: the client's CRM contact, found by e-mail or created (an upsert, never twice)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document


def split_name(full_name: str) -> tuple[str, str]:
    """"Marie-Claire Dupont Leroy" -> ("Marie-Claire", "Dupont Leroy")."""
    first, _, last = " ".join(full_name.split()).partition(" ")
    return first, last


def run(doc: Document, ctx: Context) -> Document:
    if doc.contact_id:
        return doc
    first, last = split_name(doc.user_name)
    doc.contact_id = ctx.crm.find_or_create_contact(doc.user_email, first, last)
    return doc
