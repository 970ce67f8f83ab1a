"""Every HubSpot path the client calls, and the only file that names an API version.

HubSpot versions its API in the path. Stating the version once here (as Stripe states its
`CURRENT` version once) means moving to the next one is a one-line diff, and the tests, which
parse paths into operations, follow without edits.
"""

from __future__ import annotations

from urllib.parse import quote

OBJECTS_VERSION = "v3"  # objects, properties, account-info
ASSOCIATIONS_VERSION = "v4"

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

ACCOUNT_DETAILS = f"/account-info/{OBJECTS_VERSION}/details"


def _segment(value: object, safe: str = "") -> str:
    """One path segment, escaped: ids and e-mail addresses come from outside."""
    return quote(str(value), safe=safe)


def objects(object_type: str) -> str:
    return f"/crm/{OBJECTS_VERSION}/objects/{object_type}"


def object_path(object_type: str, object_id: str, *, safe: str = "") -> str:
    """One object by id (or by a unique property's value, with `idProperty`)."""
    return f"{objects(object_type)}/{_segment(object_id, safe)}"


def batch_read(object_type: str) -> str:
    return f"{objects(object_type)}/batch/read"


def search(object_type: str) -> str:
    return f"{objects(object_type)}/search"


def associations_batch_read(from_type: str, to_type: str) -> str:
    return f"/crm/{ASSOCIATIONS_VERSION}/associations/{from_type}/{to_type}/batch/read"


def object_associations(object_type: str, object_id: str, to_type: str) -> str:
    return (f"/crm/{ASSOCIATIONS_VERSION}/objects/{object_type}/{_segment(object_id)}"
            f"/associations/{to_type}")


def properties(object_type: str) -> str:
    return f"/crm/{OBJECTS_VERSION}/properties/{object_type}"


def property_path(object_type: str, name: str) -> str:
    return f"{properties(object_type)}/{_segment(name)}"


def property_groups(object_type: str) -> str:
    return f"{properties(object_type)}/groups"


def property_group(object_type: str, name: str) -> str:
    return f"{property_groups(object_type)}/{_segment(name)}"
