"""Step 5: is a modelling request complete, and what does it cost in credits?

The rules are data (`handler_cli/data/credit_grid.json`, explained in `docs/credit-grid.md`)
so the studio can tune keywords without touching code. `assess` is pure: the poll calls it
again with the client's reply appended when missing information arrives.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from handler_cli.data import DATA_DIR
from handler_cli.document import Analysis, RefusedFile, empty_list
from handler_cli.steps import MissingInput
from handler_cli.text import fold

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document

log = logging.getLogger("handler_cli")

GRID_PATH = DATA_DIR / "credit_grid.json"

AnalysisStatus = Literal["pending_info", "pending_credits", "pending_admin"]

# Clauses end at sentence punctuation, a line break or a comma that is not a decimal comma,
# so "Pas de souci. Urgent" does not read as "pas ... urgent".
_CLAUSE_END = re.compile(r"[.!?;:\n\r()\[\]]+|(?<!\d),|,(?!\d)")
_WORD = re.compile(r"[a-z]+")


# --- the grid, as validated data -------------------------------------------------------------


class Matching(BaseModel):
    model_config = ConfigDict(extra="forbid")

    negations: list[str]
    negation_exceptions: list[str] = Field(default_factory=empty_list)
    scope_breakers: list[str] = Field(default_factory=empty_list)
    negation_window: int = Field(default=3, ge=0, le=10)


class MissingTexts(BaseModel):
    """What the client is asked for, one line each (French)."""

    model_config = ConfigDict(extra="forbid")

    visual: str
    object: str
    size: str
    appearance: str
    description: str  # the description was left empty (files only)
    lost_file: str  # a file sent that we could not receive; {name} and {reason} filled in

    @model_validator(mode="after")
    def _lost_file_placeholders(self) -> MissingTexts:
        try:
            self.lost_file.format(name="x", reason="y")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"lost_file: only {{name}} and {{reason}} may be used ({exc})") \
                from None
        return self


class Completeness(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: str
    visual_extensions: dict[str, list[str]]
    size_patterns: list[str]
    materials: dict[str, list[str]]
    colours: list[str]
    generic_words: list[str]
    missing_info: MissingTexts


class GridRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    outcome: Literal["admin", "credits"]
    credits: Literal[1, 2] | None = None
    label: str
    keywords: list[str] = Field(default_factory=empty_list)
    patterns: list[str] = Field(default_factory=empty_list)
    distinct_materials: int | None = Field(default=None, ge=2)
    examples: list[str] = Field(default_factory=empty_list)

    @model_validator(mode="after")
    def _credits_match_outcome(self) -> GridRule:
        if (self.outcome == "credits") != (self.credits is not None):
            raise ValueError(f"rule {self.id}: 'credits' is required for outcome 'credits' only")
        return self

    @property
    def is_default(self) -> bool:
        return not (self.keywords or self.patterns or self.distinct_materials)


class CreditGrid(BaseModel):
    """The whole grid; validated on load so a typo in the JSON names its field."""

    model_config = ConfigDict(extra="forbid")

    version: int
    matching: Matching
    completeness: Completeness
    rules: list[GridRule] = Field(min_length=1)
    _regexes: Any = PrivateAttr(default=None)  # the regexes, see _compiled()

    @model_validator(mode="after")
    def _well_ordered(self) -> CreditGrid:
        ids = [r.id for r in self.rules] + [self.completeness.rule]
        if len(ids) != len(set(ids)):
            raise ValueError("rule ids must be unique")
        outcomes = [r.outcome for r in self.rules]
        if outcomes != sorted(outcomes):  # "admin" < "credits": every admin rule comes first
            raise ValueError("admin rules must come before every credits rule")
        if not self.rules[-1].is_default or self.rules[-1].outcome != "credits":
            raise ValueError("the last rule must be a credits rule without keywords (the default)")
        if any(r.is_default for r in self.rules[:-1]):
            raise ValueError("only the last rule may have no keywords, patterns or counts")
        for rule in self.rules:
            folded = [fold(k) for k in rule.keywords]
            twins = sorted({k for k in folded if folded.count(k) > 1})
            if twins or "" in folded:
                raise ValueError(f"rule {rule.id}: keywords empty or repeated once folded: {twins}")
        for pattern in [p for r in self.rules for p in r.patterns] + self.completeness.size_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid pattern {pattern!r}: {exc}") from None
        return self


@lru_cache(maxsize=4)
def load_grid(path: Path = GRID_PATH) -> CreditGrid:
    """Read and validate the grid (once per process and path)."""
    return CreditGrid.model_validate(json.loads(path.read_text(encoding="utf-8")))


# --- matching on folded text -----------------------------------------------------------------


def _phrase(text: str) -> re.Pattern[str]:
    return re.compile(r"(?<![a-z0-9])" + re.escape(fold(text)) + r"(?![a-z0-9])")


class _Text:
    """The request's text cut into folded clauses, with keyword search that skips negations."""

    def __init__(self, raw: str, matching: Matching) -> None:
        self.clauses = [c for c in (fold(part) for part in _CLAUSE_END.split(raw)) if c]
        self.words = {w for c in self.clauses for w in _WORD.findall(c)}
        self._negations = {fold(w) for w in matching.negations}
        self._exceptions = [_phrase(p) for p in matching.negation_exceptions]
        self._breakers = [_phrase(p) for p in matching.scope_breakers]
        self._window = matching.negation_window

    def _negated(self, before: str) -> bool:
        """True when a negation word sits in the last few words before a match."""
        for breaker in self._breakers:
            hits = list(breaker.finditer(before))
            if hits:
                before = before[hits[-1].end():]
        for exception in self._exceptions:
            before = exception.sub(" ", before)
        recent = before.split()[-self._window:] if self._window else []
        return any(w in self._negations for w in recent)

    def find(self, pattern: re.Pattern[str], negatable: bool = True) -> str | None:
        """The first text matching `pattern` that is not negated, if any."""
        for clause in self.clauses:
            for m in pattern.finditer(clause):
                if not negatable or not self._negated(clause[: m.start()]):
                    return m.group(0)
        return None


@dataclass(frozen=True)
class _Compiled:
    """Regexes built once per grid."""

    rules: list[tuple[GridRule, list[re.Pattern[str]], list[re.Pattern[str]]]]
    size: list[re.Pattern[str]]
    materials: dict[str, list[re.Pattern[str]]]
    appearance: list[re.Pattern[str]]
    not_object: frozenset[str]
    visual: dict[str, str]  # extension -> family


def _compiled(grid: CreditGrid) -> _Compiled:
    """The grid's regexes, built on first use and kept on the grid object."""
    if grid._regexes is None:
        grid._regexes = _compile(grid)
    compiled: _Compiled = grid._regexes
    return compiled


def _compile(grid: CreditGrid) -> _Compiled:
    c = grid.completeness
    appearance_words = [w for words in c.materials.values() for w in words] + c.colours
    not_object = {w for text in (*c.generic_words, *appearance_words) for w in fold(text).split()}
    return _Compiled(
        rules=[
            (r, [_phrase(k) for k in r.keywords], [re.compile(p) for p in r.patterns])
            for r in grid.rules
        ],
        size=[re.compile(p) for p in c.size_patterns],
        materials={group: [_phrase(w) for w in words] for group, words in c.materials.items()},
        appearance=[_phrase(w) for w in appearance_words],
        not_object=frozenset(not_object),
        visual={ext.lower().lstrip("."): family
                for family, exts in c.visual_extensions.items() for ext in exts},
    )


# --- assessment ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assessment:
    """What the grid says about one request."""

    credits: int | None  # None when the request is incomplete or goes to the admin
    completeness: Literal["complete", "incomplete"]
    missing_info: list[str]  # French, for the client
    validation_status: AnalysisStatus
    rule: str  # id of the grid rule that decided
    reasons: list[str]  # French, for the studio: rule ids and the words that triggered them
    # What lacks, by key (visual, object, size, appearance, description, lost:<name>): what
    # the poll compares to tell whether a reply brought anything.
    lacking: frozenset[str] = frozenset()

    def ticket_properties(self) -> dict[str, str]:
        """The CRM ticket properties (HubSpot values are strings; no credits is "")."""
        return {
            "validation_status": self.validation_status,
            "credits_estimes": str(self.credits) if self.credits else "",
        }

    def record(self, doc: Document) -> None:
        """Copy the assessment onto the document (after the ticket was updated)."""
        doc.credits_estimes = self.credits
        doc.completeness = self.completeness
        doc.missing_info = list(self.missing_info)
        doc.validation_status = self.validation_status
        doc.analysis = Analysis(rule=self.rule, reasons=list(self.reasons))


def _quote(words: list[str]) -> str:
    return ", ".join(f"« {w} »" for w in words)


def _rule_hits(rule: GridRule, keywords: list[re.Pattern[str]], patterns: list[re.Pattern[str]],
               text: _Text, compiled: _Compiled) -> list[str]:
    """The words that trigger `rule` in `text` (empty when it does not apply)."""
    hits: list[str] = []
    for pattern in (*keywords, *patterns):
        found = text.find(pattern)
        if found is not None and found not in hits:
            hits.append(found)
    if rule.distinct_materials:
        groups: dict[str, str] = {}
        for group, words in compiled.materials.items():
            for word in words:
                found = text.find(word)
                if found is not None:
                    groups[group] = found
                    break
        if len(groups) >= rule.distinct_materials:
            hits.append(" + ".join(groups.values()))
    return hits


def visual_files(file_names: list[str], grid: CreditGrid | None = None) -> list[str]:
    """The names among `file_names` that show the object (photo, plan or 3D file)."""
    compiled = _compiled(grid or load_grid())
    return [
        name for name in file_names
        if "." in name and name.rsplit(".", 1)[1].strip().lower() in compiled.visual
    ]


def assess(
    objet: str, description: str, file_names: list[str], *,
    refused: Sequence[RefusedFile] = (), grid: CreditGrid | None = None,
) -> Assessment:
    """Apply the credit grid to a request (title, free text and the names of the files we
    *stored*; `refused`: the files the client sent that we could not receive).

    Admin rules win over everything, even an incomplete request (`missing_info` is still
    filled so the admin sees it); then an incomplete request waits for information (a file
    we did not receive, or an empty description, always makes it incomplete: we never quote
    on something we do not have); then the first complexity rule that matches prices it at
    2 credits, else 1.
    """
    grid = grid or load_grid()
    compiled = _compiled(grid)
    text = _Text(f"{objet}\n{description}", grid.matching)

    matched: list[tuple[GridRule, list[str]]] = []
    for rule, keywords, patterns in compiled.rules:
        hits = [] if rule.is_default else _rule_hits(rule, keywords, patterns, text, compiled)
        if hits or rule.is_default:
            matched.append((rule, hits))
    winner, _ = matched[0]

    missing_texts = grid.completeness.missing_info
    missing: list[str] = []
    gaps: list[str] = []
    lacking: set[str] = set()
    for lost in refused:
        missing.append(missing_texts.lost_file.format(name=lost.name, reason=lost.reason))
        gaps.append(f"fichier « {lost.name} » non reçu ({lost.reason})")
        lacking.add(f"lost:{lost.name}")
    if not visual_files(file_names, grid):
        if not visual_files([lost.name for lost in refused], grid):  # else: asked for above
            missing.append(missing_texts.visual)
        gaps.append("aucune photo, aucun plan ni fichier 3D reçu"
                    + (f" (fichiers : {', '.join(file_names)})" if file_names else ""))
        lacking.add("visual")
    if not description.strip():
        missing.append(missing_texts.description)
        gaps.append("description vide")
        lacking.add("description")
    worded: list[str] = []  # asked only when the client wrote a description
    if not {w for w in text.words if len(w) >= 3} - compiled.not_object:
        worded.append(missing_texts.object)
        gaps.append("l'objet n'est pas nommé")
        lacking.add("object")
    has_size = any(text.find(p, negatable=False) for p in compiled.size)
    has_look = any(text.find(p) for p in compiled.appearance)
    if not (has_size or has_look):
        worded += [missing_texts.size, missing_texts.appearance]
        gaps.append("ni dimensions, ni matériaux, ni couleurs")
        lacking.update(("size", "appearance"))
    if "description" not in lacking:
        missing += worded

    def explain(rule: GridRule, hits: list[str]) -> str:
        outcome = {None: "admin", 1: "1 crédit", 2: "2 crédits"}[rule.credits]
        found = f" : {_quote(hits)}" if hits else ""
        return f"{rule.id} ({rule.label} → {outcome}){found}"

    reasons = [explain(rule, hits) for rule, hits in matched if hits]
    completeness: Literal["complete", "incomplete"] = "incomplete" if missing else "complete"
    if winner.outcome == "admin":
        if missing:
            reasons.append(f"{grid.completeness.rule} : " + " ; ".join(gaps))
        return Assessment(credits=None, completeness=completeness, missing_info=missing,
                          validation_status="pending_admin", rule=winner.id, reasons=reasons,
                          lacking=frozenset(lacking))
    if missing:
        reasons.insert(0, f"{grid.completeness.rule} : " + " ; ".join(gaps))
        if winner.is_default:
            reasons.append(explain(winner, []))
        reasons[1:] = [f"une fois complète : {r}" for r in reasons[1:]]
        return Assessment(credits=None, completeness=completeness, missing_info=missing,
                          validation_status="pending_info", rule=grid.completeness.rule,
                          reasons=reasons, lacking=frozenset(lacking))
    if winner.is_default:
        reasons.append(explain(winner, []) + " : aucun critère de complexité trouvé")
    return Assessment(credits=winner.credits, completeness=completeness, missing_info=[],
                      validation_status="pending_credits", rule=winner.id, reasons=reasons)


def stored_file_names(doc: Document) -> list[str]:
    """The names of the request's files we hold (their links' last part): completeness
    counts these, never what the client merely listed."""
    names: list[str] = []
    for url in doc.fichiers_urls or []:
        name = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
        if name and name not in names:
            names.append(name)
    return names


# --- the step --------------------------------------------------------------------------------


def run(doc: Document, ctx: Context) -> Document:
    """Assess a modelling request, record the status on the ticket, then on the document."""
    if doc.type_final is None:
        raise MissingInput("type_final", "classify")
    if doc.type_final != "MODELISATION" or doc.validation_status is not None:
        return doc
    if not doc.ticket_id:
        raise MissingInput("ticket_id", "ticket")

    if doc.fichiers and doc.fichiers_urls is None:
        # The files are not stored yet (the store failed, or upload did not run): judging
        # the request now would ask the client for files they did send, or quote without them.
        raise MissingInput("fichiers_urls", "upload")

    result = assess(doc.objet, doc.description, stored_file_names(doc),
                    refused=doc.fichiers_refuses)
    # The ticket first: if the CRM refuses, the document stays unassessed and a re-run retries.
    ctx.crm.update_ticket(doc.ticket_id, result.ticket_properties())
    result.record(doc)
    log.debug("%s: analyze: %s (%s)", doc.request_id, result.validation_status, result.rule)
    return doc
