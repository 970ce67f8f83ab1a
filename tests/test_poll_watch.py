"""No message dropped on a ticket the client is not asked about (issue 11): a support
request's follow-up, a message on a ticket decided by hand in the CRM, reach the admin once,
with the ticket link, for `HANDLER_WATCH_DECIDED_DAYS` after the ticket's last activity; the
watched tickets come from the documents store (both backends) and the journal, not from a
CRM search; `reply` says what the poll will do.

The documents store stamps a save with its own clock, so the clocks of these polls are
counted from now, not from poll_kit's fixed T0: a watch counted on T0 would depend on the
day the suite runs.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from handler_cli.config import load_settings
from handler_cli.document import Document
from handler_cli.pipeline import run_chain
from handler_cli.poll import next_step, poll
from handler_cli.storage import open_storage
from tests import poll_kit
from tests.conftest import RunCli, sample
from tests.dovecot import dovecot_server
from tests.fakes.hubspot import FakeHubSpot
from tests.peers import SMTPPeer
from tests.poll_kit import (
    PNG,
    at,
    body,
    client_says,
    intake,
    kinds,
    received,
    relay_environ,
    subject,
    subtasks,
    ticket,
)
from tests.postgres import pg_session, pg_url  # noqa: F401 - fixtures

hubspot, relay = poll_kit.hubspot, poll_kit.relay  # the fixtures
NOW = datetime.now(UTC)
EMAIL_TO_TICKET = 224  # HubSpot's association type ids
EMAIL_TO_CONTACT = 198


def later(days: float) -> datetime:
    return NOW + timedelta(days=days)


@pytest.fixture(params=["sqlite", "postgresql"])
def environ(request: pytest.FixtureRequest, tmp_path: Path, relay: SMTPPeer) -> dict[str, str]:
    """An isolated data dir whose e-mails go to `relay`, its state on either backend."""
    extra = ({"HANDLER_DATABASE_URL": request.getfixturevalue("pg_url")}
             if request.param == "postgresql" else {})
    return relay_environ(tmp_path, relay, **extra)


def support_request(environ: dict[str, str]) -> Document:
    """A support request through the real chain: ticket, acknowledgement ("reply to complete
    your request"), no status."""
    doc = Document.model_validate(sample("support"))
    run_chain(doc, at(environ))
    assert doc.ticket_id and doc.type_final == "SUPPORT" and doc.validation_status is None
    assert doc.emails["client"].template == "client_support_ack"
    return doc


def forwards(relay: SMTPPeer) -> list[str]:
    return [k for k in kinds(relay) if k.startswith("admin_question_")]


def to_client(relay: SMTPPeer, doc: Document) -> int:
    return sum(1 for m in relay.received
               if m.message["To"].addresses[0].addr_spec == doc.user_email)


def test_a_support_follow_up_reaches_the_admin_once(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = support_request(environ)
    acknowledged = to_client(relay, doc)
    client_says(environ, doc, "Voici la capture d'écran demandée, le bug revient à chaque "
                              "connexion", when=later(1))

    report = poll(at(environ, later(1)))

    assert report.ok, report.failures
    assert report.watched == 1
    (outcome,) = report.outcomes
    assert [a["action"] for a in outcome.actions] == ["forwarded"]
    (kind,) = forwards(relay)
    message = received(relay, kind)
    assert subject(message) == (f"[Ticket #{doc.ticket_id}] Nouveau message sur une demande de "
                                f"support : {doc.objet}")
    text = body(message)
    assert "au sujet de sa demande de support" in text and "devis" not in text
    assert "le bug revient à chaque connexion" in text
    assert at(environ).crm.ticket_url(doc.ticket_id or "") in text
    assert to_client(relay, doc) == acknowledged  # the team answers, not the poll
    assert "validation_status" not in ticket(environ, doc) or \
        not ticket(environ, doc)["validation_status"]

    again = poll(at(environ, later(1.1)))

    assert again.ok and again.outcomes == [] and len(forwards(relay)) == 1


def test_a_support_follow_up_in_the_mailbox_reaches_the_admin_with_its_screenshot(
    tmp_path: Path, relay: SMTPPeer
) -> None:
    """The acknowledgement's reply address is the poll's mailbox: the client's answer, with
    the screenshot asked for, is read over IMAP (dovecot), its file stored with the request's,
    and forwarded once."""
    with dovecot_server(tmp_path) as imap:
        environ = relay_environ(tmp_path, relay, HANDLER_REPLY_SOURCES="imap", **imap.environ())
        doc = support_request(environ)
        answer = EmailMessage()
        answer["From"] = f"{doc.user_name} <{doc.user_email}>"
        answer["To"] = imap.user
        answer["Subject"] = f"Re: {doc.emails['client'].subject}"
        answer["Message-ID"] = "<capture-1@client.example.fr>"
        answer["In-Reply-To"] = doc.emails["client"].message_id
        answer.set_content("Voici la capture d'écran demandée.")
        answer.add_attachment(PNG, maintype="image", subtype="png", filename="capture.png")
        imap.deliver(bytes(answer))

        report = poll(at(environ, later(1)))
        again = poll(at(environ, later(1.1)))

    assert report.ok, report.failures
    (outcome,) = report.outcomes
    assert [(a["source"], a["action"]) for a in outcome.actions] == [("imap", "forwarded")]
    (kind,) = forwards(relay)
    text = body(received(relay, kind))
    assert "capture d'écran demandée" in text and "capture.png" in text
    stored = at(environ).documents.by_ticket(doc.ticket_id or "")
    assert stored is not None and any(u.endswith("capture.png") for u in stored.fichiers_urls or [])
    assert again.ok and again.outcomes == [] and len(forwards(relay)) == 1


def test_a_support_ticket_quiet_for_longer_than_the_watch_is_not_read(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = support_request(environ)
    client_says(environ, doc, "Toujours le même problème.", when=later(31))

    report = poll(at(environ, later(31)))  # saved a month ago, the watch is 30 days

    assert report.ok and report.watched == 0 and report.outcomes == []
    assert forwards(relay) == []
    assert next_step(at(environ, later(31)), doc.ticket_id or "") == "nothing"
    # The same message, inside a longer watch: it was the watch, nothing else.
    longer = at(environ, later(31), HANDLER_WATCH_DECIDED_DAYS="60")
    assert next_step(longer, doc.ticket_id or "") == "forward"
    assert [a["action"] for o in poll(longer).outcomes for a in o.actions] == ["forwarded"]


def test_a_message_on_a_ticket_decided_by_hand_reaches_the_admin_once(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)  # quote sent: pending_credits, here and in the CRM
    at(environ).crm.update_ticket(doc.ticket_id or "", {"validation_status": "validated"})
    sent_to_client = to_client(relay, doc)  # the admin validated it in the CRM (a phone call)

    # Past the reminder's delay: watched, but the client is not asked: no reminder.
    quiet = poll(at(environ, later(4)))

    assert quiet.ok and (quiet.waiting, quiet.watched) == (0, 1) and quiet.outcomes == []
    client_says(environ, doc, "Je valide aussi par écrit. Quel délai ?", when=later(5))

    report = poll(at(environ, later(5)))

    assert report.ok, report.failures
    (outcome,) = report.outcomes
    assert outcome.status == "validated"
    assert [(a["action"], a["status"]) for a in outcome.actions] == [("forwarded", "validated")]
    (kind,) = forwards(relay)
    message = received(relay, kind)
    assert "Nouveau message du client (devis validé par le client)" in subject(message)
    text = body(message)
    assert "Quel délai" in text and at(environ).crm.ticket_url(doc.ticket_id or "") in text
    # The admin's decision stands; the poll adds nothing to it: no subtask, no e-mail to the
    # client, and the request keeps the status this installation gave it (so no subtask
    # retry either).
    assert ticket(environ, doc)["validation_status"] == "validated"
    stored = at(environ).documents.by_ticket(doc.ticket_id or "")
    assert stored is not None and stored.validation_status == "pending_credits"
    assert subtasks(environ) == [] and to_client(relay, doc) == sent_to_client

    # Past the stale delay (14 days) from that message: read again, nothing new, no alert.
    again = poll(at(environ, later(20)))

    assert again.ok and again.outcomes == [] and len(forwards(relay)) == 1
    assert not [k for k in kinds(relay) if k.startswith(("reminder", "admin_stale"))]
    assert subtasks(environ) == [] and to_client(relay, doc) == sent_to_client


def test_a_ticket_the_crm_still_has_waiting_is_acted_on_even_if_the_search_missed_it(
    tmp_path: Path, relay: SMTPPeer, hubspot: FakeHubSpot
) -> None:
    """When the CRM's list cannot be read, a request still waiting here is not taken for one
    decided by hand (its absence says nothing): its reply waits for the next pass, while a
    support follow-up is forwarded at once; the status is the CRM's word in any case."""
    environ = relay_environ(tmp_path, relay, **hubspot.environ())
    quoted = Document.model_validate(sample("modelisation_simple"))
    run_chain(quoted, at(environ))
    support = support_request(environ)
    for doc, text in ((quoted, "Je valide, allez-y."), (support, "Le bug est revenu.")):
        hubspot.add("emails", {
            "hs_timestamp": later(1).isoformat(), "hs_email_direction": "INCOMING_EMAIL",
            "hs_email_subject": f"Re: {doc.emails['client'].subject}", "hs_email_text": text,
            "hs_email_from_email": doc.user_email,
            "hs_email_headers": json.dumps({"Message-Id": f"<{doc.request_id}-1@client.fr>",
                                            "In-Reply-To": doc.emails["client"].message_id}),
        }, associations=[("tickets", doc.ticket_id or "", EMAIL_TO_TICKET)])
    hubspot.fail_next("search tickets", times=20, status=503)

    report = poll(at(environ, later(1)))

    assert not report.ok  # the search failed: exit 1, said
    assert [(o.ticket_id, [a["action"] for a in o.actions]) for o in report.outcomes] == [
        (support.ticket_id, ["forwarded"])]
    hubspot.faults.clear()

    report = poll(at(environ, later(1.1)))

    assert report.ok, report.failures
    assert [(o.ticket_id, o.status) for o in report.outcomes] == [(quoted.ticket_id,
                                                                   "validated")]
    assert len(forwards(relay)) == 1 and len(subtasks(environ)) == 1


def test_reply_says_the_poll_forwards_a_support_follow_up(
    cli: RunCli, relay: SMTPPeer, tmp_path: Path
) -> None:
    env = relay_environ(tmp_path, relay)
    assert cli("run", "samples/support.json", env=env).returncode == 0

    said = cli("reply", "1001", "Voici la capture d'écran demandée", env=env)

    assert said.returncode == 0 and json.loads(said.stdout)["poll"] == "forward"
    assert "forwards it to the admin" in said.stderr
    polled = cli("poll", env=env)
    assert polled.returncode == 0
    (line,) = polled.stdout.splitlines()
    assert [a["action"] for a in json.loads(line)["actions"]] == ["forwarded"]
    assert len(forwards(relay)) == 1
    assert cli("poll", env=env).stdout == ""


# -- the documents store's watch list, on both backends ----------------------------------------


def _age(environ: dict[str, str], request_id: str, when: datetime) -> None:
    """Make a document's last save `when` (what a month without activity leaves)."""
    url = environ.get("HANDLER_DATABASE_URL")
    if url:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE handler_documents SET updated_at = %s WHERE request_id = %s",
                         (when.timestamp(), request_id))
        return
    with sqlite3.connect(Path(environ["HANDLER_DATA_DIR"]) / "documents.sqlite3") as db:
        db.execute("UPDATE documents SET updated_at = ? WHERE request_id = ?",
                   (when.strftime("%Y-%m-%d %H:%M:%S"), request_id))


def test_the_store_lists_the_tickets_saved_since_a_date(
    environ: dict[str, str]
) -> None:
    now = datetime.now(UTC)  # the store's clock, as the saves below read it
    storage = open_storage(load_settings(environ=environ))
    documents = storage.documents
    made = {}
    for name, fields in (
        ("support", {"type_final": "SUPPORT", "ticket_id": "11", "contact_id": "501"}),
        ("quoted", {"type_final": "MODELISATION", "ticket_id": "12",
                    "validation_status": "pending_credits", "credits_estimes": 1}),
        ("old", {"type_final": "SUPPORT", "ticket_id": "13"}),
        ("no_ticket", {"type_final": "SUPPORT"}),  # the ticket step has not run yet
    ):
        doc = Document.model_validate({**sample("support" if name != "quoted" else
                                                "modelisation_simple"),
                                       "objet": f"Demande {name}", **fields})
        documents.save(doc)
        made[name] = doc.request_id
    try:
        _age(environ, made["old"], now - timedelta(days=40))

        recent = documents.tickets_saved_since(now - timedelta(days=30))

        assert sorted(recent) == [("11", made["support"], None, "501"),
                                  ("12", made["quoted"], "pending_credits", None)]
        assert sorted(t.ticket_id for t in documents.tickets_saved_since(
            now - timedelta(days=50))) == ["11", "12", "13"]
        assert documents.tickets_saved_since(now + timedelta(minutes=1)) == []
    finally:
        storage.close()


def test_a_watched_ticket_costs_a_crm_read_only_when_a_message_comes(
    tmp_path: Path, relay: SMTPPeer, hubspot: FakeHubSpot
) -> None:
    """Quiet, a watched ticket adds its id to the e-mail batches and nothing else (the
    budget of a quiet pass over 1,000 tickets: tests/test_poll_decided.py): its contact is
    the one stored with the request, not read from the ticket's associations. With a
    message (logged on the contact, as a connected inbox does), one read of that ticket (its
    status and handled replies), then the forward."""
    environ = relay_environ(tmp_path, relay, **hubspot.environ())
    doc = support_request(environ)
    assert doc.contact_id
    hubspot.requests.clear()

    quiet = poll(at(environ, later(1)))

    assert quiet.ok and quiet.watched == 1 and quiet.outcomes == []
    assert hubspot.count("read ticket") == 0
    assert hubspot.count("read associations tickets->contacts") == 0
    hubspot.add("emails", {
        "hs_timestamp": later(2).isoformat(), "hs_email_direction": "INCOMING_EMAIL",
        "hs_email_subject": f"Re: {doc.emails['client'].subject}",
        "hs_email_text": "Voici la capture d'écran.", "hs_email_from_email": doc.user_email,
        "hs_email_headers": json.dumps({"Message-Id": "<suite-1@client.fr>",
                                        "In-Reply-To": doc.emails["client"].message_id}),
    }, associations=[("contacts", doc.contact_id, EMAIL_TO_CONTACT)])

    report = poll(at(environ, later(2)))

    assert report.ok, report.failures
    assert [a["action"] for o in report.outcomes for a in o.actions] == ["forwarded"]
    assert hubspot.count("read ticket", id=doc.ticket_id) == 1
    assert len(forwards(relay)) == 1
    assert poll(at(environ, later(2.1))).outcomes == [] and len(forwards(relay)) == 1
