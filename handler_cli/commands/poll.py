"""`poll`: the clients' answers, read and acted on (the work is in `handler_cli.poll`).

Exit 0: done or nothing to do (also when another poll holds the lock); 1: a backend or a
ticket failed; 2: usage or configuration error.
"""

from __future__ import annotations

from typing import Annotated

import typer

from handler_cli.commands._common import (
    ExitCode,
    QuietOpt,
    StrictOpt,
    VerboseOpt,
    fail,
    settings_or_exit,
)


def poll(
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Read and decide, print what would happen; change nothing.")] = False,
    watch: Annotated[float | None, typer.Option(
        "--watch", metavar="SECONDS", min=1,
        help="Keep polling, every SECONDS, until interrupted.")] = None,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed",
        help="Act again on the replies parked after an unexpected failure (fix it first).")
    ] = False,
    strict: StrictOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Read the clients' replies to quotes and requests for information, and act on them.

    For each ticket waiting for its client (pending_credits, pending_info): a validation
    creates the ClickUp subtask and confirms to the client, a refusal closes the ticket, a
    question or a reply it cannot read with confidence goes to the admin, missing
    information gets the request analysed again. A message on a decided ticket (validated,
    rejected, waiting for the admin) goes to the admin once. No reply: one reminder after
    HANDLER_REMIND_DAYS, the admin told after HANDLER_STALE_DAYS. A ticket that fails in an
    unexpected way fails alone: the admin is told, the others go on, the exit code is 1.

    Each reply is acted on once, however often this runs; a second poll started while one
    is running exits at once. One JSON line per ticket acted on goes to stdout, a summary
    to stderr.

    Example (cron, every 5 minutes): */5 * * * * handler-cli poll >> poll.jsonl
    """
    import logging
    import sys

    from handler_cli.config import ConfigError
    from handler_cli.context import Context
    from handler_cli.poll import PollReport
    from handler_cli.poll import poll as poll_once

    log = logging.getLogger("handler_cli")
    settings = settings_or_exit(quiet=quiet, verbose=verbose, strict=strict)
    ctx = Context(settings)

    def one_pass() -> int:
        nonlocal retry_failed
        report: PollReport = poll_once(ctx, dry_run=dry_run, retry_failed=retry_failed)
        retry_failed = False
        for outcome in report.outcomes:
            sys.stdout.write(outcome.to_json() + "\n")
        sys.stdout.flush()
        if report.failures:
            log.warning("%s", report.summary())
        else:
            log.info("%s", report.summary())
        return ExitCode.FAILED if report.failures else ExitCode.OK

    try:
        if watch is None:
            raise typer.Exit(one_pass())
        log.info("poll: every %g s; Ctrl-C to stop", watch)
        import time

        while True:
            one_pass()
            time.sleep(watch)
    except ConfigError as exc:
        fail(ExitCode.USAGE, "%s", exc)
    except KeyboardInterrupt:
        log.info("poll: stopped")
        raise typer.Exit(ExitCode.OK) from None
