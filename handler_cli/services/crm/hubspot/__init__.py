"""The live CRM: the CRM port on HubSpot's CRM API.

`HubSpotCRM` gives the generic operations of `api.HubSpotAPI` their meaning in this project
(contacts, tickets, notes, the e-mail log, what the poll reads). Its modules:

- `paths`: every path, and the API version (the only file that names one);
- `api`: transport, retries, and the operations all objects share;
- `errors`: HubSpot's refusals read (a refused property named in French, a missing scope);
- `wire`: HubSpot JSON to and from this project's records;
- `setup`: the custom ticket properties (`setup hubspot`);
- `scopes`: the service key and the scope each feature needs;
- `health`: what `doctor --check` proves, one line per fact;
- `memo`: what it keeps in the data dir (the account, e-mails already seen).

Creates are safe to retry: a create whose outcome is unknown (timeout, dropped connection,
5xx) is looked up before it is sent again, and HubSpot's own uniqueness (a contact's e-mail,
the ticket's `handler_request_id`) answers 409 to a duplicate.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from handler_cli.checks import Finding
from handler_cli.services import EmailRecord, ServiceError, TicketDraft, WaitingTicket
from handler_cli.services.crm.hubspot import paths, wire
from handler_cli.services.crm.hubspot.api import (
    SEARCH_INTERVAL_SECONDS,
    SERVICE,
    TIMEOUT_SECONDS,
    HubSpotAPI,
)
from handler_cli.services.crm.hubspot.errors import error_body
from handler_cli.services.crm.hubspot.memo import AccountCache, EmailMemo
from handler_cli.services.crm.hubspot.paths import (
    CONTACTS,
    EMAIL_TO_TICKET,
    EMAILS,
    NOTE_TO_TICKET,
    NOTES,
    TICKET_TO_CONTACT,
    TICKETS,
)
from handler_cli.services.crm.hubspot.setup import (
    CUSTOM_PROPERTY_NAMES,
    PROPERTY_GROUP,
    TICKET_PROPERTIES,
    PropertiesReport,
    PropertySpec,
    ensure_properties,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from handler_cli.config import Settings

DEFAULT_UI_DOMAIN = "app.hubspot.com"

__all__ = [
    "CUSTOM_PROPERTY_NAMES", "EMAIL_TO_TICKET", "NOTE_TO_TICKET", "PROPERTY_GROUP",
    "SEARCH_INTERVAL_SECONDS", "TICKET_PROPERTIES", "TICKET_TO_CONTACT", "HubSpotCRM",
    "PropertiesReport", "PropertySpec", "setup_properties",
]


class HubSpotCRM:
    """The CRM Protocol on HubSpot, with `check()` for `doctor --check` and property setup."""

    name = "hubspot"

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None, *,
                 timeout: float = TIMEOUT_SECONDS) -> None:
        if not settings.hubspot_access_token:
            from handler_cli.config import ConfigError

            raise ConfigError("HUBSPOT_ACCESS_TOKEN is not set")
        self.settings = settings
        self.api = HubSpotAPI(settings.hubspot_base_url, settings.hubspot_access_token,
                              transport=transport, timeout=timeout,
                              retry_base=settings.handler_retry_base_seconds,
                              own_properties=CUSTOM_PROPERTY_NAMES)
        self.base_url = self.api.base_url
        self._account = AccountCache(settings.data_dir, self.base_url,
                                     settings.hubspot_access_token)
        self._emails = EmailMemo(settings.data_dir)

    def describe(self) -> str:
        s = self.settings
        return (f"HubSpot at {self.base_url} (ticket pipeline {s.hubspot_pipeline}, "
                f"stage {s.hubspot_pipeline_stage})")

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> HubSpotCRM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- contacts -------------------------------------------------------------------------

    def _find_contact(self, email: str) -> str | None:
        found = self.api.get(CONTACTS, email, id_property="email", safe="@")
        return None if found is None else str(found["id"])

    def find_or_create_contact(self, email: str, firstname: str, lastname: str) -> str:
        email = email.strip()
        found = self._find_contact(email)
        if found is not None:
            return found
        properties = {"email": email, "firstname": firstname, "lastname": lastname}
        resp = self.api.create(CONTACTS, {k: v for k, v in properties.items() if v}, [],
                               allow=(409,), recover=lambda: self._find_contact(email))
        if isinstance(resp, str):
            return resp
        if resp.status_code == 409:  # created meanwhile by someone else: HubSpot names it
            match = re.search(r"Existing ID:\s*(\d+)", str(error_body(resp).get("message", "")))
            existing = match.group(1) if match else self._find_contact(email)
            if existing is None:
                raise self.api.refused("POST", paths.objects(CONTACTS), resp)
            return existing
        return str(resp.json()["id"])

    def forget_contact(self, email: str) -> bool:
        """HubSpot's GDPR delete of the contact with this address: the contact and what is
        associated with it are erased for good (`POST /crm/objects/2026-09/contacts/
        gdpr-delete`, 2026-09 contacts spec, scope crm.objects.contacts.write).

        The contact is looked up first and deleted by id: asked by e-mail for an address it
        does not know, HubSpot blocklists the address, and the studio could then never
        create that client again should they come back.
        """
        contact_id = self._find_contact(email.strip())
        if contact_id is None:
            return False
        done = self.api.request(
            "POST", paths.gdpr_delete(CONTACTS), body={"objectId": contact_id}, allow=(404,),
            recover=lambda: True if self._find_contact(email.strip()) is None else None)
        return done is True or (isinstance(done, httpx.Response) and done.status_code != 404)

    # -- tickets --------------------------------------------------------------------------

    def find_ticket(self, request_id: str) -> str | None:
        found = self.api.get(TICKETS, request_id, id_property="handler_request_id")
        return None if found is None else str(found["id"])

    def create_ticket(self, draft: TicketDraft) -> str:
        s = self.settings
        properties = {
            "subject": draft.subject, "content": wire.clip(draft.content),
            "hs_pipeline": s.hubspot_pipeline, "hs_pipeline_stage": s.hubspot_pipeline_stage,
            "hs_ticket_priority": draft.priority, **wire.strings(draft.properties),
            "handler_request_id": draft.request_id,
        }
        associations = ([] if not draft.contact_id
                        else [wire.association(draft.contact_id, TICKET_TO_CONTACT)])
        resp = self.api.create(TICKETS, properties, associations, allow=(400, 409),
                               recover=lambda: self.find_ticket(draft.request_id))
        if isinstance(resp, str):
            return resp
        if resp.is_success:
            return str(resp.json()["id"])
        # handler_request_id is unique: a duplicate is refused, and the first one is ours.
        if resp.status_code == 409 or "handler_request_id" in resp.text:
            try:
                existing = self.find_ticket(draft.request_id)
            except ServiceError:
                existing = None
            if existing is not None:
                return existing
        raise self.api.refused("POST", paths.objects(TICKETS), resp)

    def update_ticket(self, ticket_id: str, properties: dict[str, str]) -> None:
        self.api.update(TICKETS, ticket_id, wire.strings(properties))

    def get_ticket(self, ticket_id: str) -> dict[str, str]:
        """The ticket's properties, plus request_id, contact_id and updated_at (as LocalCRM)."""
        data = self.api.get(TICKETS, ticket_id, properties=wire.TICKET_READ_PROPERTIES,
                            associations=(CONTACTS,), missing_ok=False)
        assert data is not None
        return wire.ticket_view(data)

    # -- the ticket's link ----------------------------------------------------------------

    def _fetch_account(self) -> dict[str, Any]:
        details = self.api.account_details()
        if not details.get("portalId"):
            raise ServiceError(SERVICE, "account-info answered without a portalId; "
                               "set HUBSPOT_PORTAL_ID", transient=False)
        return {"portalId": str(details["portalId"]),
                "uiDomain": str(details.get("uiDomain") or DEFAULT_UI_DOMAIN)}

    @property
    def ui_domain(self) -> str:
        """Where ticket links open when HUBSPOT_PORTAL_ID spares the account-info call."""
        return self.settings.hubspot_ui_domain or DEFAULT_UI_DOMAIN

    def account(self) -> dict[str, Any]:
        """portalId and uiDomain (EU portals: app-eu1.hubspot.com): from the settings, the
        cache file, or one account-info call (`GET /account-info/2026-09/details`, whose
        2026-09 spec makes `portalId` and `uiDomain` required fields)."""
        if self.settings.hubspot_portal_id:
            return {"portalId": self.settings.hubspot_portal_id, "uiDomain": self.ui_domain}
        return self._account.get(self._fetch_account)

    def ticket_url(self, ticket_id: str) -> str:
        account = self.account()
        return (f"https://{account['uiDomain']}/contacts/{account['portalId']}"
                f"/record/0-5/{ticket_id}")

    # -- notes and the e-mail log ---------------------------------------------------------

    def _find_note(self, ticket_id: str, body: str, timestamp: str) -> str | None:
        ids = self.api.associated(TICKETS, NOTES, [ticket_id]).get(str(ticket_id), [])
        for note in self.api.batch_read(NOTES, ids, ("hs_note_body", "hs_timestamp")):
            props = note.get("properties") or {}
            if props.get("hs_note_body") == body and (
                    wire.parse_time(props.get("hs_timestamp")) == wire.parse_time(timestamp)):
                return str(note["id"])
        return None

    def add_note(self, ticket_id: str, body: str) -> None:
        body = wire.clip(body)
        timestamp = wire.iso(datetime.now(UTC))
        self.api.create(NOTES, {"hs_note_body": body, "hs_timestamp": timestamp},
                        [wire.association(ticket_id, NOTE_TO_TICKET)],
                        recover=lambda: self._find_note(ticket_id, body, timestamp))

    def _find_email(self, ticket_id: str, message_id: str) -> str | None:
        ids = self.api.associated(TICKETS, EMAILS, [ticket_id]).get(str(ticket_id), [])
        for email in self.api.batch_read(EMAILS, ids, ("hs_email_headers",)):
            if wire.message_id(email) == message_id:
                return str(email["id"])
        return None

    def log_email(self, ticket_id: str, email: EmailRecord) -> None:
        """One e-mail engagement on the ticket; Message-Id kept in hs_email_headers."""
        created = self.api.create(
            EMAILS, wire.email_properties(email),
            [wire.association(ticket_id, EMAIL_TO_TICKET)],
            recover=lambda: self._find_email(ticket_id, email.message_id))
        if email.direction == "OUTGOING":
            email_id = (error_body(created).get("id") if isinstance(created, httpx.Response)
                        else created)
            if email_id:
                self._emails.remember([str(email_id)])

    # -- what the poll reads --------------------------------------------------------------

    def waiting_tickets(self, statuses: tuple[str, ...]) -> list[WaitingTicket]:
        if not statuses:
            return []
        groups = [{"filters": [{"propertyName": "validation_status", "operator": "IN",
                                "values": list(statuses)}]}]
        return [wire.waiting_ticket(hit)
                for hit in self.api.search(TICKETS, groups, wire.TICKET_READ_PROPERTIES)]

    def incoming_emails(self, ticket_ids: list[str],
                        skip: set[str]) -> dict[str, list[EmailRecord]]:
        """The clients' e-mails on each ticket, oldest first, except engagement ids in `skip`.

        Calls grow with pages, not tickets: one associations call per 1,000 tickets, one
        e-mail batch read per 100 e-mails not yet handled. Our own e-mails, once seen, are
        remembered (data dir) and never read again.
        """
        by_ticket = self.api.associated(TICKETS, EMAILS, ticket_ids)
        candidates = {e for ids in by_ticket.values() for e in ids} - set(skip)
        wanted = sorted(candidates - self._emails.among(candidates), key=str)
        records, ours = {}, []
        for email in self.api.batch_read(EMAILS, wanted, wire.EMAIL_READ_PROPERTIES):
            if wire.is_incoming(email):
                records[str(email["id"])] = wire.email_record(email)
            else:
                ours.append(str(email["id"]))
        self._emails.remember(ours)
        result: dict[str, list[EmailRecord]] = {str(t): [] for t in ticket_ids}
        for ticket, ids in by_ticket.items():
            mine = [records[e] for e in dict.fromkeys(ids) if e in records]
            result[ticket] = sorted(mine, key=wire.oldest_first)
        return result

    def contact_emails(self, ticket_ids: list[str], skip: set[str], since: datetime,
                       known: Mapping[str, str] | None = None) -> dict[str, list[EmailRecord]]:
        """The clients' e-mails on each ticket's contact(s) written since `since`, oldest
        first, except engagement ids in `skip`.

        A connected inbox logs a client's reply on the contact, not necessarily on the
        ticket: the reply source matches these to their ticket (In-Reply-To, References,
        `[Ticket #N]`). Calls grow with pages, not tickets: one associations call per 1,000
        tickets and per 1,000 contacts, one e-mail batch read per 100 e-mails never seen. An
        e-mail seen once is remembered (ours; or incoming, with its date), so a contact's
        history is not read again. `known` gives the contact of tickets whose contact the
        caller already has (the poll's watched tickets, from its store): their associations
        are not read, which keeps a quiet poll of 1,000 waiting tickets and the watched ones
        within ten calls.
        """
        known = known or {}
        contacts_of = self.api.associated(TICKETS, CONTACTS,
                                          [t for t in ticket_ids if t not in known])
        contacts_of.update({t: [known[t]] for t in ticket_ids if t in known})
        contacts = sorted({c for ids in contacts_of.values() for c in ids}, key=str)
        emails_of = self.api.associated(CONTACTS, EMAILS, contacts) if contacts else {}
        candidates = {e for ids in emails_of.values() for e in ids} - set(skip)
        candidates -= self._emails.among(candidates) | self._emails.older_than(candidates, since)
        records: dict[str, EmailRecord] = {}
        ours: list[str] = []
        for email in self.api.batch_read(EMAILS, sorted(candidates, key=str),
                                         wire.EMAIL_READ_PROPERTIES):
            if wire.is_incoming(email):
                records[str(email["id"])] = wire.email_record(email)
            else:
                ours.append(str(email["id"]))
        self._emails.remember(ours)
        self._emails.remember_incoming((i, r.at) for i, r in records.items())
        result: dict[str, list[EmailRecord]] = {}
        for ticket in map(str, ticket_ids):
            ids = dict.fromkeys(e for c in contacts_of.get(ticket, []) for e in emails_of.get(c, []))
            result[ticket] = sorted((records[e] for e in ids if e in records
                                     and records[e].at >= since), key=wire.oldest_first)
        return result

    # -- setup and health -----------------------------------------------------------------

    def ensure_properties(self) -> PropertiesReport:
        """Create the property group and the custom ticket properties that are missing."""
        return ensure_properties(self.api)

    def check(self) -> list[Finding]:
        """For `doctor --check`: what a run will do, proved one fact a line (see health)."""
        from handler_cli.services.crm.hubspot.health import check_portal

        return check_portal(self.api, self.settings, self.ui_domain)


def setup_properties(crm: HubSpotCRM) -> list[str]:
    """What `setup hubspot` created (empty on a second run)."""
    return crm.ensure_properties().created
