"""Issue 11's "Done when": a client played through every path, the outbox checked.

Five submissions on the embedded backends, every e-mail through a real SMTP relay on
loopback: a photo lost then sent by reply; an empty description then completed; a refusal
then a change of mind; a validation then a question; the same form posted to the webhook and
run by hand. Every client message must be answered or forwarded exactly once (a later poll
sends nothing more about it), no quote may leave while a file is missing, and each
submission is one ticket.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from handler_cli.document import Document
from handler_cli.poll import poll
from tests import poll_kit
from tests.conftest import ROOT, sample
from tests.peers import SMTPPeer
from tests.poll_kit import (
    PNG,
    at,
    body,
    client_says,
    days,
    intake,
    relay_environ,
    stored,
    subject,
    subtasks,
    ticket,
)
from tests.test_server import AUTH, TOKEN, running, wait_for, webhook_settings

LOST = "/nulle/part/face.jpg"


relay = poll_kit.relay  # the fixture


@pytest.fixture
def environ(tmp_path: Path, relay: SMTPPeer) -> dict[str, str]:
    return relay_environ(tmp_path, relay, WEBHOOK_TOKEN=TOKEN)


class Outbox:
    """What the relay received, read as the client and the admin would."""

    def __init__(self, relay: SMTPPeer, admin: str) -> None:
        self.relay, self.admin, self.seen = relay, admin, 0

    def new(self) -> list[tuple[str, str, str]]:
        """(to, subject, text) of each e-mail since the last call."""
        found = [(m.message["To"].addresses[0].addr_spec, subject(m.message), body(m.message))
                 for m in self.relay.received[self.seen:]]
        self.seen = len(self.relay.received)
        return found

    def quotes_to(self, address: str) -> list[str]:
        return [subject(m.message) for m in self.relay.received
                if m.message["To"].addresses[0].addr_spec == address
                and "Votre devis" in subject(m.message)]


def answered_once(environ: dict[str, str], outbox: Outbox, when: float) -> list[tuple[str, str, str]]:
    """Poll: the message just written gets an answer or a forward; a second poll, nothing."""
    poll(at(environ, days(when)))
    made = outbox.new()
    assert made, "a client message was neither answered nor forwarded"
    poll(at(environ, days(when + 0.01)))
    assert outbox.new() == [], "a client message was answered twice"
    return made


def test_a_client_through_every_path(
    environ: dict[str, str], relay: SMTPPeer, tmp_path: Path
) -> None:
    admin = at(environ).settings.admin_email
    outbox = Outbox(relay, admin)
    photo = tmp_path / "face.jpg"
    photo.write_bytes(PNG)

    # 1. A photo lost, then sent by reply.
    lost = intake(environ, user_email="anne@example.fr", objet="Lampe de chevet",
                  description="Une lampe de chevet en laiton, 40 cm.", fichiers=[LOST])
    intake_mails = outbox.new()
    assert lost.validation_status == "pending_info"
    asked = [t for to, s, t in intake_mails if to == lost.user_email]
    assert len(asked) == 1 and "« face.jpg »" in asked[0] and "renvoyer" in asked[0]
    assert outbox.quotes_to(lost.user_email) == []
    client_says(environ, lost, "Voici la photo.", files=(str(photo),), when=days(1))
    made = answered_once(environ, outbox, 1)
    assert [s for to, s, _ in made if to == lost.user_email][0].startswith(
        f"[Ticket #{lost.ticket_id}] Votre devis")

    # 2. An empty description, then completed.
    bare = intake(environ, user_email="bruno@example.fr", objet="Vase", description="",
                  fichiers=sample("with_3d_attachment")["fichiers"])
    outbox.new()
    assert bare.validation_status == "pending_info" and outbox.quotes_to(bare.user_email) == []
    client_says(environ, bare, "Un vase en céramique blanche de 30 cm de haut.", when=days(1.1))
    made = answered_once(environ, outbox, 1.1)
    assert any("Votre devis" in s for to, s, _ in made if to == bare.user_email)

    # 3. A refusal, then a change of mind.
    fickle = intake(environ, user_email="chloe@example.fr", objet="Chaise")
    outbox.new()
    client_says(environ, fickle, "Non merci, c'est trop cher.", when=days(2))
    made = answered_once(environ, outbox, 2)
    assert [to for to, _, _ in made] == [admin]  # the admin is told; nothing more to say
    client_says(environ, fickle, "Finalement je valide !", when=days(3))
    made = answered_once(environ, outbox, 3)
    assert [(to, "revient sur son refus" in s) for to, s, _ in made] == [(admin, True)]
    assert ticket(environ, fickle)["validation_status"] == "rejected"

    # 4. A validation, then a question.
    keen = intake(environ, user_email="david@example.fr", objet="Table basse")
    outbox.new()
    client_says(environ, keen, "Je valide.", when=days(4))
    made = answered_once(environ, outbox, 4)
    assert {to for to, _, _ in made} == {admin, keen.user_email}
    client_says(environ, keen, "Merci ! Et ce sera prêt quand ?", when=days(5))
    made = answered_once(environ, outbox, 5)
    assert [to for to, _, _ in made] == [admin] and "prêt quand" in made[0][2]
    assert stored(environ, keen).validation_status == "validated"
    assert len(subtasks(environ)) == 1

    # 5. The same form through the webhook and by hand: one request, one ticket, one quote.
    form = {**sample("modelisation_simple"), "user_email": "emma@example.fr"}
    data_dir = Path(environ["HANDLER_DATA_DIR"])
    settings = webhook_settings(data_dir, **{k: v for k, v in environ.items()
                                             if k.startswith(("SMTP_", "HANDLER_RETRY"))})
    with running(settings) as url, httpx.Client(base_url=url) as client:
        posted = client.post("/webhook/request", json=form, headers=AUTH)
        assert posted.status_code == 202
        wait_for(client, posted.json()["status_url"])
    by_hand = subprocess.run(
        [sys.executable, "-m", "handler_cli", "run", "-"], input=json.dumps(form), text=True,
        capture_output=True, env=environ, cwd=ROOT, timeout=120, check=False)
    assert by_hand.returncode == 0, by_hand.stderr
    assert Document.model_validate_json(by_hand.stdout).request_id == posted.json()["request_id"]
    assert len(outbox.quotes_to(form["user_email"])) == 1

    # One ticket per submission; the one quote on the lost photo came once we had it.
    with sqlite3.connect(data_dir / "crm.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM tickets").fetchone()[0] == 5
    assert len(outbox.quotes_to(lost.user_email)) == 1
    kept = stored(environ, lost)
    assert kept.fichiers_refuses == [] and any(u.endswith("face.jpg")
                                               for u in kept.fichiers_urls or [])
