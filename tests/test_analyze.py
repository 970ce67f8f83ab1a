"""Step 5: completeness, the credit grid, and what the step writes to the ticket."""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from handler_cli.config import load_settings
from handler_cli.context import Context
from handler_cli.document import Document
from handler_cli.services import EmailRecord, ServiceError, TicketDraft, WaitingTicket
from handler_cli.steps import STEPS, MissingInput, apply
from handler_cli.steps.analyze import GRID_PATH, CreditGrid, assess, load_grid, run, visual_files

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "credit-grid.md"
GRID = load_grid()
MISSING = GRID.completeness.missing_info


# --- the grid: prices ------------------------------------------------------------------------


def test_simple_complete_object_costs_one_credit() -> None:
    a = assess("Vase", "Vase en céramique blanche de 30 cm de haut", ["vase.jpg"])
    assert (a.credits, a.validation_status, a.completeness) == (1, "pending_credits", "complete")
    assert a.rule == "simple_object"
    assert a.missing_info == []
    assert a.reasons and a.reasons[0].startswith("simple_object")


@pytest.mark.parametrize(
    ("rule", "objet", "description", "trigger"),
    [
        ("complex_many_parts", "Lampe", "Lampe de bureau en 6 pièces, métal noir", "6 pieces"),
        ("complex_many_parts", "Meuble", "Meuble en kit, pin clair, 120 cm", "en kit"),
        ("complex_fine_detail", "Bague", "Bague avec gravure de feuilles, taille 54", "gravure"),
        ("complex_fine_detail", "Cadre", "Cadre en bois sculpté, 40 x 60", "sculpte"),
        ("complex_mechanism", "Chaise", "Chaise pliante en hêtre, 80 cm", "pliante"),
        ("complex_mechanism", "Coffret", "Coffret à bijoux avec charnières, 20 cm", "charnieres"),
        ("complex_multi_material", "Table", "Plateau en chêne, piètement en acier, 180 x 90 cm",
         "chene + acier"),
        ("complex_multi_material", "Lampe", "Lampe de 40 cm, plusieurs matériaux",
         "plusieurs materiaux"),
        ("complex_transparent_reflective", "Flacon", "Flacon de parfum en verre, 50 ml", "verre"),
        ("complex_transparent_reflective", "Robinet", "Robinet chromé de 25 cm", "chrome"),
        ("complex_transparent_reflective", "Psyché", "Grand miroir sur pied, 1m60", "miroir"),
        ("complex_textile", "Fauteuil", "Fauteuil en velours bleu", "velours"),
        ("complex_textile", "Ours", "Ours en peluche marron de 30 cm", "peluche"),
    ],
)
def test_complex_single_object_costs_two_credits(
    rule: str, objet: str, description: str, trigger: str
) -> None:
    a = assess(objet, description, ["objet.png"])
    assert (a.credits, a.validation_status, a.completeness) == (2, "pending_credits", "complete")
    assert a.rule == rule
    assert f"« {trigger} »" in a.reasons[0] and a.reasons[0].startswith(rule)


def test_every_complexity_rule_that_applies_is_cited() -> None:
    a = assess("Fauteuil", "Fauteuil pivotant en velours, 90 cm", ["f.jpg"])
    assert a.rule == "complex_mechanism"
    cited = [r.split(" ", 1)[0] for r in a.reasons]
    assert cited == ["complex_mechanism", "complex_textile"]


def test_two_words_of_one_material_family_are_not_multi_material() -> None:
    a = assess("Tabouret", "Tabouret en bois de chêne, 45 cm", ["t.jpg"])
    assert (a.credits, a.rule) == (1, "simple_object")


# --- the grid: admin -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "description", "trigger"),
    [
        ("admin_multiple_objects", "Toute la gamme de nos flacons, 10 cm", "toute la gamme"),
        ("admin_multiple_objects", "Nous voudrions 5 produits en bois, 20 cm", "5 produits"),
        ("admin_multiple_objects", "Un lot de 3 vases en verre", "lot de 3"),
        ("admin_space", "Modéliser notre showroom de 200 m2", "showroom"),
        ("admin_space", "Rendu de la façade de notre immeuble en pierre", "immeuble"),
        ("admin_animation", "Montre en acier de 4 cm avec une petite animation", "animation"),
        ("admin_rigging", "Personnage riggé prêt pour Unity, 1m80", "rigge"),
        ("admin_scan_cleanup", "Statue en marbre, scan 3D à nettoyer", "scan 3d"),
        ("admin_scan_cleanup", "Retopologie d'un buste en bronze de 50 cm", "retopologie"),
        ("admin_urgent", "Tabouret en bois, 45 cm. Pour demain svp", "pour demain"),
        ("admin_urgent", "Tabouret en bois de 45 cm, URGENT", "urgent"),
        ("admin_urgent", "Tabouret en bois de 45 cm, livraison sous 24h", "sous 24h"),
        ("admin_urgent", "Tabouret en bois de 45 cm, ASAP", "asap"),
    ],
)
def test_cases_the_grid_cannot_price_go_to_the_admin(
    rule: str, description: str, trigger: str
) -> None:
    a = assess("Demande", description, ["photo.jpg"])
    assert (a.validation_status, a.credits, a.rule) == ("pending_admin", None, rule)
    assert f"« {trigger} »" in a.reasons[0]


def test_admin_wins_over_complexity_and_cites_both() -> None:
    a = assess("Commode", "Commode en chêne à 3 tiroirs, 80 cm, pour demain", ["c.jpg"])
    assert (a.validation_status, a.rule, a.credits) == ("pending_admin", "admin_urgent", None)
    assert any(r.startswith("complex_mechanism") for r in a.reasons)


def test_admin_wins_even_when_incomplete_and_still_lists_what_is_missing() -> None:
    a = assess("Flacons", "Toute la gamme de nos flacons", [])
    assert (a.validation_status, a.rule, a.credits) == (
        "pending_admin", "admin_multiple_objects", None)
    assert a.completeness == "incomplete"
    assert a.missing_info == [MISSING.visual, MISSING.size, MISSING.appearance]
    assert any(r.startswith("incomplete") for r in a.reasons)


# --- completeness ----------------------------------------------------------------------------


def test_request_without_any_file_asks_for_a_visual() -> None:
    a = assess("Chaise", "Chaise en bois, 90 cm", [])
    assert (a.validation_status, a.completeness, a.credits) == ("pending_info", "incomplete", None)
    assert a.rule == "incomplete"
    assert a.missing_info == ["Une ou plusieurs photos, un plan ou un fichier 3D de l'objet"]


def test_files_that_do_not_show_the_object_do_not_count() -> None:
    a = assess("Chaise", "Chaise en bois, 90 cm", ["photos.zip", "notes.txt", "README", "v.mp4"])
    assert a.missing_info == [MISSING.visual]
    assert "photos.zip" in a.reasons[0]


def test_vague_description_asks_for_the_object_its_size_and_its_look() -> None:
    a = assess("Demande de modélisation", "Bonjour, pouvez-vous modéliser ceci ? Merci d'avance",
               ["x.jpg"])
    assert a.validation_status == "pending_info"
    assert a.missing_info == [
        "Le nom ou le type de l'objet à modéliser",
        "Les dimensions approximatives de l'objet (hauteur, largeur, profondeur)",
        "Les matériaux et les couleurs de l'objet, même approximatifs",
    ]


def test_named_object_without_size_or_look_asks_for_both() -> None:
    a = assess("Chaise", "Voir photo", ["chaise.jpg"])
    assert a.missing_info == [MISSING.size, MISSING.appearance]
    assert a.reasons[1] == "une fois complète : simple_object (Objet simple et unique → 1 crédit)"


@pytest.mark.parametrize(
    "description",
    ["Chaise de 90 cm", "Chaise, hauteur 90", "Chaise 1m20", "Chaise 45x50", "Chaise rouge",
     "Chaise en chêne", "Flacon de 50 ml", "Chaise grandeur nature", "Chaise de 1,5 m"],
)
def test_a_size_or_a_material_or_a_colour_is_enough(description: str) -> None:
    a = assess("Objet", description, ["chaise.jpg"])
    assert a.completeness == "complete", a.reasons


def test_a_material_alone_does_not_name_the_object() -> None:
    a = assess("Modélisation 3D", "En bois, 30 cm", ["x.jpg"])
    assert a.missing_info == [MISSING.object]


def test_the_clients_reply_completes_the_request() -> None:
    description = "Bonjour, merci de modéliser ceci"
    first = assess("Demande", description, [])
    assert first.validation_status == "pending_info"
    reply = "Voici la photo : c'est une lampe en laiton de 40 cm"
    second = assess("Demande", f"{description}\n\n{reply}", ["lampe.jpeg"])
    assert (second.validation_status, second.credits, second.rule) == (
        "pending_credits", 1, "simple_object")


def test_our_own_missing_info_texts_never_satisfy_the_grid() -> None:
    """A reply quoting our e-mail must not complete the request by itself."""
    texts = {**MISSING.model_dump(),
             "lost_file": MISSING.lost_file.format(name="photo", reason="fichier")}
    quoted = "\n".join(f"> - {text}" for text in texts.values())
    a = assess("Demande", quoted, ["x.jpg"])
    assert a.missing_info == [MISSING.object, MISSING.size, MISSING.appearance]
    assert a.rule == "incomplete"


@pytest.mark.parametrize(
    "name",
    [f"objet.{ext}" for exts in GRID.completeness.visual_extensions.values() for ext in exts]
    + ["PHOTO.JPG", "Plan Étage.PDF", "scan.final.GLB"],
)
def test_visual_file_types_are_recognised(name: str) -> None:
    assert visual_files([name]) == [name]
    assert assess("Chaise", "Chaise en bois", [name]).completeness == "complete"


@pytest.mark.parametrize("name", ["archive.zip", "devis.docx", "notes.txt", "jpg", "video.mp4"])
def test_other_file_types_are_not_visual(name: str) -> None:
    assert visual_files([name]) == []


# --- how words are matched -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("description", "rule"),
    [
        ("Tabouret en bois, 45 cm. Ce n'est pas urgent", "simple_object"),
        ("Tabouret en bois, 45 cm, aucune urgence", "simple_object"),
        ("Boîte en bois sans charnière de 10 cm", "simple_object"),
        ("Boîte en bois de 10 cm, pas de verre mais du chrome", "complex_transparent_reflective"),
        ("Pas de souci. Urgent : tabouret en bois de 45 cm", "admin_urgent"),
        ("Boîte en bois de 10 cm avec pas mal de pièces", "complex_many_parts"),
    ],
)
def test_negated_keywords_are_ignored_within_their_clause_only(
    description: str, rule: str
) -> None:
    assert assess("Objet", description, ["o.jpg"]).rule == rule


@pytest.mark.parametrize(
    "description",
    ["Support rigide en bois, 20 cm", "Presse-agrumes en plastique jaune",
     "Verrerie ancienne en bois, 20 cm", "Je complète au fur et à mesure : bol en bois, 12 cm",
     "Vase de la collection Printemps, en grès, 25 cm", "Je joins une série de photos du bol en bois",
     "Je vous envoie une vidéo de la lampe en laiton"],
)
def test_keywords_match_whole_words_and_avoid_known_false_friends(description: str) -> None:
    a = assess("Objet", description, ["o.jpg"])
    assert (a.rule, a.credits) == ("simple_object", 1), a.reasons


# --- the grid file ---------------------------------------------------------------------------


def _grid_data() -> dict[str, object]:
    data: dict[str, object] = json.loads(GRID_PATH.read_text(encoding="utf-8"))
    return data


def test_grid_refuses_an_admin_rule_after_a_credits_rule() -> None:
    data = _grid_data()
    rules = data["rules"]
    assert isinstance(rules, list)
    rules.insert(len(rules) - 1, copy.deepcopy(rules[0]) | {"id": "late_admin"})
    with pytest.raises(ValidationError, match="admin rules must come before"):
        CreditGrid.model_validate(data)


def test_grid_refuses_keywords_repeated_once_folded() -> None:
    data = _grid_data()
    rules = data["rules"]
    assert isinstance(rules, list)
    rules[0]["keywords"] += ["Chrome", "chromé"]
    with pytest.raises(ValidationError, match="repeated once folded"):
        CreditGrid.model_validate(data)


def test_a_tuned_grid_changes_the_price() -> None:
    data = _grid_data()
    rules = data["rules"]
    assert isinstance(rules, list)
    textile = next(r for r in rules if r["id"] == "complex_textile")
    textile["keywords"].append("abat-jour")
    grid = CreditGrid.model_validate(data)
    a = assess("Lampe", "Lampe avec abat-jour, 40 cm", ["l.jpg"], grid=grid)
    assert (a.rule, a.credits) == ("complex_textile", 2)
    assert assess("Lampe", "Lampe avec abat-jour, 40 cm", ["l.jpg"]).credits == 1


def _md_list(items: list[str]) -> str:
    return ", ".join(f"`{item}`" for item in items)


def test_the_studio_doc_matches_the_grid_file_exactly() -> None:
    doc = DOC_PATH.read_text(encoding="utf-8")
    sections = re.split(r"^### ", doc, flags=re.M)
    rule_sections = {
        head.group(1): s for s in sections if (head := re.match(r"`([a-z0-9_]+)` — ", s))
    }
    assert list(rule_sections) == [r.id for r in GRID.rules]
    for rule in GRID.rules:
        section = rule_sections[rule.id]
        assert section.startswith(f"`{rule.id}` — {rule.label}\n")
        outcome = "admin" if rule.outcome == "admin" else f"{rule.credits} crédit"
        assert f"- Résultat : {outcome}" in section
        for label, items in (("Mots-clés", rule.keywords), ("Motifs", rule.patterns)):
            lines = [ln for ln in section.splitlines() if ln.startswith(f"- {label} : ")]
            assert lines == ([f"- {label} : {_md_list(items)}"] if items else []), rule.id
        if rule.distinct_materials:
            assert f"au moins {rule.distinct_materials}" in section
    c, m = GRID.completeness, GRID.matching
    expected_lines = [
        *(f"- {group} : {_md_list(words)}" for group, words in c.materials.items()),
        _md_list(c.colours),
        _md_list(c.generic_words),
        *(f"- `{pattern}`" for pattern in c.size_patterns),
        *(f"- {'3D' if fam == '3d' else fam} : {_md_list(exts)}"
          for fam, exts in c.visual_extensions.items()),
    ]
    stripped = {ln.strip() for ln in doc.splitlines()}
    for line in expected_lines:
        assert line in stripped, line
    flat = " ".join(doc.split())
    for words in (m.negations, m.negation_exceptions, m.scope_breakers):
        assert _md_list(words) in flat
    assert f"parmi les {m.negation_window} mots" in flat
    for text in c.missing_info.model_dump().values():
        assert f"« {text} »" in flat
    assert f"(règle `{c.rule}`)" in flat


# --- the step --------------------------------------------------------------------------------


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return Context(load_settings(environ={"HANDLER_DATA_DIR": str(tmp_path)}))


def _doc(ctx: Context | None, description: str, files: list[str],
         ticket_id: str | None = None) -> Document:
    """A classified modelling request; with `ctx`, its ticket is opened in the local CRM."""
    doc = Document(
        source="modelisation", objet="Chaise", description=description,
        user_email="client@example.fr", user_name="Camille Martin",
        fichiers=[f"https://files.example.fr/uploads/{name}" for name in files],
        type_final="MODELISATION", ticket_id=ticket_id,
    )
    doc.fichiers_urls = [f"file:///store/{doc.request_id}/{name}" for name in files]  # uploaded
    if ctx is not None and ticket_id is None:
        doc.ticket_id = ctx.crm.create_ticket(TicketDraft(
            request_id=doc.request_id, subject=doc.objet, content=doc.description,
            priority="MEDIUM", contact_id=None,
        ))
    return doc


def test_step_writes_string_properties_to_the_ticket_then_the_document(ctx: Context) -> None:
    doc = _doc(ctx, "Chaise pliante en hêtre, 80 cm", ["chaise.jpg"])
    assert run(doc, ctx) is doc
    assert doc.ticket_id is not None
    ticket = ctx.crm.get_ticket(doc.ticket_id)
    assert ticket["validation_status"] == "pending_credits"
    assert ticket["credits_estimes"] == "2"
    assert (doc.credits_estimes, doc.completeness, doc.validation_status) == (
        2, "complete", "pending_credits")
    assert doc.missing_info == []
    assert doc.analysis is not None and doc.analysis.rule == "complex_mechanism"
    assert "« pliante »" in doc.analysis.reasons[0]


def test_step_leaves_credits_empty_when_information_is_missing(ctx: Context) -> None:
    doc = _doc(ctx, "Voir photo", [])
    run(doc, ctx)
    assert doc.ticket_id is not None
    ticket = ctx.crm.get_ticket(doc.ticket_id)
    assert (ticket["validation_status"], ticket["credits_estimes"]) == ("pending_info", "")
    assert doc.credits_estimes is None
    assert doc.missing_info == [MISSING.visual, MISSING.size, MISSING.appearance]
    saved = json.loads(doc.to_json())
    assert saved["validation_status"] == "pending_info" and "credits_estimes" not in saved


def test_step_sends_admin_cases_to_pending_admin(ctx: Context) -> None:
    doc = _doc(ctx, "Chaise en chêne, 90 cm, il nous la faut pour demain", ["c.jpg"])
    run(doc, ctx)
    assert doc.ticket_id is not None
    ticket = ctx.crm.get_ticket(doc.ticket_id)
    assert (ticket["validation_status"], ticket["credits_estimes"]) == ("pending_admin", "")
    assert doc.analysis is not None and doc.analysis.rule == "admin_urgent"


def test_rerun_changes_nothing_once_a_status_is_set(ctx: Context) -> None:
    doc = _doc(ctx, "Chaise en chêne, 90 cm", ["c.jpg"])
    run(doc, ctx)
    assert doc.ticket_id is not None
    ctx.crm.update_ticket(doc.ticket_id, {"validation_status": "validated"})
    doc.description = "Chaise en chêne, 90 cm, pour demain"
    before = doc.model_dump()
    run(doc, ctx)
    assert doc.model_dump() == before
    assert ctx.crm.get_ticket(doc.ticket_id)["validation_status"] == "validated"


class UnavailableCRM:
    """A CRM that is down: every call fails the way the HubSpot backend reports a 503."""

    name = "unavailable"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _down(self, call: str) -> ServiceError:
        self.calls.append(call)
        return ServiceError("crm", "HTTP 503 Service Unavailable", transient=True)

    def describe(self) -> str:
        return "a CRM that answers 503"

    def find_or_create_contact(self, email: str, firstname: str, lastname: str) -> str:
        raise self._down("find_or_create_contact")

    def create_ticket(self, draft: TicketDraft) -> str:
        raise self._down("create_ticket")

    def find_ticket(self, request_id: str) -> str | None:
        raise self._down("find_ticket")

    def update_ticket(self, ticket_id: str, properties: dict[str, str]) -> None:
        raise self._down("update_ticket")

    def get_ticket(self, ticket_id: str) -> dict[str, str]:
        raise self._down("get_ticket")

    def ticket_url(self, ticket_id: str) -> str:
        raise self._down("ticket_url")

    def add_note(self, ticket_id: str, body: str) -> None:
        raise self._down("add_note")

    def log_email(self, ticket_id: str, email: EmailRecord) -> None:
        raise self._down("log_email")

    def waiting_tickets(self, statuses: tuple[str, ...]) -> list[WaitingTicket]:
        raise self._down("waiting_tickets")

    def incoming_emails(
        self, ticket_ids: list[str], skip: set[str]
    ) -> dict[str, list[EmailRecord]]:
        raise self._down("incoming_emails")


def test_crm_failure_leaves_the_document_unassessed_so_a_rerun_retries(
    tmp_path: Path, ctx: Context
) -> None:
    doc = _doc(ctx, "Chaise en chêne, 90 cm", ["c.jpg"])
    down = Context(load_settings(environ={"HANDLER_DATA_DIR": str(tmp_path)}),
                   now=lambda: datetime(2025, 1, 2, 9, 30))
    crm = UnavailableCRM()
    down.__dict__["crm"] = crm

    with pytest.raises(ServiceError, match="503"):
        run(doc, down)
    assert crm.calls == ["update_ticket"]
    assert (doc.validation_status, doc.credits_estimes, doc.completeness, doc.missing_info,
            doc.analysis) == (None, None, None, None, None)

    assert apply(STEPS["analyze"], doc, down) is False
    assert [(e.step, "503" in e.error) for e in doc.errors] == [("analyze", True)]

    assert apply(STEPS["analyze"], doc, ctx) is True
    assert doc.errors == [] and doc.validation_status == "pending_credits"
    assert doc.ticket_id is not None
    assert ctx.crm.get_ticket(doc.ticket_id)["credits_estimes"] == "1"


def test_support_requests_are_left_alone(ctx: Context) -> None:
    doc = _doc(ctx, "Mon paiement a échoué", [])
    doc.type_final = "SUPPORT"
    before = doc.model_dump()
    run(doc, ctx)
    assert doc.model_dump() == before
    assert doc.ticket_id is not None
    assert "validation_status" not in ctx.crm.get_ticket(doc.ticket_id)


def test_missing_ticket_id_names_the_ticket_step(ctx: Context) -> None:
    doc = _doc(None, "Chaise en chêne, 90 cm", ["c.jpg"])
    with pytest.raises(MissingInput, match="handler-cli ticket") as exc:
        run(doc, ctx)
    assert exc.value.field == "ticket_id"
    assert doc.validation_status is None


def test_missing_type_final_names_the_classify_step(ctx: Context) -> None:
    doc = _doc(None, "Chaise en chêne, 90 cm", ["c.jpg"], ticket_id="1001")
    doc.type_final = None
    with pytest.raises(MissingInput) as exc:
        run(doc, ctx)
    assert exc.value.field == "type_final"
