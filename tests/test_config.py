"""Settings: environment over `.env`, sources known; `doctor` shows and proves the backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from handler_cli.config import ConfigError, load_settings
from tests.conftest import RunCli
from tests.fakes.clickup import clickup_server
from tests.fakes.hubspot import hubspot_server
from tests.fakes.messages_api import messages_api
from tests.peers import S3Peer, SMTPPeer, closed_port, s3_peer, s3_server_session, smtp_peer

__all__ = ["s3_peer", "s3_server_session", "smtp_peer"]


def test_environment_wins_over_env_file_and_sources_are_recorded(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# studio settings\nexport SMTP_HOST=mail.example.fr\nSMTP_PORT='2525'\n"
        'ADMIN_EMAIL="admin@example.fr"\n', encoding="utf-8")
    settings = load_settings(environ={"SMTP_HOST": "relay.local"}, env_file=env_file)
    assert (settings.smtp_host, settings.smtp_port, settings.admin_email) == (
        "relay.local", 2525, "admin@example.fr")
    assert settings.sources["smtp_host"] == "environment"
    assert settings.sources["smtp_port"] == f".env ({env_file})"
    assert "hubspot_access_token" not in settings.sources
    assert settings.handler_llm_model == "claude-haiku-4-5"


def test_a_bad_setting_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SMTP_SECURITY"):
        load_settings(environ={"SMTP_SECURITY": "tls"}, env_file=tmp_path / "none")


@pytest.fixture
def live(s3_peer: S3Peer, smtp_peer: SMTPPeer) -> Iterator[dict[str, str]]:
    s3_peer.create_bucket("studio")
    with hubspot_server() as hs, clickup_server() as cu, messages_api() as claude:
        yield {
            **hs.environ(), "HUBSPOT_PORTAL_ID": str(hs.portal_id), "CLICKUP_API_TOKEN": cu.token,
            "CLICKUP_BASE_URL": cu.url, "R2_ENDPOINT_URL": s3_peer.endpoint_url,
            "R2_BUCKET": "studio", "R2_ACCESS_KEY_ID": s3_peer.access_key_id,
            "R2_SECRET_ACCESS_KEY": s3_peer.secret_access_key, "SMTP_HOST": smtp_peer.host,
            "HANDLER_PUBLIC_URL": "https://intake.example.com",
            "HANDLER_FILE_LINK_SECRET": "a-link-secret-0123456789abcdef0123456789",
            "SMTP_PORT": str(smtp_peer.port), "SMTP_SECURITY": "none",
            "ANTHROPIC_API_KEY": claude.api_key, "ANTHROPIC_BASE_URL": claude.url,
            "HANDLER_RETRY_BASE_SECONDS": "0.01",
        }


def test_doctor_check_proves_every_live_backend(cli: RunCli, live: dict[str, str]) -> None:
    result = cli("doctor", "--check", "--strict", env=live)
    assert result.returncode == 0, result.stdout
    for service in ("crm: HubSpot", "files: ", "tasks: ", "mailer: SMTP", "llm: Claude"):
        assert service in result.stdout
    # At least one proved fact per live backend (a backend may prove several), none failed.
    assert result.stdout.count("check: ok") >= 5 and "check: FAILED" not in result.stdout
    assert live["R2_SECRET_ACCESS_KEY"] not in result.stdout
    assert live["HUBSPOT_ACCESS_TOKEN"] not in result.stdout


def test_doctor_check_fails_when_a_backend_does_not_work(cli: RunCli, live: dict) -> None:
    result = cli("doctor", "--check", env={**live, "SMTP_PORT": str(closed_port())})
    assert result.returncode == 1
    (failed,) = [line for line in result.stdout.splitlines() if "check: FAILED" in line]
    assert "smtp:" in failed and result.stdout.count("check: ok") >= 4
