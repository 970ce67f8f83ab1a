"""Replies read from a mailbox over IMAP (standard library `imaplib`).

The folder is opened read-only and messages are fetched with BODY.PEEK, so the poll never
marks anything as read or moves it: the mailbox stays the team's. Only the headers of recent
messages are fetched first; the full message is downloaded only for those that answer a
waiting ticket and were not handled yet.

`IMAP_AUTH=xoauth2` logs in with SASL XOAUTH2 and an OAuth2 access token (Microsoft 365
refuses password IMAP; see `services/mail/oauth2.py`) instead of LOGIN with IMAP_PASSWORD.
"""

from __future__ import annotations

import imaplib
import logging
import re
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from handler_cli.checks import Finding, proved
from handler_cli.config import ConfigError
from handler_cli.replies import (
    Handled,
    Reply,
    TicketIndex,
    own_addresses,
    parse_message,
    reply_from_mail,
)
from handler_cli.services import ServiceError

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.services import WaitingTicket
    from handler_cli.services.mail.oauth2 import TokenSource

log = logging.getLogger("handler_cli")

DEFAULT_PORTS = {"ssl": 993, "starttls": 143, "none": 143}
HEADER_FIELDS = ("MESSAGE-ID IN-REPLY-TO REFERENCES SUBJECT FROM DATE AUTO-SUBMITTED "
                 "PRECEDENCE X-AUTOREPLY X-AUTORESPOND")
HEADER_BATCH = 500  # UIDs per header FETCH
BODY_BATCH = 25  # full messages per FETCH (attachments can be large)
_UID = re.compile(rb"\bUID (\d+)")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imap_date(at: datetime) -> str:
    """IMAP's SEARCH date (`25-Nov-2026`), independent of the process locale."""
    return f"{at.day:02d}-{_MONTHS[at.month - 1]}-{at.year}"


def _fetched(data: list[object]) -> Iterator[tuple[int, bytes]]:
    """(uid, literal) pairs out of imaplib's FETCH answer."""
    for item in data:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
            head = item[0] if isinstance(item[0], bytes) else b""
            found = _UID.search(head)
            if found:
                yield int(found.group(1)), item[1]


class IMAPReplies:
    """Replies in `IMAP_FOLDER`, matched to waiting tickets by In-Reply-To/References or subject."""

    name = "imap"

    def __init__(self, ctx: Context, ssl_context: ssl.SSLContext | None = None) -> None:
        """`ssl_context` exists for tests that trust their own CA; production uses the default."""
        s = ctx.settings
        needed = [("IMAP_HOST", s.imap_host), ("IMAP_USER", s.imap_user)]
        if s.imap_auth == "password":
            needed.append(("IMAP_PASSWORD", s.imap_password))
        missing = [k for k, v in needed if not v]
        if missing:
            raise ConfigError(
                f"HANDLER_REPLY_SOURCES: the imap reply source needs {', '.join(missing)}"
            )
        self.ctx = ctx
        self.host: str = s.imap_host or ""
        self.security = s.imap_security
        self.port: int = s.imap_port or DEFAULT_PORTS[self.security]
        self.user: str = s.imap_user or ""
        self._password: str = s.imap_password or ""
        self.folder = s.imap_folder
        self.timeout = s.imap_timeout
        self._ssl_context = ssl_context
        self._tokens: TokenSource | None = None
        if s.imap_auth == "xoauth2":
            from handler_cli.services.mail.oauth2 import token_source

            self._tokens = token_source(s, "imap")

    def describe(self) -> str:
        how = f", XOAUTH2, {self._tokens.describe()}" if self._tokens else ""
        return f"IMAP {self.user}@{self.host}:{self.port}/{self.folder} ({self.security}{how})"

    def _error(self, what: str, exc: BaseException, *, transient: bool = True) -> ServiceError:
        detail = str(exc) or type(exc).__name__
        if self._password:
            detail = detail.replace(self._password, "***")
        return ServiceError("imap", f"{what} ({self.host}:{self.port}): {detail}",
                            transient=transient)

    @contextmanager
    def _session(self) -> Iterator[imaplib.IMAP4]:
        """Connected, secured, logged in, the folder selected read-only."""
        context = self._ssl_context or ssl.create_default_context()
        try:
            if self.security == "ssl":
                imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    self.host, self.port, ssl_context=context, timeout=self.timeout)
            else:
                imap = imaplib.IMAP4(self.host, self.port, timeout=self.timeout)
                if self.security == "starttls":
                    imap.starttls(ssl_context=context)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise self._error("cannot connect", exc) from None
        try:
            self._login(imap)
            status, data = imap.select(_quoted(self.folder), readonly=True)
            if status != "OK":
                raise ServiceError("imap", f"cannot open folder {self.folder!r}: "
                                   f"{_text(data)}", transient=False)
            yield imap
        except (OSError, imaplib.IMAP4.abort) as exc:
            raise self._error("connection lost", exc) from None
        except imaplib.IMAP4.error as exc:
            raise self._error("server refused a command", exc) from None
        finally:
            with suppress(OSError, imaplib.IMAP4.error):
                imap.logout()

    def _login(self, imap: imaplib.IMAP4) -> None:
        """LOGIN with the password, or AUTHENTICATE XOAUTH2 with a token fetched again once if
        the server refuses the cached one (revoked, or expired sooner than it said)."""
        if self._tokens is None:
            try:
                imap.login(self.user, self._password)
            except imaplib.IMAP4.error as exc:
                raise self._error(f"login refused for {self.user}", exc, transient=False) from None
            return
        from handler_cli.services.mail.oauth2 import XOAuth2Answer

        for attempt in (1, 2):
            token = self._tokens.token()
            answer = XOAuth2Answer(self.user, token)
            try:
                imap.authenticate("XOAUTH2", answer.imap)
                return
            except imaplib.IMAP4.error as exc:
                self._tokens.invalidate(token)
                if attempt == 2:
                    said = f" ({answer.server_said})" if answer.server_said else ""
                    raise self._error(f"XOAUTH2 login refused for {self.user}{said}", exc,
                                      transient=False) from None

    def probe(self, message_id: str) -> bool:
        """Whether a message with this Message-ID is in the folder (`doctor --mail-loop`)."""
        with self._session() as imap:
            status, data = imap.uid("SEARCH", "HEADER", "Message-ID", _quoted(message_id))
            if status != "OK":
                raise ServiceError("imap", f"SEARCH refused: {_text(data)}")
            return bool(data and data[0] and data[0].split())

    def check(self) -> list[Finding]:
        """Log in and open the folder, as `doctor --check` wants; return what was found."""
        with self._session() as imap:
            status, data = imap.uid("SEARCH", "ALL")
            count = len(data[0].split()) if status == "OK" and data and data[0] else 0
        return [proved(f"{self.describe()}: {count} message(s)")]

    def fetch(
        self, waiting: Sequence[WaitingTicket], handled: Handled, since: datetime
    ) -> dict[str, list[Reply]]:
        if not waiting:
            return {}
        index = TicketIndex.of(waiting)
        ours = own_addresses(self.ctx)
        # SEARCH SINCE has day granularity in the server's time zone: a day of margin.
        day = (since.astimezone(UTC) - timedelta(days=1)).date()
        wanted: dict[int, tuple[str, Reply]] = {}
        with self._session() as imap:
            uidvalidity = _text(imap.response("UIDVALIDITY")[1]) or "0"
            status, data = imap.uid("SEARCH", "SINCE", imap_date(datetime(day.year, day.month,
                                                                           day.day)))
            if status != "OK":
                raise ServiceError("imap", f"SEARCH refused: {_text(data)}")
            uids = [int(u) for u in (data[0] or b"").split()] if data else []
            for chunk in _chunks(uids, HEADER_BATCH):
                status, data = imap.uid(
                    "FETCH", ",".join(map(str, chunk)),
                    f"(UID BODY.PEEK[HEADER.FIELDS ({HEADER_FIELDS})])")
                if status != "OK":
                    raise ServiceError("imap", f"FETCH refused: {_text(data)}")
                for uid, raw in _fetched(data):
                    head = parse_message(raw, with_files=False)
                    ticket_id = index.match(head.in_reply_to, head.references, head.subject)
                    if ticket_id is None or head.sender in ours:
                        continue
                    reply = reply_from_mail(head, ticket_id, self.name,
                                            f"imap{uidvalidity}-{uid}", datetime.now(UTC))
                    if not handled.is_handled(ticket_id, reply):
                        wanted[uid] = (ticket_id, reply)
            replies: dict[str, list[Reply]] = {}
            for chunk in _chunks(sorted(wanted), BODY_BATCH):
                status, data = imap.uid("FETCH", ",".join(map(str, chunk)),
                                        "(UID BODY.PEEK[])")
                if status != "OK":
                    raise ServiceError("imap", f"FETCH refused: {_text(data)}")
                for uid, raw in _fetched(data):
                    ticket_id, head_reply = wanted[uid]
                    mail = parse_message(raw)
                    reply = reply_from_mail(mail, ticket_id, self.name, head_reply.key,
                                            head_reply.at)
                    replies.setdefault(ticket_id, []).append(reply)
        for found in replies.values():
            found.sort(key=lambda r: r.at)
        log.debug("imap: %d message(s) since %s, %d new repl(ies)", len(uids), day,
                  sum(len(r) for r in replies.values()))
        return replies

    def acknowledge(self, reply: Reply) -> None:
        """The mailbox is left as it is: what was handled is recorded by the poll."""


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _quoted(folder: str) -> str:
    """A folder name as an IMAP quoted string (spaces and quotes allowed)."""
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(data: object) -> str:
    if isinstance(data, list | tuple):
        return " ".join(_text(d) for d in data if d is not None)
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return "" if data is None else str(data)
