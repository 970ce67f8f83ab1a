"""The poll on the embedded backends, with a real SMTP relay on loopback recording every send
(the helpers, and how a test goes, are in `tests/poll_kit.py`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from email.utils import make_msgid
from pathlib import Path

import pytest

from handler_cli.poll import Journal, poll, poll_lock
from handler_cli.replies.local import inbox_folder
from handler_cli.services import EmailRecord, TicketDraft
from tests import poll_kit
from tests.conftest import SAMPLES
from tests.fakes.clickup import DEFAULT_PARENT_ID, FakeClickUp, clickup_server
from tests.peers import SMTPPeer, closed_port
from tests.poll_kit import (
    PNG,
    at,
    body,
    client_says,
    days,
    intake,
    kinds,
    received,
    stored,
    subject,
    subtasks,
    ticket,
)

relay, environ = poll_kit.relay, poll_kit.environ  # the fixtures


# -- validation -------------------------------------------------------------------------------


def test_validation_creates_one_subtask_confirms_to_client_and_tells_admin(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)
    client_says(environ, doc, "Je valide, merci !")
    before = len(relay.received)

    report = poll(at(environ, days(1)))

    assert report.ok and report.waiting == 1 and report.replies == 1
    (outcome,) = report.outcomes
    assert (outcome.ticket_id, outcome.status_before, outcome.status) == (
        doc.ticket_id, "pending_credits", "validated")
    (action,) = outcome.actions
    assert (action["intent"], action["action"]) == ("validation", "validated")
    assert action["emails"] == ["admin_validated", "client_validated"]
    (task,) = subtasks(environ)
    assert outcome.clickup_subtask_id == task[0]
    assert ticket(environ, doc)["validation_status"] == "validated"
    assert ticket(environ, doc)["clickup_subtask_id"] == task[0]
    assert stored(environ, doc).validation_status == "validated"
    assert kinds(relay)[before:] == ["admin_validated", "client_validated"]
    to_client = received(relay, "client_validated")
    assert to_client["To"].addresses[0].addr_spec == doc.user_email
    assert "Devis validé" in to_client["Subject"] and f"[Ticket #{doc.ticket_id}]" in to_client[
        "Subject"]
    to_admin = received(relay, "admin_validated")
    assert f"sous-tâche de production a été créée dans ClickUp ({task[0]})" in body(to_admin)
    assert "> Je valide, merci !" in body(to_admin)


def test_a_second_poll_does_nothing_more(environ: dict[str, str], relay: SMTPPeer) -> None:
    doc = intake(environ)
    client_says(environ, doc, "Je valide")
    poll(at(environ, days(1)))
    sent = len(relay.received)

    report = poll(at(environ, days(1.1)))

    assert report.ok and report.outcomes == [] and report.waiting == 0
    assert report.watched == 1  # decided: a later message would still reach the admin
    assert len(relay.received) == sent and len(subtasks(environ)) == 1
    assert "nothing to do" in report.summary()


def test_handled_replies_are_recorded_on_the_ticket_and_in_the_journal(
    environ: dict[str, str],
) -> None:
    doc = intake(environ)
    client_says(environ, doc, "Bonjour, quel est le délai ?")
    poll(at(environ, days(1)))

    (incoming,) = at(environ).crm.emails(doc.ticket_id or "", "INCOMING")  # type: ignore[attr-defined]
    assert ticket(environ, doc)["handler_replies_handled"].split() == [incoming.crm_id]
    journal = Journal(Path(environ["HANDLER_DATA_DIR"]) / "poll.sqlite3")
    assert [row[1:] for row in journal.actions(doc.ticket_id or "")] == [
        ("question", "question", "done")]


# -- refusal, questions, nothing --------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "Non merci, c'est trop cher pour moi.",
    "Je ne valide pas ce devis.",
    "Pas d'accord avec ce prix, j'annule.",
])
def test_refusal_rejects_the_ticket_and_tells_the_admin(
    environ: dict[str, str], relay: SMTPPeer, text: str
) -> None:
    doc = intake(environ)
    client_says(environ, doc, text)
    before = len(relay.received)

    report = poll(at(environ, days(1)))

    (outcome,) = report.outcomes
    assert outcome.status == "rejected" and outcome.actions[0]["intent"] == "refus"
    assert ticket(environ, doc)["validation_status"] == "rejected"
    assert subtasks(environ) == []
    assert kinds(relay)[before:] == ["admin_refused"]
    assert text.split(",")[0] in body(received(relay, "admin_refused"))


def test_question_goes_to_the_admin_with_the_ticket_link_and_the_ticket_stays_pending(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)
    client_says(environ, doc, "OK mais quel serait le délai de livraison ?")
    before = len(relay.received)

    report = poll(at(environ, days(1)))

    (outcome,) = report.outcomes
    assert outcome.status == "pending_credits"
    assert outcome.actions[0]["intent"] == "question"
    assert ticket(environ, doc)["validation_status"] == "pending_credits"
    assert subtasks(environ) == []
    (kind,) = kinds(relay)[before:]
    assert kind.startswith("admin_question_")
    forwarded = received(relay, kind)
    assert forwarded["To"].addresses[0].addr_spec == at(environ).settings.admin_email
    text = body(forwarded)
    assert "quel serait le délai de livraison ?" in text
    assert at(environ).crm.ticket_url(doc.ticket_id or "") in text


def test_the_same_question_sent_twice_is_forwarded_once(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)
    client_says(environ, doc, "Quel est le délai ?", when=days(1))
    poll(at(environ, days(1)))
    client_says(environ, doc, "quel est le  délai ?", when=days(2))  # resent, spaced otherwise
    client_says(environ, doc, "Et pour la couleur, comment faire ?", when=days(2.1))

    poll(at(environ, days(2.5)))

    questions = [k for k in kinds(relay) if k.startswith("admin_question_")]
    assert len(questions) == 2 and len(set(questions)) == 2
    assert ticket(environ, doc)["validation_status"] == "pending_credits"


@pytest.mark.parametrize("text", [
    "Merci beaucoup pour votre retour rapide !",
    "Je suis absent du bureau jusqu'au 2 décembre, je vous répondrai à mon retour.",
])
def test_thanks_and_out_of_office_change_nothing(
    environ: dict[str, str], relay: SMTPPeer, text: str
) -> None:
    doc = intake(environ)
    client_says(environ, doc, text)
    before = len(relay.received)

    report = poll(at(environ, days(1)))

    (outcome,) = report.outcomes
    assert [(a["intent"], a["action"]) for a in outcome.actions] == [("none", "ignored")]
    assert len(relay.received) == before
    assert ticket(environ, doc)["validation_status"] == "pending_credits"
    assert poll(at(environ, days(1.1))).outcomes == []  # handled: not read again


def test_quoted_history_and_signature_are_not_read(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)
    client_says(environ, doc, (
        "Merci, je reviens vers vous la semaine prochaine.\n\n-- \nPaul Bernard\nJe valide "
        "toujours mes devis par écrit\n\nLe 25/11/2026 à 11:30, Valione Services a écrit :\n"
        "> Pour lancer la modélisation, répondez simplement « Je valide » à cet e-mail."))

    (outcome,) = poll(at(environ, days(1))).outcomes

    assert outcome.actions[0]["intent"] == "none"
    assert ticket(environ, doc)["validation_status"] == "pending_credits"
    assert subtasks(environ) == []


def test_a_reply_after_the_decision_in_the_same_pass_is_forwarded(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)
    client_says(environ, doc, "Je valide.", when=days(1))
    client_says(environ, doc, "Au fait, quel sera le délai ?", when=days(1.01))

    (outcome,) = poll(at(environ, days(1.5))).outcomes

    assert [a["action"] for a in outcome.actions] == ["validated", "forwarded"]
    assert outcome.status == "validated" and len(subtasks(environ)) == 1
    (kind,) = [k for k in kinds(relay) if k.startswith("admin_question_")]
    assert "a écrit de nouveau" in body(received(relay, kind))


# -- missing information ----------------------------------------------------------------------


def test_missing_information_with_a_photo_gets_the_request_a_quote(
    environ: dict[str, str], relay: SMTPPeer, tmp_path: Path
) -> None:
    doc = intake(environ, "incomplete")
    assert doc.validation_status == "pending_info"
    photo = tmp_path / "lampe.png"
    photo.write_bytes(PNG)
    client_says(environ, doc, "C'est une lampe de bureau en métal noir, hauteur 45 cm.",
                files=(str(photo),))
    before = len(relay.received)

    (outcome,) = poll(at(environ, days(1))).outcomes

    (action,) = outcome.actions
    assert action["action"] == "info" and outcome.status == "pending_credits"
    assert action["assessment"]["credits_estimes"] == 1
    props = ticket(environ, doc)
    assert (props["validation_status"], props["credits_estimes"]) == ("pending_credits", "1")
    kept = stored(environ, doc)
    assert "lampe de bureau en métal noir" in kept.description
    assert kept.fichiers_urls and kept.fichiers_urls[0].endswith("lampe.png")
    assert Path(kept.fichiers_urls[0].removeprefix("file://")).read_bytes() == PNG
    assert props["fichiers_urls"] == kept.fichiers_urls[0]
    (kind,) = kinds(relay)[before:]
    assert kind.startswith("client_after_")
    quote = received(relay, kind)
    assert "Votre devis : 1 crédit" in subject(quote)

    # The quote is awaited now: "Je valide" goes the usual way.
    client_says(environ, doc, "Je valide", when=days(2))
    (outcome,) = poll(at(environ, days(2))).outcomes
    assert outcome.status == "validated" and len(subtasks(environ)) == 1


def test_partial_information_gets_a_new_request_for_what_still_lacks(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ, "incomplete")
    client_says(environ, doc, "C'est une lampe de bureau en métal noir, hauteur 45 cm.")
    before = len(relay.received)

    (outcome,) = poll(at(environ, days(1))).outcomes

    assert outcome.actions[0]["action"] == "info" and outcome.status == "pending_info"
    (kind,) = kinds(relay)[before:]
    text = body(received(relay, kind))
    assert "photos, un plan ou un fichier 3D" in text
    assert "dimensions" not in text  # given in the reply
    assert stored(environ, doc).missing_info == [
        "Une ou plusieurs photos, un plan ou un fichier 3D de l'objet"]


def test_a_reply_that_brings_nothing_gets_no_new_analysis(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ, "incomplete")
    client_says(environ, doc, "Je regarde ça demain.")
    before = len(relay.received)

    (outcome,) = poll(at(environ, days(1))).outcomes

    (action,) = outcome.actions
    assert outcome.status == "pending_info" and "assessment" not in action
    sent = kinds(relay)[before:]
    assert not [k for k in sent if k.startswith("client")]  # nothing new to tell the client
    if action["intent"] == "unclear":  # read without confidence: a person reads it, once
        assert action["action"] == "forwarded" and len(sent) == 1
        assert sent[0].startswith("admin_question_")
    else:
        assert action["action"] == "ignored" and sent == []


def test_an_approval_before_any_quote_goes_to_the_admin(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ, "incomplete")
    client_says(environ, doc, "Je valide")
    before = len(relay.received)

    (outcome,) = poll(at(environ, days(1))).outcomes

    assert outcome.actions[0]["action"] == "forwarded" and outcome.status == "pending_info"
    (kind,) = kinds(relay)[before:]
    message = received(relay, kind)
    assert "Message du client" in message["Subject"] and "> Je valide" in body(message)
    assert subtasks(environ) == []


def test_a_file_store_down_leaves_the_reply_and_its_file_for_the_next_poll(
    environ: dict[str, str], relay: SMTPPeer, tmp_path: Path
) -> None:
    doc = intake(environ, "incomplete")
    photo = tmp_path / "lampe.png"
    photo.write_bytes(PNG)
    client_says(environ, doc, "Une lampe en métal noir, 45 cm.", files=(str(photo),))
    r2_down = {"R2_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}", "R2_BUCKET": "files",
               "R2_ACCESS_KEY_ID": "k", "R2_SECRET_ACCESS_KEY": "s",
               "HANDLER_PUBLIC_URL": "https://intake.example.com"}

    report = poll(at(environ, days(1), **r2_down))

    assert not report.ok and "r2" in (report.outcomes[0].error or "")
    assert ticket(environ, doc)["validation_status"] == "pending_info"
    journal = Journal(Path(environ["HANDLER_DATA_DIR"]) / "poll.sqlite3")
    assert journal.actions(doc.ticket_id or "") == []  # nothing begun: read again next time

    (outcome,) = poll(at(environ, days(1.1))).outcomes  # the local folder store works

    assert outcome.status == "pending_credits"
    assert (stored(environ, doc).fichiers_urls or [""])[0].endswith("lampe.png")


def test_an_attachment_of_a_refused_type_becomes_a_note(
    environ: dict[str, str], relay: SMTPPeer, tmp_path: Path
) -> None:
    doc = intake(environ, "incomplete")
    bad = tmp_path / "setup.exe"
    bad.write_bytes(b"MZ")
    client_says(environ, doc, "Voici le fichier", files=(str(bad),))

    poll(at(environ, days(1)))

    assert any("setup.exe" in n and "écartée" in n for n in stored(environ, doc).notes)
    assert any("setup.exe" in n for n in at(environ).crm.notes(doc.ticket_id or ""))  # type: ignore[attr-defined]


# -- no reply ---------------------------------------------------------------------------------


def test_no_reply_gets_one_reminder_then_the_admin_is_told_once(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)
    start = len(relay.received)

    assert poll(at(environ, days(2.9))).outcomes == []  # too early
    (outcome,) = poll(at(environ, days(3.1))).outcomes
    assert [a["action"] for a in outcome.actions] == ["reminder"]
    assert poll(at(environ, days(5))).outcomes == []  # one reminder only
    (outcome,) = poll(at(environ, days(14.2))).outcomes
    assert [a["action"] for a in outcome.actions] == ["stale"]
    assert poll(at(environ, days(30))).outcomes == []

    assert kinds(relay)[start:] == ["reminder", "admin_stale"]
    reminder = received(relay, "reminder")
    assert reminder["To"].addresses[0].addr_spec == doc.user_email
    assert "Rappel" in reminder["Subject"] and "Je valide" in body(reminder)
    # the same conversation as the quote it recalls (replies to either reach the ticket)
    assert reminder["In-Reply-To"] == doc.emails["client"].message_id
    stale = received(relay, "admin_stale")
    assert "14 jours" in subject(stale) and "malgré un rappel" in body(stale)
    assert ticket(environ, doc)["validation_status"] == "pending_credits"


def test_a_reply_to_the_reminder_is_matched_to_its_ticket(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)
    poll(at(environ, days(4)))
    reminder = received(relay, "reminder")
    ctx = at(environ)
    ctx.crm.log_email(doc.ticket_id or "", EmailRecord(
        message_id=make_msgid(), direction="INCOMING", sender=doc.user_email, to="x",
        subject=f"Re: {reminder['Subject']}", text="Parfait, on y va", at=days(4.5),
        in_reply_to=str(reminder["Message-ID"])))

    (outcome,) = poll(at(environ, days(5))).outcomes

    assert outcome.status == "validated"


def test_a_client_who_replied_gets_no_reminder(environ: dict[str, str], relay: SMTPPeer) -> None:
    doc = intake(environ)
    client_says(environ, doc, "Quel délai ?", when=days(1))
    poll(at(environ, days(1)))

    assert poll(at(environ, days(4))).outcomes == []
    assert "reminder" not in kinds(relay)


def test_reminder_delay_is_a_setting(environ: dict[str, str], relay: SMTPPeer) -> None:
    intake(environ)
    assert poll(at(environ, days(1.5), HANDLER_REMIND_DAYS="1")).outcomes != []
    assert "reminder" in kinds(relay)


# -- failures and exactly once ----------------------------------------------------------------


@pytest.fixture
def clickup() -> Iterator[FakeClickUp]:
    with clickup_server() as fake:
        yield fake


def test_clickup_down_leaves_the_ticket_validated_and_a_later_poll_creates_the_subtask_once(
    environ: dict[str, str], relay: SMTPPeer, clickup: FakeClickUp
) -> None:
    live = {"CLICKUP_API_TOKEN": clickup.token, "CLICKUP_BASE_URL": clickup.url}
    doc = intake(environ)
    client_says(environ, doc, "Je valide")
    clickup.down()

    report = poll(at(environ, days(1), **live))

    assert not report.ok and "subtask" in report.failures[0]
    (outcome,) = report.outcomes
    assert outcome.status == "validated" and outcome.clickup_subtask_id is None
    assert ticket(environ, doc)["validation_status"] == "validated"
    assert "client_validated" in kinds(relay)
    told = body(received(relay, "admin_validated"))
    assert "n'a pas encore pu être créée" in told and "réessaie" in told
    assert "HTTP" not in told  # the error itself stays on the document

    report = poll(at(environ, days(1.1), **live))  # still down: tried again, still failing
    assert not report.ok and report.outcomes[0].actions == [{"action": "subtask_retry"}]

    clickup.up()
    report = poll(at(environ, days(1.2), **live))
    assert report.ok
    (outcome,) = report.outcomes
    (task,) = clickup.subtasks_of(DEFAULT_PARENT_ID)
    assert outcome.clickup_subtask_id == task["id"]
    assert ticket(environ, doc)["clickup_subtask_id"] == task["id"]
    assert poll(at(environ, days(1.3), **live)).outcomes == []
    assert kinds(relay).count("client_validated") == 1


def test_a_relay_refusing_mail_is_finished_by_the_next_poll_and_nothing_doubles(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)
    client_says(environ, doc, "Je valide")
    relay.data_reply = "451 4.3.0 try again later"

    report = poll(at(environ, days(1)))

    assert not report.ok and "smtp" in (report.outcomes[0].error or "")
    assert len(subtasks(environ)) == 1  # step 6 ran before the e-mails
    journal = Journal(Path(environ["HANDLER_DATA_DIR"]) / "poll.sqlite3")
    assert [row[2:] for row in journal.actions(doc.ticket_id or "")] == [("validated", "acting")]

    relay.data_reply = None
    report = poll(at(environ, days(1.1)))

    assert report.ok
    (outcome,) = report.outcomes
    assert outcome.status == "validated" and outcome.actions[0]["resumed"] is True
    assert outcome.actions[0]["emails"] == ["admin_validated", "client_validated"]
    assert len(subtasks(environ)) == 1
    assert kinds(relay).count("admin_validated") == 1
    assert kinds(relay).count("client_validated") == 1
    assert [row[2:] for row in journal.actions(doc.ticket_id or "")] == [("validated", "done")]
    assert ticket(environ, doc)["handler_replies_handled"]
    assert poll(at(environ, days(1.2))).outcomes == []


def test_dry_run_shows_what_would_happen_and_changes_nothing(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)
    client_says(environ, doc, "Je valide")
    sent = len(relay.received)

    report = poll(at(environ, days(20)), dry_run=True)

    assert [a["action"] for o in report.outcomes for a in o.actions] == ["validated"]
    assert report.outcomes[0].dry_run and report.outcomes[0].status == "validated"
    assert "dry run" in report.summary()
    assert len(relay.received) == sent and subtasks(environ) == []
    assert ticket(environ, doc)["validation_status"] == "pending_credits"
    assert "handler_replies_handled" not in ticket(environ, doc)
    assert stored(environ, doc).validation_status == "pending_credits"

    assert poll(at(environ, days(1))).outcomes[0].status == "validated"  # the real thing


def test_dry_run_lists_reminders_without_sending_them(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    intake(environ)
    sent = len(relay.received)
    (outcome,) = poll(at(environ, days(20)), dry_run=True).outcomes
    assert [a["action"] for a in outcome.actions] == ["reminder", "stale"]
    assert len(relay.received) == sent


def test_a_poll_running_already_makes_the_second_one_stop_without_acting(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)
    client_says(environ, doc, "Je valide")
    ctx = at(environ, days(1))

    with poll_lock(ctx.settings.data_dir) as holder:
        assert holder is None
        report = poll(ctx)

    assert report.locked_by and "another poll is running" in report.summary()
    assert report.ok and report.outcomes == []
    assert ticket(environ, doc)["validation_status"] == "pending_credits"
    assert poll(ctx).outcomes[0].status == "validated"  # the lock is free again


# -- sources ----------------------------------------------------------------------------------


def test_an_eml_dropped_in_the_replies_folder_is_acted_on_then_filed(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)  # samples/replies/validation.eml answers this request's quote
    assert doc.request_id in (SAMPLES / "replies" / "validation.eml").read_text()
    folder = inbox_folder(at(environ))
    folder.mkdir(parents=True)
    (folder / "validation.eml").write_bytes((SAMPLES / "replies" / "validation.eml").read_bytes())
    (folder / "unrelated.eml").write_bytes(b"Subject: hello\r\nFrom: x@y.fr\r\n\r\nHi\r\n")

    (outcome,) = poll(at(environ, days(1))).outcomes

    assert outcome.status == "validated" and outcome.actions[0]["source"] == "local"
    assert (folder / "handled" / "validation.eml").exists()
    assert not (folder / "validation.eml").exists() and (folder / "unrelated.eml").exists()


def test_the_same_email_read_from_two_sources_is_acted_on_once(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)
    folder = inbox_folder(at(environ))
    folder.mkdir(parents=True)
    (folder / "question.eml").write_bytes((SAMPLES / "replies" / "question.eml").read_bytes())
    # The CRM's copy of that same e-mail carries the same Message-ID.
    at(environ).crm.log_email(doc.ticket_id or "", EmailRecord(
        message_id="<AM0PR.paul.question.2@outlook.example>", direction="INCOMING",
        sender=doc.user_email, to="x", subject="RE: devis", at=days(1),
        text="OK pour le prix, mais quel serait le délai de livraison ?"))

    (outcome,) = poll(at(environ, days(2))).outcomes

    assert [a["action"] for a in outcome.actions] == ["question"]
    assert len([k for k in kinds(relay) if k.startswith("admin_question_")]) == 1
    assert poll(at(environ, days(2.1))).outcomes == []


def test_a_ticket_without_its_request_document_is_left_to_the_team(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    ctx = at(environ)
    ticket_id = ctx.crm.create_ticket(TicketDraft(
        request_id="req_elsewhere", subject="Ticket made by hand", content="-",
        priority="LOW", contact_id=None))
    ctx.crm.update_ticket(ticket_id, {"validation_status": "pending_credits"})
    ctx.crm.log_email(ticket_id, EmailRecord(
        message_id="<x@y>", direction="INCOMING", sender="a@b.fr", to="x", subject="Re",
        text="Je valide", at=days(1)))

    report = poll(at(environ, days(1)))

    assert report.ok and report.outcomes == [] and report.orphans == [ticket_id]
    assert "without a request document" in report.summary()


def test_outcome_lines_are_json_documents(environ: dict[str, str]) -> None:
    doc = intake(environ)
    client_says(environ, doc, "Je valide")
    (outcome,) = poll(at(environ, days(1))).outcomes
    line = json.loads(outcome.to_json())
    assert line["ticket_id"] == doc.ticket_id and line["dry_run"] is False
    assert line["actions"][0]["reply"].startswith("m")
