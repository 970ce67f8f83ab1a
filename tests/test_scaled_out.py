"""Issue 14's scaled-out mode, machine by machine: three data dirs, one PostgreSQL.

Three "machines", each a data dir of its own and real processes, share one PostgreSQL (the
tests start it, tests/postgres.py) and the live services' stand-ins on loopback: HubSpot
(tests/fakes/hubspot.py), ClickUp (tests/fakes/clickup.py), R2 (moto's S3 server) and an
SMTP relay (aiosmtpd) that can hold a delivery at RCPT.

- machine A takes the requests in (`serve --workers 0`: no worker of its own);
- machine B's worker process runs them, one at a time, until it is killed (`kill -9`) while
  it is sending a quote: the relay holds that delivery, so the kill lands mid-chain, in the
  middle of an e-mail;
- machine A then starts a worker process, which takes the dead worker's request over and
  runs what is left;
- machine C runs `handler-cli poll`, which finds the documents of requests run on B and on A
  in the shared store and acts on their clients' validations.

Then: every request done, one ticket each, every e-mail delivered once (the interrupted
quote included), one ClickUp subtask per validation, nothing in any machine's data dir that
the others would need.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from handler_cli.storage.postgres import PostgresStorage
from tests.conftest import ROOT, clean_environ
from tests.fakes.clickup import DEFAULT_PARENT_ID, FakeClickUp, clickup_server
from tests.fakes.hubspot import FakeHubSpot, hubspot_server
from tests.peers import LOOPBACK, S3Peer, free_port, s3_peer, s3_server_session  # noqa: F401
from tests.postgres import pg_session, pg_url  # noqa: F401 - fixtures
from tests.processes import stop_processes, wait_healthy
from tests.test_server import AUTH, TOKEN, modelling

REQUESTS = 8
DONE_BY_B = 3  # B completes this many, then is killed sending the next one's quote
EMAIL_TO_TICKET = 224  # HubSpot's association type: e-mail to ticket


@dataclass
class HoldingRelay:
    """An SMTP relay on loopback that records what it accepts and, once `hold_after`
    messages went through, holds every next delivery at RCPT until `release()`."""

    hold_after: int
    port: int = field(default_factory=free_port)
    received: list[str] = field(default_factory=list)  # Message-IDs, in order
    held: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any,  # noqa: N802
                          address: str, rcpt_options: list[str]) -> str:
        if len(self.received) >= self.hold_after and not self.released.is_set():
            self.held.set()
            await asyncio.to_thread(self.released.wait, 60)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        from email.parser import BytesParser

        message = BytesParser().parsebytes(bytes(envelope.content), headersonly=True)
        self.received.append(str(message["Message-ID"]).strip())
        return "250 Message accepted for delivery"

    def release(self) -> None:
        self.released.set()


@contextmanager
def holding_relay(hold_after: int) -> Iterator[HoldingRelay]:
    from aiosmtpd.controller import Controller

    relay = HoldingRelay(hold_after)
    controller = Controller(relay, hostname=LOOPBACK, port=relay.port, server_hostname="mx.test")
    controller.start()
    try:
        yield relay
    finally:
        relay.release()
        controller.stop()


@dataclass
class Machine:
    """One machine: its data dir and environment, and the processes it runs."""

    name: str
    env: dict[str, str]
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{self.name}.log").open("ab") as sink:
            proc = subprocess.Popen([sys.executable, "-m", *args], env=self.env, cwd=ROOT,
                                    stdout=sink, stderr=sink)
        self.procs.append(proc)
        return proc

    def serve(self) -> str:
        port = free_port()
        proc = self.start("handler_cli", "serve", "--port", str(port), "--workers", "0")
        url = f"http://{LOOPBACK}:{port}"
        wait_healthy(proc, url, self.log)
        return url

    def worker(self, threads: int) -> subprocess.Popen[bytes]:
        return self.start("handler_cli.queue", "--workers", str(threads), "--nice", "0")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "handler_cli", *args], env=self.env,
                              cwd=ROOT, capture_output=True, text=True, timeout=120)

    def log(self) -> str:
        path = self.logs / f"{self.name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        stop_processes(self.procs)


def statuses(storage: PostgresStorage, ids: list[str]) -> dict[str, str]:
    found = {}
    for rid in ids:
        rec = storage.requests.get(rid)
        assert rec is not None
        found[rid] = rec.status
    return found


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def client_validates(hubspot: FakeHubSpot, storage: PostgresStorage, rid: str, n: int) -> str:
    """The client's answer to the quote, logged on the ticket as HubSpot's inbox does."""
    doc = storage.documents.get(rid)
    assert doc is not None and doc.ticket_id and doc.validation_status == "pending_credits"
    hubspot.add("emails", {
        "hs_timestamp": (datetime.now(UTC) + timedelta(seconds=n)).isoformat(),
        "hs_email_direction": "INCOMING_EMAIL", "hs_email_subject": "Re: votre devis",
        "hs_email_text": "Bonjour, je valide le devis, vous pouvez commencer.",
        "hs_email_from_email": doc.user_email,
        "hs_email_headers": json.dumps({"Message-Id": f"<answer-{n}@mail.example.fr>",
                                        "In-Reply-To": doc.emails["client"].message_id}),
    }, associations=[("tickets", doc.ticket_id, EMAIL_TO_TICKET)])
    return doc.ticket_id


def test_three_machines_share_one_state_through_a_worker_killed_mid_chain(
        tmp_path: Path, pg_url: str, s3_peer: S3Peer) -> None:  # noqa: F811 - fixtures
    s3_peer.create_bucket("studio-files")
    storage = PostgresStorage(pg_url)
    with ExitStack() as stack:
        hubspot: FakeHubSpot = stack.enter_context(hubspot_server())
        clickup: FakeClickUp = stack.enter_context(clickup_server())
        relay = stack.enter_context(holding_relay(hold_after=2 * DONE_BY_B))
        shared = {
            "HANDLER_DATABASE_URL": pg_url, "WEBHOOK_TOKEN": TOKEN,
            "HANDLER_FILE_KEY_SECRET": "one-secret-for-every-machine-0123456789",
            **hubspot.environ(),
            "CLICKUP_API_TOKEN": clickup.token, "CLICKUP_BASE_URL": clickup.url,
            "SMTP_HOST": LOOPBACK, "SMTP_PORT": str(relay.port), "SMTP_SECURITY": "none",
            "R2_ENDPOINT_URL": s3_peer.endpoint_url, "R2_BUCKET": "studio-files",
            "R2_ACCESS_KEY_ID": s3_peer.access_key_id,
            "R2_SECRET_ACCESS_KEY": s3_peer.secret_access_key,
            "HANDLER_PUBLIC_URL": "https://intake.example.com",
            "HANDLER_FILE_LINK_SECRET": "one-link-secret-for-every-machine-0123456789",
            "HANDLER_QUEUE_POLL_SECONDS": "0.05", "HANDLER_RETRY_BASE_SECONDS": "0.01",
        }
        a, b, c = (Machine(name, clean_environ(tmp_path / name, **shared), tmp_path)
                   for name in ("a", "b", "c"))
        stack.callback(b.stop)
        stack.callback(a.stop)

        # Machine A takes the requests in; nobody runs them yet.
        url = a.serve()
        with httpx.Client(base_url=url, timeout=30) as http:
            answers = [http.post("/webhook/request", json=modelling(i), headers=AUTH)
                       for i in range(REQUESTS)]
        assert [r.status_code for r in answers] == [202] * REQUESTS
        ids = [r.json()["request_id"] for r in answers]
        assert set(statuses(storage, ids).values()) == {"queued"}

        # Machine B runs them, one at a time, until it is killed sending a quote.
        worker_b = b.worker(threads=1)
        assert relay.held.wait(60), b.log()
        by_b = [rid for rid, s in statuses(storage, ids).items() if s == "done"]
        (interrupted,) = [rid for rid, s in statuses(storage, ids).items() if s == "running"]
        assert len(by_b) == DONE_BY_B
        worker_b.kill()  # kill -9, while its SMTP session waits for the relay
        worker_b.wait(10)
        relay.release()
        assert statuses(storage, [interrupted]) == {interrupted: "running"}  # B's lease

        # Machine A's worker takes the dead worker's request over and runs the rest.
        a.worker(threads=2)
        wait_until(lambda: set(statuses(storage, ids).values()) == {"done"}, 90,
                   f"not all done: {statuses(storage, ids)}\n{a.log()}")
        by_a = [rid for rid in ids if rid not in by_b]
        assert interrupted in by_a

        # Machine C's poll acts on the validations of requests run on B and on A.
        validated = [by_b[0], interrupted, by_a[-1]]
        tickets = [client_validates(hubspot, storage, rid, n) for n, rid in enumerate(validated)]
        polled = c.run("poll")
        assert polled.returncode == 0, polled.stderr
        outcomes = [json.loads(line) for line in polled.stdout.splitlines()]
        assert sorted((o["ticket_id"], o["status"]) for o in outcomes) == sorted(
            (t, "validated") for t in tickets)
        assert "no request document" not in polled.stderr

    # One ticket per request, created by whichever machine ran it.
    by_request = Counter(t["properties"].get("handler_request_id")
                         for t in hubspot.tickets.values())
    assert by_request == Counter(ids)
    # Every e-mail delivered once: a quote and an admin summary per request (the interrupted
    # quote, held when its sender died, sent once by its new holder), and the poll's two per
    # validation.
    delivered = Counter(relay.received)
    assert set(delivered.values()) == {1}, delivered.most_common(3)
    kinds = Counter(mid.split(".", 1)[1].split("@")[0] for mid in delivered)
    assert kinds == {"client": REQUESTS, "admin": REQUESTS, "admin_validated": 3,
                     "client_validated": 3}
    assert f"<{interrupted}.client@valione-services.com>" in delivered
    # One production subtask per validation, in ClickUp.
    subtasks = clickup.subtasks_of(DEFAULT_PARENT_ID)
    assert len(subtasks) == 3
    for rid in validated:
        doc = storage.documents.get(rid)
        assert doc is not None and doc.validation_status == "validated"
        assert doc.clickup_subtask_id in {t["id"] for t in subtasks}
    # The state is in the shared database and the live services, not on one machine's disk:
    # no local store, CRM, task board, outbox or file folder was ever opened (the HubSpot
    # client's own memo of e-mails it read may be there: a cache, not state).
    ours = {"requests.sqlite3", "documents.sqlite3", "ledger.sqlite3", "poll.sqlite3",
            "queue.sqlite3", "crm.sqlite3", "tasks.sqlite3", "outbox", "files"}
    for machine in ("a", "b", "c"):
        local = {p.name for p in (tmp_path / machine).glob("*")}
        assert not local & ours, (machine, local)
    storage.close()
