"""What a client's reply calls for: the poll's rules as one pure function, `decide()`.

`decide(doc, reply, text, reading)` looks only at where the ticket stands, the reply and how
its words were read; it sends nothing and writes nothing, so docs/poll.md's table ("What it
does with a reply") is tested row by row against it (`tests/test_poll_decide.py`). The one
outside read, the reply's intent (keywords, maybe the LLM), is done before, by the runner.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from handler_cli.text import fold

if TYPE_CHECKING:
    from handler_cli.document import Document, RefusedFile
    from handler_cli.replies import Reply
    from handler_cli.steps.analyze import Assessment

# Asked the client: their word moves the ticket, reminders apply. On any other ticket (the
# admin's to price, decided by the poll or by hand, a support request) their word moves
# nothing: a person reads whatever they write (HANDLER_WATCH_DECIDED_DAYS bounds how long).
AWAITING_CLIENT = ("pending_credits", "pending_info")
WAITING_STATUSES = (*AWAITING_CLIENT, "pending_admin")  # read from the CRM at every pass
DECIDED_STATUSES = ("validated", "rejected")
# Every status a document may hold (document.ValidationStatus); a CRM value outside it (a
# status cleared or made up by hand) is no status at all for the poll.
STATUSES = (*WAITING_STATUSES, *DECIDED_STATUSES)
COMPLEMENT_HEADER = "--- Complément du client"


UNCLEAR = "unclear"  # the reader could not tell, and no LLM settled it: a person reads it


@dataclass(frozen=True)
class Reading:
    """What a reply was read as (kept in the journal, so a resumed action needs no re-read)."""

    intent: str
    confiance: float
    method: str


@dataclass
class Plan:
    """What a reply calls for, decided before anything is done (dry-run stops here)."""

    action: str  # validated | rejected | question | info | forwarded | ignored
    reading: Reading
    text: str  # the reply without quoted history and signature
    assessment: Assessment | None = None
    forward: bool = False  # the admin gets the client's words
    # Where the ticket stood when this was decided (the CRM's word; None: no status, as a
    # support request): what the admin's e-mail says. Not always the stored document's: a
    # ticket decided by hand in the CRM keeps the status this installation recorded there
    # (`Poller._answer`).
    status: str | None = None

    def describe(self, reply: Reply) -> dict[str, Any]:
        data: dict[str, Any] = {
            "reply": reply.key, "source": reply.source, "at": reply.at.isoformat(),
            "intent": self.reading.intent, "confiance": round(self.reading.confiance, 3),
            "method": self.reading.method, "action": self.action,
        }
        if self.assessment is not None:
            data["assessment"] = {
                "validation_status": self.assessment.validation_status,
                "credits_estimes": self.assessment.credits,
                "missing_info": list(self.assessment.missing_info),
            }
        if reply.files:
            data["files"] = [f.name for f in reply.files]
        return data


def decide(doc: Document, reply: Reply, text: str, reading: Reading) -> Plan:
    """What `reply` (its words `text`, read as `reading`) calls for, given where `doc` stands.

    Every client message ends in a decision or in front of a person: only an auto-reply, an
    empty message, or a confident "nothing to answer" while we still wait for the client is
    left alone.
    """
    kind = reading.intent
    status = doc.validation_status

    def plan(action: str, *, forward: bool = False,
             assessment: Assessment | None = None) -> Plan:
        return Plan(action, reading, text, assessment=assessment, forward=forward,
                    status=status)

    if reply.automatic:  # an out-of-office says nothing about the quote, whatever its words
        return plan("ignored")
    if status not in AWAITING_CLIENT:
        # Not asked about (a support request, the admin's to price, decided by the poll or
        # by hand): the admin decides, nothing moves on its own; a change of mind is flagged
        # in the forward (actions.py).
        action = "forwarded" if (text or reply.files) else "ignored"
        return plan(action, forward=action == "forwarded")
    unclear = kind == UNCLEAR
    if kind == "refus":
        return plan("rejected")
    if status == "pending_info":
        assessment = reassess(doc, text, reply)
        if assessment is not None:
            return plan("info", assessment=assessment, forward=kind == "question")
        if kind == "question":
            return plan("question", forward=True)
        # "Je valide" with no quote sent yet, files the grid cannot use, a reply we cannot
        # read with confidence: a person reads it.
        forward = kind == "validation" or unclear or bool(reply.files)
        return plan("forwarded" if forward else "ignored", forward=forward)
    if kind == "validation":
        return plan("validated")
    if kind == "question":
        return plan("question", forward=True)
    if unclear or reply.files:
        return plan("forwarded", forward=True)
    return plan("ignored")


def still_refused(doc: Document, reply: Reply) -> list[RefusedFile]:
    """The files we still wait for once this reply is read: a reply that brings a file we
    could keep is the client's answer to our "please send it again"; the reply's own files
    we could not keep are asked for in turn."""
    from handler_cli.document import RefusedFile

    waiting = [] if any(f.received for f in reply.files) else list(doc.fichiers_refuses)
    return waiting + [RefusedFile(name=f.name, reason=f.refused)
                      for f in reply.files if f.refused]


def assess_with(doc: Document, text: str, reply: Reply) -> Assessment:
    """The credit grid on the request with this reply's words and received files added."""
    from handler_cli.steps.analyze import assess, stored_file_names

    names = stored_file_names(doc) + [f.name for f in reply.files if f.received]
    return assess(doc.objet, complemented(doc.description, text, reply.at), names,
                  refused=still_refused(doc, reply))


def reassess(doc: Document, text: str, reply: Reply) -> Assessment | None:
    """The grid again on the request plus this reply; None when the reply adds nothing."""
    from handler_cli.steps.analyze import assess, stored_file_names

    result = assess_with(doc, text, reply)
    # Files we kept count; files we could not keep are answered too (asked for again).
    if any(f.received or f.refused for f in reply.files) or \
            result.validation_status != "pending_info":
        return result
    before = assess(doc.objet, doc.description, stored_file_names(doc),
                    refused=doc.fichiers_refuses).lacking
    after = result.lacking
    # Any reply has words, so "the object is named" alone proves little ("je regarde ça
    # demain"): it counts only when the object's name was all that was missing. Words that
    # fill an empty description count when they give a size, a material or a colour.
    if before == {"object"}:
        return result if not after else None
    return result if after - {"object"} < before - {"object", "description"} else None


def change_of_mind(status: str | None, reading: Reading) -> str | None:
    """How a message on a decided ticket goes back on the decision, if it does: after a
    refusal, an approval; after a validation, a refusal. The admin decides what follows."""
    if status == "rejected" and reading.intent == "validation":
        return "accepts_after_refusal"
    if status == "validated" and reading.intent == "refus":
        return "cancels_after_validation"
    return None


def simulate(doc: Document, plan: Plan) -> None:
    """Dry-run: move the in-memory status only, so later replies are planned in context."""
    if plan.action in DECIDED_STATUSES:
        doc.validation_status = plan.action  # type: ignore[assignment]
    elif plan.action == "info" and plan.assessment is not None:
        doc.validation_status = plan.assessment.validation_status


def question_kind(text: str) -> str:
    """The same question (however it is spaced or accented) is forwarded once."""
    return "admin_question_" + hashlib.sha256(fold(text).encode()).hexdigest()[:12]


def complemented(description: str, text: str, at: datetime) -> str:
    """The request's description with the client's complement appended (once)."""
    text = text.strip()
    if not text or text in description:
        return description
    added = f"{COMPLEMENT_HEADER} ({at:%d/%m/%Y}) ---\n{text}"
    return (f"{description}\n\n{added}" if description else added)[:20_000]
