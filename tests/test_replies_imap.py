"""The IMAP reply source against a real dovecot on loopback: matching, reading, security."""

from __future__ import annotations

import imaplib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from handler_cli.config import ConfigError, load_settings
from handler_cli.context import Context
from handler_cli.document import Document
from handler_cli.pipeline import run_chain
from handler_cli.poll import HandledIndex, Journal, poll
from handler_cli.replies import build_sources
from handler_cli.replies.imap import IMAPReplies, imap_date
from handler_cli.services import ServiceError, WaitingTicket
from tests.conftest import SAMPLES, clean_environ, sample
from tests.dovecot import Dovecot, dovecot_server
from tests.oauth2_server import OAuth2Server, oauth2_server
from tests.peers import closed_port, peer_cert

OUR_DOMAIN = "valione-services.com"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")
SINCE = datetime.now(UTC) - timedelta(days=2)


@pytest.fixture
def imap(tmp_path: Path) -> Iterator[Dovecot]:
    with dovecot_server(tmp_path) as server:
        yield server


def context(tmp_path: Path, server: Dovecot | None = None, **extra: str) -> Context:
    env = clean_environ(tmp_path / "data", HANDLER_REPLY_SOURCES="imap",
                        MAIL_FROM=f"Valione Services <no-reply@{OUR_DOMAIN}>",
                        **(server.environ() if server else {}))
    env.update(extra)
    return Context(load_settings(environ=env))


def waiting(ticket_id: str, request_id: str, status: str = "pending_credits",
            handled: str = "") -> WaitingTicket:
    props = {"validation_status": status}
    if handled:
        props["handler_replies_handled"] = handled
    return WaitingTicket(ticket_id=ticket_id, request_id=request_id, validation_status=status,
                         properties=props, updated_at=datetime.now(UTC))


def mail(text: str, *, subject: str = "Re: votre devis", in_reply_to: str | None = None,
         references: str | None = None, sender: str = "Paul <paul@example.fr>",
         message_id: str | None = "<reply-1@mail.example.fr>", attach: bool = False,
         headers: dict[str, str] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = f"no-reply@{OUR_DOMAIN}"
    msg["Subject"] = subject
    msg["Date"] = "Thu, 26 Nov 2026 09:12:00 +0100"
    if message_id:
        msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(text)
    if attach:
        msg.add_attachment(PNG, maintype="image", subtype="png", filename="photo.png")
    return bytes(msg)


def ours(request_id: str, kind: str = "client") -> str:
    return f"<{request_id}.{kind}@{OUR_DOMAIN}>"


def fetch(ctx: Context, tickets: list[WaitingTicket], **kwargs: object) -> dict[str, list]:
    source = IMAPReplies(ctx, **kwargs)  # type: ignore[arg-type]
    journal = Journal(ctx.settings.data_dir / "poll.sqlite3")
    return source.fetch(tickets, HandledIndex(journal, tickets), SINCE)


def test_reply_is_matched_to_its_ticket_by_in_reply_to(tmp_path: Path, imap: Dovecot) -> None:
    imap.deliver(mail("Je valide, merci.", in_reply_to=ours("req_aaa")))
    imap.deliver(mail("Bonjour, autre sujet", message_id="<other@x>"))  # answers nothing of ours
    found = fetch(context(tmp_path, imap), [waiting("1001", "req_aaa"), waiting("1002", "req_bbb")])
    assert list(found) == ["1001"]
    (reply,) = found["1001"]
    assert reply.text.strip() == "Je valide, merci."
    assert reply.sender == "paul@example.fr"
    assert reply.source == "imap" and reply.message_id == "<reply-1@mail.example.fr>"
    assert reply.at == datetime(2026, 11, 26, 8, 12, tzinfo=UTC)


def test_references_match_when_in_reply_to_names_a_foreign_message(
    tmp_path: Path, imap: Dovecot
) -> None:
    imap.deliver(mail("OK", in_reply_to="<someone-else@mail.example.fr>",
                      references=f"{ours('req_bbb')} <someone-else@mail.example.fr>"))
    found = fetch(context(tmp_path, imap), [waiting("1001", "req_aaa"), waiting("1002", "req_bbb")])
    assert list(found) == ["1002"]


def test_subject_ticket_reference_matches_when_headers_do_not(
    tmp_path: Path, imap: Dovecot
) -> None:
    imap.deliver(mail("Je valide", subject="RE: [Ticket #1002] Votre devis : 1 crédit"))
    imap.deliver(mail("Je valide", subject="RE: [Ticket #9999] ancien ticket",
                      message_id="<old@x>"))
    found = fetch(context(tmp_path, imap), [waiting("1001", "req_aaa"), waiting("1002", "req_bbb")])
    assert list(found) == ["1002"]


def test_attachments_arrive_with_their_bytes(tmp_path: Path, imap: Dovecot) -> None:
    imap.deliver(mail("Voici la photo", in_reply_to=ours("req_aaa"), attach=True))
    (reply,) = fetch(context(tmp_path, imap), [waiting("1001", "req_aaa")])["1001"]
    (photo,) = reply.files
    assert (photo.name, photo.data, photo.content_type) == ("photo.png", PNG, "image/png")


def test_our_own_messages_and_handled_replies_are_skipped(tmp_path: Path, imap: Dovecot) -> None:
    imap.deliver(mail("copie du devis", sender=f"Valione <no-reply@{OUR_DOMAIN}>",
                      in_reply_to=ours("req_aaa"), message_id=ours("req_aaa", "reminder")))
    imap.deliver(mail("Je valide", in_reply_to=ours("req_aaa")))
    ctx = context(tmp_path, imap)
    first = fetch(ctx, [waiting("1001", "req_aaa")])
    (reply,) = first["1001"]
    # Once the poll recorded it on the ticket, the same message is not read again.
    assert fetch(ctx, [waiting("1001", "req_aaa", handled=reply.key)]) == {}


def test_out_of_office_is_flagged_automatic(tmp_path: Path, imap: Dovecot) -> None:
    imap.deliver(mail("Je suis absent", in_reply_to=ours("req_aaa"),
                      headers={"Auto-Submitted": "auto-replied"}))
    (reply,) = fetch(context(tmp_path, imap), [waiting("1001", "req_aaa")])["1001"]
    assert reply.automatic


def test_the_mailbox_is_left_unread_and_in_place(tmp_path: Path, imap: Dovecot) -> None:
    imap.deliver(mail("Je valide", in_reply_to=ours("req_aaa")))
    fetch(context(tmp_path, imap), [waiting("1001", "req_aaa")])
    (flags,) = imap.flags()
    assert b"\\Seen" not in flags and b"\\Deleted" not in flags


def test_messages_older_than_since_are_not_fetched(tmp_path: Path, imap: Dovecot) -> None:
    with imap.client() as client:
        old = imaplib.Time2Internaldate(datetime.now(UTC) - timedelta(days=30))
        client.append("INBOX", None, old, mail("Je valide", in_reply_to=ours("req_aaa")))
    assert fetch(context(tmp_path, imap), [waiting("1001", "req_aaa")]) == {}


def test_the_configured_folder_is_read_and_a_missing_one_is_named(
    tmp_path: Path, imap: Dovecot
) -> None:
    imap.deliver(mail("Je valide", in_reply_to=ours("req_aaa")), folder="Clients")
    assert fetch(context(tmp_path, imap), [waiting("1001", "req_aaa")]) == {}  # not in INBOX
    found = fetch(context(tmp_path, imap, IMAP_FOLDER="Clients"), [waiting("1001", "req_aaa")])
    assert list(found) == ["1001"]
    with pytest.raises(ServiceError, match="cannot open folder 'Archives'") as caught:
        fetch(context(tmp_path, imap, IMAP_FOLDER="Archives"), [waiting("1001", "req_aaa")])
    assert not caught.value.transient


def test_wrong_password_is_permanent_and_never_shown(tmp_path: Path, imap: Dovecot) -> None:
    ctx = context(tmp_path, imap, IMAP_PASSWORD="not-the-password")
    with pytest.raises(ServiceError) as caught:
        fetch(ctx, [waiting("1001", "req_aaa")])
    assert not caught.value.transient
    assert "login refused" in str(caught.value) and "not-the-password" not in str(caught.value)


def test_server_down_is_transient(tmp_path: Path) -> None:
    ctx = context(tmp_path, IMAP_HOST="127.0.0.1", IMAP_PORT=str(closed_port()),
                  IMAP_USER="u", IMAP_PASSWORD="p", IMAP_SECURITY="none")
    with pytest.raises(ServiceError) as caught:
        fetch(ctx, [waiting("1001", "req_aaa")])
    assert caught.value.transient and "cannot connect" in str(caught.value)


def test_implicit_tls_with_a_verified_certificate(tmp_path: Path, imap: Dovecot) -> None:
    imap.deliver(mail("Je valide", in_reply_to=ours("req_aaa")))
    ctx = context(tmp_path, imap, IMAP_SECURITY="ssl", IMAP_PORT=str(imap.ssl_port))
    found = fetch(ctx, [waiting("1001", "req_aaa")], ssl_context=peer_cert().client_context())
    assert list(found) == ["1001"]


def test_starttls_with_a_verified_certificate(tmp_path: Path, imap: Dovecot) -> None:
    imap.deliver(mail("Je valide", in_reply_to=ours("req_aaa")))
    ctx = context(tmp_path, imap, IMAP_SECURITY="starttls")
    found = fetch(ctx, [waiting("1001", "req_aaa")], ssl_context=peer_cert().client_context())
    assert list(found) == ["1001"]


def test_an_untrusted_certificate_is_refused(tmp_path: Path, imap: Dovecot) -> None:
    ctx = context(tmp_path, imap, IMAP_SECURITY="ssl", IMAP_PORT=str(imap.ssl_port))
    with pytest.raises(ServiceError, match="cannot connect"):
        fetch(ctx, [waiting("1001", "req_aaa")])  # the default context does not know our CA


def test_missing_settings_are_named(tmp_path: Path) -> None:
    ctx = context(tmp_path, IMAP_HOST="imap.example.fr")
    with pytest.raises(ConfigError, match="IMAP_USER, IMAP_PASSWORD"):
        build_sources(ctx)


def test_imap_search_dates_do_not_depend_on_the_locale() -> None:
    assert imap_date(datetime(2026, 2, 3)) == "03-Feb-2026"


def test_poll_acts_on_a_reply_read_over_imap_once(tmp_path: Path, imap: Dovecot) -> None:
    ctx = context(tmp_path, imap)
    doc = Document.model_validate(sample("modelisation_simple"))
    run_chain(doc, ctx)
    assert doc.ticket_id == "1001" and doc.validation_status == "pending_credits"
    imap.deliver((SAMPLES / "replies" / "out_of_office.eml").read_bytes())
    imap.deliver((SAMPLES / "replies" / "validation.eml").read_bytes())

    report = poll(context(tmp_path, imap))

    assert report.ok, report.failures
    (outcome,) = report.outcomes
    assert [(a["source"], a["action"]) for a in outcome.actions] == [
        ("imap", "ignored"), ("imap", "validated")]
    assert outcome.status == "validated" and outcome.clickup_subtask_id
    assert poll(context(tmp_path, imap)).outcomes == []
    assert all(b"\\Seen" not in f for f in imap.flags())


def test_the_reply_address_is_ours_too(tmp_path: Path, imap: Dovecot) -> None:
    # The team writing from the shared mailbox (Reply-To) is not the client answering.
    imap.deliver(mail("Nous revenons vers vous", sender=f"Atelier <{imap.user}>",
                      in_reply_to=ours("req_aaa")))
    ctx = context(tmp_path, imap)
    assert ctx.settings.mail_reply_to == imap.user
    assert fetch(ctx, [waiting("1001", "req_aaa")]) == {}


def test_probe_finds_a_message_by_its_message_id(tmp_path: Path, imap: Dovecot) -> None:
    imap.deliver(mail("test", message_id="<mailloop-1234.check@studio.example>"))
    source = IMAPReplies(context(tmp_path, imap))
    assert source.probe("<mailloop-1234.check@studio.example>") is True
    assert source.probe("<mailloop-9999.check@studio.example>") is False


# -- XOAUTH2 against dovecot's oauth2 passdb ---------------------------------------------------

CLIENT_SECRET = "imap-app-secret-31f"


@pytest.fixture
def authz() -> Iterator[OAuth2Server]:
    with oauth2_server() as server:
        server.add_client("studio-app", CLIENT_SECRET)
        yield server


@pytest.fixture
def oauth_imap(tmp_path: Path, authz: OAuth2Server) -> Iterator[Dovecot]:
    with dovecot_server(tmp_path, introspection_url=authz.introspection_url) as server:
        yield server


def oauth_context(tmp_path: Path, server: Dovecot, authz: OAuth2Server, **extra: str) -> Context:
    return context(tmp_path, server, IMAP_AUTH="xoauth2", IMAP_PASSWORD="",
                   MAIL_OAUTH2_PROVIDER="microsoft", MAIL_OAUTH2_TENANT="studio.example",
                   MAIL_OAUTH2_TOKEN_URL=authz.token_url, MAIL_OAUTH2_CLIENT_ID="studio-app",
                   MAIL_OAUTH2_CLIENT_SECRET=CLIENT_SECRET, **extra)


def test_xoauth2_with_a_refresh_token_reads_replies(
    tmp_path: Path, oauth_imap: Dovecot, authz: OAuth2Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    refresh = authz.issue_refresh_token("studio-app", oauth_imap.user)
    oauth_imap.deliver(mail("Je valide", in_reply_to=ours("req_aaa")))
    ctx = oauth_context(tmp_path, oauth_imap, authz, MAIL_OAUTH2_REFRESH_TOKEN=refresh)

    found = fetch(ctx, [waiting("1001", "req_aaa")])

    assert list(found) == ["1001"]
    assert authz.grants[0]["scope"] == (
        "https://outlook.office.com/IMAP.AccessAsUser.All offline_access")
    assert authz.introspections  # dovecot really asked about the token
    assert f"Login: user=<{oauth_imap.user}>, method=XOAUTH2" in oauth_imap.log()
    described = IMAPReplies(ctx).describe()
    assert "XOAUTH2" in described
    for secret in (CLIENT_SECRET, refresh, *authz.tokens):
        assert secret not in caplog.text and secret not in described


def test_xoauth2_with_client_credentials_and_a_token_refused_once(
    tmp_path: Path, oauth_imap: Dovecot, authz: OAuth2Server
) -> None:
    authz.grant_mailbox("studio-app", oauth_imap.user)
    oauth_imap.deliver(mail("Je valide", in_reply_to=ours("req_aaa")))
    ctx = oauth_context(tmp_path, oauth_imap, authz)
    source = IMAPReplies(ctx)
    assert IMAPReplies(ctx).check()[0].ok
    authz.expire_all()  # the cached token dies sooner than announced

    assert source.probe("<reply-1@mail.example.fr>") is True

    assert [g["grant_type"] for g in authz.grants] == ["client_credentials"] * 2
    assert authz.grants[0]["scope"] == "https://outlook.office365.com/.default"


def test_xoauth2_refused_for_good_is_permanent_and_names_the_user(
    tmp_path: Path, oauth_imap: Dovecot, authz: OAuth2Server
) -> None:
    ctx = oauth_context(tmp_path, oauth_imap, authz)  # the app was given no mailbox
    with pytest.raises(ServiceError) as caught:
        fetch(ctx, [waiting("1001", "req_aaa")])
    assert not caught.value.transient
    assert f"XOAUTH2 login refused for {oauth_imap.user}" in str(caught.value)
    assert '"status":"401"' in str(caught.value)
    assert CLIENT_SECRET not in str(caught.value)


def test_xoauth2_needs_no_imap_password_but_the_oauth2_client(tmp_path: Path) -> None:
    ctx = context(tmp_path, IMAP_HOST="imap.example.fr", IMAP_USER="a@b.fr", IMAP_AUTH="xoauth2")
    with pytest.raises(ConfigError, match="MAIL_OAUTH2_PROVIDER"):
        build_sources(ctx)
