"""Tickets without a reply (docs/poll.md "No reply"): one reminder, then the admin told once;
and validated requests whose ClickUp subtask failed earlier, tried again."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from handler_cli.mailing import send_once
from handler_cli.poll.actions import ticket_url
from handler_cli.services import ServiceError

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document
    from handler_cli.poll.journal import HandledIndex
    from handler_cli.poll.report import PollReport
    from handler_cli.services import WaitingTicket

log = logging.getLogger("handler_cli")


def follow_up(ctx: Context, report: PollReport, ticket: WaitingTicket, doc: Document,
              handled: HandledIndex) -> None:
    """A reminder after `HANDLER_REMIND_DAYS` without a reply, the admin told after
    `HANDLER_STALE_DAYS` without activity; each once per awaited e-mail."""
    awaited = doc.awaited_email()
    if awaited is None:
        return
    ref_kind, ref = awaited
    doc.validation_status = ticket.validation_status  # type: ignore[assignment]
    now = ctx.now()
    s = ctx.settings
    last_reply = handled.last_handled.get(ticket.ticket_id)
    replied = last_reply is not None and last_reply >= ref.sent_at
    last_activity = max(ref.sent_at, last_reply) if replied and last_reply else ref.sent_at
    suffix = "" if ref_kind == "client" else f"_{ref_kind}"
    todo: list[tuple[str, str, str, dict[str, Any]]] = []
    if not replied and now - ref.sent_at >= timedelta(days=s.handler_remind_days):
        todo.append(("reminder", f"reminder{suffix}", "client_reminder",
                     {"awaited": ref, "days": (now - ref.sent_at).days}))
    if now - last_activity >= timedelta(days=s.handler_stale_days):
        todo.append(("stale", f"admin_stale{suffix}", "admin_stale",
                     {"awaited": ref, "days": (now - last_activity).days,
                      "replied": replied, "reminder_kind": f"reminder{suffix}",
                      "ticket_url": ticket_url(ctx, doc)}))
    todo = [t for t in todo if t[1] not in doc.emails]
    if not todo:
        return
    outcome = report.outcome(ticket.ticket_id, doc.request_id, ticket.validation_status)
    for action, kind, template, extra in todo:
        to = doc.user_email if action == "reminder" else s.admin_email
        entry: dict[str, Any] = {"action": action, "emails": [kind],
                                 "since": ref.sent_at.isoformat()}
        if not report.dry_run:
            try:
                send_once(ctx, doc, kind, template, to, extra)
            except ServiceError as exc:
                outcome.error = str(exc)
                report.fail(f"ticket {ticket.ticket_id}: {action}: {exc}")
                break
            log.info("%s: ticket %s: %s sent", doc.request_id, ticket.ticket_id, action)
        outcome.actions.append(entry)
    if not report.dry_run:
        ctx.documents.save(doc)


def retry_subtasks(ctx: Context, report: PollReport, done: set[str]) -> None:
    """Validated requests whose subtask failed before (ClickUp down): try once more."""
    from handler_cli.steps import STEPS, apply

    for doc in ctx.documents.validated_without_subtask():
        if not doc.ticket_id or doc.ticket_id in done:
            continue
        outcome = report.outcome(doc.ticket_id, doc.request_id, "validated")
        outcome.actions.append({"action": "subtask_retry"})
        if not report.dry_run:
            ok = apply(STEPS["subtask"], doc, ctx)
            ctx.documents.save(doc)
            outcome.clickup_subtask_id = doc.clickup_subtask_id
            if not ok:
                outcome.error = next((e.error for e in doc.errors if e.step == "subtask"),
                                     "subtask failed")
                report.fail(f"ticket {doc.ticket_id}: subtask still not created "
                            f"({outcome.error})")
