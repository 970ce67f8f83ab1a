"""The ports steps talk to. One Protocol per service; one module per backend beneath.

Steps only see these interfaces (through the Context), never a backend module, so the same
step runs against HubSpot or SQLite, R2 or a folder, SMTP or an outbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from email.message import EmailMessage


class ServiceError(Exception):
    """A backend failed (down, refused, timed out). Recorded on the document, retryable."""

    def __init__(self, service: str, message: str, *, transient: bool = True) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.transient = transient


@dataclass(frozen=True)
class TicketDraft:
    """What the ticket step asks the CRM to create."""

    request_id: str
    subject: str
    content: str
    priority: Literal["LOW", "MEDIUM", "HIGH"]
    contact_id: str | None
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EmailRecord:
    """An e-mail as the CRM keeps it (sent to or received from the client)."""

    message_id: str
    direction: Literal["OUTGOING", "INCOMING"]
    sender: str
    to: str
    subject: str
    text: str
    at: datetime
    in_reply_to: str | None = None
    attachments: tuple[str, ...] = ()
    crm_id: str | None = None  # the CRM's own id of the e-mail (HubSpot engagement id)
    references: tuple[str, ...] = ()  # its References header's Message-IDs, oldest first


@dataclass(frozen=True)
class WaitingTicket:
    """A ticket waiting for the client, as the poll sees it."""

    ticket_id: str
    request_id: str
    validation_status: str
    properties: dict[str, str]
    updated_at: datetime


class CRM(Protocol):
    """Contacts, tickets, notes and the e-mail log (HubSpot or the local SQLite)."""

    name: str

    def describe(self) -> str: ...
    def find_or_create_contact(self, email: str, firstname: str, lastname: str) -> str: ...
    def create_ticket(self, draft: TicketDraft) -> str:
        """Create the ticket; must not create a second one for the same request_id."""
        ...
    def find_ticket(self, request_id: str) -> str | None: ...
    def update_ticket(self, ticket_id: str, properties: dict[str, str]) -> None: ...
    def get_ticket(self, ticket_id: str) -> dict[str, str]: ...
    def ticket_url(self, ticket_id: str) -> str: ...
    def add_note(self, ticket_id: str, body: str) -> None: ...
    def log_email(self, ticket_id: str, email: EmailRecord) -> None: ...
    def waiting_tickets(self, statuses: tuple[str, ...]) -> list[WaitingTicket]:
        """Tickets whose validation_status is one of `statuses` (paged under the hood)."""
        ...
    def incoming_emails(
        self, ticket_ids: list[str], skip: set[str]
    ) -> dict[str, list[EmailRecord]]:
        """The client's e-mails on each ticket, oldest first, except crm_ids in `skip`."""
        ...
    def forget_contact(self, email: str) -> bool:
        """Erase the contact with this address and the e-mails kept with it, for good (GDPR
        right to erasure); False when the CRM has no such contact. Tickets stay."""
        ...


class FileStore(Protocol):
    """Where attachments go (R2 or a local folder). Returns a link the team can open."""

    name: str

    def describe(self) -> str: ...
    def put(self, key: str, data: bytes, content_type: str) -> str: ...
    def erase_request(self, request_id: str, *, dry_run: bool = False) -> int:
        """Delete every file of this request (`requests/<request id>/`), for retention and
        the right to erasure; how many (with `dry_run`, how many there are, deleting
        none). Refuses (ValueError) an id that could name another prefix."""
        ...


class Mailer(Protocol):
    """Sends a finished RFC 5322 message (SMTP or an outbox folder of .eml files)."""

    name: str

    def describe(self) -> str: ...
    def send(self, message: EmailMessage) -> None: ...


class TaskBoard(Protocol):
    """Production tasks (ClickUp or a local SQLite table)."""

    name: str

    def describe(self) -> str: ...
    def find_subtask(self, parent_id: str, marker: str) -> str | None:
        """The subtask whose description carries `marker`, if one exists already."""
        ...
    def create_subtask(self, parent_id: str, name: str, description: str) -> str: ...


@dataclass(frozen=True)
class LLMVerdict:
    """A structured answer from the model, with what it cost."""

    label: str
    confidence: float
    reason: str
    usage: dict[str, int]


class LLM(Protocol):
    """Claude, called only when keywords are not sure. Raises ServiceError on any failure."""

    name: str

    def describe(self) -> str: ...
    def classify_request(self, text: str) -> LLMVerdict:
        """Label is one of RequestType."""
        ...
    def classify_reply(self, text: str) -> LLMVerdict:
        """Label is validation / refus / question / none / unclear."""
        ...


__all__ = [
    "CRM", "EmailRecord", "FileStore", "LLM", "LLMVerdict", "Mailer",
    "ServiceError", "TaskBoard", "TicketDraft", "WaitingTicket",
]
