"""What the labelled-set evaluations share: splits, calibration bands, confident mistakes.

Every labelled row carries `split`: "tune" (what the lexicons were tuned on) or "held_out"
(written before tuning and never looked at while tuning: `--errors` shows it only when asked
for by name), and `batch`: "original" (the set before issue 13), "A" (the held-out split,
written before any tuning), "tuning" (written to tune), "B" and "C" (written after tuning
as fresh checks, committed before their one evaluation, then moved to tune: their first
figures are in the README). Each row is read by the keywords alone, as production does with no LLM, and
gives an `Outcome`:

- the keyword reading (label and confidence) and whether it is confident enough to decide
  (>= 0.70), or would be sent to the LLM;
- what happens with no LLM at all: the keyword label when confident, else the safe default
  (the form's type for a request, the admin for a reply);
- a *confident mistake*: the keywords decided, and decided wrong. Nobody is asked and nobody
  is told, so this is the number that must be zero.

The bands show whether a confidence means what it says: of the readings at 0.80-0.90, about
80-90 % should be right. Everything here is deterministic (no timing): run it freely.
"""

from __future__ import annotations

import argparse
import json
import random
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("tune", "held_out")
THRESHOLD = 0.70
# The readings again that the aims cover (no confident mistake); "many typos" is a stress test.
AIMED_VARIANTS = ("without accents", "one typo")
BANDS: tuple[tuple[float, float], ...] = (
    (0.0, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.0001))


@dataclass
class Outcome:
    """One labelled row, read by the keywords alone."""

    number: int  # line number in the data file
    split: str
    expected: str
    keyword_label: str  # the keywords' best guess ("?" when they have none)
    confiance: float  # of that guess
    decided: bool  # confident enough to act on without the LLM
    final: str  # what happens with no LLM: the keyword label, or the safe default
    text: str  # a one-line summary for error lists
    reasons: list[str] = field(default_factory=list)

    @property
    def confident_mistake(self) -> bool:
        return self.decided and self.keyword_label != self.expected

    @property
    def right(self) -> bool:
        return self.final == self.expected


@dataclass
class SplitReport:
    """The outcomes of one split (or of several, for the whole set)."""

    name: str
    outcomes: list[Outcome]

    @property
    def total(self) -> int:
        return len(self.outcomes)

    def share(self, keep: Callable[[Outcome], bool]) -> float:
        return sum(map(keep, self.outcomes)) / self.total if self.total else 0.0

    @property
    def accuracy(self) -> float:
        """How often the outcome with no LLM is the expected one."""
        return self.share(lambda o: o.right)

    @property
    def keyword_share(self) -> float:
        """How often the keywords decide alone."""
        return self.share(lambda o: o.decided)

    @property
    def llm_share(self) -> float:
        """How often the LLM would be asked (and, with none, the safe default applies)."""
        return self.share(lambda o: not o.decided)

    @property
    def decided_accuracy(self) -> float:
        decided = [o for o in self.outcomes if o.decided]
        return sum(o.right for o in decided) / len(decided) if decided else 1.0

    @property
    def confident_mistakes(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.confident_mistake]

    def bands(self) -> list[tuple[tuple[float, float], int, int]]:
        """(band, readings in it, keyword label right) for each confidence band."""
        rows = []
        for low, high in BANDS:
            inside = [o for o in self.outcomes if low <= o.confiance < high]
            rows.append(((low, high), len(inside),
                         sum(o.keyword_label == o.expected for o in inside)))
        return rows


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for each labelled row; a row without a known split is an error."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("split") not in SPLITS:
            raise ValueError(f"{path}:{number}: split must be one of {SPLITS}, "
                             f"got {row.get('split')!r}")
        yield number, row


def by_split(outcomes: Iterable[Outcome]) -> dict[str, SplitReport]:
    items = list(outcomes)
    reports = {name: SplitReport(name, [o for o in items if o.split == name]) for name in SPLITS}
    reports["all"] = SplitReport("all", items)
    return reports


# -- perturbations: no accent and no typo may change a decision into a confident mistake ----------


def without_accents(text: str) -> str:
    """What a client typing on a keyboard without accents sends."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _typo(word: str, rng: random.Random) -> str:
    """The word with one letter swapped with the next, dropped or doubled (never the first)."""
    k = rng.randrange(1, len(word) - 2)
    kind = rng.choice(("swap", "drop", "double"))
    if kind == "swap":
        return word[:k] + word[k + 1] + word[k] + word[k + 2:]
    if kind == "drop":
        return word[:k] + word[k + 1:]
    return word[:k] + word[k] + word[k:]


def _typo_slots(text: str) -> tuple[list[str], list[int]]:
    words = text.split(" ")
    return words, [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]


def one_typo_each(text: str, seed: int) -> list[str]:
    """The text once per word of 5+ letters, with a typo in that word only (deterministic)."""
    rng = random.Random(seed)
    words, slots = _typo_slots(text)
    variants = []
    for i in slots:
        changed = list(words)
        changed[i] = _typo(words[i], rng)
        variants.append(" ".join(changed))
    return variants


def with_typos(text: str, seed: int) -> str:
    """A typo in about one word in three of 5+ letters: a stress test, not an aim.

    Deterministic (seeded by the row), so the figures do not move from run to run.
    """
    rng = random.Random(seed)
    words, slots = _typo_slots(text)
    for i in slots:
        if rng.random() <= 0.33:
            words[i] = _typo(words[i], rng)
    return " ".join(words)


# -- the command line -----------------------------------------------------------------------------


def shown(path: Path) -> Path:
    """`path` as the evaluation names it: from the repository's root when it is inside."""
    root = Path(__file__).resolve().parents[1]
    return path.relative_to(root) if path.is_relative_to(root) else path


def arguments(doc: str, default_data: Path, unsure: str) -> argparse.Namespace:
    """The options both evaluations take (`unsure`: what `--unsure` lists)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--errors", action="store_true", help="list the wrong outcomes")
    parser.add_argument("--unsure", action="store_true", help=f"list {unsure}")
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="tune",
                        help="which split --errors/--unsure list (default: tune; look at "
                             "held_out only once tuning is over)")
    return parser.parse_args()


def missed_aims(reports: dict[str, SplitReport], variants: dict[str, dict[str, SplitReport]],
                min_accuracy: float) -> list[str]:
    """The aims both evaluations share, those missed: no confident mistake on any split nor
    in the aimed readings again, and the tune split's accuracy."""
    missed = [f"{name}: {len(reports[name].confident_mistakes)} confident mistake(s)"
              for name in SPLITS if reports[name].confident_mistakes]
    missed += [f"{variant}: {len(v['all'].confident_mistakes)} confident mistake(s)"
               for variant, v in variants.items()
               if variant in AIMED_VARIANTS and v["all"].confident_mistakes]
    tune = reports["tune"]
    if tune.accuracy < min_accuracy:
        missed.append(f"tune accuracy {tune.accuracy:.1%} < {min_accuracy:.0%}")
    return missed


def verdict(missed: list[str]) -> int:
    """Print the aims' verdict; the exit code (1 when one is missed)."""
    print("\naims: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    return 1 if missed else 0


# -- printing -------------------------------------------------------------------------------------


def print_figures(title: str, reports: dict[str, SplitReport],
                  variants: dict[str, dict[str, SplitReport]], *, default: str, bands: str,
                  labels: tuple[str, ...]) -> None:
    """Everything an evaluation prints before its lists: the summary by split (`default`:
    what stands with no LLM), the confidence bands (under the heading `bands`), the set read
    again, and each split's confusion table."""
    print(title + "\n")
    print_summary(reports, default)
    print(f"\n{bands}")
    print_bands(reports)
    print_perturbed(reports, variants)
    for name in SPLITS:
        print(f"\n{name}: expected \\ outcome with no LLM")
        print_confusion(reports[name], labels, "expected")


def print_variant_mistakes(variants: dict[str, dict[str, SplitReport]], split: str) -> None:
    """The confident mistakes of each reading again, on `split` (or "all")."""
    for variant, v in variants.items():
        print_outcomes(f"confident mistakes {variant}", SplitReport(
            split, [o for o in v["all"].outcomes
                    if split == "all" or o.split == split]).confident_mistakes)


def pct(value: float) -> str:
    return f"{value:6.1%}"


def print_summary(reports: dict[str, SplitReport], default: str) -> None:
    """One line per split: size, accuracy, who decides, confident mistakes."""
    print(f"{'split':<9}{'rows':>6}{'accuracy':>10}{'keywords decide':>17}"
          f"{'right when they do':>20}{f'LLM / {default}':>18}{'confident mistakes':>20}")
    for name in (*SPLITS, "all"):
        r = reports[name]
        print(f"{name:<9}{r.total:>6}{pct(r.accuracy):>10}{pct(r.keyword_share):>17}"
              f"{pct(r.decided_accuracy):>20}{pct(r.llm_share):>18}"
              f"{len(r.confident_mistakes):>20}")


def print_bands(reports: dict[str, SplitReport]) -> None:
    """Per confidence band and split: readings in the band and how many the keywords got right."""
    print(f"{'keyword confidence':<20}" + "".join(f"{name:>20}" for name in (*SPLITS, "all")))
    rows = {name: reports[name].bands() for name in (*SPLITS, "all")}
    for i, (low, high) in enumerate(BANDS):
        label = f"{low:.2f}-{min(high, 1.0):.2f}" + ("  (LLM)" if high <= THRESHOLD else "")
        cells = []
        for name in (*SPLITS, "all"):
            _, n, right = rows[name][i]
            cells.append(f"{right}/{n} {right / n:5.0%}" if n else "-")
        print(f"{label:<20}" + "".join(f"{c:>20}" for c in cells))


def print_confusion(report: SplitReport, labels: tuple[str, ...], corner: str) -> None:
    """Expected label by row, outcome with no LLM by column."""
    columns = list(labels) + sorted({o.final for o in report.outcomes} - set(labels))
    width = max(len(c) for c in columns) + 2
    first = max(len(corner), *(len(label) for label in labels)) + 2
    print(corner.ljust(first) + "".join(c.rjust(width) for c in columns))
    for expected in labels:
        row = [o for o in report.outcomes if o.expected == expected]
        print(expected.ljust(first)
              + "".join(str(sum(o.final == c for o in row)).rjust(width) for c in columns))


def print_perturbed(reports: dict[str, SplitReport],
                    variants: dict[str, dict[str, SplitReport]]) -> None:
    """The set read again (accents removed, typos): does a decision move, or turn wrong?"""
    base = {o.number: o.final for o in reports["all"].outcomes}
    print(f"\n{'read again':<17}{'readings':>9}{'accuracy':>10}{'keywords decide':>17}"
          f"{'outcome changed':>17}{'confident mistakes (tune / held_out)':>38}")
    for name, v in variants.items():
        every = v["all"]
        changed = sum(o.final != base[o.number] for o in every.outcomes)
        mistakes = " / ".join(str(len(v[split].confident_mistakes)) for split in SPLITS)
        print(f"{name:<17}{every.total:>9}{pct(every.accuracy):>10}{pct(every.keyword_share):>17}"
              f"{changed:>17}{mistakes:>38}")


def print_outcomes(title: str, outcomes: list[Outcome]) -> None:
    if not outcomes:
        return
    print(f"\n{title}:")
    for o in outcomes:
        print(f"line {o.number} [{o.split}]: expected {o.expected}, keywords {o.keyword_label} "
              f"{o.confiance:.2f} -> {o.final}  {o.text}")
        for reason in o.reasons:
            print(f"    {reason}")
