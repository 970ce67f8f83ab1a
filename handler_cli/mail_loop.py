"""`handler-cli doctor --mail-loop`: the operator's proof that a client's reply reaches the poll.

One test e-mail leaves from the configured sender (MAIL_FROM, through the configured mailer)
to the address clients reply to (MAIL_REPLY_TO, else MAIL_FROM); then the configured reply
sources are asked, every few seconds, whether they see it (by its Message-ID), until one does
or the time is up. What `doctor --check` cannot see is proved here: the relay really sends
as MAIL_FROM (some check it only at the end of a message), the message is delivered to the
mailbox, and lands in the folder the imap source reads (not in spam, not moved by a rule).

A source takes part when it can look a message up (`probe(message_id)`): imap and local
today. The test e-mail says `Auto-Submitted: auto-generated` (RFC 3834), so no
out-of-office answers it, and it cites no ticket, so the poll never acts on it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime
from typing import TYPE_CHECKING, Protocol

from handler_cli.config import ConfigError, mail_address
from handler_cli.services import ServiceError

if TYPE_CHECKING:
    from handler_cli.context import Context

log = logging.getLogger("handler_cli")

DEFAULT_TIMEOUT = 300.0
DEFAULT_INTERVAL = 5.0


class Probe(Protocol):
    """A reply source that can say whether a given message reached what it reads."""

    name: str

    def describe(self) -> str: ...
    def probe(self, message_id: str) -> bool: ...


@dataclass
class LoopResult:
    """What happened; `lines` are for the operator (stderr), one fact each."""

    ok: bool
    message_id: str | None = None
    seen_by: str | None = None
    seconds: float | None = None
    lines: list[str] = field(default_factory=list)


def loop_message(ctx: Context, to: str, token: str) -> EmailMessage:
    """The test e-mail: from the sender, to the reply address, citing no ticket."""
    s = ctx.settings
    domain = (mail_address(s.mail_from) or "handler-cli.local").rpartition("@")[2]
    msg = EmailMessage()
    msg["From"] = s.mail_from
    msg["To"] = to
    if s.mail_reply_to:
        msg["Reply-To"] = s.mail_reply_to
    msg["Subject"] = f"[handler-cli] Test de la boucle e-mail {token}"
    msg["Message-ID"] = f"<mail-loop.{token}@{domain}>"
    msg["Date"] = format_datetime(ctx.now())
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Handler-Mail-Loop"] = token
    msg.set_content(
        "Bonjour,\n\n"
        "Ce message de test a été envoyé par « handler-cli doctor --mail-loop » pour vérifier "
        f"que les réponses des clients, envoyées à {to}, sont bien lues par le suivi "
        "automatique des demandes.\n\n"
        "Il ne demande aucune action et peut être supprimé.\n"
    )
    return msg


def run_mail_loop(
    ctx: Context,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> LoopResult:
    """Send the test e-mail and wait (at most `timeout` seconds) until a source sees it.

    Raises ConfigError when there is no loop to prove: mail is not sent (outbox), no reply
    address, or no configured source can look a message up.
    """
    from handler_cli.replies import build_sources
    from handler_cli.services.mail.reply_address import reply_address

    to = reply_address(ctx)
    if to is None:
        raise ConfigError("MAIL_REPLY_TO / MAIL_FROM: no address to send the test e-mail to")
    mailer = ctx.mailer
    if mailer.name == "outbox":
        raise ConfigError(f"mail is not sent ({mailer.describe()}): there is no loop to prove; "
                          "set SMTP_HOST")
    sources = build_sources(ctx)
    probes: list[Probe] = [src for src in sources if hasattr(src, "probe")]  # type: ignore[misc]
    if not probes:
        names = ", ".join(src.name for src in sources)
        raise ConfigError(f"HANDLER_REPLY_SOURCES: no configured source ({names}) can look up a "
                          "test e-mail; the imap source can (IMAP_HOST, IMAP_USER...)")
    token = secrets.token_hex(6)
    msg = loop_message(ctx, to, token)
    message_id = str(msg["Message-ID"])
    result = LoopResult(ok=False, message_id=message_id)
    started = clock()
    try:
        mailer.send(msg)
    except ServiceError as exc:
        result.lines.append(f"the test e-mail could not be sent from {msg['From']} to {to}: {exc}")
        return result
    result.lines.append(f"test e-mail {message_id} sent from {msg['From']} to {to} "
                        f"({mailer.describe()}); waiting for {', '.join(p.name for p in probes)}"
                        f" (at most {timeout:g} s)")
    errors: dict[str, str] = {}
    while True:
        for probe in probes:
            try:
                seen = probe.probe(message_id)
            except ServiceError as exc:
                if errors.get(probe.name) != str(exc):
                    log.warning("mail loop: %s cannot look: %s", probe.name, exc)
                errors[probe.name] = str(exc)
                continue
            if seen:
                result.ok, result.seen_by = True, probe.name
                result.seconds = clock() - started
                result.lines.append(f"the {probe.name} source ({probe.describe()}) saw it "
                                    f"{result.seconds:.1f} s after sending: the reply loop is "
                                    "closed")
                return result
        left = started + timeout - clock()
        if left <= 0:
            break
        sleep(min(interval, left))
    result.lines.append(
        f"no reply source saw the test e-mail within {timeout:g} s: look for "
        f"\"Test de la boucle e-mail {token}\" in {to}'s mailbox (spam, another folder than "
        "IMAP_FOLDER, a bounce in the sender's mailbox)"
        + "".join(f"; {name}: {error}" for name, error in errors.items()))
    return result
