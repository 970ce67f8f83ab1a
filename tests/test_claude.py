"""The Claude backend against a stand-in Messages API on loopback, alone and inside step 1."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from handler_cli.config import Settings, load_settings
from handler_cli.context import Context
from handler_cli.document import Document
from handler_cli.services import ServiceError
from handler_cli.services.llm.claude import ClaudeLLM
from handler_cli.steps import classify
from tests.conftest import ROOT, clean_environ
from tests.fakes.messages_api import API_VERSION, FakeMessagesAPI, messages_api
from tests.peers import lines

# Keywords have no evidence either way here, so step 1 must ask the LLM.
AMBIGUOUS = {
    "source": "contact",
    "objet": "Demande",
    "description": "Bonjour, voici ma demande, merci de revenir vers moi.",
    "user_email": "lea.martin@example.com",
    "user_name": "Léa Martin",
}


@pytest.fixture
def fake() -> Iterator[FakeMessagesAPI]:
    with messages_api() as server:
        yield server


def settings_for(fake: FakeMessagesAPI, tmp_path: Path, **extra: str) -> Settings:
    env = clean_environ(tmp_path / "data", **{
        "ANTHROPIC_API_KEY": fake.api_key, "ANTHROPIC_BASE_URL": fake.url,
        "HANDLER_LLM_TIMEOUT": "0.3", **extra})
    return load_settings(environ=env)


def ambiguous() -> Document:
    return Document.model_validate(AMBIGUOUS)


def test_classify_request_forces_the_tool_and_returns_the_verdict_with_usage(
    fake: FakeMessagesAPI, tmp_path: Path
) -> None:
    fake.answer("MODELISATION", 0.91, "demande de création d'un objet")
    llm = ClaudeLLM(settings_for(fake, tmp_path))

    verdict = llm.classify_request("Objet : Lampe\nDescription : à modéliser")

    assert (verdict.label, verdict.confidence) == ("MODELISATION", 0.91)
    assert verdict.reason == "demande de création d'un objet"
    assert verdict.usage["input_tokens"] > 0 and verdict.usage["output_tokens"] > 0
    call = fake.calls[-1]
    sent_key = call.headers.get("x-api-key") or call.headers["authorization"].split()[-1]
    assert sent_key == fake.api_key
    assert API_VERSION.match(call.headers["anthropic-version"])
    body = call.body
    assert body["model"] == "claude-haiku-4-5"
    assert body["tool_choice"] == {"type": "tool", "name": "classer_demande"}
    schema = body["tools"][0]["input_schema"]
    assert schema["properties"]["label"]["enum"] == ["SUPPORT", "MODELISATION"]
    assert "Lampe" in body["messages"][0]["content"]


def test_classify_reply_uses_its_own_tool_and_labels(
    fake: FakeMessagesAPI, tmp_path: Path
) -> None:
    fake.answer("validation", 0.88, "le client accepte")
    llm = ClaudeLLM(settings_for(fake, tmp_path))

    verdict = llm.classify_reply("Ça me convient, allez-y.")

    assert (verdict.label, verdict.confidence) == ("validation", 0.88)
    body = fake.calls[-1].body
    assert body["tool_choice"]["name"] == "lire_reponse"
    assert body["tools"][0]["input_schema"]["properties"]["label"]["enum"] == [
        "validation", "refus", "question", "none", "unclear"]


def test_the_prompts_give_claude_the_distinctions_keywords_get_wrong(
    fake: FakeMessagesAPI, tmp_path: Path
) -> None:
    llm = ClaudeLLM(settings_for(fake, tmp_path))
    fake.answer("SUPPORT", 0.9)
    llm.classify_request("Objet : Format\nDescription : le modèle livré, en OBJ svp")
    fake.answer("unclear", 0.9)
    verdict = llm.classify_reply("👍")

    request, reply = fake.calls[-2].body, fake.calls[-1].body
    assert "après-vente" in request["system"] and "NOUVEAU travail" in request["system"]
    assert "déjà commandé ou livré" in request["tools"][0]["input_schema"]["properties"][
        "label"]["description"]
    assert "signature" in reply["system"] and "Envoyé de mon iPhone" in reply["system"]
    assert "sans point d'interrogation" in reply["system"]
    assert "unclear" in reply["tools"][0]["input_schema"]["properties"]["label"]["description"]
    assert verdict.label == "unclear"


def test_step_one_lets_the_llm_decide_an_ambiguous_request(
    fake: FakeMessagesAPI, tmp_path: Path
) -> None:
    fake.answer("MODELISATION", 0.9, "le client veut un modèle 3D")
    doc = ambiguous()

    classify.run(doc, Context(settings_for(fake, tmp_path)))

    assert doc.type_final == "MODELISATION"
    assert doc.reclassifie is True  # sent through the contact form
    assert doc.confiance == 0.9
    assert doc.classification is not None
    assert doc.classification.method == "llm"
    assert doc.classification.usage and doc.classification.usage["input_tokens"] > 0
    assert "le client veut un modèle 3D" in doc.classification.reasons[0]
    assert "Objet : Demande" in fake.calls[-1].body["messages"][0]["content"]


def test_step_one_never_calls_the_llm_when_keywords_are_sure(
    fake: FakeMessagesAPI, tmp_path: Path
) -> None:
    doc = Document.model_validate({**AMBIGUOUS, "objet": "Mot de passe oublié",
                                   "description": "Impossible de me connecter à mon compte."})

    classify.run(doc, Context(settings_for(fake, tmp_path)))

    assert doc.classification is not None and doc.classification.method == "keywords"
    assert fake.calls == []


def test_step_one_keeps_the_form_type_when_the_llm_is_unsure(
    fake: FakeMessagesAPI, tmp_path: Path
) -> None:
    fake.answer("MODELISATION", 0.55, "difficile à dire")
    doc = ambiguous()

    classify.run(doc, Context(settings_for(fake, tmp_path)))

    assert doc.type_final == "SUPPORT"  # the contact form's type
    assert doc.reclassifie is False
    assert doc.classification is not None
    assert doc.classification.method == "source"
    assert doc.classification.usage is not None  # the call was paid for all the same
    assert any("LLM unsure" in r for r in doc.classification.reasons)


@pytest.mark.parametrize("status", [500, 529, 429])
def test_step_one_falls_back_to_the_form_when_the_api_keeps_failing(
    fake: FakeMessagesAPI, tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail(status, times=3)  # the first try and the SDK's two retries
    doc = ambiguous()

    with caplog.at_level(logging.WARNING, logger="handler_cli"):
        classify.run(doc, Context(settings_for(fake, tmp_path)))

    assert doc.type_final == "SUPPORT"
    assert doc.classification is not None and doc.classification.method == "source"
    assert any(f"HTTP {status}" in r for r in doc.classification.reasons)
    assert len(fake.calls) == 3
    assert "LLM failed" in caplog.text


def test_sdk_retries_a_transient_failure_and_then_gets_the_verdict(
    fake: FakeMessagesAPI, tmp_path: Path
) -> None:
    fake.fail(529)
    fake.answer("SUPPORT", 0.95, "problème d'affichage")

    verdict = ClaudeLLM(settings_for(fake, tmp_path)).classify_request("texte")

    assert verdict.label == "SUPPORT"
    assert len(fake.calls) == 2


def test_step_one_falls_back_when_the_api_does_not_answer_in_time(
    fake: FakeMessagesAPI, tmp_path: Path
) -> None:
    fake.hang(times=3)
    doc = ambiguous()

    started = time.monotonic()
    classify.run(doc, Context(settings_for(fake, tmp_path)))

    assert doc.type_final == "SUPPORT"
    assert doc.classification is not None and doc.classification.method == "source"
    assert any("no answer within 0.3 s" in r for r in doc.classification.reasons)
    assert time.monotonic() - started < 8  # 3 timeouts of 0.3 s plus the SDK's backoff


def test_a_wrong_key_is_a_permanent_error_and_later_calls_fail_fast(
    fake: FakeMessagesAPI, tmp_path: Path
) -> None:
    llm = ClaudeLLM(settings_for(fake, tmp_path, ANTHROPIC_API_KEY="sk-ant-wrong"))

    with pytest.raises(ServiceError) as first:
        llm.classify_request("texte")
    with pytest.raises(ServiceError) as second:
        llm.classify_reply("texte")

    assert "HTTP 401 authentication_error: invalid x-api-key" in str(first.value)
    assert first.value.transient is False and second.value.transient is False
    assert len(fake.calls) == 1  # no retry, and no second round trip


@pytest.mark.parametrize("content", [
    [{"type": "text", "text": "Je pense que c'est du support."}],
    [{"type": "tool_use", "id": "t1", "name": "classer_demande",
      "input": {"label": "BUG", "confidence": 0.9, "reason": "x"}}],
    [{"type": "tool_use", "id": "t1", "name": "classer_demande",
      "input": {"label": "SUPPORT", "confidence": "élevée", "reason": "x"}}],
    [{"type": "tool_use", "id": "t1", "name": "classer_demande",
      "input": {"label": "SUPPORT", "confidence": 1.7, "reason": "x"}}],
    [{"type": "tool_use", "id": "t1", "name": "autre_outil",
      "input": {"label": "SUPPORT", "confidence": 0.9, "reason": "x"}}],
])
def test_a_malformed_answer_is_a_service_error_and_step_one_falls_back(
    fake: FakeMessagesAPI, tmp_path: Path, content: list[dict[str, object]]
) -> None:
    settings = settings_for(fake, tmp_path)
    fake.reply_content(content)
    with pytest.raises(ServiceError):
        ClaudeLLM(settings).classify_request("texte")

    fake.reply_content(content)
    doc = ambiguous()
    classify.run(doc, Context(settings))
    assert doc.type_final == "SUPPORT"
    assert doc.classification is not None and doc.classification.method == "source"


def test_an_unreachable_api_is_a_service_error(tmp_path: Path) -> None:
    with messages_api() as gone:
        url = gone.url  # the port is closed once the block ends
    env = clean_environ(tmp_path, ANTHROPIC_API_KEY="sk-ant-x", ANTHROPIC_BASE_URL=url,
                        HANDLER_LLM_TIMEOUT="0.3")
    llm = ClaudeLLM(load_settings(environ=env))

    with pytest.raises(ServiceError, match="cannot reach"):
        llm.classify_request("texte")


def test_check_makes_a_one_token_call_and_describe_names_model_and_endpoint(
    fake: FakeMessagesAPI, tmp_path: Path
) -> None:
    llm = ClaudeLLM(settings_for(fake, tmp_path, HANDLER_LLM_MODEL="claude-test-model"))

    answer = lines(llm.check())

    assert "claude-test-model" in answer
    assert fake.calls[-1].body["max_tokens"] == 1
    assert "tools" not in fake.calls[-1].body
    assert llm.describe() == f"Claude claude-test-model via {fake.url}"


def test_check_with_a_wrong_key_raises(fake: FakeMessagesAPI, tmp_path: Path) -> None:
    llm = ClaudeLLM(settings_for(fake, tmp_path, ANTHROPIC_API_KEY="sk-ant-wrong"))

    with pytest.raises(ServiceError, match="401"):
        llm.check()


def test_without_a_key_step_one_uses_the_form_and_never_imports_anthropic(
    tmp_path: Path
) -> None:
    script = f"""
import json, sys
from handler_cli.config import load_settings
from handler_cli.context import Context
from handler_cli.document import Document
from handler_cli.steps import classify
ctx = Context(load_settings())
doc = classify.run(Document.model_validate(json.loads({json.dumps(json.dumps(AMBIGUOUS))})), ctx)
print(json.dumps({{"type": doc.type_final, "method": doc.classification.method,
                  "anthropic": "anthropic" in sys.modules, "httpx": "httpx" in sys.modules}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=clean_environ(tmp_path), cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome == {"type": "SUPPORT", "method": "source", "anthropic": False,
                       "httpx": False}


def test_importing_the_backend_does_not_import_the_sdk(tmp_path: Path) -> None:
    script = ("import sys; import handler_cli.services.llm.claude; "
              "print('anthropic' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=clean_environ(tmp_path), cwd=ROOT, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_the_fake_refuses_a_tool_call_that_is_not_forced(fake: FakeMessagesAPI) -> None:
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "t", "input_schema": {"type": "object"}}]}
    request = urllib.request.Request(
        f"{fake.url}/v1/messages", data=json.dumps(body).encode(), method="POST",
        headers={"x-api-key": fake.api_key, "anthropic-version": "2023-06-01",
                 "content-type": "application/json"})

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)

    assert refused.value.code == 400
    error = json.loads(refused.value.read())
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
