"""Replies on the embedded backend: `.eml` files dropped in a folder, and the local CRM's log.

The folder is `<data dir>/replies/`: save a client's e-mail there (any mail client exports
`.eml`) and the next poll reads it, matched to its ticket like an IMAP message. Once acted
on, the file moves to `replies/handled/`. Replies recorded with `handler-cli reply` live in
the local CRM and are read from there.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from handler_cli.config import ConfigError
from handler_cli.replies import (
    Handled,
    Reply,
    TicketIndex,
    own_addresses,
    parse_message,
    reply_from_mail,
)
from handler_cli.replies.hubspot import LocalCRMReplies

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.services import EmailRecord, WaitingTicket

log = logging.getLogger("handler_cli")


def inbox_folder(ctx: Context) -> Path:
    return ctx.settings.data_dir / "replies"


class LocalReplies:
    name = "local"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.folder = inbox_folder(ctx)
        self._files: dict[str, Path] = {}
        # The CRM's log is read only when the CRM is the local one: on HubSpot that is the
        # hubspot source's job, and reading it twice would cost calls for nothing.
        self._crm = None if ctx.settings.hubspot_access_token else LocalCRMReplies(ctx)

    def describe(self) -> str:
        crm = " and replies recorded in the local CRM" if self._crm else ""
        return f".eml files in {self.folder}{crm}"

    def _read_folder(
        self, waiting: Sequence[WaitingTicket], handled: Handled
    ) -> dict[str, list[Reply]]:
        if not self.folder.is_dir():
            return {}
        index = TicketIndex.of(waiting)
        ours = own_addresses(self.ctx)
        replies: dict[str, list[Reply]] = {}
        for path in sorted(self.folder.glob("*.eml")):
            try:
                raw = path.read_bytes()
            except OSError as exc:
                log.warning("replies: cannot read %s: %s", path, exc.strerror)
                continue
            mail = parse_message(raw)
            ticket_id = index.match(mail.in_reply_to, mail.references, mail.subject)
            if ticket_id is None or mail.sender in ours:
                log.debug("replies: %s matches no waiting ticket", path.name)
                continue
            received = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            fallback = "eml" + hashlib.sha256(raw).hexdigest()[:16]
            reply = reply_from_mail(mail, ticket_id, self.name, fallback, received)
            if handled.is_handled(ticket_id, reply):
                continue
            self._files[reply.key] = path
            replies.setdefault(ticket_id, []).append(reply)
        return replies

    def fetch(
        self, waiting: Sequence[WaitingTicket], handled: Handled, since: datetime
    ) -> dict[str, list[Reply]]:
        replies = self._read_folder(waiting, handled)
        if self._crm is not None:
            for ticket_id, found in self._crm.fetch(waiting, handled, since).items():
                replies.setdefault(ticket_id, []).extend(found)
        for found in replies.values():
            found.sort(key=lambda r: r.at)
        return replies

    def probe(self, message_id: str) -> bool:
        """Whether a .eml with this Message-ID was saved in the folder (`doctor --mail-loop`)."""
        from email import policy
        from email.parser import BytesParser

        wanted = message_id.strip().lower()
        parser = BytesParser(policy=policy.default)
        for path in [*self.folder.glob("*.eml"), *(self.folder / "handled").glob("*.eml")]:
            try:
                with path.open("rb") as raw:
                    head = parser.parse(raw, headersonly=True)
            except OSError:
                continue
            if str(head.get("Message-ID", "")).strip().lower() == wanted:
                return True
        return False

    def acknowledge(self, reply: Reply) -> None:
        """File an acted-on `.eml` under `handled/`, so the folder only shows what is new."""
        path = self._files.pop(reply.key, None)
        if path is None or not path.exists():
            return
        target = self.folder / "handled" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.replace(target)
        except OSError as exc:  # the reply is recorded as handled anyway: only tidiness is lost
            log.warning("replies: cannot move %s to %s: %s", path, target.parent, exc.strerror)


def record_reply(ctx: Context, ticket_id: str, text: str, files: Sequence[Path] = (),
                 sender: str | None = None) -> EmailRecord:
    """Log a client's reply on a ticket of the local CRM, as an e-mail answering the latest
    one that asked them something; the next poll reads it like any reply.

    Raises ConfigError when the CRM is not the local one (HubSpot's replies are read from the
    ticket), when the ticket is unknown, a file is missing, or the reply is empty.
    """
    from email.utils import make_msgid

    from handler_cli.services import EmailRecord, ServiceError

    if ctx.crm.name != "local":
        raise ConfigError(f"reply records a reply in the local CRM only; with {ctx.crm.name}, "
                          "the client's e-mails are read from the ticket by `handler-cli poll`")
    try:
        ctx.crm.get_ticket(ticket_id)
    except ServiceError:
        raise ConfigError(f"no ticket {ticket_id} in the local CRM ({ctx.crm.describe()})") from None
    paths = [p.expanduser().resolve() for p in files]
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"--file {path}: no such file")
    if not text.strip() and not paths:
        raise ConfigError("the reply is empty: give its text, or --file")
    doc = ctx.documents.by_ticket(ticket_id)
    awaited = doc.awaited_email() if doc else None
    subject = f"Re: {awaited[1].subject}" if awaited else f"Re: [Ticket #{ticket_id}]"
    s = ctx.settings
    record = EmailRecord(
        message_id=make_msgid(domain="reply.handler-cli.local"), direction="INCOMING",
        sender=sender or (doc.user_email if doc else "client@inconnu.invalid"),
        to=s.mail_reply_to or s.mail_from, subject=subject, text=text, at=ctx.now(),
        in_reply_to=awaited[1].message_id if awaited else None,
        attachments=tuple(str(p) for p in paths),
    )
    ctx.crm.log_email(ticket_id, record)
    return record
