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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "tests" / "data" / "classify_eval.jsonl"
MIN_ACCURACY = 0.95
MAX_LLM_SHARE = 0.15
LABELS = ("SUPPORT", "MODELISATION")


@dataclass
class Report:
    total: int = 0
    correct: int = 0
    to_llm: int = 0
    # confusion[expected][predicted]
    confusion: dict[str, dict[str, int]] = field(
        default_factory=lambda: {e: dict.fromkeys(LABELS, 0) for e in LABELS}
    )
    errors: list[str] = field(default_factory=list)
    unsure: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def llm_share(self) -> float:
        return self.to_llm / self.total if self.total else 0.0


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
    report = Report()
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
        report.total += 1
        report.to_llm += unsure
        if unsure:
            report.unsure.append(
                f"line {number}: {expected}, keywords {keywords.label} {keywords.confiance:.2f} "
                f"{keywords.scores} {doc.objet!r}"
            )
        report.confusion[expected][predicted] += 1
        if predicted == expected:
            report.correct += 1
        else:
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
    width = max(len(label) for label in LABELS) + 2
    print("expected \\ predicted".ljust(22) + "".join(p.rjust(width) for p in LABELS))
    for expected in LABELS:
        row = report.confusion[expected]
        print(expected.ljust(22) + "".join(str(row[p]).rjust(width) for p in LABELS))
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
