"""E-mails a person is glad to read (issue 11): French typography in both parts, the first
name in greetings, subjects that say what we ask, admin e-mails in French words (no
classifier debug, statuses in words, plurals right, errors as what failed and what to do),
one e-mail per event, one thread per request and reader, and `sent_at` that never lies."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from handler_cli.context import Context
from handler_cli.document import Document, SentEmail
from handler_cli.mailing import french_typography, greeting_name
from handler_cli.pipeline import run_chain
from handler_cli.poll import poll
from handler_cli.replies import Reply
from tests import poll_kit
from tests.conftest import ROOT, RunCli, sample
from tests.peers import SMTPPeer
from tests.poll_kit import at, client_says, days, intake, relay_environ

NBSP, NNBSP = "\u00a0", "\u202f"
# What French typography forbids in our own text: an ordinary (breakable) space before a
# high punctuation mark or inside guillemets.
BAD_SPACING = re.compile(r" [:;!?]| »|« ")
AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


relay, environ = poll_kit.relay, poll_kit.environ  # the fixtures


def a_doc(**fields: Any) -> Document:
    """A request whose client-written fields carry no punctuation: what is left is ours."""
    data = {"source": "modelisation", "objet": "Vase en céramique",
            "description": "Un vase blanc de 30 cm", "user_email": "paul@example.fr",
            "user_name": "Paul Bernard", "request_id": "req_typo", "ticket_id": "1001",
            "ticket_url": "https://crm.example/1001", "type_final": "MODELISATION",
            "confiance": 0.95, "reclassifie": True,
            "classification": {"method": "keywords", "reasons": ["keywords decided MODELISATION"]},
            "credits_estimes": 2, "completeness": "incomplete", "validation_status": "pending_info",
            "missing_info": ["Les dimensions approximatives de l'objet (hauteur, largeur, profondeur)",
                             "Le fichier « dos.jpg », que nous n'avons pas pu recevoir "
                             "(fichier vide) : merci de nous le renvoyer"],
            "analysis": {"rule": "complex_mechanism", "reasons": ["complex_mechanism (x)"]},
            "fichiers_refuses": [{"name": "dos.jpg", "reason": "fichier vide"}],
            "notes": ["Fichier « dos.jpg » écarté : fichier vide."],
            "emails": {"client": {"message_id": "<req_typo.client@x>", "to": "paul@example.fr",
                                  "subject": "[Ticket #1001] Votre devis", "template": "client_quote_2",
                                  "sent_at": AT.isoformat()}}}
    data.update(fields)
    return Document.model_validate(data)


REPLY = Reply(ticket_id="1001", key="m1", source="local", sender="paul@example.fr",
              subject="Re", text="Je valide", at=AT)
EXTRA: dict[str, dict[str, Any]] = {
    "admin_question": {"question": "Et la couleur", "reply": REPLY, "files": [],
                       "ticket_url": "https://crm.example/1001", "intent": "question",
                       "ticket_status": "pending_info", "support": False,
                       "after_decision": False, "change_of_mind": None},
    "admin_refused": {"reply_text": "Non merci", "reply": REPLY, "files": [],
                      "ticket_url": "https://crm.example/1001"},
    "admin_validated": {"reply_text": "Je valide", "reply": REPLY, "files": [],
                        "subtask_ok": False, "subtask_error": "HTTP 503",
                        "ticket_url": "https://crm.example/1001"},
    "admin_stale": {"awaited": SentEmail(message_id="<a@x>", to="p", subject="s",
                                         template="t", sent_at=AT),
                    "days": 14, "replied": False, "reminder_kind": "reminder",
                    "ticket_url": "https://crm.example/1001"},
    "admin_poll_failed": {"reply": REPLY, "reply_text": "Je valide", "files": [],
                          "ticket_id": "1001", "request_id": "req_typo",
                          "ticket_url": "https://crm.example/1001"},
    "admin_forgotten_held": {"forgotten_at": "01/11/2026"},
    "client_reminder": {"awaited": SentEmail(message_id="<a@x>", to="p", subject="s",
                                             template="t", sent_at=AT), "days": 3},
}
TEMPLATES = sorted(p.name.split(".")[0] for p in (ROOT / "templates").glob("[!_]*.txt.j2"))


def render(ctx: Context, name: str, doc: Document) -> tuple[str, str, str | None]:
    from handler_cli.mailing import _rule_label

    values = {"doc": doc, "settings": ctx.settings, "now": AT, "prenom": greeting_name(doc),
              "rule_label": _rule_label, **EXTRA.get(name, {})}
    return ctx.renderer.render(name, values)


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_email_is_spaced_the_french_way_in_both_parts(ctx: Context, name: str) -> None:
    """U+00A0 before ":", U+202F (espace fine insécable) before ";", "!", "?" and inside « »."""
    subject, text, html = render(ctx, name, a_doc())
    for part in (subject, text, html or ""):
        ours = part.replace("> Je valide", "").replace("> Non merci", "")
        assert not BAD_SPACING.search(ours), (name, BAD_SPACING.search(ours))
    assert NBSP + ":" in text or NNBSP + "»" in text


def test_generated_text_gets_the_same_spacing() -> None:
    assert french_typography("Fichier « a.jpg » écarté : vide ; pourquoi ?") == (
        f"Fichier «{NNBSP}a.jpg{NNBSP}» écarté{NBSP}: vide{NNBSP}; pourquoi{NNBSP}?")


@pytest.mark.parametrize(("name", "extra", "greeted"), [
    ("Paul Bernard", {}, "Paul"),
    ("Marie-Claire Dupont Leroy", {}, "Marie-Claire"),
    ("M. Dupont", {}, "M. Dupont"),
    ("Madame Martin", {}, "Madame Martin"),
    ("SARL Durand", {}, "SARL Durand"),
    ("Jules", {}, "Jules"),
    ("Durand", {"prenom": "Sophie"}, "Sophie"),
])
def test_greetings_use_the_first_name_when_the_client_gave_one(
    ctx: Context, name: str, extra: dict[str, str], greeted: str
) -> None:
    doc = a_doc(user_name=name, **extra)
    assert greeting_name(doc) == greeted
    _, text, html = render(ctx, "client_missing_info", doc)
    assert text.startswith(f"Bonjour {greeted},") and f"<p>Bonjour {greeted},</p>" in (html or "")


def test_the_subject_says_what_we_ask(ctx: Context) -> None:
    subject, _, _ = render(ctx, "client_missing_info", a_doc())
    assert subject == "Il nous manque quelques informations pour votre demande de modélisation"


@pytest.mark.parametrize("name", [t for t in TEMPLATES if t.startswith("admin_")])
def test_admin_emails_speak_french_words_not_debug(ctx: Context, name: str) -> None:
    doc = a_doc(errors=[{"step": "contact", "error": "unexpected UnicodeEncodeError: 'ascii'",
                         "at": AT.isoformat(), "transient": False}])
    subject, text, _ = render(ctx, name, doc)
    whole = subject + "\n" + text
    for debug in ("keywords", "MODELISATION", "pending_", "validated", "rejected", "crédit(s)",
                  "estimé(s)", "UnicodeEncodeError", "unexpected", "HTTP 503",
                  "complex_mechanism", "méthode"):
        assert debug not in whole, (name, debug)


@pytest.mark.parametrize(("status", "support", "said"), [
    (None, True, "au sujet de sa demande de support «\u202fVase en céramique\u202f»"),
    ("validated", False, "alors que sa demande est au statut «\u202fdevis validé par le client"),
    (None, False, "n'a plus de statut de validation dans le CRM"),
])
def test_a_message_nobody_asked_for_is_forwarded_in_french(
    ctx: Context, status: str | None, support: bool, said: str
) -> None:
    """A support follow-up, a message on a ticket decided (by the poll or by hand), on one
    whose status was cleared by hand: each says what it is, in French words, spaced."""
    doc = a_doc(type_final="SUPPORT" if support else "MODELISATION", validation_status=None,
                credits_estimes=None)
    extra = {**EXTRA["admin_question"], "ticket_status": status, "support": support,
             "after_decision": not support, "intent": "none"}
    from handler_cli.mailing import _rule_label

    subject, text, _ = ctx.renderer.render("admin_question", {
        "doc": doc, "settings": ctx.settings, "now": AT, "prenom": greeting_name(doc),
        "rule_label": _rule_label, **extra})
    assert said in text and "https://crm.example/1001" in text
    if support:
        assert subject == "Nouveau message sur une demande de support\u00a0: Vase en céramique"
        assert "devis" not in subject + text  # a support follow-up, not a quote answer
    whole = subject + "\n" + text.replace("> Et la couleur", "")
    assert not BAD_SPACING.search(whole)
    for debug in ("None", "SUPPORT", "validated", "pending_", "pas encore analysée"):
        assert debug not in whole, debug


def test_the_reclassification_is_explained_in_a_sentence(ctx: Context) -> None:
    _, text, _ = render(ctx, "admin_summary", a_doc(validation_status="pending_credits"))
    assert ("Le client a rempli le formulaire «\u202fdemande de modélisation\u202f», mais sa "
            "demande parle plutôt de modélisation" in text)
    assert "d'après les mots employés, confiance 95 %" in text
    assert "Statut\u00a0: devis envoyé, en attente de la réponse du client, 2 crédits" in text
    assert "Chiffrage\u00a0: " in text and "complex_mechanism" not in text


def test_errors_say_what_failed_and_what_to_do(ctx: Context) -> None:
    doc = a_doc(errors=[
        {"step": "upload", "error": "r2: timeout", "at": AT.isoformat(), "transient": True},
        {"step": "analyze", "error": "missing 'fichiers_urls': run `handler-cli upload` first",
         "at": AT.isoformat(), "transient": False},
        {"step": "contact", "error": "unexpected KeyError", "at": AT.isoformat(),
         "transient": False}])
    _, text, _ = render(ctx, "admin_summary", doc)
    assert "Les fichiers n'ont pas pu être stockés\u00a0: incident passager" in text
    assert "La demande n'a pas encore été chiffrée\u00a0: elle attend l'étape précédente" in text
    assert ("Le contact n'a pas pu être créé dans le CRM\u00a0: un nouvel essai ne suffira pas"
            in text and "req_typo" in text)


def test_singular_and_plural(ctx: Context) -> None:
    _, one, _ = render(ctx, "admin_refused", a_doc(credits_estimes=1))
    _, two, _ = render(ctx, "admin_refused", a_doc(credits_estimes=2))
    assert "devis de 1 crédit " in one and "devis de 2 crédits " in two


# -- the whole loop on the relay ------------------------------------------------------------


def test_a_complex_case_makes_one_admin_email(environ: dict[str, str], relay: SMTPPeer) -> None:
    doc = Document.model_validate(sample("admin_case"))
    run_chain(doc, at(environ))
    admin = [m for m in relay.received if m.message["To"].addresses[0].addr_spec
             == at(environ).settings.admin_email]
    assert len(admin) == 1 and "Cas complexe à estimer" in str(
        admin[0].message["Subject"]).replace(NBSP, " ")


def test_every_email_after_the_first_continues_its_thread(
    environ: dict[str, str], relay: SMTPPeer
) -> None:
    doc = intake(environ)
    poll(at(environ, days(3.5)))  # the reminder
    client_says(environ, doc, "Quel délai ?", when=days(4))
    poll(at(environ, days(4)))  # a question: the admin's thread
    client_says(environ, doc, "Je valide", when=days(5))
    poll(at(environ, days(5)))  # validation: one e-mail in each thread

    def thread(to: str) -> list[Any]:
        return [m.message for m in relay.received if m.message["To"].addresses[0].addr_spec == to]

    for to in (doc.user_email, at(environ).settings.admin_email):
        messages = thread(to)
        assert len(messages) >= 3, [str(m["Subject"]) for m in messages]
        assert messages[0]["In-Reply-To"] is None
        for earlier, later in zip(messages, messages[1:], strict=False):
            refs = str(later["References"]).split()
            assert refs[0] == str(messages[0]["Message-ID"]).strip()
            assert str(earlier["Message-ID"]).strip() in refs
            # the parent: our previous e-mail, or the client's reply it answers (which
            # answered that e-mail)
            assert str(later["In-Reply-To"]).strip() == refs[-1]
            assert (refs[-1] == str(earlier["Message-ID"]).strip()
                    or "@mail.example.fr" in refs[-1])


def test_a_rerun_that_sends_nothing_does_not_look_like_a_send(
    cli: RunCli, relay: SMTPPeer, tmp_path: Path
) -> None:
    env = relay_environ(tmp_path, relay)
    first = cli("run", "samples/modelisation_simple.json", env=env)
    assert first.returncode == 0 and "2 e-mails sent" in first.stderr
    sent = json.loads(first.stdout)["emails"]

    again = cli("run", "samples/modelisation_simple.json", env=env)  # the original payload

    assert again.returncode == 0
    assert json.loads(again.stdout)["emails"] == sent  # the first send's time, kept
    assert "e-mails sent" not in again.stderr and "2 already sent before" in again.stderr
    assert len(relay.received) == 2
