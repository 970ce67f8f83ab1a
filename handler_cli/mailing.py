"""E-mails: rendered from Jinja2 templates, sent exactly once, logged on the ticket.

A template is a pair `<name>.txt.j2` (required) and `<name>.html.j2` (optional, autoescaped).
The subject is set inside the text template with `{% set subject = "..." %}` so the wording of
an e-mail lives in one file. The ticket reference is prefixed to every subject so replies can
be matched to their ticket.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handler_cli.document import SentEmail, one_line

if TYPE_CHECKING:
    from jinja2 import Environment

    from handler_cli.context import Context
    from handler_cli.document import Document

PACKAGE_TEMPLATES = Path(__file__).parent / "templates"  # in an installed wheel
SOURCE_TEMPLATES = Path(__file__).parent.parent / "templates"  # in a source checkout


def header_safe(value: str) -> str:
    """One line: every Unicode line break (U+2028, U+0085... not only CR and LF), control and
    invisible format character becomes a space or goes. The payload model already does this
    to the client's one-line fields; this is the last gate before a header, for whatever
    else reaches one (a template's subject, a name read from a reply)."""
    return one_line(value)


def _fr_date(value: datetime) -> str:
    return value.strftime("%d/%m/%Y")


class Lines(str):
    """Text a template may spread over several lines (what the `quoted` filter returns)."""


# Controls and every character str.splitlines() breaks on (tab aside).
_BREAKS_LINE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _stay_on_one_line(value: Any) -> Any:
    """Jinja's `finalize`: every `{{ value }}` of a template prints on one line, so no value
    (a client's name, a file name, an error message) can write a line of its own, such as a
    fake "Statut : validated". Only `| quoted` text spans lines, each one marked "> "."""
    if isinstance(value, str) and not isinstance(value, Lines) and not hasattr(value, "__html__"):
        return _BREAKS_LINE.sub(" ", value)
    return value


def _quoted(value: str) -> Lines:
    """Multi-line client text, each line prefixed "> ": it cannot pass for our own lines."""
    return Lines("\n".join(f"> {line}".rstrip() for line in str(value).splitlines()))


class Renderer:
    """Finds templates in the override folder first, then in the shipped ones."""

    def __init__(self, override: Path | None = None) -> None:
        self.folders = [p for p in (override, PACKAGE_TEMPLATES, SOURCE_TEMPLATES) if p]
        self._env: Environment | None = None

    @property
    def env(self) -> Environment:
        if self._env is None:
            from jinja2 import Environment, FileSystemLoader, StrictUndefined

            self._env = Environment(
                loader=FileSystemLoader([str(p) for p in self.folders if p.is_dir()]),
                autoescape=lambda name: bool(name and name.endswith(".html.j2")),
                undefined=StrictUndefined,
                keep_trailing_newline=True,
                trim_blocks=True,
                lstrip_blocks=True,
                finalize=_stay_on_one_line,
            )
            self._env.filters["date_fr"] = _fr_date
            self._env.filters["quoted"] = _quoted
        return self._env

    def render(self, name: str, values: dict[str, Any]) -> tuple[str, str, str | None]:
        """Return (subject, text, html or None) for template `name`."""
        from jinja2 import TemplateNotFound

        text_template = self.env.get_template(f"{name}.txt.j2")
        module = text_template.make_module(values)
        subject = header_safe(str(getattr(module, "subject", "")))
        text = str(module).strip() + "\n"
        try:
            html: str | None = self.env.get_template(f"{name}.html.j2").render(values)
        except TemplateNotFound:
            html = None
        return subject, text, html


def message_id(doc: Document, kind: str, sender: str) -> str:
    """Deterministic per request and kind: a re-run builds the very same message."""
    return message_id_for(doc.request_id, kind, sender)


def message_id_for(request_id: str, kind: str, sender: str) -> str:
    """`<{request_id}.{kind}@{the sender's domain}>`: what replies cite to find their request."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "handler-cli.local"
    return f"<{request_id}.{kind}@{domain}>"


def build_message(
    ctx: Context, doc: Document, kind: str, template: str, to: str, extra: dict[str, Any] | None = None
) -> tuple[EmailMessage, str]:
    """Render `template` for `doc` into a complete message addressed to `to`."""
    s = ctx.settings
    values = {"doc": doc, "settings": s, "now": ctx.now(), **(extra or {})}
    subject, text, html = ctx.renderer.render(template, values)
    msg = EmailMessage()
    msg["Subject"] = f"{doc.ticket_ref} {subject}"
    msg["From"] = s.mail_from
    msg["To"] = formataddr((header_safe(doc.user_name), to)) if to == doc.user_email else to
    if s.mail_reply_to:
        msg["Reply-To"] = s.mail_reply_to
    msg["Message-ID"] = message_id(doc, kind, s.mail_from)
    msg["Date"] = format_datetime(ctx.now())
    msg["X-Handler-Request-Id"] = doc.request_id
    if doc.ticket_id:
        msg["X-Handler-Ticket-Id"] = doc.ticket_id
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg, text


def send_once(
    ctx: Context, doc: Document, kind: str, template: str, to: str,
    extra: dict[str, Any] | None = None,
) -> SentEmail:
    """Send the e-mail `kind` of this request once, log it on the ticket, note it on the doc.

    The ledger keys the send by Message-ID, so a re-run after a crash or a failed CRM log does
    not send the client a second copy.
    """
    from handler_cli.services import EmailRecord

    if kind in doc.emails:
        return doc.emails[kind]
    msg, text = build_message(ctx, doc, kind, template, to, extra)
    mid = str(msg["Message-ID"])

    def perform() -> str:
        ctx.mailer.send(msg)
        return mid

    ctx.ledger.once(f"email:{mid}", perform)
    sent = SentEmail(
        message_id=mid, to=to, subject=str(msg["Subject"]), template=template, sent_at=ctx.now()
    )
    if doc.ticket_id:
        ticket_id = doc.ticket_id
        record = EmailRecord(
            message_id=mid, direction="OUTGOING", sender=ctx.settings.mail_from, to=to,
            subject=sent.subject, text=text, at=sent.sent_at,
        )
        ctx.ledger.do_once(f"email-log:{mid}", lambda: ctx.crm.log_email(ticket_id, record))
    doc.emails[kind] = sent
    return sent
