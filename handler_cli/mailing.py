"""E-mails: rendered from Jinja2 templates, sent exactly once, logged on the ticket.

A template is a pair `<name>.txt.j2` (required) and `<name>.html.j2` (optional, autoescaped).
The subject is set inside the text template with `{% set subject = "..." %}` so the wording of
an e-mail lives in one file. The ticket reference is prefixed to every subject so replies can
be matched to their ticket.
"""

from __future__ import annotations

import json
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
NBSP, NNBSP = "\u00a0", "\u202f"  # no-break space; narrow no-break space (espace fine)


def header_safe(value: str) -> str:
    """One line: every Unicode line break (U+2028, U+0085... not only CR and LF), control and
    invisible format character becomes a space or goes. The payload model already does this
    to the client's one-line fields; this is the last gate before a header, for whatever
    else reaches one (a template's subject, a name read from a reply). French typography's
    no-break spaces (U+00A0, U+202F) are kept: they are spaces, not line breaks."""
    return NNBSP.join(NBSP.join(one_line(piece) for piece in part.split(NBSP))
                      for part in value.split(NNBSP))


def _fr_date(value: datetime) -> str:
    return value.strftime("%d/%m/%Y")


_BEFORE_COLON = re.compile(r"[ \u00a0\u202f]+:")
_BEFORE_HIGH = re.compile(r"[ \u00a0\u202f]+([;!?])")


def french_typography(value: str) -> str:
    """French spacing for text we generate (notes, missing information): U+00A0 before ":",
    U+202F before ";", "!", "?" and inside « » (the Imprimerie nationale's rules). The
    templates are written with these characters; the client's own words are never touched."""
    text = _BEFORE_COLON.sub(NBSP + ":", str(value))
    text = _BEFORE_HIGH.sub(NNBSP + r"\1", text)
    return re.sub(r"«[ \u00a0]*", "«" + NNBSP, re.sub(r"[ \u00a0]*»", NNBSP + "»", text))


_CIVILITY = frozenset({"m", "mr", "mme", "mlle", "monsieur", "madame", "mademoiselle", "dr",
                       "docteur", "me", "maître", "pr", "professeur"})
_COMPANY = frozenset({"sarl", "sas", "sasu", "sa", "eurl", "sci", "snc", "société", "societe",
                      "entreprise", "ets", "établissements", "etablissements", "atelier",
                      "studio", "agence", "cabinet", "groupe", "association", "the", "le", "la",
                      "les", "l"})


def greeting_name(doc: Document) -> str:
    """Who "Bonjour …," greets: the first name when the client gave one (a `prenom` or
    `first_name` field, else the first word of a "Prénom Nom" name, as the CRM contact splits
    it), else the name as written ("M. Dupont", a company, a single word)."""
    extra = doc.model_extra or {}
    for key in ("prenom", "first_name", "firstname"):
        given = extra.get(key)
        if isinstance(given, str) and one_line(given).strip():
            return one_line(given).strip()[:60]
    words = doc.user_name.split()
    first = words[0] if words else ""
    plain = first.rstrip(".").replace("-", "").replace("'", "").replace("\u2019", "")
    if (len(words) >= 2 and plain.isalpha() and first[:1].isupper()
            and first.rstrip(".").lower() not in _CIVILITY | _COMPANY):
        return first
    return doc.user_name


def _rule_label(rule_id: str) -> str:
    """The credit grid's own words for one of its rules (the admin reads this, not the id)."""
    from handler_cli.steps.analyze import load_grid

    grid = load_grid()
    if rule_id == grid.completeness.rule:
        return "demande incomplète, en attente d'informations"
    for rule in grid.rules:
        if rule.id == rule_id:
            return rule.label
    return rule_id


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
            self._env.filters["typo"] = french_typography
            self._env.globals["rule_label"] = _rule_label
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


MAX_REFERENCES = 20  # the first message and the latest ones: enough for every mail client


def thread_headers(doc: Document, to: str, extra: dict[str, Any] | None = None
                   ) -> tuple[str | None, list[str]]:
    """`In-Reply-To` and `References` of the next e-mail to `to` about this request: one
    conversation per request and per reader (the client's, the admin's), as RFC 5322 §3.6.4
    asks. The previous e-mail sent to the same address is the parent; when we answer a
    client's reply that has a Message-ID, that reply is (it answered our previous one)."""
    earlier = sorted((e for e in doc.emails.values() if e.to == to), key=lambda e: e.sent_at)
    chain = [e.message_id for e in earlier]
    reply = (extra or {}).get("reply")
    answered = getattr(reply, "message_id", None) if to == doc.user_email else None
    if answered and answered not in chain:
        chain.append(answered)
    if not chain:
        return None, []
    if len(chain) > MAX_REFERENCES:
        chain = [chain[0], *chain[-(MAX_REFERENCES - 1):]]
    return chain[-1], chain


def build_message(
    ctx: Context, doc: Document, kind: str, template: str, to: str, extra: dict[str, Any] | None = None
) -> tuple[EmailMessage, str]:
    """Render `template` for `doc` into a complete message addressed to `to`."""
    s = ctx.settings
    values = {"doc": doc, "settings": s, "now": ctx.now(), "prenom": greeting_name(doc),
              **(extra or {})}
    subject, text, html = ctx.renderer.render(template, values)
    msg = EmailMessage()
    msg["Subject"] = f"{doc.ticket_ref} {subject}"
    msg["From"] = s.mail_from
    msg["To"] = formataddr((header_safe(doc.user_name), to)) if to == doc.user_email else to
    if s.mail_reply_to:
        msg["Reply-To"] = s.mail_reply_to
    msg["Message-ID"] = message_id(doc, kind, s.mail_from)
    in_reply_to, references = thread_headers(doc, to, extra)
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = " ".join(references)
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
        return json.dumps({"message_id": mid, "sent_at": ctx.now().isoformat()})

    done = ctx.ledger.once(f"email:{mid}", perform)
    # A re-run that finds the e-mail sent keeps the first send's time: nothing looks sent now.
    sent = SentEmail(
        message_id=mid, to=to, subject=str(msg["Subject"]), template=template,
        sent_at=first_sent_at(done) or ctx.now(),
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


def first_sent_at(ledger_result: str) -> datetime | None:
    """When the ledger says the e-mail was sent (None for a record older than this field)."""
    if not ledger_result.startswith("{"):
        return None
    try:
        return datetime.fromisoformat(json.loads(ledger_result)["sent_at"])
    except (ValueError, KeyError, TypeError):
        return None
