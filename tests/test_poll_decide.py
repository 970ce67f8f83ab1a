"""`decide()` against docs/poll.md's table "What it does with a reply", row by row.

`ROWS` holds one entry per row of that table (its first two columns, word for word) with the
cases that row covers; a test reads the table back from the doc, so a row added, removed or
reworded on either side fails here until both say the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from handler_cli.document import Document
from handler_cli.poll.decide import Reading, change_of_mind, decide
from handler_cli.replies import Reply, ReplyFile
from tests.conftest import ROOT, sample

AT = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
PHOTO = ReplyFile(name="vase.jpg", url="file:///x/vase.jpg")
LEFT_IN_CRM = ReplyFile(name="hubspot-fichier-42")  # an attachment HubSpot keeps: not ours


@dataclass(frozen=True)
class Case:
    status: str | None  # None: no status (a support request, one cleared by hand in the CRM)
    intent: str
    text: str
    action: str
    forward: bool = False
    files: tuple[ReplyFile, ...] = ()
    sample: str = "modelisation_simple"
    automatic: bool = False
    fields: tuple[tuple[str, Any], ...] = ()


QUOTED = "modelisation_simple"
INCOMPLETE = "incomplete"  # no photo, no size, no look
SUPPORT = "support"

ROWS: list[tuple[tuple[str, str], list[Case]]] = [
    (("pending_credits", 'validation ("Je valide", "OK", "Parfait, on y va")'), [
        Case("pending_credits", "validation", "Je valide", "validated"),
        Case("pending_credits", "validation", "Parfait, on y va", "validated"),
    ]),
    (("pending_credits, pending_info",
      'refus ("Non merci", "Trop cher", "je ne valide pas", "J\'annule")'), [
        Case("pending_credits", "refus", "Non merci", "rejected"),
        Case("pending_info", "refus", "J'annule", "rejected", sample=INCOMPLETE),
    ]),
    (("pending_credits, pending_info",
      'question ("OK mais quel délai ?", "Pourquoi 2 crédits ?")'), [
        Case("pending_credits", "question", "OK mais quel délai ?", "question", forward=True),
        Case("pending_info", "question", "C'est pour quand ?", "question", forward=True,
             sample=INCOMPLETE),
    ]),
    (("pending_info", "brings what was missing (text and/or attachments), however it reads"), [
        Case("pending_info", "none", "C'est un vase en céramique blanche de 30 cm.", "info",
             files=(PHOTO,), sample=INCOMPLETE),
        Case("pending_info", "unclear", "Voici la photo.", "info", files=(PHOTO,),
             sample=INCOMPLETE),
        Case("pending_info", "unclear", "Un vase en céramique blanche, 30 cm", "info",
             sample=INCOMPLETE),
        Case("pending_info", "question", "Un vase bleu de 20 cm, c'est possible ?", "info",
             forward=True, files=(PHOTO,), sample=INCOMPLETE),
    ]),
    (("pending_info", '"Je valide" before any quote, or files the grid cannot use'), [
        Case("pending_info", "validation", "Je valide", "forwarded", forward=True,
             sample=INCOMPLETE),
        Case("pending_info", "none", "", "forwarded", forward=True, sample=INCOMPLETE,
             files=(LEFT_IN_CRM,)),
    ]),
    (("pending_credits, pending_info", 'unclear ("Bof, on verra", when no LLM settles it)'), [
        Case("pending_credits", "unclear", "Bof, on verra", "forwarded", forward=True),
        Case("pending_info", "unclear", "Je regarde ça demain", "forwarded", forward=True,
             sample=INCOMPLETE),
    ]),
    (("pending_credits, pending_info", "none (thanks, out-of-office)"), [
        Case("pending_credits", "none", "Merci beaucoup !", "ignored"),
        Case("pending_info", "none", "Merci", "ignored", sample=INCOMPLETE),
        Case("pending_credits", "validation", "Je valide (absent jusqu'au 3)", "ignored",
             automatic=True),
    ]),
    (("validated, rejected, pending_admin (by the poll or by hand, or decided earlier in the "
      "same run)", "anything but an auto-reply or an empty message"), [
        Case("validated", "question", "Et pour la couleur ?", "forwarded", forward=True),
        Case("rejected", "validation", "Finalement je valide", "forwarded", forward=True),
        Case("validated", "none", "Merci", "forwarded", forward=True),
        Case("pending_admin", "unclear", "Alors, ça avance ?", "forwarded", forward=True),
        Case("validated", "none", "", "ignored"),
        Case("rejected", "validation", "Je valide", "ignored", automatic=True),
    ]),
    (("a support request", "anything but an auto-reply or an empty message"), [
        Case(None, "unclear", "Voici la capture d'écran, le bug revient", "forwarded",
             forward=True, sample=SUPPORT, fields=(("type_final", "SUPPORT"),)),
        Case(None, "refus", "Non, ça ne marche toujours pas", "forwarded", forward=True,
             sample=SUPPORT, fields=(("type_final", "SUPPORT"),)),
        Case(None, "validation", "OK merci", "forwarded", forward=True, sample=SUPPORT,
             fields=(("type_final", "SUPPORT"),)),
        Case(None, "none", "", "forwarded", forward=True, files=(PHOTO,), sample=SUPPORT,
             fields=(("type_final", "SUPPORT"),)),
        Case(None, "none", "", "ignored", sample=SUPPORT, fields=(("type_final", "SUPPORT"),)),
        Case(None, "question", "Une question ?", "ignored", automatic=True, sample=SUPPORT,
             fields=(("type_final", "SUPPORT"),)),
    ]),
    (("no status, or an unknown one (set by hand in the CRM)",
      "anything but an auto-reply or an empty message"), [
        Case(None, "validation", "Je valide", "forwarded", forward=True),
        Case(None, "refus", "Non merci", "forwarded", forward=True),
        Case(None, "none", "", "ignored"),
    ]),
]


def doc_table() -> list[tuple[str, str]]:
    """The first two columns of docs/poll.md's "What it does with a reply" table."""
    text = (ROOT / "docs" / "poll.md").read_text(encoding="utf-8")
    section = text.split("## What it does with a reply", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [tuple(c.strip() for c in row.strip("|").split("|")[:2]) for row in rows]  # type: ignore[misc]


def test_the_table_here_is_the_table_in_the_docs() -> None:
    assert [key for key, _ in ROWS] == doc_table()


def _ids() -> list[str]:
    return [f"{key[0]}|{case.intent}|{case.text}" for key, cases in ROWS for case in cases]


@pytest.mark.parametrize("case", [c for _, cases in ROWS for c in cases], ids=_ids())
def test_decide_follows_the_table(case: Case) -> None:
    data = {**sample(case.sample), "validation_status": case.status, **dict(case.fields)}
    doc = Document.model_validate(data)
    if case.sample == INCOMPLETE:
        doc.missing_info = ["Une ou plusieurs photos, un plan ou un fichier 3D de l'objet",
                            "Les dimensions approximatives de l'objet (hauteur, largeur, "
                            "profondeur)",
                            "Les matériaux et les couleurs de l'objet, même approximatifs"]
    reply = Reply(ticket_id="1001", key="m1", source="local", sender=doc.user_email,
                  subject="Re: devis", text=case.text, at=AT, files=case.files,
                  automatic=case.automatic)
    plan = decide(doc, reply, case.text, Reading(case.intent, 0.9, "keywords"))
    assert (plan.action, plan.forward) == (case.action, case.forward)
    if case.action == "info":
        assert plan.assessment is not None


def test_information_that_adds_nothing_is_not_a_new_analysis() -> None:
    """"Je regarde demain" names no object and brings no file: nothing to re-assess."""
    doc = Document.model_validate({**sample(INCOMPLETE), "validation_status": "pending_info",
                                   "missing_info": ["Une ou plusieurs photos, un plan ou un "
                                                    "fichier 3D de l'objet"]})
    reply = Reply(ticket_id="1", key="m2", source="local", sender="", subject="", text="",
                  at=AT)
    plan = decide(doc, reply, "je regarde demain", Reading("none", 0.9, "keywords"))
    assert plan.action == "ignored" and plan.assessment is None



def test_a_change_of_mind_is_named() -> None:
    assert change_of_mind("rejected", Reading("validation", 0.9, "keywords")) == \
        "accepts_after_refusal"
    assert change_of_mind("validated", Reading("refus", 0.9, "keywords")) == \
        "cancels_after_validation"
    assert change_of_mind("validated", Reading("question", 0.9, "keywords")) is None
    assert change_of_mind("rejected", Reading("unclear", 0.4, "fallback")) is None
