"""What does a client's reply to a quote mean: validation, refus, question or nothing?

Read like a person would, not by spotting words: the quoted history and signature are cut
first (our own quote e-mail is full of "?" and "valider"), a negation flips what it governs
("je ne valide pas", "ce n'est pas OK" are refusals), a question outranks an approval ("OK
mais quel délai ?" needs an answer before any work starts), a polite order keeps its "?"
("pouvez-vous lancer la modélisation ?" is a go), and auto-replies or plain thanks mean
nothing. The phrases live in `handler_cli/data/reply_lexicon.json`.

`confiance` follows the same rule as classification: below 0.70 the LLM is asked (when one
is given); its answer counts from 0.70; otherwise, or when it fails, the best keyword guess
is kept with method "fallback" (unsure: callers should not start work on it).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from handler_cli.data import load_json
from handler_cli.lexicon import PhraseMatcher
from handler_cli.text import fold

if TYPE_CHECKING:
    from handler_cli.services import LLM

log = logging.getLogger("handler_cli")

Intent = Literal["validation", "refus", "question", "none"]
INTENTS: tuple[Intent, ...] = ("validation", "refus", "question", "none")
CONFIDENCE_THRESHOLD = 0.70
_MAX_LLM_CHARS = 4000

# -- quoted history and signatures ------------------------------------------------------------

_I = re.IGNORECASE | re.MULTILINE
_CUTS = (
    # "Le lun. 3 mars 2025 à 10:12, Valione <x@y.fr> a écrit :" (Gmail wraps it on 2-3 lines)
    re.compile(r"^[ \t]*Le\b[^\n]{0,300}(?:\n[^\n]{0,300}){0,2}?\ba\s+[ée]crit\s*:", _I),
    re.compile(r"^[ \t]*On\b[^\n]{0,300}(?:\n[^\n]{0,300}){0,2}?\bwrote\s*:", _I),
    # Outlook: "De : ..." followed within a few lines by "Envoyé : ..." / "Sent: ..."
    re.compile(r"^[ \t]*\*?(?:De|From)\s*:\*?[^\n]*\n(?:[^\n]*\n){0,3}?[ \t]*\*?"
               r"(?:Envoy[ée]|Sent|Date|[ÀA]|To)\s*:", _I),
    re.compile(r"^[ \t]*-{2,}\s*(?:Original Message|Message d'origine|Message original|"
               r"Forwarded message|Message transf[ée]r[ée])\s*-{2,}", _I),
    re.compile(r"^[ \t]*_{10,}[ \t]*$", _I),
    # Signature separator, and what mobile clients append.
    re.compile(r"^--[ \t]*$", re.MULTILINE),
    re.compile(r"^[ \t]*(?:Envoy[ée] (?:de|depuis) (?:mon|ma|l'application)|Sent from my|"
               r"Get Outlook for|T[ée]l[ée]charger Outlook pour|Obtenir Outlook pour)\b", _I),
)
_ATTRIBUTION = (_CUTS[0], _CUTS[1])
_QUOTED_LINE = re.compile(r"^[ \t]*>.*$\n?", re.MULTILINE)


def _first_cut(text: str, patterns: tuple[re.Pattern[str], ...]) -> int:
    starts = [m.start() for p in patterns if (m := p.search(text))]
    return min(starts, default=len(text))


def strip_quoted(text: str) -> str:
    """The client's own words: no quoted history, attribution lines or signature.

    Top-posting (the usual case) keeps what comes before the first quote marker. When the
    client answered below the quote (bottom-posting), the '>' lines and the attribution
    line are removed instead and the text after them is kept.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    head = text[:_first_cut(text, _CUTS)]
    head = _QUOTED_LINE.sub("", head).strip()
    if head:
        return _tidy(head)
    # Bottom-posting: drop quoted lines and attributions, then cut at the signature.
    rest = _QUOTED_LINE.sub("", text)
    for pattern in _ATTRIBUTION:
        rest = pattern.sub("", rest)
    rest = rest[:_first_cut(rest, _CUTS[2:])]
    return _tidy(rest.strip())


def _tidy(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", text)


# -- the reply lexicon ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class _Term:
    text: str
    intent: str | None  # validation/refus/question/none/out_of_office, None = neutral
    weight: float
    order: bool
    start_only: bool
    no_flip: bool  # the phrase holds its own negation ("pas de souci", "non merci")


class ReplyLexicon:
    """The compiled reply lexicon and its reading rules."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.smoothing = float(data.get("smoothing", 1.0))
        self.question_mark_weight = float(data.get("question_mark_weight", 4.0))
        self.question_threshold = float(data.get("question_threshold", 2.5))
        self.negation_window = int(data.get("negation_window", 3))
        self.contrast_factor = float(data.get("contrast_factor", 1.5))
        self.flip = {k: (v["to"], float(v["factor"]))
                     for k, v in data.get("negation_flip", {}).items()}
        self.negators = frozenset(data.get("negators", ()))
        self.negators_after = frozenset(data.get("negators_after", ()))
        self.contrast = frozenset(data.get("contrast", ()))
        self._self_negating = self.negators | {"plus", "sans"}
        self.matcher: PhraseMatcher[_Term] = PhraseMatcher("reply lexicon")
        seen: set[str] = set()
        for group in data["groups"]:
            for raw in group["terms"]:
                text, weight = (raw, group["weight"]) if isinstance(raw, str) else raw
                if text in seen:
                    raise ValueError(f"reply lexicon: '{text}' is listed twice")
                seen.add(text)
                words = self.matcher.words(text)
                no_flip = any(word.exact & self._self_negating for word in words)
                term = _Term(text, group.get("intent"), float(weight), bool(group.get("order")),
                             bool(group.get("start_only")), no_flip)
                self.matcher.add(text, term, words=words)

    def scan(self, tokens: list[str]) -> list[tuple[int, int, _Term]]:
        """(start, end, term) for each phrase found, longest first, left to right."""
        return [(start, end, phrase.payload)
                for start, end, phrase, _ in self.matcher.scan(tokens)]


@lru_cache(maxsize=1)
def load_reply_lexicon() -> ReplyLexicon:
    return ReplyLexicon(load_json("reply_lexicon.json"))


# -- reading ----------------------------------------------------------------------------------


@dataclass
class IntentResult:
    """The reading of one reply, with what decided it."""

    intent: Intent
    confiance: float
    method: Literal["keywords", "llm", "fallback"]
    reasons: list[str] = field(default_factory=list)
    usage: dict[str, int] | None = None


_EN_NEGATIVE_STEMS = frozenset({"don", "doesn", "didn", "isn", "aren", "wasn", "won", "can",
                                "couldn", "wouldn", "shouldn", "haven", "hasn"})
_URL = re.compile(r"(?:https?://|www\.)\S+|\S+@\S+\.\w+", re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*|[.!?]+")


def _tokens(clause: str) -> list[str]:
    """Folded words, English contractions joined ("don't" -> "dont")."""
    out: list[str] = []
    for tok in fold(clause).split():
        if tok == "t" and out and out[-1] in _EN_NEGATIVE_STEMS:
            out[-1] += "t"
        else:
            out.append(tok)
    return out


@dataclass
class _Evidence:
    scores: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("validation", "refus", "question", "none", "out_of_office"), 0.0))
    seen: dict[tuple[str, str], float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, intent: str, key: str, value: float, note: str) -> None:
        best = self.seen.get((intent, key), 0.0)
        if value > best:
            self.scores[intent] += value - best
            self.seen[(intent, key)] = value
            self.notes.append(note)


def _read_keywords(body: str, lex: ReplyLexicon) -> tuple[Intent, float, list[str]]:
    ev = _Evidence()
    cleaned = _URL.sub(" ", body)
    for sentence in _SENTENCE.findall(cleaned):
        is_question = "?" in sentence
        polite_order = False
        factor = 1.0
        for clause in re.split(r"[,;:]", sentence):
            segment: list[str] = []
            segments: list[tuple[list[str], float]] = []
            for tok in _tokens(clause):
                if tok in lex.contrast:
                    segments.append((segment, factor))
                    segment, factor = [], lex.contrast_factor
                else:
                    segment.append(tok)
            segments.append((segment, factor))
            for tokens, weight_factor in segments:
                polite_order |= _read_segment(tokens, weight_factor, lex, ev)
        if is_question and not polite_order:
            ev.add("question", f"?{len(ev.seen)}", lex.question_mark_weight,
                   f"question mark: '{sentence.strip()[:60]}'")

    s = ev.scores
    reasons = [n for n in ev.notes]
    if s["out_of_office"] > 0:
        return "none", 0.95, ["automatic reply / out of office", *reasons]
    if s["question"] >= lex.question_threshold:
        conf = min(0.95, 0.5 + s["question"] / 10)
        if s["validation"] or s["refus"]:
            reasons.append("a question outranks approval or refusal")
        return "question", conf, reasons
    v, r, a = s["validation"], s["refus"], lex.smoothing
    if v or r:
        intent: Intent = "validation" if v >= r else "refus"
        conf = (max(v, r) + a) / (v + r + 2 * a)
        return intent, conf, [f"validation {v:.2f} vs refus {r:.2f}", *reasons]
    if s["none"] > 0:
        return "none", 0.85, ["thanks or acknowledgement only", *reasons]
    return "none", 0.4, ["nothing recognised"]


def _read_segment(tokens: list[str], factor: float, lex: ReplyLexicon, ev: _Evidence) -> bool:
    """Score one clause segment; True when it holds an (unnegated) polite order."""
    matches = lex.scan(tokens)
    consumed = {k for start, end, _ in matches for k in range(start, end)}
    polite_order = False
    for start, end, term in matches:
        if term.intent is None or term.weight <= 0:
            continue
        intent, value = term.intent, term.weight * factor
        words = " ".join(tokens[start:end])
        if intent in lex.flip and not term.no_flip:
            before = [tokens[k] for k in range(max(0, start - lex.negation_window), start)
                      if k not in consumed]
            after = tokens[end] if end < len(tokens) and end not in consumed else ""
            if any(t in lex.negators for t in before) or after in lex.negators_after:
                intent, flip_factor = lex.flip[intent]
                value *= flip_factor
                words = f"negated '{words}'"
                ev.add(intent, term.text + "~", value, f"{intent}: {words} {value:.2f}")
                continue
        if term.start_only and start > 0:
            value /= 2
        if term.order:
            polite_order = True
        ev.add(intent, term.text, value, f"{intent}: '{words}' {value:.2f}")
    return polite_order


def read_intent(text: str, llm: LLM | None = None) -> IntentResult:
    """Read a reply (raw or already stripped): keywords, then the LLM when unsure.

    Never raises because of the LLM: any failure is logged and the keyword guess kept.
    """
    body = strip_quoted(text)
    if not body.strip():
        return IntentResult("none", 0.9, "keywords", ["empty reply once quotes are removed"])
    intent, conf, reasons = _read_keywords(body, load_reply_lexicon())
    conf = round(conf, 3)
    if conf >= CONFIDENCE_THRESHOLD:
        return IntentResult(intent, conf, "keywords", reasons)

    reasons = [f"keywords unsure ({intent}, confiance {conf:.3f})", *reasons]
    usage: dict[str, int] | None = None
    if llm is None:
        reasons.append("no LLM configured")
    else:
        try:
            verdict = llm.classify_reply(body[:_MAX_LLM_CHARS])
        except Exception as exc:  # noqa: BLE001 - any LLM failure falls back, never crashes
            log.warning("reply intent: LLM failed, keeping the keyword guess: %s", exc)
            reasons.append(f"LLM failed: {exc}")
        else:
            usage = dict(verdict.usage) if verdict.usage else None
            said = f"LLM ({llm.name}): {verdict.label} {verdict.confidence:.2f} - "
            said += verdict.reason.strip()[:300]
            if verdict.label not in INTENTS:
                reasons.append(f"LLM answered an unknown label {verdict.label!r}")
            elif verdict.confidence >= CONFIDENCE_THRESHOLD:
                label: Intent = verdict.label  # type: ignore[assignment]
                return IntentResult(label, round(verdict.confidence, 3), "llm",
                                    [said, *reasons], usage)
            else:
                reasons.append(f"LLM unsure: {said}")
    return IntentResult(intent, conf, "fallback", reasons, usage)
