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


def test_labelled_set_accuracy_and_llm_share_meet_the_aims() -> None:
    bench = load_bench("eval_classify")

    report = bench.evaluate()

    assert report.total >= 90
    assert report.accuracy >= 0.95, "\n".join(report.errors)
    assert report.llm_share <= 0.15, "\n".join(report.unsure)


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
              " 'jinja2', 'starlette', 'uvicorn', 'huey', 'rich') if m in sys.modules)"
              " + ['tokenize'] * tokenize._compile.cache_info().currsize, file=sys.stderr))\n"
              "sys.argv = ['handler-cli', 'classify']\n"
              "from handler_cli.__main__ import main\nmain()\n")
    doc = (ROOT / "samples" / "support.json").read_text(encoding="utf-8")
    result = subprocess.run([sys.executable, "-c", script], input=doc, capture_output=True,
                            text=True, env=clean_environ(tmp_path), cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"
