"""`handler-cli poll` and `handler-cli reply` as an operator runs them: real subprocesses."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from handler_cli.poll import poll_lock
from handler_cli.services.tasks.local import LocalTaskBoard
from tests.conftest import ROOT, SAMPLES, RunCli
from tests.fakes.clickup import DEFAULT_PARENT_ID
from tests.peers import closed_port

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")


def data_dir(environ: dict[str, str]) -> Path:
    return Path(environ["HANDLER_DATA_DIR"])


def subtasks(environ: dict[str, str]) -> list[tuple[str, str, str]]:
    return LocalTaskBoard(data_dir(environ) / "tasks.sqlite3").subtasks(DEFAULT_PARENT_ID)


def lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_run_reply_validate_poll_then_poll_again_does_nothing(
    cli: RunCli, environ: dict[str, str]
) -> None:
    run = cli("run", str(SAMPLES / "modelisation_simple.json"))
    assert run.returncode == 0, run.stderr
    (doc,) = lines(run.stdout)
    assert doc["validation_status"] == "pending_credits"
    ticket_id = str(doc["ticket_id"])

    reply = cli("reply", ticket_id, "Je valide")
    assert reply.returncode == 0, reply.stderr
    (recorded,) = lines(reply.stdout)
    assert recorded["ticket_id"] == ticket_id and "poll" in reply.stderr

    first = cli("poll")
    assert first.returncode == 0, first.stderr
    (outcome,) = lines(first.stdout)
    assert (outcome["ticket_id"], outcome["status"]) == (ticket_id, "validated")
    assert outcome["actions"][0]["intent"] == "validation"  # type: ignore[index]
    (task,) = subtasks(environ)
    assert outcome["clickup_subtask_id"] == task[0]
    assert "1 validated" in first.stderr and "1 waiting ticket" in first.stderr

    again = cli("poll")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "" and "nothing to do" in again.stderr
    assert len(subtasks(environ)) == 1


def test_dry_run_prints_the_plan_and_changes_nothing(cli: RunCli, environ: dict[str, str]) -> None:
    cli("run", str(SAMPLES / "modelisation_simple.json"))
    cli("reply", "1001", "Non merci, c'est trop cher.")

    dry = cli("poll", "--dry-run")

    assert dry.returncode == 0, dry.stderr
    (outcome,) = lines(dry.stdout)
    assert outcome["dry_run"] is True and outcome["status"] == "rejected"
    assert "dry run, nothing changed" in dry.stderr
    real = cli("poll")
    (outcome,) = lines(real.stdout)
    assert outcome["dry_run"] is False and outcome["status"] == "rejected"


def test_a_reply_with_a_file_reaches_the_request(
    cli: RunCli, environ: dict[str, str], tmp_path: Path
) -> None:
    run = cli("run", str(SAMPLES / "incomplete.json"))
    assert lines(run.stdout)[0]["validation_status"] == "pending_info"
    photo = tmp_path / "lampe.png"
    photo.write_bytes(PNG)

    assert cli("reply", "1001", "Une lampe en métal noir, 45 cm de haut.",
               "--file", str(photo)).returncode == 0
    result = cli("poll")

    (outcome,) = lines(result.stdout)
    assert outcome["status"] == "pending_credits"
    assert outcome["actions"][0]["files"] == ["lampe.png"]  # type: ignore[index]


def test_a_poll_already_running_makes_the_second_exit_0_saying_so(
    cli: RunCli, environ: dict[str, str]
) -> None:
    cli("run", str(SAMPLES / "modelisation_simple.json"))
    cli("reply", "1001", "Je valide")

    with poll_lock(data_dir(environ)) as holder:  # this test process is the other poll
        assert holder is None
        second = cli("poll")

    assert second.returncode == 0 and second.stdout == ""
    assert "another poll is running" in second.stderr and f"pid {os.getpid()}" in second.stderr
    assert subtasks(environ) == []


def test_overlapping_polls_act_on_each_reply_once(cli: RunCli, environ: dict[str, str]) -> None:
    docs = []
    for n in range(12):
        data = json.loads((SAMPLES / "modelisation_simple.json").read_text(encoding="utf-8"))
        data["user_email"] = f"client{n}@example.fr"
        docs.append(json.dumps(data))
    run = cli("run", input="\n".join(docs))
    tickets = [str(d["ticket_id"]) for d in lines(run.stdout)]
    for ticket_id in tickets:
        cli("reply", ticket_id, "Je valide")

    command = [sys.executable, "-m", "handler_cli", "poll"]
    procs = [subprocess.Popen(command, cwd=ROOT, env=environ, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    results = [p.communicate(timeout=120) for p in procs]

    assert [p.returncode for p in procs] == [0, 0, 0]
    acted = [o for out, _ in results for o in lines(out)]
    assert sorted(str(o["ticket_id"]) for o in acted) == sorted(tickets)
    assert len(subtasks(environ)) == len(tickets)
    outbox = data_dir(environ) / "outbox"
    assert len(list(outbox.glob("*.client_validated@*.eml"))) == len(tickets)


def test_a_failing_reply_source_exits_1(cli: RunCli, environ: dict[str, str]) -> None:
    cli("run", str(SAMPLES / "modelisation_simple.json"))
    result = cli("poll", env={"HANDLER_REPLY_SOURCES": "local,imap", "IMAP_HOST": "127.0.0.1",
                              "IMAP_PORT": str(closed_port()), "IMAP_USER": "u",
                              "IMAP_PASSWORD": "secret-imap-pass", "IMAP_SECURITY": "none"})
    assert result.returncode == 1
    assert "reply source imap" in result.stderr and "1 failure" in result.stderr
    assert "secret-imap-pass" not in result.stderr


def test_a_wrong_reply_source_setting_exits_2_naming_it(cli: RunCli) -> None:
    result = cli("poll", env={"HANDLER_REPLY_SOURCES": "local,pigeon"})
    assert result.returncode == 2
    assert "HANDLER_REPLY_SOURCES" in result.stderr and "pigeon" in result.stderr
    assert "Traceback" not in result.stderr


def test_reply_to_an_unknown_ticket_exits_2(cli: RunCli) -> None:
    result = cli("reply", "4242", "Je valide")
    assert result.returncode == 2 and "no ticket 4242" in result.stderr


def test_reply_with_a_missing_file_exits_2(cli: RunCli, tmp_path: Path) -> None:
    cli("run", str(SAMPLES / "modelisation_simple.json"))
    result = cli("reply", "1001", "voici", "--file", str(tmp_path / "absent.png"))
    assert result.returncode == 2 and "no such file" in result.stderr


def test_watch_keeps_polling_until_interrupted(cli: RunCli, environ: dict[str, str]) -> None:
    cli("run", str(SAMPLES / "modelisation_simple.json"))
    proc = subprocess.Popen([sys.executable, "-m", "handler_cli", "poll", "--watch", "1"],
                            cwd=ROOT, env=environ, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)  # a first pass with nothing to do
        assert cli("reply", "1001", "Parfait, on y va").returncode == 0
        selector = selectors.DefaultSelector()
        assert proc.stdout is not None
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=30), "no outcome line within 30 s"
        outcome = json.loads(proc.stdout.readline())
        assert outcome["status"] == "validated"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "every 1 s" in err and "stopped" in err
