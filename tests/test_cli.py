"""The command line as operators and cron use it: real processes, real pipes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, SAMPLES, RunCli, sample

STEP_COMMANDS = ["classify", "upload", "contact", "ticket", "analyze", "notify-client",
                 "notify-admin"]
VOLATILE = {"request_id", "contact_id", "ticket_id", "ticket_url", "fichiers_urls", "emails",
            "errors"}


def stable(doc: dict) -> dict:
    """A document without what legitimately differs between two data dirs (ids, times)."""
    out = {k: v for k, v in doc.items() if k not in VOLATILE}
    out["emails"] = sorted((k, e["template"], e["to"]) for k, e in doc.get("emails", {}).items())
    out["files"] = [u.split("?", 1)[0].rsplit("/", 1)[-1] for u in doc.get("fichiers_urls", [])]
    return out


def test_help_lists_every_step_and_teaches_the_pipe(cli: RunCli) -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in [*STEP_COMMANDS, "run", "doctor", "subtask"]:
        assert command in result.stdout
    assert "cat req.json | handler-cli classify" in result.stdout


def test_every_command_is_listed_in_its_panel_and_a_typo_gets_a_suggestion(cli: RunCli) -> None:
    """Commands are converted lazily (handler_cli.cli); help must still show them all."""
    from handler_cli.cli import COMMANDS

    listed = cli("--help", env={"COLUMNS": "120"}).stdout
    for name, (panel, _) in COMMANDS.items():
        line = next((x for x in listed.splitlines() if x.startswith(f"│ {name} ")), "")
        assert line, f"{name} missing from --help"
        panel_line = next(x for x in listed.splitlines() if f"─ {panel} ─" in x)
        assert listed.index(panel_line) < listed.index(line)
    groups = cli("requests", "--help", env={"COLUMNS": "120"})
    assert groups.returncode == 0 and " retry " in groups.stdout
    typo = cli("clasify", input="")
    assert typo.returncode == 2 and "Did you mean 'classify'" in typo.stderr


def test_run_processes_a_sample_and_prints_only_json_on_stdout(cli: RunCli) -> None:
    result = cli("run", str(SAMPLES / "support.json"))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["type_final"] == "SUPPORT" and doc["ticket_id"] and "client" in doc["emails"]
    assert "crm: local SQLite CRM" in result.stderr  # which backend is active is visible


def test_bad_lines_are_reported_with_line_and_field_and_do_not_stop_others(cli: RunCli) -> None:
    good = json.dumps(sample("support"))
    bad = json.dumps({**sample("support"), "user_email": "nope"})
    result = cli("classify", input=f"{good}\n{bad}\n{{oops\n{good}\n")
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 2
    assert "line 2: user_email: not a valid e-mail address" in result.stderr
    assert "line 3: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2(cli: RunCli, tmp_path: Path) -> None:
    assert cli("run", str(tmp_path / "missing.json")).returncode == 2
    assert cli("no-such-command").returncode == 2
    bad_setting = cli("classify", input=json.dumps(sample("support")),
                      env={"SMTP_PORT": "not-a-number"})
    assert bad_setting.returncode == 2 and "SMTP_PORT" in bad_setting.stderr


def test_strict_mode_refuses_local_backends(cli: RunCli) -> None:
    result = cli("run", "--strict", str(SAMPLES / "support.json"))
    assert result.returncode == 2
    assert "strict mode" in result.stderr and "HUBSPOT_ACCESS_TOKEN" in result.stderr
    env_strict = cli("contact", input=json.dumps(sample("support")), env={"HANDLER_STRICT": "1"})
    assert env_strict.returncode == 2


def test_doctor_shows_backends_and_masks_secrets(cli: RunCli) -> None:
    result = cli("doctor", env={"SMTP_PASSWORD": "super-secret-password", "SMTP_HOST": "127.0.0.1"})
    assert result.returncode == 0, result.stderr
    assert "crm: local SQLite CRM" in result.stdout
    assert "mailer: " in result.stdout and "SMTP_HOST = 127.0.0.1  [environment]" in result.stdout
    assert "super-secret-password" not in result.stdout + result.stderr
    assert cli("doctor", "--strict").returncode == 1


def test_pipe_of_steps_equals_run(cli: RunCli, environ: dict[str, str], tmp_path: Path) -> None:
    batch = (SAMPLES / "batch.jsonl").read_text(encoding="utf-8")
    piped_env = {**environ, "HANDLER_DATA_DIR": str(tmp_path / "piped")}
    script = " | ".join(f"{sys.executable} -m handler_cli {c}" for c in STEP_COMMANDS)
    piped = subprocess.run(script, shell=True, input=batch, text=True, capture_output=True,
                           env=piped_env, cwd=ROOT, timeout=120)
    assert piped.returncode == 0, piped.stderr
    chained = cli("run", input=batch)
    assert chained.returncode == 0, chained.stderr
    a = [stable(json.loads(line)) for line in piped.stdout.splitlines()]
    b = [stable(json.loads(line)) for line in chained.stdout.splitlines()]
    assert len(a) == len(batch.splitlines()) and a == b


def test_rerun_creates_no_second_contact_ticket_or_email(cli: RunCli, environ: dict) -> None:
    batch = (SAMPLES / "batch.jsonl").read_text(encoding="utf-8")
    first = cli("run", input=batch)
    again = cli("run", input=batch)  # from the original payloads
    resumed = cli("run", input=first.stdout)  # from the finished documents
    assert first.returncode == again.returncode == resumed.returncode == 0
    data = Path(environ["HANDLER_DATA_DIR"])
    db = sqlite3.connect(data / "crm.sqlite3")
    n_docs = len(batch.splitlines())
    assert db.execute("SELECT COUNT(*) FROM tickets").fetchone()[0] == n_docs
    emails = sum(len(json.loads(line)["emails"]) for line in first.stdout.splitlines())
    assert len(list((data / "outbox").glob("*.eml"))) == emails
    assert db.execute("SELECT COUNT(*) FROM emails").fetchone()[0] == emails
    assert [json.loads(x)["ticket_id"] for x in again.stdout.splitlines()] == [
        json.loads(x)["ticket_id"] for x in first.stdout.splitlines()
    ]


def test_python_dash_m_and_console_script_agree(environ: dict[str, str]) -> None:
    script = Path(sys.executable).with_name("handler-cli")
    assert script.exists(), "the package must install the handler-cli console script"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                         env={**os.environ, **environ})
    assert out.returncode == 0 and "classify" in out.stdout


def test_on_a_terminal_run_shows_a_summary_and_stdout_stays_json(environ: dict) -> None:
    """stderr is a pseudo-terminal here, as for an operator; stdout is piped."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "handler_cli", "run", str(SAMPLES / "batch.jsonl")],
        stdout=subprocess.PIPE, stderr=follower, stdin=subprocess.DEVNULL,
        env={**environ, "COLUMNS": "100", "TERM": "xterm"}, cwd=ROOT,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.wait(timeout=60) == 0
    terminal = b"".join(chunks).decode(errors="replace")
    assert "handler-cli run" in terminal and "9 ok, 0 failed" in terminal
    assert "pending_credits" in terminal and "local SQLite CRM" in terminal
    assert [json.loads(line)["request_id"] for line in stdout.splitlines()]
