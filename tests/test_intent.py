"""Reading a client's reply: quotes and signatures cut, negations, questions, the LLM path."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from handler_cli.config import load_settings
from handler_cli.intent import ReplyLexicon, load_reply_lexicon, read_intent, strip_quoted
from handler_cli.services.llm.claude import ClaudeLLM
from tests.conftest import clean_environ
from tests.fakes.messages_api import FakeMessagesAPI, messages_api
from tests.test_classify import load_bench

QUOTE_FR = (
    "Le mar. 4 mars 2025 à 14:32, Valione Services <no-reply@valione-services.com> a écrit :\n"
    "> Votre devis est de 2 crédits. Pouvez-vous le valider ?\n"
    "> Une question ? Répondez à ce message.\n"
)


# -- strip_quoted ------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "kept"), [
    ("Je valide.\n\n" + QUOTE_FR, "Je valide."),
    ("Je valide.\n\nLe jeu. 6 mars 2025 à 09:05, Valione Services <\n"
     "no-reply@valione-services.com> a écrit :\n\n> Des questions ?\n", "Je valide."),
    ("Go ahead.\n\nOn Tue, Mar 4, 2025 at 2:32 PM Valione <no-reply@x.com> wrote:\n> OK?\n",
     "Go ahead."),
    ("D'accord.\n\n________________________________\nDe : Valione <a@b.fr>\n"
     "Envoyé : mardi 4 mars 2025 14:32\nÀ : moi\nObjet : Devis\n\nPourquoi pas ?", "D'accord."),
    ("Ok.\n\n-----Message d'origine-----\nDe : Valione\nNon merci ?", "Ok."),
    ("Parfait.\n-- \nJean Dupont\nUne question ? Appelez-nous", "Parfait."),
    ("Oui.\n\nEnvoyé de mon iPhone\n\n> Pourquoi ?", "Oui."),
    ("Ligne un\n> citée ?\nLigne deux", "Ligne un\nLigne deux"),
])
def test_strip_quoted_keeps_only_the_clients_own_words(raw: str, kept: str) -> None:
    assert strip_quoted(raw) == kept


def test_strip_quoted_keeps_an_answer_written_below_the_quote() -> None:
    raw = QUOTE_FR + "\nOui je valide, merci.\n-- \nClaire"

    assert strip_quoted(raw) == "Oui je valide, merci."


PHONE_QUOTE = (
    "Le 4 mars 2026 à 10:12, Valione Services <no-reply@valione-services.com> a écrit :\n\n"
    "> Notre estimation : 1 crédit.\n> Pour lancer la modélisation, répondez « Je valide ».\n"
    "> Une question ? Répondez-nous.\n"
)


@pytest.mark.parametrize(("raw", "kept"), [
    # typed on a phone above the quote, the footer in between
    ("oui c'est ok\n\nEnvoyé de mon iPhone\n\n" + PHONE_QUOTE, "oui c'est ok"),
    ("ok go\n\nSent from my Galaxy\n\n" + PHONE_QUOTE, "ok go"),
    # the footer first, the answer under the quote
    ("Envoyé de mon iPhone\n\n" + PHONE_QUOTE + "\nOui on valide\n", "Oui on valide"),
    # a signature, then the answer, then the quote
    ("-- \nMarc Lemoine\nGérant\n06 12 45 78 90\n\nC'est bon pour nous\n\n" + PHONE_QUOTE,
     "C'est bon pour nous"),
    # a greeting above the quote and the answer below it
    ("Bonjour,\n\n" + PHONE_QUOTE + "\nD'accord pour nous.", "Bonjour,\n\nD'accord pour nous."),
    # contact details after the signature's paragraph go with it
    ("Je valide.\n-- \nAnne Leroy\n\nwww.studio-leroy.fr\n+33 6 00 00 00 00", "Je valide."),
])
def test_stripping_never_removes_the_clients_own_words(raw: str, kept: str) -> None:
    assert strip_quoted(raw) == kept
    assert strip_quoted(strip_quoted(raw)) == kept  # the poll strips, then the reader again


def test_an_attribution_needs_a_date_so_a_clients_sentence_is_not_cut() -> None:
    text = "Le devis me va, comme mon associé a écrit : on y va."

    assert strip_quoted(text) == text


def test_a_quote_whose_lines_are_not_marked_runs_to_the_end() -> None:
    raw = ("Merci\n\nLe mer. 4 mars 2026 à 10:12, Valione <a@b.fr> a écrit :\n\n"
           "Pour lancer la modélisation, répondez « Je valide ».")

    assert strip_quoted(raw) == "Merci"


def test_words_left_only_in_the_signature_block_are_read_but_not_trusted() -> None:
    result = read_intent("-- \nMarc\nok pour moi\n\n" + PHONE_QUOTE)

    assert (result.intent, result.guess) == ("unclear", "validation")
    assert any("signature block" in r for r in result.reasons)


def test_the_issue_phone_reply_is_a_confident_validation() -> None:
    result = read_intent("oui c'est ok\n\nEnvoyé de mon iPhone\n\n" + PHONE_QUOTE)

    assert (result.intent, result.method) == ("validation", "keywords")


def test_strip_quoted_accepts_windows_line_ends() -> None:
    assert strip_quoted("Je valide.\r\n\r\n> Pourquoi ?\r\n") == "Je valide."


# -- keywords ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "intent"), [
    ("Je valide", "validation"), ("OK", "validation"), ("D'accord", "validation"),
    ("Parfait", "validation"), ("On y va", "validation"),
    ("Je refuse", "refus"), ("Trop cher", "refus"), ("Non merci", "refus"),
    ("J'annule", "refus"),
    ("Pourquoi 2 crédits ?", "question"), ("Comment se passe la livraison", "question"),
    ("Et le délai ?", "question"),
])
def test_the_original_phrases_are_read(text: str, intent: str) -> None:
    result = read_intent(text)

    assert result.intent == intent
    assert result.method == "keywords"


@pytest.mark.parametrize("text", [
    "Je ne valide pas.", "Pas d'accord.", "Ce n'est pas OK pour moi.",
    "Je ne peux pas valider ce montant.", "I don't accept this quote.",
])
def test_a_negation_turns_an_approval_into_a_refusal(text: str) -> None:
    result = read_intent(text)

    assert result.intent == "refus"
    assert any("negated" in r for r in result.reasons)


@pytest.mark.parametrize("text", ["Pas de souci, on y va.", "OK pas de problème",
                                  "Je n'ai pas de question, je valide."])
def test_phrases_that_hold_a_negation_are_not_flipped(text: str) -> None:
    assert read_intent(text).intent == "validation"


def test_a_question_outranks_an_approval() -> None:
    result = read_intent("OK mais quel délai ?")

    assert result.intent == "question"
    assert "a question outranks approval or refusal" in result.reasons


def test_a_polite_order_with_a_question_mark_is_an_approval() -> None:
    assert read_intent("Pouvez-vous lancer la modélisation ?").intent == "validation"


def test_questions_in_the_quoted_quote_do_not_count() -> None:
    result = read_intent("Parfait, je valide.\n\n" + QUOTE_FR)

    assert result.intent == "validation"


def test_a_question_mark_inside_a_link_is_not_a_question() -> None:
    assert read_intent("Je valide : https://example.com/devis?id=12").intent == "validation"


@pytest.mark.parametrize("text", [
    "Bonjour, je suis absent du bureau jusqu'au 15 mars. Une question ? Voyez ma collègue.",
    "Réponse automatique : en congés, de retour le 10 avril.",
    "Automatic reply: I'm out of the office until Monday.",
])
def test_out_of_office_is_nothing_even_with_question_marks(text: str) -> None:
    result = read_intent(text)

    assert (result.intent, result.method) == ("none", "keywords")


@pytest.mark.parametrize("text", ["Merci !", "Bien reçu, merci. Bonne journée", "", QUOTE_FR])
def test_thanks_or_an_empty_reply_is_nothing(text: str) -> None:
    assert read_intent(text).intent == "none"


@pytest.mark.parametrize("text", [
    "je voudrais comprendre comment vous comptez les crédits avant de m'engager",
    "dites moi si le fichier sera en GLB", "Let me know if textures are included",
    "c koi le delai", "Avant de confirmer, le modèle sera-t-il utilisable en AR",
    "Merci. Est-ce possible d'avoir une remise",
])
def test_a_question_needs_no_question_mark(text: str) -> None:
    assert read_intent(text).intent == "question"


@pytest.mark.parametrize(("text", "intent"), [
    ("on part là-dessus", "validation"), ("c'est parti !", "validation"),
    ("vazy lance", "validation"), ("ok 👍", "validation"), ("jvalide", "validation"),
    ("je ne souhaite plus donner suite", "refus"), ("nous n'allons pas donner suite", "refus"),
    ("Finalement on va s'en passer", "refus"), ("nan c bon on laisse", "refus"),
    ("We decided not to go ahead.", "refus"), ("We won't be moving forward.", "refus"),
    ("tro cher pr nous", "refus"),
])
def test_short_and_indirect_answers_are_read(text: str, intent: str) -> None:
    assert read_intent(text).intent == intent


@pytest.mark.parametrize("text", ["👍", "✅", "Merci pour le devis, mon associé part sur autre "
                                  "chose de complètement différent cette année"])
def test_what_keywords_cannot_read_surely_goes_to_a_person_never_to_a_confident_none(
    text: str,
) -> None:
    result = read_intent(text)

    assert result.intent == "unclear" and result.method == "fallback"


@pytest.mark.parametrize("text", ["hello, is thhere a discount for 10 items",
                                  "merci, c'est combein pour 10"])
def test_a_greeting_beside_a_question_too_weak_to_decide_is_never_a_confident_none(
    text: str,
) -> None:
    """The typo leaves the question below its threshold; the greeting alone read 'none'."""
    result = read_intent(text)

    assert (result.intent, result.method) == ("unclear", "fallback")
    assert result.guess in ("question", "none") and result.confiance < 0.70


@pytest.mark.parametrize("text", ["Je regarde ça demain.", "Merci, je regarde demain",
                                  "Bien reçu, je transmets à mon associé.", "Merci 🙏",
                                  "Merci pour le devis, je vais en parler à mon associé."])
def test_a_deferral_or_thanks_is_a_confident_none(text: str) -> None:
    assert (read_intent(text).intent, read_intent(text).method) == ("none", "keywords")


@pytest.mark.parametrize(("typed", "intent"), [
    ("parfiat, je vaildé", "validation"), ("Pouvez-vous lanccer la modélisation ?", "validation"),
    ("ok mais le délai c'est comiben", "question"), ("je refsue ce devis", "refus"),
])
def test_a_typo_does_not_change_the_reading(typed: str, intent: str) -> None:
    assert read_intent(typed).intent == intent


def test_without_llm_an_unsure_reply_is_unclear_and_keeps_the_keyword_guess() -> None:
    result = read_intent("Super")

    assert (result.intent, result.method, result.guess) == ("unclear", "fallback", "validation")
    assert result.confiance < 0.70
    assert "no LLM configured" in result.reasons


def test_the_reply_lexicon_ships_as_package_data() -> None:
    assert load_reply_lexicon() is load_reply_lexicon()


def test_a_reply_term_listed_twice_is_refused() -> None:
    data = {"groups": [{"name": "g", "intent": "validation", "weight": 1,
                        "terms": ["ok", "ok"]}]}

    with pytest.raises(ValueError, match="twice"):
        ReplyLexicon(data)


def test_labelled_replies_make_no_confident_mistake_on_either_split() -> None:
    bench = load_bench("eval_replies")

    reports = bench.evaluate()

    assert reports["tune"].total >= 150 and reports["held_out"].total >= 60
    for split in ("tune", "held_out"):
        mistakes = reports[split].confident_mistakes
        assert not mistakes, "\n".join(f"{o.number}: {o.text} {o.reasons}" for o in mistakes)
    assert reports["tune"].accuracy >= bench.MIN_ACCURACY


def test_the_reply_confidence_means_what_it_says() -> None:
    reports = load_bench("eval_replies").evaluate()

    for (low, _), n, right in reports["all"].bands():
        if low >= 0.70 and n >= 10:
            assert right / n >= low, f"band {low:.2f}: {right}/{n} right"


def test_no_accent_changes_a_reading_and_no_single_typo_in_tuning_makes_a_mistake() -> None:
    bench = load_bench("eval_replies")

    variants = bench.perturbed()

    assert not variants["without accents"]["all"].confident_mistakes
    assert not variants["one typo"]["tune"].confident_mistakes
    base = {o.number: o.final for o in bench.evaluate()["all"].outcomes}
    assert all(o.final == base[o.number] for o in variants["without accents"]["all"].outcomes)


# -- the LLM, through a loopback Messages API --------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeMessagesAPI]:
    with messages_api() as server:
        yield server


def claude(fake: FakeMessagesAPI, tmp_path: Path) -> ClaudeLLM:
    env = clean_environ(tmp_path, ANTHROPIC_API_KEY=fake.api_key, ANTHROPIC_BASE_URL=fake.url,
                        HANDLER_LLM_TIMEOUT="0.3")
    return ClaudeLLM(load_settings(environ=env))


def test_the_llm_reads_a_reply_keywords_cannot(fake: FakeMessagesAPI, tmp_path: Path) -> None:
    fake.answer("validation", 0.86, "le client donne son feu vert implicite")

    result = read_intent("Hmm, je vois.\n\n" + QUOTE_FR, claude(fake, tmp_path))

    assert (result.intent, result.method, result.confiance) == ("validation", "llm", 0.86)
    assert result.usage is not None and result.usage["output_tokens"] > 0
    sent = fake.calls[-1].body["messages"][0]["content"]
    assert sent == "Hmm, je vois."  # the quote is not sent
    assert fake.calls[-1].body["tool_choice"]["name"] == "lire_reponse"


def test_a_confident_keyword_reading_does_not_call_the_llm(
    fake: FakeMessagesAPI, tmp_path: Path
) -> None:
    assert read_intent("Je valide.", claude(fake, tmp_path)).method == "keywords"
    assert fake.calls == []


def test_an_unsure_llm_makes_the_reading_unclear(fake: FakeMessagesAPI, tmp_path: Path) -> None:
    fake.answer("refus", 0.5, "difficile à dire")

    result = read_intent("Super", claude(fake, tmp_path))

    assert (result.intent, result.method, result.guess) == ("unclear", "fallback", "validation")
    assert any("LLM unsure" in r for r in result.reasons)


def test_the_llm_may_say_it_cannot_tell(fake: FakeMessagesAPI, tmp_path: Path) -> None:
    fake.answer("unclear", 0.9, "ni accord ni refus clairs")

    result = read_intent("Hmm, je vois.", claude(fake, tmp_path))

    assert (result.intent, result.method) == ("unclear", "llm")


def test_a_failing_llm_never_crashes_the_reading(
    fake: FakeMessagesAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail(529, times=3)

    with caplog.at_level(logging.WARNING, logger="handler_cli"):
        result = read_intent("Hmm, je vois.", claude(fake, tmp_path))

    assert (result.intent, result.method) == ("unclear", "fallback")
    assert any("HTTP 529" in r for r in result.reasons)
    assert "LLM failed" in caplog.text
