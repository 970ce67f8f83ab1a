"""A stand-in HubSpot on loopback: a real HTTP server that answers like HubSpot's CRM API.

It keeps contacts, tickets, e-mails and notes in memory with their associations and ticket
properties, and behaves like the real API where our client depends on it: 401 without the
Bearer token, HubSpot's error bodies (`status`, `message`, `correlationId`, `category`),
409 `Contact already exists. Existing ID: N`, unique property values, `idProperty` look-ups,
property validation (unknown property, enumeration option, number), search with filters and
`paging.next.after` (200 per page, ~5 searches per second), associations v4 batch read (207
for objects without associations), objects batch read (100 per call), account-info, and the
Properties API. Faults are scriptable per method and path (`fail_next`): a 429 with its
policy, a 5xx, a dropped connection, or "apply, then drop / answer too late" (a timeout after
HubSpot did the work). Every request is recorded, and checked against HubSpot's OpenAPI specs
when the server stops (`contract_violations`).

Use `with hubspot_server() as hs:` (variants) or the `hubspot_peer` fixture (import it in the
test module: `from tests.fakes.hubspot import hubspot_peer`).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

LOOPBACK = "127.0.0.1"
DEFAULT_TOKEN = "pat-eu1-00000000-test-token"
PORTAL_ID = 48151623
SPECS_DIR = Path(__file__).resolve().parents[1] / "specs" / "hubspot"

OBJECT_TYPES = ("contacts", "tickets", "emails", "notes")
FIRST_ID = {"contacts": 1001, "tickets": 20001, "emails": 300001, "notes": 400001}
# HUBSPOT_DEFINED association types: id -> (from type, to type), and each one's reverse.
ASSOCIATION_TYPES = {
    15: ("contacts", "tickets"), 16: ("tickets", "contacts"),
    223: ("tickets", "emails"), 224: ("emails", "tickets"),
    227: ("tickets", "notes"), 228: ("notes", "tickets"),
    197: ("contacts", "emails"), 198: ("emails", "contacts"),
}
REVERSE_TYPE = {15: 16, 16: 15, 223: 224, 224: 223, 227: 228, 228: 227, 197: 198, 198: 197}
TICKET_STAGES = {"0": ("1", "2", "3", "4")}  # the default support pipeline and its stages
SEARCH_PER_SECOND = 5
SEARCH_MAX_LIMIT = 200
SEARCH_MAX_RESULTS = 10_000
BATCH_READ_MAX = 100
ASSOCIATIONS_BATCH_MAX = 1000
ASSOCIATIONS_PAGE = 500

# The scopes a service key can be given that matter here (a key with all of them is the
# default), and what HubSpot requires for each operation (its scopes reference).
ALL_SCOPES = frozenset({
    "tickets", "crm.objects.contacts.read", "crm.objects.contacts.write",
    "crm.schemas.tickets.read", "crm.schemas.tickets.write", "sales-email-read"})
REDACTED = ("hs_email_text", "hs_email_html", "hs_email_subject")


def scope_needed(record: Recorded) -> str | None:
    """The scope HubSpot checks before an operation (None: any valid key will do)."""
    operation = record.operation
    if operation is None or operation.family == "account":
        return None
    ot, to = operation.arg("ot"), operation.arg("to")
    if operation.family in ("associations", "object associations"):
        return "tickets" if "tickets" in (ot, to) else "crm.objects.contacts.read"
    if operation.family == "pipelines":
        return "tickets"
    if operation.family == "properties":
        return f"crm.schemas.{ot}.{'read' if record.method == 'GET' else 'write'}"
    if ot == "tickets":
        return "tickets"
    reading = record.method == "GET" or operation.name.startswith(("batch read", "search"))
    return f"crm.objects.contacts.{'read' if reading else 'write'}"


RATE_LIMIT_MESSAGES = {
    "TEN_SECONDLY_ROLLING": "You have reached your ten_secondly_rolling limit.",
    "SECONDLY": "You have reached your secondly limit.",
    "DAILY": "You have reached your daily limit.",
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _prop(name: str, type_: str, field_type: str, group: str, *,
          options: tuple[str, ...] = (), unique: bool = False) -> dict[str, Any]:
    return {"name": name, "label": name, "type": type_, "fieldType": field_type,
            "groupName": group, "hasUniqueValue": unique, "hidden": False,
            "options": [{"value": o, "label": o, "hidden": False, "displayOrder": i}
                        for i, o in enumerate(options)],
            "createdAt": _now(), "updatedAt": _now(), "calculated": False,
            "externalOptions": False, "formField": False}


def _default_ticket_properties() -> dict[str, dict[str, Any]]:
    group = "ticketinformation"
    props = [
        _prop("subject", "string", "text", group), _prop("content", "string", "textarea", group),
        _prop("hs_pipeline", "enumeration", "select", group, options=tuple(TICKET_STAGES)),
        _prop("hs_pipeline_stage", "enumeration", "select", group,
              options=TICKET_STAGES["0"]),
        _prop("hs_ticket_priority", "enumeration", "select", group,
              options=("LOW", "MEDIUM", "HIGH", "URGENT")),
        _prop("hs_ticket_category", "enumeration", "checkbox", group,
              options=("PRODUCT_ISSUE", "BILLING_ISSUE", "FEATURE_REQUEST", "GENERAL_INQUIRY")),
        _prop("source_type", "enumeration", "select", group,
              options=("CHAT", "EMAIL", "FORM", "PHONE")),
        _prop("createdate", "datetime", "date", group),
        _prop("hs_lastmodifieddate", "datetime", "date", group),
        _prop("hs_object_id", "number", "number", group),
    ]
    return {p["name"]: p for p in props}


ONE = {"contacts": "contact", "tickets": "ticket", "notes": "note", "emails": "e-mail"}
MANY = {"contacts": "contacts", "tickets": "tickets", "notes": "notes", "emails": "e-mails"}


@dataclass(frozen=True)
class Operation:
    """What a request asks, whatever the API version in its path: tests count these."""

    name: str  # "create ticket", "batch read e-mails", "read associations tickets->emails"
    family: str  # objects | associations | properties | pipelines | account
    version: str  # "v3", "v4" or "2026-09"
    handler: str
    args: tuple[tuple[str, str], ...] = ()

    def arg(self, name: str) -> str | None:
        return dict(self.args).get(name)


_SEG = r"[^/]+"
# (family, method, the path after the family's versioned prefix, operation name, handler)
_OPERATIONS: tuple[tuple[str, str, str, str, str], ...] = (
    ("account", "GET", "/details", "account details", "_account"),
    ("properties", "GET", "/groups", "list {one} property groups", "_list_groups"),
    ("properties", "POST", "/groups", "create {one} property group", "_post_group"),
    ("properties", "GET", "/groups/(?P<name>{seg})", "read {one} property group", "_get_group"),
    ("properties", "GET", "", "list {one} properties", "_list_properties"),
    ("properties", "POST", "", "create {one} property", "_post_property"),
    ("properties", "GET", "/(?P<name>{seg})", "read {one} property", "_get_property"),
    ("properties", "PATCH", "/(?P<name>{seg})", "update {one} property", "_patch_property"),
    ("pipelines", "GET", "", "list {one} pipelines", "_list_pipelines"),
    ("pipelines", "GET", "/(?P<pipeline>{seg})", "read {one} pipeline", "_get_pipeline"),
    ("objects", "POST", "/search", "search {many}", "_search"),
    ("objects", "POST", "/batch/read", "batch read {many}", "_batch_read"),
    ("objects", "POST", "/gdpr-delete", "gdpr delete {one}", "_gdpr_delete"),
    ("objects", "POST", "", "create {one}", "_create"),
    ("objects", "GET", "", "list {many}", "_list"),
    ("objects", "GET", "/(?P<id>{seg})", "read {one}", "_read"),
    ("objects", "PATCH", "/(?P<id>{seg})", "update {one}", "_update"),
    ("associations", "POST", "/batch/read", "read associations {ot}->{to}",
     "_associations_batch_read"),
    ("object associations", "GET", "", "list {one} associations to {to}",
     "_associations_page"),
)
# Each family's versioned prefixes: the numbered versions and the date-based one.
_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "account": (("v3", "/account-info/v3"), ("2026-09", "/account-info/2026-09")),
    "properties": (("v3", "/crm/v3/properties/(?P<ot>{seg})"),
                   ("2026-09", "/crm/properties/2026-09/(?P<ot>{seg})")),
    "pipelines": (("v3", "/crm/v3/pipelines/(?P<ot>{seg})"),
                  ("2026-09", "/crm/pipelines/2026-09/(?P<ot>{seg})")),
    "objects": (("v3", "/crm/v3/objects/(?P<ot>{seg})"),
                ("2026-09", "/crm/objects/2026-09/(?P<ot>{seg})")),
    "associations": (("v4", "/crm/v4/associations/(?P<ot>{seg})/(?P<to>{seg})"),
                     ("2026-09", "/crm/associations/2026-09/(?P<ot>{seg})/(?P<to>{seg})")),
    "object associations": (
        ("v4", "/crm/v4/objects/(?P<ot>{seg})/(?P<id>{seg})/associations/(?P<to>{seg})"),),
}
_PATTERNS = tuple(
    (method, version, re.compile((prefix + rest).format(seg=_SEG)), family, name, handler)
    for family, method, rest, name, handler in _OPERATIONS
    for version, prefix in _PREFIXES[family]
)


def parse_operation(method: str, path: str) -> Operation | None:
    """The operation a request path names (percent-encoded as sent), or None."""
    for verb, version, pattern, family, name, handler in _PATTERNS:
        match = pattern.fullmatch(path)
        if match and verb == method.upper():
            args = {k: unquote(v) for k, v in match.groupdict().items()}
            ot = args.get("ot", "")
            label = name.format(one=ONE.get(ot, ot), many=MANY.get(ot, ot), ot=ot,
                                to=args.get("to", ""))
            return Operation(label, family, version, handler, tuple(sorted(args.items())))
    return None


@dataclass
class Recorded:
    """One request as the server received it."""

    method: str
    path: str  # as sent (percent-encoded), without the query
    query: list[tuple[str, str]]
    raw_body: bytes
    headers: dict[str, str]
    at: float  # time.monotonic() on arrival
    status: int = 0  # 0 when the connection was dropped
    fault: str | None = None

    @property
    def operation(self) -> Operation | None:
        return parse_operation(self.method, self.path)

    @property
    def op(self) -> str | None:
        """The operation's name ("create ticket"), whatever the version in the path."""
        found = self.operation
        return found.name if found else None

    def arg(self, name: str) -> str | None:
        """A path parameter of the operation (`id`, `name`, `ot`, `to`), unescaped."""
        found = self.operation
        return found.arg(name) if found else None

    @property
    def body(self) -> Any:
        return json.loads(self.raw_body) if self.raw_body else None

    def param(self, name: str) -> list[str]:
        return [v for k, v in self.query if k == name]

    def first(self, name: str) -> str | None:
        values = self.param(name)
        return values[0] if values else None


@dataclass
class Fault:
    operation: str
    object_id: str | None
    remaining: int
    action: str  # "status" | "drop" | "apply_then_drop" | "apply_then_delay"
    status: int
    policy: str | None
    delay: float
    body: Any
    headers: dict[str, str]

    def matches(self, record: Recorded) -> bool:
        return record.op == self.operation and (
            self.object_id is None or record.arg("id") == self.object_id)


class ApiError(Exception):
    """An answer in HubSpot's error shape."""

    def __init__(self, status: int, message: str, category: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"status": "error", "message": message,
                     "correlationId": str(uuid.uuid4()), "category": category, **extra}


def _invalid(name: str, message: str, error: str) -> ApiError:
    detail = [{"isValid": False, "message": message, "error": error, "name": name,
               "localizedErrorMessage": message}]
    return ApiError(400, f"Property values were not valid: {json.dumps(detail)}",
                    "VALIDATION_ERROR")


def _not_found(object_type: str, object_id: str) -> ApiError:
    return ApiError(404, "Object not found.  objectId are usually numeric.", "OBJECT_NOT_FOUND",
                    context={"id": [object_id], "type": [object_type]})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib's hook name
        self.server.fake.serve(self)

    do_POST = do_PATCH = do_PUT = do_DELETE = do_GET  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeHubSpot


class FakeHubSpot:
    """The server's state, what it received, and the faults scripted for the next requests."""

    def __init__(self, token: str = DEFAULT_TOKEN, *, custom_properties: bool = True,
                 search_rate_limit: bool = True, ui_domain: str = "app.hubspot.com",
                 scopes: Iterable[str] = ALL_SCOPES) -> None:
        self.token = token
        self.scopes = set(scopes)  # what the service key was given
        self.portal_id = PORTAL_ID
        self.ui_domain = ui_domain
        self.search_rate_limit = search_rate_limit
        self.lock = threading.RLock()
        self.objects: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in OBJECT_TYPES}
        self._next_id = dict(FIRST_ID)
        # (from type, from id, to type) -> {to id: association type id}; both directions
        self.links: dict[tuple[str, str, str], dict[str, int]] = {}
        self.properties: dict[str, dict[str, dict[str, Any]]] = {
            "tickets": _default_ticket_properties()}
        self.groups: dict[str, dict[str, dict[str, Any]]] = {
            "tickets": {"ticketinformation": {"name": "ticketinformation",
                                              "label": "Ticket information",
                                              "displayOrder": -1, "archived": False}}}
        self.pipelines: dict[str, dict[str, tuple[str, ...]]] = {
            "tickets": dict(TICKET_STAGES)}
        # Validation rules an admin configured (enforced on 2026-09 writes only): object type
        # -> [(property, (other property, value) that makes it required, or None: always)]
        self.rules: dict[str, list[tuple[str, tuple[str, str] | None]]] = {}
        self.blocklist: set[str] = set()  # e-mail addresses a GDPR delete blocklisted
        self.gdpr_deleted: list[str] = []  # contact ids, in order
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self._search_times: list[float] = []
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        if custom_properties:
            self.install_custom_properties()

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> FakeHubSpot:
        self._server = _Server((LOOPBACK, 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def settings(self, **extra: Any) -> dict[str, Any]:
        """Settings fields pointing at this server (pass to `load_settings(**...)`)."""
        return {"hubspot_access_token": self.token, "hubspot_base_url": self.url, **extra}

    def environ(self) -> dict[str, str]:
        """The same as environment variables, for a CLI run in a subprocess."""
        return {"HUBSPOT_ACCESS_TOKEN": self.token, "HUBSPOT_BASE_URL": self.url}

    # -- what tests read ------------------------------------------------------------------

    @property
    def contacts(self) -> dict[str, dict[str, Any]]:
        return self.objects["contacts"]

    @property
    def tickets(self) -> dict[str, dict[str, Any]]:
        return self.objects["tickets"]

    @property
    def emails(self) -> dict[str, dict[str, Any]]:
        return self.objects["emails"]

    @property
    def notes(self) -> dict[str, dict[str, Any]]:
        return self.objects["notes"]

    def calls(self, operation: str | None = None, *, id: str | None = None,  # noqa: A002
              version: str | None = None) -> list[Recorded]:
        """Recorded requests by operation ("create ticket"), object id and API version."""
        def hit(r: Recorded) -> bool:
            found = r.operation
            if operation is not None and (found is None or found.name != operation):
                return False
            if id is not None and (found is None or found.arg("id") != id):
                return False
            return version is None or (found is not None and found.version == version)

        return [r for r in list(self.requests) if hit(r)]

    def count(self, operation: str | None = None, *, id: str | None = None,  # noqa: A002
              version: str | None = None) -> int:
        return len(self.calls(operation, id=id, version=version))

    def associated(self, from_type: str, from_id: str, to_type: str) -> list[str]:
        """Ids of the `to_type` objects associated with one object, in id order."""
        with self.lock:
            ids = list(self.links.get((from_type, str(from_id), to_type), {}))
        return sorted(ids, key=int)

    @property
    def associations(self) -> set[tuple[str, str, str, str, int]]:
        """Every association as (from type, from id, to type, to id, type id)."""
        with self.lock:
            return {(*key, to_id, type_id) for key, targets in self.links.items()
                    for to_id, type_id in targets.items()}

    # -- scripting ------------------------------------------------------------------------

    def fail_next(self, operation: str, times: int = 1, *, id: str | None = None,  # noqa: A002
                  status: int = 429, policy: str | None = "TEN_SECONDLY_ROLLING",
                  action: str = "status", delay: float = 2.0, body: Any = None,
                  retry_after: float | None = None) -> None:
        """The next `times` requests of `operation` (on object `id`, if given) fail.

        action "status": answer `status` (429 with `policy`'s body and rate-limit headers,
        or e.g. 502); "drop": close the connection without applying or answering;
        "apply_then_drop": do the work, then close without answering; "apply_then_delay": do
        the work and answer only after `delay` seconds (past the client's timeout).
        """
        assert action in ("status", "drop", "apply_then_drop", "apply_then_delay"), action
        headers: dict[str, str] = {}
        if action == "status" and status == 429:
            policy = policy or "TEN_SECONDLY_ROLLING"
            if body is None:
                body = {"status": "error", "message": RATE_LIMIT_MESSAGES.get(policy, policy),
                        "errorType": "RATE_LIMIT", "correlationId": str(uuid.uuid4()),
                        "policyName": policy,
                        "groupName": f"publicapi:private-app:{PORTAL_ID}"}
            if policy == "DAILY":
                headers.update({"X-HubSpot-RateLimit-Daily": "250000",
                                "X-HubSpot-RateLimit-Daily-Remaining": "0"})
            elif policy == "TEN_SECONDLY_ROLLING":
                headers.update({"X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
                                "X-HubSpot-RateLimit-Max": "100",
                                "X-HubSpot-RateLimit-Remaining": "0"})
        elif action == "status" and body is None:
            body = {"status": "error", "message": "internal error",
                    "correlationId": str(uuid.uuid4()), "category": "INTERNAL_ERROR"}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        with self.lock:
            self.faults.append(Fault(operation, id, times, action, status, policy, delay,
                                     body, headers))

    def install_custom_properties(self) -> None:
        """The state after `handler-cli setup hubspot`: its group and ticket properties."""
        from handler_cli.services.crm.hubspot import PROPERTY_GROUP, TICKET_PROPERTIES

        self.groups["tickets"][PROPERTY_GROUP] = {"name": PROPERTY_GROUP, "label": "handler-cli",
                                                  "displayOrder": -1, "archived": False}
        for spec in TICKET_PROPERTIES:
            self._create_property("tickets", spec.body())

    def require(self, object_type: str, name: str, *,
                when: tuple[str, str] | None = None) -> None:
        """An admin's validation rule: `name` required (when `when[0]` is `when[1]`)."""
        with self.lock:
            self.rules.setdefault(object_type, []).append((name, when))

    def add(self, object_type: str, properties: dict[str, Any],
            associations: Sequence[tuple[str, str, int]] = ()) -> str:
        """Put an object in directly (test set-up): [(to type, to id, type id)] associations."""
        with self.lock:
            obj = self._new_object(object_type, {k: str(v) for k, v in properties.items()})
            for _to_type, to_id, type_id in associations:
                self._associate(object_type, obj["id"], str(to_id), type_id)
            return str(obj["id"])

    # -- serving --------------------------------------------------------------------------

    def serve(self, handler: _Handler) -> None:
        split = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        record = Recorded(handler.command, split.path,
                          parse_qsl(split.query, keep_blank_values=True), raw,
                          {k.lower(): v for k, v in handler.headers.items()}, time.monotonic())
        with self.lock:
            self.requests.append(record)
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            record.status = 401
            self._reply(handler, 401, ApiError(
                401, "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication and you can find more details at "
                "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                "INVALID_AUTHENTICATION").body)
            return
        needed = scope_needed(record)
        if needed is not None and needed not in self.scopes:
            record.status = 403
            self._reply(handler, 403, ApiError(
                403, "This app hasn't been granted all required scopes to make this call. "
                "Read more about required scopes here: https://developers.hubspot.com/scopes.",
                "MISSING_SCOPES", errors=[{
                    "message": "One or more of the following scopes are required.",
                    "context": {"requiredGranularScopes": [needed]}}],
                links={"scopes": "https://developers.hubspot.com/scopes"}).body)
            return
        fault = self._take_fault(record)
        if fault is not None:
            record.fault = fault.action
            if fault.action == "status":
                record.status = fault.status
                self._reply(handler, fault.status, fault.body, fault.headers)
                return
            if fault.action == "drop":
                handler.close_connection = True
                return
        status, body, headers = self._dispatch(record)
        record.status = status
        if fault is not None and fault.action == "apply_then_drop":
            record.status = 0
            handler.close_connection = True
            return
        if fault is not None and fault.action == "apply_then_delay":
            self._closing.wait(fault.delay)
        try:
            self._reply(handler, status, body, headers)
        except OSError:  # the client gave up waiting: that was the point
            handler.close_connection = True

    def _take_fault(self, record: Recorded) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.remaining > 0 and fault.matches(record):
                    fault.remaining -= 1
                    return fault
        return None

    @staticmethod
    def _reply(handler: _Handler, status: int, body: Any,
               headers: dict[str, str] | None = None) -> None:
        if isinstance(body, str | bytes):
            data = body.encode() if isinstance(body, str) else body
            content_type = "text/html"
        else:
            data = b"" if body is None else json.dumps(body).encode()
            content_type = "application/json;charset=utf-8"
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("X-HubSpot-Correlation-Id", str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()

    def _dispatch(self, record: Recorded) -> tuple[int, Any, dict[str, str]]:
        try:
            operation = record.operation
            if operation is None:
                raise ApiError(404, f"Unknown path {record.method} {record.path}", "NOT_FOUND")
            args = dict(operation.args)
            if operation.family == "objects" and args.get("ot") not in OBJECT_TYPES:
                raise ApiError(400, f"Unable to infer object type from: {args.get('ot')}",
                               "VALIDATION_ERROR")
            try:
                body = record.body
            except ValueError:
                raise ApiError(400, "Invalid input JSON", "VALIDATION_ERROR") from None
            with self.lock:
                status, payload = getattr(self, operation.handler)(record, body, **args)
            return status, payload, {}
        except ApiError as exc:
            return exc.status, exc.body, {}

    # -- objects --------------------------------------------------------------------------

    def _new_object(self, object_type: str, properties: dict[str, str]) -> dict[str, Any]:
        object_id = str(self._next_id[object_type])
        self._next_id[object_type] += 1
        now = _now()
        obj = {"id": object_id,
               "properties": {**properties, "hs_object_id": object_id, "createdate": now,
                              "hs_lastmodifieddate": now},
               "createdAt": now, "updatedAt": now, "archived": False}
        self.objects[object_type][object_id] = obj
        return obj

    def _associate(self, from_type: str, from_id: str, to_id: str, type_id: int) -> None:
        pair = ASSOCIATION_TYPES.get(type_id)
        if pair is None or pair[0] != from_type:
            raise ApiError(400, f"{type_id} is not a valid association type id from "
                           f"{from_type}", "VALIDATION_ERROR")
        to_type = pair[1]
        if to_id not in self.objects[to_type]:
            raise ApiError(400, f"The following {to_type} ids were not found: {to_id}",
                           "VALIDATION_ERROR")
        self.links.setdefault((from_type, from_id, to_type), {})[to_id] = type_id
        self.links.setdefault((to_type, to_id, from_type), {})[from_id] = REVERSE_TYPE[type_id]

    def _find_by(self, object_type: str, prop: str, value: str) -> dict[str, Any] | None:
        for obj in self.objects[object_type].values():
            stored = obj["properties"].get(prop)
            if stored is not None and (stored.lower() == value.lower() if prop == "email"
                                       else stored == value):
                return obj
        return None

    def _lookup(self, object_type: str, object_id: str, id_property: str | None
                ) -> dict[str, Any]:
        if id_property:
            if object_type == "tickets":
                prop = self.properties["tickets"].get(id_property)
                if prop is None or not prop.get("hasUniqueValue"):
                    raise ApiError(400, f"Property {id_property} is not a unique identifier "
                                   "property for tickets", "VALIDATION_ERROR")
            elif id_property not in ("email", "hs_object_id"):
                raise ApiError(400, f"Property {id_property} is not unique",
                               "VALIDATION_ERROR")
            found = self._find_by(object_type, id_property, object_id)
        else:
            found = self.objects[object_type].get(object_id)
        if found is None:
            raise _not_found(object_type, object_id)
        return found

    def _check_ticket_properties(self, properties: dict[str, str],
                                 exclude_id: str | None = None) -> None:
        """HubSpot refuses unknown properties, invalid options and duplicate unique values."""
        known = self.properties["tickets"]
        for name, value in properties.items():
            prop = known.get(name)
            if prop is None:
                raise _invalid(name, f'Property "{name}" does not exist', "PROPERTY_DOESNT_EXIST")
            if value == "":
                continue
            if prop["type"] == "enumeration":
                options = {o["value"] for o in prop["options"]}
                if name == "hs_pipeline_stage":
                    pipeline = properties.get("hs_pipeline", "0")
                    options = set(self.pipelines["tickets"].get(pipeline, ()))
                if value not in options:
                    raise _invalid(name, f"{value} was not one of the allowed options: "
                                   f"{sorted(options)}", "INVALID_OPTION")
            if prop["type"] == "number":
                try:
                    float(value)
                except ValueError:
                    raise _invalid(name, f"{value} is not a valid number",
                                   "INVALID_FLOAT") from None
            if prop.get("hasUniqueValue"):
                other = self._find_by("tickets", name, value)
                if other is not None and other["id"] != exclude_id:
                    raise ApiError(
                        409, f'Property "{name}" requires unique values. A ticket with '
                        f'{name}="{value}" already exists. Existing ID: {other["id"]}',
                        "CONFLICT")

    def _enforce_rules(self, record: Recorded, ot: str, properties: dict[str, str],
                       current: dict[str, Any] | None = None) -> None:
        """2026-09 applies the portal's validation rules to API writes (changelog, 2026)."""
        operation = record.operation
        if operation is None or operation.version != "2026-09":
            return
        merged = {**(current or {}), **properties}
        for name, when in self.rules.get(ot, []):
            if when is not None and merged.get(when[0]) != when[1]:
                continue
            if merged.get(name) in (None, ""):
                raise ApiError(
                    400, f"Property {name} is required by a validation rule of this account",
                    "VALIDATION_ERROR", errors=[{
                        "message": f"{name} is required", "code": "REQUIRED_PROPERTY",
                        "context": {"propertyName": [name]}}])

    def _create(self, record: Recorded, body: Any, ot: str) -> tuple[int, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
            raise ApiError(400, "Invalid input JSON: properties is required", "VALIDATION_ERROR")
        properties = {k: "" if v is None else str(v) for k, v in body["properties"].items()}
        self._enforce_rules(record, ot, properties)
        if ot == "contacts" and properties.get("email"):
            existing = self._find_by("contacts", "email", properties["email"])
            if existing is not None:
                raise ApiError(409, f"Contact already exists. Existing ID: {existing['id']}",
                               "CONFLICT")
        if ot == "tickets":
            properties.setdefault("hs_pipeline", "0")
            if "hs_pipeline_stage" not in properties:
                raise _invalid("hs_pipeline_stage", "hs_pipeline_stage is required",
                               "REQUIRED_PROPERTY")
            self._check_ticket_properties(properties)
        associations = body.get("associations") or []
        for assoc in associations:  # validated before anything is stored
            for kind in assoc.get("types") or []:
                type_id = int(kind.get("associationTypeId", 0))
                pair = ASSOCIATION_TYPES.get(type_id)
                to_id = str((assoc.get("to") or {}).get("id"))
                if pair is None or pair[0] != ot or to_id not in self.objects[pair[1]]:
                    self._associate(ot, "-", to_id, type_id)  # raises HubSpot's 400
        obj = self._new_object(ot, properties)
        for assoc in associations:
            for kind in assoc.get("types") or []:
                self._associate(ot, obj["id"], str(assoc["to"]["id"]),
                                int(kind["associationTypeId"]))
        return 201, obj

    def _view(self, ot: str, obj: dict[str, Any], wanted: list[str] | None) -> dict[str, Any]:
        props = obj["properties"]
        if wanted:
            names = [*wanted, "hs_object_id", "createdate", "hs_lastmodifieddate"]
            shown = {n: props.get(n) for n in names}
        else:
            shown = dict(props)
        if ot == "emails" and "sales-email-read" not in self.scopes:
            # Without the scope HubSpot redacts what an e-mail says (changelog, "New scope
            # required to get the content of email engagements").
            shown.update({k: None for k in REDACTED if k in shown})
        return {**obj, "properties": shown}

    @staticmethod
    def _wanted(record: Recorded) -> list[str]:
        return [p for value in record.param("properties") for p in value.split(",") if p]

    def _read(self, record: Recorded, body: Any, ot: str, id: str) -> tuple[int, Any]:  # noqa: A002
        obj = self._lookup(ot, id, record.first("idProperty"))
        view = self._view(ot, obj, self._wanted(record))
        for to_type in (t for v in record.param("associations") for t in v.split(",") if t):
            ids = self.associated(ot, obj["id"], to_type)
            if ids:
                view.setdefault("associations", {})[to_type] = {"results": [
                    {"id": i, "type": f"{ot[:-1]}_to_{to_type[:-1]}"} for i in ids]}
        return 200, view

    def _list(self, record: Recorded, body: Any, ot: str) -> tuple[int, Any]:
        limit = int(record.first("limit") or 10)
        start = int(record.first("after") or 0)
        everything = sorted(self.objects[ot].values(), key=lambda o: int(o["id"]))
        page = everything[start:start + limit]
        answer: dict[str, Any] = {"results": [self._view(ot, o, self._wanted(record))
                                              for o in page]}
        if start + limit < len(everything):
            answer["paging"] = {"next": {"after": str(start + limit)}}
        return 200, answer

    def _gdpr_delete(self, record: Recorded, body: Any, ot: str) -> tuple[int, Any]:
        """Deletes the contact and what is associated with it only; an e-mail address not
        found is blocklisted (HubSpot's documented behaviour)."""
        if ot != "contacts":
            raise ApiError(400, f"GDPR delete is not supported for {ot}", "VALIDATION_ERROR")
        body = body or {}
        object_id, id_property = str(body.get("objectId") or ""), body.get("idProperty")
        found = (self._find_by("contacts", "email", object_id) if id_property == "email"
                 else self.objects["contacts"].get(object_id))
        if found is None:
            if id_property == "email":
                self.blocklist.add(object_id.lower())
                return 204, None
            raise _not_found(ot, object_id)
        contact_id = found["id"]
        for (from_type, from_id, to_type), targets in list(self.links.items()):
            if from_type == "contacts" and from_id == contact_id:
                for to_id in targets:
                    self.links.get((to_type, to_id, "contacts"), {}).pop(contact_id, None)
                    if to_type == "emails":  # the contact's e-mails go with it
                        self.objects["emails"].pop(to_id, None)
                del self.links[(from_type, from_id, to_type)]
        del self.objects["contacts"][contact_id]
        self.gdpr_deleted.append(contact_id)
        return 204, None

    def _update(self, record: Recorded, body: Any, ot: str, id: str) -> tuple[int, Any]:  # noqa: A002
        obj = self._lookup(ot, id, record.first("idProperty"))
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
            raise ApiError(400, "Invalid input JSON: properties is required", "VALIDATION_ERROR")
        properties = {k: "" if v is None else str(v) for k, v in body["properties"].items()}
        self._enforce_rules(record, ot, properties, obj["properties"])
        if ot == "tickets":
            self._check_ticket_properties(
                {**properties, "hs_pipeline": obj["properties"].get("hs_pipeline", "0")}
                if "hs_pipeline_stage" in properties else properties, exclude_id=obj["id"])
        obj["properties"].update(properties)
        obj["properties"]["hs_lastmodifieddate"] = obj["updatedAt"] = _now()
        return 200, self._view(ot, obj, None)

    @staticmethod
    def _partial(record: Recorded) -> int:
        """A batch answer with errors: 207 on v3/v4; the 2026-09 specs list 200 only."""
        operation = record.operation
        return 200 if operation is not None and operation.version == "2026-09" else 207

    def _batch_read(self, record: Recorded, body: Any, ot: str) -> tuple[int, Any]:
        inputs = (body or {}).get("inputs") or []
        if len(inputs) > BATCH_READ_MAX:
            raise ApiError(400, f"Batch input size {len(inputs)} exceeds the limit of "
                           f"{BATCH_READ_MAX}", "VALIDATION_ERROR")
        wanted = list((body or {}).get("properties") or [])
        started = _now()
        results, missing = [], []
        for item in inputs:
            obj = self.objects[ot].get(str(item.get("id")))
            if obj is None:
                missing.append(str(item.get("id")))
            else:
                results.append(self._view(ot, obj, wanted))
        answer: dict[str, Any] = {"status": "COMPLETE", "results": results,
                                  "startedAt": started, "completedAt": _now()}
        if missing:
            answer["numErrors"] = 1
            answer["errors"] = [{
                "status": "error", "category": "OBJECT_NOT_FOUND",
                "message": f"Could not get some {ot} objects, they may be deleted or not exist. "
                           "Check that ids are valid.",
                "context": {"ids": missing}, "errors": [], "links": {}}]
            return self._partial(record), answer
        return 200, answer

    # -- search ---------------------------------------------------------------------------

    @staticmethod
    def _matches(props: dict[str, Any], flt: dict[str, Any]) -> bool:
        value = props.get(flt.get("propertyName", ""))
        op = flt.get("operator", "EQ")
        if op == "HAS_PROPERTY":
            return value not in (None, "")
        if op == "NOT_HAS_PROPERTY":
            return value in (None, "")
        if op in ("IN", "NOT_IN"):
            inside = value is not None and value in (flt.get("values") or [])
            return inside if op == "IN" else not inside
        target = flt.get("value")
        if op == "EQ":
            return value is not None and str(value) == str(target)
        if op == "NEQ":
            return value is None or str(value) != str(target)
        if value is None or target is None:
            return False
        try:
            left, right = float(value), float(target)
        except ValueError:
            left, right = str(value), str(target)  # type: ignore[assignment]
        return {"GT": left > right, "GTE": left >= right, "LT": left < right,
                "LTE": left <= right}.get(op, False)

    def _search(self, record: Recorded, body: Any, ot: str) -> tuple[int, Any]:
        if self.search_rate_limit:
            now = record.at
            self._search_times = [t for t in self._search_times if t > now - 1.0]
            if len(self._search_times) >= SEARCH_PER_SECOND:
                raise ApiError(429, RATE_LIMIT_MESSAGES["SECONDLY"], "RATE_LIMITS",
                               errorType="RATE_LIMIT", policyName="SECONDLY")
            self._search_times.append(now)
        body = body or {}
        limit = int(body.get("limit") or 10)
        if limit > SEARCH_MAX_LIMIT:
            raise ApiError(400, f"limit must be at most {SEARCH_MAX_LIMIT}", "VALIDATION_ERROR")
        after = int(body.get("after") or 0)
        if after + limit > SEARCH_MAX_RESULTS:
            raise ApiError(400, "Search can only page through 10000 results",
                           "VALIDATION_ERROR")
        groups = body.get("filterGroups") or []
        hits = [obj for obj in self.objects[ot].values()
                if not groups or any(all(self._matches(obj["properties"], f)
                                         for f in g.get("filters") or []) for g in groups)]
        hits.sort(key=lambda o: int(o["id"]))
        page = hits[after:after + limit]
        answer: dict[str, Any] = {
            "total": len(hits),
            "results": [self._view(ot, o, list(body.get("properties") or [])) for o in page]}
        if after + limit < len(hits):
            answer["paging"] = {"next": {"after": str(after + limit),
                                         "link": f"?after={after + limit}"}}
        return 200, answer

    # -- associations v4 ------------------------------------------------------------------

    def _associations_batch_read(self, record: Recorded, body: Any, ot: str,
                                 to: str) -> tuple[int, Any]:
        inputs = (body or {}).get("inputs") or []
        if len(inputs) > ASSOCIATIONS_BATCH_MAX:
            raise ApiError(400, f"Batch input size {len(inputs)} exceeds the limit of "
                           f"{ASSOCIATIONS_BATCH_MAX}", "VALIDATION_ERROR")
        started = _now()
        results, errors = [], []
        for item in inputs:
            from_id = str(item.get("id"))
            ids = self.associated(ot, from_id, to)
            if not ids:
                errors.append({
                    "status": "error", "category": "OBJECT_NOT_FOUND",
                    "subCategory": "crm.associations.NO_ASSOCIATIONS_FOUND",
                    "message": f"No {to} is associated with {ot} {from_id}.",
                    "context": {"fromObjectId": [from_id]}, "errors": [], "links": {}})
                continue
            start = int(item.get("after") or 0)
            page = ids[start:start + ASSOCIATIONS_PAGE]
            result: dict[str, Any] = {"from": {"id": from_id}, "to": [
                {"toObjectId": int(i), "associationTypes": [
                    {"category": "HUBSPOT_DEFINED", "typeId": self._type_id(ot, from_id, to, i),
                     "label": None}]} for i in page]}
            if start + ASSOCIATIONS_PAGE < len(ids):
                result["paging"] = {"next": {"after": str(start + ASSOCIATIONS_PAGE)}}
            results.append(result)
        answer: dict[str, Any] = {"status": "COMPLETE", "results": results,
                                  "startedAt": started, "completedAt": _now()}
        if errors:
            answer.update(errors=errors, numErrors=len(errors))
            return self._partial(record), answer
        return 200, answer

    def _type_id(self, from_type: str, from_id: str, to_type: str, to_id: str) -> int:
        return self.links.get((from_type, from_id, to_type), {}).get(to_id, 0)

    def _associations_page(self, record: Recorded, body: Any, ot: str, id: str,  # noqa: A002
                           to: str) -> tuple[int, Any]:
        if id not in self.objects.get(ot, {}):
            raise _not_found(ot, id)
        limit = int((record.param("limit") or ["500"])[0])
        start = int((record.param("after") or ["0"])[0])
        ids = self.associated(ot, id, to)
        page = ids[start:start + limit]
        answer: dict[str, Any] = {"results": [
            {"toObjectId": int(i), "associationTypes": [
                {"category": "HUBSPOT_DEFINED", "typeId": self._type_id(ot, id, to, i),
                 "label": None}]} for i in page]}
        if start + limit < len(ids):
            answer["paging"] = {"next": {"after": str(start + limit)}}
        return 200, answer

    # -- account and properties -----------------------------------------------------------

    def _account(self, record: Recorded, body: Any) -> tuple[int, Any]:
        return 200, {"portalId": self.portal_id, "accountType": "STANDARD",
                     "timeZone": "Europe/Paris", "companyCurrency": "EUR",
                     "additionalCurrencies": [], "utcOffset": "+01:00",
                     "utcOffsetMilliseconds": 3_600_000, "uiDomain": self.ui_domain,
                     "dataHostingLocation": "eu1"}

    def _list_groups(self, record: Recorded, body: Any, ot: str) -> tuple[int, Any]:
        return 200, {"results": list(self.groups.setdefault(ot, {}).values())}

    def _get_group(self, record: Recorded, body: Any, ot: str, name: str) -> tuple[int, Any]:
        group = self.groups.setdefault(ot, {}).get(name)
        if group is None:
            raise ApiError(404, f"Unable to find property group {name}", "OBJECT_NOT_FOUND")
        return 200, group

    def _post_group(self, record: Recorded, body: Any, ot: str) -> tuple[int, Any]:
        name = (body or {}).get("name")
        if not name or not body.get("label"):
            raise ApiError(400, "name and label are required", "VALIDATION_ERROR")
        groups = self.groups.setdefault(ot, {})
        if name in groups:
            raise ApiError(409, f"A property group named '{name}' already exists.",
                           "OBJECT_ALREADY_EXISTS")
        groups[name] = {"name": name, "label": body["label"],
                        "displayOrder": body.get("displayOrder", -1), "archived": False}
        return 201, groups[name]

    def _list_properties(self, record: Recorded, body: Any, ot: str) -> tuple[int, Any]:
        return 200, {"results": list(self.properties.setdefault(ot, {}).values())}

    def _get_property(self, record: Recorded, body: Any, ot: str, name: str
                      ) -> tuple[int, Any]:
        prop = self.properties.setdefault(ot, {}).get(name)
        if prop is None:
            raise ApiError(404, f"Unable to find property {name}", "OBJECT_NOT_FOUND")
        return 200, prop

    def _create_property(self, ot: str, body: dict[str, Any]) -> dict[str, Any]:
        for key in ("name", "label", "type", "fieldType", "groupName"):
            if not body.get(key):
                raise ApiError(400, f"{key} is required", "VALIDATION_ERROR")
        if body["groupName"] not in self.groups.setdefault(ot, {}):
            raise ApiError(400, f"property group {body['groupName']} does not exist",
                           "VALIDATION_ERROR")
        props = self.properties.setdefault(ot, {})
        if body["name"] in props:
            raise ApiError(409, f"Property named '{body['name']}' already exists.",
                           "OBJECT_ALREADY_EXISTS")
        if body["type"] == "enumeration" and not body.get("options"):
            raise ApiError(400, "options are required for enumeration properties",
                           "VALIDATION_ERROR")
        prop = _prop(body["name"], body["type"], body["fieldType"], body["groupName"],
                     unique=bool(body.get("hasUniqueValue")))
        prop.update(label=body["label"], description=body.get("description", ""),
                    options=list(body.get("options") or []))
        props[body["name"]] = prop
        return prop

    def _post_property(self, record: Recorded, body: Any, ot: str) -> tuple[int, Any]:
        return 201, self._create_property(ot, body or {})

    def _patch_property(self, record: Recorded, body: Any, ot: str, name: str
                        ) -> tuple[int, Any]:
        status, prop = self._get_property(record, None, ot, name)
        for key in ("label", "description", "options", "fieldType", "groupName"):
            if key in (body or {}):
                prop[key] = body[key]
        prop["updatedAt"] = _now()
        return 200, prop


    # -- pipelines ------------------------------------------------------------------------

    def _pipeline(self, ot: str, pipeline_id: str) -> dict[str, Any]:
        stages = self.pipelines.get(ot, {}).get(pipeline_id)
        if stages is None:
            raise ApiError(404, f"Pipeline {pipeline_id} not found", "OBJECT_NOT_FOUND")
        now = _now()
        return {"id": pipeline_id, "label": f"Pipeline {pipeline_id}", "displayOrder": 0,
                "archived": False, "createdAt": now, "updatedAt": now,
                "stages": [{"id": s, "label": f"Stage {s}", "displayOrder": i,
                            "metadata": {"ticketState": "OPEN"}, "archived": False,
                            "createdAt": now, "updatedAt": now, "writePermissions": "CRUD"}
                           for i, s in enumerate(stages)]}

    def _list_pipelines(self, record: Recorded, body: Any, ot: str) -> tuple[int, Any]:
        return 200, {"results": [self._pipeline(ot, p) for p in self.pipelines.get(ot, {})]}

    def _get_pipeline(self, record: Recorded, body: Any, ot: str,
                      pipeline: str) -> tuple[int, Any]:
        return 200, self._pipeline(ot, pipeline)


@contextmanager
def hubspot_server(*, token: str = DEFAULT_TOKEN, custom_properties: bool = True,
                   search_rate_limit: bool = True, ui_domain: str = "app.hubspot.com",
                   scopes: Iterable[str] = ALL_SCOPES,
                   check_contract: bool = True) -> Iterator[FakeHubSpot]:
    """A started stand-in; on a clean exit, every request it got must match HubSpot's specs."""
    fake = FakeHubSpot(token, custom_properties=custom_properties,
                       search_rate_limit=search_rate_limit, ui_domain=ui_domain,
                       scopes=scopes).start()
    try:
        yield fake
    finally:
        fake.stop()
    if check_contract:
        violations = contract_violations(fake.requests)
        assert not violations, "requests outside HubSpot's OpenAPI specs:\n" + "\n".join(
            violations)


@pytest.fixture
def hubspot_peer() -> Iterator[FakeHubSpot]:
    with hubspot_server() as fake:
        yield fake


# -- the contract: HubSpot's published OpenAPI specs ------------------------------------

SPEC_VERSION = "2026-09"
# Which spec file describes each family of operations (object operations: one per type).
SPEC_FILES = {"associations": "associations.json", "properties": "properties.json",
              "pipelines": "pipelines.json", "account": "account-info.json"}


def spec_file(operation: Operation) -> str:
    if operation.family == "objects":
        return f"{SPEC_VERSION}/{operation.arg('ot')}.json"
    return f"{SPEC_VERSION}/{SPEC_FILES.get(operation.family, operation.family)}"


@cache
def _spec(name: str) -> tuple[Any, dict[str, Any]]:
    from openapi_core import OpenAPI

    raw = json.loads((SPECS_DIR / name).read_text(encoding="utf-8"))
    return OpenAPI.from_dict(raw), raw


def _operation(raw: dict[str, Any], method: str, path: str) -> dict[str, Any] | None:
    """The spec operation for a concrete path; literal segments win over templates."""
    candidates = []
    for template, item in raw["paths"].items():
        pattern = "/".join(re.escape(seg) if not seg.startswith("{") else "[^/]+"
                           for seg in template.split("/"))
        if re.fullmatch(pattern, path) and method.lower() in item:
            candidates.append((template.count("{"), template, item))
    if not candidates:
        return None
    _, _, item = min(candidates)
    op: dict[str, Any] = item[method.lower()]
    return {**op, "parameters": [*item.get("parameters", []), *op.get("parameters", [])]}


class _SpecRequest:
    """A recorded request in the shape openapi-core reads."""

    def __init__(self, record: Recorded, path: str) -> None:
        from openapi_core.datatypes import RequestParameters
        from werkzeug.datastructures import Headers, ImmutableMultiDict

        self.method = record.method.lower()
        self.host_url = "https://api.hubapi.com"
        self.path = unquote(path)
        self.full_url_pattern = self.host_url + self.path
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(record.query), header=Headers(record.headers),
            cookie=ImmutableMultiDict(), path={})
        self.body = record.raw_body or None
        self.content_type = record.headers.get("content-type", "application/json")


def contract_violations(requests: list[Recorded]) -> list[str]:
    """Each request that HubSpot's 2026-09 OpenAPI specs do not allow, with the reason."""
    from openapi_core.validation.request.validators import (
        V30RequestBodyValidator,
        V30RequestParametersValidator,
    )

    problems = []
    for record in requests:
        where = f"{record.method} {record.path}"
        operation = parse_operation(record.method, record.path)
        if operation is None:
            problems.append(f"{where}: no HubSpot spec describes this path")
            continue
        if operation.version != SPEC_VERSION:
            problems.append(f"{where}: {operation.name} through API {operation.version}, "
                            f"not {SPEC_VERSION}")
            continue
        name = spec_file(operation)
        if not (SPECS_DIR / name).is_file():
            problems.append(f"{where}: no HubSpot spec describes {operation.arg('ot')}")
            continue
        api, raw = _spec(name)
        op = _operation(raw, record.method, unquote(record.path))
        if op is None:
            problems.append(f"{where}: not an operation of {name}")
            continue
        declared = {p.get("name") for p in op["parameters"] if p.get("in") == "query"}
        unknown = sorted({k for k, _ in record.query} - declared)
        if unknown:
            problems.append(f"{where}: query parameters not in the spec: {unknown}")
        if record.raw_body and "requestBody" not in op:
            problems.append(f"{where}: a body, where the operation takes none")
        request = _SpecRequest(record, record.path)
        for validator in (V30RequestParametersValidator, V30RequestBodyValidator):
            for error in validator(api.spec).iter_errors(request):
                cause = error.__cause__ or error
                details = "; ".join(str(e.message) for e in getattr(cause, "schema_errors", ()))
                problems.append(f"{where}: {type(error).__name__}: {details or error}")
    return problems
