"""The mail OAuth2 token source against a loopback token endpoint: grants, expiry, rotation."""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handler_cli.config import ConfigError, Settings
from handler_cli.services import ServiceError
from handler_cli.services.mail.oauth2 import (
    GOOGLE_TOKEN_URL,
    MICROSOFT_APP_SCOPE,
    TokenSource,
    oauth2_client,
    token_source,
    xoauth2,
)
from tests.oauth2_server import OAuth2Server, oauth2_server
from tests.peers import LOOPBACK, closed_port

MAILBOX = "atelier@studio.example"
SECRET = "client-secret-value-9f8e7d"


@pytest.fixture
def authz() -> Iterator[OAuth2Server]:
    with oauth2_server() as server:
        server.add_client("studio-app", SECRET)
        yield server


class Clock:
    """Monotonic seconds the test moves forward."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(handler_data_dir=tmp_path, **values)


def microsoft(tmp_path: Path, authz: OAuth2Server, **values: Any) -> Settings:
    return settings(tmp_path, **{
        "mail_oauth2_provider": "microsoft", "mail_oauth2_tenant": "studio.example",
        "mail_oauth2_token_url": authz.token_url, "mail_oauth2_client_id": "studio-app",
        "mail_oauth2_client_secret": SECRET, **values})


def test_xoauth2_initial_response_is_the_documented_string() -> None:
    # Google's and Microsoft's docs: base64("user=" + user + "^Aauth=Bearer " + token + "^A^A")
    assert xoauth2("test@contoso.onmicrosoft.com", "EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA") == (
        "user=test@contoso.onmicrosoft.com\x01auth=Bearer EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA"
        "\x01\x01")


def test_refresh_token_grant_asks_the_protocol_scope_once_per_token(
    tmp_path: Path, authz: OAuth2Server
) -> None:
    refresh = authz.issue_refresh_token("studio-app", MAILBOX)
    source = TokenSource(oauth2_client(microsoft(tmp_path, authz, mail_oauth2_refresh_token=refresh),
                                       "smtp"))

    first, second = source.token(), source.token()

    assert first == second and authz.valid(first, MAILBOX)
    (grant,) = authz.grants
    assert grant["grant_type"] == "refresh_token" and grant["refresh_token"] == refresh
    assert grant["scope"] == "https://outlook.office.com/SMTP.Send offline_access"
    assert grant["client_secret"] == SECRET


def test_imap_asks_the_imap_scope(tmp_path: Path, authz: OAuth2Server) -> None:
    refresh = authz.issue_refresh_token("studio-app", MAILBOX)
    client = oauth2_client(microsoft(tmp_path, authz, mail_oauth2_refresh_token=refresh), "imap")
    assert client.scope == "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"


def test_client_credentials_grant_uses_the_exchange_default_scope(
    tmp_path: Path, authz: OAuth2Server
) -> None:
    source = TokenSource(oauth2_client(microsoft(tmp_path, authz), "imap"))
    authz.grant_mailbox("studio-app", MAILBOX)

    token = source.token()

    (grant,) = authz.grants
    assert grant["grant_type"] == "client_credentials" and "refresh_token" not in grant
    assert grant["scope"] == MICROSOFT_APP_SCOPE == "https://outlook.office365.com/.default"
    assert authz.valid(token, MAILBOX)


def test_token_is_fetched_again_before_it_expires(tmp_path: Path, authz: OAuth2Server) -> None:
    clock = Clock()
    source = TokenSource(oauth2_client(microsoft(tmp_path, authz), "smtp"), clock=clock)
    first = source.token()

    clock.now += 3600 - 301  # the endpoint said 3600 s; five minutes of margin
    assert source.token() == first and len(authz.grants) == 1
    clock.now += 2
    second = source.token()

    assert second != first and len(authz.grants) == 2


def test_a_short_lived_token_keeps_half_its_life_as_margin(tmp_path: Path) -> None:
    clock = Clock()
    with oauth2_server(lifetime=60) as authz:
        authz.add_client("studio-app", SECRET)
        source = TokenSource(oauth2_client(microsoft(tmp_path, authz), "smtp"), clock=clock)
        first = source.token()
        clock.now += 29
        assert source.token() == first
        clock.now += 2
        assert source.token() != first


def test_a_refused_token_is_fetched_again_at_once(tmp_path: Path, authz: OAuth2Server) -> None:
    source = TokenSource(oauth2_client(microsoft(tmp_path, authz), "smtp"))
    first = source.token()
    source.invalidate("some-older-token")  # not the current one: kept
    assert source.token() == first
    source.invalidate(first)
    assert source.token() != first and len(authz.grants) == 2


def test_rotated_refresh_token_is_kept_private_and_used_next_time(
    tmp_path: Path, authz: OAuth2Server
) -> None:
    configured = authz.issue_refresh_token("studio-app", MAILBOX)
    values = microsoft(tmp_path, authz, mail_oauth2_refresh_token=configured)
    store = tmp_path / "oauth2" / "refresh.json"
    TokenSource(oauth2_client(values, "smtp"), store).token()
    rotated = authz.grants[0]
    assert store.exists() and stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    # The configured token dies (Microsoft: 90 days after it was issued); a new process goes on.
    del authz.refresh_tokens[configured]

    token = TokenSource(oauth2_client(values, "smtp"), store).token()

    assert authz.valid(token, MAILBOX)
    assert authz.grants[1]["refresh_token"] not in (configured, rotated["refresh_token"])


def test_a_refused_saved_refresh_token_falls_back_to_the_configured_one(
    tmp_path: Path, authz: OAuth2Server
) -> None:
    configured = authz.issue_refresh_token("studio-app", MAILBOX)
    store = tmp_path / "refresh.json"
    store.write_text('{"refresh_token": "rt-revoked-long-ago"}')
    source = TokenSource(oauth2_client(
        microsoft(tmp_path, authz, mail_oauth2_refresh_token=configured), "smtp"), store)

    assert authz.valid(source.token(), MAILBOX)
    assert [g["refresh_token"] for g in authz.grants] == ["rt-revoked-long-ago", configured]


def test_invalid_grant_is_permanent_says_what_to_do_and_hides_secrets(
    tmp_path: Path, authz: OAuth2Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="handler_cli")
    source = TokenSource(oauth2_client(
        microsoft(tmp_path, authz, mail_oauth2_refresh_token="rt-unknown-secret"), "smtp"))

    with pytest.raises(ServiceError) as caught:
        source.token()

    assert caught.value.transient is False
    message = str(caught.value)
    assert "invalid_grant" in message and "AADSTS70008" in message
    assert "expired or revoked" in message and "The mailbox" in message
    for secret in ("rt-unknown-secret", SECRET):
        assert secret not in message and secret not in caplog.text


def test_wrong_client_secret_is_permanent(tmp_path: Path, authz: OAuth2Server) -> None:
    source = TokenSource(oauth2_client(
        microsoft(tmp_path, authz, mail_oauth2_client_secret="not-the-secret"), "smtp"))
    with pytest.raises(ServiceError, match="invalid_client") as caught:
        source.token()
    assert caught.value.transient is False and "not-the-secret" not in str(caught.value)


def test_endpoint_in_trouble_or_down_is_transient(tmp_path: Path, authz: OAuth2Server) -> None:
    authz.down = True
    with pytest.raises(ServiceError, match="answered 503") as caught:
        TokenSource(oauth2_client(microsoft(tmp_path, authz), "smtp")).token()
    assert caught.value.transient is True

    down = f"http://{LOOPBACK}:{closed_port()}/token"
    with pytest.raises(ServiceError, match="cannot reach the token endpoint") as caught:
        TokenSource(oauth2_client(microsoft(tmp_path, authz, mail_oauth2_token_url=down),
                                  "smtp")).token()
    assert caught.value.transient is True


def test_google_defaults_and_one_token_for_smtp_and_imap(tmp_path: Path) -> None:
    values = settings(tmp_path, mail_oauth2_provider="google", mail_oauth2_client_id="id.apps",
                      mail_oauth2_client_secret="s", mail_oauth2_refresh_token="1//rt")
    client = oauth2_client(values, "smtp")
    # Google's refresh request takes no scope: the refresh token carries https://mail.google.com/
    assert (client.token_url, client.scope) == (GOOGLE_TOKEN_URL, None)
    assert token_source(values, "smtp") is token_source(values, "imap")


@pytest.mark.parametrize(("values", "named"), [
    ({"mail_oauth2_client_id": "x"}, "MAIL_OAUTH2_PROVIDER"),
    ({"mail_oauth2_provider": "microsoft", "mail_oauth2_client_id": "x",
      "mail_oauth2_client_secret": "s"}, "MAIL_OAUTH2_TENANT"),
    ({"mail_oauth2_provider": "google", "mail_oauth2_client_id": "x",
      "mail_oauth2_client_secret": "s"}, "MAIL_OAUTH2_REFRESH_TOKEN"),
    ({"mail_oauth2_provider": "microsoft", "mail_oauth2_tenant": "t"}, "MAIL_OAUTH2_CLIENT_ID"),
    ({"mail_oauth2_provider": "microsoft", "mail_oauth2_tenant": "t",
      "mail_oauth2_client_id": "x"}, "MAIL_OAUTH2_CLIENT_SECRET"),
    ({"mail_oauth2_token_url": "http://login.example.com/token", "mail_oauth2_client_id": "x",
      "mail_oauth2_refresh_token": "r"}, "https://"),
])
def test_missing_or_wrong_settings_are_named(
    tmp_path: Path, values: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        oauth2_client(settings(tmp_path, **values), "smtp")
