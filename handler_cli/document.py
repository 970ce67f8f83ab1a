"""The request document: the webhook payload plus what each step adds to it.

The document is the whole state of a request. Steps read it, add their outputs under the
original spec's names, and a step that finds its output already there does nothing: the
document is also what lets a re-run or a resumed chain skip side effects already done.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RequestType = Literal["SUPPORT", "MODELISATION"]
Source = Literal["contact", "modelisation"]
ValidationStatus = Literal["pending_info", "pending_credits", "pending_admin", "validated", "rejected"]

SOURCE_TYPE: dict[str, RequestType] = {"contact": "SUPPORT", "modelisation": "MODELISATION"}

# Deliberately simple: one @, no spaces, a dotted domain. Deliverability is SMTP's job.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"^[^@\s<>()\[\],;:\"]{{1,64}}@{_LABEL}(?:\.{_LABEL})+$")

MAX_FILES = 20


def empty_list() -> list[Any]:
    """Default factory of list fields. A function rather than `list`: pydantic reads a
    factory's signature, and for a builtin Python 3.11 starts its tokenizer to parse it
    (2 ms of every command's start-up). A plain `[]` default would be deep-copied for
    every document instead."""
    return []


def empty_dict() -> dict[str, Any]:
    """Default factory of dict fields (see `empty_list`)."""
    return {}


class FileObject(BaseModel):
    """An attachment given as an object: a name plus either a URL or base64 content."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    url: str | None = Field(default=None, max_length=2048)
    content_base64: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> FileObject:
        if (self.url is None) == (self.content_base64 is None):
            raise ValueError("give exactly one of 'url' or 'content_base64'")
        return self


FileItem = str | FileObject


class Classification(BaseModel):
    method: Literal["keywords", "llm", "source"]
    reasons: list[str] = Field(default_factory=empty_list)
    scores: dict[str, float] = Field(default_factory=empty_dict)
    usage: dict[str, int] | None = None


class Analysis(BaseModel):
    rule: str
    reasons: list[str] = Field(default_factory=empty_list)


class SentEmail(BaseModel):
    """One e-mail sent for this request; `message_id` lets replies be matched to it."""

    message_id: str
    to: str
    subject: str
    template: str
    sent_at: datetime


class StepError(BaseModel):
    """A failure recorded on the document; the step can be run again to retry it.

    `transient` says whether waiting may fix it (a service down, a 429, a timeout): the
    webhook runner retries those and dead-letters the others at once. A bad input or a bug
    is not fixed by retrying for hours, so anything not known to be transient is not.
    """

    step: str
    error: str
    at: datetime
    transient: bool = False


class Payload(BaseModel):
    """What the web forms send. Validated at the edge, every field named in errors."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    source: Source
    objet: str = Field(min_length=1, max_length=300)
    description: str = Field(min_length=1, max_length=20_000)
    user_email: str = Field(max_length=254)
    user_name: str = Field(min_length=1, max_length=200)
    fichiers: list[FileItem] = Field(default_factory=empty_list, max_length=MAX_FILES)

    @field_validator("user_email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not _EMAIL.match(value):
            raise ValueError("not a valid e-mail address")
        return value.lower()

    @field_validator("fichiers", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    def payload_fingerprint(self) -> str:
        """Hash of what the client sent: the same submission always gets the same id."""
        fields = self.model_dump(
            include={"source", "objet", "description", "user_email", "user_name", "fichiers"},
            mode="json",
        )
        canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class Document(Payload):
    """The payload plus every step's outputs (None until the step ran)."""

    request_id: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$")

    # step 1: classify
    type_final: RequestType | None = None
    confiance: float | None = Field(default=None, ge=0, le=1)
    reclassifie: bool | None = None
    classification: Classification | None = None
    # step 2: upload
    fichiers_urls: list[str] | None = None
    # step 3 and 4: contact and ticket
    contact_id: str | None = None
    ticket_id: str | None = None
    ticket_url: str | None = None
    # step 5: analyze
    credits_estimes: int | None = None
    completeness: Literal["complete", "incomplete"] | None = None
    missing_info: list[str] | None = None
    validation_status: ValidationStatus | None = None
    analysis: Analysis | None = None
    # step 6: subtask
    clickup_subtask_id: str | None = None
    # 5b and 7: e-mails sent, by kind
    emails: dict[str, SentEmail] = Field(default_factory=empty_dict)

    notes: list[str] = Field(default_factory=empty_list)
    errors: list[StepError] = Field(default_factory=empty_list)

    @model_validator(mode="after")
    def _stable_id(self) -> Document:
        if not self.request_id:
            self.request_id = "req_" + self.payload_fingerprint()[:20]
        return self

    @property
    def form_type(self) -> RequestType:
        return SOURCE_TYPE[self.source]

    @property
    def ticket_ref(self) -> str:
        """The reference every e-mail subject carries, so replies can be matched."""
        return f"[Ticket #{self.ticket_id}]" if self.ticket_id else f"[Demande {self.request_id}]"

    def file_names(self) -> list[str]:
        names = []
        for item in self.fichiers:
            if isinstance(item, FileObject):
                names.append(item.name)
            else:
                names.append(item.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0])
        return names

    def asking_emails(self) -> list[tuple[str, SentEmail]]:
        """The e-mails that asked the client for an answer (quote or missing information),
        by kind: the first one (`client`) and those sent after a reply (`client_after_*`)."""
        return [(k, e) for k, e in self.emails.items()
                if k == "client" or k.startswith("client_after_")]

    def awaited_email(self) -> tuple[str, SentEmail] | None:
        """The latest e-mail that asked the client for an answer: what a reply answers."""
        asking = self.asking_emails()
        return max(asking, key=lambda item: item[1].sent_at) if asking else None

    def add_note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)

    def record_error(self, step: str, error: str, at: datetime, *, transient: bool = False) -> None:
        self.clear_errors(step)
        self.errors.append(StepError(step=step, error=error, at=at, transient=transient))

    def clear_errors(self, step: str) -> None:
        self.errors = [e for e in self.errors if e.step != step]

    def to_json(self, pretty: bool = False) -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        if pretty:
            return json.dumps(data, ensure_ascii=False, indent=2)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
