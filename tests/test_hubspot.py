"""The HubSpot backend against a loopback HubSpot: what it sends, and how it survives faults.

Every scenario's requests are also held to HubSpot's OpenAPI specs when its server stops
(`hubspot_server(check_contract=True)`).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from handler_cli.config import Settings, load_settings
from handler_cli.services import EmailRecord, ServiceError, TicketDraft
from handler_cli.services.crm.hubspot import (
    CUSTOM_PROPERTY_NAMES,
    EMAIL_TO_TICKET,
    NOTE_TO_TICKET,
    SEARCH_INTERVAL_SECONDS,
    TICKET_TO_CONTACT,
    HubSpotCRM,
    setup_properties,
)
from tests.fakes.hubspot import ALL_SCOPES, FakeHubSpot, hubspot_server

RETRY_BASE = 0.01  # seconds; a TEN_SECONDLY_ROLLING wait is then 10 x 0.01 = 0.1 s
# Operations, as the stand-in names them whatever the API version in the path.
CREATE_TICKET, READ_TICKET, UPDATE_TICKET = "create ticket", "read ticket", "update ticket"
CREATE_CONTACT, READ_CONTACT = "create contact", "read contact"
CREATE_EMAIL, CREATE_NOTE = "create e-mail", "create note"
SEARCH = "search tickets"
ASSOCIATIONS_READ = "read associations tickets->emails"
EMAILS_READ = "batch read e-mails"


def hubspot_settings(hs: FakeHubSpot, data_dir: Path, **extra: Any) -> Settings:
    environ = {"HANDLER_DATA_DIR": str(data_dir), "HANDLER_ENV_FILE": str(data_dir / "no.env"),
               "HANDLER_RETRY_BASE_SECONDS": str(RETRY_BASE), **hs.environ()}
    return load_settings(environ=environ, **extra)


@pytest.fixture
def hs() -> Iterator[FakeHubSpot]:
    with hubspot_server() as fake:
        yield fake


@pytest.fixture
def crm(hs: FakeHubSpot, tmp_path: Path) -> Iterator[HubSpotCRM]:
    with HubSpotCRM(hubspot_settings(hs, tmp_path / "data"), timeout=2.0) as backend:
        yield backend


def draft(request_id: str = "req_abc", contact_id: str | None = None,
          **properties: str) -> TicketDraft:
    return TicketDraft(request_id=request_id, subject="[MODELISATION] Chaise en chêne",
                       content="Bonjour, je voudrais un modèle 3D.", priority="MEDIUM",
                       contact_id=contact_id, properties=properties)


def email(message_id: str, direction: str = "OUTGOING", minutes: int = 0) -> EmailRecord:
    return EmailRecord(
        message_id=message_id, direction=direction,  # type: ignore[arg-type]
        sender="Valione Services <no-reply@valione-services.com>",
        to="Marie Dupont <marie@example.fr>", subject="Votre demande", text="Bonjour Marie",
        at=datetime(2026, 3, 2, 9, 0, tzinfo=UTC) + timedelta(minutes=minutes),
    )


# -- contacts --------------------------------------------------------------------------------


def test_known_contact_is_found_by_email_and_not_created(hs: FakeHubSpot,
                                                         crm: HubSpotCRM) -> None:
    known = hs.add("contacts", {"email": "marie@example.fr", "firstname": "Marie"})

    assert crm.find_or_create_contact("marie@example.fr", "Marie", "Dupont") == known
    assert hs.count(CREATE_CONTACT) == 0
    assert hs.calls(READ_CONTACT)[0].query == [("idProperty", "email")]


def test_unknown_contact_is_created_with_its_names(hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    contact_id = crm.find_or_create_contact("jean+3d@example.fr", "Jean", "Martin")

    props = hs.contacts[contact_id]["properties"]
    assert (props["email"], props["firstname"], props["lastname"]) == (
        "jean+3d@example.fr", "Jean", "Martin")
    assert hs.calls(CREATE_CONTACT)[0].body["associations"] == []
    # the + of the address is escaped in the look-up path, not taken for a space
    assert hs.calls(READ_CONTACT)[0].path.endswith("/contacts/jean%2B3d@example.fr")


def test_contact_created_meanwhile_is_taken_from_the_409(hs: FakeHubSpot,
                                                         crm: HubSpotCRM) -> None:
    existing = hs.add("contacts", {"email": "marie@example.fr"})
    # The look-up misses it (created by someone else a moment later): the create races it.
    hs.fail_next(READ_CONTACT, id="marie@example.fr", status=404, policy=None,
                 body={"status": "error", "message": "Object not found.",
                       "correlationId": "c-1", "category": "OBJECT_NOT_FOUND"})

    assert crm.find_or_create_contact("marie@example.fr", "Marie", "Dupont") == existing
    assert len(hs.contacts) == 1
    assert [r.status for r in hs.calls(CREATE_CONTACT)] == [409]


def test_contact_create_whose_answer_was_lost_is_not_created_twice(hs: FakeHubSpot,
                                                                   crm: HubSpotCRM) -> None:
    hs.fail_next(CREATE_CONTACT, action="apply_then_drop")

    contact_id = crm.find_or_create_contact("marie@example.fr", "Marie", "Dupont")

    assert list(hs.contacts) == [contact_id]
    assert hs.count(CREATE_CONTACT) == 1  # looked up, not sent again


# -- tickets ---------------------------------------------------------------------------------


def test_ticket_is_created_in_one_call_with_properties_and_contact(hs: FakeHubSpot,
                                                                  crm: HubSpotCRM) -> None:
    contact = hs.add("contacts", {"email": "marie@example.fr"})

    ticket_id = crm.create_ticket(draft(contact_id=contact, validation_status="pending_info",
                                        credits_estimes="2", fichiers_urls="https://r2/a.glb"))

    assert hs.count() == 1
    props = hs.tickets[ticket_id]["properties"]
    assert props["subject"] == "[MODELISATION] Chaise en chêne"
    assert (props["hs_pipeline"], props["hs_pipeline_stage"], props["hs_ticket_priority"]) == (
        "0", "1", "MEDIUM")
    assert (props["handler_request_id"], props["validation_status"], props["credits_estimes"],
            props["fichiers_urls"]) == ("req_abc", "pending_info", "2", "https://r2/a.glb")
    assert ("tickets", ticket_id, "contacts", contact, TICKET_TO_CONTACT) in hs.associations
    assert hs.associated("contacts", contact, "tickets") == [ticket_id]


def test_ticket_without_contact_has_no_association(hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    ticket_id = crm.create_ticket(draft())

    assert hs.calls(CREATE_TICKET)[0].body["associations"] == []
    assert hs.associated("tickets", ticket_id, "contacts") == []


def test_second_create_for_the_same_request_returns_the_first_ticket(
        hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    first = crm.create_ticket(draft())

    assert crm.create_ticket(draft()) == first
    assert len(hs.tickets) == 1
    assert [r.status for r in hs.calls(CREATE_TICKET)] == [201, 409]


def test_find_ticket_reads_by_request_id_without_search(hs: FakeHubSpot,
                                                        crm: HubSpotCRM) -> None:
    ticket_id = crm.create_ticket(draft("req_find"))

    assert crm.find_ticket("req_find") == ticket_id
    assert crm.find_ticket("req_other") is None
    assert hs.count(SEARCH) == 0
    assert hs.calls(READ_TICKET)[0].query == [("idProperty", "handler_request_id")]


def test_rate_limited_ticket_create_waits_for_the_window_and_creates_once(
        hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    hs.fail_next(CREATE_TICKET, times=2, status=429, policy="TEN_SECONDLY_ROLLING")

    started = time.monotonic()
    ticket_id = crm.create_ticket(draft())

    assert list(hs.tickets) == [ticket_id]
    assert [r.status for r in hs.calls(CREATE_TICKET)] == [429, 429, 201]
    assert time.monotonic() - started >= 2 * 10 * RETRY_BASE  # the 10 s window, scaled


def test_ticket_create_that_timed_out_after_hubspot_made_it_is_found_not_repeated(
        hs: FakeHubSpot, tmp_path: Path) -> None:
    hs.fail_next(CREATE_TICKET, action="apply_then_delay", delay=1.5)

    with HubSpotCRM(hubspot_settings(hs, tmp_path), timeout=0.3) as crm:
        ticket_id = crm.create_ticket(draft())

    assert list(hs.tickets) == [ticket_id]
    assert hs.count(CREATE_TICKET) == 1
    assert hs.count(READ_TICKET, id="req_abc") == 1


def test_ticket_create_retried_after_a_lost_answer_gets_hubspots_409_and_the_ticket(
        hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    # The ticket is made, the answer lost, and the look-up before the retry misses it:
    # the unique handler_request_id still refuses a second ticket.
    hs.fail_next(CREATE_TICKET, action="apply_then_drop")
    hs.fail_next(READ_TICKET, id="req_abc", status=404, policy=None,
                 body={"status": "error", "message": "Object not found.",
                       "correlationId": "c-2", "category": "OBJECT_NOT_FOUND"})

    ticket_id = crm.create_ticket(draft())

    assert list(hs.tickets) == [ticket_id]
    assert [r.status for r in hs.calls(CREATE_TICKET)] == [0, 409]


def test_daily_limit_is_not_retried(hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    hs.fail_next(CREATE_TICKET, times=5, status=429, policy="DAILY")

    with pytest.raises(ServiceError) as caught:
        crm.create_ticket(draft())

    assert caught.value.transient is False
    assert "daily" in str(caught.value)
    assert hs.count(CREATE_TICKET) == 1


def test_server_errors_are_retried_three_times_then_reported(hs: FakeHubSpot,
                                                             crm: HubSpotCRM) -> None:
    ticket_id = hs.add("tickets", {"subject": "x", "hs_pipeline": "0", "hs_pipeline_stage": "1"})
    hs.fail_next(UPDATE_TICKET, times=4, id=ticket_id, status=502, body={
        "status": "error", "message": "Bad gateway", "correlationId": "corr-502",
        "category": "INTERNAL_ERROR"})

    with pytest.raises(ServiceError) as caught:
        crm.update_ticket(ticket_id, {"validation_status": "validated"})

    assert caught.value.transient is True
    assert caught.value.service == "hubspot"
    assert "Bad gateway" in str(caught.value) and "corr-502" in str(caught.value)
    assert hs.count(UPDATE_TICKET) == 4


def test_a_server_error_then_success_is_transparent(hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    ticket_id = hs.add("tickets", {"subject": "x", "hs_pipeline": "0", "hs_pipeline_stage": "1"})
    hs.fail_next(UPDATE_TICKET, id=ticket_id, status=503, body="<html>503</html>")

    crm.update_ticket(ticket_id, {"validation_status": "validated"})

    assert hs.tickets[ticket_id]["properties"]["validation_status"] == "validated"


def test_refused_property_value_is_named_in_french_and_not_retried(
        hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    ticket_id = hs.add("tickets", {"subject": "x", "hs_pipeline": "0", "hs_pipeline_stage": "1"})

    with pytest.raises(ServiceError) as caught:
        crm.update_ticket(ticket_id, {"validation_status": "maybe"})

    assert caught.value.transient is False
    assert str(caught.value).startswith(
        "hubspot: La propriété HubSpot « validation_status » refuse la valeur « maybe » "
        "(INVALID_OPTION : maybe was not one of the allowed options")
    assert "HTTP 400" in str(caught.value)  # HubSpot's own words follow, for the operator
    assert hs.count(UPDATE_TICKET) == 1


def test_a_number_property_refusing_text_names_the_property_and_the_value(
        hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    with pytest.raises(ServiceError) as caught:
        crm.create_ticket(draft(credits_estimes="deux"))

    assert "La propriété HubSpot « credits_estimes » refuse la valeur « deux »" in str(
        caught.value)
    assert caught.value.transient is False
    assert hs.count(CREATE_TICKET) == 1 and hs.tickets == {}


def test_a_portal_validation_rule_is_a_permanent_error_naming_the_property(
        hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    # 2026-09 applies the rules an admin set in HubSpot to API writes too.
    hs.require("tickets", "hs_ticket_category", when=("hs_ticket_priority", "HIGH"))
    crm.create_ticket(draft("req_medium"))  # the rule does not apply

    with pytest.raises(ServiceError) as caught:
        crm.create_ticket(TicketDraft("req_high", "Sujet", "Texte", "HIGH", None))

    assert caught.value.transient is False
    assert ("La propriété HubSpot « hs_ticket_category » est exigée par une règle de "
            "validation du portail (REQUIRED_PROPERTY : hs_ticket_category is required)") in str(
        caught.value)
    assert hs.count(CREATE_TICKET) == 2


def test_wrong_token_is_refused_once_with_a_hint(hs: FakeHubSpot, tmp_path: Path) -> None:
    settings = hubspot_settings(hs, tmp_path, hubspot_access_token="pat-wrong")
    with HubSpotCRM(settings) as crm, pytest.raises(ServiceError) as caught:
        crm.find_ticket("req_abc")

    assert caught.value.transient is False
    assert "401" in str(caught.value) and "HUBSPOT_ACCESS_TOKEN" in str(caught.value)
    assert "service key (Development → Keys → Service keys)" in str(caught.value)
    assert hs.count() == 1


def test_a_missing_scope_is_named_with_where_to_add_it(tmp_path: Path) -> None:
    scopes = {"tickets", "crm.objects.contacts.read"}  # no crm.objects.contacts.write
    with (hubspot_server(scopes=scopes) as hs, HubSpotCRM(hubspot_settings(hs, tmp_path)) as crm,
          pytest.raises(ServiceError) as caught):
        crm.find_or_create_contact("marie@example.fr", "Marie", "Dupont")

    assert caught.value.transient is False
    assert "HTTP 403 MISSING_SCOPES" in str(caught.value)
    assert ("the service key lacks the scope crm.objects.contacts.write: add it to the key in "
            "HubSpot (Development → Keys → Service keys)") in str(caught.value)
    assert hs.count(CREATE_CONTACT) == 1  # not retried


def test_hubspot_down_is_a_transient_error(tmp_path: Path) -> None:
    with hubspot_server() as hs:
        settings = hubspot_settings(hs, tmp_path)
    # the server is stopped: connections are refused
    with HubSpotCRM(settings) as crm, pytest.raises(ServiceError) as caught:
        crm.find_ticket("req_abc")

    assert caught.value.transient is True
    assert "4 attempts" in str(caught.value)


def test_update_then_get_ticket(hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    contact = hs.add("contacts", {"email": "marie@example.fr"})
    ticket_id = crm.create_ticket(draft(contact_id=contact, validation_status="pending_info"))

    crm.update_ticket(ticket_id, {"validation_status": "pending_credits", "credits_estimes": "2"})
    ticket = crm.get_ticket(ticket_id)

    assert hs.calls(UPDATE_TICKET)[0].body == {
        "properties": {"validation_status": "pending_credits", "credits_estimes": "2"}}
    assert ticket["validation_status"] == "pending_credits"
    assert ticket["credits_estimes"] == "2"
    assert ticket["request_id"] == "req_abc"
    assert ticket["contact_id"] == contact
    assert "clickup_subtask_id" not in ticket  # no value: no key, as in the local CRM


def test_get_unknown_ticket_is_a_non_transient_error(crm: HubSpotCRM) -> None:
    with pytest.raises(ServiceError) as caught:
        crm.get_ticket("999999")

    assert caught.value.transient is False and "404" in str(caught.value)


# -- notes and e-mails -----------------------------------------------------------------------


def test_note_is_added_to_the_ticket(hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    ticket_id = crm.create_ticket(draft())

    crm.add_note(ticket_id, "Fichier trop lourd, non stocké : scan.zip")

    (note_id,) = hs.associated("tickets", ticket_id, "notes")
    assert hs.notes[note_id]["properties"]["hs_note_body"] == (
        "Fichier trop lourd, non stocké : scan.zip")
    assert ("notes", note_id, "tickets", ticket_id, NOTE_TO_TICKET) in hs.associations


def test_note_whose_answer_was_lost_is_not_added_twice(hs: FakeHubSpot,
                                                       crm: HubSpotCRM) -> None:
    ticket_id = crm.create_ticket(draft())
    hs.fail_next(CREATE_NOTE, action="apply_then_drop")

    crm.add_note(ticket_id, "Relance envoyée")

    assert len(hs.notes) == 1
    assert hs.count(CREATE_NOTE) == 1
    # found again through the ticket's notes, read with the batch associations call
    assert hs.calls("read associations tickets->notes")[0].body == {"inputs": [{"id": ticket_id}]}


def test_log_email_records_one_engagement_on_the_ticket(hs: FakeHubSpot,
                                                       crm: HubSpotCRM) -> None:
    ticket_id = crm.create_ticket(draft())

    crm.log_email(ticket_id, email("<abc@valione-services.com>"))

    assert hs.count(CREATE_EMAIL) == 1
    (email_id,) = hs.associated("tickets", ticket_id, "emails")
    props = hs.emails[email_id]["properties"]
    assert props["hs_email_direction"] == "EMAIL"
    assert props["hs_email_status"] == "SENT"
    assert props["hs_email_subject"] == "Votre demande"
    assert props["hs_email_text"] == "Bonjour Marie"
    assert props["hs_timestamp"] == "2026-03-02T09:00:00.000Z"
    headers = json.loads(props["hs_email_headers"])
    assert headers["from"]["email"] == "no-reply@valione-services.com"
    assert headers["to"] == [{"email": "marie@example.fr", "firstName": "Marie",
                              "lastName": "Dupont"}]
    assert headers["Message-Id"] == "<abc@valione-services.com>"
    assert ("emails", email_id, "tickets", ticket_id, EMAIL_TO_TICKET) in hs.associations


def test_email_log_whose_answer_was_lost_is_not_logged_twice(hs: FakeHubSpot,
                                                            crm: HubSpotCRM) -> None:
    ticket_id = crm.create_ticket(draft())
    crm.log_email(ticket_id, email("<first@valione-services.com>"))
    hs.fail_next(CREATE_EMAIL, action="apply_then_drop")

    crm.log_email(ticket_id, email("<second@valione-services.com>", minutes=5))

    assert len(hs.emails) == 2
    assert hs.count(CREATE_EMAIL) == 2


# -- the ticket link -------------------------------------------------------------------------


def test_portal_id_is_fetched_once_and_cached_for_later_runs(hs: FakeHubSpot,
                                                             tmp_path: Path) -> None:
    settings = hubspot_settings(hs, tmp_path)
    with HubSpotCRM(settings) as first:
        url = first.ticket_url("20001")
        first.ticket_url("20002")
    with HubSpotCRM(settings) as second:
        assert second.ticket_url("20001") == url

    assert url == f"https://app.hubspot.com/contacts/{hs.portal_id}/record/0-5/20001"
    assert hs.count("account details") == 1


def test_ticket_link_uses_the_accounts_ui_domain(tmp_path: Path) -> None:
    with hubspot_server(ui_domain="app-eu1.hubspot.com") as hs, \
            HubSpotCRM(hubspot_settings(hs, tmp_path)) as crm:
        assert crm.ticket_url("7").startswith("https://app-eu1.hubspot.com/contacts/")


def test_portal_id_from_settings_needs_no_call(hs: FakeHubSpot, tmp_path: Path) -> None:
    settings = hubspot_settings(hs, tmp_path, hubspot_portal_id="123456")
    with HubSpotCRM(settings) as crm:
        assert crm.ticket_url("42") == "https://app.hubspot.com/contacts/123456/record/0-5/42"

    assert hs.count() == 0


# -- what the poll reads ---------------------------------------------------------------------


def test_waiting_tickets_page_through_search_within_its_rate(hs: FakeHubSpot,
                                                            crm: HubSpotCRM) -> None:
    for i in range(450):
        status = ("pending_info", "pending_credits")[i % 2]
        hs.add("tickets", {"subject": f"t{i}", "hs_pipeline": "0", "hs_pipeline_stage": "1",
                           "validation_status": status, "handler_request_id": f"req_{i}"})
    for i in range(30):
        hs.add("tickets", {"subject": f"done{i}", "validation_status": "validated"})

    waiting = crm.waiting_tickets(("pending_info", "pending_credits"))

    assert len(waiting) == 450
    assert {w.validation_status for w in waiting} == {"pending_info", "pending_credits"}
    assert waiting[0].request_id == "req_0" and waiting[0].properties["subject"] == "t0"
    searches = hs.calls(SEARCH)
    assert [s.body["after"] for s in searches] == ["0", "200", "400"]
    assert all(s.body["limit"] == 200 for s in searches)
    gaps = [b.at - a.at for a, b in zip(searches, searches[1:], strict=False)]
    assert min(gaps) >= SEARCH_INTERVAL_SECONDS - 0.01


def test_search_secondly_limit_is_backed_off_and_retried(hs: FakeHubSpot,
                                                        crm: HubSpotCRM) -> None:
    hs.add("tickets", {"subject": "t", "validation_status": "pending_info"})
    hs.fail_next(SEARCH, status=429, policy="SECONDLY")

    assert len(crm.waiting_tickets(("pending_info",))) == 1
    assert [r.status for r in hs.calls(SEARCH)] == [429, 200]


def test_incoming_emails_cost_calls_per_page_not_per_ticket(hs: FakeHubSpot,
                                                           crm: HubSpotCRM) -> None:
    tickets = [hs.add("tickets", {"subject": f"t{i}"}) for i in range(1000)]
    ten_o_clock_ms = int(datetime(2026, 3, 2, 10, 0, tzinfo=UTC).timestamp() * 1000)
    known: set[str] = set()
    expected: dict[str, list[str]] = {}
    for n, ticket in enumerate(tickets[:260]):
        out = hs.add("emails", {"hs_email_direction": "EMAIL", "hs_timestamp":
                                "2026-03-02T09:00:00.000Z"}, [("tickets", ticket, 224)])
        late = hs.add("emails", {
            "hs_email_direction": "INCOMING_EMAIL", "hs_timestamp": "2026-03-02T11:00:00.000Z",
            "hs_email_text": "Je valide", "hs_email_subject": "Re: Votre demande",
            "hs_email_headers": json.dumps({
                "from": {"email": "marie@example.fr"}, "to": [{"email": "no-reply@v.fr"}],
                "Message-Id": f"<late{n}@example.fr>", "In-Reply-To": "<q@v.fr>"})},
            [("tickets", ticket, 224)])
        early = hs.add("emails", {  # HubSpot may give epoch milliseconds too
            "hs_email_direction": "INCOMING_EMAIL", "hs_timestamp": str(ten_o_clock_ms),
            "hs_email_text": "Une question ?", "hs_email_from_email": "marie@example.fr",
            "hs_attachment_ids": "111;222"}, [("tickets", ticket, 224)])
        if n < 100:  # handled by an earlier poll
            known.add(late)
        expected[ticket] = [early] if n < 100 else [early, late]
        if n % 2:
            known.add(out)

    found = crm.incoming_emails(tickets, known)

    assert hs.count(ASSOCIATIONS_READ) == 1
    unknown = 260 * 3 - len(known)
    assert hs.count(EMAILS_READ) == math.ceil(unknown / 100)
    assert all(len(c.body["inputs"]) <= 100 for c in hs.calls(EMAILS_READ))
    assert {t: [r.crm_id for r in records] for t, records in found.items() if records} == (
        expected)
    assert found[tickets[999]] == []
    early_record, late_record = found[tickets[150]]
    assert early_record.at < late_record.at
    assert early_record.direction == "INCOMING"
    assert early_record.message_id == f"hubspot-{early_record.crm_id}"
    assert early_record.attachments == ("111", "222")
    assert early_record.sender == "marie@example.fr"
    assert late_record.message_id == "<late150@example.fr>"
    assert late_record.in_reply_to == "<q@v.fr>"
    assert (late_record.text, late_record.subject) == ("Je valide", "Re: Votre demande")
    assert late_record.to == "no-reply@v.fr"


def test_incoming_emails_follow_association_paging(hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    ticket = hs.add("tickets", {"subject": "busy"})
    for i in range(520):
        hs.add("emails", {"hs_email_direction": "INCOMING_EMAIL",
                          "hs_timestamp": f"2026-03-02T09:{i // 60:02d}:{i % 60:02d}.000Z"},
               [("tickets", ticket, 224)])

    found = crm.incoming_emails([ticket], set())

    assert len(found[ticket]) == 520
    reads = hs.calls(ASSOCIATIONS_READ)
    assert [r.body["inputs"] for r in reads] == [[{"id": ticket}],
                                                 [{"id": ticket, "after": "500"}]]
    assert [r.at for r in found[ticket]] == sorted(r.at for r in found[ticket])


def test_no_tickets_no_calls(hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    assert crm.incoming_emails([], set()) == {}
    assert crm.waiting_tickets(()) == []
    assert hs.count() == 0


# -- setup and health ------------------------------------------------------------------------


def test_setup_creates_the_properties_once(tmp_path: Path) -> None:
    with hubspot_server(custom_properties=False) as hs, \
            HubSpotCRM(hubspot_settings(hs, tmp_path)) as crm:
        created = setup_properties(crm)
        again = crm.ensure_properties()
        ticket_id = crm.create_ticket(draft(validation_status="pending_info"))

        assert created == ["group handler_cli", *CUSTOM_PROPERTY_NAMES]
        assert again.created == [] and again.existing == list(CUSTOM_PROPERTY_NAMES)
        assert hs.properties["tickets"]["handler_request_id"]["hasUniqueValue"] is True
        assert {o["value"] for o in hs.properties["tickets"]["validation_status"]["options"]} == {
            "pending_info", "pending_credits", "pending_admin", "validated", "rejected"}
        assert hs.properties["tickets"]["credits_estimes"]["type"] == "number"
        assert crm.create_ticket(draft(validation_status="pending_info")) == ticket_id
        assert hs.count("create ticket property") == len(CUSTOM_PROPERTY_NAMES)


def test_setup_adds_a_missing_status_option_and_flags_a_non_unique_request_id(
        hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    props = hs.properties["tickets"]
    props["validation_status"]["options"] = [
        o for o in props["validation_status"]["options"] if o["value"] != "rejected"]
    props["handler_request_id"]["hasUniqueValue"] = False

    report = crm.ensure_properties()

    assert report.created == []
    assert report.updated == ["validation_status (options rejected)"]
    assert "rejected" in {o["value"] for o in props["validation_status"]["options"]}
    assert any("handler_request_id" in w for w in report.warnings)


def test_describe_makes_no_call(hs: FakeHubSpot, crm: HubSpotCRM) -> None:
    assert crm.describe().startswith(f"HubSpot at {hs.url}")
    assert hs.count() == 0


def test_setup_command_exit_codes(tmp_path: Path) -> None:
    from handler_cli.commands.setup import app

    runner = CliRunner()
    base = {"HANDLER_DATA_DIR": str(tmp_path), "HANDLER_ENV_FILE": str(tmp_path / "no.env"),
            "HUBSPOT_ACCESS_TOKEN": "", "HANDLER_RETRY_BASE_SECONDS": str(RETRY_BASE)}

    unconfigured = runner.invoke(app, ["hubspot"], env=base)
    assert unconfigured.exit_code == 2
    assert "HUBSPOT_ACCESS_TOKEN to a HubSpot service key" in unconfigured.stderr
    assert "crm.schemas.tickets.write" in unconfigured.stderr

    with hubspot_server(custom_properties=False) as hs:
        first = runner.invoke(app, ["hubspot"], env={**base, **hs.environ()})
        second = runner.invoke(app, ["hubspot"], env={**base, **hs.environ()})
        refused = runner.invoke(app, ["hubspot"], env={
            **base, **hs.environ(), "HUBSPOT_ACCESS_TOKEN": "pat-wrong"})

    assert first.exit_code == 0, first.stderr
    assert "created handler_request_id" in first.stderr and first.stdout == ""
    assert second.exit_code == 0
    assert "nothing to create" in second.stderr
    assert re.search(r"already there: validation_status, .*handler_replies_handled",
                     second.stderr)
    assert refused.exit_code == 1 and "401" in refused.stderr


def test_context_uses_hubspot_when_a_token_is_set(hs: FakeHubSpot, tmp_path: Path) -> None:
    from handler_cli.context import Context

    crm = Context(hubspot_settings(hs, tmp_path)).crm

    assert isinstance(crm, HubSpotCRM) and crm.name == "hubspot"
    assert hs.count() == 0  # built lazily, no call until used


def test_our_own_emails_are_never_read_again_by_the_poll(hs: FakeHubSpot,
                                                         crm: HubSpotCRM) -> None:
    tickets = [hs.add("tickets", {"subject": f"t{i}"}) for i in range(120)]
    for n, ticket in enumerate(tickets):  # the quote `run` logged on each ticket
        crm.log_email(ticket, email(f"<q{n}@v.fr>"))
    stranger = hs.add("emails", {"hs_email_direction": "FORWARDED_EMAIL", "hs_timestamp":
                                 "2026-03-02T09:00:00.000Z"}, [("tickets", tickets[0], 224)])

    crm.incoming_emails(tickets, set())
    # Only the e-mail we did not log was read, once; it is remembered as not the client's.
    (read,) = hs.calls(EMAILS_READ)
    assert [i["id"] for i in read.body["inputs"]] == [stranger]

    again = HubSpotCRM(crm.settings, timeout=2.0)  # a later poll, a new process
    assert again.incoming_emails(tickets, set()) == {t: [] for t in tickets}
    assert hs.count(EMAILS_READ) == 1


def test_batch_answers_with_errors_are_200_and_only_real_problems_are_logged(
        hs: FakeHubSpot, crm: HubSpotCRM, caplog: pytest.LogCaptureFixture) -> None:
    quiet = hs.add("tickets", {"subject": "no e-mail yet"})

    assert crm.incoming_emails([quiet], set()) == {quiet: []}
    (read,) = hs.calls(ASSOCIATIONS_READ)
    assert read.status == 200  # the 2026-09 specs list no 207: `errors` come with a 200
    assert "hubspot" not in caplog.text

    hs.fail_next(ASSOCIATIONS_READ, status=200, policy=None, body={
        "status": "COMPLETE", "results": [], "startedAt": "2026-11-01T00:00:00Z",
        "completedAt": "2026-11-01T00:00:01Z", "numErrors": 1, "errors": [{
            "status": "error", "category": "INTERNAL_ERROR", "message": "shard unavailable",
            "context": {}, "errors": [], "links": {}}]})
    assert crm.incoming_emails([quiet], set()) == {quiet: []}
    assert "INTERNAL_ERROR shard unavailable" in caplog.text


def test_setup_with_a_key_that_cannot_write_ticket_properties_names_the_scope(
        tmp_path: Path) -> None:
    from handler_cli.commands.setup import app

    env = {"HANDLER_DATA_DIR": str(tmp_path), "HANDLER_ENV_FILE": str(tmp_path / "no.env"),
           "HANDLER_RETRY_BASE_SECONDS": str(RETRY_BASE)}
    scopes = ALL_SCOPES - {"crm.schemas.tickets.write"}
    with hubspot_server(custom_properties=False, scopes=scopes) as hs:
        refused = CliRunner().invoke(app, ["hubspot"], env={**env, **hs.environ()})

    assert refused.exit_code == 1
    assert "lacks the scope crm.schemas.tickets.write" in refused.stderr
    assert hs.properties["tickets"].keys().isdisjoint(CUSTOM_PROPERTY_NAMES)
