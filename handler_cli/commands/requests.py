"""`handler-cli requests list|show|retry`: what the webhook accepted, and the dead letters.

Output is JSON, one object per line on stdout (pipe it to `jq`); messages go to stderr.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

from handler_cli.commands._common import ExitCode, PrettyOpt, fail, settings_or_exit

log = logging.getLogger("handler_cli")

STATUSES = ("queued", "running", "retrying", "done", "failed")

app = typer.Typer(
    help="See, inspect and replay the requests the webhook accepted.",
    no_args_is_help=True,
)


def _store():  # type: ignore[no-untyped-def]
    from handler_cli.config import ConfigError
    from handler_cli.storage import open_store

    try:
        return open_store(settings_or_exit())
    except ConfigError as exc:
        fail(ExitCode.USAGE, "%s", exc)


def _dump(data: object, pretty: bool) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2 if pretty else None)


@app.command("list")
def list_requests(
    status: Annotated[str | None, typer.Option(
        help=f"Only this status: {', '.join(STATUSES)}. `failed` lists what needs attention."
    )] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.", min=1)] = 50,
) -> None:
    """List requests, newest first: one JSON summary per line."""
    if status is not None and status not in STATUSES:
        settings_or_exit()
        fail(ExitCode.USAGE, "--status: expected one of %s", ", ".join(STATUSES))
    store = _store()
    try:
        records = store.recent(status, limit)
    finally:
        store.close()
    for rec in records:
        print(_dump(rec.summary(), False))
    if not records:
        log.info("no request%s", f" with status {status}" if status else "")


@app.command("show")
def show(
    request_id: Annotated[str, typer.Argument(help="The request_id the webhook answered.")],
    pretty: PrettyOpt = False,
) -> None:
    """Everything about one request: status, attempts, each step's outcome, the document."""
    store = _store()
    try:
        rec = store.get(request_id)
    finally:
        store.close()
    if rec is None:
        fail(ExitCode.FAILED, "no request %s", request_id)
    print(_dump(rec.to_dict(), pretty))


@app.command("retry")
def retry(
    request_id: Annotated[str, typer.Argument(help="A failed (or retrying) request.")],
) -> None:
    """Queue a failed request again now (steps already done are not repeated)."""
    from handler_cli.config import ConfigError
    from handler_cli.queue import RequestQueue

    try:
        rq = RequestQueue(settings_or_exit())
    except ConfigError as exc:
        fail(ExitCode.USAGE, "%s", exc)
    try:
        previous = rq.retry(request_id)
    finally:
        rq.close()
    if previous is None:
        fail(ExitCode.FAILED, "no request %s", request_id)
    if previous not in ("failed", "retrying"):
        fail(ExitCode.FAILED, "%s is %s; only failed or retrying requests are retried",
             request_id, previous)
    log.info("%s queued again (was %s)", request_id, previous)
