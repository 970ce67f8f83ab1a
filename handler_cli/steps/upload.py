"""Step 2: store a modelling request's attachments (R2, or the local folder).

A file the client got wrong (bad type, too big, too slow, unreachable, an address we refuse)
becomes a note and the others go on; all the files of one request share one download budget
(time and bytes). When the store itself fails, the step records the failure and leaves
`fichiers_urls` unset, so the ticket is created without the files (with a note saying why)
and a later run uploads them and adds them to the ticket.

Keys are `requests/<request id>/<token>/<name>`. Request ids are not secret (the same
payload always gets the same one), and with a public bucket a key is a link: the token, 128
bits derived from an installation secret, is what nobody can guess. Derived rather than
random, so that a re-run, a retry or a run resumed after a crash (even from the original
payload, which carries no token) stores each file under the very same key: nothing doubled.
No date in the key, for the same reason (a retry after midnight would be another key).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from handler_cli.document import RefusedFile
from handler_cli.services import ServiceError
from handler_cli.steps import MissingInput, note

if TYPE_CHECKING:
    from handler_cli.config import Settings
    from handler_cli.context import Context
    from handler_cli.document import Document

log = logging.getLogger("handler_cli")

SECRET_FILE = "file-key.secret"


@cache
def _secret_in(data_dir: Path) -> bytes:
    """The installation's secret, generated on first use (0600; two processes starting
    together agree on one: storage.generated_secret)."""
    from handler_cli.storage import generated_secret

    return generated_secret(data_dir / SECRET_FILE)


def file_token(settings: Settings, request_id: str) -> str:
    """128 bits nobody can guess without the installation secret, the same for every run
    of one request (HMAC-SHA256 of its id)."""
    secret = (settings.handler_file_key_secret.encode() if settings.handler_file_key_secret
              else _secret_in(settings.data_dir))
    mac = hmac.new(secret, f"handler-cli file key:{request_id}".encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


def storage_key(ctx: Context, doc: Document, name: str) -> str:
    """Where a file of this request is stored; `name` is already a safe base name."""
    return f"requests/{doc.request_id}/{file_token(ctx.settings, doc.request_id)}/{name}"


def _labels(names: list[str]) -> list[str]:
    """How notes name each file: as the client did, with its rank when that is ambiguous."""
    return [f"{name} (n°{position + 1})" if not name or names.count(name) > 1 else name
            for position, name in enumerate(names)]


def run(doc: Document, ctx: Context) -> Document:
    from handler_cli.attachments import Budget, FileRejected, fetch, file_name, unique_names
    from handler_cli.netguard import NetGuard

    if doc.type_final is None:
        raise MissingInput("type_final", "classify")
    if doc.type_final != "MODELISATION" or not doc.fichiers or doc.fichiers_urls is not None:
        return doc
    urls: list[str] = []
    failed: list[str] = []
    labels = _labels(doc.file_names())
    names: list[str | None] = []
    refused: list[RefusedFile] = []  # the client is asked for these again (no quote without)
    for position, item in enumerate(doc.fichiers):
        try:
            names.append(file_name(item))
        except FileRejected as exc:
            names.append(None)
            note(doc, ctx, f"Fichier « {labels[position]} » écarté : {exc}.")
            refused.append(RefusedFile(name=labels[position], reason=str(exc)))
    # Distinct names decided before any download, by position: stable across runs.
    distinct = iter(unique_names([n for n in names if n is not None]))
    stored_as = [None if n is None else next(distinct) for n in names]
    budget = Budget.for_request(ctx.settings)
    guard = NetGuard.from_settings(ctx.settings)
    for position, item in enumerate(doc.fichiers):
        name = stored_as[position]
        if name is None:
            continue
        label = labels[position]
        try:
            attachment = fetch(item, ctx.settings, budget, guard, name=name)
        except FileRejected as exc:
            note(doc, ctx, f"Fichier « {label} » écarté : {exc}.")
            refused.append(RefusedFile(name=label, reason=str(exc)))
            continue
        try:
            urls.append(ctx.files.put(
                storage_key(ctx, doc, attachment.name), attachment.data, attachment.content_type
            ))
        except ServiceError as exc:
            failed.append(label)
            note(doc, ctx, f"Fichier « {label} » non stocké ({exc}) ; le ticket est créé sans "
                           "ce fichier, un nouvel essai l'ajoutera.")
    doc.fichiers_refuses = refused
    if failed:
        raise ServiceError(ctx.files.name, f"{len(failed)} file(s) not stored: {', '.join(failed)}")
    if doc.ticket_id:
        ctx.crm.update_ticket(doc.ticket_id, {"fichiers_urls": "\n".join(urls)})
    doc.fichiers_urls = urls
    return doc
