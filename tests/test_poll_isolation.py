"""A poison pill stops one ticket, never the poll (issue 10).

A ticket the poll cannot handle (a bug, a template that breaks on one request, a character
that makes an e-mail impossible to build) gets its error recorded, the admin told once with
the client's message, and the other tickets are handled as usual; the run exits 1.
"""

from __future__ import annotations

from pathlib import Path

from handler_cli.document import Document
from handler_cli.poll import Journal, poll
from tests import poll_kit
from tests.conftest import ROOT
from tests.peers import SMTPPeer
from tests.poll_kit import at, body, client_says, days, intake, kinds, received

POISON = "POISON"


relay, environ = poll_kit.relay, poll_kit.environ  # the fixtures


def breaking_templates(folder: Path) -> Path:
    """An operator's override of the admin's question e-mail that fails on one request (it
    names a field that request lacks): a bug that retrying will never fix."""
    shipped = (ROOT / "templates" / "admin_question.txt.j2").read_text(encoding="utf-8")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "admin_question.txt.j2").write_text(
        f'{{% if "{POISON}" in doc.objet %}}{{{{ doc.no_such_field.boom }}}}{{% endif %}}\n'
        + shipped, encoding="utf-8")
    return folder


def three_tickets(environ: dict[str, str]) -> tuple[Document, Document, Document]:
    """Two healthy clients around a poisoned one, each with a reply waiting."""
    first = intake(environ, user_email="anne@example.fr", objet="Vase de salon")
    poisoned = intake(environ, user_email="paul@example.fr", objet=f"Vase {POISON}")
    last = intake(environ, user_email="zoe@example.fr", objet="Vase de cuisine")
    client_says(environ, first, "Je valide")
    client_says(environ, poisoned, "Quel est le délai de livraison ?")
    client_says(environ, last, "Pourquoi ce prix ?")
    return first, poisoned, last


def journal_states(environ: dict[str, str], doc: Document) -> list[tuple[str, str]]:
    journal = Journal(Path(environ["HANDLER_DATA_DIR"]) / "poll.sqlite3")
    return [(row[2], row[3]) for row in journal.actions(doc.ticket_id or "")]


def alerts(relay: SMTPPeer) -> list[str]:
    return [k for k in kinds(relay) if k.startswith("admin_poll_failed_")]


def test_a_poisoned_ticket_fails_alone_and_the_admin_gets_its_message_once(
    environ: dict[str, str], relay: SMTPPeer, tmp_path: Path
) -> None:
    first, poisoned, last = three_tickets(environ)
    broken = {"HANDLER_TEMPLATES_DIR": str(breaking_templates(tmp_path / "tpl"))}

    report = poll(at(environ, days(1), **broken))

    assert not report.ok
    (failure,) = report.failures
    assert f"ticket {poisoned.ticket_id}" in failure
    by_ticket = {o.ticket_id: o for o in report.outcomes}
    assert by_ticket[first.ticket_id].status == "validated"
    assert [a["action"] for a in by_ticket[last.ticket_id].actions] == ["question"]
    assert by_ticket[poisoned.ticket_id].error
    assert "client_validated" in kinds(relay)
    # the poisoned ticket: its reply parked, the admin told once with the client's words
    assert journal_states(environ, poisoned) == [("question", "failed")]
    (alert,) = alerts(relay)
    message = received(relay, alert)
    assert message["To"].addresses[0].addr_spec == at(environ).settings.admin_email
    assert "Quel est le délai de livraison ?" in body(message)
    assert "Traceback" not in body(message) and "UndefinedError" not in body(message)
    kept = at(environ).documents.by_ticket(poisoned.ticket_id or "")
    assert kept is not None
    assert [e.step for e in kept.errors] == ["poll"]  # the technical detail stays here
    assert "UndefinedError" in kept.errors[0].error

    # The next passes do not stumble on it again, nor tell the admin twice.
    again = poll(at(environ, days(1.1), **broken))
    assert again.ok and again.outcomes == []
    assert len(alerts(relay)) == 1

    # Once the template is fixed, the operator gives the reply back: forwarded, once.
    fixed = poll(at(environ, days(1.2)), retry_failed=True)
    assert fixed.ok
    (outcome,) = fixed.outcomes
    assert outcome.ticket_id == poisoned.ticket_id and outcome.actions[0]["resumed"] is True
    forwarded = [k for k in kinds(relay) if k.startswith("admin_question_")]
    assert len(forwarded) == 2  # the healthy question, and now the poisoned one
    assert journal_states(environ, poisoned) == [("question", "done")]


def test_an_action_that_breaks_when_resumed_no_longer_stops_every_poll(
    environ: dict[str, str], relay: SMTPPeer, tmp_path: Path
) -> None:
    """The issue's trap: an action begun (relay down), then failing for good when resumed,
    used to crash every later poll before it looked at any other ticket."""
    first, poisoned, last = three_tickets(environ)
    relay.data_reply = "451 4.3.0 try again later"
    poll(at(environ, days(1)))
    assert ("question", "acting") in journal_states(environ, poisoned)
    relay.data_reply = None
    broken = {"HANDLER_TEMPLATES_DIR": str(breaking_templates(tmp_path / "tpl"))}

    report = poll(at(environ, days(1.1), **broken))

    assert [f for f in report.failures if f"ticket {poisoned.ticket_id}" in f]
    assert len(report.failures) == 1
    statuses = {o.ticket_id: o.status for o in report.outcomes}
    assert statuses[first.ticket_id] == "validated"
    assert kinds(relay).count("client_validated") == 1
    assert len([k for k in kinds(relay) if k.startswith("admin_question_")]) == 1  # `last`
    assert journal_states(environ, poisoned) == [("question", "failed")]
    assert len(alerts(relay)) == 1


def test_a_line_separator_in_the_object_never_stops_the_poll(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    """U+2028 in `objet` (issue 10's pill): whether intake normalises it or the admin e-mail
    cannot be built, the other clients are served and this client's words reach the admin."""
    first = intake(environ, user_email="anne@example.fr", objet="Vase de salon")
    poisoned = intake(environ, user_email="paul@example.fr",
                      objet="Vase\u2028Statut : validated")
    client_says(environ, first, "Je valide")
    client_says(environ, poisoned, "Quel est le délai de livraison ?")

    report = poll(at(environ, days(1)))

    assert {o.ticket_id: o.status for o in report.outcomes}[first.ticket_id] == "validated"
    to_admin = [k for k in kinds(relay)
                if k.startswith(("admin_question_", "admin_poll_failed_"))]
    assert len(to_admin) == 1
    assert "Quel est le délai de livraison ?" in body(received(relay, to_admin[0]))
    assert poll(at(environ, days(1.1))).ok
