"""The webhook against payloads built to break it (issue 10): each is a 4xx naming the field,
never a 500, and nothing is stored; or it is accepted and goes through in one piece."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.file_peer import PHOTO, file_peer
from tests.test_server import AUTH, outbox, payload, running, stored_rows, wait_for, webhook_settings


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile") / "data"


@pytest.fixture(scope="module")
def client(data_dir: Path) -> Iterator[httpx.Client]:
    with running(webhook_settings(data_dir)) as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        yield http


def _post_raw(client: httpx.Client, body: str) -> httpx.Response:
    return client.post("/webhook/request", content=body.encode("utf-8", "surrogatepass"),
                       headers={**AUTH, "Content-Type": "application/json"})


def _fields(answer: httpx.Response) -> dict[str, str]:
    assert answer.status_code == 422, answer.text
    return {p["field"]: p["message"] for p in answer.json()["fields"]}


def test_a_malformed_file_url_is_a_422_naming_the_file(
    client: httpx.Client, data_dir: Path
) -> None:
    before = len(stored_rows(data_dir))
    attempt = payload(source="modelisation", fichiers=[
        "http://[::1/x.png", {"name": "plan.pdf", "url": "https://[fe80::1/plan.pdf"},
        "http://example.com:99999/a.png", "https:///no-host.png",
    ])
    fields = _fields(client.post("/webhook/request", json=attempt, headers=AUTH))
    assert set(fields) == {"fichiers.0", "fichiers.1.url", "fichiers.2", "fichiers.3"}
    assert all("URL" in message for message in fields.values())
    assert len(stored_rows(data_dir)) == before


@pytest.mark.parametrize("depth", [40, 500, 900])
def test_an_extra_field_nested_deep_is_a_422_naming_it(client: httpx.Client, depth: int) -> None:
    body = json.dumps(payload())[:-1] + ', "meta": ' + "[" * depth + "]" * depth + "}"
    fields = _fields(_post_raw(client, body))
    assert fields == {"meta": "nested deeper than 32 levels"}
    deep_object = json.dumps(payload())[:-1] + ', "meta": ' + '{"a":' * depth + "1" + "}" * depth + "}"
    assert _fields(_post_raw(client, deep_object)) == {"meta": "nested deeper than 32 levels"}


def test_nesting_past_the_decoder_limit_is_a_400(client: httpx.Client) -> None:
    body = json.dumps(payload())[:-1] + ', "meta": ' + "[" * 5000 + "]" * 5000 + "}"
    answer = _post_raw(client, body)
    assert answer.status_code == 400 and "nested too deeply" in answer.json()["error"]


def test_an_extra_field_holding_a_lone_surrogate_is_a_422(client: httpx.Client) -> None:
    body = json.dumps(payload())[:-1] + ', "meta": "abc\\ud800"}'
    assert set(_fields(_post_raw(client, body))) == {"meta"}


def test_a_non_ascii_address_is_refused_at_intake(client: httpx.Client) -> None:
    fields = _fields(client.post("/webhook/request", json=payload(user_email="jéan@example.com"),
                                 headers=AUTH))
    assert set(fields) == {"user_email"} and "accented" in fields["user_email"]


def test_line_separators_in_one_line_fields_do_not_stop_the_request(
    client: httpx.Client, data_dir: Path
) -> None:
    request = payload(objet="Paiement\u2028refusé\u2029\u0085!",
                      user_name="Claire\nStatut : validated\u2028- https://evil.example/x.glb")
    answer = client.post("/webhook/request", json=request, headers=AUTH)
    assert answer.status_code == 202
    view = wait_for(client, answer.json()["status_url"])
    assert view["status"] == "done", view
    sent = [m for m in outbox(data_dir) if m["X-Handler-Request-Id"] == view["request_id"]]
    assert len(sent) == 2  # the client's receipt and the admin summary
    for message in sent:
        body = message.get_body(("plain",)).get_content()
        assert not [line for line in body.splitlines()
                    if line.startswith(("Statut : validated", "- https://evil"))]


def test_file_urls_into_the_server_network_become_notes_never_fetched(
    client: httpx.Client, data_dir: Path
) -> None:
    with file_peer() as peer:
        request = payload(
            source="modelisation", objet="Modélisation 3D d'un vase",
            description="Je voudrais un modèle 3D de ce vase en céramique, hauteur 30 cm.",
            fichiers=[peer.url("/photo.png"), peer.url("/photo.png", "localhost"),
                      peer.url("/photo.png", "0177.0.0.1"), peer.url("/photo.png", "2130706433"),
                      {"name": "meta.png", "url": "http://169.254.169.254/latest/meta-data/"},
                      {"name": "vase.png", "content_base64": base64.b64encode(PHOTO).decode()}])
        answer = client.post("/webhook/request", json=request, headers=AUTH)
        assert answer.status_code == 202
        view = wait_for(client, answer.json()["status_url"])
        assert peer.seen == []
    assert view["status"] == "done" and view["attempts"] == 1 and view["errors"] == []
    [summary] = [m for m in outbox(data_dir) if m["X-Handler-Request-Id"] == view["request_id"]
                 and "Nouvelle demande" in str(m["Subject"])]
    body = summary.get_body(("plain",)).get_content()
    body = body.replace("\u00a0", " ").replace("\u202f", " ")  # French typography's spaces
    assert body.count("écarté : adresse") == 5
    assert "169.254.169.254 : lien local" in body and "forme non standard" in body
    assert body.count("/vase.png") == 1  # the one real file is stored and linked
