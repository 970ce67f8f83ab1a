"""The SMTP mailer against a real aiosmtpd server on loopback."""

from __future__ import annotations

import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest

from handler_cli.config import Settings
from handler_cli.services import ServiceError
from handler_cli.services.mail.smtp import SMTPMailer
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


def test_check_logs_in_without_sending(tmp_path: Path) -> None:
    with smtp_server(users={"relay": "pw"}) as peer:
        mailer = SMTPMailer(make_settings(
            tmp_path, **peer.settings(smtp_user="relay", smtp_password="pw")))

        report = lines(mailer.check())

        assert peer.logins == ["relay"]
        assert peer.received == []
        assert f"{LOOPBACK}:{peer.port}" in report and "relay" in report


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
