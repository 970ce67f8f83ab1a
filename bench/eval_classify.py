"""Accuracy of step 1 (classify) on the labelled set, keywords only (no LLM at all).

    python bench/eval_classify.py [--data tests/data/classify_eval.jsonl] [--errors]

Each line of the set is a full request payload plus "expected". The step runs as in
production with no LLM configured, so a request the keywords are unsure about (confiance
< 0.70) keeps its form's type; the "LLM share" is how many would have gone to Claude.
Aims: accuracy >= 95 %, LLM share <= 15 % (the exit code is 1 when one is missed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "tests" / "data" / "classify_eval.jsonl"
MIN_ACCURACY = 0.95
MAX_LLM_SHARE = 0.15
LABELS = ("SUPPORT", "MODELISATION")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval import Report, print_confusion  # noqa: E402  (run as a script or loaded by path)


def evaluate(path: Path = DEFAULT_DATA) -> Report:
    """Classify every request of the set with no LLM and tally the outcome."""
    sys.path.insert(0, str(ROOT))
    from handler_cli.config import load_settings
    from handler_cli.context import Context
    from handler_cli.document import Document
    from handler_cli.steps.classify import CONFIDENCE_THRESHOLD, run, score

    data_dir = Path(tempfile.mkdtemp(prefix="handler-eval-"))
    settings = load_settings(environ={}, env_file=Path(os.devnull), handler_data_dir=data_dir)
    ctx = Context(settings)
    report = Report(LABELS)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        expected = row.pop("expected")
        doc = Document.model_validate(row)
        keywords = score(doc)
        unsure = keywords.label is None or keywords.confiance < CONFIDENCE_THRESHOLD
        run(doc, ctx)
        predicted = doc.type_final or "?"
        right = report.tally(expected, predicted, unsure)
        if unsure:
            report.unsure.append(
                f"line {number}: {expected}, keywords {keywords.label} {keywords.confiance:.2f} "
                f"{keywords.scores} {doc.objet!r}"
            )
        if not right:
            why = doc.classification.reasons if doc.classification else []
            report.errors.append(
                f"line {number}: expected {expected}, got {predicted} "
                f"(confiance {doc.confiance}) [{doc.source}] {doc.objet!r}\n    "
                + "\n    ".join(why)
            )
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--errors", action="store_true", help="show each misclassified request")
    parser.add_argument("--unsure", action="store_true", help="show each request sent to the LLM")
    args = parser.parse_args()

    report = evaluate(args.data)
    print(f"requests:  {report.total}")
    print(f"accuracy:  {report.accuracy:.1%}  (aim >= {MIN_ACCURACY:.0%})")
    print(f"LLM share: {report.llm_share:.1%}  (aim <= {MAX_LLM_SHARE:.0%}; confiance < 0.70)")
    print()
    print_confusion(report, "expected \\ predicted", 22)
    if args.errors and report.errors:
        print("\nmisclassified:")
        for error in report.errors:
            print(error)
    if args.unsure and report.unsure:
        print("\nkeywords unsure (would ask the LLM):")
        for line in report.unsure:
            print(line)
    ok = report.accuracy >= MIN_ACCURACY and report.llm_share <= MAX_LLM_SHARE
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
