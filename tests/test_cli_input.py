"""Input as people produce it (issue 12): a stream of JSON values in any layout, arrays,
byte-order marks, several files, and broken documents reported where they start."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from handler_cli.document import Document
from handler_cli.jsonio import InputError, read_documents, read_values
from tests.conftest import ROOT, SAMPLES, RunCli, sample

BOM = "\ufeff"


def values(text: str | bytes) -> list[tuple[int, dict] | InputError]:
    data = text.encode() if isinstance(text, str) else text
    return list(read_values(io.BytesIO(data)))


def lines_of(items: list) -> list[int | str]:
    """Each item as its line (a document) or "E<line>" (an error)."""
    return [f"E{i.line}" if isinstance(i, InputError) else i[0] for i in items]


def docs(n: int) -> list[dict]:
    return [{**sample("support"), "objet": f"Demande {i}"} for i in range(n)]


def test_jq_style_documents_one_after_the_other_are_a_stream() -> None:
    text = "".join(json.dumps(d, indent=2) + "\n" for d in docs(3))
    items = values(text)
    assert [v["objet"] for _, v in items] == ["Demande 0", "Demande 1", "Demande 2"]
    height = json.dumps(docs(1)[0], indent=2).count("\n") + 1
    assert lines_of(items) == [1, 1 + height, 1 + 2 * height]


def test_concatenated_documents_on_one_line_and_across_lines() -> None:
    a, b, c = (json.dumps(d) for d in docs(3))
    cut = c.index(', "description"') + 1
    items = values(f"{a}{b} {c[:cut]}\n{c[cut:]}\n")
    assert lines_of(items) == [1, 1, 1]
    assert [v["objet"] for _, v in items] == ["Demande 0", "Demande 1", "Demande 2"]


def test_an_array_gives_its_elements_each_at_its_own_line() -> None:
    text = json.dumps([*docs(2), {**sample("support"), "user_email": "nope"}], indent=2)
    items = list(read_documents(io.BytesIO(text.encode())))
    assert [type(i) for i in items] == [Document, Document, InputError]
    height = json.dumps(docs(1)[0], indent=2).count("\n") + 1
    error = items[2]
    assert isinstance(error, InputError) and error.line == 2 + 2 * height
    assert str(error).endswith("user_email: not a valid e-mail address")


def test_an_array_of_non_objects_is_one_error_not_one_per_item() -> None:
    (error,) = values("[1,2,3]\n")
    assert str(error) == "line 1: array items 1, 2, 3: expected JSON objects, got a number"
    mixed = values(json.dumps([docs(1)[0], "x"]) + "\n")
    assert lines_of(mixed) == [1, "E1"]
    assert str(mixed[1]) == "line 1: array item 2: expected a JSON object, got a string"
    assert values("[]\n") == []


def test_a_broken_pretty_document_is_reported_at_its_first_line_and_the_next_goes_on() -> None:
    good = json.dumps(docs(1)[0], indent=2)
    broken = '{\n  "source": "contact",\n  "objet": \n}'
    items = values(f"{good}\n{broken}\n{good}\n")
    height = good.count("\n") + 1
    assert lines_of(items) == [1, f"E{height + 1}", height + 5]
    assert str(items[1]) == (f"line {height + 1}: not valid JSON: a value was expected at "
                             f"line {height + 4}, column 1")


def test_a_truncated_json_line_is_reported_at_its_own_line() -> None:
    good = json.dumps(docs(1)[0])
    cut = good[:good.index(', "description"') + 1]
    items = values(f"{good}\n{cut}\n{good}\n{good}\n")
    assert lines_of(items) == [1, "E2", 3, 4]
    assert str(items[1]) == "line 2: not valid JSON: line 3 starts another document before " \
                            "this one is closed"
    at_end = values(f"{good}\n{cut}\n")
    assert lines_of(at_end) == [1, "E2"]
    assert str(at_end[1]) == "line 2: not valid JSON: the input ends before the document " \
                             "is closed"
    mid_string = values(f"{good[:50]}\n{good}\n")
    assert lines_of(mid_string) == ["E1", 2]
    assert str(mid_string[0]) == "line 1: not valid JSON: a string is not closed at the end " \
                                 "of line 1"


def test_a_truncated_pretty_document_does_not_swallow_the_next() -> None:
    good = json.dumps(docs(1)[0], indent=2)
    cut = "\n".join(good.splitlines()[:4])
    items = values(f"{cut}\n{good}\n")
    assert lines_of(items) == ["E1", 5]


@pytest.mark.parametrize(("text", "message"), [
    ('{"objet": "a" "b": 1}', "a comma was expected at line 1, column 15"),
    ('{"objet": "a",}', "a comma before the closing '}' at line 1, column 15"),
    ("{'objet': 1}", "a field name in double quotes was expected at line 1, column 2"),
    ('{"objet" 1}', "':' was expected after the field name at line 1, column 10"),
    ('{"objet": "abc}', "a string is not closed at the end of line 1"),
    ('{"objet": "a\\qb"}', "a string holds an invalid escape"),
    ('{"objet": 1} x', "a value was expected at line 1, column 14"),
])
def test_json_mistakes_are_said_in_plain_words(text: str, message: str) -> None:
    errors = [i for i in values(text + "\n") if isinstance(i, InputError)]
    assert len(errors) == 1
    said = str(errors[0])
    assert message in said
    for python in ("Expecting", "at at", "delimiter", "char ", "got int", "got str"):
        assert python not in said


def test_a_byte_order_mark_is_skipped_on_a_line_and_on_a_pretty_document() -> None:
    one = json.dumps(docs(1)[0])
    assert lines_of(values(BOM + one + "\n" + one + "\n")) == [1, 2]
    assert lines_of(values(BOM + json.dumps(docs(1)[0], indent=2))) == [1]
    assert lines_of(values(BOM + json.dumps(docs(2)))) == [1, 1]


def test_a_line_that_is_not_utf8_inside_a_pretty_document_names_both_lines() -> None:
    good = json.dumps({**docs(1)[0], "objet": "cafe"}, indent=2).encode()
    bad = good.replace(b"cafe", b"caf\xe9")
    items = values(bad + b"\n" + good + b"\n")
    assert isinstance(items[0], InputError) and items[0].line == 1
    assert str(items[0]).startswith("line 1: not valid UTF-8 (byte 0xe9, line ")
    assert not isinstance(items[1], InputError)


def test_an_unindented_pretty_layout_still_nests_at_column_zero() -> None:
    items = values(json.dumps(docs(2), indent=0) + "\n")
    assert [v["objet"] for _, v in items] == ["Demande 0", "Demande 1"]


# --- through the command -------------------------------------------------------------------


def test_jq_output_piped_into_classify(cli: RunCli) -> None:
    text = "".join(json.dumps(d, indent=2) + "\n" for d in docs(3))
    result = cli("classify", input=text)
    assert result.returncode == 0, result.stderr
    assert [json.loads(x)["objet"] for x in result.stdout.splitlines()] == [
        "Demande 0", "Demande 1", "Demande 2"]


def test_pretty_output_of_one_step_feeds_the_next(environ: dict[str, str]) -> None:
    script = (f"{sys.executable} -m handler_cli classify --pretty samples/batch.jsonl"
              f" | {sys.executable} -m handler_cli upload")
    piped = subprocess.run(script, shell=True, text=True, capture_output=True, env=environ,
                           cwd=ROOT, timeout=120)
    assert piped.returncode == 0, piped.stderr
    batch = (SAMPLES / "batch.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(piped.stdout.splitlines()) == len(batch)


def test_cat_of_sample_files_into_run(environ: dict[str, str]) -> None:
    files = sorted(str(p.relative_to(ROOT)) for p in SAMPLES.glob("*.json"))
    concatenated = subprocess.run(
        f"cat {' '.join(files)} | {sys.executable} -m handler_cli run", shell=True, text=True,
        capture_output=True, env=environ, cwd=ROOT, timeout=120)
    assert concatenated.returncode == 0, concatenated.stderr
    assert len(concatenated.stdout.splitlines()) == len(files)


def test_several_input_files_and_stdin_as_dash(cli: RunCli, tmp_path: Path) -> None:
    first = tmp_path / "a.json"
    first.write_text(BOM + json.dumps(docs(1)[0], indent=2), encoding="utf-8")
    second = tmp_path / "b.jsonl"
    second.write_text(json.dumps(docs(2)[1]) + "\n[1,2,3]\n", encoding="utf-8")
    piped = json.dumps({**sample("support"), "objet": "from stdin"})
    result = cli("classify", str(first), "-", str(second), input=piped)
    assert result.returncode == 1  # the [1,2,3] line
    assert [json.loads(x)["objet"] for x in result.stdout.splitlines()] == [
        "Demande 0", "from stdin", "Demande 1"]
    errors = [x for x in result.stderr.splitlines() if "error:" in x]
    assert errors == [f"handler-cli: error: {second}: line 2: array items 1, 2, 3: expected "
                      "JSON objects, got a number"]


def test_the_samples_glob_of_the_readme(cli: RunCli) -> None:
    files = sorted(str(p.relative_to(ROOT)) for p in SAMPLES.glob("*.json"))
    result = cli("run", *files)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(files)


def test_a_missing_file_among_several_stops_before_any_document(cli: RunCli,
                                                                 tmp_path: Path) -> None:
    result = cli("run", str(SAMPLES / "support.json"), str(tmp_path / "nope.json"))
    assert result.returncode == 2 and result.stdout == ""
    assert f"cannot read {tmp_path / 'nope.json'}: No such file or directory" in result.stderr
    folder = cli("run", str(tmp_path))
    assert folder.returncode == 2 and "it is a folder" in folder.stderr
