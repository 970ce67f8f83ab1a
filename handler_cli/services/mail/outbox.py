"""The embedded mailer: every message becomes a real `.eml` file in an outbox folder.

One file per Message-ID, written atomically, so the outbox can be opened in any mail client
and a message is never there twice.
"""

from __future__ import annotations

import os
import re
import secrets
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from handler_cli.checks import Finding


class OutboxMailer:
    name = "outbox"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def describe(self) -> str:
        return f"outbox folder {self.folder} (nothing is really sent)"

    def check(self) -> list[Finding]:
        from handler_cli.checks import proved, writable_place

        found = [writable_place(self.folder, "outbox folder")]
        if self.folder.is_dir():
            found.append(proved(f"the outbox holds {len(list(self.folder.glob('*.eml')))} "
                                "e-mail(s); nothing leaves this machine"))
        return found

    def path_for(self, message_id: str) -> Path:
        return self.folder / (re.sub(r"[^A-Za-z0-9_.@-]", "_", message_id.strip("<>")) + ".eml")

    def send(self, message: EmailMessage) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path_for(str(message["Message-ID"]))
        # A name of its own per writer: two processes sending at once never share a .part.
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
        tmp.write_bytes(message.as_bytes(policy=SMTP.clone(linesep="\n")))
        tmp.replace(target)
