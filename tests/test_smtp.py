"""The SMTP mailer against a real aiosmtpd server on loopback."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest

from handler_cli.config import ConfigError, Settings
from handler_cli.services import ServiceError
from handler_cli.services.mail.smtp import SMTPMailer
from tests.oauth2_server import OAuth2Server, oauth2_server
from tests.peers import LOOPBACK, SMTPPeer, closed_port, lines, smtp_peer, smtp_server

__all__ = ["smtp_peer"]  # the fixture is used by name below

SUBJECT = "Votre demande de modélisation n°42 : devis à valider — été"


def make_settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(handler_data_dir=tmp_path, **values)


def french_message(to: str = "client@example.fr") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Valione Services <no-reply@valione-services.com>"
    msg["To"] = to
    msg["Reply-To"] = "Atelier Valione <atelier@valione-services.com>"
    msg["Subject"] = SUBJECT
    msg["Message-ID"] = make_msgid(domain="valione-services.com")
    msg.set_content("Bonjour Hélène,\nVotre devis est prêt : 12 crédits.\n")
    msg.add_alternative(
        "<p>Bonjour Hélène,</p><p>Votre devis est prêt : <b>12 crédits</b>.</p>", subtype="html"
    )
    return msg


def test_message_with_text_and_html_arrives_intact(tmp_path: Path, smtp_peer: SMTPPeer) -> None:
    mailer = SMTPMailer(make_settings(tmp_path, **smtp_peer.settings()))
    sent = french_message()

    mailer.send(sent)

    [mail] = smtp_peer.received
    assert mail.mail_from == "no-reply@valione-services.com"
    assert mail.rcpt_tos == ["client@example.fr"]
    got = mail.message
    assert got["Message-ID"] == sent["Message-ID"]
    assert got["Subject"] == SUBJECT
    assert got["Reply-To"] == "Atelier Valione <atelier@valione-services.com>"
    text = got.get_body(("plain",))
    html = got.get_body(("html",))
    assert text is not None and html is not None
    # SMTP carries CRLF line ends; the text itself (accents included) must be unchanged.
    assert text.get_content().splitlines() == [
        "Bonjour Hélène,", "Votre devis est prêt : 12 crédits."]
    assert "<b>12 crédits</b>" in html.get_content()


def test_bcc_recipient_gets_the_message_without_seeing_the_header(
    tmp_path: Path, smtp_peer: SMTPPeer
) -> None:
    mailer = SMTPMailer(make_settings(tmp_path, **smtp_peer.settings()))
    msg = french_message()
    msg["Bcc"] = "admin@valione-services.com"

    mailer.send(msg)

    [mail] = smtp_peer.received
    assert sorted(mail.rcpt_tos) == ["admin@valione-services.com", "client@example.fr"]
    assert mail.message["Bcc"] is None


def test_login_with_user_and_password(tmp_path: Path) -> None:
    with smtp_server(users={"relay@valione-services.com": "s3cret-pw"}) as peer:
        mailer = SMTPMailer(make_settings(tmp_path, **peer.settings(
            smtp_user="relay@valione-services.com", smtp_password="s3cret-pw")))

        mailer.send(french_message())

        assert peer.logins == ["relay@valione-services.com"]
        assert len(peer.received) == 1


def test_wrong_password_is_a_permanent_error_that_never_shows_the_password(
    tmp_path: Path,
) -> None:
    with smtp_server(users={"relay@valione-services.com": "s3cret-pw"}) as peer:
        mailer = SMTPMailer(make_settings(tmp_path, **peer.settings(
            smtp_user="relay@valione-services.com", smtp_password="wrong-pw")))

        with pytest.raises(ServiceError) as caught:
            mailer.send(french_message())

        assert caught.value.service == "smtp"
        assert caught.value.transient is False
        assert "535" in str(caught.value)
        assert "wrong-pw" not in str(caught.value)
        assert "wrong-pw" not in mailer.describe()
        assert peer.received == []


def test_starttls_with_verified_certificate_then_login(tmp_path: Path) -> None:
    with smtp_server(
        users={"relay": "pw-tls"}, security="starttls", auth_require_tls=True
    ) as peer:
        mailer = SMTPMailer(
            make_settings(tmp_path, **peer.settings(smtp_user="relay", smtp_password="pw-tls")),
            ssl_context=peer.client_context(),
        )

        mailer.send(french_message())

        assert peer.logins == ["relay"]
        assert peer.received[0].message["Subject"] == SUBJECT


def test_starttls_refuses_an_untrusted_certificate(tmp_path: Path) -> None:
    # The default context does not trust the self-signed test certificate: no silent downgrade.
    with smtp_server(security="starttls") as peer:
        mailer = SMTPMailer(make_settings(tmp_path, **peer.settings()))

        with pytest.raises(ServiceError) as caught:
            mailer.send(french_message())

        assert caught.value.transient is False
        assert "certificate" in str(caught.value)
        assert peer.received == []


def test_implicit_tls_on_connect(tmp_path: Path) -> None:
    with smtp_server(security="ssl") as peer:
        mailer = SMTPMailer(
            make_settings(tmp_path, **peer.settings()), ssl_context=peer.client_context()
        )

        mailer.send(french_message())

        assert len(peer.received) == 1


def test_server_down_is_a_transient_error(tmp_path: Path) -> None:
    port = closed_port()
    mailer = SMTPMailer(make_settings(
        tmp_path, smtp_host=LOOPBACK, smtp_port=port, smtp_security="none", smtp_timeout=2.0))

    started = time.monotonic()
    with pytest.raises(ServiceError) as caught:
        mailer.send(french_message())

    assert time.monotonic() - started < 2.0
    assert caught.value.service == "smtp"
    assert caught.value.transient is True
    assert f"{LOOPBACK}:{port}" in str(caught.value)


def test_recipient_refused_with_5xx_is_permanent(tmp_path: Path, smtp_peer: SMTPPeer) -> None:
    smtp_peer.rcpt_reply = "550 5.1.1 <client@example.fr>: mailbox unknown"
    mailer = SMTPMailer(make_settings(tmp_path, **smtp_peer.settings()))

    with pytest.raises(ServiceError) as caught:
        mailer.send(french_message())

    assert caught.value.transient is False
    assert "550" in str(caught.value) and "client@example.fr" in str(caught.value)
    assert smtp_peer.received == []


def test_message_refused_with_4xx_is_transient(tmp_path: Path, smtp_peer: SMTPPeer) -> None:
    smtp_peer.data_reply = "451 4.3.0 Greylisted, try again later"
    mailer = SMTPMailer(make_settings(tmp_path, **smtp_peer.settings()))

    with pytest.raises(ServiceError) as caught:
        mailer.send(french_message())

    assert caught.value.transient is True
    assert "451" in str(caught.value)


def test_message_refused_with_5xx_is_permanent(tmp_path: Path, smtp_peer: SMTPPeer) -> None:
    smtp_peer.data_reply = "554 5.7.1 Message rejected as spam"
    mailer = SMTPMailer(make_settings(tmp_path, **smtp_peer.settings()))

    with pytest.raises(ServiceError) as caught:
        mailer.send(french_message())

    assert caught.value.transient is False
    assert "554" in str(caught.value)


def test_check_logs_in_and_proves_the_sender_without_sending(tmp_path: Path) -> None:
    with smtp_server(users={"relay": "pw"}) as peer:
        mailer = SMTPMailer(make_settings(
            tmp_path, mail_from="Atelier <atelier@studio.example>",
            admin_email="admin@studio.example",
            **peer.settings(smtp_user="relay", smtp_password="pw")))

        findings = mailer.check()

        assert peer.logins == ["relay"]
        assert peer.received == []
        assert peer.commands == ["MAIL atelier@studio.example", "RCPT admin@studio.example",
                                 "RSET"]
        assert all(f.ok for f in findings) and len(findings) == 2
        report = lines(findings)
        assert f"{LOOPBACK}:{peer.port}" in report and "logged in as relay" in report
        assert "accepts mail from atelier@studio.example to admin@studio.example" in report
        assert "no SMTPUTF8" in report


def test_check_fails_in_one_line_when_the_relay_refuses_the_sender(tmp_path: Path,
                                                                   smtp_peer: SMTPPeer) -> None:
    smtp_peer.mail_reply = "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
    mailer = SMTPMailer(make_settings(tmp_path, mail_from="Atelier <atelier@studio.example>",
                                      **smtp_peer.settings()))

    _, sender = mailer.check()

    assert not sender.ok
    assert sender.text.startswith(f"{LOOPBACK} refuses to send as atelier@studio.example (MAIL "
                                  "FROM: 550 5.7.60")
    assert "set MAIL_FROM" in sender.text and "\n" not in sender.text
    assert smtp_peer.commands[-1] == "RSET" and smtp_peer.received == []


def test_check_fails_when_the_relay_refuses_the_recipient(tmp_path: Path,
                                                          smtp_peer: SMTPPeer) -> None:
    smtp_peer.rcpt_reply = "554 5.7.1 Relay access denied"
    mailer = SMTPMailer(make_settings(tmp_path, **smtp_peer.settings()))

    _, envelope = mailer.check()

    assert not envelope.ok and "refuses the recipient" in envelope.text and "554" in envelope.text


def test_check_reports_a_down_server(tmp_path: Path) -> None:
    mailer = SMTPMailer(make_settings(
        tmp_path, smtp_host=LOOPBACK, smtp_port=closed_port(), smtp_security="none"))

    with pytest.raises(ServiceError) as caught:
        mailer.check()

    assert caught.value.transient is True


@pytest.mark.parametrize(("security", "port"), [("starttls", 587), ("ssl", 465), ("none", 25)])
def test_default_port_follows_security(tmp_path: Path, security: str, port: int) -> None:
    mailer = SMTPMailer(make_settings(
        tmp_path, smtp_host="smtp.example.com", smtp_security=security,
        smtp_user="relay", smtp_password="hidden-pw"))

    assert mailer.port == port
    assert mailer.describe() == f"SMTP smtp.example.com:{port} ({security}, as relay)"


# -- SMTPUTF8 ----------------------------------------------------------------------------------


def test_non_ascii_address_without_smtputf8_fails_at_once_for_good(
    tmp_path: Path, smtp_peer: SMTPPeer
) -> None:
    mailer = SMTPMailer(make_settings(tmp_path, **smtp_peer.settings()))

    with pytest.raises(ServiceError) as caught:
        mailer.send(french_message(to="hélène@example.fr"))

    assert caught.value.transient is False
    assert "SMTPUTF8" in str(caught.value) and "hélène@example.fr" in str(caught.value)
    assert smtp_peer.received == []


def test_non_ascii_address_goes_through_a_relay_that_offers_smtputf8(tmp_path: Path) -> None:
    with smtp_server(smtputf8=True) as peer:
        mailer = SMTPMailer(make_settings(tmp_path, **peer.settings()))

        mailer.send(french_message(to="Hélène <hélène@example.fr>"))

        [mail] = peer.received
        assert mail.rcpt_tos == ["hélène@example.fr"] and "SMTPUTF8" in mail.mail_options
        assert "To: Hélène <hélène@example.fr>".encode() in mail.data  # RFC 6532 UTF-8 header


# -- XOAUTH2 -----------------------------------------------------------------------------------

MAILBOX = "atelier@studio.example"
CLIENT_SECRET = "app-secret-7c1d"
SMTP_SCOPE = "https://outlook.office.com/SMTP.Send"


@pytest.fixture
def authz() -> Iterator[OAuth2Server]:
    with oauth2_server() as server:
        server.add_client("studio-app", CLIENT_SECRET)
        yield server


def oauth2_settings(tmp_path: Path, peer: SMTPPeer, authz: OAuth2Server, **extra: Any) -> Settings:
    return make_settings(tmp_path, **peer.settings(**{
        "smtp_user": MAILBOX, "smtp_auth": "xoauth2", "mail_from": f"Atelier <{MAILBOX}>",
        "mail_oauth2_provider": "microsoft", "mail_oauth2_tenant": "studio.example",
        "mail_oauth2_token_url": authz.token_url, "mail_oauth2_client_id": "studio-app",
        "mail_oauth2_client_secret": CLIENT_SECRET, **extra}))


def test_xoauth2_with_a_refresh_token_sends(tmp_path: Path, authz: OAuth2Server,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    refresh = authz.issue_refresh_token("studio-app", MAILBOX)
    with smtp_server(oauth2=authz, oauth2_scope=SMTP_SCOPE) as peer:
        mailer = SMTPMailer(oauth2_settings(tmp_path, peer, authz,
                                            mail_oauth2_refresh_token=refresh))

        mailer.send(french_message())
        mailer.send(french_message())

        assert peer.mechanisms == ["XOAUTH2", "XOAUTH2"] and peer.logins == [MAILBOX] * 2
        assert len(peer.received) == 2
        assert len(authz.grants) == 1  # the token is kept for the second message
        described = mailer.describe()
        assert "with XOAUTH2" in described and f"OAuth2 refresh token from {LOOPBACK}" in described
        for secret in (CLIENT_SECRET, refresh, *authz.tokens):
            assert secret not in caplog.text and secret not in described


def test_xoauth2_with_client_credentials_sends_for_a_granted_mailbox(
    tmp_path: Path, authz: OAuth2Server
) -> None:
    authz.grant_mailbox("studio-app", MAILBOX)
    with smtp_server(oauth2=authz, oauth2_scope="https://outlook.office365.com/.default") as peer:
        mailer = SMTPMailer(oauth2_settings(tmp_path, peer, authz))

        mailer.send(french_message())

        assert peer.logins == [MAILBOX] and len(peer.received) == 1
        assert authz.grants[0]["grant_type"] == "client_credentials"


def test_a_token_the_server_no_longer_takes_is_replaced_on_the_same_connection(
    tmp_path: Path, authz: OAuth2Server
) -> None:
    authz.grant_mailbox("studio-app", MAILBOX)
    with smtp_server(oauth2=authz) as peer:
        mailer = SMTPMailer(oauth2_settings(tmp_path, peer, authz))
        mailer.send(french_message())
        authz.expire_all()  # sooner than the endpoint said

        mailer.send(french_message())

        assert len(peer.received) == 2 and len(authz.grants) == 2


def test_xoauth2_refused_for_a_mailbox_the_app_may_not_use_is_permanent(
    tmp_path: Path, authz: OAuth2Server
) -> None:
    with smtp_server(oauth2=authz) as peer:  # no grant_mailbox: Add-MailboxPermission forgotten
        mailer = SMTPMailer(oauth2_settings(tmp_path, peer, authz))

        with pytest.raises(ServiceError) as caught:
            mailer.send(french_message())

        assert caught.value.transient is False
        message = str(caught.value)
        assert f"XOAUTH2 login as {MAILBOX} refused: 535" in message and '"status": "401"' in message
        assert CLIENT_SECRET not in message and not any(t in message for t in authz.tokens)
        assert len(authz.grants) == 2 and peer.received == []


def test_xoauth2_needs_a_relay_that_offers_it(tmp_path: Path, authz: OAuth2Server) -> None:
    with smtp_server(users={"relay": "pw"}) as peer:
        mailer = SMTPMailer(oauth2_settings(tmp_path, peer, authz))

        with pytest.raises(ServiceError, match="does not offer AUTH XOAUTH2") as caught:
            mailer.send(french_message())

        assert caught.value.transient is False and authz.grants == []


def test_xoauth2_needs_the_mailbox_as_smtp_user(tmp_path: Path, authz: OAuth2Server) -> None:
    with smtp_server() as peer, pytest.raises(ConfigError, match="SMTP_USER"):
        SMTPMailer(oauth2_settings(tmp_path, peer, authz, smtp_user=""))
