"""One view of every request, whatever door it came through (issue 12): `requests list/show/
retry` and `stats` over requests from the webhook (a real `serve`), from `run`, and replies the
poll acted on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from handler_cli.intake.records import RequestRecord
from tests.conftest import ROOT, SAMPLES, clean_environ, sample
from tests.peers import closed_port, free_port
from tests.postgres import pg_session, pg_url  # noqa: F401 - fixtures
from tests.processes import wait_healthy
from tests.terminal import run_on_terminal

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def cli(env: dict[str, str], *args: str, input: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "handler_cli", *args], input=input,
                          text=True, capture_output=True, env=env, cwd=ROOT, timeout=120)


class Serve:
    """`handler-cli serve` in its own process, worker threads inside it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "handler_cli", "serve", "--port", str(self.port),
             "--workers", "1", "--worker-mode", "thread"],
            env=env, cwd=ROOT, stdout=self.log, stderr=self.log)
        wait_healthy(self.proc, self.url, log.read_text)

    def post(self, payload: dict) -> str:
        answer = httpx.post(f"{self.url}/webhook/request", json=payload, timeout=10)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["request_id"])

    def wait(self, request_id: str, *statuses: str) -> dict:
        deadline = time.monotonic() + 60
        while True:
            view = httpx.get(f"{self.url}/requests/{request_id}", timeout=5).json()
            if view["status"] in statuses:
                return dict(view)
            assert time.monotonic() < deadline, view
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@dataclass
class Desk:
    env: dict[str, str]
    by_webhook: list[str]  # done
    dead_letter: str  # failed on the webhook (mail down), retried once
    validated_ticket: str
    refused_ticket: str
    cli_docs: list[dict]


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    tmp = tmp_path_factory.mktemp("desk")
    env = clean_environ(tmp / "data", HANDLER_QUEUE_POLL_SECONDS="0.05")
    # the command line: a batch through `run`
    ran = cli(env, "run", str(SAMPLES / "batch.jsonl"))
    assert ran.returncode == 0, ran.stderr
    docs = [json.loads(line) for line in ran.stdout.splitlines()]
    quoted = [d["ticket_id"] for d in docs if d.get("validation_status") == "pending_credits"]
    # the client answers two quotes; the poll acts
    assert cli(env, "reply", quoted[0], "Je valide, merci").returncode == 0
    assert cli(env, "reply", quoted[1], "Non merci, trop cher pour nous").returncode == 0
    polled = cli(env, "poll")
    assert polled.returncode == 0, polled.stderr
    # the webhook: two requests go through
    server = Serve(env, tmp / "serve.log")
    try:
        ids = [server.post({**sample("support"), "objet": f"Webhook {i}"}) for i in range(2)]
        for request_id in ids:
            server.wait(request_id, "done")
    finally:
        server.stop()
    # the webhook again, its mail server down: one request ends in the dead letter
    down = {**env, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(closed_port()),
            "SMTP_SECURITY": "none", "HANDLER_QUEUE_MAX_ATTEMPTS": "1"}
    server = Serve(down, tmp / "serve.log")
    try:
        dead = server.post({**sample("modelisation_simple"), "objet": "Webhook en échec"})
        server.wait(dead, "failed")
        retried = cli(down, "requests", "retry", dead)
        assert retried.returncode == 0, retried.stderr
        server.wait(dead, "failed")
        time.sleep(0.2)
    finally:
        server.stop()
    yield Desk(env, ids, dead, quoted[0], quoted[1], docs)


def listed(desk: Desk, *args: str) -> list[dict]:
    return listed_in(desk.env, *args)


def listed_in(env: dict[str, str], *args: str) -> list[dict]:
    result = cli(env, "requests", "list", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_list_shows_every_door_newest_first(desk: Desk) -> None:
    rows = listed(desk, "--limit", "100")
    by_id = {r["request_id"]: r for r in rows}
    assert len(rows) == len(desk.cli_docs) + 3
    for doc in desk.cli_docs:
        assert by_id[doc["request_id"]]["door"] == "cli"
        assert by_id[doc["request_id"]]["ticket_id"] == doc["ticket_id"]
    for request_id in desk.by_webhook:
        assert by_id[request_id]["door"] == "webhook" and by_id[request_id]["status"] == "open"
    assert by_id[desk.dead_letter]["status"] == "failed"
    assert "notify-client" in by_id[desk.dead_letter]["last_error"]
    received = [r["received_at"] for r in rows]
    assert received == sorted(received, reverse=True)
    assert [r["request_id"] for r in listed(desk, "--limit", "2")] == [
        r["request_id"] for r in rows[:2]]


def test_list_says_what_the_client_answered_and_the_quote(desk: Desk) -> None:
    rows = {r["ticket_id"]: r for r in listed(desk, "--limit", "100")}
    validated, refused = rows[desk.validated_ticket], rows[desk.refused_ticket]
    assert validated["status"] == "validated" and validated["credits"] in (1, 2)
    assert validated["answer"]["intent"] == "validation" and validated["answer"]["at"]
    assert refused["status"] == "rejected" and refused["answer"]["intent"] == "refus"


def test_list_filters_by_status_and_period(desk: Desk) -> None:
    assert [r["request_id"] for r in listed(desk, "--status", "failed")] == [desk.dead_letter]
    assert [r["ticket_id"] for r in listed(desk, "--status", "validated")] == [
        desk.validated_ticket]
    done = listed(desk, "--status", "done", "--limit", "100")  # went through, any door
    assert len(done) == len(desk.cli_docs) + 2
    assert len(listed(desk, "--since", "1d", "--limit", "100")) == len(desk.cli_docs) + 3
    assert cli(desk.env, "requests", "list", "--since", "2999-01-01").stdout == ""
    bad = cli(desk.env, "requests", "list", "--since", "hier")
    assert bad.returncode == 2 and "--since: expected a period" in bad.stderr
    wrong = cli(desk.env, "requests", "list", "--status", "done!")
    assert wrong.returncode == 2 and "--status: expected one of" in wrong.stderr


def test_show_prints_the_current_document_which_feeds_the_next_step(desk: Desk) -> None:
    shown = cli(desk.env, "requests", "show", desk.validated_ticket)  # a ticket number works
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["ticket_id"] == desk.validated_ticket
    assert document["validation_status"] == "validated"  # as the poll left it
    script = (f"{sys.executable} -m handler_cli requests show {document['request_id']}"
              f" | {sys.executable} -m handler_cli subtask")
    piped = subprocess.run(script, shell=True, text=True, capture_output=True, env=desk.env,
                           cwd=ROOT, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["clickup_subtask_id"]
    missing = cli(desk.env, "requests", "show", "req_nope")
    assert missing.returncode == 1 and "no request or ticket req_nope" in missing.stderr


def test_show_full_tells_answers_errors_and_attempts(desk: Desk) -> None:
    full = json.loads(cli(desk.env, "requests", "show", desk.refused_ticket, "--full").stdout)
    (answer,) = full["answers"]
    assert answer["intent"] == "refus" and answer["action"] == "rejected"
    assert answer["state"] == "done" and answer["text"].startswith("Non merci")
    assert full["quote"]["credits"] == full["credits"]
    dead = json.loads(cli(desk.env, "requests", "show", desk.dead_letter, "--full").stdout)
    assert dead["door"] == "webhook" and dead["status"] == "failed"
    assert dead["attempts"] >= 1 and dead["steps"]["notify-client"]["ok"] is False
    assert any(e["step"] == "notify-client" for e in dead["error_list"])


@pytest.mark.skipif(not hasattr(RequestRecord, "history") and
                    "history" not in RequestRecord.__dataclass_fields__,
                    reason="the request store keeps attempt history once state's storage "
                           "layer lands (issue 14)")
def test_retry_keeps_the_history_of_earlier_attempts(desk: Desk) -> None:
    dead = json.loads(cli(desk.env, "requests", "show", desk.dead_letter, "--full").stdout)
    (earlier,) = dead["history"]
    assert earlier["status"] == "failed" and earlier["retried_at"]


def test_retry_of_a_command_line_request_says_how_to_run_it_again(desk: Desk) -> None:
    request_id = desk.cli_docs[0]["request_id"]
    result = cli(desk.env, "requests", "retry", request_id)
    assert result.returncode == 1
    assert f"`handler-cli requests show {request_id} | handler-cli run`" in result.stderr


def test_on_a_terminal_list_is_a_table_and_show_a_page(desk: Desk) -> None:
    table = ANSI.sub("", run_on_terminal("requests", "list", env=desk.env,
                                         stdout_is_terminal=True).text)
    header = next(line for line in table.splitlines() if "request" in line)
    assert header.split() == ["age", "request", "via", "type", "status", "ticket",
                              "quote", "client"]
    dead = next(line for line in table.splitlines() if desk.dead_letter in line)
    assert dead.split()[2:5] == ["web", "MODELISATION", "failed"]
    validated = next(line for line in table.splitlines() if f" {desk.validated_ticket} " in line)
    assert "validated" in validated and "validation now" in validated
    page = ANSI.sub("", run_on_terminal("requests", "show", desk.validated_ticket,
                                        env=desk.env, stdout_is_terminal=True).text)
    assert "the client's answers" in page and "Je valide, merci" in page
    assert '"validation_status": "validated"' in page


def test_what_a_client_wrote_is_shown_never_interpreted(tmp_path: Path) -> None:
    env = clean_environ(tmp_path / "data")
    hostile = {**sample("support"), "objet": "[bold red]urgent[/] [link=http://x]clic[/link]"}
    assert cli(env, "run", input=json.dumps(hostile)).returncode == 0
    text = ANSI.sub("", run_on_terminal("requests", "show", "1001", env=env,
                                        stdout_is_terminal=True).text)
    assert "[bold red]urgent[/] [link=http://x]clic[/link]" in text


def test_the_view_creates_no_store_of_an_embedded_installation(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = clean_environ(data)
    assert cli(env, "requests", "list").returncode == 0
    assert not data.exists()  # a data dir never used stays unmade
    assert cli(env, "run", input=json.dumps(sample("support"))).returncode == 0
    stores = sorted(p.name for p in data.glob("*.sqlite3"))
    assert "requests.sqlite3" not in stores and "poll.sqlite3" not in stores  # no webhook, no poll

    (row,) = [json.loads(line) for line in cli(env, "requests", "list").stdout.splitlines()]
    shown = cli(env, "requests", "show", row["ticket_id"])
    figures = json.loads(cli(env, "stats").stdout)

    assert row["door"] == "cli" and row["status"] == "open"
    assert json.loads(shown.stdout)["request_id"] == row["request_id"]
    assert figures["requests"] == 1
    assert sorted(p.name for p in data.glob("*.sqlite3")) == stores


def test_stats_counts_the_desk(desk: Desk) -> None:
    result = cli(desk.env, "stats")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    docs = desk.cli_docs
    assert figures["requests"] == len(docs) + 3
    assert figures["by_door"] == {"cli": len(docs), "webhook": 3}
    forms = [d["source"] for d in docs] + ["contact", "contact", "modelisation"]
    assert figures["by_form"] == {f: forms.count(f) for f in sorted(set(forms))}
    reclassified = sum(1 for d in docs if d["reclassifie"])
    classified = len(docs) + 3
    assert figures["reclassified"] == {"count": reclassified,
                                       "share": round(reclassified / classified, 3)}
    assert figures["llm"] == {"count": 0, "share": 0.0}
    credits = [d["credits_estimes"] for d in docs if any(
        e["template"].startswith("client_quote") for e in d["emails"].values())]
    assert figures["quotes"]["sent"] == len(credits)
    assert figures["quotes"]["by_credits"] == {str(c): credits.count(c)
                                               for c in sorted(set(credits))}
    assert figures["validated"] == 1 and figures["refused"] == 1 and figures["failed"] == 1
    waiting = [d["validation_status"] for d in docs if d.get("validation_status") in
               ("pending_info", "pending_credits", "pending_admin")]
    assert figures["waiting"]["count"] == len(waiting) - 2  # two answered
    assert figures["waiting"]["longest_days"] is not None
    assert figures["request_to_validation"]["count"] == 1
    assert figures["request_to_validation"]["median_hours"] >= 0
    nothing = json.loads(cli(desk.env, "stats", "--since", "2999-01-01").stdout)
    assert nothing["requests"] == 0 and nothing["reclassified"]["share"] is None


def test_stats_on_a_terminal_is_a_table(desk: Desk) -> None:
    text = ANSI.sub("", run_on_terminal("stats", "--since", "7d", env=desk.env,
                                        stdout_is_terminal=True).text)
    assert "handler-cli stats — last 7d" in text
    for label in ("by form", "reclassified", "quotes sent", "validated", "refused", "waiting",
                  "request → validation", "decided by the LLM"):
        assert label in text


def test_the_view_reads_the_shared_postgresql_of_a_scaled_out_installation(
        tmp_path: Path, pg_url: str) -> None:  # noqa: F811 - the fixture
    env = clean_environ(tmp_path / "data", HANDLER_DATABASE_URL=pg_url)
    ran = cli(env, "run", str(SAMPLES / "batch.jsonl"))
    assert ran.returncode == 0, ran.stderr
    docs = [json.loads(line) for line in ran.stdout.splitlines()]
    quoted = next(d for d in docs if d.get("validation_status") == "pending_credits")
    assert cli(env, "reply", quoted["ticket_id"], "Je valide").returncode == 0
    assert cli(env, "poll").returncode == 0
    rows = [json.loads(x) for x in cli(env, "requests", "list").stdout.splitlines()]
    assert sorted(r["request_id"] for r in rows) == sorted(d["request_id"] for d in docs)
    validated = next(r for r in rows if r["ticket_id"] == quoted["ticket_id"])
    assert validated["status"] == "validated" and validated["answer"]["intent"] == "validation"
    shown = json.loads(cli(env, "requests", "show", quoted["ticket_id"]).stdout)
    assert shown["validation_status"] == "validated"
    assert json.loads(cli(env, "stats").stdout)["validated"] == 1
    assert not (tmp_path / "data" / "documents.sqlite3").exists()  # nothing read from files
