"""`handler-cli reply-intent`: JSON in, the same JSON with intent/confiance/method out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SAMPLES, RunCli
from tests.fakes.messages_api import FakeMessagesAPI, messages_api


def out(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_json_lines_get_their_intent_and_keep_their_fields(cli: RunCli) -> None:
    replies = [
        {"id": 1, "text": "Je valide, merci"},
        {"id": 2, "text": "Non merci, c'est trop cher"},
        {"id": 3, "text": "OK mais quel délai ?"},
        {"id": 4, "text": "Je suis absent du bureau jusqu'au 3 janvier."},
        {"id": 5, "text": "Je ne valide pas ce devis"},
    ]
    result = cli("reply-intent", input="\n".join(json.dumps(r) for r in replies) + "\n")

    assert result.returncode == 0, result.stderr
    got = out(result.stdout)
    assert [(r["id"], r["intent"]) for r in got] == [
        (1, "validation"), (2, "refus"), (3, "question"), (4, "none"), (5, "refus")]
    assert all(r["method"] == "keywords" and 0 <= float(r["confiance"]) <= 1  # type: ignore[arg-type]
               for r in got)
    assert got[0]["text"] == "Je valide, merci"


def test_one_pretty_printed_object_and_an_array_are_read(cli: RunCli) -> None:
    single = cli("reply-intent", "--pretty", input='{\n  "text": "Parfait, on y va"\n}\n')
    assert single.returncode == 0
    assert json.loads(single.stdout)["intent"] == "validation"

    array = cli("reply-intent", input='[{"text": "Pourquoi 2 crédits ?"}, {"text": "Merci !"}]')
    assert [r["intent"] for r in out(array.stdout)] == ["question", "none"]


def test_quoted_history_does_not_count(cli: RunCli) -> None:
    text = (SAMPLES / "replies" / "validation_english_quote.txt").read_text(encoding="utf-8")
    result = cli("reply-intent", input=json.dumps({"text": text}))
    assert out(result.stdout)[0]["intent"] == "validation"

    thanks = "Merci, à bientôt.\n\nLe 25/11/2026 à 11:30, Valione a écrit :\n> répondez « Je valide »"
    result = cli("reply-intent", input=json.dumps({"text": thanks}))
    assert out(result.stdout)[0]["intent"] == "none"


def test_a_file_argument_is_read(cli: RunCli, tmp_path: Path) -> None:
    path = tmp_path / "replies.jsonl"
    path.write_text('{"text": "J\'annule ma demande"}\n', encoding="utf-8")
    result = cli("reply-intent", str(path))
    assert out(result.stdout)[0]["intent"] == "refus"


def test_bad_lines_are_reported_and_the_others_still_read(cli: RunCli) -> None:
    stdin = '{"text": "Je valide"}\nnot json\n{"texte": "oups"}\n[1]\n{"text": "Non merci"}\n'
    result = cli("reply-intent", input=stdin)

    assert result.returncode == 1
    assert [r["intent"] for r in out(result.stdout)] == ["validation", "refus"]
    assert "line 2: not valid JSON" in result.stderr
    assert "line 3: text: required, a string" in result.stderr
    assert "line 4: array item 1: expected a JSON object, got a number" in result.stderr


def test_a_missing_input_file_is_a_usage_error(cli: RunCli) -> None:
    result = cli("reply-intent", "/nonexistent/replies.jsonl")
    assert result.returncode == 2 and "cannot read" in result.stderr


@pytest.fixture
def claude_api() -> Iterator[FakeMessagesAPI]:
    with messages_api() as fake:
        yield fake


def test_an_ambiguous_reply_is_read_by_claude(cli: RunCli, claude_api: FakeMessagesAPI) -> None:
    claude_api.answer("validation", 0.88, "accord implicite")
    env = {"ANTHROPIC_API_KEY": claude_api.api_key, "ANTHROPIC_BASE_URL": claude_api.url}

    result = cli("reply-intent", input='{"text": "Hmm, je vois."}\n{"text": "Je valide"}\n',
                 env=env)

    assert result.returncode == 0, result.stderr
    first, second = out(result.stdout)
    assert (first["intent"], first["method"], first["confiance"]) == ("validation", "llm", 0.88)
    assert second["method"] == "keywords"
    assert len(claude_api.calls) == 1


def test_claude_down_falls_back_to_the_keywords(cli: RunCli, claude_api: FakeMessagesAPI) -> None:
    claude_api.fail(529, times=10)
    env = {"ANTHROPIC_API_KEY": claude_api.api_key, "ANTHROPIC_BASE_URL": claude_api.url,
           "HANDLER_LLM_TIMEOUT": "2"}

    result = cli("reply-intent", input='{"text": "Hmm, je vois."}\n', env=env)

    assert result.returncode == 0
    assert out(result.stdout)[0]["method"] == "fallback"
