"""Every HubSpot path the client calls, and the only file that names an API version.

HubSpot versions its API in the path. Stating the version once here (as Stripe states its
`CURRENT` version once) means moving to the next one is a one-line diff, and the tests, which
parse paths into operations, follow without edits.
"""

from __future__ import annotations

from urllib.parse import quote

# HubSpot's date-based API (changelog, September 2026): `/crm/v4` support ends on 30 March
# 2027 and `/crm/v3` in September 2027; `2026-09` also enforces the portal's validation
# rules on writes. Specs: HubSpot/HubSpot-public-api-spec-collection, PublicApiSpecs/*/2026-09.
API_VERSION = "2026-09"

# Object types, as HubSpot names them in paths.
CONTACTS = "contacts"
TICKETS = "tickets"
NOTES = "notes"
EMAILS = "emails"

# Association type ids, HUBSPOT_DEFINED, in the direction of the object being created
# (HubSpot's own SDK constants).
TICKET_TO_CONTACT = 16
EMAIL_TO_TICKET = 224  # ticket -> email is 223; an e-mail created with its ticket is 224
NOTE_TO_TICKET = 228

ACCOUNT_DETAILS = f"/account-info/{API_VERSION}/details"


def _segment(value: object, safe: str = "") -> str:
    """One path segment, escaped: ids and e-mail addresses come from outside."""
    return quote(str(value), safe=safe)


def objects(object_type: str) -> str:
    return f"/crm/objects/{API_VERSION}/{object_type}"


def object_path(object_type: str, object_id: str, *, safe: str = "") -> str:
    """One object by id (or by a unique property's value, with `idProperty`)."""
    return f"{objects(object_type)}/{_segment(object_id, safe)}"


def batch_read(object_type: str) -> str:
    return f"{objects(object_type)}/batch/read"


def search(object_type: str) -> str:
    return f"{objects(object_type)}/search"


def gdpr_delete(object_type: str) -> str:
    return f"{objects(object_type)}/gdpr-delete"


def associations_batch_read(from_type: str, to_type: str) -> str:
    return f"/crm/associations/{API_VERSION}/{from_type}/{to_type}/batch/read"


def properties(object_type: str) -> str:
    return f"/crm/properties/{API_VERSION}/{object_type}"


def property_path(object_type: str, name: str) -> str:
    return f"{properties(object_type)}/{_segment(name)}"


def property_groups(object_type: str) -> str:
    return f"{properties(object_type)}/groups"


def property_group(object_type: str, name: str) -> str:
    return f"{property_groups(object_type)}/{_segment(name)}"


def pipelines(object_type: str) -> str:
    """Every pipeline of an object type, with its stages."""
    return f"/crm/pipelines/{API_VERSION}/{object_type}"
