"""Where the clients' replies go, and whether a configured reply source reads that address.

Every client e-mail asks for an answer ("répondez simplement « Je valide »"). The answer goes
to MAIL_REPLY_TO, else to MAIL_FROM; the poll acts on it only if a reply source reads that
mailbox. This module says, from the settings alone, whether the two meet: `doctor` prints it
(a warning), `doctor --check` fails on a contradiction, one line each. The defaults never
produce one (`config.mail_defaults`); `doctor --mail-loop` proves a loop end to end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from handler_cli.checks import Finding, missing, proved
from handler_cli.config import is_no_reply, mail_address

if TYPE_CHECKING:
    from handler_cli.context import Context


def reply_address(ctx: Context) -> str | None:
    """The bare address a client's "Reply" goes to."""
    s = ctx.settings
    return mail_address(s.mail_reply_to or s.mail_from)


def reply_address_findings(ctx: Context) -> list[Finding]:
    """One line: the reply address and which source reads it, or why none does.

    Raises ConfigError when HANDLER_REPLY_SOURCES is wrong (as building the sources does).
    """
    from handler_cli.replies import source_names
    from handler_cli.replies.local import inbox_folder

    s = ctx.settings
    names = source_names(ctx)
    address = reply_address(ctx)
    setting = "MAIL_REPLY_TO" if s.mail_reply_to else "MAIL_FROM, no MAIL_REPLY_TO"
    origin = s.sources.get("mail_reply_to" if s.mail_reply_to else "mail_from")
    origin = f"{setting}{f', {origin}' if origin and origin.startswith('default') else ''}"
    if not s.smtp_host:
        return [proved(f"e-mails go to the outbox, nothing is sent: a client's reply is a .eml "
                       f"saved in {inbox_folder(ctx)} or one recorded with `handler-cli reply`")]
    if address is None:
        return [missing(f"clients have no address to reply to ({origin} is not an e-mail "
                        "address): set MAIL_REPLY_TO to the mailbox a reply source reads")]
    if is_no_reply(address):
        return [missing(f"clients are asked to reply to {address} ({origin}), an address nobody "
                        "reads: set MAIL_REPLY_TO to the mailbox a reply source reads")]
    mailbox = s.imap_mailbox
    if "imap" in names:
        where = f"{s.imap_user}@{s.imap_host}/{s.imap_folder}"
        if address in mailbox:
            return [proved(f"clients reply to {address}, the mailbox the imap source reads "
                           f"({where})")]
        if "hubspot" not in names:
            if not mailbox:
                return [missing(f"clients are asked to reply to {address} ({origin}); the imap "
                                f"source reads {where}, whose addresses are unknown: set "
                                f"IMAP_ADDRESSES to the addresses delivered to it")]
            return [missing(
                f"clients are asked to reply to {address} ({origin}), but the imap source reads "
                f"{', '.join(mailbox)} ({where}): set MAIL_REPLY_TO={mailbox[0]}, or list "
                f"{address} in IMAP_ADDRESSES if its mail lands in that mailbox")]
    if "hubspot" in names:
        return [proved(f"clients reply to {address} ({origin}): the hubspot source sees a reply "
                       f"only if {address} is an inbox connected to HubSpot (docs/production.md, "
                       "\"The mailbox\"); the imap source would read it directly")]
    return [proved(f"clients reply to {address} ({origin}): only the local source is on, so a "
                   f"reply reaches the poll once saved as a .eml in {inbox_folder(ctx)} (by a "
                   "mail delivery or by hand)")]
