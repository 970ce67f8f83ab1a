"""One phrase matcher for every keyword reader (classification, reply intent).

Terms are written the way a person tunes a lexicon: a word (`bug`), a prefix (`modelis*`),
alternatives (`fichier|piece*`) and phrases of several such words (`ne s affiche pas`). They
are compiled into an index by first word; `scan` walks a token list (from
`handler_cli.text.fold`) left to right and keeps, at each position, the best term: the
longest phrase first, then an exact first word before a prefix, a longer prefix before a
shorter one, then the higher `rank`. A matched phrase consumes its words.

Optionally, terms added with `fuzzy=True` also match when their first word is one typo away
(a letter added, dropped, replaced, or two swapped) from a token no term matches exactly: a
word of at least `fuzzy_min_length` letters, a prefix of at least one more (a short prefix
one edit away accepts too much: "chang" is one letter from "charg*"). Typos are looked up
once per distinct token (memo), among the fuzzy words of the same first letter. With
`fuzzy_rest`, a typo is also accepted in the other words of a fuzzy phrase ("pouvez-vous
lanccer") of at least `fuzzy_rest_min_length` letters (by default one more than
`fuzzy_min_length`: "toute notre" is not "tout noire"), remembered per token and word.
What a match is worth (weights, negation, damping) stays with each reader: a term carries
an opaque `payload`.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeAlias, TypeVar

from handler_cli.text import fold

T = TypeVar("T")

_MEMO_LIMIT = 200_000


class Word(NamedTuple):
    """One position of a term: the tokens it accepts as is, and the prefixes it accepts."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]

@dataclass(slots=True, eq=False)
class Phrase(Generic[T]):
    """One compiled term for one alternative of its first word (hashable by identity)."""

    text: str
    payload: T
    size: int  # number of words
    rest: tuple[Word, ...]  # words 2..n
    exact_first: bool  # the first word is an exact word, not a prefix
    stem_length: int  # length of the first word (or prefix)
    fuzzy: bool  # its first word is open to one-typo matches
    rank: float  # last tie-breaker between candidates, higher first
    typos: bool = False  # added with fuzzy=True: its other words too, with `fuzzy_rest`


# A term found in a token list: (start, end, phrase, by_typo) for tokens[start:end], by_typo
# when the first word matched with a typo. A plain tuple: scanning is on the hot path.
Match: TypeAlias = tuple[int, int, Phrase[T], bool]


def built_once(build: Callable[[], T]) -> Callable[[], T]:
    """`build`, run once per process with the cyclic garbage collector paused.

    A lexicon lives as long as the process: collecting while its thousands of objects are
    made (a pass every 700 allocations) is wasted work, a third of the 5 ms the request
    lexicon takes to index on a one-document `classify`.
    """

    @functools.cache
    def once() -> T:
        paused = gc.isenabled()
        gc.disable()
        try:
            return build()
        finally:
            if paused:
                gc.enable()

    return functools.update_wrapper(once, build)


def split_words(text: str) -> list[str]:
    """A term's words: apostrophes and hyphens separate words, as `fold` does."""
    return text.replace("'", " ").replace("\u2019", " ").replace("-", " ").split()


def _within_one_edit(a: str, b: str) -> bool:
    """True when `b` is `a` with one letter added, dropped, replaced or two swapped."""
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    if la == lb:
        diff = [i for i in range(la) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        return (
            len(diff) == 2 and diff[1] == diff[0] + 1
            and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
        )
    if la > lb:
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i:] == b[i + 1:]


class PhraseMatcher(Generic[T]):
    """Terms indexed by first word, with a per-token memo of the candidates.

    `name` prefixes load errors ("lexicon: ..."). A number glued to one of the `units`
    ("90cm") is looked up as the unit alone when it starts a term, as if written "90 cm".
    """

    def __init__(
        self,
        name: str = "lexicon",
        *,
        fuzzy_min_length: int = 7,
        units: Sequence[str] = (),
        fuzzy_rest: bool = False,
        fuzzy_rest_min_length: int | None = None,
    ) -> None:
        self.name = name
        self.fuzzy_min_length = fuzzy_min_length
        # Also accept a typo in the other words of a fuzzy phrase (memoised, see _near).
        self.fuzzy_rest = fuzzy_rest
        self.fuzzy_rest_min_length = (fuzzy_min_length + 1 if fuzzy_rest_min_length is None
                                      else fuzzy_rest_min_length)
        self._units = tuple(units)
        self._exact: dict[str, list[Phrase[T]]] = {}
        self._prefix: dict[int, dict[str, list[Phrase[T]]]] = {}  # by prefix length
        # Terms open to typos in their first word, by first letter: (word, is_prefix, phrase).
        self._fuzzy: dict[str, list[tuple[str, bool, Phrase[T]]]] = {}
        self._memo: dict[str, tuple[tuple[Phrase[T], bool], ...]] = {}
        # (token, id of a word's alternatives, its prefixes) -> one typo away; the words live
        # as long as the matcher, so their ids stay theirs.
        self._near_memo: dict[tuple[str, int, tuple[str, ...]], bool] = {}

    # -- compiling -----------------------------------------------------------------------------

    def words(self, text: str) -> tuple[Word, ...]:
        """Parse a term: words separated by spaces, '|' alternatives, '*' for a prefix."""
        words = split_words(text)
        if not words:
            raise ValueError(f"{self.name}: empty term {text!r}")
        return tuple(self._word(w, text) for w in words)

    def _word(self, word: str, text: str) -> Word:
        exact: set[str] = set()
        prefixes: list[str] = []
        for alt in word.split("|"):
            star = alt.endswith("*")
            bare = alt[:-1] if star else alt
            # Most entries are written folded already; fold() only the others (load time).
            token = bare if bare.isascii() and bare.isalnum() and bare == bare.lower() else fold(bare)
            if not token or " " in token:
                raise ValueError(f"{self.name}: '{text}': '{alt}' is not a single word")
            if star:
                prefixes.append(token)
            else:
                exact.add(token)
        return Word(frozenset(exact), tuple(prefixes))

    def add(
        self, text: str, payload: T, *, words: Sequence[Word] | None = None,
        fuzzy: bool = False, rank: float = 0.0,
    ) -> None:
        """Index the term `text` (or the `words` already parsed from it) with its payload."""
        words = self.words(text) if words is None else tuple(words)
        if not words:
            raise ValueError(f"{self.name}: empty term {text!r}")
        size, rest = len(words), tuple(words[1:])
        first = words[0]
        for token in first.exact:
            phrase = Phrase(text, payload, size, rest, True, len(token),
                            fuzzy and len(token) >= self.fuzzy_min_length, rank, fuzzy)
            self._exact.setdefault(token, []).append(phrase)
            if phrase.fuzzy:
                self._fuzzy.setdefault(token[0], []).append((token, False, phrase))
        for stem in first.prefixes:
            phrase = Phrase(text, payload, size, rest, False, len(stem),
                            fuzzy and len(stem) > self.fuzzy_min_length, rank, fuzzy)
            self._prefix.setdefault(len(stem), {}).setdefault(stem, []).append(phrase)
            if phrase.fuzzy:
                self._fuzzy.setdefault(stem[0], []).append((stem, True, phrase))
        self._memo.clear()

    # -- matching ------------------------------------------------------------------------------

    def candidates(self, token: str) -> tuple[tuple[Phrase[T], bool], ...]:
        """Terms whose first word accepts `token`, best first, each with a 'by typo' flag."""
        found = self._memo.get(token)
        return found if found is not None else self._remember(token)

    def _remember(self, token: str) -> tuple[tuple[Phrase[T], bool], ...]:
        """Look the candidates of `token` up in the index and keep them in the memo."""
        lookup = token
        if self._units and token[:1].isdigit():
            for unit in self._units:
                if token.endswith(unit) and token[:-len(unit)].isdigit():
                    lookup = unit
                    break
        phrases = list(self._exact.get(lookup, ()))
        width = len(lookup)
        for length, stems in self._prefix.items():
            if width >= length:
                more = stems.get(lookup[:length])
                if more:
                    phrases.extend(more)
        result: tuple[tuple[Phrase[T], bool], ...]
        by_typo = False
        if not phrases and self._fuzzy and len(lookup) >= self.fuzzy_min_length \
                and lookup.isalpha():
            phrases, by_typo = self._typo_matches(lookup), True
        phrases.sort(key=lambda p: (-p.size, not p.exact_first, -p.stem_length, -p.rank))
        result = tuple((p, by_typo) for p in phrases)
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[token] = result
        return result

    def _typo_matches(self, token: str) -> list[Phrase[T]]:
        hits: list[Phrase[T]] = []
        width = len(token)
        for word, is_prefix, phrase in self._fuzzy.get(token[0], ()):
            if not is_prefix and abs(len(word) - width) > 1:
                continue
            if is_prefix:
                n = len(word)
                ok = any(
                    _within_one_edit(token[:k], word) for k in (n - 1, n, n + 1)
                    if k <= len(token)
                )
            else:
                ok = _within_one_edit(token, word)
            if ok:
                hits.append(phrase)
        return hits

    def _near(self, token: str, exact: frozenset[str], prefixes: tuple[str, ...]) -> bool:
        """One typo away from one of a phrase word's alternatives (long enough words only)."""
        # By default one letter more than a first word: short common words sit one edit away
        # from lexicon words ("notre" / "noire").
        if len(token) < self.fuzzy_rest_min_length:
            return False
        key = (token, id(exact), prefixes)
        near = self._near_memo.get(key)
        if near is None:
            if len(self._near_memo) >= _MEMO_LIMIT:
                self._near_memo.clear()
            # A word the lexicon knows as written is no typo ("create" is not "created").
            near = self._near_memo[key] = (token.isalpha() and not self._known(token)
                                           and self._one_edit(token, exact, prefixes))
        return near

    def _known(self, token: str) -> bool:
        return any(not by_typo for _, by_typo in self.candidates(token))

    def _one_edit(self, token: str, exact: frozenset[str], prefixes: tuple[str, ...]) -> bool:
        least = self.fuzzy_rest_min_length
        if any(len(w) >= least and _within_one_edit(token, w) for w in exact):
            return True
        return any(
            len(p) > self.fuzzy_min_length and any(
                _within_one_edit(token[:k], p) for k in (len(p) - 1, len(p), len(p) + 1)
                if k <= len(token))
            for p in prefixes)

    def scan(self, tokens: Sequence[str]) -> list[Match[T]]:
        """Every term found in `tokens`, left to right, the best one at each position."""
        found: list[Match[T]] = []
        i, n = 0, len(tokens)
        memo = self._memo
        # Hot path (runs once per token): the memo lookup is inlined, plain tuples are kept.
        while i < n:
            step = 1
            token = tokens[i]
            found_here = memo.get(token)
            if found_here is None:
                found_here = self._remember(token)
            for phrase, by_typo in found_here:
                size = phrase.size
                if size > 1:
                    if i + size > n:
                        continue
                    ok = True
                    for k, (exact, prefixes) in enumerate(phrase.rest, i + 1):
                        tok = tokens[k]
                        if tok not in exact and not (prefixes and tok.startswith(prefixes)):
                            if self.fuzzy_rest and phrase.typos and self._near(tok, exact, prefixes):
                                by_typo = True
                                continue
                            ok = False
                            break
                    if not ok:
                        continue
                found.append((i, i + size, phrase, by_typo))
                step = size
                break
            i += step
        return found
