"""The embedded CRM: contacts, tickets, notes and e-mails in one SQLite file.

It mirrors what the HubSpot backend stores (same ticket properties) so the rest of the
tool, and an operator reading the database, see the same shape on both.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from handler_cli.services import EmailRecord, ServiceError, TicketDraft, WaitingTicket
from handler_cli.sqlite import connect

if TYPE_CHECKING:
    from handler_cli.checks import Finding

SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts (
  id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, firstname TEXT, lastname TEXT,
  created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tickets (
  id INTEGER PRIMARY KEY, request_id TEXT NOT NULL UNIQUE, contact_id INTEGER,
  subject TEXT NOT NULL, content TEXT NOT NULL, priority TEXT NOT NULL,
  properties TEXT NOT NULL DEFAULT '{}', created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notes (
  id INTEGER PRIMARY KEY, ticket_id INTEGER NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS emails (
  id INTEGER PRIMARY KEY, ticket_id INTEGER NOT NULL, message_id TEXT NOT NULL UNIQUE,
  direction TEXT NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL, subject TEXT NOT NULL,
  body TEXT NOT NULL, in_reply_to TEXT, attachments TEXT NOT NULL DEFAULT '[]', at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS emails_ticket ON emails (ticket_id, at);
"""
# Tickets start at 1001 so local references look like real ones in e-mail subjects.
FIRST_TICKET_ID = 1001


def _addresses_include(address: str, *fields: str) -> bool:
    """Whether one of these From/To header values names `address` (case aside)."""
    from email.utils import getaddresses

    return any(addr.lower() == address for _, addr in getaddresses(list(fields)))


def _now() -> str:
    return datetime.now(UTC).isoformat()


class LocalCRM:
    name = "local"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    @cached_property
    def _db(self) -> sqlite3.Connection:
        """Opened (and created) on first use, under the lock: `doctor` builds the backend to
        describe it and must leave a fresh data dir untouched."""
        db = connect(self.path, SCHEMA)
        db.row_factory = sqlite3.Row
        return db

    def describe(self) -> str:
        return f"local SQLite CRM at {self.path}"

    def check(self) -> list[Finding]:
        from handler_cli.checks import sqlite_rows, writable_place

        found = [writable_place(self.path, "CRM file")]
        if self.path.exists():
            found.append(sqlite_rows(self.path, "tickets", "the local CRM"))
        return found

    def _one(self, sql: str, args: tuple[object, ...]) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _exec(self, sql: str, args: tuple[object, ...]) -> int:
        with self._lock:
            return self._db.execute(sql, args).lastrowid or 0

    def find_or_create_contact(self, email: str, firstname: str, lastname: str) -> str:
        self._exec(
            "INSERT INTO contacts (email, firstname, lastname, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(email) DO NOTHING",
            (email.lower(), firstname, lastname, _now()),
        )
        row = self._one("SELECT id FROM contacts WHERE email = ?", (email.lower(),))
        assert row is not None
        return str(row["id"])

    def forget_contact(self, email: str) -> bool:
        """Erase the contact with this address and the e-mails exchanged with it; its
        tickets stay, without a contact. As HubSpot's GDPR delete: nothing is blocklisted."""
        address = email.strip().lower()
        with self._lock:
            row = self._db.execute("SELECT id FROM contacts WHERE email = ?",
                                   (address,)).fetchone()
            if row is None:
                return False
            self._db.execute("UPDATE tickets SET contact_id = NULL WHERE contact_id = ?",
                             (row["id"],))
            for mail in self._db.execute(
                    "SELECT id, sender, recipient FROM emails WHERE instr(lower(sender), ?) "
                    "OR instr(lower(recipient), ?)", (address, address)).fetchall():
                if _addresses_include(address, mail["sender"], mail["recipient"]):
                    self._db.execute("DELETE FROM emails WHERE id = ?", (mail["id"],))
            self._db.execute("DELETE FROM contacts WHERE id = ?", (row["id"],))
        return True

    def erase_tickets(self, request_ids: list[str]) -> int:
        """Delete these requests' tickets with their notes and e-mails (retention and
        `forget`: handler_cli.retention); how many tickets."""
        with self._lock:
            erased = 0
            for request_id in request_ids:
                row = self._db.execute("SELECT id FROM tickets WHERE request_id = ?",
                                       (request_id,)).fetchone()
                if row is not None:
                    for table in ("notes", "emails"):
                        self._db.execute(f"DELETE FROM {table} WHERE ticket_id = ?", (row["id"],))
                    erased += self._db.execute("DELETE FROM tickets WHERE id = ?",
                                               (row["id"],)).rowcount
            return erased

    def requests_of(self, email: str) -> list[str]:
        """The request ids of the tickets of the contact with this address."""
        with self._lock:
            return [r["request_id"] for r in self._db.execute(
                "SELECT t.request_id FROM tickets t JOIN contacts c ON c.id = t.contact_id"
                " WHERE c.email = ?", (email.strip().lower(),))]

    def find_ticket(self, request_id: str) -> str | None:
        row = self._one("SELECT id FROM tickets WHERE request_id = ?", (request_id,))
        return str(row["id"]) if row else None

    def create_ticket(self, draft: TicketDraft) -> str:
        # One statement picks the next id and inserts, atomically even across processes;
        # the unique request_id makes a second create for the same request a no-op.
        self._exec(
            "INSERT INTO tickets (id, request_id, contact_id, subject, content, priority,"
            " properties, created_at, updated_at) VALUES ((SELECT COALESCE(MAX(id), ?) + 1"
            " FROM tickets), ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(request_id) DO NOTHING",
            (FIRST_TICKET_ID - 1, draft.request_id, draft.contact_id, draft.subject,
             draft.content, draft.priority, json.dumps(draft.properties), _now(), _now()),
        )
        ticket_id = self.find_ticket(draft.request_id)
        assert ticket_id is not None
        return ticket_id

    def _ticket_row(self, ticket_id: str) -> sqlite3.Row:
        row = self._one("SELECT * FROM tickets WHERE id = ?", (ticket_id,))
        if row is None:
            raise ServiceError("crm", f"ticket {ticket_id} not found", transient=False)
        return row

    def get_ticket(self, ticket_id: str) -> dict[str, str]:
        row = self._ticket_row(ticket_id)
        props: dict[str, str] = json.loads(row["properties"])
        return {
            **props, "subject": row["subject"], "content": row["content"],
            "hs_ticket_priority": row["priority"], "request_id": row["request_id"],
            "contact_id": str(row["contact_id"] or ""), "updated_at": row["updated_at"],
        }

    def update_ticket(self, ticket_id: str, properties: dict[str, str]) -> None:
        with self._lock:
            row = self._db.execute(
                "SELECT properties FROM tickets WHERE id = ?", (ticket_id,)
            ).fetchone()
            if row is None:
                raise ServiceError("crm", f"ticket {ticket_id} not found", transient=False)
            merged = {**json.loads(row["properties"]), **properties}
            self._db.execute(
                "UPDATE tickets SET properties = ?, updated_at = ? WHERE id = ?",
                (json.dumps(merged), _now(), ticket_id),
            )

    def ticket_url(self, ticket_id: str) -> str:
        return f"sqlite://{self.path}#tickets/{ticket_id}"

    def add_note(self, ticket_id: str, body: str) -> None:
        self._exec(
            "INSERT INTO notes (ticket_id, body, created_at) VALUES (?, ?, ?)",
            (ticket_id, body, _now()),
        )

    def notes(self, ticket_id: str) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM notes WHERE ticket_id = ? ORDER BY id", (ticket_id,)
            ).fetchall()
        return [r["body"] for r in rows]

    def log_email(self, ticket_id: str, email: EmailRecord) -> None:
        self._exec(
            "INSERT INTO emails (ticket_id, message_id, direction, sender, recipient, subject,"
            " body, in_reply_to, attachments, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(message_id) DO NOTHING",
            (ticket_id, email.message_id, email.direction, email.sender, email.to,
             email.subject, email.text, email.in_reply_to, json.dumps(list(email.attachments)),
             email.at.isoformat()),
        )

    def emails(self, ticket_id: str, direction: str | None = None) -> list[EmailRecord]:
        sql = "SELECT * FROM emails WHERE ticket_id = ?"
        args: tuple[object, ...] = (ticket_id,)
        if direction:
            sql, args = sql + " AND direction = ?", (ticket_id, direction)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY at, id", args).fetchall()
        return [
            EmailRecord(
                message_id=r["message_id"], direction=r["direction"], sender=r["sender"],
                to=r["recipient"], subject=r["subject"], text=r["body"],
                at=datetime.fromisoformat(r["at"]), in_reply_to=r["in_reply_to"],
                attachments=tuple(json.loads(r["attachments"])), crm_id=str(r["id"]),
            )
            for r in rows
        ]

    def incoming_emails(
        self, ticket_ids: list[str], skip: set[str]
    ) -> dict[str, list[EmailRecord]]:
        """The client's e-mails on each ticket, oldest first, except local ids in `skip`."""
        return {
            str(t): [e for e in self.emails(str(t), "INCOMING") if e.crm_id not in skip]
            for t in ticket_ids
        }

    def waiting_tickets(self, statuses: tuple[str, ...]) -> list[WaitingTicket]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM tickets ORDER BY id").fetchall()
        waiting = []
        for r in rows:
            props = json.loads(r["properties"])
            if props.get("validation_status") in statuses:
                waiting.append(WaitingTicket(
                    ticket_id=str(r["id"]), request_id=r["request_id"],
                    validation_status=props["validation_status"], properties=props,
                    updated_at=datetime.fromisoformat(r["updated_at"]),
                ))
        return waiting
