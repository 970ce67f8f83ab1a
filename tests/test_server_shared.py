"""The scaled-out mode: state and queue in a real PostgreSQL, shared by several nodes.

Two webhook nodes (each with its workers) and separate `huey_consumer` worker processes,
as the production guide describes, against a PostgreSQL cluster the tests start
(tests/postgres.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from typer.testing import CliRunner

from handler_cli.commands.requests import app as requests_app
from handler_cli.storage.postgres import Connections, PostgresRequestStore
from tests.conftest import clean_environ
from tests.postgres import pg_session, pg_url  # noqa: F401 - fixtures
from tests.processes import stop_processes
from tests.test_server import (
    AUTH,
    TOKEN,
    modelling,
    outbox,
    payload,
    running,
    ticket_count,
    wait_for,
    webhook_settings,
)


@contextmanager
def consumer(data_dir: Path, database: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`huey_consumer handler_cli.queue.huey -w 2`: a worker-only process."""
    env = clean_environ(data_dir, HANDLER_DATABASE_URL=database, WEBHOOK_TOKEN=TOKEN,
                        HANDLER_QUEUE_RETRY_SECONDS="0.2")
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "huey.bin.huey_consumer", "handler_cli.queue.huey",
             "-w", "2", "-k", "thread", "-d", "0.05", "-m", "0.2"],
            env=env, stdout=sink, stderr=sink,
        )
    try:
        yield proc
    finally:
        stop_processes([proc], signal.SIGINT, grace=15)  # huey's graceful signal


def test_two_nodes_share_the_store_the_queue_and_the_idempotency_keys(
    tmp_path: Path, pg_url: str  # noqa: F811 - fixture
) -> None:
    data_dir = tmp_path / "data"  # one machine's disk: the local CRM both nodes write to
    settings = webhook_settings(data_dir, HANDLER_DATABASE_URL=pg_url)
    with running(settings) as url_a, running(settings) as url_b, \
            httpx.Client(timeout=30) as http:
        firsts, repeats = [], []
        for i in range(20):
            here, there = (url_a, url_b) if i % 2 else (url_b, url_a)
            body = modelling(i) if i % 3 == 0 else payload(user_email=f"client{i}@example.fr")
            key = {"Idempotency-Key": f"form-{i}"}
            firsts.append(http.post(f"{here}/webhook/request", json=body,
                                    headers={**AUTH, **key}))
            repeats.append(http.post(f"{there}/webhook/request", json=body,
                                     headers={**AUTH, **key}))
        assert [a.status_code for a in firsts] == [202] * 20
        assert [a.status_code for a in repeats] == [200] * 20
        ids = [a.json()["request_id"] for a in firsts]
        assert [a.json()["request_id"] for a in repeats] == ids
        for rid in ids:  # either node answers for any request
            view = wait_for(http, f"{url_b}/requests/{rid}")
            assert view["status"] == "done", view
    assert ticket_count(data_dir) == 20
    assert len(outbox(data_dir)) == 40

    result = CliRunner().invoke(requests_app, ["list", "--status", "done", "--limit", "100"],
                                env=clean_environ(data_dir, HANDLER_DATABASE_URL=pg_url))
    assert result.exit_code == 0
    assert sorted(json.loads(line)["request_id"] for line in result.stdout.splitlines()) == (
        sorted(ids))


def test_intake_node_with_separate_consumers_survives_a_consumer_killed_mid_chain(
    tmp_path: Path, pg_url: str  # noqa: F811 - fixture
) -> None:
    data_dir = tmp_path / "data"
    settings = webhook_settings(data_dir, HANDLER_DATABASE_URL=pg_url, HANDLER_WORKERS="0")
    log = tmp_path / "consumer.log"
    with running(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        ids = [http.post("/webhook/request", json=modelling(i), headers=AUTH).json()["request_id"]
               for i in range(60)]
        time.sleep(0.3)
        statuses = {http.get(f"/requests/{rid}", headers=AUTH).json()["status"] for rid in ids}
        assert statuses == {"queued"}  # intake only: nobody works on this node

        store = PostgresRequestStore(Connections(pg_url))
        with consumer(data_dir, pg_url, log) as worker:
            deadline = time.monotonic() + 30
            while not any(r.status == "running" and 0 < len(r.steps) < 7
                          for r in store.open_requests()):  # kill it while a chain is half done
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.002)
            worker.kill()
            worker.wait(10)
        interrupted = [r.request_id for r in store.open_requests() if r.status == "running"]
        assert interrupted
        store.close()

        with ExitStack() as stack:  # two fresh consumers pick everything up
            stack.enter_context(consumer(data_dir, pg_url, log))
            stack.enter_context(consumer(data_dir, pg_url, tmp_path / "consumer2.log"))
            views = [wait_for(http, f"{url}/requests/{rid}", timeout=60) for rid in ids]
    assert {v["status"] for v in views} == {"done"}, log.read_text()[-3000:]
    assert ticket_count(data_dir) == 60
    assert len(outbox(data_dir)) == 120
