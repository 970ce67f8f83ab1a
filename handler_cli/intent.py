"""What does a client's reply to a quote mean: validation, refus, question, none or unclear?

Read like a person would, not by spotting words: the quoted history and signature are cut
first (`handler_cli.reply_text`: our own quote e-mail is full of "?" and "valider"), a
negation flips what it governs ("je ne valide pas", "ce n'est pas OK" are refusals), a
question outranks an approval ("OK mais quel délai ?" needs an answer before any work
starts), a question needs no "?" ("je voudrais comprendre comment ... avant de m'engager"),
a polite order keeps its "?" ("pouvez-vous lancer la modélisation ?" is a go), emoji count
(👍 leans to a go, not enough alone), and auto-replies, plain thanks or "je regarde demain"
mean nothing. The phrases live in `handler_cli/data/reply_lexicon.json`.

`confiance` follows the same rule as classification: below 0.70 the LLM is asked (when one
is given); its answer counts from 0.70. Otherwise, or when it fails, the reading is
`unclear` (method "fallback", the keyword guess in `guess`): the poll forwards it to the
admin, nobody acts on it. `none` is kept for what is confidently not an answer: an
auto-reply, an empty reply, thanks or a "je reviens vers vous" with little else in it. A
reply whose words are mostly not recognised is never a confident `none`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from handler_cli.data import load_json
from handler_cli.lexicon import PhraseMatcher, built_once
from handler_cli.reply_text import split_reply, strip_quoted
from handler_cli.text import fold

if TYPE_CHECKING:
    from handler_cli.services import LLM

log = logging.getLogger("handler_cli")

Intent = Literal["validation", "refus", "question", "none", "unclear"]
INTENTS: tuple[Intent, ...] = ("validation", "refus", "question", "none", "unclear")
CONFIDENCE_THRESHOLD = 0.70
UNSURE_CAP = 0.69  # the most a reading gets when it should not decide alone
_MAX_LLM_CHARS = 4000

__all__ = ["CONFIDENCE_THRESHOLD", "INTENTS", "Intent", "IntentResult", "ReplyLexicon",
           "load_reply_lexicon", "read_intent", "read_keywords", "strip_quoted"]


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
        self.fuzzy_factor = float(data.get("fuzzy_factor", 0.75))
        self.none_max_unexplained = int(data.get("none_max_unexplained", 2))
        self.flip = {k: (v["to"], float(v["factor"]))
                     for k, v in data.get("negation_flip", {}).items()}
        self.negators = frozenset(data.get("negators", ()))
        self.negators_after = frozenset(data.get("negators_after", ()))
        self.contrast = frozenset(data.get("contrast", ()))
        self.filler = frozenset(data.get("filler", ()))
        self.emoji = str.maketrans({e: f" {word} " for word, chars in data.get("emoji", {}).items()
                                    for e in chars})
        self._self_negating = self.negators | {"plus", "sans"}
        self.matcher: PhraseMatcher[_Term] = PhraseMatcher(
            "reply lexicon", fuzzy_min_length=int(data.get("fuzzy_min_length", 5)),
            fuzzy_rest=True, fuzzy_rest_min_length=data.get("fuzzy_rest_min_length"))
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
                self.matcher.add(text, term, words=words, fuzzy=bool(group.get("fuzzy", True)))

    def scan(self, tokens: list[str]) -> list[tuple[int, int, _Term, bool]]:
        """(start, end, term, by_typo) for each phrase found, longest first, left to right."""
        return [(start, end, phrase.payload, by_typo)
                for start, end, phrase, by_typo in self.matcher.scan(tokens)]


@built_once
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
    guess: Intent = "none"  # what the keywords read, however unsure


_EN_NEGATIVE_STEMS = frozenset({"don", "doesn", "didn", "isn", "aren", "wasn", "won", "can",
                                "couldn", "wouldn", "shouldn", "haven", "hasn"})
_URL = re.compile(r"(?:https?://|www\.)\S+|\S+@\S+\.\w+", re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*|[.!?]+")
_CLAUSE = re.compile(r"[,;:]")


def _tokens(clause: str, lex: ReplyLexicon) -> list[str]:
    """Folded words, emoji as words ("emojiok"), English contractions joined ("dont")."""
    out: list[str] = []
    for tok in fold(clause.translate(lex.emoji)).split():
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
    unexplained: list[str] = field(default_factory=list)  # words no phrase accounts for
    after_contrast: int = 0  # how many of them follow a "mais" / "but"

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
        for clause in _CLAUSE.split(sentence):
            segment: list[str] = []
            segments: list[tuple[list[str], float]] = []
            for tok in _tokens(clause, lex):
                if tok in lex.contrast:
                    segments.append((segment, factor))
                    segment, factor = [], lex.contrast_factor
                else:
                    segment.append(tok)
            segments.append((segment, factor))
            for tokens, weight_factor in segments:
                before = len(ev.unexplained)
                polite_order |= _read_segment(tokens, weight_factor, lex, ev)
                if weight_factor != 1.0:
                    ev.after_contrast += len(ev.unexplained) - before
        if is_question and not polite_order:
            ev.add("question", f"?{len(ev.seen)}", lex.question_mark_weight,
                   f"question mark: '{sentence.strip()[:60]}'")

    s = ev.scores
    reasons = list(ev.notes)
    if s["out_of_office"] > 0:
        return "none", 0.95, ["automatic reply / out of office", *reasons]
    if s["question"] >= lex.question_threshold:
        conf = min(0.95, 0.5 + s["question"] / 10)
        if s["validation"] or s["refus"]:
            reasons.append("a question outranks approval or refusal")
        return "question", conf, reasons
    v, r, q, a = s["validation"], s["refus"], s["question"], lex.smoothing
    if v or r:
        # A question below the threshold is still evidence against acting: it counts in the
        # share ("avant de donnr mon accord" with a typo must not read as a sure go).
        intent: Intent = "validation" if v >= r else "refus"
        conf = (max(v, r) + a) / (v + r + q + 2 * a)
        return intent, conf, [f"validation {v:.2f} vs refus {r:.2f} (question {q:.2f})",
                              *reasons]
    if s["none"] > 0 and q > 0:
        # A thank-you beside a question too weak to decide ("hello, is thhere a discount",
        # with a typo): the client may be waiting for an answer, so never a sure "nothing".
        intent = "question" if q > s["none"] else "none"
        conf = (max(q, s["none"]) + a) / (q + s["none"] + 2 * a)
        return intent, conf, [f"thanks or acknowledgement {s['none']:.2f} vs question "
                              f"{q:.2f}", *reasons]
    unexplained = len(ev.unexplained)
    # "Merci, mais ..." : what follows the "mais" is what the client means; unread, it is
    # not a thank-you.
    if s["none"] > 0 and unexplained <= lex.none_max_unexplained and not ev.after_contrast:
        return "none", 0.85, ["thanks or acknowledgement only", *reasons]
    if s["none"] > 0:
        return "none", 0.6, [f"thanks or acknowledgement, but {unexplained} word(s) not "
                             f"understood: {' '.join(ev.unexplained[:8])}", *reasons]
    return "none", 0.4, ["nothing recognised" + (
        f": {' '.join(ev.unexplained[:8])}" if unexplained else "")]


def _read_segment(tokens: list[str], factor: float, lex: ReplyLexicon, ev: _Evidence) -> bool:
    """Score one clause segment; True when it holds an (unnegated) polite order."""
    matches = lex.scan(tokens)
    # Positions taken by a phrase, with its intent: the words of a refusal ("ne souhaite
    # plus", "non", "decided not to") still negate what follows them; those of "pas de
    # souci" do not.
    consumed = {k: term.intent for start, end, term, _ in matches for k in range(start, end)}
    ev.unexplained.extend(t for k, t in enumerate(tokens)
                          if k not in consumed and t not in lex.filler and not t.isdigit())
    polite_order = False
    for start, end, term, by_typo in matches:
        if term.intent is None or term.weight <= 0:
            continue
        intent, value = term.intent, term.weight * factor
        if by_typo:
            value *= lex.fuzzy_factor
        words = " ".join(tokens[start:end])
        if intent in lex.flip and not term.no_flip:
            before = [tokens[k] for k in range(max(0, start - lex.negation_window), start)
                      if consumed.get(k, "refus") == "refus"]
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


def read_keywords(text: str) -> IntentResult:
    """The keywords' reading of a reply (raw or already stripped), however unsure.

    Method "keywords"; `read_intent` decides what an unsure one becomes.
    """
    parts = split_reply(text)
    if not parts.own.strip():
        if not parts.doubtful.strip():
            return IntentResult("none", 0.9, "keywords", ["empty reply once quotes are removed"])
        # Only signature lines are left: an answer typed under the signature with no blank
        # line looks like one. Read them, never trusting the result.
        intent, conf, reasons = _read_keywords(parts.doubtful, load_reply_lexicon())
        conf = min(conf, UNSURE_CAP)
        reasons = ["only the signature block holds words: read, not trusted", *reasons]
        return IntentResult(intent, round(conf, 3), "keywords", reasons, guess=intent)
    intent, conf, reasons = _read_keywords(parts.own, load_reply_lexicon())
    return IntentResult(intent, round(conf, 3), "keywords", reasons, guess=intent)


def read_intent(text: str, llm: LLM | None = None) -> IntentResult:
    """Read a reply (raw or already stripped): keywords, then the LLM when unsure.

    Never raises because of the LLM: any failure is logged and the reading is `unclear`.
    """
    keywords = read_keywords(text)
    if keywords.confiance >= CONFIDENCE_THRESHOLD:
        return keywords

    reasons = [f"keywords unsure ({keywords.guess}, confiance {keywords.confiance:.3f})",
               *keywords.reasons]
    usage: dict[str, int] | None = None
    if llm is None:
        reasons.append("no LLM configured")
    else:
        body = split_reply(text)
        try:
            verdict = llm.classify_reply((body.own or body.doubtful)[:_MAX_LLM_CHARS])
        except Exception as exc:  # noqa: BLE001 - any LLM failure falls back, never crashes
            log.warning("reply intent: LLM failed, the reply goes to a person: %s", exc)
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
                                    [said, *reasons], usage, guess=keywords.guess)
            else:
                reasons.append(f"LLM unsure: {said}")
    return IntentResult("unclear", keywords.confiance, "fallback", reasons, usage,
                        guess=keywords.guess)
