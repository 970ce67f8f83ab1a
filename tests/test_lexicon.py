"""The shared phrase matcher: words, prefixes, phrases, longest match first, typos."""

from __future__ import annotations

import gc

import pytest

from handler_cli.lexicon import PhraseMatcher, built_once
from handler_cli.text import fold


def found(matcher: PhraseMatcher[str], text: str) -> list[tuple[str, str, bool]]:
    """(payload, matched words, by typo) for each match in the folded text."""
    tokens = fold(text).split()
    return [(phrase.payload, " ".join(tokens[start:end]), by_typo)
            for start, end, phrase, by_typo in matcher.scan(tokens)]


def test_words_prefixes_and_alternatives_match_folded_tokens() -> None:
    m: PhraseMatcher[str] = PhraseMatcher()
    m.add("bug", "bug")
    m.add("modélis*", "modelling")
    m.add("facture|reçu", "billing")

    assert found(m, "Un BUG dans la modélisation, et mon reçu ?") == [
        ("bug", "bug", False), ("modelling", "modelisation", False), ("billing", "recu", False)]


def test_the_longest_phrase_wins_and_consumes_its_words() -> None:
    m: PhraseMatcher[str] = PhraseMatcher()
    m.add("affiche", "word")
    m.add("s affiche pas", "phrase")
    m.add("pas", "negator")

    assert found(m, "le modèle ne s'affiche pas") == [("phrase", "s affiche pas", False)]


def test_an_exact_first_word_beats_a_prefix_and_a_longer_prefix_a_shorter_one() -> None:
    m: PhraseMatcher[str] = PhraseMatcher()
    m.add("mod*", "short prefix")
    m.add("modele*", "long prefix")
    m.add("modeles", "exact")

    assert found(m, "modeles modelerie modulaire") == [
        ("exact", "modeles", False), ("long prefix", "modelerie", False),
        ("short prefix", "modulaire", False)]


def test_rank_breaks_ties_between_equally_specific_terms() -> None:
    m: PhraseMatcher[str] = PhraseMatcher()
    m.add("rendu", "low", rank=1)
    m.add("rendu|rendus", "high", rank=3)

    assert found(m, "rendu") == [("high", "rendu", False)]


def test_a_phrase_cut_short_by_the_end_of_the_text_falls_back_to_a_shorter_term() -> None:
    m: PhraseMatcher[str] = PhraseMatcher()
    m.add("pas de souci", "phrase")
    m.add("pas", "word")

    assert found(m, "pas de") == [("word", "pas", False)]


def test_a_one_letter_typo_matches_only_long_fuzzy_words_without_an_exact_match() -> None:
    m: PhraseMatcher[str] = PhraseMatcher(fuzzy_min_length=7)
    m.add("paiement", "payment", fuzzy=True)
    m.add("facture", "invoice")  # not fuzzy
    m.add("telecharg*", "download", fuzzy=True)

    assert found(m, "paiemnet factrue telehcargement") == [
        ("payment", "paiemnet", True), ("download", "telehcargement", True)]
    assert found(m, "paiements") == [("payment", "paiements", True)]
    assert found(m, "pain") == []


def test_a_typo_in_the_first_word_of_a_phrase_still_finds_the_phrase() -> None:
    m: PhraseMatcher[str] = PhraseMatcher(fuzzy_min_length=5)
    m.add("livre|livree en retard", "late", fuzzy=True)

    assert found(m, "modèle lirvé en retard") == [("late", "lirve en retard", True)]
    assert found(m, "modèle lirvé à temps") == []  # the other words must match as written


def test_a_prefix_needs_one_more_letter_than_a_word_to_accept_typos() -> None:
    m: PhraseMatcher[str] = PhraseMatcher(fuzzy_min_length=5)
    m.add("charg* pas", "not loading", fuzzy=True)  # a 5-letter prefix: too short
    m.add("modelis*", "modelling", fuzzy=True)

    assert found(m, "ça ne change pas") == []
    assert found(m, "ça ne chrage pas") == []
    assert found(m, "modelsiation") == [("modelling", "modelsiation", True)]


def test_with_fuzzy_rest_a_typo_in_a_later_word_still_finds_the_phrase() -> None:
    strict: PhraseMatcher[str] = PhraseMatcher(fuzzy_min_length=5)
    tolerant: PhraseMatcher[str] = PhraseMatcher(fuzzy_min_length=5, fuzzy_rest=True)
    for m in (strict, tolerant):
        m.add("pouvez vous lancer|commencer", "go", fuzzy=True)

    assert found(strict, "pouvez-vous lanccer") == []
    assert found(tolerant, "pouvez-vous lanccer") == [("go", "pouvez vous lanccer", True)]
    assert found(tolerant, "pouvez-vous lire") == []


def test_a_short_later_word_is_never_read_as_a_typo() -> None:
    m: PhraseMatcher[str] = PhraseMatcher(fuzzy_min_length=5, fuzzy_rest=True)
    m.add("tout|toute noir|noire", "black", fuzzy=True)

    assert found(m, "toute notre gamme") == []
    assert found(m, "tout noire") == [("black", "tout noire", False)]


def test_a_token_with_digits_is_never_read_as_a_typo() -> None:
    m: PhraseMatcher[str] = PhraseMatcher(fuzzy_min_length=5)
    m.add("modele", "model", fuzzy=True)

    assert found(m, "model3 modele") == [("model", "modele", False)]


def test_a_number_glued_to_a_unit_starts_a_term_as_the_unit() -> None:
    m: PhraseMatcher[str] = PhraseMatcher(units=("cm", "mm"))
    m.add("cm de haut", "size")

    assert found(m, "90cm de haut, 12mm, xcm") == [("size", "90cm de haut", False)]


def test_terms_added_after_a_scan_are_found_next_time() -> None:
    m: PhraseMatcher[str] = PhraseMatcher()
    assert found(m, "devis") == []

    m.add("devis", "quote")

    assert found(m, "devis") == [("quote", "devis", False)]


@pytest.mark.parametrize("text", ["", "  ", "fichier|pièce_jointe manquant"])
def test_a_term_that_is_not_made_of_single_words_is_refused(text: str) -> None:
    m: PhraseMatcher[str] = PhraseMatcher("my lexicon")

    with pytest.raises(ValueError, match="my lexicon"):
        m.add(text, "x")


def test_parsed_words_expose_their_alternatives_to_the_reader() -> None:
    m: PhraseMatcher[str] = PhraseMatcher()

    words = m.words("non|pas merci*")

    assert [(sorted(w.exact), w.prefixes) for w in words] == [
        (["non", "pas"], ()), ([], ("merci",))]


def test_fold_is_the_plain_definition_however_fast_it_goes() -> None:
    """Lower-case, NFKD, combining marks dropped, [a-z0-9] runs: journals key on this."""
    import random
    import re
    import unicodedata

    def plain(text: str) -> str:
        decomposed = unicodedata.normalize("NFKD", text.lower())
        kept = "".join(c for c in decomposed if not unicodedata.combining(c))
        return re.sub(r"[^a-z0-9]+", " ", kept).strip()

    rng = random.Random(7)
    ranges = [(32, 0x250), (0x300, 0x370), (0x370, 0x3000), (0x1F300, 0x1F700), (0xFB00, 0xFB07)]
    texts = ["Le modèle 3D ne s'affiche pas !", "ŒUVRE ﬁnale", "plain ascii", "👍 ok"]
    texts += ["".join(chr(rng.randrange(*rng.choice(ranges))) for _ in range(rng.randrange(1, 20)))
              for _ in range(3000)]

    assert [fold(t) for t in texts] == [plain(t) for t in texts]


@pytest.mark.parametrize("collector_on", [True, False])
def test_a_lexicon_is_built_once_with_the_collector_paused_then_as_it_was(
    collector_on: bool,
) -> None:
    seen: list[bool] = []

    @built_once
    def build() -> dict[str, int]:
        seen.append(gc.isenabled())
        return {"terms": 1}

    was = gc.isenabled()
    try:
        gc.enable() if collector_on else gc.disable()
        first = build()
        assert build() is first and seen == [False]
        assert gc.isenabled() is collector_on
    finally:
        gc.enable() if was else gc.disable()
