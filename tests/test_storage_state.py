"""The documents and the ledger's effects, on every backend: what 'never back in time' and
'claimed before done' mean, store by store; and the read-only listings of the documents and
the poll's journal that `requests list/show` and `stats` show.

SQLite in a data dir, and PostgreSQL through a real server the tests start
(tests/postgres.py). The processes that share them for real are in test_parallel_runs.py
and test_scaled_out.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from handler_cli.document import Document
from handler_cli.ledger import Ledger
from handler_cli.poll import Begun, Reading
from handler_cli.replies import Reply
from handler_cli.services import ServiceError
from handler_cli.storage import DataDir, StaleDocument, Storage
from handler_cli.storage.postgres import PostgresStorage
from handler_cli.storage.sqlite import SqliteStorage
from tests.postgres import pg_session, pg_url, postgres_cluster  # noqa: F401 - fixtures


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    made: Storage
    if request.param == "sqlite":
        made = SqliteStorage(DataDir(tmp_path / "data"))
    else:
        made = PostgresStorage(request.getfixturevalue("pg_url"))
    yield made
    made.close()


def document(request_id: str = "req_doc1", **fields: object) -> Document:
    return Document.model_validate({
        "source": "modelisation", "objet": "Lampe", "description": "Une lampe en laiton.",
        "user_email": "claire@example.fr", "user_name": "Claire Martin",
        "request_id": request_id, "ticket_id": "1001", **fields})


# -- documents: a save never goes back in time -----------------------------------------------


def test_a_copy_read_before_another_save_is_refused_then_starts_from_the_stored_one(
        storage: Storage) -> None:
    docs = storage.documents
    docs.save(document(validation_status="pending_credits"))
    worker, poll = docs.get("req_doc1"), docs.by_ticket("1001")
    assert worker is not None and poll is not None
    poll.validation_status = "validated"
    poll.clickup_subtask_id = "local-1"
    docs.save(poll)
    worker.add_note("a step ran on the older copy")
    with pytest.raises(StaleDocument) as refused:
        docs.save(worker)
    assert refused.value.transient  # start again from the stored copy, not a dead letter
    kept = docs.get("req_doc1")
    assert kept is not None and kept.validation_status == "validated" and not kept.notes
    assert docs.refresh(worker) and worker.validation_status == "validated"
    worker.add_note("the step again, on the newest copy")
    docs.save(worker)
    final = docs.get("req_doc1")
    assert final is not None
    assert (final.validation_status, final.clickup_subtask_id, final.notes) == (
        "validated", "local-1", ["the step again, on the newest copy"])


def test_a_document_never_read_from_the_store_does_not_replace_the_stored_one(
        storage: Storage) -> None:
    storage.documents.save(document(validation_status="validated"))
    with pytest.raises(StaleDocument):
        storage.documents.save(document(validation_status="pending_credits"))
    assert storage.documents.refresh(fresh := document()) and fresh.validation_status == (
        "validated")
    assert not storage.documents.refresh(document("req_other"))


def test_validated_requests_without_their_subtask_are_found_again(storage: Storage) -> None:
    storage.documents.save(document("req_a", validation_status="validated"))
    storage.documents.save(document("req_b", ticket_id="1002", validation_status="validated",
                                    clickup_subtask_id="local-9"))
    storage.documents.save(document("req_c", ticket_id="1003",
                                    validation_status="pending_credits"))
    assert [d.request_id for d in storage.documents.validated_without_subtask()] == ["req_a"]


# -- read-only listings: what `requests list/show` and `stats` read ---------------------------


def test_documents_are_listed_as_saved_and_listing_them_changes_nothing(
        storage: Storage) -> None:
    start = datetime.now(UTC).replace(microsecond=0)  # SQLite keeps whole seconds
    storage.documents.save(document("req_b", ticket_id="1002", validation_status="pending_info",
                                    written_by_a_later_version="kept"))
    storage.documents.save(document("req_a"))
    read_before = storage.documents.get("req_b")

    listed = storage.documents.listing()

    assert [(d.request_id, d.ticket_id) for d in listed] == [("req_a", "1001"),
                                                               ("req_b", "1002")]
    saved = listed[1]
    assert saved.body["validation_status"] == "pending_info"
    assert saved.body["written_by_a_later_version"] == "kept"  # the JSON as it is stored
    assert saved.body["user_email"] == "claire@example.fr"
    assert saved.saved_at is not None and saved.saved_at.tzinfo is not None
    assert start <= saved.saved_at <= datetime.now(UTC)
    assert storage.documents.listing(request_id="req_b") == [saved]
    assert storage.documents.listing(ticket_id="1002") == [saved]
    assert storage.documents.listing(request_id="req_a", ticket_id="1002") == []
    assert storage.documents.listing(request_id="req_nope") == []
    assert storage.documents.listing(ticket_id="9999") == []
    # Read, not saved: the copy read before the listing is still the newest one.
    assert read_before is not None
    read_before.add_note("saved after the listing")
    storage.documents.save(read_before)


def test_the_journal_lists_its_entries_oldest_first_with_what_each_became(
        storage: Storage) -> None:
    t0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)

    def entry(n: int, request_id: str, text: str, intent: str, action: str) -> Begun:
        reply = Reply(ticket_id=f"10{n}", key=f"m{n}", source="local",
                      sender="claire@example.fr", subject="Re: votre devis", text=text,
                      at=t0 + timedelta(minutes=n))
        return Begun(reply, request_id, action, Reading(intent, 0.9, "keywords"), text, False)

    validated = entry(1, "req_a", "Je valide", "validation", "validated")
    question = entry(2, "req_a", "Et la couleur ?", "question", "forwarded")
    acting = entry(3, "req_b", "Non merci", "refus", "rejected")
    storage.journal.begin(validated, t0 + timedelta(hours=1))
    storage.journal.finish(validated.reply, t0 + timedelta(hours=1, minutes=1))
    storage.journal.park(question, "the template broke", t0 + timedelta(hours=3))
    storage.journal.begin(acting, t0 + timedelta(hours=2))

    entries = storage.journal.entries()

    assert [(e.request_id, e.ticket_id, e.action, e.state) for e in entries] == [
        ("req_a", "101", "validated", "done"), ("req_b", "103", "rejected", "acting"),
        ("req_a", "102", "forwarded", "failed")]
    done, acting_now, parked = entries
    assert datetime.fromisoformat(done.written_at or "") == t0 + timedelta(minutes=1)
    assert done.started_at == (t0 + timedelta(hours=1)).isoformat()
    assert done.handled_at == (t0 + timedelta(hours=1, minutes=1)).isoformat()
    assert (done.intent, done.text, done.error) == ("validation", "Je valide", None)
    assert acting_now.handled_at is None and acting_now.error is None
    assert (parked.intent, parked.error) == ("question", "the template broke")
    assert storage.journal.entries("req_a") == [done, parked]
    assert storage.journal.entries("req_nope") == []
    assert [b.reply.key for b in storage.journal.unfinished()] == ["m3"]  # nothing moved


# -- effects: claimed before they are done ----------------------------------------------------


def test_an_effect_is_done_once_and_its_result_kept(storage: Storage) -> None:
    ledger = Ledger(storage.effects)
    calls: list[str] = []
    assert ledger.once("ticket:req_1", lambda: calls.append("x") or "1001") == "1001"
    assert ledger.once("ticket:req_1", lambda: calls.append("y") or "1002") == "1001"
    assert calls == ["x"] and ledger.get("ticket:req_1") == ("done", "1001")


def test_a_second_claimant_waits_for_the_holder_instead_of_doing_it_again(
        storage: Storage) -> None:
    """Eight threads (eight claimants, as eight processes would be) on one key: one does
    it, slowly; the others wait for its result."""
    ledger = Ledger(storage.effects, poll_seconds=0.01)
    calls: list[int] = []
    start = threading.Barrier(8)
    results: list[str] = []

    def send(i: int) -> None:
        start.wait()

        def perform() -> str:
            calls.append(i)
            time.sleep(0.3)
            return f"sent by {i}"

        results.append(ledger.once("email:<req_1.client@x>", perform))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 1
    assert results == [f"sent by {calls[0]}"] * 8


def test_a_failed_effect_is_recovered_first_by_the_next_claimant(storage: Storage) -> None:
    """The holder failed mid-effect (the e-mail may have left): the next claimant asks the
    backend first, and does it only when it did not happen."""
    ledger = Ledger(storage.effects)

    def crash() -> str:
        raise ServiceError("crm", "timeout after the request was sent")

    with pytest.raises(ServiceError):
        ledger.once("ticket:req_2", crash)
    assert ledger.get("ticket:req_2") == ("pending", None)
    performed: list[str] = []
    assert ledger.once("ticket:req_2", lambda: performed.append("again") or "1003",
                       recover=lambda: "1002") == "1002"
    assert performed == [] and ledger.get("ticket:req_2") == ("done", "1002")
    with pytest.raises(ServiceError):
        ledger.once("ticket:req_3", crash)
    assert ledger.once("ticket:req_3", lambda: "1004", recover=lambda: None) == "1004"


def test_a_claim_whose_holder_died_is_taken_over_at_once_on_the_same_host(
        storage: Storage) -> None:
    dead = f"{socket.gethostname()}:999999999:1:00000000"  # no such process here
    now = time.time()
    assert storage.effects.claim("subtask:req_4", dead, now, now + 600,
                                 lambda owner: False).state == "new"
    recovered: list[str] = []
    ledger = Ledger(storage.effects)
    assert ledger.once("subtask:req_4", lambda: "local-2",
                       recover=lambda: recovered.append("asked") or None) == "local-2"
    assert recovered == ["asked"]


def test_a_live_holder_on_another_machine_is_waited_for_until_its_claim_runs_out(
        storage: Storage) -> None:
    elsewhere = "another-host:1234:1:00000000"
    now = time.time()
    storage.effects.claim("note:req_5:x", elsewhere, now, now + 0.4, lambda owner: False)
    started = time.monotonic()
    assert Ledger(storage.effects, poll_seconds=0.02).once("note:req_5:x", lambda: "done") == (
        "done")
    assert time.monotonic() - started >= 0.3  # it waited for the claim to run out


def test_a_locked_sqlite_ledger_is_a_transient_failure(tmp_path: Path) -> None:
    """Another process holding the ledger's write lock past the busy timeout: the step is
    tried again later (transient), never dead-lettered as a bug."""
    import sqlite3

    storage = SqliteStorage(DataDir(tmp_path / "data"))
    effects = storage.effects
    effects._db.execute("PRAGMA busy_timeout=100")  # the test's patience, not 30 s
    other = sqlite3.connect(tmp_path / "data" / "ledger.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(ServiceError) as failed:
        Ledger(effects).once("ticket:req_6", lambda: "1001")
    assert failed.value.transient and "ledger" in str(failed.value)
    other.execute("ROLLBACK")
    assert Ledger(effects).once("ticket:req_6", lambda: "1001") == "1001"
    storage.close()


def test_a_stopped_database_is_a_transient_failure_and_a_restart_costs_nothing() -> None:
    with postgres_cluster() as cluster:
        storage = PostgresStorage(cluster.url)
        ledger = Ledger(storage.effects)
        assert ledger.once("ticket:req_7", lambda: "1001") == "1001"
        cluster.stop()
        with pytest.raises(ServiceError) as failed:
            ledger.once("ticket:req_8", lambda: "1002")
        assert failed.value.transient
        cluster.start()
        assert ledger.once("ticket:req_8", lambda: "1002") == "1002"
        storage.close()


# -- a secret of the data dir, made once ------------------------------------------------------

_RACE = """
import sys, time
from pathlib import Path
from handler_cli.storage import generated_secret
start = float(sys.argv[2])
while time.time() < start:
    pass
print(generated_secret(Path(sys.argv[1])).decode())
"""


def test_processes_starting_together_agree_on_one_whole_secret(tmp_path: Path) -> None:
    """Two `run`s on a fresh data dir both need the file-key secret: each must get the same,
    whole one (half a secret would put one request's files under two keys)."""
    import subprocess
    import sys

    for attempt in range(3):
        path = tmp_path / f"data{attempt}" / "file-key.secret"
        start = time.time() + 1.0
        procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(path), str(start)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(6)]
        secrets = {p.communicate(timeout=60)[0].strip() for p in procs}
        assert len(secrets) == 1 and len(secrets.pop()) == 64
        assert [p.name for p in path.parent.iterdir()] == ["file-key.secret"]  # no leftover
        assert oct(path.stat().st_mode & 0o777) == "0o600"
