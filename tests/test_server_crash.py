"""`kill -9` and SIGTERM on a real `serve` process, with the real chain on the local backends.

The server runs as `handler-cli serve` (through `python -m handler_cli`) in its own process,
with its worker process; the test posts requests, kills it while chains are
half done, restarts it, and counts what the backends hold: one ticket and two e-mails per
accepted request, nothing lost, nothing doubled, nothing left running.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import clean_environ
from tests.peers import free_port
from tests.processes import wait_healthy
from tests.test_server import AUTH, TOKEN, payload, stored_rows, ticket_count

N = 40
STEPS = 7


@contextmanager
def serve_process(data_dir: Path, log: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    environ = clean_environ(data_dir, WEBHOOK_TOKEN=TOKEN, HANDLER_QUEUE_POLL_SECONDS="0.05",
                            HANDLER_QUEUE_RETRY_SECONDS="0.2", **env)
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "handler_cli", "serve", "--port", str(port), "--workers", "2",
             "--shutdown-timeout", "10"],
            env=environ, stdout=sink, stderr=sink,
        )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, lambda: f"serve did not start:\n{log.read_text()}")
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def requests_batch(n: int) -> list[dict[str, object]]:
    """Support requests, and modelling requests with a 3D file (seven real steps each)."""
    glb = base64.b64encode(b"glTF\x02\x00\x00\x00" + os.urandom(2048)).decode()
    batch = []
    for i in range(n):
        if i % 2:
            batch.append(payload(
                source="modelisation", objet=f"Modélisation 3D d'un vase n°{i}",
                description=("Je voudrais créer un modèle 3D d'un vase en céramique, hauteur 30 "
                             f"cm, diamètre 12 cm, émail brillant. Référence {i}."),
                user_email=f"client{i}@example.fr",
                fichiers=[{"name": f"vase{i}.glb", "content_base64": glb}]))
        else:
            batch.append(payload(user_email=f"client{i}@example.fr"))
    return batch


def post_all(url: str, batch: list[dict[str, object]], expect: int = 202) -> list[str]:
    with httpx.Client(base_url=url, timeout=30) as http:
        answers = [http.post("/webhook/request", json=p, headers=AUTH) for p in batch]
    assert [a.status_code for a in answers] == [expect] * len(batch)
    return [a.json()["request_id"] for a in answers]


def rows(data_dir: Path) -> list[tuple[str, str, dict[str, object]]]:
    with sqlite3.connect(data_dir / "requests.sqlite3") as db:
        found = db.execute("SELECT request_id, status, steps FROM requests").fetchall()
    return [(rid, status, json.loads(steps)) for rid, status, steps in found]


def half_done(data_dir: Path) -> list[str]:
    """Requests whose chain has started and not finished."""
    return [rid for rid, status, steps in rows(data_dir)
            if status == "running" and 0 < len(steps) < STEPS]


def kill_mid_chain(proc: subprocess.Popen[bytes], data_dir: Path, timeout: float = 30) -> list[str]:
    """SIGKILL the server the moment a chain is half done; the ids that were."""
    deadline = time.monotonic() + timeout
    while not half_done(data_dir):
        assert time.monotonic() < deadline, "no chain was ever seen half done"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return half_done(data_dir)


def wait_all_done(url: str, ids: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=30) as http:
        while True:
            views = [http.get(f"/requests/{rid}", headers=AUTH).json() for rid in ids]
            if all(v["status"] == "done" for v in views):
                return views
            assert not [v for v in views if v["status"] == "failed"], views
            assert time.monotonic() < deadline, [v["status"] for v in views]
            time.sleep(0.1)


def assert_exactly_once(data_dir: Path, ids: list[str]) -> None:
    """One ticket and two e-mails (client, admin) per request, no more, no fewer."""
    assert sorted(rid for rid, _ in stored_rows(data_dir)) == sorted(ids)
    assert ticket_count(data_dir) == len(ids)
    with sqlite3.connect(data_dir / "crm.sqlite3") as db:
        ticketed = {r for (r,) in db.execute("SELECT request_id FROM tickets")}
        logged = db.execute("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM emails").fetchone()
        contacts = db.execute("SELECT COUNT(*) FROM contacts").fetchone()[0]
    assert ticketed == set(ids)
    assert contacts == len(ids)  # one distinct client per request in this batch
    eml = sorted((data_dir / "outbox").glob("*.eml"))
    assert len(eml) == 2 * len(ids)
    assert tuple(logged) == (2 * len(ids), 2 * len(ids))
    with sqlite3.connect(data_dir / "requests.sqlite3") as db:
        docs = [json.loads(d) for (d,) in db.execute("SELECT document FROM requests")]
    sent = {e["message_id"].strip("<>") for d in docs for e in d["emails"].values()}
    assert {p.stem for p in eml} == {m.replace("/", "_") for m in sent}


def test_kill_9_mid_chain_then_restart_completes_every_request_exactly_once(
    tmp_path: Path,
) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "serve.log"
    batch = requests_batch(N)
    with serve_process(data_dir, log) as (proc, url):
        ids = post_all(url, batch)
        interrupted = kill_mid_chain(proc, data_dir)
    assert interrupted, "the kill landed between two chains; nothing proven"
    assert sorted(rid for rid, _ in stored_rows(data_dir)) == sorted(ids)  # nothing lost

    # A second crash, on the restarted server, while it resumes.
    with serve_process(data_dir, log) as (proc, url):
        kill_mid_chain(proc, data_dir)

    with serve_process(data_dir, log) as (proc, url):
        views = wait_all_done(url, ids)
        again = post_all(url, batch[:5], expect=200)  # senders retry: same ids, no new work
    assert again == ids[:5]
    assert all(set(v["steps"].values()) == {"ok"} for v in views)
    assert_exactly_once(data_dir, ids)


def test_sigterm_stops_accepting_finishes_steps_and_hands_back_the_rest(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "serve.log"
    batch = requests_batch(N)
    with serve_process(data_dir, log) as (proc, url):
        ids = post_all(url, batch)
        deadline = time.monotonic() + 30
        while not half_done(data_dir):
            assert time.monotonic() < deadline
            time.sleep(0.002)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        assert time.monotonic() - started < 15
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=1)
    assert code in (0, -signal.SIGTERM), log.read_text()[-2000:]
    statuses = {status for _, status, _ in rows(data_dir)}
    assert "running" not in statuses  # every chain in flight was finished or handed back
    assert "handed back to the queue" in log.read_text() or statuses == {"done"}

    with serve_process(data_dir, log) as (proc, url):
        wait_all_done(url, ids)
    assert_exactly_once(data_dir, ids)


def worker_child(proc: subprocess.Popen[bytes]) -> int:
    """The pid of serve's worker process (`python -m handler_cli.queue`)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            children = (task / "children").read_text().split()
            for pid in children:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"handler_cli.queue" in cmdline:
                    return int(pid)
        time.sleep(0.05)
    raise AssertionError("no worker process")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_worker_process_killed_alone_is_restarted_and_dies_with_serve(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "serve.log"
    batch = requests_batch(20)
    with serve_process(data_dir, log) as (proc, url):
        child = worker_child(proc)
        ids = post_all(url, batch)
        # Chains run on CPU time the webhook leaves: nice 19 and Linux's idle scheduling
        # (set by the child as it starts).
        deadline = time.monotonic() + 10
        while os.sched_getscheduler(child) != os.SCHED_IDLE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.sched_getscheduler(child) == os.SCHED_IDLE
        assert os.getpriority(os.PRIO_PROCESS, child) == 19
        os.kill(child, signal.SIGKILL)
        wait_all_done(url, ids)  # a new worker process took over
        replacement = worker_child(proc)
        assert replacement != child
        assert httpx.get(f"{url}/readyz").status_code == 200
        proc.send_signal(signal.SIGKILL)  # the whole service crashes...
        proc.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{replacement}").exists() and (
                Path(f"/proc/{replacement}/stat").read_text().split()[2] != "Z"):
            assert time.monotonic() < deadline, "the worker outlived serve"  # ...entirely
            time.sleep(0.05)
    assert "worker process exited" in log.read_text()
    assert_exactly_once(data_dir, ids)
