"""A webhook retry never writes an older copy of the document back over what the poll saved.

Issue 10: a request retried by the worker after the poll validated it wrote its older copy
back (`pending_credits`, no subtask) while the CRM said `validated`. Here the real chain runs
in the webhook's runner against a real SMTP relay on loopback; the admin's summary is refused
once by the relay (451, try later), so the request waits in `retrying` with its quote sent;
the client validates and the poll acts; then the retry runs: after the poll, or while the
poll acts (its copy read before the poll's save).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from handler_cli.config import load_settings
from handler_cli.context import Context
from handler_cli.document import Document, submission_id
from handler_cli.intake.records import NewRequest
from handler_cli.poll import poll
from handler_cli.queue import RequestQueue
from handler_cli.steps import PIPELINE, STEPS
from tests import poll_kit
from tests.conftest import sample
from tests.intake_helpers import FnStep, wait_status
from tests.peers import SMTPPeer
from tests.poll_kit import client_says, kinds, relay_environ, subtasks

BUSY = "451 4.3.0 Mailbox busy, try again later"


relay = poll_kit.relay  # the fixture


@pytest.fixture
def environ(tmp_path: Path, relay: SMTPPeer) -> dict[str, str]:
    return relay_environ(tmp_path, relay, HANDLER_QUEUE_RETRY_SECONDS="0.05",
                         HANDLER_QUEUE_RETRY_MAX_SECONDS="0.1")


class AdminSummary:
    """The real notify-admin step, but the relay refuses the first summary (a 451); later
    runs can be held at a gate, to let the poll act while the retry is in flight."""

    def __init__(self, relay: SMTPPeer) -> None:
        self.relay = relay
        self.runs = 0
        self.entered = threading.Event()
        self.gate: threading.Event | None = None
        self.real = STEPS["notify-admin"].load()

    def __call__(self, doc: Document, ctx: Context) -> Document:
        self.runs += 1
        if self.runs == 1:
            self.relay.rcpt_reply = BUSY
            try:
                return self.real(doc, ctx)
            finally:
                self.relay.rcpt_reply = None
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        return self.real(doc, ctx)

    def chain(self) -> list[FnStep]:
        return [*PIPELINE[:-1], FnStep("notify-admin", "notify_admin", "admin summary", fn=self)]


def accept(rq: RequestQueue) -> str:
    doc = Document.model_validate(sample("modelisation_simple"))
    fingerprint = doc.payload_fingerprint()
    doc.request_id = submission_id(fingerprint)
    rq.store.accept_many([NewRequest(doc.request_id, doc.to_json(), fingerprint)], time.time())
    return doc.request_id


def waiting_for_the_client(rq: RequestQueue, rid: str) -> Document:
    rq.process(rid)
    rec = rq.store.get(rid)
    assert rec is not None and rec.status == "retrying", rec
    assert "451" in (rec.last_error or "")
    doc = Document.model_validate_json(rec.document)
    assert doc.validation_status == "pending_credits" and doc.ticket_id
    return doc


def assert_validated_everywhere(environ: dict[str, str], rq: RequestQueue, rid: str,
                                relay: SMTPPeer) -> None:
    ctx = Context(load_settings(environ=environ))
    stored = ctx.documents.get(rid)
    assert stored is not None and stored.ticket_id
    (task,) = subtasks(environ)
    assert (stored.validation_status, stored.clickup_subtask_id) == ("validated", task[0])
    ticket = ctx.crm.get_ticket(stored.ticket_id)
    assert (ticket["validation_status"], ticket["clickup_subtask_id"]) == ("validated", task[0])
    rec = rq.store.get(rid)
    assert rec is not None and rec.status == "done"
    assert rec.data()["validation_status"] == "validated"  # the record's copy too
    assert "admin" in stored.emails and "client_validated" in stored.emails
    # Every e-mail once: the quote, the admin's summary (after its 451), the poll's two.
    assert sorted(kinds(relay)) == sorted(["client", "admin", "admin_validated",
                                           "client_validated"])


def test_a_retry_after_the_poll_validated_keeps_the_validation(
        environ: dict[str, str], relay: SMTPPeer) -> None:
    summary = AdminSummary(relay)
    rq = RequestQueue(load_settings(environ=environ), summary.chain())
    rid = accept(rq)
    doc = waiting_for_the_client(rq, rid)

    client_says(environ, doc, "Je valide le devis, merci.", when=datetime.now(UTC))
    report = poll(Context(load_settings(environ=environ)))
    assert report.ok and [o.status for o in report.outcomes] == ["validated"]

    time.sleep(0.1)  # the retry is due
    rq.process(rid)
    assert summary.runs == 2
    assert_validated_everywhere(environ, rq, rid, relay)
    rq.close()


def test_a_retry_in_flight_while_the_poll_validates_starts_again_from_the_poll_s_copy(
        environ: dict[str, str], relay: SMTPPeer) -> None:
    summary = AdminSummary(relay)
    rq = RequestQueue(load_settings(environ=environ), summary.chain())
    rid = accept(rq)
    doc = waiting_for_the_client(rq, rid)
    client_says(environ, doc, "C'est d'accord, je valide.", when=datetime.now(UTC))

    summary.gate = threading.Event()
    time.sleep(0.1)
    retry = threading.Thread(target=rq.process, args=(rid,))
    retry.start()
    assert summary.entered.wait(30)  # the retry read its copy: pending_credits
    report = poll(Context(load_settings(environ=environ)))
    assert [o.status for o in report.outcomes] == ["validated"]
    summary.gate.set()
    retry.join(30)
    wait_status(rq, rid, "done")
    assert summary.runs >= 2
    assert_validated_everywhere(environ, rq, rid, relay)
    rq.close()
