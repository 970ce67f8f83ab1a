"""The request document: the webhook payload plus what each step adds to it.

The document is the whole state of a request. Steps read it, add their outputs under the
original spec's names, and a step that finds its output already there does nothing: the
document is also what lets a re-run or a resumed chain skip side effects already done.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

RequestType = Literal["SUPPORT", "MODELISATION"]
Source = Literal["contact", "modelisation"]
ValidationStatus = Literal["pending_info", "pending_credits", "pending_admin", "validated", "rejected"]

SOURCE_TYPE: dict[str, RequestType] = {"contact": "SUPPORT", "modelisation": "MODELISATION"}

# Deliberately simple: one @, a dotted domain, ASCII only (RFC 5322 atext in the local part).
# Deliverability is SMTP's job; an accented address would need SMTPUTF8 from every relay and
# CRM on the way, so it is refused here with a clear 422 rather than failing later.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"^[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.-]{{1,64}}@{_LABEL}(?:\.{_LABEL})+$")

MAX_FILES = 20
# How deep an extra field of the payload may nest. Ours go three levels deep (fichiers, an
# item, its name); past this, a sender is probing the JSON encoders' recursion limits.
MAX_NESTING = 32

# --- text that reaches a header or a one-line place ---------------------------------------------
# Every character str.splitlines() breaks on, plus the other controls (Cc) and the invisible
# format characters (Cf: bidi overrides, zero-width spaces) that could forge or hide a line.
_KEEP_JOINERS = frozenset("\u200c\u200d")  # ZWNJ and ZWJ: emoji and scripts need them
_BIDI_AND_BREAKS = re.compile("\r\n?|[\n\v\f\x1c-\x1e\x85\u2028\u2029]")


def _unsafe(char: str) -> bool:
    category = unicodedata.category(char)
    return category in ("Cc", "Zl", "Zp") or (category == "Cf" and char not in _KEEP_JOINERS)


def one_line(value: str) -> str:
    """`value` on one line: line breaks and controls become spaces, invisible format
    characters go, runs of spaces become one. What a client writes in `objet` or
    `user_name` can then never start a line of its own in an e-mail or a header."""
    if value.isprintable():  # the common case, in C: no control, break or odd space
        return " ".join(value.split())
    cleaned = "".join(
        (" " if unicodedata.category(c) != "Cf" else "") if not c.isprintable() and _unsafe(c)
        else c for c in value
    )
    return " ".join(cleaned.split())


def multi_line(value: str) -> str:
    """Free text keeps its lines, all broken by "\\n" only; other controls and the invisible
    format characters (bidi overrides, zero-width spaces) go."""
    text = _BIDI_AND_BREAKS.sub("\n", value)
    if all(line.isprintable() for line in text.split("\n")):
        return text.strip()
    return "".join(
        c for c in text if c in "\n\t" or c.isprintable() or not _unsafe(c)
    ).strip()


def _not_blank(value: str) -> str:
    if not value:
        raise ValueError("must contain visible text")
    return value


def _file_reference(value: str) -> str:
    """A file given as a string: a URL, or a local path (CLI only). One line, and a URL
    must parse; whether it may be fetched is the download's business (a note, not a 422)."""
    if not value.isprintable() and any(_unsafe(c) for c in value):
        raise ValueError("must not contain line breaks or control characters")
    if "://" in value or value.lower().startswith(("http:", "https:")):
        _check_url(value)
    return value


def _check_url(value: str) -> None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme.lower() in ("http", "https") and not parts.hostname:
        raise ValueError("not a valid URL (no host)")


def _base64_text(value: str) -> str:
    """Base64 is ASCII; anything else (a lone surrogate too) could not even be stored."""
    if not value.isascii():
        raise ValueError("not base64: only ASCII characters are expected")
    return value


def _nesting_problem(data: dict[str, Any]) -> tuple[str, str] | None:
    """(field, message) for a field nested too deep or holding text that is not Unicode (a
    lone surrogate, which JSON can carry and pydantic lets through where a string has no
    constraint): either one would make the document impossible to write. Iterative, so
    depth itself cannot exhaust the stack."""
    search = _SURROGATE.search
    for key, value in data.items():
        if isinstance(key, str) and not key.isascii() and search(key):
            return key.encode("utf-8", "backslashreplace").decode(), "not a valid Unicode name"
        if isinstance(value, str):  # most fields: no walk
            if not value.isascii() and search(value):
                return key, "contains text that is not valid Unicode"
            continue
        if not isinstance(value, (dict, list)):
            continue
        stack: list[tuple[Any, tuple[Any, ...]]] = [(value, (key,))]
        while stack:
            item, path = stack.pop()
            if isinstance(item, str):
                if not item.isascii() and search(item):
                    return ".".join(map(str, path)), "contains text that is not valid Unicode"
            elif isinstance(item, (dict, list)):
                if len(path) > MAX_NESTING:
                    return key, f"nested deeper than {MAX_NESTING} levels"
                if isinstance(item, dict):
                    for child_key, child in item.items():
                        if isinstance(child_key, str) and not child_key.isascii() \
                                and search(child_key):
                            return ".".join(map(str, path)), "contains a name that is not " \
                                "valid Unicode"
                        stack.append((child, (*path, child_key)))
                else:
                    stack.extend((child, (*path, n)) for n, child in enumerate(item))
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


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

    name: Annotated[str, AfterValidator(one_line), AfterValidator(_not_blank)] = Field(
        min_length=1, max_length=255)
    url: Annotated[str, AfterValidator(_file_reference)] | None = Field(
        default=None, max_length=2048)
    content_base64: Annotated[str, AfterValidator(_base64_text)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> FileObject:
        if (self.url is None) == (self.content_base64 is None):
            raise ValueError("give exactly one of 'url' or 'content_base64'")
        return self


FileItem = Annotated[str, AfterValidator(_file_reference)] | FileObject


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


class RefusedFile(BaseModel):
    """A file the client sent that we could not receive: no quote is made while one is
    missing, and the client is told which one and asked for it again."""

    name: str
    reason: str  # French, for the client ("fichier trop volumineux (plus de 25 Mo)")


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
    description: str = Field(default="", max_length=20_000)
    user_email: str = Field(max_length=254)
    user_name: str = Field(min_length=1, max_length=200)
    fichiers: list[FileItem] = Field(default_factory=empty_list, max_length=MAX_FILES)

    @field_validator("user_email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not value.isascii():
            raise ValueError("not a valid e-mail address: accented or non-Latin characters "
                             "are not accepted")
        if not _EMAIL.match(value):
            raise ValueError("not a valid e-mail address")
        return value.lower()

    @field_validator("objet", "user_name")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return _not_blank(one_line(value))

    @field_validator("description")
    @classmethod
    def _free_text(cls, value: str) -> str:
        return multi_line(value)  # may be empty: see _description_or_files

    @model_validator(mode="after")
    def _description_or_files(self) -> Self:
        """A request needs words or files. Files with an empty description are a modelling
        request with missing information (the client is asked for the description), never a
        rejection: a client who uploads a `.stl` under a one-word title is served."""
        if not self.description and not self.fichiers:
            from pydantic_core import PydanticCustomError, ValidationError

            raise ValidationError.from_exception_data(type(self).__name__, [{
                "type": PydanticCustomError(
                    "description_or_files",
                    "must contain visible text, unless files are attached"),
                "loc": ("description",), "input": self.description,
            }])
        return self

    @model_validator(mode="before")
    @classmethod
    def _writable(cls, data: Any) -> Any:
        """An extra field nested hundreds deep, or any text holding a lone surrogate, would
        pass validation and then fail every write of the document: refuse it here, by name."""
        if isinstance(data, dict) and (problem := _nesting_problem(data)):
            from pydantic_core import PydanticCustomError, ValidationError

            field, message = problem
            raise ValidationError.from_exception_data(cls.__name__, [{
                "type": PydanticCustomError("payload_shape", message),
                "loc": (field,), "input": data.get(field),
            }])
        return data

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


def submission_id(fingerprint: str) -> str:
    """The identity of a submission, the same whatever door it came through (webhook, `run`,
    a step command): derived from the payload's fingerprint. A sender's `webhook-id` or
    `Idempotency-Key` is not part of it: the web form signs every post with a new
    webhook-id, and the same form run by hand must still be the same request. A key wins
    where it is given, as the name of a submission already stored (its retries are repeats,
    and a key back with another payload is refused, `handler_cli.server`).

    Not a secret (anyone holding the payload can compute it): public links get their
    unguessable part elsewhere.
    """
    return "req_" + fingerprint[:20]


class Document(Payload):
    """The payload plus every step's outputs (None until the step ran)."""

    request_id: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$")

    # step 1: classify
    type_final: RequestType | None = None
    confiance: float | None = Field(default=None, ge=0, le=1)
    reclassifie: bool | None = None
    classification: Classification | None = None
    # step 2: upload (and the poll, for the files a reply brings)
    fichiers_urls: list[str] | None = None
    fichiers_refuses: list[RefusedFile] = Field(default_factory=empty_list)
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
    # The revision of the stored copy this document was read from (the storage layer's
    # compare-and-set, handler_cli.storage); None when it did not come from the store.
    _revision: int | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _stable_id(self) -> Document:
        if not self.request_id:
            self.request_id = submission_id(self.payload_fingerprint())
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
