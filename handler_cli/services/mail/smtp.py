"""The live mailer: hands finished messages to an SMTP relay (standard library only).

Every failure becomes a `ServiceError("smtp", ...)` whose `transient` flag tells the runner
whether trying again later can help (server down, timeout, 4xx) or not (bad password, 5xx).
The password never appears in a description or an error message.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import parseaddr
from typing import TYPE_CHECKING

from handler_cli.checks import Finding, proved
from handler_cli.services import ServiceError

if TYPE_CHECKING:
    from handler_cli.config import Settings

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
        self._ssl_context = ssl_context

    def describe(self) -> str:
        who = f"as {self.user}" if self.user else "without login"
        return f"SMTP {self.host}:{self.port} ({self.security}, {who})"

    def send(self, message: EmailMessage) -> None:
        """Deliver one message; recipients come from its To/Cc/Bcc headers (Bcc is stripped)."""
        from_addr = None if (message["From"] or message["Sender"]) else self.default_sender
        with self._session("send") as smtp:
            try:
                refused = smtp.send_message(message, from_addr=from_addr)
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
        """Connect, greet, secure and log in, as `doctor --check` wants, without sending."""
        with self._session("check") as smtp:
            code, _ = smtp.noop()
            if code != 250:
                raise self._error(f"NOOP answered {code}", transient=400 <= code < 500)
        login = f"logged in as {self.user}" if self.user else "no login configured"
        return [proved(f"{self.host}:{self.port} reachable over {self.security}, {login}")]

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
                smtp.login(self.user, self._password)
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

    def _error(self, message: str, *, transient: bool) -> ServiceError:
        if self._password:
            message = message.replace(self._password, "***")
        return ServiceError("smtp", message, transient=transient)


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
