from __future__ import annotations

import io

import pytest

from handler_cli.document import Document
from handler_cli.jsonio import InputError, read_documents
from tests.conftest import sample


def test_request_id_is_stable_for_the_same_submission() -> None:
    a = Document.model_validate(sample("support"))
    b = Document.model_validate(sample("support"))
    assert a.request_id == b.request_id and a.request_id.startswith("req_")
    other = Document.model_validate({**sample("support"), "objet": "Autre chose"})
    assert other.request_id != a.request_id


def test_request_id_given_is_kept_and_survives_a_round_trip() -> None:
    doc = Document.model_validate({**sample("support"), "request_id": "abc-123"})
    again = Document.model_validate_json(doc.to_json())
    assert again.request_id == "abc-123"
    assert again == doc


def test_email_is_normalised_and_checked() -> None:
    doc = Document.model_validate({**sample("support"), "user_email": "Claire.Martin@Example.FR"})
    assert doc.user_email == "claire.martin@example.fr"


def read(text: str) -> list[Document | InputError]:
    return list(read_documents(io.BytesIO(text.encode())))


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"source": "email"}, "source", "'contact' or 'modelisation'"),
        ({"user_email": "pas-un-email"}, "user_email", "not a valid e-mail address"),
        ({"objet": "   "}, "objet", "at least 1 character"),
        ({"description": "x" * 20_001}, "description", "at most 20000"),
        ({"fichiers": [{"name": "a.png"}]}, "fichiers.0", "exactly one of 'url' or 'content_base64'"),
        ({"fichiers": ["f.png"] * 21}, "fichiers", "at most 20 items"),
    ],
)
def test_bad_payload_names_the_field_and_the_reason(change: dict, field: str, reason: str) -> None:
    (error,) = read(__import__("json").dumps({**sample("support"), **change}))
    assert isinstance(error, InputError)
    text = str(error)
    assert text.startswith("line 1: ")
    assert field in text and reason in text


def test_missing_field_is_reported_as_required() -> None:
    data = sample("support")
    del data["user_name"]
    (error,) = read(__import__("json").dumps(data))
    assert "user_name: required field is missing" in str(error)


def test_json_lines_keep_going_after_a_bad_line_and_count_lines() -> None:
    import json

    good = json.dumps(sample("support"))
    items = read(f"{good}\n{{not json\n\n{good}\n[1]\n")
    assert isinstance(items[0], Document) and isinstance(items[2], Document)
    assert isinstance(items[1], InputError) and items[1].line == 2
    assert "not valid JSON" in str(items[1])
    assert isinstance(items[3], InputError) and items[3].line == 5


def test_a_pretty_printed_object_and_an_array_are_read_whole() -> None:
    import json

    pretty = json.dumps(sample("support"), indent=2)
    (doc,) = read(pretty)
    assert isinstance(doc, Document)
    docs = read(json.dumps([sample("support"), sample("incomplete")], indent=2))
    assert [type(d) for d in docs] == [Document, Document]


def test_empty_input_gives_nothing() -> None:
    assert read("\n\n") == []


def test_a_line_that_is_not_utf8_is_reported_and_the_others_go_on() -> None:
    import json

    good = json.dumps(sample("support")).encode()
    items = list(read_documents(io.BytesIO(good + b"\n" + b'{"objet": "caf\xe9"}\n' + good)))
    assert isinstance(items[0], Document) and isinstance(items[2], Document)
    assert str(items[1]) == "line 2: not valid UTF-8 (byte 0xe9)"
