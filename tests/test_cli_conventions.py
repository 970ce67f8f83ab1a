"""The habits every Unix and Click user has (issue 12): --version, -h, completion, common
options before the command, readable help on 80 columns, doctor on stdout, a busy port, a
data dir that cannot be used."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from handler_cli import __version__
from handler_cli.cli import COMMANDS, app
from tests.conftest import ROOT, SAMPLES, RunCli, sample
from tests.peers import free_port
from tests.processes import wait_healthy
from tests.terminal import run_on_terminal

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None, input: str | None = None
           ) -> object:
    return runner.invoke(app, list(args), env=env, input=input, prog_name="handler-cli")


def every_help_page() -> Iterator[list[str]]:
    yield []
    for name, (_, target) in COMMANDS.items():
        yield [name]
        for sub in getattr(target, "registered_commands", []):
            yield [name, sub.name or sub.callback.__name__]  # type: ignore[union-attr]


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.output == f"handler-cli {__version__}\n"


@pytest.mark.parametrize("words", list(every_help_page()), ids=" ".join)
def test_help_fits_80_columns_and_reads_like_a_person_would(words: list[str]) -> None:
    long = invoke(*words, "--help", env={"COLUMNS": "80"})
    short = invoke(*words, "-h", env={"COLUMNS": "80"})
    assert long.exit_code == 0 and short.output == long.output
    page = long.output
    assert all(len(line) <= 80 for line in page.splitlines())
    assert "…" not in page  # no option name (or anything else) cut short
    for typer_type in ("<bool>", "<str>", "<int", "<float", "<path>", "<list["):
        assert typer_type not in page, typer_type


def test_an_option_shows_the_word_of_its_value() -> None:
    page = invoke("reply", "--help", env={"COLUMNS": "80"}).output
    line = next(x for x in page.splitlines() if "--file" in x)
    assert "PATH" in line
    serve = invoke("serve", "--help", env={"COLUMNS": "80"}).output
    for option in ("--forwarded-allow-ips", "--shutdown-timeout", "--access-log"):
        assert option in serve
    run = invoke("run", "--help", env={"COLUMNS": "80"}).output
    assert "[INPUT]..." in run


def test_shell_completion_is_offered_shown_and_installed(tmp_path: Path) -> None:
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1",
           "HOME": str(tmp_path)}
    cli = [sys.executable, "-m", "handler_cli"]
    shown = subprocess.run([*cli, "--show-completion", "bash"], env=env, text=True,
                           capture_output=True, timeout=60)
    assert shown.returncode == 0 and "_HANDLER_CLI_COMPLETE" in shown.stdout
    installed = subprocess.run([*cli, "--install-completion", "bash"], env=env, text=True,
                               capture_output=True, timeout=60)
    assert installed.returncode == 0, installed.stderr
    assert "handler-cli" in (tmp_path / ".bashrc").read_text()
    # what bash asks when the operator presses Tab after `handler-cli cla`
    completed = subprocess.run(
        cli, text=True, capture_output=True, timeout=60,
        env={**env, "_HANDLER_CLI_COMPLETE": "complete_bash",
             "COMP_WORDS": "handler-cli cla", "COMP_CWORD": "1"})
    assert completed.stdout.split() == ["classify"]
    grouped = subprocess.run(
        cli, text=True, capture_output=True, timeout=60,
        env={**env, "_HANDLER_CLI_COMPLETE": "complete_bash",
             "COMP_WORDS": "handler-cli requests re", "COMP_CWORD": "2"})
    assert grouped.stdout.split() == ["retry"]


def test_common_options_before_the_command(cli: RunCli) -> None:
    quiet = cli("-q", "run", str(SAMPLES / "support.json"))
    assert quiet.returncode == 0 and quiet.stderr == "" and json.loads(quiet.stdout)
    # Another request: the first is done, and running it again uses no service to refuse.
    strict = cli("--strict", "run", str(SAMPLES / "modelisation_simple.json"))
    assert strict.returncode == 2 and "strict mode" in strict.stderr
    assert cli("--strict", "doctor").returncode == 1


def test_verbose_before_the_command_sets_debug(environ: dict[str, str]) -> None:
    result = invoke("-v", "classify", str(SAMPLES / "support.json"), env=environ)
    assert result.exit_code == 0, result.output
    assert logging.getLogger("handler_cli").level == logging.DEBUG
    invoke("classify", str(SAMPLES / "support.json"), env=environ)  # and not sticky
    assert logging.getLogger("handler_cli").level == logging.INFO


@pytest.mark.parametrize(("command", "hint"), [
    ("upload", "handler-cli classify samples/modelisation_simple.json | handler-cli upload"),
    ("run", "handler-cli run samples/modelisation_simple.json"),
    ("subtask", "handler-cli requests show REQUEST_ID | handler-cli subtask"),
])
def test_no_input_on_a_terminal_hints_at_the_command_that_was_run(
        environ: dict[str, str], command: str, hint: str) -> None:
    result = run_on_terminal(command, env=environ, stdin_is_terminal=True)
    assert result.returncode == 2
    assert f"no input: give a JSON file, or pipe JSON into stdin (e.g. `{hint}`)" in result.text


# --- doctor ---------------------------------------------------------------------------------


def test_doctor_writes_its_report_on_stdout_and_creates_nothing(cli: RunCli,
                                                                environ: dict) -> None:
    data = Path(environ["HANDLER_DATA_DIR"])
    result = cli("doctor")
    assert result.returncode == 0 and result.stderr == ""
    assert "crm: local SQLite CRM" in result.stdout
    assert "(not created yet: the first run creates it)" in result.stdout
    checked = cli("doctor", "--check")
    assert checked.returncode == 0, checked.stdout
    for service in ("crm", "files", "tasks", "mailer", "replies"):
        block = checked.stdout.split(f"\n{service}: ", 1)[1].split("\n\n", 1)[0]
        assert "  check: ok — " in block, service
    assert not data.exists()


def test_doctor_check_reads_what_local_backends_hold(cli: RunCli) -> None:
    assert cli("run", str(SAMPLES / "support.json")).returncode == 0
    checked = cli("doctor", "--check").stdout
    assert "check: ok — the local CRM opens: 1 tickets" in checked
    assert "check: ok — the outbox holds 2 e-mail(s)" in checked


@pytest.fixture
def silent_smtp() -> Iterator[int]:
    """A peer that accepts the connection and never says a word (a stuck mail server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_doctor_shows_progress_while_a_slow_service_answers(environ: dict,
                                                            silent_smtp: int) -> None:
    env = {**environ, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(silent_smtp),
           "SMTP_SECURITY": "none", "SMTP_TIMEOUT": "2"}
    result = run_on_terminal("doctor", "--check", env=env)
    assert result.returncode == 1
    assert "checking mailer: SMTP" in result.text  # the spinner, on the terminal
    assert "  check: FAILED — " in result.stdout and "mailer answered in" in result.stdout


# --- serve ----------------------------------------------------------------------------------


def test_serve_on_a_busy_port_says_so_before_anything_starts(cli: RunCli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", "--port", str(port))
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "webhook ready" not in result.stderr and "Traceback" not in result.stderr


def test_serve_logs_every_refused_post_and_the_access_log_on_stderr(environ: dict,
                                                                    tmp_path: Path) -> None:
    port = free_port()
    err = (tmp_path / "serve.err").open("w+")
    out = (tmp_path / "serve.out").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "handler_cli", "serve", "--port", str(port),
                             "--access-log", "--workers", "0"],
                            env=environ, stdout=out, stderr=err, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url)
        bad = {**sample("support"), "user_email": "nope"}
        assert httpx.post(f"{url}/webhook/request", json=bad).status_code == 422
        assert httpx.post(f"{url}/webhook/request", content=b"{}",
                          headers={"content-type": "text/plain"}).status_code == 415
        assert httpx.post(f"{url}/webhook/request", json=sample("support")).status_code == 202
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    logged = (tmp_path / "serve.err").read_text()
    assert "webhook refused 422 from 127.0.0.1: invalid payload (user_email: " in logged
    assert "webhook refused 415 from 127.0.0.1: expected Content-Type: application/json" in logged
    assert '"POST /webhook/request HTTP/1.1" 202' in logged  # the access log
    assert (tmp_path / "serve.out").read_text() == ""  # stdout is for documents only


# --- the data dir ---------------------------------------------------------------------------


def test_a_data_dir_that_is_a_file_is_a_configuration_error(cli: RunCli, tmp_path: Path) -> None:
    a_file = tmp_path / "data"
    a_file.write_text("not a folder")
    for args in (["run", str(SAMPLES / "support.json")], ["requests", "list"], ["poll"]):
        result = cli(*args, env={"HANDLER_DATA_DIR": str(a_file)})
        assert result.returncode == 2, args
        assert result.stderr.strip().splitlines() == [
            f"handler-cli: error: HANDLER_DATA_DIR: {a_file} is not a folder (it is a file)"]
    below = cli("run", str(SAMPLES / "support.json"),
                env={"HANDLER_DATA_DIR": str(a_file / "sub")})
    assert below.returncode == 2 and "HANDLER_DATA_DIR" in below.stderr
    assert "Traceback" not in below.stderr and "FileExistsError" not in below.stderr
    doctor = cli("doctor", env={"HANDLER_DATA_DIR": str(a_file)})
    assert doctor.returncode == 2 and "data dir: " in doctor.stdout and "ERROR" in doctor.stdout


def test_a_data_dir_we_may_not_write_is_a_configuration_error(environ: dict,
                                                              tmp_path: Path) -> None:
    """Root may write anywhere: when the tests run as root, the command runs without the
    capabilities that let it ignore permissions (util-linux's setpriv)."""
    locked = tmp_path / "data"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    unprivileged = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    prefix = unprivileged if os.geteuid() == 0 else []
    try:
        for data_dir in (locked, locked / "sub"):
            result = subprocess.run(
                [*prefix, sys.executable, "-m", "handler_cli", "run",
                 str(SAMPLES / "support.json")],
                env={**environ, "HANDLER_DATA_DIR": str(data_dir)}, text=True,
                capture_output=True, timeout=60, cwd=ROOT)
            assert result.returncode == 2, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
            what = "" if data_dir == locked else f" (cannot create it in {locked})"
            assert result.stderr == (f"handler-cli: error: HANDLER_DATA_DIR: {data_dir} is "
                                     f"not writable{what}\n")
    finally:
        locked.chmod(stat.S_IRWXU)


EXIT_SCRIPT = """
import atexit, sys, threading, time
from handler_cli.__main__ import exit_now
atexit.register(lambda: print("|exit handlers ran", flush=True))
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.3), print("|thread done", flush=True))).start()
sys.stdout.write("output")  # not flushed yet
exit_now(int(sys.argv[2]) if sys.argv[2].isdigit() else sys.argv[2])
"""


@pytest.mark.parametrize(("thread", "code", "stdout", "returncode"), [
    ("none", "3", "output|exit handlers ran", 3),
    ("thread", "0", "output|thread done|exit handlers ran", 0),
    ("none", "bad input", "output|exit handlers ran", 1),
])
def test_the_quick_exit_flushes_runs_exit_handlers_and_waits_for_threads(
        thread: str, code: str, stdout: str, returncode: int) -> None:
    result = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, thread, code], text=True,
                            capture_output=True, cwd=ROOT, timeout=60)
    assert (result.stdout.replace("\n", ""), result.returncode) == (stdout, returncode)
    assert result.stderr == ("bad input\n" if code == "bad input" else "")
