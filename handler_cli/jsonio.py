"""Reading documents from a stream of JSON values, whatever their layout.

People produce JSON Lines, `jq .` output, `--pretty` output piped on, concatenated files
(`cat *.json`), arrays, and sometimes a broken or truncated document. All are one stream of
values here: an array gives its elements, a UTF-8 byte-order mark is skipped, and a broken
document is reported with the line where it starts while the rest goes on.

One line holding one whole value (JSON Lines) is parsed straight from its bytes: the common
case costs one `json.loads` per document. Only a line that is not a whole value goes to the
slower path, which gathers lines until the brackets opened are closed, then decodes them.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from pydantic import ValidationError

from handler_cli.document import Document


@dataclass(frozen=True)
class InputError:
    """What could not be read, at the line where its document starts."""

    line: int
    problems: list[str]
    source: str | None = None  # the file it came from; None for stdin

    def __str__(self) -> str:
        where = f"{self.source}: line {self.line}" if self.source else f"line {self.line}"
        return f"{where}: " + "; ".join(self.problems)


Value = tuple[int, dict[str, Any]]


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


def parse_document(data: dict[str, Any], line: int, source: str | None = None
                   ) -> Document | InputError:
    try:
        return Document.model_validate(data)
    except ValidationError as exc:
        return InputError(line, describe_validation(exc), source)


def read_documents(stream: IO[bytes], source: str | None = None
                   ) -> Iterator[Document | InputError]:
    """Each document of the stream, or an InputError for what could not be read."""
    for item in read_values(stream, source):
        yield item if isinstance(item, InputError) else parse_document(item[1], item[0], source)


def read_values(stream: IO[bytes], source: str | None = None
                ) -> Iterator[Value | InputError]:
    """Each JSON object of the stream with the line it starts on, or an InputError.

    Objects only: an array gives its elements, and a value that is not an object (or an
    array with such items: one error for the array) is reported.
    """
    slow = _Gatherer(source)
    loads = json.loads
    for number, raw in enumerate(stream, start=1):
        if not slow.busy:
            try:
                value = loads(raw)  # bytes: json detects UTF-8 and skips a byte-order mark
            except (ValueError, RecursionError):
                pass  # not one whole value on this line (or blank): the slow path says why
            else:
                if type(value) is dict:
                    yield number, value
                else:
                    yield from _objects(value, number, source)
                continue
        yield from slow.feed(number, raw)
    yield from slow.finish()


# --- the slow path -------------------------------------------------------------------------

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\r\n]*")
# A string on one line (JSON strings hold no raw line break), or its unclosed start.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?')
_OPENERS = ("{", "[")

# Python's json messages, in words a person reads (no "at at column").
_MESSAGES = {
    "Expecting value": "a value was expected",
    "Expecting property name enclosed in double quotes": "a field name in double quotes "
                                                         "was expected",
    "Expecting ':' delimiter": "':' was expected after the field name",
    "Expecting ',' delimiter": "a comma was expected",
    "Unterminated string starting at": "a string is not closed",
    "Invalid control character at": "a string holds a raw control character (write a line "
                                    "break as \\n, a tab as \\t)",
    "Invalid \\escape": "a string holds an invalid escape (\\ must be written \\\\)",
    "Invalid \\uXXXX escape": "a string holds an invalid \\u escape",
    "Illegal trailing comma before end of object": "a comma before the closing '}'",
    "Illegal trailing comma before end of array": "a comma before the closing ']'",
    "Extra data": "more text after the document",
}


@dataclass
class _Line:
    number: int
    text: str
    bad_byte: int | None  # the first byte that is not UTF-8, if any


class _Gatherer:
    """Lines gathered until the brackets they open are closed, then decoded as values.

    A document that never closes is cut short where the next one starts: a line beginning
    with `{` or `[` at column 0 while the open document's own lines were indented (jq,
    `--pretty`) or it was a single line (JSON Lines). Only an unindented layout
    (`json.dumps(indent=0)`) nests at column 0; it opens with a bracket alone on its line.
    After a broken document, reading resumes at the next line that starts one.
    """

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.lines: list[_Line] = []
        self.depth = 0
        self.todo: deque[_Line] = deque()  # lines to read again after a broken document

    @property
    def busy(self) -> bool:
        return bool(self.lines)

    def feed(self, number: int, raw: bytes) -> Iterator[Value | InputError]:
        try:
            text, bad = raw.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            text, bad = raw.decode("utf-8", "surrogateescape"), raw[exc.start]
        yield from self._take(_Line(number, text.removeprefix("\ufeff"), bad))
        while self.todo:
            yield from self._take(self.todo.popleft())

    def finish(self) -> Iterator[Value | InputError]:
        while self.lines or self.todo:
            while self.todo:
                yield from self._take(self.todo.popleft())
            if self.lines:
                yield from self._decode("the input ends before the document is closed")

    def _take(self, line: _Line) -> Iterator[Value | InputError]:
        opens = line.text[:1] in _OPENERS
        if self.lines and opens and self._cut_here():
            yield from self._decode(f"line {line.number} starts another document before "
                                    "this one is closed")
        if not self.lines and not line.text.strip():
            return
        self.lines.append(line)
        bare = _STRING.sub("", line.text)
        self.depth += (bare.count("{") + bare.count("[") - bare.count("}") - bare.count("]"))
        if self.depth <= 0:
            yield from self._decode("")

    def _cut_here(self) -> bool:
        alone = self.lines[0].text.strip() in _OPENERS
        indented = any(x.text[:1] in (" ", "\t") for x in self.lines[1:])
        return not alone or indented

    def _decode(self, unclosed: str) -> Iterator[Value | InputError]:
        """Decode every value gathered; on the first broken one, report it and read the
        lines after its start again from the next one that opens a document."""
        lines, self.lines, self.depth = self.lines, [], 0
        buf = "".join(x.text for x in lines)
        first = lines[0].number
        pos = 0
        counted, line_at = 0, first  # line numbers counted incrementally (big arrays)

        def line_of(at: int) -> int:
            nonlocal counted, line_at
            line_at += buf.count("\n", counted, at)
            counted = at
            return line_at

        while True:
            pos = _SPACE.match(buf, pos).end()  # type: ignore[union-attr]
            if pos >= len(buf):
                return
            start = line_of(pos)
            try:
                if buf[pos] == "[":
                    items, end = _array(buf, pos)
                    value = [item for _, item in items]
                    item_lines: list[int] | None = [line_of(at) for at, _ in items]
                else:
                    value, end = _DECODER.raw_decode(buf, pos)
                    item_lines = None
            except json.JSONDecodeError as exc:
                problem = self._syntax(exc, first, unclosed)
            except RecursionError:  # past ~1,000 levels the decoder gives up
                problem = "not valid JSON: nested too deeply"
            except ValueError:  # Python refuses to read an integer of more than 4300 digits
                problem = "not valid JSON: a number of more than 4300 digits"
            else:
                bad = _bad_byte(lines, start - first, line_of(end) - first)
                if bad is not None:
                    yield InputError(start, [bad], self.source)
                else:
                    yield from _objects(value, start, self.source, item_lines)
                pos = end
                continue
            bad = _bad_byte(lines, start - first, len(lines) - 1)
            yield InputError(start, [bad or problem], self.source)
            rest = [x for x in lines if x.number > start]
            resume = next((i for i, x in enumerate(rest) if x.text[:1] in _OPENERS), len(rest))
            self.todo.extendleft(reversed(rest[resume:]))
            return

    @staticmethod
    def _syntax(exc: json.JSONDecodeError, first: int, unclosed: str) -> str:
        doc, at, msg = exc.doc, exc.pos, exc.msg
        line = first + exc.lineno - 1
        if msg == "Invalid control character at" and doc[at:at + 1] in ("\n", "\r"):
            return f"not valid JSON: a string is not closed at the end of line {line}"
        if at >= len(doc.rstrip()) and unclosed:
            return f"not valid JSON: {unclosed}"
        if doc[:at].rstrip()[-1:] == "," and doc[at:at + 1] in ("}", "]"):
            words = f"a comma before the closing '{doc[at]}'"
        else:
            words = _MESSAGES.get(msg, msg[:1].lower() + msg[1:])
        return f"not valid JSON: {words} at line {line}, column {exc.colno}"


def _bad_byte(lines: list[_Line], start: int, end: int) -> str | None:
    """The UTF-8 problem of the lines start..end (indexes), if one is not UTF-8."""
    for index in range(start, min(end, len(lines) - 1) + 1):
        line = lines[index]
        if line.bad_byte is not None:
            where = "" if index == start else f", line {line.number}"
            return f"not valid UTF-8 (byte 0x{line.bad_byte:02x}{where})"
    return None


def _array(buf: str, pos: int) -> tuple[list[tuple[int, Any]], int]:
    """The items of the array at `pos`, each with its own offset (for its line number)."""
    items: list[tuple[int, Any]] = []
    pos = _SPACE.match(buf, pos + 1).end()  # type: ignore[union-attr]
    if buf[pos:pos + 1] == "]":
        return items, pos + 1
    while True:
        value, end = _DECODER.raw_decode(buf, pos)
        items.append((pos, value))
        pos = _SPACE.match(buf, end).end()  # type: ignore[union-attr]
        mark = buf[pos:pos + 1]
        if mark == "]":
            return items, pos + 1
        if mark != ",":
            raise json.JSONDecodeError("Expecting ',' delimiter", buf, pos)
        pos = _SPACE.match(buf, pos + 1).end()  # type: ignore[union-attr]
        if buf[pos:pos + 1] == "]":
            raise json.JSONDecodeError("Illegal trailing comma before end of array", buf, pos)


def _objects(value: Any, line: int, source: str | None,
             item_lines: list[int] | None = None) -> Iterator[Value | InputError]:
    """The objects of one value starting at `line`: itself, or an array's items, each at its
    own line (`item_lines`; the array's line when it was read from one line). What is not an
    object is one error for the whole value: `[1,2,3]` is one mistake, not three."""
    if type(value) is dict:
        yield line, value
        return
    if not isinstance(value, list):
        yield InputError(line, [f"expected a JSON object, got {_kind(value)}"], source)
        return
    lines = item_lines or [line] * len(value)
    strays = []
    for number, (at, item) in enumerate(zip(lines, value, strict=True), start=1):
        if isinstance(item, dict):
            yield at, item
        else:
            strays.append((number, at, _kind(item)))
    if len(strays) == 1:
        number, at, kind = strays[0]
        yield InputError(at, [f"array item {number}: expected a JSON object, got {kind}"],
                         source)
    elif strays:
        numbers = ", ".join(str(n) for n, _, _ in strays[:5]) + (", …" * (len(strays) > 5))
        kinds = " and ".join(sorted({kind for _, _, kind in strays}))
        yield InputError(line, [f"array items {numbers}: expected JSON objects, got {kinds}"],
                         source)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
