"""Poison pills and forged lines: what a client writes on one line stays on one line.

Issue 10: U+2028 in `objet` made the admin e-mail impossible to build (retried for 6 hours),
and newlines in `user_name` wrote a fake "Statut : validated" and fake file links into the
admin summary. The payload model normalises every one-line field at the edge; the e-mail
layer holds on its own too (headers, and every `{{ value }}` of every template).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from handler_cli.context import Context
from handler_cli.document import Document, FileObject, SentEmail, StepError, multi_line, one_line
from handler_cli.mailing import SOURCE_TEMPLATES, build_message, header_safe
from handler_cli.replies import Reply
from tests.conftest import classified, sample

# Every line break of str.splitlines(), other controls, and invisible format characters.
BREAKS = ["\r", "\n", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
HIDDEN = ["\x00", "\x1b", "\x7f", "\u202e", "\u200b", "\u2066", "\ufeff"]
FORGED_STATUS = "Statut : validated"
FORGED_LINK = "- https://evil.example/x.glb"


def hostile(brk: str) -> str:
    return f"Claire{brk}{FORGED_STATUS}{brk}{FORGED_LINK}"


@pytest.mark.parametrize("brk", BREAKS + HIDDEN)
def test_one_line_fields_are_normalised_in_the_payload(brk: str) -> None:
    doc = Document.model_validate({
        **sample("modelisation_simple"), "objet": hostile(brk), "user_name": hostile(brk),
        "fichiers": [{"name": f"photo{brk}1.jpg", "content_base64": "AAAA"}],
    })
    name = doc.fichiers[0]
    assert isinstance(name, FileObject)
    for value in (doc.objet, doc.user_name, name.name):
        assert value.isprintable(), repr(value)
        assert len(value.splitlines()) == 1
    assert "Statut : validated" in doc.objet  # kept as text, on the same line


def test_description_keeps_its_lines_broken_by_newlines_only() -> None:
    text = "Bonjour\r\nune chaise\u2028en chêne\x85fin\u202eexe.gnp\x00"
    doc = Document.model_validate({**sample("support"), "description": text})
    assert doc.description == "Bonjour\nune chaise\nen chêne\nfinexe.gnp"
    assert multi_line("a\u200db") == "a\u200db"  # the emoji joiner stays


@pytest.mark.parametrize("field", ["objet", "user_name", "description"])
def test_a_field_of_nothing_but_invisible_characters_is_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Document.model_validate({**sample("support"), field: "\u2028\u200b\x00"})


def test_one_line_keeps_ordinary_text_and_collapses_spaces() -> None:
    assert one_line("Chaise  «\u00a0Louis XV\u00a0»") == "Chaise « Louis XV »"
    assert one_line("👩\u200d🎨 Zoé") == "👩\u200d🎨 Zoé"


@pytest.mark.parametrize("brk", BREAKS + HIDDEN)
def test_header_safe_leaves_one_line_whatever_the_break(brk: str) -> None:
    value = header_safe(hostile(brk))
    assert value.isprintable() and len(value.splitlines()) == 1


# --- every template, rendered with hostile values that bypass the model ---------------------------


def _templates() -> list[str]:
    return sorted(p.name.removesuffix(".txt.j2") for p in SOURCE_TEMPLATES.glob("*.txt.j2")
                  if not p.name.startswith("_"))


def _variables(ctx: Context, name: str) -> set[str]:
    """The variables a template and the templates it includes read."""
    from jinja2 import TemplateNotFound, meta

    env = ctx.renderer.env
    try:
        source = env.loader.get_source(env, name)[0]  # type: ignore[union-attr]
    except TemplateNotFound:
        return set()
    tree = env.parse(source)
    found = set(meta.find_undeclared_variables(tree))
    for included in meta.find_referenced_templates(tree):
        if included:
            found |= _variables(ctx, included)
    return found


def _forged(text: str) -> list[str]:
    """Lines a reader would take for ours: a status or a file link the client wrote."""
    return [line for line in text.splitlines()
            if line.strip().startswith((FORGED_STATUS, FORGED_LINK))]


@pytest.mark.parametrize("brk", ["\n", "\r\n", "\u2028", "\x85", "\v", "\x1e"])
@pytest.mark.parametrize("template", _templates())
def test_no_template_lets_a_value_write_a_line_of_its_own(
    ctx: Context, template: str, brk: str
) -> None:
    doc = classified("modelisation_simple", ticket_id="1001", ticket_url="https://crm/1001",
                     validation_status="pending_credits", credits_estimes=1,
                     missing_info=["les dimensions"])
    # Assigned after validation: what the e-mail layer must hold against on its own.
    doc.user_name = doc.objet = hostile(brk)
    doc.description = f"Bonjour{brk}{FORGED_STATUS}{brk}{FORGED_LINK}"
    doc.notes = [f"Fichier « {hostile(brk)} » écarté : type non accepté."]
    doc.errors = [StepError(step="upload", error=hostile(brk), at=ctx.now())]
    now = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    awaited = SentEmail(message_id="<m@x>", to=doc.user_email, subject=hostile(brk),
                        template="client_quote_1", sent_at=now)
    reply = Reply(ticket_id="1001", key="k", source="imap", sender=hostile(brk),
                  subject=hostile(brk), text=hostile(brk), at=now)
    extra = {"reply": reply, "reply_text": hostile(brk), "question": hostile(brk),
             "files": [hostile(brk)], "ticket_url": "https://crm/1001", "is_question": True,
             "after_decision": False, "subtask_ok": False, "subtask_error": hostile(brk),
             "awaited": awaited, "days": 15, "replied": False, "reminder_kind": "reminder"}

    # A template added later gets a hostile value for every variable it reads.
    for name in _variables(ctx, f"{template}.txt.j2") | _variables(ctx, f"{template}.html.j2"):
        if name not in extra and name not in ("doc", "settings", "now"):
            extra[name] = hostile(brk)

    msg, text = build_message(ctx, doc, "k", template, doc.user_email, extra)

    raw = bytes(msg)  # the message can always be built and serialised
    assert b"Bcc" not in raw
    assert _forged(text) == []
    html = msg.get_body(("html",))
    if html is not None:
        assert _forged(html.get_content()) == []
    for name in ("Subject", "To"):
        assert len(str(msg[name]).splitlines()) == 1


def test_client_text_is_quoted_in_the_admin_summary(ctx: Context) -> None:
    doc = classified("support", ticket_id="7", description=f"Bonjour\n{FORGED_STATUS}")
    _, text = build_message(ctx, doc, "admin", "admin_summary", ctx.settings.admin_email)
    assert f"> {FORGED_STATUS}" in text.splitlines()


# --- the same through the real chain -------------------------------------------------------------


def test_a_poison_pill_in_objet_still_gets_its_admin_email(cli: object, tmp_path: Path) -> None:
    request = {**sample("support"), "objet": "Paiement\u2028refusé\u0085encore\u2029!",
               "user_name": f"Claire\n{FORGED_STATUS}"}
    result = cli("run", input=json.dumps(request))  # type: ignore[operator]
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc["emails"]) >= {"client", "admin"}
    assert doc["objet"] == "Paiement refusé encore !"
    assert doc["user_name"] == f"Claire {FORGED_STATUS}"
