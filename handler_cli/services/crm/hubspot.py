"""The live CRM: HubSpot's CRM API (objects v3, associations v4) over one httpx client.

Every call goes through one retry loop that does what HubSpot asks (a 429 names its policy:
wait for the ten-second window, back off a search, never retry a spent daily quota), retries
5xx and dropped connections, and turns everything else into a ServiceError carrying HubSpot's
message and correlation id. Creates are safe to retry: a create whose outcome is unknown
(timeout, dropped connection, 5xx) is looked up before it is sent again, and HubSpot's own
uniqueness (a contact's e-mail, the ticket's `handler_request_id`) answers 409 to a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formataddr, getaddresses, parseaddr
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from handler_cli.checks import Finding, proved
from handler_cli.services import EmailRecord, ServiceError, TicketDraft, WaitingTicket

if TYPE_CHECKING:
    from handler_cli.config import Settings

log = logging.getLogger("handler_cli")

SERVICE = "hubspot"
TIMEOUT_SECONDS = 15.0
MAX_ATTEMPTS = 4  # the first call and at most 3 retries
SEARCH_PAGE_SIZE = 200  # HubSpot's maximum per search page
SEARCH_MAX_RESULTS = 10_000  # a search query never pages past this
# HubSpot allows about 5 search requests per second per account; keep a small margin.
SEARCH_INTERVAL_SECONDS = 0.22
ASSOCIATIONS_BATCH = 1000  # inputs per associations v4 batch read
READ_BATCH = 100  # inputs per objects batch read
TEXT_LIMIT = 65_536  # characters in a HubSpot string property

# Association type ids, HUBSPOT_DEFINED, in the direction of the object being created.
TICKET_TO_CONTACT = 16
NOTE_TO_TICKET = 228
EMAIL_TO_TICKET = 224  # ticket -> email is 223; an e-mail created with its ticket is 224

PROPERTY_GROUP = "handler_cli"
PORTAL_CACHE_FILE = "hubspot_account.json"
DEFAULT_UI_DOMAIN = "app.hubspot.com"

T = TypeVar("T")


@dataclass(frozen=True)
class PropertySpec:
    """A custom ticket property handler-cli relies on; `setup hubspot` creates it."""

    name: str
    label: str
    type: str
    field_type: str
    description: str
    options: tuple[tuple[str, str], ...] = ()
    unique: bool = False

    def body(self) -> dict[str, Any]:
        """The Properties v3 create body."""
        body: dict[str, Any] = {
            "name": self.name, "label": self.label, "type": self.type,
            "fieldType": self.field_type, "groupName": PROPERTY_GROUP,
            "description": self.description, "formField": False,
        }
        if self.options:
            body["options"] = option_inputs(self.options)
        if self.unique:
            body["hasUniqueValue"] = True
        return body


def option_inputs(options: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"value": value, "label": label, "hidden": False, "displayOrder": i}
            for i, (value, label) in enumerate(options)]


# Labels are French: the studio's team reads them in HubSpot.
TICKET_PROPERTIES: tuple[PropertySpec, ...] = (
    PropertySpec(
        "validation_status", "Statut de validation", "enumeration", "select",
        "Où en est la demande côté client (géré par handler-cli).",
        options=(("pending_info", "En attente d'informations du client"),
                 ("pending_credits", "Devis envoyé, en attente de validation"),
                 ("pending_admin", "En attente de l'administrateur"),
                 ("validated", "Validé par le client"),
                 ("rejected", "Refusé par le client")),
    ),
    PropertySpec("credits_estimes", "Crédits estimés", "number", "number",
                 "Crédits de modélisation estimés pour la demande."),
    PropertySpec("clickup_subtask_id", "Sous-tâche ClickUp", "string", "text",
                 "Identifiant de la sous-tâche ClickUp de production."),
    PropertySpec("fichiers_urls", "URLs des fichiers", "string", "textarea",
                 "Liens des fichiers joints par le client, un par ligne."),
    PropertySpec("handler_request_id", "Identifiant de demande (handler-cli)", "string", "text",
                 "Identifiant unique de la demande : empêche un second ticket pour la même "
                 "demande.", unique=True),
    PropertySpec("handler_replies_handled", "Réponses traitées (handler-cli)", "string",
                 "textarea", "Identifiants des réponses client déjà traitées par le suivi."),
)
CUSTOM_PROPERTY_NAMES = tuple(p.name for p in TICKET_PROPERTIES)
TICKET_READ_PROPERTIES = (
    "subject", "content", "hs_ticket_priority", "hs_pipeline", "hs_pipeline_stage",
    "hs_lastmodifieddate", "createdate", *CUSTOM_PROPERTY_NAMES,
)
EMAIL_READ_PROPERTIES = (
    "hs_timestamp", "hs_email_direction", "hs_email_subject", "hs_email_text", "hs_email_html",
    "hs_email_headers", "hs_email_from_email", "hs_email_to_email", "hs_attachment_ids",
)


@dataclass
class PropertiesReport:
    """What `ensure_properties` did: created now, already there, and anything to fix by hand."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _Transient(Exception):
    """A failure worth another attempt. `maybe_applied`: HubSpot may have done it anyway."""

    def __init__(self, message: str, *, maybe_applied: bool = False, policy: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied
        self.policy = policy
        self.retry_after = retry_after


def _error_body(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _describe_error(method: str, path: str, resp: httpx.Response) -> str:
    """`POST /x: HTTP 400 VALIDATION_ERROR: <HubSpot's message> (correlationId ...)`."""
    body = _error_body(resp)
    message = str(body.get("message") or resp.text[:200].strip() or resp.reason_phrase)
    category = body.get("category") or body.get("errorType") or ""
    text = f"{method} {path}: HTTP {resp.status_code}{' ' + category if category else ''}: {message}"
    if body.get("correlationId"):
        text += f" (correlationId {body['correlationId']})"
    return text


def _parse_time(value: object) -> datetime:
    """HubSpot gives timestamps as ISO 8601 or as epoch milliseconds."""
    text = str(value or "").strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.fromtimestamp(0, tz=UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(at: datetime) -> str:
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clip(text: str, limit: int = TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _strings(properties: dict[str, Any]) -> dict[str, str]:
    """HubSpot property values are strings; nulls (no value) are dropped."""
    return {k: str(v) for k, v in properties.items() if v is not None}


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


def _headers_party(raw: str) -> dict[str, str]:
    """`Name <a@b>` -> HubSpot's header entry {"email", "firstName", "lastName"}."""
    name, email = parseaddr(raw)
    party = {"email": email or raw}
    if name:
        first, _, last = name.partition(" ")
        party.update(firstName=first, lastName=last)
    return party


def _oldest_first(record: EmailRecord) -> tuple[datetime, int]:
    crm_id = record.crm_id or ""
    return record.at, int(crm_id) if crm_id.isdigit() else 0


_HTML_TAG = re.compile(r"<[^>]+>")


class HubSpotCRM:
    """The CRM Protocol on HubSpot, with `check()` for `doctor --check` and property setup."""

    name = "hubspot"

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None, *,
                 timeout: float = TIMEOUT_SECONDS) -> None:
        if not settings.hubspot_access_token:
            from handler_cli.config import ConfigError

            raise ConfigError("HUBSPOT_ACCESS_TOKEN is not set")
        self.settings = settings
        self.base_url = settings.hubspot_base_url.rstrip("/")
        self._retry_base = max(0.0, settings.handler_retry_base_seconds)
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {settings.hubspot_access_token}",
                     "Accept": "application/json", "User-Agent": "handler-cli"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )
        self._account: dict[str, Any] | None = None
        self._account_lock = threading.Lock()
        self._search_lock = threading.Lock()
        self._last_search = 0.0
        self._known_lock = threading.Lock()
        self._known_db: sqlite3.Connection | None = None

    def describe(self) -> str:
        s = self.settings
        return (f"HubSpot at {self.base_url} (ticket pipeline {s.hubspot_pipeline}, "
                f"stage {s.hubspot_pipeline_stage})")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HubSpotCRM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the one way to call HubSpot ------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        """Seconds before the next attempt: what the 429 policy asks, else backoff with jitter."""
        exc = state.outcome.exception() if state.outcome else None
        base = self._retry_base
        if isinstance(exc, _Transient):
            if exc.retry_after is not None:
                return min(exc.retry_after, 60.0)
            if exc.policy == "TEN_SECONDLY_ROLLING":  # the window is 10 s: let it roll over
                return base * 10 * random.uniform(1.0, 1.1)
            if exc.policy == "SECONDLY":
                return base * random.uniform(1.0, 1.5)
        return base * 2 ** (state.attempt_number - 1) * random.uniform(0.5, 1.5)

    def _retrying(self) -> Retrying:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning("hubspot: %s; retry %d/%d in %.2fs", exc,
                        state.attempt_number, MAX_ATTEMPTS - 1, wait)

        return Retrying(stop=stop_after_attempt(MAX_ATTEMPTS), wait=self._wait,
                        retry=retry_if_exception_type(_Transient), reraise=True,
                        before_sleep=before_sleep)

    def _send(self, method: str, path: str, params: Any, body: Any) -> httpx.Response:
        """One attempt. Raises _Transient for what deserves a retry."""
        what = f"{method} {path}"
        try:
            resp = self._client.request(method, path, params=params, json=body)
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            raise ServiceError(SERVICE, f"{what}: {exc}", transient=False) from exc
        except httpx.TransportError as exc:
            # Refused or never connected: nothing reached HubSpot. Otherwise it may have.
            unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
            raise _Transient(f"{what}: {type(exc).__name__}: {exc or 'no detail'}",
                             maybe_applied=not unsent) from exc
        if resp.status_code == 429:
            body = _error_body(resp)
            policy = str(body.get("policyName") or "")
            if not policy and "secondly" in str(body.get("message", "")).lower():
                policy = "SECONDLY"
            if policy == "DAILY":
                raise ServiceError(SERVICE, "daily API quota spent, retry after midnight "
                                   f"(account time): {_describe_error(method, path, resp)}",
                                   transient=False)
            retry_after = resp.headers.get("Retry-After")
            raise _Transient(_describe_error(method, path, resp), policy=policy,
                             retry_after=float(retry_after) if retry_after
                             and retry_after.replace(".", "", 1).isdigit() else None)
        if resp.status_code >= 500:
            raise _Transient(_describe_error(method, path, resp), maybe_applied=True)
        return resp

    def _request(self, method: str, path: str, *, params: Any = None, body: Any = None,
                 allow: tuple[int, ...] = (),
                 recover: Callable[[], T | None] | None = None) -> httpx.Response | T:
        """Call HubSpot with retries; return a 2xx response (or one whose status is in `allow`).

        `recover` is asked before any retry of an attempt HubSpot may have applied (a create
        that timed out): when it finds the result, that result is returned instead of sending
        the request again.
        """
        maybe_applied = False
        try:
            for attempt in self._retrying():
                with attempt:
                    if maybe_applied and recover is not None:
                        found = recover()
                        if found is not None:
                            log.info("hubspot: %s had been applied before the failure", path)
                            return found
                    try:
                        resp = self._send(method, path, params, body)
                    except _Transient as exc:
                        maybe_applied = maybe_applied or exc.maybe_applied
                        raise
        except _Transient as exc:
            raise ServiceError(SERVICE, f"{exc} (gave up after {MAX_ATTEMPTS} attempts)") from exc
        if resp.is_success or resp.status_code in allow:
            return resp
        raise self._refused(method, path, resp)

    def _refused(self, method: str, path: str, resp: httpx.Response) -> ServiceError:
        """A 4xx HubSpot will answer the same way next time: not worth retrying."""
        text = _describe_error(method, path, resp)
        if resp.status_code == 401:
            text += " — check HUBSPOT_ACCESS_TOKEN"
        elif resp.status_code == 403:
            text += " — the private app lacks a scope"
        elif resp.status_code == 400 and any(n in text for n in CUSTOM_PROPERTY_NAMES):
            text += " — are the custom ticket properties there? run `handler-cli setup hubspot`"
        return ServiceError(SERVICE, text, transient=False)

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = self._request(method, path, **kwargs)
        assert isinstance(resp, httpx.Response)
        data: dict[str, Any] = resp.json() if resp.content else {}
        return data

    # -- contacts -------------------------------------------------------------------------

    def _find_contact(self, email: str) -> str | None:
        resp = self._request("GET", f"/crm/v3/objects/contacts/{quote(email, safe='@')}",
                             params={"idProperty": "email"}, allow=(404,))
        assert isinstance(resp, httpx.Response)
        return None if resp.status_code == 404 else str(resp.json()["id"])

    def find_or_create_contact(self, email: str, firstname: str, lastname: str) -> str:
        email = email.strip()
        found = self._find_contact(email)
        if found is not None:
            return found
        properties = {"email": email, "firstname": firstname, "lastname": lastname}
        path = "/crm/v3/objects/contacts"
        resp = self._request(
            "POST", path, allow=(409,), recover=lambda: self._find_contact(email),
            body={"properties": {k: v for k, v in properties.items() if v}, "associations": []},
        )
        if isinstance(resp, str):
            return resp
        if resp.status_code == 409:  # created meanwhile by someone else: HubSpot names it
            match = re.search(r"Existing ID:\s*(\d+)", str(_error_body(resp).get("message", "")))
            existing = match.group(1) if match else self._find_contact(email)
            if existing is None:
                raise self._refused("POST", path, resp)
            return existing
        return str(resp.json()["id"])

    # -- tickets --------------------------------------------------------------------------

    def find_ticket(self, request_id: str) -> str | None:
        resp = self._request(
            "GET", f"/crm/v3/objects/tickets/{quote(request_id, safe='')}",
            params={"idProperty": "handler_request_id"}, allow=(404,),
        )
        assert isinstance(resp, httpx.Response)
        return None if resp.status_code == 404 else str(resp.json()["id"])

    def create_ticket(self, draft: TicketDraft) -> str:
        s = self.settings
        properties = {
            "subject": draft.subject, "content": _clip(draft.content),
            "hs_pipeline": s.hubspot_pipeline, "hs_pipeline_stage": s.hubspot_pipeline_stage,
            "hs_ticket_priority": draft.priority, **_strings(draft.properties),
            "handler_request_id": draft.request_id,
        }
        associations = [] if not draft.contact_id else [{
            "to": {"id": str(draft.contact_id)},
            "types": [{"associationCategory": "HUBSPOT_DEFINED",
                       "associationTypeId": TICKET_TO_CONTACT}],
        }]
        path = "/crm/v3/objects/tickets"
        resp = self._request("POST", path, allow=(400, 409),
                             body={"properties": properties, "associations": associations},
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
        raise self._refused("POST", path, resp)

    def update_ticket(self, ticket_id: str, properties: dict[str, str]) -> None:
        self._request("PATCH", f"/crm/v3/objects/tickets/{quote(str(ticket_id), safe='')}",
                      body={"properties": _strings(properties)})

    def get_ticket(self, ticket_id: str) -> dict[str, str]:
        """The ticket's properties, plus request_id, contact_id and updated_at (as LocalCRM)."""
        data = self._json(
            "GET", f"/crm/v3/objects/tickets/{quote(str(ticket_id), safe='')}",
            params=[("properties", ",".join(TICKET_READ_PROPERTIES)),
                    ("associations", "contacts")],
        )
        props = _strings(data.get("properties") or {})
        contacts = ((data.get("associations") or {}).get("contacts") or {}).get("results") or []
        return {**props, "request_id": props.get("handler_request_id", ""),
                "contact_id": str(contacts[0]["id"]) if contacts else "",
                "updated_at": str(data.get("updatedAt") or props.get("hs_lastmodifieddate", ""))}

    # -- the ticket's link ----------------------------------------------------------------

    def _account_cache_key(self) -> str:
        token = self.settings.hubspot_access_token or ""
        return hashlib.sha256(f"{self.base_url}\n{token}".encode()).hexdigest()[:16]

    def account(self) -> dict[str, Any]:
        """portalId and uiDomain: from settings, the cache file, or one account-info call."""
        if self.settings.hubspot_portal_id:
            return {"portalId": self.settings.hubspot_portal_id, "uiDomain": DEFAULT_UI_DOMAIN}
        with self._account_lock:
            if self._account is not None:
                return self._account
            path = self.settings.data_dir / PORTAL_CACHE_FILE
            key = self._account_cache_key()
            try:
                cache = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                cache = {}
            cache = cache if isinstance(cache, dict) else {}
            if isinstance(cache.get(key), dict) and cache[key].get("portalId"):
                self._account = cache[key]
                return cache[key]
            details = self._json("GET", "/account-info/v3/details")
            if not details.get("portalId"):
                raise ServiceError(SERVICE, "account-info answered without a portalId; "
                                   "set HUBSPOT_PORTAL_ID", transient=False)
            account = {"portalId": str(details["portalId"]),
                       "uiDomain": str(details.get("uiDomain") or DEFAULT_UI_DOMAIN)}
            cache[key] = account
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
                tmp.replace(path)
            except OSError as exc:  # a read-only data dir costs one call per run, no more
                log.warning("hubspot: cannot cache the portal id in %s: %s", path, exc)
            self._account = account
            return account

    def ticket_url(self, ticket_id: str) -> str:
        account = self.account()
        return (f"https://{account['uiDomain']}/contacts/{account['portalId']}"
                f"/record/0-5/{ticket_id}")

    # -- notes and the e-mail log ---------------------------------------------------------

    def _associated(self, ticket_id: str, to_type: str) -> list[str]:
        """Ids of `to_type` objects on one ticket (associations v4, paged)."""
        ids: list[str] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 500}
            if after:
                params["after"] = after
            page = self._json(
                "GET", f"/crm/v4/objects/tickets/{quote(str(ticket_id), safe='')}"
                f"/associations/{to_type}", params=params)
            ids += [str(r["toObjectId"]) for r in page.get("results") or []]
            after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return ids

    def _batch_read(self, object_type: str, ids: list[str],
                    properties: Iterable[str]) -> list[dict[str, Any]]:
        """Objects by id, 100 per call; ids HubSpot does not know are left out."""
        found: list[dict[str, Any]] = []
        for chunk in _chunks(ids, READ_BATCH):
            data = self._json("POST", f"/crm/v3/objects/{object_type}/batch/read", body={
                "inputs": [{"id": i} for i in chunk], "properties": list(properties),
                "propertiesWithHistory": [],
            })
            found += data.get("results") or []
        return found

    def _find_note(self, ticket_id: str, body: str, timestamp: str) -> str | None:
        ids = self._associated(ticket_id, "notes")
        for note in self._batch_read("notes", ids, ("hs_note_body", "hs_timestamp")):
            props = note.get("properties") or {}
            if props.get("hs_note_body") == body and (
                    _parse_time(props.get("hs_timestamp")) == _parse_time(timestamp)):
                return str(note["id"])
        return None

    def add_note(self, ticket_id: str, body: str) -> None:
        body = _clip(body)
        timestamp = _iso(datetime.now(UTC))
        self._request(
            "POST", "/crm/v3/objects/notes",
            body={"properties": {"hs_note_body": body, "hs_timestamp": timestamp},
                  "associations": [{"to": {"id": str(ticket_id)}, "types": [{
                      "associationCategory": "HUBSPOT_DEFINED",
                      "associationTypeId": NOTE_TO_TICKET}]}]},
            recover=lambda: self._find_note(ticket_id, body, timestamp),
        )

    def _find_email(self, ticket_id: str, message_id: str) -> str | None:
        ids = self._associated(ticket_id, "emails")
        for email in self._batch_read("emails", ids, ("hs_email_headers",)):
            if self._message_id(email) == message_id:
                return str(email["id"])
        return None

    def log_email(self, ticket_id: str, email: EmailRecord) -> None:
        """One e-mail engagement on the ticket; Message-Id kept in hs_email_headers."""
        headers: dict[str, Any] = {
            "from": _headers_party(email.sender),
            "to": [_headers_party(formataddr(pair)) for pair in getaddresses([email.to])
                   if pair[1]],
            "cc": [], "bcc": [], "Message-Id": email.message_id,
        }
        if email.in_reply_to:
            headers["In-Reply-To"] = email.in_reply_to
        properties = {
            "hs_timestamp": _iso(email.at),
            "hs_email_direction": "EMAIL" if email.direction == "OUTGOING" else "INCOMING_EMAIL",
            "hs_email_status": "SENT",
            "hs_email_subject": _clip(email.subject, 1000),
            "hs_email_text": _clip(email.text),
            "hs_email_headers": json.dumps(headers, ensure_ascii=False),
        }
        created = self._request(
            "POST", "/crm/v3/objects/emails",
            body={"properties": properties, "associations": [{
                "to": {"id": str(ticket_id)}, "types": [{
                    "associationCategory": "HUBSPOT_DEFINED",
                    "associationTypeId": EMAIL_TO_TICKET}]}]},
            recover=lambda: self._find_email(ticket_id, email.message_id),
        )
        if email.direction == "OUTGOING":
            email_id = (_error_body(created).get("id") if isinstance(created, httpx.Response)
                        else created)
            if email_id:
                self._remember_not_from_client([str(email_id)])

    # -- what the poll reads --------------------------------------------------------------

    def _search(self, object_type: str, body: dict[str, Any]) -> dict[str, Any]:
        """One search call, spaced from the previous one (HubSpot allows ~5 per second)."""
        with self._search_lock:
            wait = self._last_search + SEARCH_INTERVAL_SECONDS - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                return self._json("POST", f"/crm/v3/objects/{object_type}/search", body=body)
            finally:
                self._last_search = time.monotonic()

    def waiting_tickets(self, statuses: tuple[str, ...]) -> list[WaitingTicket]:
        if not statuses:
            return []
        body: dict[str, Any] = {
            "filterGroups": [{"filters": [{"propertyName": "validation_status",
                                           "operator": "IN", "values": list(statuses)}]}],
            "properties": list(TICKET_READ_PROPERTIES), "sorts": [],
            "limit": SEARCH_PAGE_SIZE, "after": "0",
        }
        waiting: list[WaitingTicket] = []
        while True:
            page = self._search("tickets", body)
            for ticket in page.get("results") or []:
                props = _strings(ticket.get("properties") or {})
                waiting.append(WaitingTicket(
                    ticket_id=str(ticket["id"]), request_id=props.get("handler_request_id", ""),
                    validation_status=props.get("validation_status", ""), properties=props,
                    updated_at=_parse_time(ticket.get("updatedAt")
                                           or props.get("hs_lastmodifieddate")),
                ))
            after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return waiting
            if str(after).isdigit() and int(after) >= SEARCH_MAX_RESULTS:
                log.warning("hubspot: more than %d waiting tickets; the rest is not read",
                            SEARCH_MAX_RESULTS)
                return waiting
            body = {**body, "after": str(after)}

    def _ticket_emails(self, ticket_ids: list[str]) -> dict[str, list[str]]:
        """E-mail ids per ticket: one associations call per 1,000 tickets (plus paging)."""
        found: dict[str, list[str]] = {}
        pending: list[dict[str, str]] = [{"id": str(t)} for t in ticket_ids]
        while pending:
            follow: list[dict[str, str]] = []
            for chunk in _chunks(pending, ASSOCIATIONS_BATCH):
                data = self._json("POST", "/crm/v4/associations/tickets/emails/batch/read",
                                  body={"inputs": chunk})
                # Tickets without e-mails come back in `errors` (HTTP 207): nothing to read.
                for result in data.get("results") or []:
                    ticket = str(result["from"]["id"])
                    found.setdefault(ticket, []).extend(
                        str(to["toObjectId"]) for to in result.get("to") or [])
                    after = ((result.get("paging") or {}).get("next") or {}).get("after")
                    if after:
                        follow.append({"id": ticket, "after": str(after)})
            pending = follow
        return found

    @staticmethod
    def _email_headers(email: dict[str, Any]) -> dict[str, Any]:
        raw = (email.get("properties") or {}).get("hs_email_headers") or "{}"
        try:
            headers = json.loads(raw)
        except ValueError:
            return {}
        return headers if isinstance(headers, dict) else {}

    def _message_id(self, email: dict[str, Any]) -> str:
        found = _header(self._email_headers(email), "Message-Id", "messageId", "message-id")
        return found or f"hubspot-{email['id']}"

    def _email_record(self, email: dict[str, Any]) -> EmailRecord:
        props = email.get("properties") or {}
        headers = self._email_headers(email)
        text = props.get("hs_email_text") or ""
        if not text and props.get("hs_email_html"):
            text = _HTML_TAG.sub(" ", str(props["hs_email_html"]))
        attachments = tuple(a for a in str(props.get("hs_attachment_ids") or "").split(";") if a)
        return EmailRecord(
            message_id=self._message_id(email),
            direction="INCOMING" if props.get("hs_email_direction") == "INCOMING_EMAIL"
            else "OUTGOING",
            sender=str(props.get("hs_email_from_email") or _address(headers.get("from"))),
            to=str(props.get("hs_email_to_email") or _address(headers.get("to"))),
            subject=str(props.get("hs_email_subject") or ""), text=str(text),
            at=_parse_time(props.get("hs_timestamp") or email.get("createdAt")),
            in_reply_to=_header(headers, "In-Reply-To", "inReplyTo"),
            attachments=attachments, crm_id=str(email["id"]),
        )

    def incoming_emails(self, ticket_ids: list[str],
                        skip: set[str]) -> dict[str, list[EmailRecord]]:
        """The clients' e-mails on each ticket, oldest first, except engagement ids in `skip`.

        Calls grow with pages, not tickets: one associations call per 1,000 tickets, one
        e-mail batch read per 100 e-mails not yet handled.
        """
        by_ticket = self._ticket_emails(ticket_ids)
        candidates = {e for ids in by_ticket.values() for e in ids} - set(skip)
        wanted = sorted(candidates - self._not_from_client(candidates), key=str)
        records, ours = {}, []
        for email in self._batch_read("emails", wanted, EMAIL_READ_PROPERTIES):
            if (email.get("properties") or {}).get("hs_email_direction") == "INCOMING_EMAIL":
                records[str(email["id"])] = self._email_record(email)
            else:
                ours.append(str(email["id"]))
        self._remember_not_from_client(ours)
        result: dict[str, list[EmailRecord]] = {str(t): [] for t in ticket_ids}
        for ticket, ids in by_ticket.items():
            mine = [records[e] for e in dict.fromkeys(ids) if e in records]
            result[ticket] = sorted(mine, key=_oldest_first)
        return result

    # Our own e-mails (quotes, acknowledgements) sit on every waiting ticket. Reading them
    # again on every poll would cost a batch read per 100 tickets; once seen, they are
    # remembered here (data dir) and never read again.

    def _known(self) -> sqlite3.Connection:
        if self._known_db is None:
            from handler_cli.sqlite import connect

            self._known_db = connect(
                self.settings.data_dir / "hubspot_emails.sqlite3",
                "CREATE TABLE IF NOT EXISTS not_from_client (email_id TEXT PRIMARY KEY)",
            )
        return self._known_db

    def _not_from_client(self, ids: set[str]) -> set[str]:
        with self._known_lock:
            db = self._known()
            return {row[0] for row in db.execute(
                "SELECT email_id FROM not_from_client WHERE email_id IN"
                " (SELECT value FROM json_each(?))", (json.dumps(sorted(ids)),))}

    def _remember_not_from_client(self, ids: list[str]) -> None:
        if ids:
            with self._known_lock:
                self._known().executemany(
                    "INSERT OR IGNORE INTO not_from_client (email_id) VALUES (?)",
                    [(i,) for i in ids])

    # -- setup and health -----------------------------------------------------------------

    def _ticket_properties(self) -> dict[str, dict[str, Any]]:
        data = self._json("GET", "/crm/v3/properties/tickets")
        return {p["name"]: p for p in data.get("results") or []}

    def ensure_properties(self) -> PropertiesReport:
        """Create the property group and the custom ticket properties that are missing."""
        report = PropertiesReport()
        group = self._request("GET", f"/crm/v3/properties/tickets/groups/{PROPERTY_GROUP}",
                              allow=(404,))
        assert isinstance(group, httpx.Response)
        if group.status_code == 404:
            self._request("POST", "/crm/v3/properties/tickets/groups",
                          body={"name": PROPERTY_GROUP, "label": "handler-cli",
                                "displayOrder": -1}, allow=(409,))
            report.created.append(f"group {PROPERTY_GROUP}")
        existing = self._ticket_properties()
        for spec in TICKET_PROPERTIES:
            have = existing.get(spec.name)
            if have is None:
                resp = self._request("POST", "/crm/v3/properties/tickets", body=spec.body(),
                                     allow=(409,))
                assert isinstance(resp, httpx.Response)
                (report.existing if resp.status_code == 409 else report.created).append(spec.name)
                continue
            report.existing.append(spec.name)
            if have.get("type") != spec.type:
                report.warnings.append(f"{spec.name} has type {have.get('type')!r}, "
                                       f"expected {spec.type!r}: fix it in HubSpot")
            if spec.unique and not have.get("hasUniqueValue"):
                report.warnings.append(
                    f"{spec.name} exists without unique values: HubSpot will not refuse a "
                    "duplicate ticket; delete it in HubSpot and run setup again")
            if spec.options:
                known = {o.get("value") for o in have.get("options") or []}
                missing = [(v, label) for v, label in spec.options if v not in known]
                if missing:
                    options = [{k: o[k] for k in ("value", "label", "hidden", "displayOrder")
                                if k in o} for o in have.get("options") or []]
                    options = [{"hidden": False, **o} for o in options]
                    self._request("PATCH", f"/crm/v3/properties/tickets/{spec.name}",
                                  body={"options": options + option_inputs(missing)})
                    report.updated.append(f"{spec.name} (options "
                                          f"{', '.join(v for v, _ in missing)})")
        return report

    def check(self) -> list[Finding]:
        """One small real proof for `doctor --check`: the token works, properties exist."""
        account = self.account()
        names = set(self._ticket_properties())
        missing = [n for n in CUSTOM_PROPERTY_NAMES if n not in names]
        if missing:
            raise ServiceError(SERVICE, f"ticket properties missing: {', '.join(missing)}; "
                               "run `handler-cli setup hubspot`", transient=False)
        return [proved(f"portal {account['portalId']}, custom ticket properties present")]


def setup_properties(crm: HubSpotCRM) -> list[str]:
    """What `setup hubspot` created (empty on a second run)."""
    return crm.ensure_properties().created
