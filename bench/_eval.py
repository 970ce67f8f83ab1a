"""What the labelled-set evaluations share: the tally and the confusion table."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    """Outcome of one labelled set: accuracy, share sent to the LLM, confusion, errors."""

    labels: tuple[str, ...]
    total: int = 0
    correct: int = 0
    to_llm: int = 0
    # confusion[expected][predicted]
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    unsure: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.confusion:
            self.confusion = {e: dict.fromkeys(self.labels, 0) for e in self.labels}

    def tally(self, expected: str, predicted: str, to_llm: bool) -> bool:
        """Count one item; True when it was read right."""
        self.total += 1
        self.to_llm += to_llm
        self.confusion[expected][predicted] += 1
        right = predicted == expected
        self.correct += right
        return right

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def llm_share(self) -> float:
        return self.to_llm / self.total if self.total else 0.0


def print_confusion(report: Report, corner: str, first_width: int) -> None:
    """The confusion table: one row per expected label, one column per predicted label."""
    width = max(len(label) for label in report.labels) + 2
    print(corner.ljust(first_width) + "".join(p.rjust(width) for p in report.labels))
    for expected in report.labels:
        row = report.confusion[expected]
        print(expected.ljust(first_width) + "".join(str(row[p]).rjust(width) for p in report.labels))
