"""The poll on HubSpot: replies read from the tickets' e-mails on the loopback stand-in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from handler_cli.config import load_settings
from handler_cli.context import Context
from handler_cli.document import Document, SentEmail
from handler_cli.pipeline import run_chain
from handler_cli.poll import Journal, poll
from handler_cli.replies import source_names
from handler_cli.services.tasks.local import LocalTaskBoard
from tests.conftest import clean_environ, sample
from tests.fakes.clickup import DEFAULT_PARENT_ID
from tests.fakes.hubspot import FakeHubSpot, hubspot_server
from tests.peers import SMTPPeer, smtp_server

EMAIL_TO_TICKET = 224
EMAIL_READS = "batch read e-mails"


@pytest.fixture
def hubspot() -> Iterator[FakeHubSpot]:
    with hubspot_server() as fake:
        yield fake


@pytest.fixture
def relay() -> Iterator[SMTPPeer]:
    with smtp_server() as peer:
        yield peer


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


def subtasks(environ: dict[str, str]) -> list[tuple[str, str, str]]:
    board = LocalTaskBoard(Path(environ["HANDLER_DATA_DIR"]) / "tasks.sqlite3")
    return board.subtasks(DEFAULT_PARENT_ID)


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

    hubspot.requests.clear()
    assert poll(context(environ)).outcomes == []
    assert email_id not in read_ids(hubspot)


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


def test_many_quiet_waiting_tickets_cost_pages_not_tickets(
    environ: dict[str, str], hubspot: FakeHubSpot
) -> None:
    ctx = context(environ)
    sent = datetime.now(UTC) - timedelta(days=1)
    for n in range(450):
        request_id = f"req_quiet_{n:04d}"
        ticket_id = hubspot.add("tickets", {
            "subject": f"Objet {n}", "content": "-", "hs_pipeline": "0",
            "hs_pipeline_stage": "1", "validation_status": "pending_credits",
            "handler_request_id": request_id,
        })
        ctx.documents.save(Document(
            source="modelisation", objet=f"Objet {n}", description="Un vase, 30 cm.",
            user_email=f"c{n}@example.fr", user_name=f"Client {n}", request_id=request_id,
            type_final="MODELISATION", ticket_id=ticket_id, validation_status="pending_credits",
            credits_estimes=1, emails={"client": SentEmail(
                message_id=f"<{request_id}.client@valione-services.com>", to="x",
                subject="devis", template="client_quote_1", sent_at=sent)}))
    hubspot.requests.clear()

    report = poll(ctx)

    assert report.ok and report.waiting == 450 and report.outcomes == []
    assert hubspot.count("search tickets") == 3  # 200 a page
    assert hubspot.count() == 4  # and one associations batch read for all of them
