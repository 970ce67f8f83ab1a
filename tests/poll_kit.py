"""What the poll's tests share: the relay and the data dir, a clock, the intake of a sample,
the client's answer, and reading what the SMTP relay on loopback received.

Each test runs the intake chain on a sample (so the ticket, the document and the first
e-mail are the real ones), records the client's answer in the local CRM as the `reply`
command does, and polls. The relay proves what left, and how many times.

A test module takes the fixtures by name, `relay, environ = poll_kit.relay, poll_kit.environ`
(an import would be a name the linter sees redefined by every test's argument); a module
whose data dir needs more settings keeps `relay` and writes its own `environ` with
`relay_environ(tmp_path, relay, ...)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest

from handler_cli.config import load_settings
from handler_cli.context import Context
from handler_cli.document import Document
from handler_cli.pipeline import run_chain
from handler_cli.services import EmailRecord
from handler_cli.services.tasks.local import LocalTaskBoard
from tests.conftest import clean_environ, sample
from tests.fakes.clickup import DEFAULT_PARENT_ID
from tests.fakes.hubspot import FakeHubSpot, hubspot_server
from tests.peers import SMTPPeer, smtp_server

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def relay_environ(tmp_path: Path, relay: SMTPPeer, **extra: str) -> dict[str, str]:
    """An isolated data dir whose e-mails go to `relay`."""
    return clean_environ(tmp_path / "data", SMTP_HOST=relay.host, SMTP_PORT=str(relay.port),
                         SMTP_SECURITY="none", HANDLER_RETRY_BASE_SECONDS="0.01", **extra)


@pytest.fixture
def relay() -> Iterator[SMTPPeer]:
    """An SMTP relay on loopback recording every message it receives."""
    with smtp_server() as peer:
        yield peer


@pytest.fixture
def environ(tmp_path: Path, relay: SMTPPeer) -> dict[str, str]:
    """An isolated data dir whose e-mails go to `relay` (in place of conftest's `environ`)."""
    return relay_environ(tmp_path, relay)


@pytest.fixture
def hubspot() -> Iterator[FakeHubSpot]:
    """HubSpot's stand-in on loopback."""
    with hubspot_server() as fake:
        yield fake


def at(environ: dict[str, str], when: datetime = T0, **extra: str) -> Context:
    """A context whose clock says `when` (the pipeline ran at T0)."""
    return Context(load_settings(environ={**environ, **extra}), now=lambda: when)


def days(n: float) -> datetime:
    return T0 + timedelta(days=n)


def intake(environ: dict[str, str], name: str = "modelisation_simple", **fields: Any) -> Document:
    doc = Document.model_validate({**sample(name), **fields})
    run_chain(doc, at(environ))
    assert doc.ticket_id and doc.validation_status in ("pending_credits", "pending_info")
    return doc


def client_says(environ: dict[str, str], doc: Document, text: str, *, when: datetime | None = None,
                files: tuple[str, ...] = (), sender: str | None = None) -> EmailRecord:
    """The client's answer, logged as an INCOMING e-mail on the ticket (what `reply` does)."""
    ctx = at(environ)
    record = EmailRecord(
        message_id=make_msgid(domain="mail.example.fr"), direction="INCOMING",
        sender=sender or doc.user_email, to="no-reply@valione-services.com",
        subject=f"Re: {doc.emails['client'].subject}", text=text, at=when or days(1),
        in_reply_to=doc.emails["client"].message_id, attachments=files,
    )
    assert doc.ticket_id
    ctx.crm.log_email(doc.ticket_id, record)
    return record


def kinds(relay: SMTPPeer) -> list[str]:
    """The kind of every message the relay received, in order (from our Message-IDs)."""
    found = []
    for mail in relay.received:
        match = re.match(r"<[^.]+\.([^@]+)@", str(mail.message["Message-ID"]).strip())
        assert match, mail.message["Message-ID"]
        found.append(match.group(1))
    return found


def received(relay: SMTPPeer, kind: str) -> EmailMessage:
    (mail,) = [m for m in relay.received if f".{kind}@" in str(m.message["Message-ID"])]
    return mail.message


def plain(text: str) -> str:
    """`text` with French typography's no-break spaces (U+00A0, U+202F) as plain spaces: the
    tests read what an e-mail says; tests/test_mail_french.py checks how it is spaced."""
    return text.replace("\u00a0", " ").replace("\u202f", " ")


def body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return plain(str(part.get_content()))


def subject(message: EmailMessage) -> str:
    return plain(str(message["Subject"]))


def ticket(environ: dict[str, str], doc: Document) -> dict[str, str]:
    return at(environ).crm.get_ticket(doc.ticket_id or "")


def stored(environ: dict[str, str], doc: Document) -> Document:
    found = at(environ).documents.by_ticket(doc.ticket_id or "")
    assert found is not None
    return found


def subtasks(environ: dict[str, str]) -> list[tuple[str, str, str]]:
    board = LocalTaskBoard(Path(environ["HANDLER_DATA_DIR"]) / "tasks.sqlite3")
    return board.subtasks(DEFAULT_PARENT_ID)
