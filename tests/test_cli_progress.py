"""How a batch tells a person how it went (issue 12): on a terminal, a progress bar that
shows the total of a file and never has a log line written into it; under cron, one
summary line."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import SAMPLES, RunCli, sample
from tests.terminal import run_on_terminal

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def batch_with_bad_lines(path: Path, n: int = 300) -> Path:
    lines = []
    for i in range(n):
        doc = {**sample("support"), "objet": f"Demande {i}"}
        if i % 25 == 7:
            doc["user_email"] = "pas-une-adresse"
        lines.append(json.dumps(doc))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_log_lines_never_land_inside_the_progress_bar(environ: dict, tmp_path: Path) -> None:
    batch = batch_with_bad_lines(tmp_path / "batch.jsonl")
    result = run_on_terminal("run", str(batch), env=environ)
    assert result.returncode == 1 and len(result.stdout.splitlines()) == 288
    raw = result.terminal
    starts = [m.start() for m in re.finditer(rb"handler-cli: ", raw)]
    errors = [m.start() for m in re.finditer(rb"handler-cli: error: ", raw)]
    assert len(errors) == 12
    bar = raw.find(b"documents \x1b[")
    assert -1 < bar < errors[0], "the bar was not drawn before the first log line"
    for at in starts:
        before = raw[:at]
        # each log line starts on a line of its own: after a newline, or after the bar was
        # erased (rich's "\r ESC[2K"), never right after the bar's text
        assert at == 0 or before.endswith((b"\n", b"\x1b[2K")), raw[at - 80:at + 40]
    for at in errors:
        line = raw[at:raw.index(b"\r\n", at)]
        assert ANSI.search(line) is None and line.endswith(b"not a valid e-mail address")


def test_the_bar_shows_how_much_of_the_file_is_read(environ: dict, tmp_path: Path) -> None:
    batch = batch_with_bad_lines(tmp_path / "batch.jsonl", 200)
    size_kb = f"/{batch.stat().st_size / 1000:.1f} kB"
    text = ANSI.sub(b"", run_on_terminal("run", str(batch), env=environ).terminal).decode()
    assert size_kb in text and "100%" in text and "200 documents" in text
    assert "handler-cli run" in text and "192 ok, 0 failed, 8 unreadable" in text


def test_on_stdin_the_bar_counts_without_a_total(environ: dict, tmp_path: Path) -> None:
    batch = batch_with_bad_lines(tmp_path / "batch.jsonl", 50).read_text()
    text = ANSI.sub(b"", run_on_terminal("run", env=environ, stdin=batch).terminal).decode()
    assert "kB" not in text and "48 ok, 0 failed, 2 unreadable" in text


def test_a_successful_batch_under_cron_prints_one_summary_line(cli: RunCli) -> None:
    result = cli("run", str(SAMPLES / "batch.jsonl"))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    announcements = [x for x in lines if re.match(r"handler-cli: (crm|files|mail|tasks|llm): ",
                                                  x)]
    summary = [x for x in lines if x not in announcements]
    assert len(summary) == 1, lines
    assert re.fullmatch(r"handler-cli: run: 9 ok, 0 failed, 0 unreadable; MODELISATION \d+, "
                        r"SUPPORT \d+; [a-z_]+ \d+(, [a-z_]+ \d+)*; \d+ e-mails sent \(\d+\.\d s\)",
                        summary[0]), summary[0]
    assert "\x1b" not in result.stderr
    assert cli("-q", "run", str(SAMPLES / "batch.jsonl")).stderr == ""


def test_a_failed_batch_says_so_in_its_summary_line(cli: RunCli, tmp_path: Path) -> None:
    batch = batch_with_bad_lines(tmp_path / "batch.jsonl", 10)
    result = cli("classify", str(batch))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        "handler-cli: warning: classify: 9 ok, 0 failed, 1 unreadable; SUPPORT 9")
