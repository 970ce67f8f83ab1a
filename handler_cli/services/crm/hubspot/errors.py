"""HubSpot's refusals, read: who refused what, said once for the operator and the admin.

HubSpot's error body is `{"status", "message", "correlationId", "category", "errors",
"context", "links"}`. A refused property value comes in two shapes, both read here:

- `message: "Property values were not valid: [{"isValid": false, "name": ..., "error": ...,
  "message": ...}]"` (HubSpot changelog, "Enforcing Deal Currency Code Validation", 2023);
- `errors: [{"code": ..., "message": ..., "context": {"propertyName": [...]}}]`, the shape
  the 2026-09 specs describe (`ErrorDetail.context`), used by the validation rules a portal's
  admin configures, which `2026-09` enforces on API writes (HubSpot changelog, "CRM API Write
  Validation Enforcement Starting with the 2026-09 API Version", September 2026).

Such a refusal is permanent (sending it again gets the same answer) and names the property
in French, since the admin reads it in the error report of the request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

PROPERTY_DOESNT_EXIST = "PROPERTY_DOESNT_EXIST"
_INVALID_PREFIX = "Property values were not valid:"
# Where the 2026-09 error details name a property (`context` keys; see ErrorDetail).
_PROPERTY_KEYS = ("propertyName", "invalidPropertyName", "properties")


def error_body(resp: httpx.Response) -> dict[str, Any]:
    """HubSpot's error JSON (`message`, `category`, `correlationId`, ...), or {}."""
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def describe_error(method: str, path: str, resp: httpx.Response) -> str:
    """`POST /x: HTTP 400 VALIDATION_ERROR: <HubSpot's message> (correlationId ...)`."""
    body = error_body(resp)
    message = str(body.get("message") or resp.text[:200].strip() or resp.reason_phrase)
    category = body.get("category") or body.get("errorType") or ""
    text = f"{method} {path}: HTTP {resp.status_code}{' ' + category if category else ''}: {message}"
    if body.get("correlationId"):
        text += f" (correlationId {body['correlationId']})"
    return text


def required_scopes(body: dict[str, Any]) -> list[str]:
    """The scopes a 403 MISSING_SCOPES names (`errors[].context.requiredGranularScopes`, or
    the older `requiredScopes`; `missingScopes` in the specs' example)."""
    found: list[str] = []
    for detail in [body, *(d for d in body.get("errors") or [] if isinstance(d, dict))]:
        context = detail.get("context") if isinstance(detail.get("context"), dict) else None
        for key in ("requiredGranularScopes", "requiredScopes", "missingScopes"):
            names = context.get(key) if context else None
            found += [str(n) for n in names or [] if str(n) not in found]
    return found


@dataclass(frozen=True)
class PropertyRefusal:
    """One property HubSpot refused, with its reason code and HubSpot's own words."""

    name: str
    code: str
    message: str


def property_refusals(body: dict[str, Any]) -> list[PropertyRefusal]:
    """The properties a 400 names, in either of HubSpot's shapes (none: not about one)."""
    found: list[PropertyRefusal] = []
    message = str(body.get("message") or "")
    if message.startswith(_INVALID_PREFIX):
        try:
            details = json.loads(message[len(_INVALID_PREFIX):].strip())
        except ValueError:
            details = []
        for item in details if isinstance(details, list) else []:
            if isinstance(item, dict) and item.get("name"):
                found.append(PropertyRefusal(str(item["name"]), str(item.get("error") or ""),
                                             str(item.get("message") or "")))
    for detail in [body, *(d for d in body.get("errors") or [] if isinstance(d, dict))]:
        context = detail.get("context") if isinstance(detail.get("context"), dict) else {}
        for key in _PROPERTY_KEYS:
            names = context.get(key) if context else None
            for name in names if isinstance(names, list) else []:
                text = str(detail.get("message") or "") if detail is not body else message
                found.append(PropertyRefusal(str(name), str(detail.get("code") or ""), text))
    unique: dict[str, PropertyRefusal] = {}
    for refusal in found:
        unique.setdefault(refusal.name, refusal)
    return list(unique.values())


def sent_properties(request: httpx.Request) -> dict[str, Any]:
    """The `properties` of the request's JSON body ({} when it had none)."""
    try:
        body = json.loads(request.content or b"{}")
    except ValueError:
        return {}
    props = body.get("properties") if isinstance(body, dict) else None
    return props if isinstance(props, dict) else {}


def refusal_in_french(refusal: PropertyRefusal, sent: dict[str, Any],
                      own_properties: frozenset[str]) -> str:
    """« La propriété HubSpot « x » refuse la valeur « v » (HubSpot's reason) », and what to do."""
    name = refusal.name
    if refusal.code == PROPERTY_DOESNT_EXIST:
        text = f"La propriété HubSpot « {name} » n'existe pas dans le portail"
        if name in own_properties:
            text += " : lancez `handler-cli setup hubspot` pour la créer"
        return text
    value = sent.get(name)
    if value is None or value == "":
        text = (f"La propriété HubSpot « {name} » est exigée par une règle de validation du "
                "portail")
    else:
        shown = str(value) if len(str(value)) <= 80 else str(value)[:79] + "…"
        text = f"La propriété HubSpot « {name} » refuse la valeur « {shown} »"
    reason = " : ".join(p for p in (refusal.code, refusal.message) if p)
    return f"{text} ({reason})" if reason else text
