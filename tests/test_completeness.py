"""Quotes only on what we have (issue 11): completeness counts the files we stored, a file we
could not receive is named to the client and asked for again, and an empty description with
files is a request with missing information, never a rejection."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from handler_cli.document import Document, RefusedFile
from handler_cli.poll import poll
from handler_cli.steps import STEPS, MissingInput
from handler_cli.steps.analyze import assess, load_grid
from tests import poll_kit
from tests.conftest import RunCli, sample
from tests.peers import SMTPPeer
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
)
from tests.test_server import AUTH, running, wait_for, webhook_settings

MISSING = load_grid().completeness.missing_info
LOST = "/nulle/part/photo-du-vase.jpg"  # a photo the client "sent" that cannot be read


relay, environ = poll_kit.relay, poll_kit.environ  # the fixtures


def quotes(relay: SMTPPeer) -> list[str]:
    return [str(m.message["Subject"]) for m in relay.received
            if "Votre devis" in str(m.message["Subject"])]


# -- the grid ---------------------------------------------------------------------------------


def test_a_lost_file_keeps_a_complete_request_incomplete_and_is_named() -> None:
    lost = [RefusedFile(name="dos.jpg", reason="fichier trop volumineux (plus de 25 Mo)")]
    text = "Vase en céramique blanche, 30 cm"
    assert assess("Vase", text, ["face.jpg"]).validation_status == "pending_credits"

    result = assess("Vase", text, ["face.jpg"], refused=lost)

    assert (result.validation_status, result.credits) == ("pending_info", None)
    assert result.missing_info == [MISSING.lost_file.format(
        name="dos.jpg", reason="fichier trop volumineux (plus de 25 Mo)")]
    assert "« dos.jpg »" in result.missing_info[0]


def test_an_empty_description_asks_for_the_description_only() -> None:
    result = assess("Vase", "", ["vase.stl"])
    assert result.validation_status == "pending_info"
    assert result.missing_info == [MISSING.description]
    # even when the title alone would be enough: the client is asked, not quoted
    assert assess("Vase en céramique blanche 30 cm", "", ["vase.stl"]).missing_info == [
        MISSING.description]


def test_the_step_waits_for_the_files_to_be_stored(ctx: object) -> None:
    from tests.conftest import classified

    doc = classified("modelisation_simple", ticket_id="1001")
    with pytest.raises(MissingInput, match="fichiers_urls"):
        STEPS["analyze"].load()(doc, ctx)  # type: ignore[arg-type]


# -- intake and the client's e-mail -----------------------------------------------------------


def test_a_photo_we_could_not_receive_is_asked_for_again_and_not_quoted(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ, fichiers=[LOST])

    assert (doc.validation_status, doc.completeness, doc.credits_estimes) == (
        "pending_info", "incomplete", None)
    assert doc.fichiers_refuses and doc.fichiers_refuses[0].name == "photo-du-vase.jpg"
    assert quotes(relay) == []
    text = body(received(relay, "client"))
    assert "« photo-du-vase.jpg »" in text and "renvoyer" in text


def test_one_photo_lost_among_two_still_means_no_quote(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    form = sample("modelisation_simple")
    doc = intake(environ, fichiers=[*form["fichiers"], LOST])

    assert doc.validation_status == "pending_info" and quotes(relay) == []
    assert doc.missing_info == [MISSING.lost_file.format(
        name="photo-du-vase.jpg", reason=doc.fichiers_refuses[0].reason)]


def test_the_lost_photo_sent_by_reply_gets_the_quote(
    environ: dict[str, str], relay: SMTPPeer, tmp_path: Path
) -> None:
    doc = intake(environ, fichiers=[LOST])
    photo = tmp_path / "photo-du-vase.jpg"
    photo.write_bytes(PNG)
    client_says(environ, doc, "Voici la photo.", files=(str(photo),))

    report = poll(at(environ, days(1)))

    assert report.ok
    assert stored(environ, doc).validation_status == "pending_credits"
    assert stored(environ, doc).fichiers_refuses == []
    assert len(quotes(relay)) == 1


def test_a_reply_whose_photo_we_cannot_keep_is_asked_for_again(
    environ: dict[str, str], relay: SMTPPeer, tmp_path: Path
) -> None:
    doc = intake(environ, "incomplete")
    big = tmp_path / "enorme.png"
    big.write_bytes(PNG + b"\0" * 2048)
    client_says(environ, doc, "C'est une lampe en métal noir, 45 cm.", files=(str(big),))

    poll(at(environ, days(1), HANDLER_MAX_FILE_BYTES="1024"))

    kept = stored(environ, doc)
    assert kept.validation_status == "pending_info" and quotes(relay) == []
    assert [f.name for f in kept.fichiers_refuses] == ["enorme.png"]
    (kind,) = [k for k in kinds(relay) if k.startswith("client_after_")]
    assert "« enorme.png »" in body(received(relay, kind))


# -- an empty description ---------------------------------------------------------------------


def test_an_empty_description_with_a_file_is_a_request_with_missing_information(
    environ: dict[str, str], relay: SMTPPeer, cli: RunCli
) -> None:
    form = {**sample("with_3d_attachment"), "objet": "Vase", "description": ""}
    done = cli("run", "-", input=json.dumps(form), env=environ)
    assert done.returncode == 0, done.stderr
    doc = Document.model_validate_json(done.stdout)
    assert doc.validation_status == "pending_info"
    assert doc.missing_info == [MISSING.description]
    assert "Quelques mots sur ce que vous souhaitez" in body(received(relay, "client"))

    no_file = cli("run", "-", input=json.dumps({**form, "fichiers": []}), env=environ)
    assert no_file.returncode == 1 and "description" in no_file.stderr


def test_the_webhook_accepts_an_empty_description_with_a_file(tmp_path: Path) -> None:
    form = {**sample("with_3d_attachment"), "objet": "Vase", "description": ""}
    form["fichiers"] = [{"name": "vase.png", "content_base64": sample(
        "modelisation_simple")["fichiers"][0]["content_base64"]}]
    with running(webhook_settings(tmp_path / "data")) as url, \
            httpx.Client(base_url=url) as client:
        answer = client.post("/webhook/request", json=form, headers=AUTH)
        assert answer.status_code == 202, answer.text
        view = wait_for(client, answer.json()["status_url"])
        refused = client.post("/webhook/request", json={**form, "fichiers": []}, headers=AUTH)
    assert view["status"] == "done"
    assert refused.status_code == 422
    assert [f["field"] for f in refused.json()["fields"]] == ["description"]


def test_an_empty_description_completed_by_reply_gets_the_quote(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ, objet="Vase", description="")
    assert doc.missing_info == [MISSING.description]
    client_says(environ, doc, "Un vase en céramique blanche de 30 cm de haut.")

    poll(at(environ, days(1)))

    kept = stored(environ, doc)
    assert kept.validation_status == "pending_credits" and len(quotes(relay)) == 1
    assert "céramique blanche" in kept.description


def test_words_that_describe_nothing_do_not_count_as_the_description(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ, objet="Vase", description="")
    client_says(environ, doc, "Je regarde ça demain.")

    poll(at(environ, days(1)))

    assert stored(environ, doc).validation_status == "pending_info" and quotes(relay) == []
