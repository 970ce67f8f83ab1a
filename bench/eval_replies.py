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

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "tests" / "data" / "replies_eval.jsonl"
MIN_ACCURACY = 0.95  # on the tune split
INTENTS = ("validation", "refus", "question", "none")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval import (  # noqa: E402  (run as a script or loaded by path)
    SPLITS,
    Outcome,
    SplitReport,
    by_split,
    one_typo_each,
    print_bands,
    print_confusion,
    print_outcomes,
    print_perturbed,
    print_summary,
    read_rows,
    with_typos,
    without_accents,
)

Variants = Callable[[str, int], list[str]]
AIMED_VARIANTS = ("without accents", "one typo")


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
    missed = [f"{name}: {len(reports[name].confident_mistakes)} confident mistake(s)"
              for name in SPLITS if reports[name].confident_mistakes]
    missed += [f"{variant}: {len(v['all'].confident_mistakes)} confident mistake(s)"
               for variant, v in variants.items()
               if variant in AIMED_VARIANTS and v["all"].confident_mistakes]
    if reports["tune"].accuracy < MIN_ACCURACY:
        missed.append(f"tune accuracy {reports['tune'].accuracy:.1%} < {MIN_ACCURACY:.0%}")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--errors", action="store_true", help="list the wrong outcomes")
    parser.add_argument("--unsure", action="store_true",
                        help="list what would go to the LLM (or the admin)")
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="tune",
                        help="which split --errors/--unsure list (default: tune; look at "
                             "held_out only once tuning is over)")
    args = parser.parse_args()

    reports = evaluate(args.data)
    variants = perturbed(args.data)
    print(f"labelled replies: {args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data}"
          f"  (keywords only; with no LLM, an unsure reply is 'unclear': the admin reads it)\n")
    print_summary(reports, "admin")
    print("\nhow often the keyword reading is right, by its confidence "
          "(below 0.70: the LLM, else the admin):")
    print_bands(reports)
    print_perturbed(reports, variants)
    for name in SPLITS:
        print(f"\n{name}: expected \\ outcome with no LLM")
        print_confusion(reports[name], INTENTS, "expected")

    chosen = reports[args.split]
    if args.errors:
        print_outcomes("confident mistakes", chosen.confident_mistakes)
        for variant, v in variants.items():
            print_outcomes(f"confident mistakes {variant}", SplitReport(
                args.split, [o for o in v["all"].outcomes
                             if args.split == "all" or o.split == args.split]).confident_mistakes)
    if args.unsure:
        print_outcomes("keywords unsure (the LLM, else the admin)",
                       [o for o in chosen.outcomes if not o.decided])
    missed = aims_met(reports, variants)
    print("\naims: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
