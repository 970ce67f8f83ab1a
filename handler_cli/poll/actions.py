"""Carrying out a `Plan`: the e-mails, the subtask, the re-analysis, then the CRM update.

Every effect is idempotent on its own (e-mails through `send_once`, the subtask through its
ledger key), and the CRM update that moves the status and records the reply comes last,
then the journal entry is marked done (docs/poll.md "Exactly once").
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from handler_cli.mailing import send_once
from handler_cli.poll.decide import (
    AWAITING_CLIENT,
    change_of_mind,
    complemented,
    question_kind,
    still_refused,
)
from handler_cli.poll.journal import HANDLED_PROPERTY, HandledIndex, parse_tokens

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document
    from handler_cli.poll.decide import Plan
    from handler_cli.poll.journal import PollJournal
    from handler_cli.poll.report import PollReport
    from handler_cli.replies import Reply

log = logging.getLogger("handler_cli")


def act(ctx: Context, journal: PollJournal, report: PollReport, doc: Document, reply: Reply,
        plan: Plan, handled: HandledIndex | None) -> dict[str, Any]:
    """Carry out `plan`; return what was done (a line of the ticket's outcome).

    `handled` is None when resuming an earlier pass's action: the ticket may not be waiting
    any more, so its handled replies are read from the CRM.
    """
    assert doc.ticket_id
    sent_before = set(doc.emails)
    started = ctx.now()
    props: dict[str, str] = {}
    stored, changed = _file_lines(doc, reply)
    if changed:
        props["fichiers_urls"] = "\n".join(doc.fichiers_urls or [])
    if plan.action == "validated":
        props.update(_validate(ctx, report, doc, reply, plan, stored))
    elif plan.action == "rejected":
        doc.validation_status = "rejected"
        props["validation_status"] = "rejected"
        send_once(ctx, doc, "admin_refused", "admin_refused", ctx.settings.admin_email,
                  {"reply_text": plan.text, "reply": reply, "files": stored,
                   "ticket_url": ticket_url(ctx, doc)})
    elif plan.action == "info" and plan.assessment is not None:
        props.update(_complete(ctx, doc, reply, plan))
    if plan.forward and (plan.text or reply.files):
        status = plan.status
        not_asked = plan.action == "forwarded" and status not in AWAITING_CLIENT
        support = not_asked and doc.type_final == "SUPPORT"
        send_once(ctx, doc, question_kind(plan.text or reply.key), "admin_question",
                  ctx.settings.admin_email,
                  {"question": plan.text, "reply": reply, "files": stored,
                   "ticket_url": ticket_url(ctx, doc), "intent": plan.reading.intent,
                   "ticket_status": status, "support": support,
                   "after_decision": not_asked and not support,
                   "change_of_mind": change_of_mind(status, plan.reading)
                   if plan.action == "forwarded" else None})
    now = ctx.now()
    if handled is None:
        handled = HandledIndex(journal, [])
    if doc.ticket_id not in handled.tokens:  # resumed: the ticket may not be waiting any more
        current = ctx.crm.get_ticket(doc.ticket_id).get(HANDLED_PROPERTY, "")
        handled.tokens[doc.ticket_id] = parse_tokens(current)
    props[HANDLED_PROPERTY] = handled.add(reply, now)
    ctx.crm.update_ticket(doc.ticket_id, props)
    ctx.documents.save(doc)
    journal.finish(reply, now)
    result = plan.describe(reply)
    # Where the ticket stands now: moved by this action, else where it was decided on.
    moved = plan.action in ("validated", "rejected", "info")
    result["status"] = doc.validation_status if moved else plan.status
    new = [k for k in doc.emails if k not in sent_before]
    # What this pass sent, apart from what a pass that died half-way had sent already.
    result["emails"] = [k for k in new if doc.emails[k].sent_at >= started]
    if already := [k for k in new if doc.emails[k].sent_at < started]:
        result["emails_already_sent"] = already
    log.info("%s: ticket %s: reply %s (%s, %s) → %s", doc.request_id, doc.ticket_id,
             reply.key, plan.reading.intent, plan.reading.method, plan.action)
    return result


def _validate(ctx: Context, report: PollReport, doc: Document, reply: Reply, plan: Plan,
              stored: list[str]) -> dict[str, str]:
    """Step 6 (a ClickUp failure is recorded and retried later), then the two e-mails."""
    from handler_cli.steps import STEPS, apply

    doc.validation_status = "validated"
    ok = apply(STEPS["subtask"], doc, ctx)
    error = None if ok else next(
        (e.error for e in doc.errors if e.step == "subtask"), "unknown error")
    if error:
        report.fail(f"ticket {doc.ticket_id}: subtask not created yet ({error}); "
                    "the next poll tries again")
    extra = {"reply_text": plan.text, "reply": reply, "files": stored, "subtask_ok": ok,
             "subtask_error": error, "ticket_url": ticket_url(ctx, doc)}
    send_once(ctx, doc, "admin_validated", "admin_validated", ctx.settings.admin_email, extra)
    send_once(ctx, doc, "client_validated", "client_validated", doc.user_email, extra)
    return {"validation_status": "validated"}


def _complete(ctx: Context, doc: Document, reply: Reply, plan: Plan) -> dict[str, str]:
    """The missing information arrived: record it, and send a quote or what still lacks."""
    from handler_cli.document import Analysis
    from handler_cli.steps.notify_client import client_template

    assessment = plan.assessment
    assert assessment is not None
    doc.description = complemented(doc.description, plan.text, reply.at)
    doc.fichiers_refuses = still_refused(doc, reply)
    doc.credits_estimes = assessment.credits
    doc.completeness = assessment.completeness
    doc.missing_info = list(assessment.missing_info)
    doc.validation_status = assessment.validation_status
    doc.analysis = Analysis(rule=assessment.rule, reasons=list(assessment.reasons))
    if assessment.validation_status == "pending_admin":
        send_once(ctx, doc, f"admin_complex_after_{reply.key}", "admin_complex",
                  ctx.settings.admin_email)
    send_once(ctx, doc, f"client_after_{reply.key}", client_template(doc), doc.user_email)
    return {"validation_status": assessment.validation_status,
            "credits_estimes": str(assessment.credits) if assessment.credits else ""}


def keep_files(ctx: Context, doc: Document, reply: Reply) -> Reply:
    """Store the reply's attachments before anything else; the reply then carries links.

    A file store that fails here raises before the action begins, so the reply is read
    again (with its bytes) by the next poll; once begun, the journal keeps the links.
    """
    from handler_cli.attachments import (
        ALLOWED_EXTENSIONS,
        EXTRA_TYPES,
        FileRejected,
        extension,
        safe_name,
    )
    from handler_cli.replies import ReplyFile
    from handler_cli.steps import note
    from handler_cli.steps.upload import storage_key

    if all(item.data is None for item in reply.files):
        return reply
    kept: list[ReplyFile] = []
    cap = ctx.settings.handler_max_file_bytes
    for item in reply.files:
        if item.data is None:
            kept.append(item)
            continue
        try:
            name = safe_name(item.name)
            if extension(name) not in ALLOWED_EXTENSIONS:
                raise FileRejected(f"type de fichier non accepté (.{extension(name) or '?'})")
            if len(item.data) > cap:
                raise FileRejected(f"fichier trop volumineux (plus de {cap // 1_048_576} Mo)")
        except FileRejected as exc:
            note(doc, ctx, f"Pièce jointe « {item.name} » de la réponse du client "
                           f"écartée : {exc}.")
            kept.append(ReplyFile(name=item.name, refused=str(exc)))
            continue
        content_type = EXTRA_TYPES.get(extension(name)) or item.content_type
        key = storage_key(ctx, doc, f"reponse-{reply.key}-{name}")  # unguessable, as uploads
        link = ctx.files.put(key, item.data, content_type)
        kept.append(ReplyFile(name=name, url=link, content_type=content_type))
    return dataclasses.replace(reply, files=tuple(kept))


def _file_lines(doc: Document, reply: Reply) -> tuple[list[str], bool]:
    """Add the reply's links to the request's files; return what the admin reads about
    them, and whether the request's files changed."""
    lines: list[str] = []
    new: list[str] = []
    for item in reply.files:
        if item.refused:
            lines.append(f"{item.name} (non reçu : {item.refused})")
        elif item.url:
            lines.append(item.url)
            if item.url not in (doc.fichiers_urls or []) and item.url not in new:
                new.append(item.url)
        else:
            lines.append(f"{item.name} (pièce jointe restée dans le CRM)")
    if new:
        doc.fichiers_urls = [*(doc.fichiers_urls or []), *new]
    return lines, bool(new)


def ticket_url(ctx: Context, doc: Document) -> str:
    if doc.ticket_url:
        return doc.ticket_url
    return ctx.crm.ticket_url(doc.ticket_id) if doc.ticket_id else ""


def alert_admin(ctx: Context, ticket_id: str, request_id: str, reply: Reply | None,
                error: str) -> None:
    """Tell the admin, once per reply and error, that the poll could not handle a ticket.

    The e-mail says what failed and what to do and carries the client's message (so it is in
    front of a person); the technical error is kept on the document (`errors`, step `poll`).
    It is rendered from the stored document, not the one the failed action was changing.
    """
    import hashlib

    from handler_cli.intent import strip_quoted

    digest = hashlib.sha256(f"{reply.key if reply else ''}\n{error}".encode()).hexdigest()[:12]
    kind = f"admin_poll_failed_{digest}"
    extra = {"reply": reply, "reply_text": strip_quoted(reply.text).strip() if reply else "",
             "files": [f.url or f.name for f in reply.files] if reply else [],
             "ticket_id": ticket_id, "request_id": request_id}
    try:
        doc = ctx.documents.by_ticket(ticket_id)
    except Exception:  # noqa: BLE001 - an unreadable document is the very failure to report
        doc = None
    if doc is None:
        _alert_without_document(ctx, kind, request_id, extra)
        return
    doc.record_error("poll", error, ctx.now())
    send_once(ctx, doc, kind, "admin_poll_failed", ctx.settings.admin_email,
              {**extra, "ticket_url": ticket_url(ctx, doc)})
    ctx.documents.save(doc)


def _alert_without_document(ctx: Context, kind: str, request_id: str,
                            extra: dict[str, Any]) -> None:
    """The same alert when the request document itself cannot be read."""
    from email.message import EmailMessage
    from email.utils import format_datetime

    from handler_cli.mailing import header_safe, message_id_for

    s = ctx.settings
    subject, text, _ = ctx.renderer.render(
        "admin_poll_failed", {"doc": None, "settings": s, "now": ctx.now(), "ticket_url": "",
                              **extra})
    msg = EmailMessage()
    msg["Subject"] = header_safe(f"[Ticket #{extra['ticket_id']}] {subject}")
    msg["From"] = s.mail_from
    msg["To"] = s.admin_email
    mid = message_id_for(request_id or f"ticket-{extra['ticket_id']}", kind, s.mail_from)
    msg["Message-ID"] = mid
    msg["Date"] = format_datetime(ctx.now())
    msg.set_content(text)

    def perform() -> str:
        ctx.mailer.send(msg)
        return mid

    ctx.ledger.once(f"email:{mid}", perform)
