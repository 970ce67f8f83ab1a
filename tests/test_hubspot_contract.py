"""Every request our HubSpot client sends must be one HubSpot's OpenAPI specs allow.

The specs are HubSpot's own, copied unchanged into tests/specs/hubspot/ (see its README). The
check (`contract_violations`) runs on every scenario of test_hubspot.py when its stand-in
stops; here a full tour of the client (faults and recoveries included) is checked, the tour is
shown to reach every endpoint the client uses, and the check is shown to catch violations.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from handler_cli.config import load_settings
from handler_cli.services import EmailRecord, TicketDraft
from handler_cli.services.crm.hubspot import HubSpotCRM
from tests.fakes.hubspot import (
    DEFAULT_TOKEN,
    SPECS_DIR,
    FakeHubSpot,
    Recorded,
    _spec,
    contract_violations,
    hubspot_server,
    parse_operation,
)

# Every operation the client uses, as the stand-in names them (whatever the API version).
CLIENT_OPERATIONS = {
    "read contact",  # by e-mail
    "create contact",
    "create ticket",
    "read ticket",  # by id or by request id
    "update ticket",
    "search tickets",
    "create note",
    "batch read notes",
    "create e-mail",
    "batch read e-mails",
    "read associations tickets->emails",
    "read associations tickets->notes",
    "list ticket properties",
    "create ticket property",
    "update ticket property",
    "read ticket property group",
    "create ticket property group",
    "account details",
    "read associations tickets->contacts",
    "read associations contacts->emails",
    "gdpr delete contact",
    # doctor --check
    "list contacts",
    "update contact",  # contact 0, which cannot exist: proves the scope, changes nothing
    "list tickets",
    "list ticket pipelines",
}


def full_tour(hs: FakeHubSpot, data_dir: Path) -> None:
    """Each client operation once at least, with the faults that make it recover."""
    settings = load_settings(environ={
        "HANDLER_DATA_DIR": str(data_dir), "HANDLER_ENV_FILE": str(data_dir / "no.env"),
        "HANDLER_RETRY_BASE_SECONDS": "0.01", **hs.environ()})
    with HubSpotCRM(settings, timeout=2.0) as crm:
        crm.ensure_properties()
        hs.properties["tickets"]["validation_status"]["options"].pop()
        crm.ensure_properties()  # patches the option back
        crm.check()

        contact = crm.find_or_create_contact("marie@example.fr", "Marie", "Dupont")
        hs.fail_next("read contact", id="marie@example.fr", status=404,
                     policy=None, body={"status": "error", "message": "Object not found.",
                                        "correlationId": "c", "category": "OBJECT_NOT_FOUND"})
        crm.find_or_create_contact("marie@example.fr", "Marie", "Dupont")  # 409 race

        hs.fail_next("create ticket", status=429)
        draft = TicketDraft("req_tour", "Sujet", "Texte", "HIGH", contact,
                            {"validation_status": "pending_credits", "credits_estimes": "1",
                             "fichiers_urls": "https://files.example/a.glb"})
        ticket = crm.create_ticket(draft)
        crm.create_ticket(draft)  # 409 on the unique request id
        crm.find_ticket("req_tour")
        crm.update_ticket(ticket, {"clickup_subtask_id": "86c7r48hb"})
        crm.get_ticket(ticket)
        crm.ticket_url(ticket)

        hs.fail_next("create note", action="apply_then_drop")
        crm.add_note(ticket, "Note")
        hs.fail_next("create e-mail", action="apply_then_drop")
        crm.log_email(ticket, EmailRecord(
            "<a@v.fr>", "INCOMING", "Marie <marie@example.fr>", "no-reply@v.fr", "Re",
            "Je valide", datetime(2026, 3, 2, tzinfo=UTC), in_reply_to="<q@v.fr>"))

        for i in range(210):  # two search pages
            hs.add("tickets", {"subject": f"t{i}", "validation_status": "pending_info"})
        for _ in range(510):  # two association pages
            hs.add("emails", {"hs_email_direction": "INCOMING_EMAIL"},
                   [("tickets", ticket, 224)])
        hs.fail_next("search tickets", status=429, policy="SECONDLY")
        crm.waiting_tickets(("pending_info", "pending_credits"))
        crm.incoming_emails([ticket, "20002"], set())
        crm.contact_emails([ticket, "20002"], set(), datetime(2026, 1, 1, tzinfo=UTC))
        crm.forget_contact("marie@example.fr")


def test_a_full_tour_of_the_client_stays_within_hubspots_specs(tmp_path: Path) -> None:
    with hubspot_server(custom_properties=False, check_contract=False) as hs:
        full_tour(hs, tmp_path)

    assert contract_violations(hs.requests) == []
    reached = {r.op for r in hs.requests}
    assert reached == CLIENT_OPERATIONS
    assert any(r.body["inputs"][0].get("after")
               for r in hs.calls("read associations tickets->emails"))


def test_the_specs_are_hubspots_2026_09_openapi_files() -> None:
    files = sorted(p.relative_to(SPECS_DIR).as_posix() for p in SPECS_DIR.rglob("*.json"))
    assert files == [f"2026-09/{n}.json" for n in (
        "account-info", "associations", "contacts", "emails", "notes", "pipelines",
        "properties", "tickets")]
    for name in files:
        _, raw = _spec(name)
        assert raw["openapi"] == "3.0.1"
        assert raw["servers"] == [{"url": "https://api.hubapi.com"}]
        assert raw["info"]["version"] == "2026-09"
        assert all("/2026-09/" in path for path in raw["paths"])


def _request(method: str, path: str, query: tuple[tuple[str, str], ...] = (),
             body: object = None) -> Recorded:
    raw = json.dumps(body).encode() if body is not None else b""
    return Recorded(method, path, list(query), raw, {"content-type": "application/json"}, 0.0)


OBJECTS = "/crm/objects/2026-09"


@pytest.mark.parametrize(("request_", "reason"), [
    (_request("POST", f"{OBJECTS}/tickets", body={"properties": {"subject": "x"}}),
     "'associations' is a required property"),
    (_request("POST", f"{OBJECTS}/tickets",
              body={"properties": {"credits_estimes": 2}, "associations": []}),
     "2 is not of type 'string'"),
    (_request("POST", f"{OBJECTS}/notes", body={"properties": {"hs_note_body": "x"}}),
     "'associations' is a required property"),
    (_request("POST", f"{OBJECTS}/tickets/search",
              body={"filterGroups": [], "limit": 200}),
     "'after' is a required property"),
    (_request("POST", f"{OBJECTS}/tickets/search",
              body={"filterGroups": [], "limit": 200, "after": "0", "properties": [],
                    "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}]}),
     "is not of type 'string'"),
    (_request("POST", f"{OBJECTS}/emails/batch/read",
              body={"inputs": [{"id": "1"}], "properties": []}),
     "'propertiesWithHistory' is a required property"),
    (_request("POST", "/crm/associations/2026-09/tickets/emails/batch/read",
              body={"inputs": [{"after": "500"}]}),
     "'id' is a required property"),
    (_request("POST", "/crm/properties/2026-09/tickets",
              body={"name": "x", "label": "x", "type": "text", "fieldType": "text",
                    "groupName": "handler_cli"}),
     "'text' is not one of"),
    (_request("POST", f"{OBJECTS}/contacts/gdpr-delete", body={"idProperty": "email"}),
     "'objectId' is a required property"),
    (_request("GET", f"{OBJECTS}/tickets/1", query=(("idProprety", "x"),)),
     "query parameters not in the spec: ['idProprety']"),
    (_request("GET", "/account-info/2026-09/details", query=(("portalId", "1"),)),
     "query parameters not in the spec: ['portalId']"),
    (_request("GET", f"{OBJECTS}/tickets/1", body={"properties": {}}),
     "a body, where the operation takes none"),
    (_request("GET", "/crm/pipelines/2026-09/tickets/0", query=(("archived", "false"),)),
     "query parameters not in the spec: ['archived']"),
    (_request("GET", f"{OBJECTS}/deals/1"), "no HubSpot spec describes deals"),
    (_request("POST", "/crm/v3/objects/tickets", body={"properties": {}, "associations": []}),
     "create ticket through API v3, not 2026-09"),
    (_request("GET", "/account-info/v3/details"), "account details through API v3"),
    (_request("DELETE", "/crm/associations/2026-09/tickets/emails/batch/read"),
     "no HubSpot spec describes this path"),
], ids=lambda v: v.path if isinstance(v, Recorded) else "")
def test_the_contract_check_catches_what_the_specs_forbid(request_: Recorded,
                                                          reason: str) -> None:
    violations = contract_violations([request_])

    assert len(violations) == 1
    assert reason in violations[0]


def test_the_stand_in_fails_a_test_whose_client_breaks_the_contract() -> None:
    with (pytest.raises(AssertionError, match="outside HubSpot's OpenAPI specs"),
          hubspot_server() as hs):
        # HubSpot itself would take this (the stand-in does), but the spec requires
        # `associations`: the stand-in reports it when it stops.
        httpx.post(f"{hs.url}/crm/objects/2026-09/tickets", timeout=5.0,
                   headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"},
                   json={"properties": {"subject": "x", "hs_pipeline_stage": "1"}})


@pytest.mark.parametrize(("method", "path", "name", "args"), [
    ("POST", "/crm/v3/objects/tickets", "create ticket", {"ot": "tickets"}),
    ("POST", "/crm/objects/2026-09/tickets", "create ticket", {"ot": "tickets"}),
    ("GET", "/crm/v3/objects/contacts/jean%2B3d@example.fr", "read contact",
     {"id": "jean+3d@example.fr"}),
    ("GET", "/crm/objects/2026-09/contacts/jean%2B3d@example.fr", "read contact",
     {"id": "jean+3d@example.fr"}),
    ("POST", "/crm/v4/associations/tickets/emails/batch/read",
     "read associations tickets->emails", {"to": "emails"}),
    ("POST", "/crm/associations/2026-09/tickets/emails/batch/read",
     "read associations tickets->emails", {"to": "emails"}),
    ("POST", "/crm/properties/2026-09/tickets/groups", "create ticket property group", {}),
    ("GET", "/account-info/2026-09/details", "account details", {}),
    ("GET", "/crm/pipelines/2026-09/tickets/0", "read ticket pipeline", {"pipeline": "0"}),
])
def test_the_stand_in_names_each_operation_whatever_the_version(
        method: str, path: str, name: str, args: dict[str, str]) -> None:
    operation = parse_operation(method, path)

    assert operation is not None and operation.name == name
    assert args.items() <= dict(operation.args).items()
    assert parse_operation("DELETE", path) is None
