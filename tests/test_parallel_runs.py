"""Two `handler-cli run` processes on the same batch and the same data dir: nothing doubled.

Issue 10: with two real `run` processes on one batch, 272 of 400 e-mails reached a real SMTP
server twice, notes were doubled, and the two runs tripped on a shared temporary file. The
ledger now claims an effect before doing it, across processes. Here: two real processes,
started together on one batch, an aiosmtpd relay on loopback counting deliveries, and the
same batch run once by a single process as the measure of what "once" is.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.conftest import ROOT, clean_environ, sample
from tests.peers import SMTPPeer, smtp_server

REQUESTS = 40


def batch(path: Path) -> Path:
    """Support requests, modelling requests with a file, and some with refused files (each
    refused file is a note on the ticket)."""
    lines = []
    for i in range(REQUESTS):
        name = ("support", "modelisation_simple", "with_bad_file")[i % 3]
        doc = sample(name)
        doc["description"] += f" (demande {i})"
        doc["user_email"] = f"client{i}@example.fr"
        lines.append(json.dumps(doc, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def environ(data_dir: Path, relay: SMTPPeer) -> dict[str, str]:
    return clean_environ(data_dir, SMTP_HOST=relay.host, SMTP_PORT=str(relay.port),
                         SMTP_SECURITY="none", HANDLER_RETRY_BASE_SECONDS="0.01")


def start_run(batch_file: Path, env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "handler_cli", "-q", "run",
                                 str(batch_file)], env=env, cwd=ROOT, stdout=sink,
                                stderr=subprocess.PIPE)


def message_ids(relay: SMTPPeer) -> Counter[str]:
    return Counter(str(m.message["Message-ID"]) for m in relay.received)


def crm_rows(data_dir: Path) -> dict[str, Counter[tuple[str, ...]]]:
    with sqlite3.connect(data_dir / "crm.sqlite3") as db:
        return {
            "contacts": Counter((r[0],) for r in db.execute("SELECT email FROM contacts")),
            "tickets": Counter((r[0],) for r in db.execute("SELECT request_id FROM tickets")),
            "notes": Counter(db.execute(
                "SELECT t.request_id, n.body FROM notes n JOIN tickets t ON t.id = n.ticket_id")
                .fetchall()),
            "emails": Counter((r[0],) for r in db.execute("SELECT message_id FROM emails")),
        }


def test_two_runs_on_one_batch_deliver_every_email_and_note_once(tmp_path: Path) -> None:
    batch_file = batch(tmp_path / "batch.jsonl")

    with smtp_server() as once:  # the measure: one process, one pass
        single = tmp_path / "single"
        proc = start_run(batch_file, environ(single, once), tmp_path / "single.jsonl")
        assert proc.wait(120) == 0, proc.stderr.read() if proc.stderr else ""
    expected = message_ids(once)
    assert len(expected) >= 2 * REQUESTS and set(expected.values()) == {1}

    with smtp_server() as relay:
        shared = tmp_path / "shared"
        env = environ(shared, relay)
        first = start_run(batch_file, env, tmp_path / "first.jsonl")
        second = start_run(batch_file, env, tmp_path / "second.jsonl")
        errors = [p.stderr.read().decode() if p.stderr else "" for p in (first, second)]
        assert [first.wait(180), second.wait(180)] == [0, 0], errors
        delivered = message_ids(relay)

    doubled = {mid: n for mid, n in delivered.items() if n > 1}
    assert not doubled, (f"{len(doubled)} e-mail(s) delivered more than once, e.g. "
                         f"{sorted(doubled)[:3]}")
    assert delivered == expected  # the same e-mails, each once
    rows, reference = crm_rows(shared), crm_rows(single)
    for table in ("contacts", "tickets", "notes", "emails"):
        assert set(rows[table].values()) == {1}, (table, rows[table].most_common(3))
    assert {t: len(c) for t, c in rows.items()} == {t: len(c) for t, c in reference.items()}
    assert sum(1 for _ in rows["notes"]) > 0  # the refused files did make notes
    # Both processes printed every document, with the same ticket.
    for out in ("first.jsonl", "second.jsonl"):
        docs = [json.loads(line) for line in (tmp_path / out).read_text().splitlines()]
        assert len(docs) == REQUESTS
        assert {d["request_id"]: d["ticket_id"] for d in docs} == {
            d["request_id"]: d["ticket_id"] for d in map(
                json.loads, (tmp_path / "first.jsonl").read_text().splitlines())}
    # The files both stored under the same keys (one token per request: the installation's
    # file-key secret is made once), whole, and no temporary file left behind.
    def files(data_dir: Path) -> list[tuple[str, str]]:
        found = [p.relative_to(data_dir / "files").parts for p in
                 (data_dir / "files").rglob("*") if p.is_file()]
        assert all(len(parts) == 4 for parts in found), found  # requests/<id>/<token>/<name>
        return sorted((parts[1], parts[3]) for parts in found)

    assert files(shared) == files(single) and files(single)
