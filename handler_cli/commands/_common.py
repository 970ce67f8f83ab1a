"""What every command shares: exit codes, common options, settings, and the error line.

One place for each, as pip-tools keeps its options in one module and pipx names its exit
codes once: a command parses, calls one function, renders the result and exits with an
`ExitCode`.
"""

from __future__ import annotations

import logging
import sys
from enum import IntEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from handler_cli.config import Settings

log = logging.getLogger("handler_cli")


class ExitCode(IntEnum):
    """The README's exit codes."""

    OK = 0
    """Every document went through, or there was nothing to do."""
    FAILED = 1
    """At least one document or service failed, or something asked for was not found."""
    USAGE = 2
    """Usage or configuration error: unknown command, missing file, bad setting, strict mode."""


InputArg = Annotated[
    Path | None,
    typer.Argument(
        help="JSON file (one object, an array, or JSON Lines). Reads stdin when absent or '-'.",
        show_default=False,
    ),
]
PrettyOpt = Annotated[bool, typer.Option("--pretty", help="Indent the JSON output (for reading).")]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Refuse local backends: every service must be live.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs and tracebacks.")]


def fail(code: ExitCode, message: str, *args: Any) -> NoReturn:
    """The one way a command stops on an error: "handler-cli: error: …" on stderr, then exit."""
    log.error(message, *args)
    raise typer.Exit(code)


def settings_or_exit(
    *, quiet: bool = False, verbose: bool = False, strict: bool = False, **overrides: Any
) -> Settings:
    """Logging on stderr, then the settings; a configuration error exits 2 naming the setting."""
    from handler_cli import logs
    from handler_cli.config import ConfigError, load_settings

    logs.setup(-1 if quiet else (1 if verbose else 0))
    try:
        return load_settings(handler_strict=True if strict else None, **overrides)
    except ConfigError as exc:
        fail(ExitCode.USAGE, "%s", exc)


def open_input(path: Path | None, example: str = "handler-cli classify samples/support.json"
               ) -> IO[bytes]:
    """The file named, or stdin (refused when it is a terminal: nothing was piped), as bytes:
    the reader decodes each line itself and reports one that is not UTF-8."""
    if path is None or str(path) == "-":
        if sys.stdin.isatty():
            fail(ExitCode.USAGE, "no input: give a JSON file, or pipe JSON into stdin (e.g. `%s`)",
                 example)
        return sys.stdin.buffer
    try:
        return path.open("rb")
    except OSError as exc:
        fail(ExitCode.USAGE, "cannot read %s: %s", path, exc.strerror)
