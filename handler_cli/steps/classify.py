"""Step 1: is the request SUPPORT or MODELISATION? Keywords first, Claude when unsure.

Web forms are often misused (a bug report sent through the modelling form, a modelling
request through the contact form), so the form's type is only the last resort.

How `confiance` is computed
---------------------------
The folded `objet`, `description` and attached file names are matched against the weighted
lexicon `handler_cli/data/lexicon.json` (words, `stem*` prefixes and multi-word phrases;
longest match first, a matched phrase consumes its words; an order or ticket number such as
"#2231" reads as the word `numref`). Each lexicon term counts once, with its best occurrence:
×`title_factor` (1.5) when found in `objet`, ×`file_name_factor` (0.5) in a file name,
×`fuzzy_factor` (0.6) when matched through a one-letter typo (words of 5+ letters, in any
word of a phrase). Attached
files add their extension's weight (3D files .glb .usdz .obj .fbx .stl... 5, images 0.75).
Then `damping` discounts one side's words when the other side's evidence says what they are
about: "le modèle 3D ne s'affiche pas" is a malfunction about a 3D model, so the 3D words and
files count ×0.25 next to malfunction, billing or account terms worth 3 or more; "le canapé
que vous m'avez livré" is about a model already delivered, so its 3D words and files count
×0.25, and "refaire", "le devis" ×0.5 (a correction, the old quote); an after-sales act
(where is my model, correct it, another format, cancel the order, credits taken) also halves
the modelling verbs; an ask for new work ("la table assortie") halves the references.

With s the SUPPORT score, m the MODELISATION score and a = `smoothing` (1.0), each label's
probability is its smoothed share of the evidence::

    p(SUPPORT) = (s + a) / (s + m + 2a)        p(MODELISATION) = 1 - p(SUPPORT)

The label with the larger share wins and `confiance` is that share: 0.5 without evidence,
0.83 for one strong word (weight 4) alone; to reach 0.70 the winner needs about 2.3× the
loser's score plus 1.33. A label also needs `min_evidence` (2.5) of its own, not counting the
`context_roles` (a reference to an earlier order says what a request is about, not what it
asks), and more than one word when its only word is a `topic_roles` one (subject matter:
"merci d'arrêter la modélisation" is not new work): else `confiance` is capped at 0.69, so a
lone "modèle", a lone "modélisation" or a lone typo never decides.
Below 0.70 the LLM is asked, and its label counts when its own confidence reaches 0.70
(`confiance` = that confidence). When it is unsure too, fails or is not configured, the
form's type is kept and `confiance` is the keyword share of that type.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from handler_cli.data import load_json
from handler_cli.document import Classification
from handler_cli.lexicon import Phrase, PhraseMatcher, built_once
from handler_cli.text import fold

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document, RequestType

log = logging.getLogger("handler_cli")

CONFIDENCE_THRESHOLD = 0.70
UNSURE_CAP = 0.69  # the most a label gets without `min_evidence` behind it
LABELS: tuple[RequestType, RequestType] = ("SUPPORT", "MODELISATION")
_UNITS = ("mm", "cm")
_LLM_MAX_CHARS = 6000
# An order or ticket number ("#2231", "n° 1042", "ticket 1088", "commande 2231") says the
# request follows up something already ordered; the lexicon sees it as the word "numref".
# Product references ("réf. 4521") are left alone: new requests cite them too. Looked for
# on the folded words (a regex over the raw text cost more than the whole scan).
_HASH_NUMBER = re.compile(r"#\s?\d{2,}")
_NUMBER_AFTER = frozenset({"ticket", "commande", "order", "n"})


def _words(text: str) -> list[str]:
    """Folded words of a request field, order and ticket numbers read as 'numref'."""
    if "#" in text:
        text = _HASH_NUMBER.sub(" numref ", text)
    words = fold(text).split()
    for i in range(1, len(words)):
        if words[i - 1] in _NUMBER_AFTER and words[i].isdigit() and len(words[i]) >= 2:
            words[i] = "numref"
    return words


@dataclass(frozen=True, slots=True, eq=False)
class Term:
    """What one lexicon entry is worth; the matching itself is `handler_cli.lexicon`'s."""

    text: str
    label: str | None  # None for neutral phrases (weight 0)
    group: str
    role: str
    weight: float


@dataclass(frozen=True, slots=True)
class _Damping:
    when: frozenset[tuple[str, str]]
    targets: frozenset[tuple[str, str]]
    factor: float
    min_score: float  # the trigger roles must add up to this much evidence
    why: str


# A hit: the best factor a matched term got so far, and the words that matched it. Keyed by
# the compiled phrase (one per first-word alternative), as each counts once.
Hits = dict[Phrase[Term], tuple[float, str]]


class Lexicon:
    """The compiled lexicon: weights, factors and damping rules over a `PhraseMatcher`."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.smoothing = float(data.get("smoothing", 1.0))
        self.title_factor = float(data.get("title_factor", 1.5))
        self.file_name_factor = float(data.get("file_name_factor", 0.5))
        self.fuzzy_factor = float(data.get("fuzzy_factor", 0.75))
        self.fuzzy_min_length = int(data.get("fuzzy_min_length", 7))
        self.min_evidence = float(data.get("min_evidence", 0.0))
        self.context_roles = frozenset(data.get("context_roles", ()))
        self.topic_roles = frozenset(data.get("topic_roles", ()))
        fuzzy_default = bool(data.get("fuzzy", False))
        self.matcher: PhraseMatcher[Term] = PhraseMatcher(
            "lexicon", fuzzy_min_length=self.fuzzy_min_length, units=_UNITS, fuzzy_rest=True)
        seen: dict[str, str] = {}
        for group in data["groups"]:
            name = group["name"]
            label = group.get("label")
            if label is not None and label not in LABELS:
                raise ValueError(f"lexicon: group {name}: unknown label {label!r}")
            role = group.get("role", "signal")
            fuzzy = bool(group.get("fuzzy", fuzzy_default))
            for raw in group["terms"]:
                text, weight = (raw, group["weight"]) if isinstance(raw, str) else raw
                key = " ".join(text.split())
                if key in seen:
                    raise ValueError(f"lexicon: '{text}' is in both {seen[key]} and {name}")
                seen[key] = name
                term = Term(text, label, name, role, float(weight))
                self.matcher.add(text, term, fuzzy=fuzzy, rank=term.weight)
        files = data.get("files", {})
        self.file_label: str = files.get("label", "MODELISATION")
        self.file_role: str = files.get("role", "file")
        self.extensions: dict[str, float] = {
            ext.lower(): float(w) for ext, w in files.get("extensions", {}).items()
        }
        self.damping = [
            _Damping(
                when=frozenset((lab, role) for lab, roles in d["when"].items() for role in roles),
                targets=frozenset(
                    (lab, role) for lab, roles in d["discount"].items() for role in roles
                ),
                factor=float(d["factor"]),
                min_score=float(d.get("min_score", 0.0)),
                why=d.get("why", "discounted"),
            )
            for d in data.get("damping", [])
        ]

    def scan(self, tokens: Sequence[str], factor: float, hits: Hits) -> None:
        """Add each term found in `tokens` to `hits`: its best factor so far, and the words."""
        fuzzy_factor = self.fuzzy_factor
        for start, end, phrase, by_typo in self.matcher.scan(tokens):
            f = factor * fuzzy_factor if by_typo else factor
            best = hits.get(phrase)
            if best is None or best[0] < f:
                words = tokens[start] if end == start + 1 else " ".join(tokens[start:end])
                hits[phrase] = (f, words)


@built_once
def load_lexicon() -> Lexicon:
    """The packaged lexicon, parsed and indexed once per process."""
    return Lexicon(load_json("lexicon.json"))


@dataclass
class KeywordScore:
    """What the keywords say about one request."""

    label: RequestType | None  # None when the evidence is exactly balanced
    confiance: float  # share of the evidence for `label` (0.5 when balanced)
    scores: dict[str, float]
    reasons: list[str] = field(default_factory=list)
    smoothing: float = 1.0

    @property
    def decided(self) -> bool:
        """Confident enough for the keywords to decide alone (else the LLM is asked)."""
        return self.label is not None and self.confiance >= CONFIDENCE_THRESHOLD

    def share(self, label: str) -> float:
        """Smoothed share of the evidence for `label` (see the module docstring)."""
        a = self.smoothing
        s, m = self.scores["SUPPORT"], self.scores["MODELISATION"]
        p_support = (s + a) / (s + m + 2 * a)
        return p_support if label == "SUPPORT" else 1.0 - p_support


def _split_name(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    return (stem, ext.lower()) if dot and stem else (name, "")


def score_request(
    objet: str, description: str, file_names: Iterable[str] = (), lexicon: Lexicon | None = None
) -> KeywordScore:
    """Score a request's text and attachments against the lexicon (no I/O, ~tens of µs)."""
    lex = lexicon or load_lexicon()
    hits: Hits = {}
    lex.scan(_words(objet), lex.title_factor, hits)
    lex.scan(_words(description), 1.0, hits)
    file_hits: dict[str, float] = {}
    for name in file_names:
        stem, ext = _split_name(name)
        lex.scan(fold(stem).split(), lex.file_name_factor, hits)
        weight = lex.extensions.get(ext)
        if weight:
            file_hits[f".{ext}"] = weight

    # Evidence by (label, role) before damping, to decide which damping rules apply.
    by_role: dict[tuple[str, str], float] = {}
    for phrase, (factor, _) in hits.items():
        term = phrase.payload
        if term.label is not None and term.weight > 0:
            key = (term.label, term.role)
            by_role[key] = by_role.get(key, 0.0) + term.weight * factor
    if file_hits:
        by_role[(lex.file_label, lex.file_role)] = sum(file_hits.values())
    discounts: dict[tuple[str, str], float] = {}
    notes: list[str] = []
    for rule in lex.damping:
        trigger = sum([by_role.get(key, 0.0) for key in rule.when])  # a list sums faster
        if trigger > 0 and trigger >= rule.min_score:
            applied = rule.targets & by_role.keys()
            for target in applied:
                discounts[target] = min(discounts.get(target, 1.0), rule.factor)
            if applied:
                notes.append(f"{rule.why} (x{rule.factor:g})")

    scores = {"SUPPORT": 0.0, "MODELISATION": 0.0}
    evidence = {"SUPPORT": 0.0, "MODELISATION": 0.0}  # without the context roles
    roles: dict[str, list[str]] = {"SUPPORT": [], "MODELISATION": []}  # one per evidence hit
    contributions: dict[str, list[tuple[float, str]]] = {"SUPPORT": [], "MODELISATION": []}
    for phrase, (factor, words) in hits.items():
        term = phrase.payload
        if term.label is None or term.weight <= 0:
            continue
        value = term.weight * factor * discounts.get((term.label, term.role), 1.0)
        scores[term.label] += value
        if term.role not in lex.context_roles:
            evidence[term.label] += value
            roles[term.label].append(term.role)
        contributions[term.label].append((value, words))
    file_discount = discounts.get((lex.file_label, lex.file_role), 1.0)
    for ext, weight in file_hits.items():
        scores[lex.file_label] += weight * file_discount
        evidence[lex.file_label] += weight * file_discount
        roles[lex.file_label].append(lex.file_role)
        contributions[lex.file_label].append((weight * file_discount, f"file {ext}"))

    result = KeywordScore(label=None, confiance=0.5, scores=scores, smoothing=lex.smoothing)
    s, m = scores["SUPPORT"], scores["MODELISATION"]
    if s != m:
        result.label = "SUPPORT" if s > m else "MODELISATION"
        result.confiance = result.share(result.label)
        own, kinds = evidence[result.label], roles[result.label]
        lone_topic = len(kinds) == 1 and kinds[0] in lex.topic_roles
        if (own < lex.min_evidence or lone_topic) and result.confiance >= UNSURE_CAP:
            result.confiance = UNSURE_CAP
            why = ("one topic word only" if lone_topic
                   else f"{own:.2f} < {lex.min_evidence:g}")
            notes.append(f"too little evidence to decide alone ({why}): "
                         f"confiance capped at {UNSURE_CAP:g}")
    result.scores = {k: round(v, 3) for k, v in scores.items()}
    result.reasons = [f"keywords: SUPPORT {s:.2f} vs MODELISATION {m:.2f}"]
    for label in LABELS:
        top = sorted(contributions[label], reverse=True)[:4]
        if top:
            listed = ", ".join([f"'{text}' {value:.2f}" for value, text in top])
            result.reasons.append(f"{label}: {listed}")
    result.reasons.extend(notes)
    return result


def score(doc: Document) -> KeywordScore:
    """Keyword score of a document (objet, description, file names)."""
    return score_request(doc.objet, doc.description, doc.file_names())


def request_text(doc: Document) -> str:
    """What the LLM reads: the request as the client wrote it, with its attachments' names."""
    description = doc.description
    if len(description) > _LLM_MAX_CHARS:
        description = description[:_LLM_MAX_CHARS] + " [...]"
    lines = [f"Objet : {doc.objet}", f"Description : {description}"]
    names = doc.file_names()
    if names:
        lines.append("Fichiers joints : " + ", ".join(names))
    return "\n".join(lines)


def _decide(
    doc: Document, label: RequestType, confiance: float, classification: Classification
) -> Document:
    doc.type_final = label
    doc.confiance = round(min(max(confiance, 0.0), 1.0), 3)
    doc.reclassifie = label != doc.form_type
    doc.classification = classification
    return doc


def run(doc: Document, ctx: Context) -> Document:
    """Set type_final, confiance, reclassifie and classification (once).

    An LLM failure of any kind is logged and the form's type kept: classification never
    fails a request. A strict-mode ConfigError from `ctx.llm` does propagate (by design).
    """
    if doc.type_final is not None:
        return doc
    kw = score(doc)
    if kw.decided and kw.label is not None:
        reasons = [f"keywords decided {kw.label} (confiance {kw.confiance:.2f})", *kw.reasons]
        return _decide(doc, kw.label, kw.confiance,
                       Classification(method="keywords", reasons=reasons, scores=kw.scores))

    source = doc.form_type
    unsure = f"keywords unsure ({kw.label or 'no evidence'}, confiance {kw.confiance:.3f})"
    reasons = [unsure, *kw.reasons]
    usage: dict[str, int] | None = None
    llm = ctx.llm
    if llm is None:
        reasons.append("no LLM configured")
    else:
        try:
            verdict = llm.classify_request(request_text(doc))
        except Exception as exc:  # noqa: BLE001 - any LLM failure must fall back, not crash
            log.warning("%s: classify: LLM failed, keeping the form's type: %s",
                        doc.request_id, exc)
            reasons.append(f"LLM failed: {exc}")
        else:
            usage = dict(verdict.usage) if verdict.usage else None
            llm_reason = f"LLM ({llm.name}): {verdict.label} {verdict.confidence:.2f} - "
            llm_reason += verdict.reason.strip()[:300]
            if verdict.label not in LABELS:
                reasons.append(f"LLM answered an unknown label {verdict.label!r}")
            elif verdict.confidence >= CONFIDENCE_THRESHOLD:
                label: RequestType = "SUPPORT" if verdict.label == "SUPPORT" else "MODELISATION"
                return _decide(doc, label, verdict.confidence, Classification(
                    method="llm", reasons=[llm_reason, *reasons], scores=kw.scores, usage=usage))
            else:
                reasons.append(f"LLM unsure: {llm_reason}")
    reasons.insert(0, f"kept the form's type: {doc.source} -> {source}")
    return _decide(doc, source, kw.share(source), Classification(
        method="source", reasons=reasons, scores=kw.scores, usage=usage))
