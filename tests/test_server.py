"""The webhook over real HTTP: uvicorn on a loopback port, httpx as the client.

Every answer the issue lists (202, 200 for a repeat, 401, 413, 415, 400, 422), what is and is
not stored, idempotency, and the chain run by the in-process workers on the local backends.
The helpers at the top are shared by the other `test_server_*` modules.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from handler_cli.config import Settings, load_settings
from handler_cli.steps import PIPELINE, Step
from handler_cli.webhook_auth import signed_headers
from tests.conftest import clean_environ

TOKEN = "tok-5f1e2d3c4b5a69788796a5b4c3d2e1f0"
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FINAL = ("done", "failed")


def webhook_settings(data_dir: Path, **env: str) -> Settings:
    """Isolated settings: local backends under `data_dir`, fast polling and retries, workers
    as threads of the test process (the worker process is tested with real `serve`s)."""
    base = {"WEBHOOK_TOKEN": TOKEN, "HANDLER_WORKER_MODE": "thread",
            "HANDLER_QUEUE_POLL_SECONDS": "0.05",
            "HANDLER_QUEUE_RETRY_SECONDS": "0.2", "HANDLER_QUEUE_RETRY_MAX_SECONDS": "0.5"}
    return load_settings(environ=clean_environ(data_dir, **{**base, **env}))


@contextmanager
def running(
    settings: Settings,
    steps: Sequence[Step] = PIPELINE,
    forwarded_allow_ips: str | None = None,
) -> Iterator[str]:
    """The app under uvicorn in a thread, on a free loopback port; yields its base URL."""
    import uvicorn

    from handler_cli.server import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings, steps=steps, shutdown_timeout=5), lifespan="on",
        log_level="warning", proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the webhook did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def payload(**fields: Any) -> dict[str, Any]:
    """A valid support request, unique unless told otherwise."""
    data: dict[str, Any] = {
        "source": "contact",
        "objet": "Paiement refusé",
        "description": f"Mon paiement par carte a été refusé, merci de vérifier. ({uuid.uuid4()})",
        "user_email": "claire.martin@example.fr",
        "user_name": "Claire Martin",
    }
    data.update(fields)
    return data


def modelling(i: int) -> dict[str, Any]:
    """A modelling request with its 3D file (a GLB), from client `i`: the whole chain runs."""
    glb = base64.b64encode(b"glTF\x02\x00\x00\x00" + bytes(512)).decode()
    return payload(source="modelisation", objet=f"Modélisation 3D d'une lampe n°{i}",
                   description=f"Créer le modèle 3D d'une lampe en laiton, hauteur 40 cm ({i}).",
                   user_email=f"client{i}@example.fr", user_name=f"Client {i}",
                   fichiers=[{"name": f"lampe{i}.glb", "content_base64": glb}])


def wait_for(client: httpx.Client, url: str, statuses: Sequence[str] = FINAL,
             timeout: float = 30.0) -> dict[str, Any]:
    """Poll a status URL until the request reaches one of `statuses`."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(url, headers=AUTH)
        assert answer.status_code == 200, answer.text
        view: dict[str, Any] = answer.json()
        if view["status"] in statuses:
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"still {view['status']} after {timeout} s: {view}")
        time.sleep(0.05)


def stored_rows(data_dir: Path) -> list[tuple[str, str]]:
    """(request_id, status) of every request in the store, read straight from SQLite."""
    path = data_dir / "requests.sqlite3"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return db.execute("SELECT request_id, status FROM requests ORDER BY created_at").fetchall()


def ticket_count(data_dir: Path) -> int:
    path = data_dir / "crm.sqlite3"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM tickets").fetchone()[0])


def outbox(data_dir: Path) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
        for p in sorted((data_dir / "outbox").glob("*.eml"))
    ]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def base_url(data_dir: Path) -> Iterator[str]:
    with running(webhook_settings(data_dir)) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        yield http


# --- accepted ------------------------------------------------------------------------------


def test_accepted_request_is_stored_before_the_answer_then_processed(
    client: httpx.Client, data_dir: Path
) -> None:
    answer = client.post("/webhook/request", json=payload(), headers=AUTH)

    assert answer.status_code == 202
    body = answer.json()
    assert body["request_id"].startswith("req_")
    # A path on this server: no HANDLER_PUBLIC_URL here, and never the Host header.
    assert body["status_url"] == f"/requests/{body['request_id']}"
    # Already in the store when the 202 arrived (read by another connection).
    assert body["request_id"] in [rid for rid, _ in stored_rows(data_dir)]
    view = wait_for(client, body["status_url"])
    assert view["status"] == "done"
    assert view["ticket_id"] and view["type_final"] == "SUPPORT"
    assert set(view["steps"].values()) == {"ok"}
    assert list(view["steps"]) == [s.name for s in PIPELINE]
    assert ticket_count(data_dir) == 1


def test_a_locked_store_delays_the_answer_never_the_event_loop(
    client: httpx.Client, data_dir: Path
) -> None:
    """A worker holding the store's write lock: the post waits for it, then gets its 202,
    while the webhook goes on answering: its event loop never waits on the lock."""
    assert client.post("/webhook/request", json=payload(), headers=AUTH).status_code == 202
    db = sqlite3.connect(data_dir / "requests.sqlite3", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    answers: list[httpx.Response] = []
    poster = threading.Thread(target=lambda: answers.append(httpx.post(
        f"{client.base_url}/webhook/request", json=payload(), headers=AUTH, timeout=30)))
    poster.start()
    time.sleep(0.3)
    assert poster.is_alive() and not answers  # not answered before it is stored
    started = time.monotonic()
    assert client.get("/healthz").status_code == 200
    assert time.monotonic() - started < 0.25
    db.execute("ROLLBACK")
    db.close()
    poster.join(10)
    assert answers[0].status_code == 202
    assert answers[0].json()["request_id"] in [rid for rid, _ in stored_rows(data_dir)]


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_readiness_names_the_backends_strict_mode_lacks(data_dir: Path) -> None:
    with running(webhook_settings(data_dir, HANDLER_STRICT="1", HANDLER_WORKERS="0")) as url:
        ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 503
    problems = " ".join(ready.json()["problems"])
    assert "HUBSPOT_ACCESS_TOKEN" in problems and "SMTP_HOST" in problems


def test_unknown_request_is_404_and_status_needs_the_token(client: httpx.Client) -> None:
    assert client.get("/requests/req_nope", headers=AUTH).status_code == 404
    rid = client.post("/webhook/request", json=payload(), headers=AUTH).json()["request_id"]
    assert client.get(f"/requests/{rid}").status_code == 401
    assert client.get(f"/requests/{rid}", headers={"Authorization": "Bearer nope"}
                      ).status_code == 401


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
])
def test_missing_or_wrong_token_is_401_and_stores_nothing(
    client: httpx.Client, data_dir: Path, headers: dict[str, str]
) -> None:
    answer = client.post("/webhook/request", json=payload(), headers=headers)
    assert answer.status_code == 401
    assert stored_rows(data_dir) == []


@pytest.fixture
def signed_url(data_dir: Path) -> Iterator[str]:
    settings = webhook_settings(data_dir, WEBHOOK_TOKEN="", WEBHOOK_SECRET=SECRET)
    with running(settings) as url:
        yield url


def _post_signed(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}/webhook/request", content=body,
                      headers={"Content-Type": "application/json", **headers})


def test_signed_request_is_accepted_and_its_status_readable_signed(
    signed_url: str, data_dir: Path
) -> None:
    body = json.dumps(payload()).encode()
    answer = _post_signed(signed_url, body, signed_headers(SECRET, "msg_1", body))
    assert answer.status_code == 202
    status_url = signed_url + answer.json()["status_url"]
    status = httpx.get(status_url, headers=signed_headers(SECRET, "msg_status", b""))
    assert status.status_code == 200
    assert httpx.get(status_url).status_code == 401


def test_bad_stale_or_future_signatures_are_401_and_store_nothing(
    signed_url: str, data_dir: Path
) -> None:
    body = json.dumps(payload()).encode()
    other = "whsec_" + base64.b64encode(b"another-key-another-key-32-bytes").decode()
    now = int(time.time())
    cases = [
        signed_headers(other, "msg_a", body),  # wrong key
        signed_headers(SECRET, "msg_b", body + b" "),  # body changed after signing
        {**signed_headers(SECRET, "msg_c", body), "webhook-id": "msg_other"},  # id swapped
        signed_headers(SECRET, "msg_d", body, timestamp=now - 6 * 60),  # stale
        signed_headers(SECRET, "msg_e", body, timestamp=now + 6 * 60),  # from the future
        {"webhook-id": "msg_f", "webhook-timestamp": str(now)},  # no signature
        {**signed_headers(SECRET, "msg_g", body), "webhook-timestamp": "yesterday"},
    ]
    for headers in cases:
        assert _post_signed(signed_url, body, headers).status_code == 401, headers
    # A bearer token is not configured here, so it does not open the door either.
    assert _post_signed(signed_url, body, AUTH).status_code == 401
    assert stored_rows(data_dir) == []


def test_signature_within_tolerance_and_rotated_keys_are_accepted(signed_url: str) -> None:
    body = json.dumps(payload()).encode()
    old = "whsec_" + base64.b64encode(b"the-previous-key-of-32-bytes-xyz").decode()
    headers = signed_headers(SECRET, "msg_rot", body, timestamp=int(time.time()) - 4 * 60)
    stale_entry = signed_headers(old, "msg_rot", body, timestamp=int(headers["webhook-timestamp"]))
    # A sender rotating keys signs with both; ours is the second entry.
    headers["webhook-signature"] = (
        f"{stale_entry['webhook-signature']} {headers['webhook-signature']}")
    assert _post_signed(signed_url, body, headers).status_code == 202


def test_either_credential_passes_when_both_are_configured(data_dir: Path) -> None:
    settings = webhook_settings(data_dir, WEBHOOK_SECRET=SECRET)
    with running(settings) as url:
        body = json.dumps(payload()).encode()
        assert _post_signed(url, body, AUTH).status_code == 202
        body = json.dumps(payload()).encode()
        assert _post_signed(url, body, signed_headers(SECRET, "msg_x", body)).status_code == 202
        body = json.dumps(payload()).encode()
        assert _post_signed(url, body, {"Authorization": "Bearer nope"}).status_code == 401


def test_without_credentials_only_loopback_clients_are_served(data_dir: Path) -> None:
    # Behind a reverse proxy on this host, the real client is in X-Forwarded-For.
    settings = webhook_settings(data_dir, WEBHOOK_TOKEN="")
    with running(settings, forwarded_allow_ips="127.0.0.1") as url:
        local = httpx.post(f"{url}/webhook/request", json=payload())
        remote = httpx.post(f"{url}/webhook/request", json=payload(),
                            headers={"X-Forwarded-For": "203.0.113.7"})
        remote_status = httpx.get(url + local.json()["status_url"],
                                  headers={"X-Forwarded-For": "203.0.113.7"})
    assert local.status_code == 202
    assert remote.status_code == 401 and remote_status.status_code == 401
    assert len(stored_rows(data_dir)) == 1


@pytest.mark.parametrize(("header", "value"), [
    ("Forwarded", "for=203.0.113.7;proto=https"), ("X-Forwarded-For", "203.0.113.7"),
    ("X-Real-IP", "203.0.113.7"), ("X-Forwarded-Proto", "https"), ("Via", "1.1 nginx"),
])
def test_without_credentials_a_post_through_a_local_proxy_is_refused(
    data_dir: Path, header: str, value: str
) -> None:
    # A reverse proxy on this host that uvicorn was not told about: every client it forwards
    # reaches us from 127.0.0.1, but its headers give it away.
    settings = webhook_settings(data_dir, WEBHOOK_TOKEN="")
    with running(settings) as url:
        proxied = httpx.post(f"{url}/webhook/request", json=payload(), headers={header: value})
        direct = httpx.post(f"{url}/webhook/request", json=payload())
        status = httpx.get(url + direct.json()["status_url"], headers={header: value})
    assert proxied.status_code == 401 and "WEBHOOK_TOKEN" in proxied.json()["error"]
    assert status.status_code == 401
    assert direct.status_code == 202 and len(stored_rows(data_dir)) == 1


def test_with_credentials_a_proxy_in_front_is_fine(client: httpx.Client) -> None:
    answer = client.post("/webhook/request", json=payload(),
                         headers={**AUTH, "X-Forwarded-For": "203.0.113.7", "Via": "1.1 nginx"})
    assert answer.status_code == 202


def test_status_url_never_reflects_the_host_header(data_dir: Path) -> None:
    forged = {**AUTH, "Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    with running(webhook_settings(data_dir)) as url:
        plain = httpx.post(f"{url}/webhook/request", json=payload(), headers=forged)
    public = webhook_settings(data_dir, HANDLER_PUBLIC_URL="https://intake.example.com/")
    with running(public) as url:
        built = httpx.post(f"{url}/webhook/request", json=payload(), headers=forged)
    assert plain.json()["status_url"] == f"/requests/{plain.json()['request_id']}"
    assert built.json()["status_url"] == (
        f"https://intake.example.com/requests/{built.json()['request_id']}")


# --- rejected bodies ------------------------------------------------------------------------


def test_body_over_the_limit_is_413_declared_or_streamed(data_dir: Path) -> None:
    settings = webhook_settings(data_dir, HANDLER_MAX_BODY_BYTES="2048")
    big = json.dumps(payload(description="x" * 4000)).encode()
    with running(settings) as url, httpx.Client(base_url=url) as http:
        declared = http.post("/webhook/request", content=big,
                             headers={**AUTH, "Content-Type": "application/json"})

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
            for i in range(0, len(big), 512):
                yield big[i:i + 512]

        streamed = http.post("/webhook/request", content=chunks(),
                             headers={**AUTH, "Content-Type": "application/json"})
        fits = http.post("/webhook/request", json=payload(), headers=AUTH)
    assert declared.status_code == 413 and streamed.status_code == 413
    assert fits.status_code == 202
    assert len(stored_rows(data_dir)) == 1


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_not_json_content_type_is_415(
    client: httpx.Client, data_dir: Path, content_type: str | None
) -> None:
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type
    answer = client.post("/webhook/request", content=json.dumps(payload()).encode(),
                         headers=headers)
    assert answer.status_code == 415
    assert stored_rows(data_dir) == []


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"source": "contact", "objet": "caf\xe9"}', "UTF-8"),  # Latin-1, not UTF-8
    (b"\xff\xfe{\x00}\x00", "UTF-8"),  # UTF-16
    (b'{"source": "contact", ', "JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "JSON"),
])
def test_non_utf8_or_malformed_json_is_400(
    client: httpx.Client, data_dir: Path, body: bytes, reason: str
) -> None:
    answer = client.post("/webhook/request", content=body,
                         headers={**AUTH, "Content-Type": "application/json; charset=utf-8"})
    assert answer.status_code == 400
    assert reason in answer.json()["error"]
    assert stored_rows(data_dir) == []


def _fields(answer: httpx.Response) -> dict[str, str]:
    assert answer.status_code == 422, answer.text
    return {p["field"]: p["message"] for p in answer.json()["fields"]}


def test_invalid_payload_is_422_naming_each_field(client: httpx.Client, data_dir: Path) -> None:
    bad = payload(source="fax", user_email="not-an-address", objet="")
    del bad["user_name"]
    fields = _fields(client.post("/webhook/request", json=bad, headers=AUTH))
    assert set(fields) == {"source", "user_email", "objet", "user_name"}
    assert "e-mail" in fields["user_email"]

    fields = _fields(client.post("/webhook/request", json=["not", "an", "object"], headers=AUTH))
    assert set(fields) == {"body"}

    files = payload(fichiers=[{"name": "a.glb"}, 42, {"name": "", "url": "https://x.test/a"}])
    fields = _fields(client.post("/webhook/request", json=files, headers=AUTH))
    assert set(fields) == {"fichiers.0", "fichiers.1", "fichiers.2.name"}
    assert stored_rows(data_dir) == []


def test_fields_the_pipeline_sets_cannot_come_from_the_sender(
    client: httpx.Client, data_dir: Path
) -> None:
    forged = payload(ticket_id="999", type_final="SUPPORT", request_id="req_mine")
    fields = _fields(client.post("/webhook/request", json=forged, headers=AUTH))
    assert set(fields) == {"ticket_id", "type_final", "request_id"}
    assert stored_rows(data_dir) == []


def test_server_side_paths_and_non_web_urls_are_refused_as_files(
    client: httpx.Client, data_dir: Path
) -> None:
    secret_file = data_dir.parent / "secret.pdf"
    secret_file.write_bytes(b"%PDF-1.4 secret")
    attempt = payload(source="modelisation", fichiers=[
        str(secret_file), "~/.ssh/id_rsa.txt", "file:///etc/passwd.txt",
        {"name": "plan.pdf", "url": "ftp://example.com/plan.pdf"},
        "https://example.com/ok.glb",
    ])
    fields = _fields(client.post("/webhook/request", json=attempt, headers=AUTH))
    assert set(fields) == {"fichiers.0", "fichiers.1", "fichiers.2", "fichiers.3.url"}
    assert stored_rows(data_dir) == []


# --- idempotency --------------------------------------------------------------------------------


def test_replayed_webhook_id_returns_the_first_request_and_runs_once(
    signed_url: str, data_dir: Path
) -> None:
    body = json.dumps(payload()).encode()
    first = _post_signed(signed_url, body, signed_headers(SECRET, "msg_replay", body))
    assert first.status_code == 202
    deadline = time.monotonic() + 30
    while httpx.get(signed_url + first.json()["status_url"], headers=signed_headers(SECRET, "s", b"")
                    ).json()["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The sender missed our answer and sends the same message again, signed anew.
    again = _post_signed(signed_url, body, signed_headers(SECRET, "msg_replay", body))
    assert again.status_code == 200
    assert again.json()["request_id"] == first.json()["request_id"]
    assert again.json()["status"] == "done" and again.json()["duplicate"] is True
    assert len(stored_rows(data_dir)) == 1
    assert ticket_count(data_dir) == 1


def test_idempotency_key_and_identical_payload_map_to_the_first_request(
    client: httpx.Client, data_dir: Path
) -> None:
    same = payload()
    a = client.post("/webhook/request", json=same, headers={**AUTH, "Idempotency-Key": "k1"})
    b = client.post("/webhook/request", json=same, headers={**AUTH, "Idempotency-Key": "k1"})
    c = client.post("/webhook/request", json=same, headers=AUTH)  # no key: same payload
    d = client.post("/webhook/request", json=same, headers={**AUTH, "Idempotency-Key": "k2"})
    assert a.status_code == 202 and [r.status_code for r in (b, c, d)] == [200, 200, 200]
    # The same content is the same submission, whatever key it comes with: the web form
    # signs each post with a new webhook-id, and `run` has no key at all.
    assert len({r.json()["request_id"] for r in (a, b, c, d)}) == 1
    assert len(stored_rows(data_dir)) == 1


def test_fifty_concurrent_identical_posts_make_one_request_and_one_ticket(
    client: httpx.Client, base_url: str, data_dir: Path
) -> None:
    same = payload()

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
            return await asyncio.gather(*(
                http.post("/webhook/request", json=same, headers=AUTH) for _ in range(50)))

    answers = asyncio.run(burst())
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 49 + [202]
    assert len({a.json()["request_id"] for a in answers}) == 1
    wait_for(client, answers[0].json()["status_url"])
    assert len(stored_rows(data_dir)) == 1
    assert ticket_count(data_dir) == 1
    assert len(outbox(data_dir)) == 2  # the client's acknowledgement and the admin's summary


# --- hostile content, end to end ----------------------------------------------------------------


def test_path_traversal_file_names_stay_inside_the_file_store(
    client: httpx.Client, data_dir: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    glb = base64.b64encode(b"glTF\x02\x00\x00\x00" + b"\x00" * 64).decode()
    names = [f"../../../../evil-{tag}.glb", f"..\\..\\evil-{tag}.stl", f"/tmp/evil-{tag}.obj",
             f"....//....//evil-{tag}.fbx"]
    request = payload(
        source="modelisation", objet="Modélisation 3D d'une chaise",
        description=("Je voudrais créer un modèle 3D d'une chaise en chêne massif, hauteur 90 cm, "
                     f"assise 45 cm, finition vernie. ({tag})"),
        fichiers=[{"name": name, "content_base64": glb} for name in names],
    )
    answer = client.post("/webhook/request", json=request, headers=AUTH)
    assert answer.status_code == 202
    view = wait_for(client, answer.json()["status_url"])
    assert view["status"] == "done"
    written = [p for p in data_dir.parent.parent.rglob(f"*evil-{tag}*")]
    files_dir = (data_dir / "files").resolve()
    assert written, "the files were stored"
    assert all(files_dir in p.resolve().parents for p in written), written
    assert not Path(f"/tmp/evil-{tag}.obj").exists()


def test_newline_in_objet_never_reaches_an_email_header(
    client: httpx.Client, data_dir: Path
) -> None:
    request = payload(objet="Paiement refusé\r\nBcc: intrus@example.com\nX-Injected: 1")
    answer = client.post("/webhook/request", json=request, headers=AUTH)
    assert answer.status_code == 202
    assert wait_for(client, answer.json()["status_url"])["status"] == "done"
    messages = outbox(data_dir)
    assert len(messages) == 2
    for message in messages:
        assert message["Bcc"] is None and message["X-Injected"] is None
        assert "\n" not in str(message["Subject"]) and "\r" not in str(message["Subject"])
        assert "intrus@example.com" not in " ".join(
            str(v) for k, v in message.items() if k.lower() in ("to", "cc", "bcc"))
