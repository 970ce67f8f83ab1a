"""The step commands (`classify` … `notify-admin`, `subtask`) and `run`: one loop for all.

Each reads documents (file argument or stdin), applies its step(s), writes each document as
one JSON line on stdout and reports on stderr. Exit 0: every document went through; 1: at
least one failed or could not be read; 2: usage or configuration error.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import typer

from handler_cli.commands._common import (
    ExitCode,
    InputArg,
    PrettyOpt,
    QuietOpt,
    StrictOpt,
    VerboseOpt,
    open_input,
)
from handler_cli.steps import PIPELINE, Step

log = logging.getLogger("handler_cli")


def process(
    path: Path | None,
    steps: Sequence[Step],
    *,
    pretty: bool = False,
    strict: bool = False,
    quiet: bool = False,
    verbose: bool = False,
    show_progress: bool = False,
) -> int:
    """Apply `steps` to every document of the input; return the exit code."""
    from handler_cli import logs
    from handler_cli.config import ConfigError, load_settings
    from handler_cli.context import Context
    from handler_cli.jsonio import InputError, read_documents
    from handler_cli.pipeline import run_chain

    logs.setup(-1 if quiet else (1 if verbose else 0))
    try:
        settings = load_settings(handler_strict=True if strict else None)
    except ConfigError as exc:
        log.error("%s", exc)
        return ExitCode.USAGE
    ctx = Context(settings)
    stream = open_input(path)
    out = sys.stdout.buffer  # JSON is UTF-8 (RFC 8259), whatever the terminal's locale
    tally: Counter[str] = Counter()
    summary = _Summary(show_progress and sys.stderr.isatty() and not quiet)
    try:
        for item in read_documents(stream):
            if isinstance(item, InputError):
                log.error("%s", item)
                tally["unreadable"] += 1
                summary.advance(None)
                continue
            ok = run_chain(item, ctx, steps)
            tally["ok" if ok else "failed"] += 1
            out.write((item.to_json(pretty) + "\n").encode())
            summary.advance(item)
    except ConfigError as exc:
        log.error("%s", exc)
        return ExitCode.USAGE
    finally:
        summary.close()
        out.flush()
    summary.report(tally, ctx)
    if tally["failed"] or tally["unreadable"]:
        if not summary.live:
            log.warning("%d ok, %d failed, %d unreadable", tally["ok"], tally["failed"],
                        tally["unreadable"])
        return ExitCode.FAILED
    return ExitCode.OK


class _Summary:
    """On a terminal: a progress bar while running, a short table at the end (rich, stderr)."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.types: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.emails = 0
        self._progress = None
        self._task = None
        if live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.console = Console(stderr=True)
            self._progress = Progress(
                TextColumn("documents"), BarColumn(), MofNCompleteColumn(),
                console=self.console, transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("run", total=None)

    def advance(self, doc: object) -> None:
        from handler_cli.document import Document

        if isinstance(doc, Document):
            self.types[doc.type_final or "?"] += 1
            self.statuses[doc.validation_status or "-"] += 1
            self.emails += len(doc.emails)
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()

    def report(self, tally: Counter[str], ctx: object) -> None:
        if not self.live:
            return
        from rich.table import Table

        table = Table(title="handler-cli run", show_header=False, title_justify="left")
        table.add_row("documents", f"{tally['ok']} ok, {tally['failed']} failed, "
                      f"{tally['unreadable']} unreadable")
        table.add_row("types", ", ".join(f"{k} {v}" for k, v in sorted(self.types.items())))
        table.add_row("statuses", ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())))
        table.add_row("e-mails", str(self.emails))
        for service in ("crm", "files", "mailer", "tasks", "llm"):
            backend = vars(ctx).get(service)  # only what this run actually used
            if backend is not None:
                table.add_row(service, backend.describe())
        self.console.print(table)


def step_command(step: Step) -> Callable[..., None]:
    """A Typer command applying one step; all steps share the same options."""

    def command(
        input: InputArg = None, pretty: PrettyOpt = False, strict: StrictOpt = False,
        quiet: QuietOpt = False, verbose: VerboseOpt = False,
    ) -> None:
        raise typer.Exit(process(input, [step], pretty=pretty, strict=strict, quiet=quiet,
                                 verbose=verbose))

    command.__doc__ = (
        f"{step.summary}\n\nReads request documents (JSON object or JSON Lines) and writes them "
        f"back on stdout with this step's fields added. A document that already has them is "
        f"passed through unchanged, so re-running never repeats a side effect.\n\n"
        f"Example: `{_example(step)}`"
    )
    return command


def _example(step: Step) -> str:
    """The shortest pipe that brings a sample to this step."""
    if step not in PIPELINE:
        return f"handler-cli {step.name} validated.jsonl  (documents the client validated)"
    before = PIPELINE[: PIPELINE.index(step) + 1]
    return "handler-cli " + " | handler-cli ".join(
        [f"{before[0].name} samples/modelisation_simple.json", *(s.name for s in before[1:])]
    )


def run(
    input: InputArg = None, pretty: PrettyOpt = False, strict: StrictOpt = False,
    quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Run the whole intake chain, steps 1 to 7, on each request.

    classify → upload → contact → ticket → analyze → notify-client → notify-admin. Gives the
    same document as piping the step commands one into the other. Safe to re-run: steps
    already done are skipped.

    Example: handler-cli run samples/modelisation_simple.json --pretty
    """
    raise typer.Exit(process(input, PIPELINE, pretty=pretty, strict=strict, quiet=quiet,
                             verbose=verbose, show_progress=True))
