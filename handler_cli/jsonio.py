"""Reading documents from a stream: one JSON object (even pretty-printed), an array, or JSON Lines.

Bad lines are reported with their line number and the fields at fault, and reading goes on:
one broken document never stops the others.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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


def read_values(stream: IO[bytes]) -> Iterator[tuple[int, Any] | InputError]:
    """Each JSON value of the stream with its line number, or an InputError for a bad line.

    The first non-empty line decides the framing: a complete value means JSON Lines (an
    array on a line gives its items); otherwise the whole stream is one value. Bytes are
    decoded here, line by line, so a line that is not UTF-8 is reported, not a crash.
    """
    lines = iter(stream)
    numbered = enumerate(lines, start=1)
    first_number, first = next(((n, t) for n, t in numbered if t.strip()), (0, b""))
    if not first:
        return
    try:
        json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):  # incomplete, or not UTF-8: read it whole
        yield from _whole(first + b"".join(lines), first_number)
        return
    except (RecursionError, ValueError):  # complete but refused (too deep, huge number): lines
        pass
    yield from _whole(first, first_number)
    for number, raw in enumerate(lines, start=first_number + 1):
        if raw.strip():
            yield from _whole(raw, number)


def _whole(raw: bytes, line: int) -> Iterator[tuple[int, Any] | InputError]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = line + raw.count(b"\n", 0, exc.start)
        yield InputError(bad_line, [f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})"])
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f" at column {exc.colno}" if exc.lineno == 1 else ""
        yield InputError(line + exc.lineno - 1, [f"not valid JSON ({exc.msg}{where})"])
        return
    except RecursionError:  # past ~1,000 levels the decoder gives up, not with a JSON error
        yield InputError(line, ["not valid JSON (nested too deeply)"])
        return
    except ValueError as exc:  # a number of more than 4,300 digits
        yield InputError(line, [f"not valid JSON ({exc})"])
        return
    for item in data if isinstance(data, list) else [data]:
        yield line, item


def read_documents(stream: IO[bytes]) -> Iterator[Document | InputError]:
    """Yield each document, or an InputError for what could not be read."""
    for item in read_values(stream):
        yield item if isinstance(item, InputError) else parse_document(item[1], item[0])
