"""`serve` itself: secure by default when it binds, and `uvicorn handler_cli.server:app`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from handler_cli.commands.serve import is_loopback
from tests import processes
from tests.conftest import clean_environ
from tests.peers import free_port
from tests.test_server import AUTH, TOKEN, payload


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_healthy(proc: subprocess.Popen[str], url: str) -> None:
    processes.wait_healthy(proc, url, lambda: "" if proc.poll() is None else proc.communicate()[1])


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    return err


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("example.com", False),
])
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serve_refuses_to_listen_beyond_loopback_without_credentials(tmp_path: Path) -> None:
    env = clean_environ(tmp_path / "data")
    proc = subprocess.run(
        [sys.executable, "-m", "handler_cli.server", "--host", "0.0.0.0", "--port",
         str(free_port())], env=env, text=True, capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert "WEBHOOK_SECRET or WEBHOOK_TOKEN" in proc.stderr and "--insecure" in proc.stderr
    assert not (tmp_path / "data" / "requests.sqlite3").exists()


def test_serve_on_all_interfaces_with_insecure_or_a_token(tmp_path: Path) -> None:
    port = free_port()
    env = clean_environ(tmp_path / "data")
    proc = start(["-m", "handler_cli.server", "--host", "0.0.0.0", "--port", str(port),
                  "--insecure"], env)
    wait_healthy(proc, f"http://127.0.0.1:{port}")
    assert "from anywhere (--insecure)" in stop(proc)

    port = free_port()
    proc = start(["-m", "handler_cli.server", "--host", "0.0.0.0", "--port", str(port)],
                 {**env, "WEBHOOK_TOKEN": TOKEN})
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url)
    assert httpx.post(f"{url}/webhook/request", json=payload()).status_code == 401
    assert httpx.post(f"{url}/webhook/request", json=payload(), headers=AUTH
                      ).status_code == 202
    stop(proc)


def test_serve_refuses_an_unusable_secret(tmp_path: Path) -> None:
    env = clean_environ(tmp_path / "data", WEBHOOK_SECRET="whsec_***")
    proc = subprocess.run([sys.executable, "-m", "handler_cli.server", "--port",
                           str(free_port())], env=env, text=True, capture_output=True,
                          timeout=60)
    assert proc.returncode == 2 and "WEBHOOK_SECRET" in proc.stderr


def test_uvicorn_serves_the_importable_app_with_settings_from_the_environment(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = clean_environ(tmp_path / "data", WEBHOOK_TOKEN=TOKEN, HANDLER_WORKERS="1",
                        HANDLER_QUEUE_POLL_SECONDS="0.05")
    proc = start(["-m", "uvicorn", "handler_cli.server:app", "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url)
    answer = httpx.post(f"{url}/webhook/request", json=payload(), headers=AUTH)
    assert answer.status_code == 202
    deadline = time.monotonic() + 30
    while httpx.get(url + answer.json()["status_url"], headers=AUTH).json()["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stop(proc)
