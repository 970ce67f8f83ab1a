"""HubSpot's JSON and this project's records, both ways: tickets, e-mail engagements, times.

HubSpot gives every property value as a string (or null), timestamps as ISO 8601 or epoch
milliseconds, and an e-mail's headers as a JSON string in `hs_email_headers`. The functions
here are the one place that knows those shapes.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from email.utils import formataddr, getaddresses, parseaddr
from typing import Any

from handler_cli.services import EmailRecord, WaitingTicket
from handler_cli.services.crm.hubspot.setup import CUSTOM_PROPERTY_NAMES

TEXT_LIMIT = 65_536  # characters in a HubSpot string property

TICKET_READ_PROPERTIES = (
    "subject", "content", "hs_ticket_priority", "hs_pipeline", "hs_pipeline_stage",
    "hs_lastmodifieddate", "createdate", *CUSTOM_PROPERTY_NAMES,
)
EMAIL_READ_PROPERTIES = (
    "hs_timestamp", "hs_email_direction", "hs_email_subject", "hs_email_text", "hs_email_html",
    "hs_email_headers", "hs_email_from_email", "hs_email_to_email", "hs_attachment_ids",
)
INCOMING = "INCOMING_EMAIL"

_HTML_TAG = re.compile(r"<[^>]+>")
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")


def parse_time(value: object) -> datetime:
    """HubSpot gives timestamps as ISO 8601 or as epoch milliseconds."""
    text = str(value or "").strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.fromtimestamp(0, tz=UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def iso(at: datetime) -> str:
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def strings(properties: dict[str, Any]) -> dict[str, str]:
    """HubSpot property values are strings; nulls (no value) are dropped."""
    return {k: str(v) for k, v in properties.items() if v is not None}


def association(to_id: str, type_id: int) -> dict[str, Any]:
    """One HUBSPOT_DEFINED association of an object being created."""
    return {"to": {"id": str(to_id)}, "types": [{"associationCategory": "HUBSPOT_DEFINED",
                                                 "associationTypeId": type_id}]}


# -- tickets -------------------------------------------------------------------------------


def waiting_ticket(hit: dict[str, Any]) -> WaitingTicket:
    """A ticket search hit as the poll sees it."""
    props = strings(hit.get("properties") or {})
    return WaitingTicket(
        ticket_id=str(hit["id"]), request_id=props.get("handler_request_id", ""),
        validation_status=props.get("validation_status", ""), properties=props,
        updated_at=parse_time(hit.get("updatedAt") or props.get("hs_lastmodifieddate")),
    )


def ticket_view(data: dict[str, Any]) -> dict[str, str]:
    """A read ticket as LocalCRM gives it: properties, request_id, contact_id, updated_at."""
    props = strings(data.get("properties") or {})
    contacts = ((data.get("associations") or {}).get("contacts") or {}).get("results") or []
    return {**props, "request_id": props.get("handler_request_id", ""),
            "contact_id": str(contacts[0]["id"]) if contacts else "",
            "updated_at": str(data.get("updatedAt") or props.get("hs_lastmodifieddate", ""))}


# -- e-mail engagements ----------------------------------------------------------------------


def _header(headers: dict[str, Any], *names: str) -> str | None:
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in names:
        value = lowered.get(name.lower())
        if value:
            return str(value)
    return None


def _address(value: Any) -> str:
    """The address out of a headers entry: {"email": ...}, a list of them, or a string."""
    if isinstance(value, list):
        return ", ".join(a for a in (_address(v) for v in value) if a)
    if isinstance(value, dict):
        return str(value.get("email") or "")
    return str(value or "")


def _party(raw: str) -> dict[str, str]:
    """`Name <a@b>` -> HubSpot's header entry {"email", "firstName", "lastName"}."""
    name, email = parseaddr(raw)
    party = {"email": email or raw}
    if name:
        first, _, last = name.partition(" ")
        party.update(firstName=first, lastName=last)
    return party


def email_headers(email: dict[str, Any]) -> dict[str, Any]:
    raw = (email.get("properties") or {}).get("hs_email_headers") or "{}"
    try:
        headers = json.loads(raw)
    except ValueError:
        return {}
    return headers if isinstance(headers, dict) else {}


def message_id(email: dict[str, Any]) -> str:
    """The e-mail's Message-Id header, else one made from HubSpot's id."""
    found = _header(email_headers(email), "Message-Id", "messageId", "message-id")
    return found or f"hubspot-{email['id']}"


def is_incoming(email: dict[str, Any]) -> bool:
    return (email.get("properties") or {}).get("hs_email_direction") == INCOMING


def email_record(email: dict[str, Any]) -> EmailRecord:
    """An e-mail engagement as the CRM port's EmailRecord."""
    props = email.get("properties") or {}
    headers = email_headers(email)
    text = props.get("hs_email_text") or ""
    if not text and props.get("hs_email_html"):
        text = _HTML_TAG.sub(" ", str(props["hs_email_html"]))
    attachments = tuple(a for a in str(props.get("hs_attachment_ids") or "").split(";") if a)
    return EmailRecord(
        message_id=message_id(email),
        direction="INCOMING" if props.get("hs_email_direction") == INCOMING else "OUTGOING",
        sender=str(props.get("hs_email_from_email") or _address(headers.get("from"))),
        to=str(props.get("hs_email_to_email") or _address(headers.get("to"))),
        subject=str(props.get("hs_email_subject") or ""), text=str(text),
        at=parse_time(props.get("hs_timestamp") or email.get("createdAt")),
        in_reply_to=_header(headers, "In-Reply-To", "inReplyTo"),
        attachments=attachments, crm_id=str(email["id"]),
        references=_references(headers),
    )


def _references(headers: dict[str, Any]) -> tuple[str, ...]:
    """The Message-IDs of the References header (a string, or a list of them)."""
    raw = next((v for k, v in headers.items() if k.lower() == "references"), None)
    text = " ".join(map(str, raw)) if isinstance(raw, list) else str(raw or "")
    return tuple(_MESSAGE_ID.findall(text))


def email_properties(email: EmailRecord) -> dict[str, str]:
    """The engagement properties that log an e-mail; its Message-Id kept in the headers."""
    headers: dict[str, Any] = {
        "from": _party(email.sender),
        "to": [_party(formataddr(pair)) for pair in getaddresses([email.to]) if pair[1]],
        "cc": [], "bcc": [], "Message-Id": email.message_id,
    }
    if email.in_reply_to:
        headers["In-Reply-To"] = email.in_reply_to
    return {
        "hs_timestamp": iso(email.at),
        "hs_email_direction": "EMAIL" if email.direction == "OUTGOING" else INCOMING,
        "hs_email_status": "SENT",
        "hs_email_subject": clip(email.subject, 1000),
        "hs_email_text": clip(email.text),
        "hs_email_headers": json.dumps(headers, ensure_ascii=False),
    }


def oldest_first(record: EmailRecord) -> tuple[datetime, int]:
    crm_id = record.crm_id or ""
    return record.at, int(crm_id) if crm_id.isdigit() else 0
