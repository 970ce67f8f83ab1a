"""Shared fixtures: an isolated data dir per test, a Context on the local backends, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from handler_cli.config import Settings, load_settings
from handler_cli.context import Context
from handler_cli.document import Document

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
LIVE_PREFIXES = ("HUBSPOT_", "R2_", "CLICKUP_", "SMTP_", "ANTHROPIC_", "HANDLER_", "MAIL_",
                 "ADMIN_EMAIL", "WEBHOOK_", "IMAP_")


def clean_environ(data_dir: Path, **extra: str) -> dict[str, str]:
    """The process environment without any real service settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LIVE_PREFIXES)}
    env.update(HANDLER_DATA_DIR=str(data_dir), HANDLER_ENV_FILE=str(data_dir / "no.env"))
    env.update(extra)
    return env


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    return clean_environ(tmp_path / "data")


@pytest.fixture
def settings(environ: dict[str, str]) -> Settings:
    return load_settings(environ=environ)


@pytest.fixture
def ctx(settings: Settings) -> Context:
    return Context(settings)


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def classified(name: str, type_final: str | None = None, **fields: Any) -> Document:
    """A sample already classified (by hand), to test later steps on their own."""
    data = sample(name)
    type_final = type_final or ("SUPPORT" if data["source"] == "contact" else "MODELISATION")
    form_type = "SUPPORT" if data["source"] == "contact" else "MODELISATION"
    data.update(type_final=type_final, confiance=0.9, reclassifie=type_final != form_type,
                classification={"method": "keywords", "reasons": ["test"]}, **fields)
    return Document.model_validate(data)


RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(environ: dict[str, str]) -> RunCli:
    """Run the real `handler-cli` in a subprocess with the test's isolated environment."""

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None,
            cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "handler_cli", *args], input=input, text=True,
            capture_output=True, env={**environ, **(env or {})}, cwd=cwd, timeout=120,
        )

    return run
