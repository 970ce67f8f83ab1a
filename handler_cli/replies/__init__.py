"""Where the clients' replies come from: one module per source, one small interface.

A source turns whatever it reads (HubSpot e-mail engagements, an IMAP folder, `.eml` files,
the local CRM's log) into `Reply` objects attached to a waiting ticket. Which sources run is
configuration (`HANDLER_REPLY_SOURCES`), never a branch in the poll. Matching an e-mail to
its ticket is shared here: our Message-IDs are `<{request_id}.{kind}@domain>`, so a reply's
`In-Reply-To`/`References` name the request; failing that, the subject's `[Ticket #N]`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from typing import TYPE_CHECKING, Protocol

from handler_cli.config import ConfigError

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.services import EmailRecord, WaitingTicket

KNOWN_SOURCES = ("hubspot", "imap", "local")
_TICKET_REF = re.compile(r"\[Ticket\s*#\s*(\d+)\]", re.IGNORECASE)
_MSG_ID = re.compile(r"<([^<>@\s]+)@([^<>\s]+)>")
_HTML_TAG = re.compile(r"<[^>]+>")
_HTML_BREAK = re.compile(r"<\s*(br|/p|/div|/li|/tr)\b[^>]*>", re.IGNORECASE)


@dataclass(frozen=True)
class ReplyFile:
    """A file the client attached to a reply: its bytes when the source has them, else a link."""

    name: str
    data: bytes | None = None
    url: str | None = None
    content_type: str = "application/octet-stream"
    refused: str | None = None  # why we could not keep it (French, for the client)

    @property
    def received(self) -> bool:
        """We hold it (stored, or its bytes in hand): it counts for the request's files."""
        return self.refused is None and (self.url is not None or self.data is not None)


@dataclass(frozen=True)
class Reply:
    """One e-mail from the client about a waiting ticket, as read (quoted history included)."""

    ticket_id: str
    key: str  # stable across runs and sources: what "handled" remembers
    source: str
    sender: str
    subject: str
    text: str
    at: datetime
    message_id: str | None = None
    crm_id: str | None = None
    files: tuple[ReplyFile, ...] = ()
    automatic: bool = False  # an out-of-office or other auto-reply (RFC 3834 headers)

    @property
    def handled_token(self) -> str:
        """What goes into the ticket's `handler_replies_handled`: the CRM id when there is one
        (the CRM can then skip reading it), else the key."""
        return self.crm_id or self.key

    def to_json(self) -> str:
        """The reply without its file bytes (they are stored before anything else is done)."""
        data = {k: v for k, v in vars(self).items() if k != "files"}
        data["at"] = self.at.isoformat()
        data["files"] = [{"name": f.name, "url": f.url, "refused": f.refused} for f in self.files]
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> Reply:
        data = json.loads(raw)
        data["at"] = datetime.fromisoformat(data["at"])
        data["files"] = tuple(ReplyFile(name=f["name"], url=f["url"], refused=f.get("refused"))
                              for f in data["files"])
        return cls(**data)


def reply_key(message_id: str | None, crm_id: str | None = None) -> str:
    """`m` + a hash of the Message-ID (the same e-mail read by IMAP and HubSpot is one reply),
    else the CRM's id of the e-mail."""
    if message_id and message_id.strip():
        digest = hashlib.sha256(message_id.strip().lower().encode()).hexdigest()[:16]
        return f"m{digest}"
    if crm_id:
        return f"crm{crm_id}"
    raise ValueError("a reply needs a Message-ID or a CRM id")


class Handled(Protocol):
    """What the poll already acted on; sources use it to avoid reading a reply twice."""

    def is_handled(self, ticket_id: str, reply: Reply) -> bool: ...
    def crm_ids(self, ticket_ids: Iterable[str]) -> set[str]: ...


class ReplySource(Protocol):
    name: str

    def describe(self) -> str: ...
    def fetch(
        self, waiting: Sequence[WaitingTicket], handled: Handled, since: datetime
    ) -> dict[str, list[Reply]]:
        """New replies per ticket id (only tickets in `waiting`), oldest first.

        `since` is when the oldest of these tickets first wrote to its client: a mailbox need
        not look further back.
        """
        ...
    def acknowledge(self, reply: Reply) -> None:
        """Called once the reply was acted on (a source may file it away); never in dry-run."""
        ...


# -- parsing and matching e-mails --------------------------------------------------------------


@dataclass(frozen=True)
class ParsedMail:
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    subject: str
    sender: str
    at: datetime | None
    text: str
    files: tuple[ReplyFile, ...] = ()
    automatic: bool = False


def is_automatic(headers: EmailMessage) -> bool:
    """RFC 3834 `Auto-Submitted`, and the older headers vacation responders still send."""
    auto = str(headers.get("Auto-Submitted", "no")).strip().lower()
    precedence = str(headers.get("Precedence", "")).strip().lower()
    return (auto not in ("", "no") or precedence in ("auto_reply", "bulk", "junk")
            or headers.get("X-Autoreply") is not None or headers.get("X-Autorespond") is not None)


def html_to_text(html: str) -> str:
    """Good enough to read a reply's words: breaks become new lines, tags go, entities decode."""
    import html as html_lib

    text = _HTML_BREAK.sub("\n", html)
    text = re.sub(r"<(script|style)\b.*?</\1\s*>", " ", text, flags=re.IGNORECASE | re.DOTALL)
    return html_lib.unescape(_HTML_TAG.sub("", text))


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def parse_message(raw: bytes, *, with_files: bool = True) -> ParsedMail:
    """Read an RFC 5322 message: the headers that match it, its words, its attachments."""
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    text = ""
    body = msg.get_body(preferencelist=("plain", "html"))
    if body is not None:
        try:
            content = body.get_content()
        except (LookupError, ValueError):  # unknown charset, broken encoding
            payload = body.get_payload(decode=True)
            content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
        text = html_to_text(content) if body.get_content_type() == "text/html" else str(content)
    files: list[ReplyFile] = []
    if with_files:
        for part in msg.iter_attachments():
            name = part.get_filename()
            data = part.get_payload(decode=True)
            if name and isinstance(data, bytes):
                files.append(ReplyFile(name=name, data=data, content_type=part.get_content_type()))
    references = tuple(f"<{local}@{domain}>" for local, domain in
                       _MSG_ID.findall(str(msg.get("References", ""))))
    return ParsedMail(
        message_id=(str(msg["Message-ID"]).strip() or None) if msg["Message-ID"] else None,
        in_reply_to=str(msg["In-Reply-To"]).strip() if msg["In-Reply-To"] else None,
        references=references,
        subject=str(msg.get("Subject", "")),
        sender=parseaddr(str(msg.get("From", "")))[1].lower(),
        at=_date(str(msg["Date"]) if msg["Date"] else None),
        text=text,
        files=tuple(files),
        automatic=is_automatic(msg),
    )


def request_id_of(message_id: str) -> str | None:
    """The request id inside one of our Message-IDs, `<{request_id}.{kind}@domain>`."""
    found = _MSG_ID.search(message_id)
    if not found:
        return None
    request_id, dot, kind = found.group(1).rpartition(".")
    return request_id if dot and request_id and kind else None


@dataclass
class TicketIndex:
    """The waiting tickets, findable by ticket id and by request id."""

    tickets: dict[str, WaitingTicket] = field(default_factory=dict)
    by_request: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, waiting: Sequence[WaitingTicket]) -> TicketIndex:
        index = cls()
        for ticket in waiting:
            index.tickets[ticket.ticket_id] = ticket
            if ticket.request_id:
                index.by_request[ticket.request_id] = ticket.ticket_id
        return index

    def match(self, in_reply_to: str | None, references: Sequence[str], subject: str) -> str | None:
        """The waiting ticket an e-mail answers: by the Message-IDs it cites (nearest first),
        else by the `[Ticket #N]` of its subject."""
        cited = [*([in_reply_to] if in_reply_to else []), *reversed(references)]
        for mid in cited:
            request_id = request_id_of(mid)
            if request_id and request_id in self.by_request:
                return self.by_request[request_id]
        for number in _TICKET_REF.findall(subject or ""):
            if number in self.tickets:
                return str(number)
        return None


def reply_from_mail(mail: ParsedMail, ticket_id: str, source: str, fallback_key: str,
                    received: datetime) -> Reply:
    """A parsed e-mail as a Reply; `fallback_key` identifies it when it has no Message-ID."""
    return Reply(
        ticket_id=ticket_id,
        key=reply_key(mail.message_id) if mail.message_id else fallback_key,
        source=source, sender=mail.sender, subject=mail.subject, text=mail.text,
        at=mail.at or received, message_id=mail.message_id, files=mail.files,
        automatic=mail.automatic,
    )


def reply_from_record(record: EmailRecord, ticket_id: str, source: str,
                      files: tuple[ReplyFile, ...] = ()) -> Reply:
    """An e-mail the CRM logged as INCOMING, as a Reply."""
    real_id = record.message_id if _MSG_ID.search(record.message_id or "") else None
    return Reply(
        ticket_id=ticket_id, key=reply_key(real_id, record.crm_id or record.message_id),
        source=source, sender=parseaddr(record.sender)[1].lower() or record.sender,
        subject=record.subject, text=record.text, at=record.at, message_id=real_id,
        crm_id=record.crm_id, files=files,
    )


def own_addresses(ctx: Context) -> set[str]:
    """Our sending and reply addresses: e-mails from them in a mailbox are ours (a copy, the
    team writing from the shared mailbox), not the client's."""
    s = ctx.settings
    return {addr.lower() for _, addr in getaddresses([s.mail_from, s.mail_reply_to or ""])
            if addr}


# -- choosing the sources ----------------------------------------------------------------------


def source_names(ctx: Context) -> list[str]:
    """`HANDLER_REPLY_SOURCES`, else every source that can read replies here.

    IMAP first when `IMAP_HOST` is set: the mailbox the clients reply to is the dependable
    source (HubSpot logs a reply only when it lands in a HubSpot-connected inbox), and it
    brings the attachments themselves. Then HubSpot when live; else the local folder and CRM.
    """
    s = ctx.settings
    raw = s.handler_reply_sources
    if not raw or not raw.strip():
        defaults = ["imap"] if s.imap_host else []
        return [*defaults, "hubspot" if s.hubspot_access_token else "local"]
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in KNOWN_SOURCES]
    if unknown:
        raise ConfigError(
            f"HANDLER_REPLY_SOURCES: unknown source {', '.join(unknown)} "
            f"(expected a comma list of {', '.join(KNOWN_SOURCES)})"
        )
    return list(dict.fromkeys(names))


def build_sources(ctx: Context) -> list[ReplySource]:
    """The configured reply sources, each checked against the settings it needs."""
    sources: list[ReplySource] = []
    for name in source_names(ctx):
        if name == "hubspot":
            from handler_cli.replies.hubspot import HubSpotReplies

            sources.append(HubSpotReplies(ctx))
        elif name == "imap":
            from handler_cli.replies.imap import IMAPReplies

            sources.append(IMAPReplies(ctx))
        else:
            from handler_cli.replies.local import LocalReplies

            sources.append(LocalReplies(ctx))
    return sources


__all__ = [
    "Handled", "ParsedMail", "Reply", "ReplyFile", "ReplySource", "TicketIndex",
    "build_sources", "html_to_text", "own_addresses", "parse_message", "reply_from_mail",
    "reply_from_record", "reply_key", "request_id_of", "source_names",
]
