"""The CLI reader against the same hostile payloads as the webhook: an error naming the
field on stderr, the other documents go on, never a traceback (issue 10)."""

from __future__ import annotations

import io
import json

import pytest

from handler_cli.document import Document
from handler_cli.jsonio import InputError, read_documents
from tests.conftest import RunCli, sample


def read(text: str) -> list[Document | InputError]:
    return list(read_documents(io.BytesIO(text.encode("utf-8", "surrogatepass"))))


def with_meta(raw_json: str) -> str:
    return json.dumps(sample("support"))[:-1] + f', "meta": {raw_json}}}'


@pytest.mark.parametrize("depth", [33, 500, 900])
def test_an_extra_field_nested_deep_is_named(depth: int) -> None:
    (error,) = read(with_meta("[" * depth + "]" * depth))
    assert isinstance(error, InputError)
    assert str(error) == "line 1: meta: nested deeper than 32 levels"


def test_nesting_at_the_limit_is_accepted() -> None:
    (doc,) = read(with_meta("[" * 32 + "]" * 32))
    assert isinstance(doc, Document)
    assert doc.to_json()  # and it can be written


@pytest.mark.parametrize(("raw", "reason"), [
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ("1" * 5000, "4300 digits"),
])
def test_what_the_json_decoder_itself_refuses_is_a_line_error(raw: str, reason: str) -> None:
    good = json.dumps(sample("support"))
    items = read(f"{good}\n{with_meta(raw)}\n{good}\n")
    assert [type(i) for i in items] == [Document, InputError, Document]
    assert items[1].line == 2 and reason in str(items[1])  # type: ignore[union-attr]


@pytest.mark.parametrize(("change", "field"), [
    ({"fichiers": ["http://[::1/x.png"]}, "fichiers.0"),
    ({"fichiers": [{"name": "a.png", "url": "http://[::1/x.png"}]}, "fichiers.0.url"),
    ({"fichiers": ["photo\n1.jpg"]}, "fichiers.0"),
    ({"user_email": "jéan@example.com"}, "user_email"),
])
def test_bad_file_references_and_addresses_name_the_field(change: dict, field: str) -> None:
    (error,) = read(json.dumps({**sample("modelisation_simple"), **change}))
    assert isinstance(error, InputError)
    assert f"{field}: " in str(error)


def test_a_lone_surrogate_in_an_extra_field_is_named() -> None:
    (error,) = read(with_meta('"abc\\ud800"'))
    assert isinstance(error, InputError) and "meta: " in str(error)


@pytest.mark.parametrize(("change", "field"), [
    ('"ticket_id": "12\\udc00"', "ticket_id"),
    ('"notes": ["ok", "\\ud800"]', "notes"),
    ('"fichiers": [{"name": "a.png", "content_base64": "QUJD\\ud800"}]',
     "fichiers.0.content_base64"),
])
def test_a_lone_surrogate_anywhere_is_named_not_written(change: str, field: str) -> None:
    # pydantic lets a lone surrogate through a string without constraints; writing the
    # document would then fail (UnicodeEncodeError) far from the input.
    (error,) = read(json.dumps(sample("modelisation_simple"))[:-1] + f", {change}}}")
    assert isinstance(error, InputError) and f"{field}" in str(error)


def test_the_command_reports_and_goes_on(cli: RunCli) -> None:
    good = json.dumps(sample("support"))
    deep = with_meta("[" * 5000 + "]" * 5000)
    result = cli("classify", input=f"{deep}\n{good}\n")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "nested too deeply" in result.stderr
    assert len(result.stdout.splitlines()) == 1
