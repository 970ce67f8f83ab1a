"""Step 1 on keywords: the lexicon, the confidence rule, the fallbacks and the speed."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from handler_cli.context import Context
from handler_cli.document import Document
from handler_cli.services import LLMVerdict
from handler_cli.steps.classify import (
    CONFIDENCE_THRESHOLD,
    Lexicon,
    load_lexicon,
    run,
    score_request,
)
from tests.conftest import ROOT, clean_environ


def request(source: str = "contact", objet: str = "Demande", description: str = "Bonjour",
            fichiers: list[Any] | None = None) -> Document:
    return Document.model_validate({
        "source": source, "objet": objet, "description": description,
        "user_email": "client@example.com", "user_name": "Client Test",
        "fichiers": fichiers or [],
    })


def load_bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class RaisingLLM:
    """An LLM port whose every call blows up with a non-ServiceError exception."""

    name = "broken"

    def describe(self) -> str:
        return "always raises"

    def classify_request(self, text: str) -> LLMVerdict:
        raise KeyError("content")

    def classify_reply(self, text: str) -> LLMVerdict:
        raise KeyError("content")


# -- keywords --------------------------------------------------------------------------------


def test_a_3d_model_that_does_not_display_is_support_even_from_the_modelling_form(
    ctx: Context,
) -> None:
    doc = request("modelisation", "Modèle 3D", "Le modèle 3D ne s'affiche pas dans le viewer.")

    run(doc, ctx)

    assert doc.type_final == "SUPPORT"
    assert doc.reclassifie is True
    assert doc.confiance is not None and doc.confiance >= CONFIDENCE_THRESHOLD
    assert doc.classification is not None and doc.classification.method == "keywords"
    reasons = " | ".join(doc.classification.reasons)
    assert "affiche pas" in reasons
    assert "discounted" in reasons  # the 3D words were outweighed, not ignored


def test_an_attached_3d_file_makes_a_terse_contact_request_modelling(ctx: Context) -> None:
    doc = request("contact", "Fichier", "ci-joint, merci",
                  fichiers=["https://files.example.com/x/fauteuil.fbx"])

    run(doc, ctx)

    assert doc.type_final == "MODELISATION"
    assert doc.reclassifie is True
    assert doc.classification is not None
    assert any("file .fbx" in r for r in doc.classification.reasons)


def test_a_modelling_request_from_the_modelling_form_is_not_reclassified(ctx: Context) -> None:
    doc = request("modelisation", "Modélisation d'une chaise",
                  "Je souhaite faire modéliser une chaise en chêne, hauteur 88 cm, photos jointes.")

    run(doc, ctx)

    assert (doc.type_final, doc.reclassifie) == ("MODELISATION", False)
    assert doc.classification is not None
    assert doc.classification.scores["MODELISATION"] > doc.classification.scores["SUPPORT"]


@pytest.mark.parametrize(("objet", "description", "expected"), [
    ("Refund", "I was charged twice for my subscription, please refund me.", "SUPPORT"),
    ("Login", "I can't log in to my account anymore.", "SUPPORT"),
    ("3D model", "Could you create a 3D model of our new lamp from the attached drawings?",
     "MODELISATION"),
])
def test_english_requests_are_read_too(objet: str, description: str, expected: str) -> None:
    assert score_request(objet, description).label == expected


def test_common_misspellings_still_match() -> None:
    result = score_request("pb", "paiment refusé, je veux un rembourcement")

    assert result.label == "SUPPORT"
    assert any("rembourcement" in r for r in result.reasons)


def test_creating_an_account_is_support_although_creating_is_a_modelling_word() -> None:
    result = score_request("Inscription", "Je n'arrive pas à créer mon compte")

    assert result.label == "SUPPORT"
    assert result.scores["MODELISATION"] == 0


def test_a_word_inside_a_longer_phrase_counts_once_through_the_phrase() -> None:
    # "pas de problème" is a neutral phrase: its "problème" must not count as trouble.
    result = score_request("Chaise", "Pas de problème pour les délais, modéliser la chaise.")

    assert result.scores["SUPPORT"] == 0


def test_confidence_is_the_smoothed_share_of_the_evidence() -> None:
    result = score_request("", "bug")  # one malfunction term, weight 4, nothing else

    s, m = result.scores["SUPPORT"], result.scores["MODELISATION"]
    assert (s, m) == (4.0, 0.0)
    assert result.confiance == pytest.approx((4 + 1) / (4 + 0 + 2))
    assert result.share("MODELISATION") == pytest.approx(1 - result.confiance)


def test_no_evidence_gives_no_label_and_half_confidence() -> None:
    result = score_request("Bonjour", "Merci de me recontacter.")

    assert result.label is None
    assert result.confiance == 0.5


# -- after-sales: talk about a model already ordered or delivered ------------------------------


@pytest.mark.parametrize(("objet", "description", "files"), [
    ("Correction", "Sur le buffet que vous m'avez livré, les portes sont en chêne clair au lieu "
     "du noyer commandé. Merci de corriger.", ["buffet.glb"]),
    ("Autre format", "Pourriez-vous me renvoyer le modèle de la lampe en FBX ? Je l'ai reçu en "
     "GLB.", []),
    ("Where is my model?", "Hi, any news about my 3D model? I ordered it three weeks ago.", []),
    ("Annulation", "Merci d'annuler ma commande de modélisation du fauteuil (commande 4821).", []),
    ("Crédits", "2 crédits retirés pour la modélisation du vase alors que le devis était "
     "d'un crédit.", []),
    ("modelisation", "ou en est ma modelisation commandee le 3 mars", []),
])
def test_after_sales_about_a_delivered_model_is_never_confident_new_work(
    objet: str, description: str, files: list[str]
) -> None:
    result = score_request(objet, description, files)

    assert result.label == "SUPPORT" or result.confiance < CONFIDENCE_THRESHOLD, result.reasons


def test_a_delivered_model_discounts_its_3d_words_and_files() -> None:
    result = score_request("Format", "Le modèle livré est en GLB, il me faut aussi l'OBJ",
                           ["chaise_livree.glb"])

    assert any("already ordered or delivered" in r for r in result.reasons)
    assert result.label == "SUPPORT" or not result.decided


def test_new_work_next_to_an_earlier_order_is_not_read_as_after_sales() -> None:
    result = score_request("Nouvelle pièce", "Après la chaise que vous avez modélisée, pouvez-vous "
                           "modéliser la table assortie ?")

    assert result.label == "MODELISATION"


def test_an_order_number_reads_as_a_reference_to_an_earlier_order() -> None:
    with_number = score_request("Commande #2231", "Le fichier est-il disponible ?")
    without = score_request("Commande", "Le fichier est-il disponible ?")

    assert with_number.scores["SUPPORT"] > without.scores["SUPPORT"]
    assert any("numref" in r for r in with_number.reasons)


def test_a_lone_topic_word_is_not_enough_to_decide() -> None:
    result = score_request("Modèle", "Bonjour")

    assert result.label == "MODELISATION"
    assert not result.decided
    assert any("too little evidence" in r for r in result.reasons)


def test_one_topic_word_however_heavy_does_not_decide_alone() -> None:
    result = score_request("Modélisation", "Bonjour, le client a changé d'avis, merci.")

    assert result.scores["MODELISATION"] >= 2.5 and result.scores["SUPPORT"] == 0

    assert not result.decided
    assert any("one topic word only" in r for r in result.reasons)


def test_a_mail_disclaimer_is_not_a_malfunction() -> None:
    result = score_request("Vases", "Nous voudrions modéliser 3 vases. Si vous avez reçu ce "
                           "message par erreur, merci de le détruire. Pensez à l'environnement "
                           "avant d'imprimer ce mail.")

    assert result.scores["SUPPORT"] == 0
    assert result.label == "MODELISATION" and result.decided


@pytest.mark.parametrize("typo", ["paiemnet", "piaement", "paiment", "paiemment"])
def test_a_typo_in_a_strong_word_still_counts_but_less(typo: str) -> None:
    exact = score_request("", "paiement refusé")
    typed = score_request("", f"{typo} refusé")

    assert typed.label == "SUPPORT"
    assert 0 < typed.scores["SUPPORT"] <= exact.scores["SUPPORT"]


# -- fallbacks ---------------------------------------------------------------------------------


def test_without_llm_an_unsure_request_keeps_its_form_type(ctx: Context) -> None:
    doc = request("modelisation", "Bonjour", "Merci de me recontacter.")

    run(doc, ctx)

    assert doc.type_final == "MODELISATION"
    assert doc.reclassifie is False
    assert doc.confiance == 0.5
    assert doc.classification is not None and doc.classification.method == "source"
    assert doc.classification.reasons[0] == "kept the form's type: modelisation -> MODELISATION"
    assert "no LLM configured" in doc.classification.reasons


def test_any_exception_from_the_llm_falls_back_to_the_form_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    doc = request("contact", "Bonjour", "Merci de me recontacter.")
    ctx = SimpleNamespace(llm=RaisingLLM())

    with caplog.at_level(logging.WARNING, logger="handler_cli"):
        run(doc, ctx)  # type: ignore[arg-type]

    assert doc.type_final == "SUPPORT"
    assert doc.classification is not None and doc.classification.method == "source"
    assert any("LLM failed" in r for r in doc.classification.reasons)
    assert "LLM failed" in caplog.text


def test_an_already_classified_document_is_returned_unchanged(ctx: Context) -> None:
    doc = request("contact", "bug", "ça plante")
    doc.type_final, doc.confiance, doc.reclassifie = "MODELISATION", 0.4, True

    assert run(doc, ctx) is doc
    assert (doc.type_final, doc.confiance, doc.reclassifie) == ("MODELISATION", 0.4, True)
    assert doc.classification is None


# -- the lexicon -------------------------------------------------------------------------------


def test_the_lexicon_ships_as_package_data_and_is_loaded_once() -> None:
    assert load_lexicon() is load_lexicon()
    assert (ROOT / "handler_cli" / "data" / "lexicon.json").is_file()


def test_a_lexicon_word_that_folds_into_two_words_is_refused_with_its_name() -> None:
    data = {"groups": [{"name": "g", "label": "SUPPORT", "weight": 1,
                        "terms": ["fichier|pièce_jointe manquant"]}]}

    with pytest.raises(ValueError, match="pièce_jointe"):
        Lexicon(data)


def test_a_term_listed_twice_is_refused() -> None:
    data = {"groups": [
        {"name": "a", "label": "SUPPORT", "weight": 1, "terms": ["bug"]},
        {"name": "b", "label": "MODELISATION", "weight": 1, "terms": ["bug"]},
    ]}

    with pytest.raises(ValueError, match="both a and b"):
        Lexicon(data)


# -- the labelled set and speed ----------------------------------------------------------------


def test_labelled_requests_make_no_confident_mistake_on_either_split() -> None:
    bench = load_bench("eval_classify")

    reports = bench.evaluate()

    assert reports["tune"].total >= 200 and reports["held_out"].total >= 60
    for split in ("tune", "held_out"):
        mistakes = reports[split].confident_mistakes
        assert not mistakes, "\n".join(f"{o.number}: {o.text} {o.reasons}" for o in mistakes)
    assert reports["tune"].accuracy >= bench.MIN_ACCURACY
    assert reports["tune"].llm_share <= bench.MAX_LLM_SHARE


def test_the_keyword_confidence_means_what_it_says() -> None:
    """In each confident band, the keywords are right at least as often as the band says."""
    reports = load_bench("eval_classify").evaluate()

    for (low, _), n, right in reports["all"].bands():
        if low >= CONFIDENCE_THRESHOLD and n >= 10:
            assert right / n >= low, f"band {low:.2f}: {right}/{n} right"


def test_no_accent_and_no_single_typo_makes_a_confident_mistake() -> None:
    bench = load_bench("eval_classify")

    variants = bench.perturbed()

    for name in bench.AIMED_VARIANTS:
        mistakes = variants[name]["all"].confident_mistakes
        assert not mistakes, name + ":\n" + "\n".join(f"{o.number}: {o.text}" for o in mistakes)
    base = {o.number: o.final for o in bench.evaluate()["all"].outcomes}
    assert all(o.final == base[o.number] for o in variants["without accents"]["all"].outcomes)


def test_the_step_module_does_not_import_heavy_clients(tmp_path: Path) -> None:
    script = ("import sys, handler_cli.steps.classify as c; "
              "c.score_request('Modèle 3D', 'ne s affiche pas'); "
              "print(sorted(m for m in ('httpx', 'anthropic', 'jinja2') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=clean_environ(tmp_path), cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_classify_command_loads_no_heavy_library(tmp_path: Path) -> None:
    """Speed lives in bench/bench_cli.py; this guards what start-up may import."""
    # tokenize: compiling its patterns (to read a builtin's signature) is 2 ms of start-up.
    script = ("import atexit, sys, tokenize\n"
              "atexit.register(lambda: print(sorted(m for m in ('httpx', 'anthropic', 'boto3',"
              " 'jinja2', 'starlette', 'uvicorn', 'huey', 'rich', 'importlib.metadata')"
              " if m in sys.modules)"
              " + ['tokenize'] * tokenize._compile.cache_info().currsize, file=sys.stderr))\n"
              "sys.argv = ['handler-cli', 'classify']\n"
              "from handler_cli.__main__ import main\nmain()\n")
    doc = (ROOT / "samples" / "support.json").read_text(encoding="utf-8")
    result = subprocess.run([sys.executable, "-c", script], input=doc, capture_output=True,
                            text=True, env=clean_environ(tmp_path), cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(("setting", "looked_up"), [
    (None, False), ("__all__", False), ("true", False), ("logfire", True)])
def test_pydantic_plugins_are_looked_up_only_when_some_may_be_on(
        tmp_path: Path, setting: str | None, looked_up: bool) -> None:
    """All disabled, the plugin finder (and importlib.metadata) is never imported; models still
    validate. Naming one plugin to disable leaves pydantic's own lookup in place."""
    script = ("import sys\nfrom handler_cli.__main__ import skip_plugin_lookup\n"
              "skip_plugin_lookup()\nfrom pydantic import BaseModel\n"
              "class M(BaseModel):\n    n: int\n"
              "assert M.model_validate({'n': '3'}).n == 3\n"
              "print('importlib.metadata' in sys.modules)\n")
    env = clean_environ(tmp_path)
    env.pop("PYDANTIC_DISABLE_PLUGINS", None)
    if setting is not None:
        env["PYDANTIC_DISABLE_PLUGINS"] = setting
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(looked_up)
