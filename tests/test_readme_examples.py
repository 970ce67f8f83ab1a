"""The README's command examples run as written, in order, on a fresh data dir.

Left out, and why: the install lines of the Quickstart (CI installs from scratch anyway),
`serve` (it runs until stopped; tests/test_server_serve.py starts it), and the crontab line
(cron syntax; its command is `poll --quiet`, run here through the other poll examples).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

RUNNABLE = ("handler-cli ", "cat ", "jq ", "echo ")


def readme_commands() -> list[str]:
    """Each shell command of the README's sh blocks (continuation lines joined)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith(RUNNABLE) and " serve" not in line:
                commands.append(line)
    return commands


def test_the_readme_has_the_examples_this_test_runs() -> None:
    commands = readme_commands()
    assert any(c.startswith("handler-cli run samples/*.json") for c in commands)
    assert any("| handler-cli notify-admin" in c for c in commands)
    assert any(c.startswith("handler-cli reply 1001") for c in commands)


def test_every_readme_example_runs_as_written(tmp_path: Path, environ: dict) -> None:
    shutil.copytree(ROOT / "samples", tmp_path / "samples")
    env = {**environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{environ['PATH']}"}
    for command in readme_commands():
        result = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=tmp_path,
                                env=env, text=True, capture_output=True, timeout=120)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        assert "Traceback" not in result.stderr, command
