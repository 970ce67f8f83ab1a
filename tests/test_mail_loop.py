"""`doctor --mail-loop` against real peers on loopback: aiosmtpd relaying into dovecot (password
and OAuth2 on both sides), and the local backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from handler_cli.config import load_settings
from handler_cli.context import Context
from handler_cli.mail_loop import run_mail_loop
from tests.conftest import RunCli, clean_environ
from tests.dovecot import Dovecot, dovecot_server
from tests.oauth2_server import oauth2_server
from tests.peers import ReceivedMail, SMTPPeer, smtp_peer, smtp_server

__all__ = ["smtp_peer"]


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[Dovecot]:
    with dovecot_server(tmp_path) as server:
        yield server



def test_the_loop_through_smtp_and_imap_is_closed(cli: RunCli, mailbox: Dovecot) -> None:
    with smtp_server() as relay:
        relay.deliver = lambda mail: mailbox.deliver(mail.data)

        result = cli("doctor", "--mail-loop", "--timeout", "60",
                     env={**relay.environ(), **mailbox.environ()})

    assert result.returncode == 0, result.stderr
    assert "the imap source (IMAP team@studio.example@" in result.stdout
    assert "s after sending: the reply loop is closed" in result.stdout
    (mail,) = relay.received
    # The default reply address is the mailbox the imap source reads, and so the recipient.
    assert mail.rcpt_tos == [mailbox.user]
    message = mail.message
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Subject"].startswith("[handler-cli] Test de la boucle e-mail ")
    assert "« handler-cli doctor --mail-loop »" in message.get_content()


def test_the_loop_with_oauth2_on_both_sides(cli: RunCli, tmp_path: Path) -> None:
    secret = "loop-client-secret"
    with oauth2_server() as authz, \
            dovecot_server(tmp_path, introspection_url=authz.introspection_url) as mbox, \
            smtp_server(oauth2=authz, oauth2_scope="https://mail.google.com/") as relay:
        authz.add_client("studio.apps.googleusercontent.com", secret)
        refresh = authz.issue_refresh_token("studio.apps.googleusercontent.com", mbox.user)
        relay.deliver = lambda mail: mbox.deliver(mail.data)
        env = {**relay.environ(SMTP_AUTH="xoauth2", SMTP_USER=mbox.user),
               **mbox.environ(IMAP_AUTH="xoauth2", IMAP_PASSWORD=""),
               "MAIL_OAUTH2_PROVIDER": "google", "MAIL_OAUTH2_TOKEN_URL": authz.token_url,
               "MAIL_OAUTH2_CLIENT_ID": "studio.apps.googleusercontent.com",
               "MAIL_OAUTH2_CLIENT_SECRET": secret, "MAIL_OAUTH2_REFRESH_TOKEN": refresh,
               "MAIL_OAUTH2_SCOPE": "https://mail.google.com/"}

        result = cli("doctor", "--mail-loop", "--timeout", "60", env=env)

        assert result.returncode == 0, result.stderr
        assert relay.mechanisms == ["XOAUTH2"] and relay.logins == [mbox.user]
        assert f"Login: user=<{mbox.user}>, method=XOAUTH2" in mbox.log()
        # Google: one scope for SMTP and IMAP, so one token serves both in a process.
        assert [g["grant_type"] for g in authz.grants] == ["refresh_token"]
        for secret_value in (secret, refresh, *authz.tokens):
            assert secret_value not in result.stdout + result.stderr


def test_a_loop_that_never_closes_fails_after_the_timeout(cli: RunCli, mailbox: Dovecot) -> None:
    with smtp_server() as relay:  # accepts the message, delivers it nowhere
        result = cli("doctor", "--mail-loop", "--timeout", "1",
                     env={**relay.environ(), **mailbox.environ()})

    assert result.returncode == 1
    assert "mail loop: no reply source saw the test e-mail within 1 s" in result.stdout
    assert f"in {mailbox.user}'s mailbox (spam" in result.stdout


def test_the_wait_is_bounded_and_paced(tmp_path: Path, smtp_peer: SMTPPeer) -> None:
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    ctx = Context(load_settings(environ=clean_environ(tmp_path, **smtp_peer.environ())))
    result = run_mail_loop(ctx, timeout=12, interval=5, clock=lambda: now[0], sleep=sleep)

    assert not result.ok and waits == [5, 5, 2]
    assert len(smtp_peer.received) == 1


def test_the_loop_through_smtp_into_the_local_replies_folder(
    cli: RunCli, environ: dict[str, str]
) -> None:
    replies = Path(environ["HANDLER_DATA_DIR"]) / "replies"

    def deliver(mail: ReceivedMail) -> None:  # a local MTA dropping mail in the folder
        replies.mkdir(parents=True, exist_ok=True)
        (replies / "incoming.eml").write_bytes(mail.data)

    with smtp_server() as relay:
        relay.deliver = deliver
        result = cli("doctor", "--mail-loop", "--timeout", "60", env=relay.environ())

    assert result.returncode == 0, result.stderr
    assert "the local source" in result.stdout and "the reply loop is closed" in result.stdout
    # Nothing configured but the relay: the reply address is the admin, never the no-reply.
    assert relay.received[0].rcpt_tos == ["yvanol.fotso@valione-services.com"]


def test_there_is_no_loop_to_prove_on_the_outbox(cli: RunCli) -> None:
    result = cli("doctor", "--mail-loop")
    assert result.returncode == 2
    assert "mail loop: mail is not sent (outbox folder" in result.stderr
    assert "set SMTP_HOST" in result.stderr


def test_sources_that_cannot_look_a_message_up_are_named(cli: RunCli, smtp_peer: SMTPPeer) -> None:
    result = cli("doctor", "--mail-loop", env={**smtp_peer.environ(),
                                                "HUBSPOT_ACCESS_TOKEN": "pat-eu1-test"})
    assert result.returncode == 2
    assert "no configured source (hubspot) can look up a test e-mail" in result.stderr
    assert smtp_peer.received == []


def test_a_relay_that_refuses_the_sender_fails_at_once(cli: RunCli, smtp_peer: SMTPPeer) -> None:
    smtp_peer.mail_reply = "550 5.7.60 Client does not have permissions to send as this sender"
    result = cli("doctor", "--mail-loop", "--timeout", "60", env=smtp_peer.environ())
    assert result.returncode == 1
    assert "the test e-mail could not be sent from" in result.stdout and "550 5.7.60" in result.stdout
