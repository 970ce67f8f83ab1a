"""No message dropped after a decision (issue 11): a message on a validated, rejected or
pending_admin ticket goes to the admin once, with the ticket link; a change of mind is
flagged; nothing moves by itself; an unsure reading goes to a person; `reply` never promises
what the poll will not do; decided tickets are watched for a bounded time."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from handler_cli.config import load_settings
from handler_cli.context import Context
from handler_cli.document import Document, SentEmail
from handler_cli.poll import Begun, Reading, poll
from handler_cli.replies import Reply
from handler_cli.storage import open_storage
from tests import poll_kit
from tests.conftest import RunCli, clean_environ
from tests.fakes.hubspot import FakeHubSpot
from tests.peers import SMTPPeer
from tests.poll_kit import (
    at,
    body,
    client_says,
    days,
    intake,
    kinds,
    received,
    relay_environ,
    subject,
    subtasks,
    ticket,
)
from tests.postgres import pg_session, pg_url  # noqa: F401 - fixtures

hubspot, relay, environ = poll_kit.hubspot, poll_kit.relay, poll_kit.environ  # the fixtures
TICKET_TO_CONTACT = 16  # HubSpot's association type id


def forwards(relay: SMTPPeer) -> list[str]:
    return [k for k in kinds(relay) if k.startswith("admin_question_")]


def to_client(relay: SMTPPeer, doc: Document) -> int:
    return sum(1 for m in relay.received if m.message["To"].addresses[0].addr_spec
               == doc.user_email)


def test_a_change_of_mind_after_a_refusal_goes_to_the_admin_flagged_and_nothing_else(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)
    client_says(environ, doc, "Non merci, c'est trop cher.", when=days(1))
    poll(at(environ, days(1)))
    assert ticket(environ, doc)["validation_status"] == "rejected"
    sent_to_client = to_client(relay, doc)

    client_says(environ, doc, "Finalement je valide, allez-y.", when=days(3))
    report = poll(at(environ, days(3)))

    (outcome,) = report.outcomes
    assert [a["action"] for a in outcome.actions] == ["forwarded"]
    (kind,) = forwards(relay)
    message = received(relay, kind)
    assert "revient sur son refus" in subject(message)
    text = body(message)
    assert "Finalement je valide" in text and at(environ).crm.ticket_url(doc.ticket_id or "") in text
    # The admin decides: still rejected, no subtask, nothing re-quoted.
    assert ticket(environ, doc)["validation_status"] == "rejected"
    assert subtasks(environ) == [] and to_client(relay, doc) == sent_to_client
    assert poll(at(environ, days(3.5))).outcomes == [] and len(forwards(relay)) == 1


def test_a_question_after_the_validation_reaches_the_admin_once(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)
    client_says(environ, doc, "Je valide", when=days(1))
    poll(at(environ, days(1)))

    client_says(environ, doc, "Merci ! Vous aurez fini avant Noël ?", when=days(4))
    poll(at(environ, days(4)))
    poll(at(environ, days(4.1)))

    (kind,) = forwards(relay)
    assert "Nouveau message du client" in subject(received(relay, kind))
    assert "avant Noël" in body(received(relay, kind))
    assert ticket(environ, doc)["validation_status"] == "validated"
    assert len(subtasks(environ)) == 1


def test_a_message_on_a_case_the_admin_prices_is_forwarded(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = Document.model_validate(json.loads(
        (Path(__file__).parent.parent / "samples" / "admin_case.json").read_text()))
    from handler_cli.pipeline import run_chain

    run_chain(doc, at(environ))
    assert doc.validation_status == "pending_admin"
    client_says(environ, doc, "Avez-vous pu regarder notre demande ?", when=days(2))

    report = poll(at(environ, days(2)))

    assert [a["action"] for o in report.outcomes for a in o.actions] == ["forwarded"]
    assert len(forwards(relay)) == 1
    assert not [k for k in kinds(relay) if k.startswith("reminder")]  # not the client's turn


def test_decided_tickets_are_watched_for_a_bounded_time(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    # Counted from now, not from T0: the documents store stamps a save with its own clock
    # (tests/test_poll_watch.py), so a watch counted on T0 would depend on the day of the run.
    now = datetime.now(UTC)

    def later(n: float) -> datetime:
        return now + timedelta(days=n)

    doc = intake(environ)
    client_says(environ, doc, "Je valide", when=later(1))
    poll(at(environ, later(1), HANDLER_WATCH_DECIDED_DAYS="10"))
    client_says(environ, doc, "Une question sur la livraison ?", when=later(8))
    poll(at(environ, later(8), HANDLER_WATCH_DECIDED_DAYS="10"))
    assert len(forwards(relay)) == 1  # 7 days after the last exchange: read

    client_says(environ, doc, "Et pour la facture ?", when=later(25))
    report = poll(at(environ, later(25), HANDLER_WATCH_DECIDED_DAYS="10"))

    assert report.watched == 0 and report.outcomes == []  # 17 days of quiet: no longer read
    assert len(forwards(relay)) == 1


def test_an_unsure_reading_is_never_acted_on_and_goes_to_the_admin(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)
    client_says(environ, doc, "Hmm, bof.")

    (outcome,) = poll(at(environ, days(1))).outcomes

    (action,) = outcome.actions
    assert action["intent"] == "unclear" and action["action"] == "forwarded"
    assert ticket(environ, doc)["validation_status"] == "pending_credits"
    (kind,) = forwards(relay)
    assert "à lire" in subject(received(relay, kind))


def test_reply_says_what_the_poll_will_do(
    cli: RunCli, relay: SMTPPeer, tmp_path: Path
) -> None:
    env = relay_environ(tmp_path, relay)
    assert cli("run", "samples/modelisation_simple.json", env=env).returncode == 0

    waiting = cli("reply", "1001", "Non merci", env=env)
    assert json.loads(waiting.stdout)["poll"] == "act"
    assert cli("poll", env=env).returncode == 0

    decided = cli("reply", "1001", "Finalement je valide", env=env)
    assert json.loads(decided.stdout)["poll"] == "forward"
    assert "forwards it to the admin" in decided.stderr

    quiet = cli("reply", "1001", "Bonjour ?", env={**env, "HANDLER_WATCH_DECIDED_DAYS": "0"})
    assert json.loads(quiet.stdout)["poll"] == "nothing"
    assert "will not read it" in quiet.stderr


# -- the journal's watch list, on both storage backends ---------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_journal_lists_the_decided_tickets_of_recent_exchanges(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = clean_environ(tmp_path / "data")
    if backend == "postgresql":
        env["HANDLER_DATABASE_URL"] = request.getfixturevalue("pg_url")
    storage = open_storage(load_settings(environ=env))
    journal = storage.journal
    t0 = datetime(2026, 11, 1, tzinfo=UTC)

    def handled(ticket_id: str, key: str, action: str, at: datetime) -> None:
        reply = Reply(ticket_id=ticket_id, key=key, source="local", sender="c@example.fr",
                      subject="Re", text="x", at=at)
        journal.begin(Begun(reply, f"req_{ticket_id}", action,
                            Reading("none", 0.9, "keywords"), "x", False), at)
        journal.finish(reply, at)

    handled("1", "a", "validated", t0)
    handled("2", "b", "rejected", t0)
    handled("2", "c", "forwarded", t0 + timedelta(days=20))  # a later exchange
    handled("3", "d", "question", t0 + timedelta(days=20))  # never decided
    try:
        recent = journal.decided_since(t0 + timedelta(days=10))
        assert recent == [("2", "req_2", "rejected")]
        assert sorted(journal.decided_since(t0)) == [("1", "req_1", "validated"),
                                                     ("2", "req_2", "rejected")]
    finally:
        storage.close()


# -- HubSpot: the calls of a quiet poll ---------------------------------------------------------


def test_a_quiet_poll_of_1000_waiting_tickets_and_watched_ones_costs_10_calls(
    tmp_path: Path, hubspot: FakeHubSpot
) -> None:
    """The issue's budget, counted (not timed): watching decided tickets and support requests
    adds their ids to the association batches, not a search or a read per ticket; their
    contacts are known from the store, so the tickets' contacts are read for the 1,000
    waiting ones only (5 search pages, the tickets' e-mails for 1,200 tickets: 2, their
    contacts for 1,000: 1, the contacts' e-mails for 1,200 contacts: 2)."""
    ctx = Context(load_settings(environ=clean_environ(tmp_path / "data", **hubspot.environ())))
    sent = datetime.now(UTC) - timedelta(days=2)
    for n in range(1200):
        decided, support = 1000 <= n < 1100, n >= 1100
        request_id = f"req_budget_{n:05d}"
        status = "validated" if decided else None if support else "pending_credits"
        contact_id = hubspot.add("contacts", {"email": f"c{n}@example.fr"})
        ticket_id = hubspot.add("tickets", {
            "subject": f"Objet {n}", "content": "-", "hs_pipeline": "0",
            "hs_pipeline_stage": "1", "handler_request_id": request_id,
            **({"validation_status": status} if status else {})},
            [("contacts", contact_id, TICKET_TO_CONTACT)])
        ctx.documents.save(Document(
            source="contact" if support else "modelisation", objet=f"Objet {n}",
            description="Un vase, 30 cm.", user_email=f"c{n}@example.fr",
            user_name=f"Client {n}", request_id=request_id, contact_id=contact_id,
            type_final="SUPPORT" if support else "MODELISATION", ticket_id=ticket_id,
            validation_status=status, credits_estimes=None if support else 1,
            clickup_subtask_id=f"task{n}" if decided else None,
            emails={"client": SentEmail(
                message_id=f"<{request_id}.client@valione-services.com>", to="x",
                subject="devis", template="client_support_ack" if support
                else "client_quote_1", sent_at=sent)}))
        if decided:  # validated by an earlier poll, yesterday
            reply = Reply(ticket_id=ticket_id, key=f"m{n}", source="hubspot",
                          sender=f"c{n}@example.fr", subject="Re", text="Je valide",
                          at=sent, crm_id=f"9{n}")
            ctx.journal.begin(Begun(reply, request_id, "validated",
                                    Reading("validation", 0.9, "keywords"), "Je valide",
                                    False), sent)
            ctx.journal.finish(reply, sent + timedelta(days=1))
    hubspot.requests.clear()

    report = poll(ctx)

    assert report.ok and report.outcomes == []
    assert (report.waiting, report.watched) == (1000, 200)
    calls = [f"{r.method} {r.path}" for r in hubspot.requests]
    assert len(calls) <= 10, calls
    assert hubspot.count("read ticket") == 0
