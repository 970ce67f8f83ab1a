"""Reply reading on the labelled replies, keywords only (no LLM at all), by split.

    python bench/eval_replies.py [--data tests/data/replies_eval.jsonl]
                                 [--errors] [--unsure] [--split tune|held_out|all]

Each line is {"text": <the e-mail body as received, quotes and signature included>,
"expected": "validation" | "refus" | "question" | "none", "split": "tune" | "held_out"}.
As in production with no LLM: a confident keyword reading (>= 0.70) decides; below, the LLM
would be asked and, with none, the reading is "unclear" and the admin reads the reply. A
confident mistake is a wrong confident reading: an acceptance left waiting as "none", a
question taken for a go. Printed per split: accuracy, how often the keywords decide and
how often they are right when they do, the share sent to the LLM (or the admin), the
confident mistakes, accuracy per confidence band, and the set read again: without accents,
with one typo in each word in turn (one reading per word of 5+ letters), and with typos in
one word of three (a stress test).

Aims (exit code 1 when one is missed): no confident mistake on any split, also without
accents or with one typo; on the tune split accuracy >= 95 %.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "tests" / "data" / "replies_eval.jsonl"
MIN_ACCURACY = 0.95  # on the tune split
INTENTS = ("validation", "refus", "question", "none")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval import (  # noqa: E402  (run as a script or loaded by path)
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

Variants = Callable[[str, int], list[str]]


def evaluate(path: Path = DEFAULT_DATA, variants: Variants | None = None) -> dict[str, SplitReport]:
    """Read every reply of the set with no LLM; one report per split, and "all".

    `variants(text, line_number)` gives the texts to read instead of each reply (accents
    removed, typos); each is one outcome.
    """
    sys.path.insert(0, str(ROOT))
    from handler_cli.intent import read_intent

    outcomes = []
    for number, row in read_rows(path):
        for text in (variants(row["text"], number) if variants else [row["text"]]):
            result = read_intent(text)
            first_line = next((line for line in text.strip().splitlines() if line.strip()), "")
            outcomes.append(Outcome(
                number=number, split=row["split"], expected=row["expected"],
                keyword_label=result.guess, confiance=result.confiance,
                decided=result.method == "keywords", final=result.intent,
                text=repr(first_line[:70]), reasons=result.reasons))
    return by_split(outcomes)


def perturbed(path: Path = DEFAULT_DATA) -> dict[str, dict[str, SplitReport]]:
    """The set read again: without accents; with one typo, in each word in turn (aims);
    with a typo in one word of three (a stress test, reported only)."""
    return {
        "without accents": evaluate(path, lambda text, _: [without_accents(text)]),
        "one typo": evaluate(path, lambda text, number: one_typo_each(text, number) or [text]),
        "many typos": evaluate(path, lambda text, number: [with_typos(text, number)]),
    }


def aims_met(reports: dict[str, SplitReport],
             variants: dict[str, dict[str, SplitReport]]) -> list[str]:
    """The aims missed (empty when all are met)."""
    return missed_aims(reports, variants, MIN_ACCURACY)


def main() -> int:
    args = arguments(__doc__, DEFAULT_DATA, "what would go to the LLM (or the admin)")
    reports = evaluate(args.data)
    variants = perturbed(args.data)
    print_figures(f"labelled replies: {shown(args.data)}  (keywords only; with no LLM, an "
                  "unsure reply is 'unclear': the admin reads it)", reports, variants,
                  default="admin", bands="how often the keyword reading is right, by its "
                                         "confidence (below 0.70: the LLM, else the admin):",
                  labels=INTENTS)
    chosen = reports[args.split]
    if args.errors:
        print_outcomes("confident mistakes", chosen.confident_mistakes)
        print_variant_mistakes(variants, args.split)
    if args.unsure:
        print_outcomes("keywords unsure (the LLM, else the admin)",
                       [o for o in chosen.outcomes if not o.decided])
    return verdict(aims_met(reports, variants))


if __name__ == "__main__":
    sys.exit(main())
