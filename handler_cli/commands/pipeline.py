"""The step commands (`classify` … `notify-admin`, `subtask`) and `run`: one loop for all.

Each reads documents (file arguments or stdin), applies its step(s), writes each document as
one JSON line on stdout and reports on stderr. Exit 0: every document went through; 1: at
least one failed or could not be read; 2: usage or configuration error.

A batch reports itself once: on a terminal, a progress bar while it runs and a table at the
end; otherwise (cron, a log file) one summary line. While the bar is drawn, log lines go
through the same rich console, which prints them above the bar instead of into it. The bar
measures the bytes read when the input is files (their size is known); on stdin it counts.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from handler_cli.commands._common import (
    BEFORE_COMMAND,
    ExitCode,
    InputArg,
    Inputs,
    PrettyOpt,
    QuietOpt,
    StrictOpt,
    VerboseOpt,
    fail,
    settings_or_exit,
)
from handler_cli.steps import PIPELINE, Step

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document

log = logging.getLogger("handler_cli")


def process(
    paths: list[Path] | None,
    steps: Sequence[Step],
    *,
    command: str,
    example: str,
    pretty: bool = False,
    strict: bool = False,
    quiet: bool = False,
    verbose: bool = False,
    show_progress: bool = False,
    keep: bool = False,
) -> int:
    """Apply `steps` to every document of the inputs; return the exit code.

    `keep`: store every document, ticket or not (`pipeline.run_chain`)."""
    from handler_cli.config import ConfigError
    from handler_cli.context import Context
    from handler_cli.jsonio import InputError, read_documents
    from handler_cli.pipeline import run_chain

    settings = settings_or_exit(quiet=quiet, verbose=verbose, strict=strict)
    inputs = Inputs(paths, example)
    ctx = Context(settings)
    out = sys.stdout.buffer  # JSON is UTF-8 (RFC 8259), whatever the terminal's locale
    quiet = quiet or BEFORE_COMMAND.quiet
    live = show_progress and not quiet and sys.stderr.isatty()
    report = BatchReport(command, live=live, total_bytes=inputs.total_bytes,
                         done_bytes=inputs.done_bytes)
    try:
        for source, stream in inputs:
            for item in read_documents(stream, source):
                if isinstance(item, InputError):
                    log.error("%s", item)
                    report.unreadable()
                    continue
                if keep and _erased_client(item, ctx):
                    report.processed(item, False)
                    continue
                ok = run_chain(item, ctx, steps, keep=keep)
                out.write((item.to_json(pretty) + "\n").encode())
                report.processed(item, ok)
    except ConfigError as exc:
        report.close(ctx)
        out.flush()
        fail(ExitCode.USAGE, "%s", exc)
    except BrokenPipeError:  # `handler-cli run big.jsonl | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        report.close(ctx)
        return ExitCode.FAILED
    out.flush()
    report.close(ctx)
    return ExitCode.FAILED if report.failed else ExitCode.OK


def _erased_client(doc: Document, ctx: Context) -> bool:
    """`run` never brings back, unasked, the data of a client erased at their request
    (`handler-cli forget`), as the webhook holds such a request: refused, nothing stored."""
    when = ctx.storage.forgotten.forgotten_at(doc.user_email)
    if when is None:
        return False
    from handler_cli.intake.records import iso  # the webhook's hold says it the same way

    log.error("%s: not run: this client's data was erased at their request on %s "
              "(handler-cli forget). If they came back to us: handler-cli forget --lift "
              "EMAIL, then run it again", doc.request_id, iso(when))
    return True


SERVICES = ("crm", "files", "mailer", "tasks", "llm")


class BatchReport:
    """Counts what a command did to its documents and tells a person, once, at the end."""

    def __init__(self, command: str, *, live: bool, total_bytes: int | None,
                 done_bytes: Callable[[], int]) -> None:
        self.command = command
        self.live = live
        self.tally: Counter[str] = Counter()
        self.types: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.emails = 0  # sent by this command
        self.emails_before = 0  # found sent by an earlier run: a re-run must not look like a send
        self._since = datetime.now(UTC)
        self._started = time.monotonic()
        self._done_bytes = done_bytes
        self._stack = ExitStack()
        self._progress: Any = None
        self._task: Any = None
        if live:
            self._start(total_bytes)

    def _start(self, total_bytes: int | None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        from handler_cli import logs

        self.console = Console(stderr=True)
        columns: list[Any] = [TextColumn("{task.fields[count]} documents"), BarColumn()]
        if total_bytes is not None:  # files: how much of them is read, and how long is left
            columns += [TaskProgressColumn(), DownloadColumn(), TimeRemainingColumn()]
        self._progress = Progress(*columns, console=self.console, transient=True,
                                  redirect_stdout=False)
        self._task = self._progress.add_task(self.command, total=total_bytes, count=0)
        self._stack.enter_context(logs.through_console(self.console))
        self._stack.enter_context(self._progress)

    def unreadable(self) -> None:
        self.tally["unreadable"] += 1
        self._advance()

    def processed(self, doc: Document, ok: bool) -> None:
        self.tally["ok" if ok else "failed"] += 1
        self.types[doc.type_final or "?"] += 1
        if doc.validation_status:
            self.statuses[doc.validation_status] += 1
        fresh = sum(1 for e in doc.emails.values() if e.sent_at >= self._since)
        self.emails += fresh
        self.emails_before += len(doc.emails) - fresh
        self._advance()

    def _advance(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self._done_bytes(),
                                  count=sum(self.tally.values()))

    @property
    def failed(self) -> bool:
        return bool(self.tally["failed"] or self.tally["unreadable"])

    def close(self, ctx: Any) -> None:
        """Stop the bar; then the table (terminal) or one summary line on stderr."""
        self._stack.close()
        counts = (f"{self.tally['ok']} ok, {self.tally['failed']} failed, "
                  f"{self.tally['unreadable']} unreadable")
        if self.live:
            self._table(counts, ctx)
            return
        seconds = time.monotonic() - self._started
        details = [", ".join(f"{k} {v}" for k, v in sorted(self.types.items())),
                   ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())),
                   f"{self.emails} e-mail{'s' * (self.emails != 1)} sent" if self.emails else "",
                   f"{self.emails_before} already sent before" if self.emails_before else ""]
        line = f"{self.command}: {counts}" + "".join(f"; {d}" for d in details if d)
        (log.warning if self.failed else log.info)("%s (%.1f s)", line, seconds)

    def _table(self, counts: str, ctx: Any) -> None:
        from rich.table import Table

        table = Table(title=f"handler-cli {self.command}", show_header=False,
                      title_justify="left")
        table.add_row("documents", counts)
        table.add_row("types", ", ".join(f"{k} {v}" for k, v in sorted(self.types.items())))
        if self.statuses:
            table.add_row("statuses",
                          ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())))
        table.add_row("e-mails", f"{self.emails} sent now"
                      + (f", {self.emails_before} already sent before" if self.emails_before else ""))
        for service in SERVICES:
            backend = vars(ctx).get(service)  # only what this batch actually used
            if backend is not None:
                table.add_row(service, backend.describe())
        table.add_row("time", f"{time.monotonic() - self._started:.1f} s")
        self.console.print(table)


def step_command(step: Step) -> Callable[..., None]:
    """A Typer command applying one step; all steps share the same options."""
    example = _example(step)

    def command(
        input: InputArg = None, pretty: PrettyOpt = False, strict: StrictOpt = False,
        quiet: QuietOpt = False, verbose: VerboseOpt = False,
    ) -> None:
        raise typer.Exit(process(input, [step], command=step.name, example=example,
                                 pretty=pretty, strict=strict, quiet=quiet, verbose=verbose))

    command.__doc__ = (
        f"{step.summary}\n\nReads request documents (JSON objects, arrays or JSON Lines, from "
        f"files or stdin) and writes them back on stdout with this step's fields added. A "
        f"document that already has them is passed through unchanged, so re-running never "
        f"repeats a side effect.\n\nExample: `{example}`"
    )
    return command


def _example(step: Step) -> str:
    """The shortest pipe that brings a sample to this step."""
    if step not in PIPELINE:
        return f"handler-cli requests show REQUEST_ID | handler-cli {step.name}"
    before = PIPELINE[: PIPELINE.index(step) + 1]
    return "handler-cli " + " | handler-cli ".join(
        [f"{before[0].name} samples/modelisation_simple.json", *(s.name for s in before[1:])]
    )


RUN_EXAMPLE = "handler-cli run samples/modelisation_simple.json"


def run(
    input: InputArg = None, pretty: PrettyOpt = False, strict: StrictOpt = False,
    quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Run the whole intake chain, steps 1 to 7, on each request.

    classify → upload → contact → ticket → analyze → notify-client → notify-admin. Gives the
    same document as piping the step commands one into the other. Safe to re-run: steps
    already done are skipped. On a terminal, a progress bar and a summary table; otherwise
    one summary line on stderr.

    Example: `handler-cli run samples/*.json --pretty`
    """
    raise typer.Exit(process(input, PIPELINE, command="run", example=RUN_EXAMPLE,
                             pretty=pretty, strict=strict, quiet=quiet, verbose=verbose,
                             show_progress=True, keep=True))
