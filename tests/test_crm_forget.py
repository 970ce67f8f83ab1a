"""`CRM.forget_contact`: the GDPR erasure `handler-cli forget --crm` calls, on both backends.

HubSpot's is its GDPR delete (`POST /crm/objects/2026-09/contacts/gdpr-delete`, held to the
2026-09 contacts spec by the stand-in); the local CRM mirrors it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from handler_cli.config import load_settings
from handler_cli.services import EmailRecord, ServiceError, TicketDraft
from handler_cli.services.crm.hubspot import HubSpotCRM
from handler_cli.services.crm.local import LocalCRM
from tests.fakes.hubspot import ALL_SCOPES, FakeHubSpot, hubspot_server

MARIE = "Marie.Dupont@example.fr"


def hubspot(hs: FakeHubSpot, tmp_path: Path) -> HubSpotCRM:
    return HubSpotCRM(load_settings(environ={
        "HANDLER_DATA_DIR": str(tmp_path), "HANDLER_ENV_FILE": str(tmp_path / "no.env"),
        "HANDLER_RETRY_BASE_SECONDS": "0.01", **hs.environ()}), timeout=2.0)


def email(sender: str, to: str, n: int) -> EmailRecord:
    return EmailRecord(f"<m{n}@v.fr>", "INCOMING", sender, to, "Re: devis", "Je valide",
                       datetime(2026, 11, 2, 9, n, tzinfo=UTC))


@pytest.fixture
def hs() -> Iterator[FakeHubSpot]:
    with hubspot_server() as fake:
        yield fake


def test_hubspot_erases_the_contact_by_id_with_its_gdpr_delete(hs: FakeHubSpot,
                                                               tmp_path: Path) -> None:
    contact = hs.add("contacts", {"email": MARIE.lower(), "firstname": "Marie"})
    other = hs.add("contacts", {"email": "jean@example.fr"})
    logged = hs.add("emails", {"hs_email_direction": "INCOMING_EMAIL"},
                    [("contacts", contact, 198)])
    with hubspot(hs, tmp_path) as crm:
        assert crm.forget_contact(f" {MARIE} ") is True

    (call,) = hs.calls("gdpr delete contact")
    assert call.body == {"objectId": contact}  # by id: no blocklisting of the address
    assert list(hs.contacts) == [other] and logged not in hs.emails
    assert hs.gdpr_deleted == [contact] and hs.blocklist == set()


def test_hubspot_does_not_blocklist_an_address_it_does_not_know(hs: FakeHubSpot,
                                                                 tmp_path: Path) -> None:
    with hubspot(hs, tmp_path) as crm:
        assert crm.forget_contact("nobody@example.fr") is False

    assert hs.count("gdpr delete contact") == 0 and hs.blocklist == set()


def test_hubspot_gdpr_delete_whose_answer_was_lost_is_settled_by_a_look_up(
        hs: FakeHubSpot, tmp_path: Path) -> None:
    contact = hs.add("contacts", {"email": MARIE.lower()})
    hs.fail_next("gdpr delete contact", action="apply_then_drop")
    with hubspot(hs, tmp_path) as crm:
        assert crm.forget_contact(MARIE) is True

    assert hs.count("gdpr delete contact") == 1 and hs.gdpr_deleted == [contact]


def test_hubspot_gdpr_delete_without_the_write_scope_names_it(tmp_path: Path) -> None:
    with hubspot_server(scopes=ALL_SCOPES - {"crm.objects.contacts.write"}) as hs:
        hs.add("contacts", {"email": MARIE.lower()})
        with hubspot(hs, tmp_path) as crm, pytest.raises(ServiceError) as caught:
            crm.forget_contact(MARIE)

    assert caught.value.transient is False
    assert "lacks the scope crm.objects.contacts.write" in str(caught.value)


def test_the_local_crm_erases_the_contact_and_its_emails_and_keeps_the_tickets(
        tmp_path: Path) -> None:
    crm = LocalCRM(tmp_path / "crm.sqlite3")
    marie = crm.find_or_create_contact(MARIE, "Marie", "Dupont")
    jean = crm.find_or_create_contact("jean_pierre@example.fr", "Jean", "Pierre")
    ticket = crm.create_ticket(TicketDraft("req_1", "Sujet", "Texte", "LOW", marie))
    crm.log_email(ticket, email(f"Marie Dupont <{MARIE}>", "studio@v.fr", 1))
    crm.log_email(ticket, email("studio@v.fr", MARIE.lower(), 2))
    crm.log_email(ticket, email("jean_pierre@example.fr", "studio@v.fr", 3))
    crm.log_email(ticket, email("anne.marie.dupont@example.fr.evil", "studio@v.fr", 4))

    assert crm.forget_contact(MARIE) is True
    assert crm.forget_contact(MARIE) is False

    assert crm.get_ticket(ticket)["contact_id"] == ""
    assert [e.sender for e in crm.emails(ticket)] == [
        "jean_pierre@example.fr", "anne.marie.dupont@example.fr.evil"]
    assert crm.find_or_create_contact("jean_pierre@example.fr", "", "") == jean
    assert crm.find_or_create_contact(MARIE, "Marie", "Dupont") not in (marie, jean)
