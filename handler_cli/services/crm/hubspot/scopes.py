"""The HubSpot credential handler-cli needs, and the exact scopes each feature uses.

Since 26 October 2026 a HubSpot account can no longer create legacy private apps; HubSpot's
replacement for a single account is a **service key** (Development → Keys → Service keys,
or Settings → Integrations → Service keys), sent as `Authorization: Bearer` like a private-app
token, with the scopes chosen when it is created. Existing legacy private-app tokens keep
working. Sources: HubSpot developer changelog, "Legacy Private App Creation Being Disabled"
(creation disabled 28 Sept 2026 for new accounts, 26 Oct 2026 for older ones) and "Service
Keys enter public beta"; developers.hubspot.com, "Make API requests using a service key
(BETA)" (read November 2026). E-mail content needs `sales-email-read`: without it HubSpot
redacts the body of EMAIL / INCOMING_EMAIL / FORWARDED_EMAIL engagements (changelog, "New
scope required to get the content of email engagements").
"""

from __future__ import annotations

from dataclasses import dataclass

WHERE = "Development → Keys → Service keys"


@dataclass(frozen=True)
class Scope:
    """One scope the service key needs, and why (what fails without it)."""

    name: str
    used_for: str
    reply_source_only: bool = False


SCOPES: tuple[Scope, ...] = (
    Scope("tickets", "create, read and update tickets; read the ticket pipeline"),
    Scope("crm.objects.contacts.read",
          "find the client's contact; read the notes and e-mails logged on tickets"),
    Scope("crm.objects.contacts.write",
          "create the contact; log notes and e-mails on tickets; GDPR delete (`forget --crm`)"),
    Scope("crm.schemas.tickets.read", "read the ticket properties (`doctor --check`)"),
    Scope("crm.schemas.tickets.write", "create the custom ticket properties (`setup hubspot`)"),
    Scope("sales-email-read",
          "read what the client wrote (HubSpot reply source); without it HubSpot redacts "
          "e-mail bodies", reply_source_only=True),
)


def scope_names(*, reply_source: bool) -> list[str]:
    """The scopes to give the service key, with or without the HubSpot reply source."""
    return [s.name for s in SCOPES if reply_source or not s.reply_source_only]
