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
confident mistakes, accuracy per confidence band, and the set read again without accents
and with typos.

Aims (exit code 1 when one is missed): no confident mistake on any split, also without
accents or with typos; on the tune split accuracy >= 95 %.
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
    print_bands,
    print_confusion,
    print_outcomes,
    print_summary,
    read_rows,
    with_typos,
    without_accents,
)

Rewrite = Callable[[str, int], str]


def evaluate(path: Path = DEFAULT_DATA, rewrite: Rewrite | None = None) -> dict[str, SplitReport]:
    """Read every reply of the set with no LLM; one report per split, and "all"."""
    sys.path.insert(0, str(ROOT))
    from handler_cli.intent import read_intent

    outcomes = []
    for number, row in read_rows(path):
        text = row["text"] if rewrite is None else rewrite(row["text"], number)
        result = read_intent(text)
        first_line = next((line for line in text.strip().splitlines() if line.strip()), "")
        outcomes.append(Outcome(
            number=number, split=row["split"], expected=row["expected"],
            keyword_label=result.guess, confiance=result.confiance,
            decided=result.method == "keywords", final=result.intent,
            text=repr(first_line[:70]), reasons=result.reasons))
    return by_split(outcomes)


def perturbed(path: Path = DEFAULT_DATA) -> dict[str, dict[str, SplitReport]]:
    """The set read again without accents, and with typos (deterministic)."""
    return {
        "without accents": evaluate(path, lambda text, _: without_accents(text)),
        "with typos": evaluate(path, with_typos),
    }


def aims_met(reports: dict[str, SplitReport],
             variants: dict[str, dict[str, SplitReport]]) -> list[str]:
    """The aims missed (empty when all are met)."""
    missed = [f"{name}: {len(reports[name].confident_mistakes)} confident mistake(s)"
              for name in SPLITS if reports[name].confident_mistakes]
    missed += [f"{variant}: {len(v['all'].confident_mistakes)} confident mistake(s)"
               for variant, v in variants.items() if v["all"].confident_mistakes]
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
    for variant, v in variants.items():
        changed = sum(o.final != base.final
                      for o, base in zip(v["all"].outcomes, reports["all"].outcomes, strict=True))
        print(f"\n{variant}: accuracy {v['all'].accuracy:.1%}, keywords decide "
              f"{v['all'].keyword_share:.1%}, {changed} outcome(s) changed, "
              f"{len(v['all'].confident_mistakes)} confident mistake(s)")
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
