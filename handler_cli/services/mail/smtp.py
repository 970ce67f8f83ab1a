"""The live mailer: hands finished messages to an SMTP relay (standard library only).

Every failure becomes a `ServiceError("smtp", ...)` whose `transient` flag tells the runner
whether trying again later can help (server down, timeout, 4xx) or not (bad password, 5xx,
an address the relay cannot carry). The password never appears in a description or an error
message. `SMTP_AUTH=xoauth2` logs in with an OAuth2 access token instead (`oauth2.py`).

A client address with non-ASCII characters before the @ (`hélène@...`) needs the relay's
SMTPUTF8 extension (RFC 6531): smtplib sends with it when offered; when it is not, no retry
can help, so the failure is permanent at once.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from typing import TYPE_CHECKING

from handler_cli.checks import Finding, missing, proved
from handler_cli.config import ConfigError, mail_address
from handler_cli.services import ServiceError

if TYPE_CHECKING:
    from handler_cli.config import Settings
    from handler_cli.services.mail.oauth2 import TokenSource

log = logging.getLogger("handler_cli")

DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}


class SMTPMailer:
    """Sends through `smtp_host` with STARTTLS, implicit TLS or (loopback relays) no TLS."""

    name = "smtp"

    def __init__(self, settings: Settings, ssl_context: ssl.SSLContext | None = None) -> None:
        """`ssl_context` exists for tests that trust their own CA; production uses the default."""
        if not settings.smtp_host:
            raise ValueError("SMTP_HOST is required for the SMTP mailer")
        self.host: str = settings.smtp_host
        self.security = settings.smtp_security
        self.port: int = settings.smtp_port or DEFAULT_PORTS[self.security]
        self.user = settings.smtp_user or None
        self._password = settings.smtp_password or ""
        self.timeout = settings.smtp_timeout
        self.default_sender = parseaddr(settings.mail_from)[1] or None
        # `doctor --check` asks the relay about a real recipient: the admin, who gets mail.
        self.probe_recipient = mail_address(settings.admin_email)
        self._ssl_context = ssl_context
        self._tokens: TokenSource | None = None
        if settings.smtp_auth == "xoauth2":
            if not self.user:
                raise ConfigError("SMTP_AUTH=xoauth2 needs SMTP_USER (the mailbox to send as)")
            from handler_cli.services.mail.oauth2 import token_source

            self._tokens = token_source(settings, "smtp")

    def describe(self) -> str:
        who = f"as {self.user}" if self.user else "without login"
        if self._tokens is not None:
            who += f" with XOAUTH2, {self._tokens.describe()}"
        return f"SMTP {self.host}:{self.port} ({self.security}, {who})"

    def send(self, message: EmailMessage) -> None:
        """Deliver one message; recipients come from its To/Cc/Bcc headers (Bcc is stripped)."""
        from_addr = None if (message["From"] or message["Sender"]) else self.default_sender
        with self._session("send") as smtp:
            try:
                refused = smtp.send_message(message, from_addr=from_addr)
            except smtplib.SMTPNotSupportedError:
                wide = sorted(a for a in _addresses(message, from_addr) if not a.isascii())
                raise self._error(
                    f"{self.host} does not offer SMTPUTF8, needed for {', '.join(wide)}: "
                    "the message cannot go through this relay", transient=False) from None
            except smtplib.SMTPRecipientsRefused as exc:
                codes = [code for code, _ in exc.recipients.values()]
                details = ", ".join(
                    f"{addr} ({code} {_text(reply)})" for addr, (code, reply) in
                    exc.recipients.items()
                )
                raise self._error(
                    f"every recipient refused: {details}",
                    transient=all(400 <= code < 500 for code in codes),
                ) from None
        if refused:
            # Part of the recipients got the message: raising would make a retry send it twice
            # to the others, so the refusal is only logged.
            log.warning(
                "smtp: message %s refused for %s",
                message["Message-ID"],
                ", ".join(f"{addr} ({code} {_text(reply)})" for addr, (code, reply) in
                          refused.items()),
            )

    def check(self) -> list[Finding]:
        """Log in, then ask the relay to take the sender and a recipient, and reset: nothing
        is sent. A relay that refuses to send as MAIL_FROM would fail every e-mail."""
        with self._session("check") as smtp:
            how = "no login configured"
            if self.user:
                how = f"logged in as {self.user}" + (" with XOAUTH2" if self._tokens else "")
            utf8 = "SMTPUTF8 offered" if smtp.has_extn("smtputf8") else (
                "no SMTPUTF8: clients whose address has accents before the @ cannot be written to")
            findings = [proved(f"{self.host}:{self.port} reachable over {self.security}, {how}; "
                               f"{utf8}")]
            findings.append(self._envelope_check(smtp))
        return findings

    def _envelope_check(self, smtp: smtplib.SMTP) -> Finding:
        """MAIL FROM + RCPT TO + RSET. Some relays (Exchange Online among them) check the right
        to send as an address only at the end of the message: `doctor --mail-loop` proves it."""
        sender, recipient = self.default_sender, self.probe_recipient
        if not sender or not recipient:
            return missing(f"MAIL_FROM ({sender or 'no address'}) and ADMIN_EMAIL "
                           f"({recipient or 'no address'}) must be e-mail addresses")
        try:
            code, reply = smtp.mail(sender)
            if code != 250:
                return missing(
                    f"{self.host} refuses to send as {sender} (MAIL FROM: {code} {_text(reply)})"
                    f"{'; try again later' if 400 <= code < 500 else ''}: set MAIL_FROM to an "
                    f"address {self.user or 'this relay'} may send as")
            code, reply = smtp.rcpt(recipient)
            if code not in (250, 251):
                return missing(f"{self.host} accepts the sender {sender} but refuses the "
                               f"recipient {recipient} (RCPT TO: {code} {_text(reply)})")
            return proved(f"{self.host} accepts mail from {sender} to {recipient} "
                          "(MAIL FROM and RCPT TO, then RSET: nothing sent)")
        finally:
            smtp.rset()

    # -- internals -------------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    @contextmanager
    def _session(self, action: str) -> Iterator[smtplib.SMTP]:
        """An open, secured, authenticated connection; every smtplib failure is translated."""
        smtp: smtplib.SMTP | None = None
        done = False
        try:
            if self.security == "ssl":
                smtp = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=self._context()
                )
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            smtp.ehlo()
            if self.security == "starttls":
                smtp.starttls(context=self._context())
                smtp.ehlo()
            if self.user:
                self._login(smtp)
            yield smtp
            done = True
        except ServiceError:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise self._error(
                f"login as {self.user} refused: {exc.smtp_code} {_text(exc.smtp_error)}",
                transient=400 <= exc.smtp_code < 500,
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise self._error(f"{action} impossible: {exc}", transient=False) from None
        except smtplib.SMTPServerDisconnected as exc:
            raise self._error(f"connection lost during {action}: {exc}", transient=True) from None
        except smtplib.SMTPResponseException as exc:
            # Sender refused, data refused, HELO refused, connect refused with a code...
            raise self._error(
                f"{action} refused: {exc.smtp_code} {_text(exc.smtp_error)}",
                transient=400 <= exc.smtp_code < 500,
            ) from None
        except smtplib.SMTPException as exc:
            raise self._error(f"{action} failed: {exc}", transient=False) from None
        except ssl.SSLCertVerificationError as exc:
            raise self._error(
                f"TLS certificate of {self.host} not trusted: {exc.verify_message}",
                transient=False,
            ) from None
        except ssl.SSLError as exc:
            raise self._error(
                f"TLS handshake with {self.host} failed: {exc.reason or exc}", transient=False
            ) from None
        except TimeoutError:
            raise self._error(
                f"no answer from {self.host}:{self.port} within {self.timeout:g} s", transient=True
            ) from None
        except ConnectionRefusedError:
            raise self._error(
                f"connection to {self.host}:{self.port} refused (server down?)", transient=True
            ) from None
        except OSError as exc:
            raise self._error(
                f"cannot reach {self.host}:{self.port}: {exc.strerror or exc}", transient=True
            ) from None
        finally:
            if smtp is not None:
                _close(smtp, polite=done)

    def _login(self, smtp: smtplib.SMTP) -> None:
        """Password login, or XOAUTH2 with a token fetched again once if the server refuses
        the cached one (revoked, or expired sooner than it said)."""
        if self._tokens is None:
            smtp.login(self.user or "", self._password)
            return
        from handler_cli.services.mail.oauth2 import XOAuth2Answer

        offered = smtp.esmtp_features.get("auth", "").upper().split()
        if "XOAUTH2" not in offered:
            raise self._error(f"{self.host} does not offer AUTH XOAUTH2 (offers: "
                              f"{' '.join(offered) or 'no AUTH'})", transient=False)
        for attempt in (1, 2):
            token = self._tokens.token()
            answer = XOAuth2Answer(self.user or "", token)
            try:
                smtp.auth("XOAUTH2", answer, initial_response_ok=True)
                return
            except smtplib.SMTPAuthenticationError as exc:
                self._tokens.invalidate(token)
                if attempt == 2 or exc.smtp_code != 535:
                    said = f" ({answer.server_said})" if answer.server_said else ""
                    raise self._error(
                        f"XOAUTH2 login as {self.user} refused: {exc.smtp_code} "
                        f"{_text(exc.smtp_error)}{said}", transient=400 <= exc.smtp_code < 500,
                    ) from None

    def _error(self, message: str, *, transient: bool) -> ServiceError:
        if self._password:
            message = message.replace(self._password, "***")
        return ServiceError("smtp", message, transient=transient)


def _addresses(message: EmailMessage, from_addr: str | None) -> set[str]:
    """The envelope addresses smtplib derives from the headers."""
    fields = ("From", "Sender", "To", "Cc", "Bcc")
    found = {a for _, a in getaddresses([str(v) for f in fields for v in message.get_all(f, [])])}
    return {a for a in found | ({from_addr} if from_addr else set()) if a}


def _text(reply: bytes | str) -> str:
    """A server reply as one readable line."""
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " ".join(reply.split())


def _close(smtp: smtplib.SMTP, *, polite: bool) -> None:
    """QUIT after success; after a failure just drop the socket (QUIT could wait a timeout)."""
    if polite:
        try:
            smtp.quit()
            return
        except (smtplib.SMTPException, OSError):
            pass
    smtp.close()
