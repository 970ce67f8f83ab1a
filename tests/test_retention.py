"""Personal data that can be forgotten (issue 14, RGPD): retention and the right to erasure.

On the embedded backend and on the shared one (a real PostgreSQL the tests start), with the
local services (outbox, file folder, CRM, task board) holding the copies a real run makes:
requests come in through `run` and through the webhook's runner, a client validates and the
poll acts, then `requests prune`, the poll's own retention pass, and `forget` erase what they
must, and only that. Looking for the address byte by byte in every file of the data dir (and
in every table of the database) is the proof that it is gone, not only hidden.
"""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from handler_cli.config import load_settings
from handler_cli.context import Context
from handler_cli.document import Document, submission_id
from handler_cli.intake.records import NewRequest
from handler_cli.ledger import Ledger
from handler_cli.pipeline import run_chain
from handler_cli.poll import poll
from handler_cli.queue import RequestQueue
from handler_cli.retention import DAY, prune
from handler_cli.services.crm.local import LocalCRM
from handler_cli.services.tasks.local import LocalTaskBoard
from tests.conftest import ROOT, clean_environ, sample
from tests.fakes.clickup import DEFAULT_PARENT_ID
from tests.fakes.hubspot import FakeHubSpot, hubspot_server
from tests.poll_kit import client_says
from tests.postgres import pg_session, pg_url  # noqa: F401 - fixtures

CLAIRE = "claire.martin@example.fr"
PAUL = "paul.bernard@example.fr"
LATER = 400 * DAY  # past the default retention of 365 days


@pytest.fixture(params=["sqlite", "postgresql"])
def environ(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    extra = {"HANDLER_QUEUE_RETRY_SECONDS": "0.05"}
    if request.param == "postgresql":
        extra["HANDLER_DATABASE_URL"] = request.getfixturevalue("pg_url")
    return clean_environ(tmp_path / "data", **extra)


def context(environ: dict[str, str], **clock: float) -> Context:
    later = clock.get("later", 0.0)
    return Context(load_settings(environ=environ),
                   now=lambda: datetime.now(UTC) + timedelta(seconds=later))


def run(environ: dict[str, str], name: str, n: int, **fields: Any) -> Document:
    """A request through `run`'s door (the chain, by hand)."""
    data = {**sample(name), **fields}
    data["description"] += f" ({n})"
    doc = Document.model_validate(data)
    ctx = context(environ)
    run_chain(doc, ctx)
    ctx.storage.close()
    assert doc.ticket_id
    return doc


def webhook(environ: dict[str, str], n: int, *, process: bool = True,
            email: str = PAUL) -> str:
    """A support request through the webhook's door: stored, then run by a worker."""
    rq = RequestQueue(load_settings(environ=environ))
    doc = Document.model_validate({**sample("support"), "user_email": email,
                                   "description": f"Mon paiement a échoué ({n})."})
    fingerprint = doc.payload_fingerprint()
    doc.request_id = submission_id(fingerprint)
    rq.store.accept_many([NewRequest(doc.request_id, doc.to_json(), fingerprint)], time.time())
    if process:
        rq.process(doc.request_id)
    rq.close()
    return doc.request_id


def validated(environ: dict[str, str], doc: Document) -> Document:
    client_says(environ, doc, "Je valide le devis, merci.", when=datetime.now(UTC))
    ctx = context(environ)
    report = poll(ctx)
    assert [o.status for o in report.outcomes] == ["validated"], report.failures
    found = ctx.documents.get(doc.request_id)
    assert found is not None and found.clickup_subtask_id
    ctx.storage.close()
    return found


def cli(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "handler_cli", *args], env=environ, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def outbox_of(environ: dict[str, str], rid: str) -> list[str]:
    folder = Path(environ["HANDLER_DATA_DIR"]) / "outbox"
    return sorted(p.name for p in folder.glob(f"{rid}.*.eml"))


def present(environ: dict[str, str], rid: str, ticket: str | None) -> dict[str, bool]:
    """Where a request still is, store by store."""
    ctx = context(environ)
    data = Path(environ["HANDLER_DATA_DIR"])
    crm = LocalCRM(data / "crm.sqlite3")
    ledger = Ledger(ctx.storage.effects)
    where = {
        "record": ctx.storage.requests.get(rid) is not None,
        "document": ctx.storage.documents.get(rid) is not None,
        "ledger": ledger.get(f"ticket:{rid}") is not None,
        "outbox": bool(outbox_of(environ, rid)),
        "files": (data / "files" / "requests" / rid).exists(),
        "crm ticket": crm.find_ticket(rid) is not None,
        "journal": bool(ticket and ctx.journal.actions(ticket)),
    }
    ctx.storage.close()
    return where


def traces(environ: dict[str, str], needle: str) -> list[str]:
    """Every file of the data dir, and every table of the shared database, that still
    holds `needle` (an e-mail address), byte for byte."""
    found = []
    for path in Path(environ["HANDLER_DATA_DIR"]).rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes().lower():
            found.append(str(path.name))
    url = environ.get("HANDLER_DATABASE_URL")
    if url:
        import psycopg

        with psycopg.connect(url) as db:
            tables = [r[0] for r in db.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            for table in tables:
                row = db.execute(f"SELECT count(*) FROM {table} t WHERE lower(t::text)"
                                 " LIKE %s", (f"%{needle}%",)).fetchone()
                if row and row[0]:
                    found.append(f"table {table}")
    return found


# -- retention -----------------------------------------------------------------------------


def test_prune_erases_finished_requests_from_every_store_never_one_still_waiting(
        environ: dict[str, str]) -> None:
    support = run(environ, "support", 1)
    quoted = run(environ, "modelisation_simple", 2, user_email="marc@example.fr")
    done = validated(environ, run(environ, "modelisation_simple", 3,
                                  user_email="lea@example.fr"))
    by_webhook = webhook(environ, 4)
    queued = webhook(environ, 5, process=False)
    finished = sorted([support.request_id, done.request_id, by_webhook])
    before = {rid: present(environ, rid, done.ticket_id if rid == done.request_id else None)
              for rid in finished}
    # Through `run`: no webhook record; in every other store.
    assert [k for k, v in before[done.request_id].items() if not v] == ["record"]
    assert before[by_webhook]["record"] and before[by_webhook]["document"]

    # Not yet a year: nothing goes.
    assert prune(context(environ)).request_ids == []
    # A year and more: the dry run lists them and erases nothing.
    dry = prune(context(environ), now=time.time() + LATER, dry_run=True)
    assert dry.request_ids == finished and dry.removed == {}
    assert present(environ, support.request_id, None)["document"]

    erased = prune(context(environ), now=time.time() + LATER)

    assert erased.request_ids == finished
    for rid in finished:
        ticket = done.ticket_id if rid == done.request_id else None
        assert not any(present(environ, rid, ticket).values()), (rid, present(environ, rid,
                                                                                ticket))
    assert LocalTaskBoard(Path(environ["HANDLER_DATA_DIR"]) / "tasks.sqlite3").subtasks(
        DEFAULT_PARENT_ID) == []
    # Still waiting: the quote (on the client), the queued request (on a worker).
    assert present(environ, quoted.request_id, None)["document"]
    assert outbox_of(environ, quoted.request_id)
    assert (Path(environ["HANDLER_DATA_DIR"]) / "files" / "requests" / quoted.request_id
            ).exists()
    ctx = context(environ)
    rec = ctx.storage.requests.get(queued)
    assert rec is not None and rec.status == "queued"
    ctx.storage.close()
    assert set(erased.removed) >= {"requests", "documents", "ledger", "journal", "files",
                                   "stored attachments", "local CRM tickets",
                                   "local subtasks"}


def test_the_poll_prunes_after_its_pass_and_the_command_says_what_went(
        environ: dict[str, str]) -> None:
    old = run(environ, "support", 6)
    report = poll(context(environ, later=LATER))  # the poll a year and more later
    assert report.ok, report.failures
    assert not present(environ, old.request_id, None)["document"]

    newer = run(environ, "support", 7, user_email="zoe@example.fr")
    dry = cli({**environ, "HANDLER_RETENTION_DAYS": "0"}, "requests", "prune", "--dry-run")
    assert dry.returncode == 0 and json.loads(dry.stdout)["request_ids"] == []
    assert "retention is off" in dry.stderr
    none_yet = cli(environ, "requests", "prune")
    assert none_yet.returncode == 0 and json.loads(none_yet.stdout)["request_ids"] == []
    # Kept for a while only: an operator may shorten it (here, to nothing but a second;
    # SQLite stamps a document to the second).
    time.sleep(2.1)
    pruned = cli(environ, "requests", "prune", "--days", "0.00001")
    assert pruned.returncode == 0, pruned.stderr
    out = json.loads(pruned.stdout)
    assert out["request_ids"] == [newer.request_id] and out["removed"]["documents"] == 1
    assert "prune: erased 1 request(s)" in pruned.stderr


# -- the right to erasure ------------------------------------------------------------------


def test_forget_erases_one_client_everywhere_and_nothing_of_the_others(
        environ: dict[str, str]) -> None:
    first = run(environ, "support", 10)
    second = run(environ, "modelisation_simple", 11, user_email=CLAIRE, user_name="Claire Martin")
    through_webhook = webhook(environ, 12, email=CLAIRE)
    paul = run(environ, "modelisation_simple", 13)
    replies = Path(environ["HANDLER_DATA_DIR"]) / "replies"
    replies.mkdir(parents=True)
    (replies / "reponse.eml").write_text(
        f"From: Claire Martin <{CLAIRE}>\nTo: studio@example.fr\nSubject: Re: devis\n"
        f"In-Reply-To: {second.emails['client'].message_id}\n\nJe réfléchis.\n")
    assert traces(environ, CLAIRE)

    dry = cli(environ, "forget", CLAIRE, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["request_ids"] == sorted(
        [first.request_id, second.request_id, through_webhook])
    assert present(environ, first.request_id, None)["document"]

    done = cli(environ, "forget", CLAIRE.upper())  # the address, however it is typed

    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["request_ids"] == sorted([first.request_id, second.request_id, through_webhook])
    assert out["removed"]["local CRM contacts"] == 1 and out["removed"]["documents"] == 3
    assert out["removed"]["requests"] == 1 and out["left"] == []
    assert CLAIRE not in done.stdout.lower() and CLAIRE not in done.stderr.lower()
    assert traces(environ, CLAIRE) == []  # not in any file, not in any table
    assert traces(environ, "claire martin") == []
    kept = present(environ, paul.request_id, None)  # the other client is untouched
    assert {k: kept[k] for k in ("document", "ledger", "outbox", "files", "crm ticket")} == (
        dict.fromkeys(("document", "ledger", "outbox", "files", "crm ticket"), True))
    assert traces(environ, PAUL)


def test_a_replayed_post_from_a_forgotten_address_is_held_and_the_admin_told(
        environ: dict[str, str]) -> None:
    first = webhook(environ, 20, email=CLAIRE)
    assert cli(environ, "forget", CLAIRE).returncode == 0

    replayed = webhook(environ, 20, email=CLAIRE)  # the same post, sent again

    assert replayed == first
    ctx = context(environ)
    rec = ctx.storage.requests.get(replayed)
    assert rec is not None and rec.status == "failed" and rec.steps == {}
    assert (rec.last_error or "").startswith("held: this client's data was erased")
    assert LocalCRM(Path(environ["HANDLER_DATA_DIR"]) / "crm.sqlite3").find_ticket(
        replayed) is None  # nothing was done
    (told,) = outbox_of(environ, replayed)
    assert ".admin_forgotten_held@" in told
    message = email.message_from_bytes(
        (Path(environ["HANDLER_DATA_DIR"]) / "outbox" / told).read_bytes(),
        policy=email.policy.default)
    assert message["To"] == load_settings(environ=environ).admin_email
    assert "Demande retenue" in message["Subject"]
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "droit à l'effacement" in text and f"handler-cli forget --lift {CLAIRE}" in text
    ctx.storage.close()

    # The client came back of their own accord: lift, then replay.
    lifted = cli(environ, "forget", "--lift", CLAIRE)
    assert lifted.returncode == 0 and json.loads(lifted.stdout) == {"action": "lift",
                                                                     "lifted": True}
    rq = RequestQueue(load_settings(environ=environ))
    assert rq.retry(replayed) == "failed"
    rq.process(replayed)
    done = rq.store.get(replayed)
    assert done is not None and done.status == "done" and done.data()["ticket_id"]
    rq.close()


def test_forget_refuses_what_is_not_an_address(environ: dict[str, str]) -> None:
    for wrong in ("claire", "claire@", "a b@example.fr"):
        result = cli(environ, "forget", wrong)
        assert result.returncode == 2 and "EMAIL" in result.stderr


@pytest.fixture
def hubspot() -> Iterator[FakeHubSpot]:
    with hubspot_server() as fake:
        yield fake


def test_forget_with_crm_asks_hubspot_to_erase_the_contact(
        tmp_path: Path, hubspot: FakeHubSpot) -> None:
    environ = clean_environ(tmp_path / "data", **hubspot.environ(),
                            HANDLER_RETRY_BASE_SECONDS="0.01")
    doc = run(environ, "support", 30)
    (contact_id,) = [c["id"] for c in hubspot.contacts.values()
                     if c["properties"].get("email") == CLAIRE]

    without = cli(environ, "forget", CLAIRE)
    assert without.returncode == 0 and hubspot.gdpr_deleted == []
    assert any("--crm" in item for item in json.loads(without.stdout)["left"])

    done = cli(environ, "forget", CLAIRE, "--crm")

    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["crm"] == "hubspot: contact erased" and hubspot.gdpr_deleted == [contact_id]
    assert not any("--crm" in item for item in out["left"])
    assert [c for c in hubspot.contacts.values() if c["properties"].get("email") == CLAIRE] == []
    assert CLAIRE not in hubspot.blocklist  # deleted by id: the client may come back
    # What HubSpot keeps besides the contact is said, to be erased there.
    assert any(f"ticket(s) {doc.ticket_id}" in item for item in json.loads(without.stdout)[
        "left"])
