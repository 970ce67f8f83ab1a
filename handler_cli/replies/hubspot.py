"""Replies the CRM holds: the client's e-mails associated with each waiting ticket.

On HubSpot these are the INCOMING_EMAIL engagements (read in batches by the CRM backend, so
calls grow with pages, not tickets): those on the ticket, and those a connected inbox logged
on the ticket's contact since the quote, matched to the ticket like a mailbox's (In-Reply-To,
References, `[Ticket #N]`). The same class reads the local CRM's log, where `handler-cli
reply` records a reply by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from handler_cli.config import ConfigError
from handler_cli.replies import (
    Handled,
    Reply,
    ReplyFile,
    TicketIndex,
    own_addresses,
    reply_from_record,
)

if TYPE_CHECKING:
    from handler_cli.checks import Finding
    from handler_cli.context import Context
    from handler_cli.services import EmailRecord, WaitingTicket
    from handler_cli.services.crm.hubspot import HubSpotCRM


class CRMReplies:
    """The INCOMING e-mails the CRM associated with the tickets, minus those already handled."""

    name = "crm"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def describe(self) -> str:
        return f"client e-mails logged on the tickets ({self.ctx.crm.describe()})"

    def files(self, record: EmailRecord) -> tuple[ReplyFile, ...]:
        """What the CRM says was attached; subclasses know what its strings mean."""
        return tuple(ReplyFile(name=a, url=a if "://" in a else None) for a in record.attachments)

    def fetch(
        self, waiting: Sequence[WaitingTicket], handled: Handled, since: datetime
    ) -> dict[str, list[Reply]]:
        ids = [t.ticket_id for t in waiting]
        if not ids:
            return {}
        found = self.ctx.crm.incoming_emails(ids, handled.crm_ids(ids))
        return self._replies(found, handled)

    def _replies(self, found: dict[str, list[EmailRecord]],
                 handled: Handled) -> dict[str, list[Reply]]:
        """The records as replies, except ours and those already handled."""
        ours = own_addresses(self.ctx)
        replies: dict[str, list[Reply]] = {}
        for ticket_id, records in found.items():
            for record in records:
                reply = reply_from_record(record, ticket_id, self.name, self.files(record))
                if reply.sender in ours or handled.is_handled(ticket_id, reply):
                    continue
                replies.setdefault(ticket_id, []).append(reply)
        return replies

    def acknowledge(self, reply: Reply) -> None:
        """Nothing to file away: the handled ids are recorded on the ticket by the poll."""


class HubSpotReplies(CRMReplies):
    """HubSpot's INCOMING_EMAIL engagements of each waiting ticket, and of its contact.

    HubSpot logs a reply only when it reaches an inbox connected to HubSpot, and then on the
    sender's contact, not necessarily on the ticket (docs/poll.md, "Where replies come from").
    """

    name = "hubspot"

    def __init__(self, ctx: Context) -> None:
        if not ctx.settings.hubspot_access_token:
            raise ConfigError(
                "HANDLER_REPLY_SOURCES: the hubspot reply source needs HUBSPOT_ACCESS_TOKEN"
            )
        super().__init__(ctx)

    def describe(self) -> str:
        return (f"client e-mails logged on the tickets and their contacts "
                f"({self.ctx.crm.describe()})")

    def fetch(
        self, waiting: Sequence[WaitingTicket], handled: Handled, since: datetime
    ) -> dict[str, list[Reply]]:
        replies = super().fetch(waiting, handled, since)
        ids = [t.ticket_id for t in waiting]
        if not ids:
            return replies
        crm = self._hubspot()
        seen = {r.crm_id for rs in replies.values() for r in rs if r.crm_id}
        # The watched tickets come with their contact (the poll's store): not read again.
        known = {t.ticket_id: t.properties["contact_id"] for t in waiting
                 if t.properties.get("contact_id")}
        on_contacts = crm.contact_emails(ids, handled.crm_ids(ids) | seen, since, known)
        index = TicketIndex.of(waiting)
        mine = {ticket_id: [r for r in records if index.match(
                    r.in_reply_to, r.references, r.subject) == ticket_id]
                for ticket_id, records in on_contacts.items()}
        for ticket_id, extra in self._replies(mine, handled).items():
            keys = {r.key for r in replies.get(ticket_id, [])}
            merged = replies.setdefault(ticket_id, [])
            merged += [r for r in extra if r.key not in keys]
            merged.sort(key=lambda r: r.at)
        return replies

    def _hubspot(self) -> HubSpotCRM:
        from handler_cli.services.crm.hubspot import HubSpotCRM

        crm = self.ctx.crm
        assert isinstance(crm, HubSpotCRM), "the hubspot reply source needs the HubSpot CRM"
        return crm

    def check(self) -> list[Finding]:
        """For `doctor --check`: what clients write comes back, not redacted."""
        from handler_cli.services.crm.hubspot.health import email_content_readable

        return [email_content_readable(self._hubspot().api)]

    def files(self, record: EmailRecord) -> tuple[ReplyFile, ...]:
        # HubSpot gives file ids only (hs_attachment_ids); the file itself stays in HubSpot.
        return tuple(
            ReplyFile(name=f"hubspot-fichier-{a}", url=None) if a.isdigit()
            else ReplyFile(name=a.rsplit("/", 1)[-1], url=a if "://" in a else None)
            for a in record.attachments
        )


class LocalCRMReplies(CRMReplies):
    """The local CRM's INCOMING e-mails; attachments are paths recorded by `handler-cli reply`."""

    name = "local"

    def files(self, record: EmailRecord) -> tuple[ReplyFile, ...]:
        s = self.ctx.settings
        found = []
        cap = s.handler_max_file_bytes
        for item in record.attachments:
            path = Path(item)
            if "://" in item or not s.handler_allow_local_files:
                found.append(ReplyFile(name=path.name, url=item if "://" in item else None))
            elif not path.is_file():
                found.append(ReplyFile(name=path.name, refused="fichier introuvable"))
            elif path.stat().st_size > cap:
                found.append(ReplyFile(name=path.name, refused="fichier trop volumineux "
                                                              f"(plus de {cap // 1_048_576} Mo)"))
            else:
                found.append(ReplyFile(name=path.name, data=path.read_bytes()))
        return tuple(found)
