"""Step 1 (classify) on the labelled requests, keywords only (no LLM at all), by split.

    python bench/eval_classify.py [--data tests/data/classify_eval.jsonl]
                                  [--errors] [--unsure] [--split tune|held_out|all]

Each line of the set is a full request payload plus "expected" (SUPPORT or MODELISATION)
and "split" (tune or held_out, see bench/_eval.py). The step runs as in production with no
LLM configured: confident keywords (confiance >= 0.70) decide; below, the LLM would be asked
and, with none, the form's type stands. Printed per split: accuracy, how often the keywords
decide and how often they are right when they do, the LLM share, the confident mistakes
(a wrong label at a confidence that never reaches the LLM), accuracy per confidence band,
and the same set read again: without accents, with one typo in each word in turn (one
reading per word of 5+ letters), and with typos in one word of three (a stress test).

Aims (exit code 1 when one is missed): no confident mistake on any split, also without
accents or with one typo; on the tune split accuracy >= 95 % and LLM share <= 15 %.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "tests" / "data" / "classify_eval.jsonl"
MIN_ACCURACY = 0.95  # on the tune split
MAX_LLM_SHARE = 0.15  # on the tune split
LABELS = ("SUPPORT", "MODELISATION")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval import (  # noqa: E402  (run as a script or loaded by path)
    AIMED_VARIANTS,
    Outcome,
    SplitReport,
    arguments,
    by_split,
    missed_aims,
    one_typo_each,
    print_figures,
    print_outcomes,
    print_variant_mistakes,
    read_rows,
    shown,
    verdict,
    with_typos,
    without_accents,
)

__all__ = ["AIMED_VARIANTS", "aims_met", "evaluate", "perturbed"]  # AIMED_VARIANTS: the tests

Variants = Callable[[dict[str, Any], int], list[dict[str, Any]]]


def evaluate(path: Path = DEFAULT_DATA, variants: Variants | None = None) -> dict[str, SplitReport]:
    """Classify every request of the set with no LLM; one report per split, and "all".

    `variants(row, line_number)` gives the rows to read instead of each row (accents
    removed, typos); each is one outcome.
    """
    sys.path.insert(0, str(ROOT))
    from handler_cli.config import load_settings
    from handler_cli.context import Context
    from handler_cli.document import Document
    from handler_cli.steps.classify import run, score

    data_dir = Path(tempfile.mkdtemp(prefix="handler-eval-"))
    settings = load_settings(environ={}, env_file=Path(os.devnull), handler_data_dir=data_dir)
    ctx = Context(settings)
    outcomes = []
    for number, row in read_rows(path):
        expected, split = row.pop("expected"), row.pop("split")
        row.pop("batch", None)
        for variant in (variants(row, number) if variants else [row]):
            doc = Document.model_validate(variant)
            keywords = score(doc)
            run(doc, ctx)
            outcomes.append(Outcome(
                number=number, split=split, expected=expected,
                keyword_label=keywords.label or "?", confiance=keywords.confiance,
                decided=keywords.decided, final=doc.type_final or "?",
                text=f"[{doc.source}] {doc.objet!r}: {doc.description[:70]!r}",
                reasons=doc.classification.reasons if doc.classification else []))
    return by_split(outcomes)


def _rewritten(rewrite: Callable[[str, int], str]) -> Variants:
    def one(row: dict[str, Any], number: int) -> list[dict[str, Any]]:
        return [{**row, "objet": rewrite(row["objet"], number) or row["objet"],
                 "description": rewrite(row["description"], number) or row["description"]}]
    return one


def _one_typo_each(row: dict[str, Any], number: int) -> list[dict[str, Any]]:
    return ([{**row, "objet": text} for text in one_typo_each(row["objet"], number)]
            + [{**row, "description": text}
               for text in one_typo_each(row["description"], number + 100_000)])


def perturbed(path: Path = DEFAULT_DATA) -> dict[str, dict[str, SplitReport]]:
    """The set read again: without accents; with one typo, in each word in turn (aims);
    with a typo in one word of three (a stress test, reported only)."""
    return {
        "without accents": evaluate(path, _rewritten(lambda text, _: without_accents(text))),
        "one typo": evaluate(path, _one_typo_each),
        "many typos": evaluate(path, _rewritten(with_typos)),
    }


def aims_met(reports: dict[str, SplitReport],
             variants: dict[str, dict[str, SplitReport]]) -> list[str]:
    """The aims missed (empty when all are met)."""
    missed = missed_aims(reports, variants, MIN_ACCURACY)
    tune = reports["tune"]
    if tune.llm_share > MAX_LLM_SHARE:
        missed.append(f"tune LLM share {tune.llm_share:.1%} > {MAX_LLM_SHARE:.0%}")
    return missed


def main() -> int:
    args = arguments(__doc__, DEFAULT_DATA, "what would go to the LLM")
    reports = evaluate(args.data)
    variants = perturbed(args.data)
    print_figures(f"labelled requests: {shown(args.data)}  (keywords only; with no LLM, an "
                  "unsure request keeps its form's type)", reports, variants, default="form",
                  bands="how often the keyword label is right, by its confidence "
                        "(below 0.70: the LLM decides):", labels=LABELS)
    chosen = reports[args.split]
    if args.errors:
        print_outcomes("confident mistakes", chosen.confident_mistakes)
        print_outcomes("wrong with no LLM (the form's type was kept)",
                       [o for o in chosen.outcomes if not o.right and not o.decided])
        print_variant_mistakes(variants, args.split)
    if args.unsure:
        print_outcomes("keywords unsure (would ask the LLM)",
                       [o for o in chosen.outcomes if not o.decided])
    return verdict(aims_met(reports, variants))


if __name__ == "__main__":
    sys.exit(main())
