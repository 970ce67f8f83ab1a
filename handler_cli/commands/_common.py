"""What every command shares: exit codes, common options, settings, input, the error line.

One place for each, as pip-tools keeps its options in one module and pipx names its exit
codes once: a command parses, calls one function, renders the result and exits with an
`ExitCode`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
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
    list[Path] | None,
    typer.Argument(
        help="JSON files: objects, arrays or JSON Lines, in any layout. Reads stdin when "
             "absent or '-'.",
        show_default=False,
    ),
]
PrettyOpt = Annotated[bool, typer.Option("--pretty", help="Indent the JSON output (for reading).")]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Refuse local backends: every service must be live.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs and tracebacks.")]


class CommonOptions:
    """-q, -v and --strict given before the command (`handler-cli -q run ...`): the root
    callback sets them on every invocation, a command's own flags add to them. A plain
    class, not a dataclass: building one costs every command's start-up half a millisecond."""

    def __init__(self) -> None:
        self.quiet = False
        self.verbose = False
        self.strict = False


BEFORE_COMMAND = CommonOptions()


def fail(code: ExitCode, message: str, *args: Any) -> NoReturn:
    """The one way a command stops on an error: "handler-cli: error: …" on stderr, then exit."""
    if not logging.getLogger("handler_cli").handlers:
        from handler_cli import logs

        logs.setup(0)
    log.error(message, *args)
    raise typer.Exit(code)


def setup_logging(*, quiet: bool = False, verbose: bool = False) -> None:
    """Logs on stderr at the level the flags (here or before the command) ask for."""
    from handler_cli import logs

    quiet = quiet or BEFORE_COMMAND.quiet
    verbose = verbose or BEFORE_COMMAND.verbose
    logs.setup(1 if verbose else (-1 if quiet else 0))


def settings_or_exit(
    *, quiet: bool = False, verbose: bool = False, strict: bool = False,
    data_dir: bool = True, **overrides: Any,
) -> Settings:
    """Logging on stderr, then the settings; a configuration error exits 2 naming the setting.

    With `data_dir` (the default), the data dir must be usable too: a file in its place or a
    folder we may not write is a configuration error, said once here rather than as a
    traceback from the first store that opens it. Nothing is created.
    """
    from handler_cli.config import ConfigError, load_settings

    setup_logging(quiet=quiet, verbose=verbose)
    strict = strict or BEFORE_COMMAND.strict
    try:
        settings = load_settings(handler_strict=True if strict else None, **overrides)
    except ConfigError as exc:
        fail(ExitCode.USAGE, "%s", exc)
    if data_dir:
        problem = data_dir_problem(settings)
        if problem:
            fail(ExitCode.USAGE, "%s", problem)
    return settings


def data_dir_problem(settings: Settings) -> str | None:
    """Why the data dir cannot hold our files, naming HANDLER_DATA_DIR; None when it can.

    A folder we can write, or one we could create (its nearest existing parent is a folder
    we can write); the files already in it must be writable too (a store left by root)."""
    from handler_cli.config import ConfigError

    try:
        root = settings.data_dir
    except (ConfigError, OSError) as exc:
        return f"HANDLER_DATA_DIR: no data dir ({exc}); set HANDLER_DATA_DIR to a folder"
    how = ("HANDLER_DATA_DIR" if settings.handler_data_dir is not None
           else "the default data dir (set HANDLER_DATA_DIR to choose another)")
    where = root
    while not where.exists():
        if where.is_symlink():
            return f"{how}: {where} is a broken link"
        if where.parent == where:
            break
        where = where.parent
    if not where.is_dir():
        what = "it" if where == root else f"{where}, on its path,"
        return f"{how}: {root} is not a folder ({what} is a file)"
    if not os.access(where, os.W_OK | os.X_OK):
        what = "" if where == root else f" (cannot create it in {where})"
        return f"{how}: {root} is not writable{what}"
    if where == root:
        try:
            entries = list(os.scandir(root))
        except OSError as exc:
            return f"{how}: {root} cannot be read ({exc.strerror})"
        for entry in entries:
            if entry.name.endswith((".sqlite3", ".sqlite3-wal", ".sqlite3-shm")) and not \
                    os.access(entry.path, os.R_OK | os.W_OK):
                return f"{how}: {entry.path} is not writable"
    return None


class Inputs:
    """The input files of a command in order (stdin for none or '-'), opened one at a time.

    Every file is checked before the first is read, so a typo in the third name stops the
    command before any document went through. `done_bytes()`/`total_bytes` let a progress
    bar show how far the files are read; `total_bytes` is None for stdin.
    """

    def __init__(self, paths: list[Path] | None, example: str) -> None:
        self.paths: list[Path | None] = [None if str(p) == "-" else p for p in paths or []]
        if not self.paths:
            self.paths = [None]
        if self.paths.count(None) > 1:
            fail(ExitCode.USAGE, "stdin ('-') can be read only once")
        if None in self.paths and sys.stdin.isatty():
            fail(ExitCode.USAGE, "no input: give a JSON file, or pipe JSON into stdin "
                 "(e.g. `%s`)", example)
        self.sizes: list[int] = []
        for path in self.paths:
            if path is None:
                self.sizes.append(0)
                continue
            if path.is_dir():
                fail(ExitCode.USAGE, "cannot read %s: it is a folder", path)
            try:
                with path.open("rb") as probe:
                    self.sizes.append(os.fstat(probe.fileno()).st_size)
            except OSError as exc:
                fail(ExitCode.USAGE, "cannot read %s: %s", path, exc.strerror)
        self.total_bytes: int | None = None if None in self.paths else sum(self.sizes)
        self._before = 0  # bytes of the files already read
        self._current: IO[bytes] | None = None

    def __iter__(self) -> Iterator[tuple[str | None, IO[bytes]]]:
        """(name for messages, None for stdin; the stream) of each input, in order."""
        for path, size in zip(self.paths, self.sizes, strict=True):
            if path is None:
                self._current = sys.stdin.buffer
                yield None, sys.stdin.buffer
                continue
            try:
                stream = path.open("rb")
            except OSError as exc:  # removed since the check: say so, read the others
                log.error("cannot read %s: %s", path, exc.strerror)
                continue
            with stream:
                self._current = stream
                yield str(path), stream
                self._before += size
            self._current = None

    def done_bytes(self) -> int:
        """How many bytes of the files are read so far (for a progress bar)."""
        try:
            current = self._current.tell() if self._current is not None else 0
        except (OSError, ValueError):
            current = 0
        return self._before + current


def open_input(path: Path | None, example: str) -> IO[bytes]:
    """One input, the file named or stdin (refused when it is a terminal: nothing was
    piped), as bytes: the reader decodes it and reports a line that is not UTF-8."""
    inputs = Inputs([path] if path is not None else None, example)
    if inputs.paths[0] is None:
        return sys.stdin.buffer
    return inputs.paths[0].open("rb")
