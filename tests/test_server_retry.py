"""Transient failures, the dead letter and the operator's commands, through the real chain.

The mail relay is a real SMTP server on loopback (aiosmtpd) that answers what a relay in
trouble answers: 451 (try again later) or 550 (refused for good).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from handler_cli.commands.requests import app as requests_app
from tests.conftest import clean_environ
from tests.peers import SMTPPeer, smtp_server
from tests.test_server import AUTH, payload, running, ticket_count, wait_for, webhook_settings


@pytest.fixture
def relay() -> Iterator[SMTPPeer]:
    with smtp_server() as peer:
        yield peer


def smtp_env(peer: SMTPPeer, **extra: str) -> dict[str, str]:
    return {"SMTP_HOST": peer.host, "SMTP_PORT": str(peer.port), "SMTP_SECURITY": "none",
            "SMTP_TIMEOUT": "5", **extra}


def requests_cli(data_dir: Path, *args: str) -> tuple[int, str, str]:
    """`handler-cli requests ...` in this process, with the test's environment."""
    result = CliRunner().invoke(requests_app, list(args), env=clean_environ(data_dir))
    return result.exit_code, result.stdout, result.stderr


def test_relay_trouble_is_retried_until_it_recovers_and_mails_go_once(
    tmp_path: Path, relay: SMTPPeer
) -> None:
    data_dir = tmp_path / "data"
    relay.data_reply = "451 4.3.0 Temporary failure, try again later"
    with running(webhook_settings(data_dir, **smtp_env(relay))) as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        answer = http.post("/webhook/request", json=payload(), headers=AUTH)
        assert answer.status_code == 202
        view = wait_for(http, answer.json()["status_url"], ("retrying",))
        assert view["ticket_id"]  # the steps that did not need the relay went through
        assert view["steps"]["notify-client"] == "error"
        assert "451" in view["last_error"] and view["next_attempt_at"]
        relay.data_reply = None  # the relay is back
        view = wait_for(http, answer.json()["status_url"])
    assert view["status"] == "done" and view["attempts"] >= 2
    assert set(view["steps"].values()) == {"ok"} and view["errors"] == []
    assert ticket_count(data_dir) == 1
    assert len(relay.received) == 2  # the client's and the admin's e-mail, once each


def test_lasting_trouble_ends_failed_then_list_show_and_retry(
    tmp_path: Path, relay: SMTPPeer
) -> None:
    data_dir = tmp_path / "data"
    relay.data_reply = "451 4.3.0 Temporary failure, try again later"
    settings = webhook_settings(data_dir, HANDLER_QUEUE_MAX_ATTEMPTS="2", **smtp_env(relay))
    with running(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        failing = http.post("/webhook/request", json=payload(), headers=AUTH).json()
        other = http.post("/webhook/request", json=payload(source="modelisation"),
                         headers=AUTH).json()
        view = wait_for(http, failing["status_url"])
        wait_for(http, other["status_url"])
        assert view["status"] == "failed"
        assert view["last_error"].startswith("gave up after 2 attempts")

        code, out, _ = requests_cli(data_dir, "list", "--status", "failed")
        assert code == 0
        listed = [json.loads(line) for line in out.splitlines()]
        assert {r["request_id"] for r in listed} == {failing["request_id"], other["request_id"]}
        assert all(r["status"] == "failed" and "451" in r["last_error"] for r in listed)

        code, out, _ = requests_cli(data_dir, "show", failing["request_id"], "--full")
        shown = json.loads(out)
        assert code == 0 and shown["attempts"] == 2
        assert shown["document"]["ticket_id"] == view["ticket_id"]
        assert shown["steps"]["notify-client"]["ok"] is False

        relay.data_reply = None
        code, _, err = requests_cli(data_dir, "retry", failing["request_id"])
        assert code == 0 and "queued again" in err
        assert wait_for(http, failing["status_url"])["status"] == "done"
        code, _, err = requests_cli(data_dir, "retry", failing["request_id"])
        assert code == 1 and "is done" in err
    assert ticket_count(data_dir) == 2
    assert len(relay.received) == 2  # only the replayed request's e-mails went out


def test_refusal_for_good_is_failed_at_once(tmp_path: Path, relay: SMTPPeer) -> None:
    data_dir = tmp_path / "data"
    relay.data_reply = "550 5.7.1 Relaying denied"
    with running(webhook_settings(data_dir, **smtp_env(relay))) as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        answer = http.post("/webhook/request", json=payload(), headers=AUTH).json()
        view = wait_for(http, answer["status_url"])
    assert view["status"] == "failed" and view["attempts"] == 1
    assert "550" in view["last_error"]


def test_requests_commands_report_what_they_cannot_do(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    code, out, err = requests_cli(data_dir, "list")
    assert (code, out) == (0, "") and "no request" in err
    assert requests_cli(data_dir, "show", "req_unknown")[0] == 1
    assert requests_cli(data_dir, "retry", "req_unknown")[0] == 1
    code, _, err = requests_cli(data_dir, "list", "--status", "lost")
    assert code == 2 and "expected one of" in err


def test_queue_retry_waits_grow(tmp_path: Path, relay: SMTPPeer) -> None:
    data_dir = tmp_path / "data"
    relay.data_reply = "451 4.3.0 Temporary failure"
    settings = webhook_settings(data_dir, HANDLER_QUEUE_RETRY_SECONDS="0.3",
                                HANDLER_QUEUE_RETRY_MAX_SECONDS="10",
                                HANDLER_QUEUE_MAX_ATTEMPTS="3", **smtp_env(relay))
    seen: list[float] = []
    with running(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        answer = http.post("/webhook/request", json=payload(), headers=AUTH).json()
        attempts = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            view = http.get(answer["status_url"], headers=AUTH).json()
            if view["attempts"] != attempts:
                attempts = view["attempts"]
                seen.append(time.monotonic())
            if view["status"] == "failed":
                break
            time.sleep(0.02)
    assert attempts == 3
    gaps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6  # 0.3 s, then doubled
