"""Reading documents from a stream: one JSON object (even pretty-printed), an array, or JSON Lines.

Bad lines are reported with their line number and the fields at fault, and reading goes on:
one broken document never stops the others.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from pydantic import ValidationError

from handler_cli.document import Document


@dataclass(frozen=True)
class InputError:
    line: int
    problems: list[str]

    def __str__(self) -> str:
        return f"line {self.line}: " + "; ".join(self.problems)


def describe_validation(exc: ValidationError) -> list[str]:
    """Pydantic errors as "field: reason", the field path dotted (fichiers.0.name)."""
    problems = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            reason = "required field is missing"
        problems.append(f"{field or 'document'}: {reason}")
    return problems


def parse_document(data: Any, line: int) -> Document | InputError:
    if not isinstance(data, dict):
        return InputError(line, [f"expected a JSON object, got {type(data).__name__}"])
    try:
        return Document.model_validate(data)
    except ValidationError as exc:
        return InputError(line, describe_validation(exc))


def _parse_line(text: str, line: int) -> Document | InputError:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return InputError(line, [f"not valid JSON ({exc.msg} at column {exc.colno})"])
    return parse_document(data, line)


def read_documents(stream: IO[str]) -> Iterator[Document | InputError]:
    """Yield each document, or an InputError for what could not be read."""
    lines = iter(stream)
    numbered = enumerate(lines, start=1)
    first_number, first = next(((n, t) for n, t in numbered if t.strip()), (0, ""))
    if not first:
        return
    try:
        json.loads(first)
    except json.JSONDecodeError:
        # Not a complete value on its first line: a single pretty-printed document (or array).
        yield from _read_whole(first + "".join(lines), first_number)
        return
    yield from _read_lines([(first_number, first)], lines, first_number + 1)


def _read_lines(
    head: list[tuple[int, str]], rest: Iterable[str], start: int
) -> Iterator[Document | InputError]:
    for number, text in head:
        yield from _one_line(text, number)
    for number, text in enumerate(rest, start=start):
        if text.strip():
            yield from _one_line(text, number)


def _one_line(text: str, number: int) -> Iterator[Document | InputError]:
    stripped = text.strip()
    if stripped.startswith("["):
        yield from _read_whole(stripped, number)
    else:
        yield _parse_line(stripped, number)


def _read_whole(text: str, line: int) -> Iterator[Document | InputError]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        yield InputError(line + exc.lineno - 1, [f"not valid JSON ({exc.msg})"])
        return
    items = data if isinstance(data, list) else [data]
    for item in items:
        yield parse_document(item, line)
