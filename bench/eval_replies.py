"""Accuracy of reply-intent reading on the labelled replies, keywords only (no LLM at all).

    python bench/eval_replies.py [--data tests/data/replies_eval.jsonl] [--errors]

Each line is {"text": <the e-mail body as received, quotes and signature included>,
"expected": "validation" | "refus" | "question" | "none"}. With no LLM, an unsure reading
(confiance < 0.70) keeps the best keyword guess; the "LLM share" is how many would have gone
to Claude. Aim: accuracy >= 95 % (the exit code is 1 when missed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "tests" / "data" / "replies_eval.jsonl"
MIN_ACCURACY = 0.95
INTENTS = ("validation", "refus", "question", "none")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval import Report, print_confusion  # noqa: E402  (run as a script or loaded by path)


def evaluate(path: Path = DEFAULT_DATA) -> Report:
    """Read every reply of the set with no LLM and tally the outcome."""
    sys.path.insert(0, str(ROOT))
    from handler_cli.intent import read_intent

    report = Report(INTENTS)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        result = read_intent(row["text"])
        expected = row["expected"]
        if not report.tally(expected, result.intent, result.method == "fallback"):
            first_line = row["text"].strip().splitlines()[0] if row["text"].strip() else ""
            report.errors.append(
                f"line {number}: expected {expected}, got {result.intent} "
                f"({result.method}, {result.confiance}) {first_line[:70]!r}\n    "
                + "\n    ".join(result.reasons)
            )
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--errors", action="store_true", help="show each misread reply")
    args = parser.parse_args()

    report = evaluate(args.data)
    print(f"replies:   {report.total}")
    print(f"accuracy:  {report.accuracy:.1%}  (aim >= {MIN_ACCURACY:.0%})")
    print(f"LLM share: {report.llm_share:.1%}  (confiance < 0.70)")
    print()
    print_confusion(report, "expected \\ read", 18)
    if args.errors and report.errors:
        print("\nmisread:")
        for error in report.errors:
            print(error)
    return 0 if report.accuracy >= MIN_ACCURACY else 1


if __name__ == "__main__":
    sys.exit(main())
