"""One submission is one request, whatever door it came through (issue 11).

The request id is derived from the payload's fingerprint (`document.submission_id`) at every
door. A sender's key (`webhook-id`, `Idempotency-Key`) names a submission already stored: its
retries are repeats, and a key reused for a different payload is answered 422, as the IETF
Idempotency-Key draft says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from handler_cli.document import Document, submission_id
from handler_cli.intake.records import KEY_WINDOW
from handler_cli.storage import RequestStore
from handler_cli.storage.postgres import Connections, PostgresRequestStore
from handler_cli.storage.sqlite import SqliteRequestStore
from handler_cli.webhook_auth import signed_headers
from tests.conftest import ROOT, clean_environ, sample
from tests.intake_helpers import NOW, new
from tests.postgres import pg_session, pg_url  # noqa: F401 - fixtures
from tests.test_server import (
    AUTH,
    SECRET,
    TOKEN,
    outbox,
    payload,
    running,
    stored_rows,
    ticket_count,
    wait_for,
    webhook_settings,
)


def run_by_hand(data_dir: Path, form: dict[str, object]) -> Document:
    """`handler-cli run` on the same form, in the same data dir as the webhook."""
    done = subprocess.run(
        [sys.executable, "-m", "handler_cli", "run", "-"], input=json.dumps(form), text=True,
        capture_output=True, cwd=ROOT, timeout=120,
        env=clean_environ(data_dir, WEBHOOK_TOKEN=TOKEN), check=False)
    assert done.returncode == 0, done.stderr
    return Document.model_validate_json(done.stdout)


def test_the_same_form_posted_and_run_by_hand_is_one_request_one_ticket_one_email(
    tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    form = sample("modelisation_simple")
    with running(webhook_settings(data_dir)) as url, httpx.Client(base_url=url) as client:
        posted = client.post("/webhook/request", json=form, headers=AUTH)
        assert posted.status_code == 202
        wait_for(client, posted.json()["status_url"])

    by_hand = run_by_hand(data_dir, form)

    assert by_hand.request_id == posted.json()["request_id"]
    assert ticket_count(data_dir) == 1
    to_client = [m for m in outbox(data_dir) if m["To"].addresses[0].addr_spec == form["user_email"]]
    assert len(to_client) == 1  # one quote, not two


def test_the_id_is_the_payload_fingerprint() -> None:
    doc = Document.model_validate(sample("modelisation_simple"))
    assert doc.request_id == submission_id(doc.payload_fingerprint())
    assert Document.model_validate({**sample("modelisation_simple"), "objet": "Autre"}
                                   ).request_id != doc.request_id


def test_the_signed_form_posted_twice_and_run_by_hand_is_one_request(tmp_path: Path) -> None:
    """The web form signs every post with a new webhook-id: the id is still the payload's."""
    data_dir = tmp_path / "data"
    form = sample("modelisation_simple")
    body = json.dumps(form).encode()
    settings = webhook_settings(data_dir, WEBHOOK_TOKEN="", WEBHOOK_SECRET=SECRET)
    with running(settings) as url:
        answers = [httpx.post(f"{url}/webhook/request", content=body, headers={
            "Content-Type": "application/json", **signed_headers(SECRET, msg, body)})
            for msg in ("msg_first", "msg_second")]
        assert [a.status_code for a in answers] == [202, 200]
        assert answers[1].json()["duplicate"] is True
        assert answers[0].json()["request_id"] == answers[1].json()["request_id"]
        with httpx.Client(base_url=url, headers=signed_headers(SECRET, "msg_status", b"")) as c:
            wait_for(c, answers[0].json()["status_url"])

    by_hand = run_by_hand(data_dir, form)

    assert by_hand.request_id == answers[0].json()["request_id"]
    assert ticket_count(data_dir) == 1


def test_an_idempotency_key_reused_for_another_payload_is_refused_with_422(
    tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    with running(webhook_settings(data_dir)) as url, httpx.Client(base_url=url) as client:
        first = client.post("/webhook/request", json=payload(),
                            headers={**AUTH, "Idempotency-Key": "order-1"})
        retry = client.post("/webhook/request", json=json.loads(first.request.content),
                            headers={**AUTH, "Idempotency-Key": "order-1"})
        other = client.post("/webhook/request", json=payload(objet="Autre chose"),
                            headers={**AUTH, "Idempotency-Key": "order-1"})

    assert first.status_code == 202
    assert retry.status_code == 200 and retry.json()["duplicate"] is True
    assert other.status_code == 422
    problem = other.json()
    assert "different payload" in json.dumps(problem)
    assert [rid for rid, _ in stored_rows(data_dir)] == [first.json()["request_id"]]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_submission_stored_long_ago_is_still_the_same_request(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Past the key window the key is forgotten, but the id is the identity."""
    store: RequestStore = (SqliteRequestStore(tmp_path / "requests.sqlite3") if backend == "sqlite"
                           else PostgresRequestStore(Connections(request.getfixturevalue("pg_url"))))
    try:
        assert store.accept_many([new(1)], NOW)[0].created
        store.accept_many([new(2)], NOW)
        later = store.accept_many([new(1, fingerprint="fp1")], NOW + KEY_WINDOW * 10)[0]
        assert (later.request_id, later.created) == ("req_1", False)
        assert sorted(r.request_id for r in store.recent()) == ["req_1", "req_2"]
        assert store.get("req_1") is not None and store.get("req_1").attempts == 0  # type: ignore[union-attr]
    finally:
        store.close()
