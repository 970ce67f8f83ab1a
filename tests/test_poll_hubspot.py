"""The poll on HubSpot: replies read from the tickets' e-mails on the loopback stand-in."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from handler_cli.config import load_settings
from handler_cli.context import Context
from handler_cli.document import Document, SentEmail
from handler_cli.pipeline import run_chain
from handler_cli.poll import Journal, poll
from handler_cli.replies import source_names
from tests import poll_kit
from tests.conftest import clean_environ, sample
from tests.fakes.hubspot import FakeHubSpot
from tests.peers import SMTPPeer
from tests.poll_kit import subtasks

EMAIL_TO_TICKET = 224
TICKET_TO_CONTACT = 16
EMAIL_TO_CONTACT = 198
EMAIL_READS = "batch read e-mails"


hubspot, relay = poll_kit.hubspot, poll_kit.relay  # the fixtures


@pytest.fixture
def environ(tmp_path: Path, hubspot: FakeHubSpot, relay: SMTPPeer) -> dict[str, str]:
    return clean_environ(tmp_path / "data", **hubspot.environ(), SMTP_HOST=relay.host,
                         SMTP_PORT=str(relay.port), SMTP_SECURITY="none",
                         HANDLER_RETRY_BASE_SECONDS="0.01")


def context(environ: dict[str, str]) -> Context:
    return Context(load_settings(environ=environ))


def intake(environ: dict[str, str]) -> Document:
    doc = Document.model_validate(sample("modelisation_simple"))
    run_chain(doc, context(environ))
    assert doc.ticket_id and doc.validation_status == "pending_credits"
    return doc


def client_writes(hubspot: FakeHubSpot, doc: Document, text: str, n: int = 1) -> str:
    """An INCOMING_EMAIL on the ticket, as HubSpot's inbox logs a client's answer."""
    assert doc.ticket_id
    return hubspot.add("emails", {
        "hs_timestamp": (datetime.now(UTC) + timedelta(seconds=n)).isoformat(),
        "hs_email_direction": "INCOMING_EMAIL", "hs_email_subject": "Re: votre devis",
        "hs_email_text": text, "hs_email_from_email": doc.user_email,
        "hs_email_headers": json.dumps({"Message-Id": f"<answer-{n}@mail.example.fr>",
                                        "In-Reply-To": doc.emails["client"].message_id}),
    }, associations=[("tickets", doc.ticket_id, EMAIL_TO_TICKET)])


def read_ids(hubspot: FakeHubSpot) -> set[str]:
    return {i["id"] for r in hubspot.calls(EMAIL_READS) for i in r.body["inputs"]}


def assert_not_read_again(environ: dict[str, str], hubspot: FakeHubSpot, email_id: str) -> None:
    """The next pass has nothing to do, and never asks HubSpot for that e-mail again."""
    hubspot.requests.clear()
    assert poll(context(environ)).outcomes == []
    assert email_id not in read_ids(hubspot)


def test_hubspot_is_the_default_reply_source_when_hubspot_is_live(
    environ: dict[str, str]
) -> None:
    assert source_names(context(environ)) == ["hubspot"]


def test_a_reply_in_hubspot_validates_and_is_recorded_on_the_ticket(
    environ: dict[str, str], hubspot: FakeHubSpot, relay: SMTPPeer
) -> None:
    doc = intake(environ)
    email_id = client_writes(hubspot, doc, "Je valide, vous pouvez y aller.")

    report = poll(context(environ))

    assert report.ok, report.failures
    (outcome,) = report.outcomes
    assert outcome.status == "validated" and outcome.actions[0]["source"] == "hubspot"
    props = hubspot.tickets[doc.ticket_id or ""]["properties"]
    assert props["validation_status"] == "validated"
    assert props["handler_replies_handled"] == email_id
    (task,) = subtasks(environ)
    assert props["clickup_subtask_id"] == task[0]
    # The confirmation to the client is logged on the ticket like every e-mail we send.
    logged = [e["properties"]["hs_email_subject"] for e in hubspot.emails.values()]
    assert any("Devis validé" in s for s in logged)

    assert_not_read_again(environ, hubspot, email_id)


def test_a_question_is_not_read_again_even_if_the_local_journal_is_lost(
    environ: dict[str, str], hubspot: FakeHubSpot, relay: SMTPPeer
) -> None:
    doc = intake(environ)
    email_id = client_writes(hubspot, doc, "Bonjour, quel est le délai de livraison ?")
    poll(context(environ))
    forwarded = [m for m in relay.received if "admin_question_" in str(m.message["Message-ID"])]
    assert len(forwarded) == 1
    (Path(environ["HANDLER_DATA_DIR"]) / "poll.sqlite3").unlink()
    hubspot.requests.clear()

    report = poll(context(environ))

    assert report.ok and report.outcomes == []
    assert email_id not in read_ids(hubspot)  # the ticket's own record says it was handled
    assert hubspot.tickets[doc.ticket_id or ""]["properties"]["validation_status"] == (
        "pending_credits")


def test_a_hubspot_outage_mid_action_is_finished_by_the_next_poll(
    environ: dict[str, str], hubspot: FakeHubSpot, relay: SMTPPeer
) -> None:
    doc = intake(environ)
    client_writes(hubspot, doc, "Non merci, trop cher.")
    hubspot.fail_next("update ticket", times=20, status=503)

    report = poll(context(environ))

    assert not report.ok
    journal = Journal(Path(environ["HANDLER_DATA_DIR"]) / "poll.sqlite3")
    assert [row[2:] for row in journal.actions(doc.ticket_id or "")] == [("rejected", "acting")]
    hubspot.faults.clear()

    report = poll(context(environ))

    assert report.ok, report.failures
    (outcome,) = report.outcomes
    assert outcome.actions[0]["resumed"] is True and outcome.status == "rejected"
    assert hubspot.tickets[doc.ticket_id or ""]["properties"]["validation_status"] == "rejected"
    refusals = [m for m in relay.received if ".admin_refused@" in str(m.message["Message-ID"])]
    assert len(refusals) == 1
    assert poll(context(environ)).outcomes == []


def waiting_ticket(hubspot: FakeHubSpot, ctx: Context, n: int, sent: datetime) -> str:
    """A ticket waiting for its client's answer to a quote sent at `sent`, as `run` leaves it:
    associated with the client's contact, the quote logged on it."""
    request_id = f"req_quiet_{n:04d}"
    contact = hubspot.add("contacts", {"email": f"c{n}@example.fr"})
    ticket_id = hubspot.add("tickets", {
        "subject": f"Objet {n}", "content": "-", "hs_pipeline": "0",
        "hs_pipeline_stage": "1", "validation_status": "pending_credits",
        "handler_request_id": request_id,
    }, [("contacts", contact, TICKET_TO_CONTACT)])
    quote = f"<{request_id}.client@valione-services.com>"
    hubspot.add("emails", {"hs_email_direction": "EMAIL", "hs_timestamp": sent.isoformat(),
                           "hs_email_headers": json.dumps({"Message-Id": quote})},
                [("tickets", ticket_id, EMAIL_TO_TICKET)])
    ctx.documents.save(Document(
        source="modelisation", objet=f"Objet {n}", description="Un vase, 30 cm.",
        user_email=f"c{n}@example.fr", user_name=f"Client {n}", request_id=request_id,
        type_final="MODELISATION", ticket_id=ticket_id, validation_status="pending_credits",
        credits_estimes=1, emails={"client": SentEmail(
            message_id=quote, to=f"c{n}@example.fr", subject="devis",
            template="client_quote_1", sent_at=sent)}))
    return contact


def test_a_quiet_poll_over_1000_waiting_tickets_costs_at_most_10_hubspot_calls(
    environ: dict[str, str], hubspot: FakeHubSpot
) -> None:
    ctx = context(environ)
    sent = datetime.now(UTC) - timedelta(days=1)
    for n in range(1000):
        contact = waiting_ticket(hubspot, ctx, n, sent)
        # the contact's history: a message from last year, logged by a connected inbox
        hubspot.add("emails", {"hs_email_direction": "INCOMING_EMAIL", "hs_timestamp":
                               (sent - timedelta(days=365)).isoformat(), "hs_email_text": "?"},
                    [("contacts", contact, EMAIL_TO_CONTACT)])
    first = poll(ctx)  # reads each e-mail once: our quotes and the old history
    assert first.ok and first.waiting == 1000 and first.outcomes == []
    hubspot.requests.clear()

    report = poll(ctx)

    assert report.ok and report.waiting == 1000 and report.outcomes == []
    assert {op: hubspot.count(op) for op in {r.op for r in hubspot.requests}} == {
        "search tickets": 5,  # 200 a page
        "read associations tickets->emails": 1,  # 1,000 inputs a call
        "read associations tickets->contacts": 1,
        "read associations contacts->emails": 1,
    }
    assert hubspot.count() == 8 <= 10


# -- replies logged on the contact by a connected inbox ------------------------------------


def contact_of(hubspot: FakeHubSpot, doc: Document) -> str:
    (contact,) = hubspot.associated("tickets", doc.ticket_id or "", "contacts")
    return contact


def inbox_logs(hubspot: FakeHubSpot, doc: Document, text: str, *, headers: dict[str, str],
               subject: str = "Re: votre devis", minutes: int = 1) -> str:
    """An INCOMING_EMAIL a connected inbox logged on the client's contact only."""
    return hubspot.add("emails", {
        "hs_timestamp": (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat(),
        "hs_email_direction": "INCOMING_EMAIL", "hs_email_subject": subject,
        "hs_email_text": text, "hs_email_from_email": doc.user_email,
        "hs_email_headers": json.dumps(headers),
    }, associations=[("contacts", contact_of(hubspot, doc), EMAIL_TO_CONTACT)])


def test_a_reply_logged_only_on_the_contact_is_matched_by_in_reply_to(
    environ: dict[str, str], hubspot: FakeHubSpot, relay: SMTPPeer
) -> None:
    doc = intake(environ)
    email_id = inbox_logs(hubspot, doc, "Je valide, merci.", headers={
        "Message-Id": "<r1@mail.example.fr>", "In-Reply-To": doc.emails["client"].message_id})

    report = poll(context(environ))

    assert report.ok, report.failures
    (outcome,) = report.outcomes
    assert outcome.status == "validated" and outcome.actions[0]["source"] == "hubspot"
    props = hubspot.tickets[doc.ticket_id or ""]["properties"]
    assert props["validation_status"] == "validated"
    assert props["handler_replies_handled"] == email_id
    assert_not_read_again(environ, hubspot, email_id)


def test_a_reply_on_the_contact_citing_the_ticket_in_its_subject_is_matched(
    environ: dict[str, str], hubspot: FakeHubSpot, relay: SMTPPeer
) -> None:
    doc = intake(environ)
    inbox_logs(hubspot, doc, "Non merci, c'est trop cher.", headers={},
               subject=f"Re: [Ticket #{doc.ticket_id}] Votre devis")

    (outcome,) = poll(context(environ)).outcomes

    assert outcome.status == "rejected"


def test_an_unrelated_or_older_email_on_the_contact_is_not_a_reply(
    environ: dict[str, str], hubspot: FakeHubSpot, relay: SMTPPeer
) -> None:
    doc = intake(environ)
    unrelated = inbox_logs(hubspot, doc, "Je valide", subject="Autre sujet",
                           headers={"Message-Id": "<other@mail.example.fr>"})
    older = inbox_logs(hubspot, doc, "Je valide", minutes=-60 * 24, headers={
        "In-Reply-To": doc.emails["client"].message_id})

    assert poll(context(environ)).outcomes == []
    assert hubspot.tickets[doc.ticket_id or ""]["properties"]["validation_status"] == (
        "pending_credits")
    hubspot.requests.clear()
    poll(context(environ))
    # The older one is remembered with its date and never read again; the unrelated one is
    # read again while a ticket of that contact waits: only its headers can rule it out.
    assert older not in read_ids(hubspot) and unrelated in read_ids(hubspot)


def test_two_waiting_tickets_of_one_contact_each_get_their_own_reply(
    environ: dict[str, str], hubspot: FakeHubSpot, relay: SMTPPeer
) -> None:
    first = intake(environ)
    second_doc = Document.model_validate({**sample("modelisation_simple"),
                                          "objet": "Une seconde pièce"})
    run_chain(second_doc, context(environ))
    assert contact_of(hubspot, first) == contact_of(hubspot, second_doc)
    inbox_logs(hubspot, second_doc, "Je valide", headers={
        "Message-Id": "<r2@mail.example.fr>",
        "In-Reply-To": second_doc.emails["client"].message_id})

    report = poll(context(environ))

    assert [(o.ticket_id, o.status) for o in report.outcomes] == [
        (second_doc.ticket_id, "validated")]
    assert hubspot.tickets[first.ticket_id or ""]["properties"]["validation_status"] == (
        "pending_credits")
