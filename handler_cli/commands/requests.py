"""`handler-cli requests list|show|retry`: what the webhook accepted, and the dead letters.

Output is JSON, one object per line on stdout (pipe it to `jq`); messages go to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 3
STATUSES = ("queued", "running", "retrying", "done", "failed")

app = typer.Typer(
    help="See, inspect and replay the requests the webhook accepted.",
    no_args_is_help=True,
)


def _store():  # type: ignore[no-untyped-def]
    from handler_cli.config import ConfigError, load_settings
    from handler_cli.queue import open_store

    try:
        return open_store(load_settings())
    except ConfigError as exc:
        print(f"handler-cli: error: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_CONFIG) from None


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
        print(f"handler-cli: error: --status: expected one of {', '.join(STATUSES)}",
              file=sys.stderr)
        raise typer.Exit(EXIT_USAGE)
    store = _store()
    try:
        records = store.recent(status, limit)
    finally:
        store.close()
    for rec in records:
        print(_dump(rec.summary(), False))
    if not records:
        print("handler-cli: no request" + (f" with status {status}" if status else ""),
              file=sys.stderr)


@app.command("show")
def show(
    request_id: Annotated[str, typer.Argument(help="The request_id the webhook answered.")],
    pretty: Annotated[bool, typer.Option(help="Indent the JSON.")] = False,
) -> None:
    """Everything about one request: status, attempts, each step's outcome, the document."""
    store = _store()
    try:
        rec = store.get(request_id)
    finally:
        store.close()
    if rec is None:
        print(f"handler-cli: error: no request {request_id}", file=sys.stderr)
        raise typer.Exit(EXIT_NOT_FOUND)
    print(_dump(rec.to_dict(), pretty))


@app.command("retry")
def retry(
    request_id: Annotated[str, typer.Argument(help="A failed (or retrying) request.")],
) -> None:
    """Queue a failed request again now (steps already done are not repeated)."""
    from handler_cli.config import ConfigError, load_settings
    from handler_cli.queue import RequestQueue

    try:
        rq = RequestQueue(load_settings())
    except ConfigError as exc:
        print(f"handler-cli: error: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_CONFIG) from None
    try:
        previous = rq.retry(request_id)
    finally:
        rq.close()
    if previous is None:
        print(f"handler-cli: error: no request {request_id}", file=sys.stderr)
        raise typer.Exit(EXIT_NOT_FOUND)
    if previous not in ("failed", "retrying"):
        print(f"handler-cli: error: {request_id} is {previous}; only failed or retrying "
              "requests are retried", file=sys.stderr)
        raise typer.Exit(EXIT_NOT_FOUND)
    print(f"handler-cli: {request_id} queued again (was {previous})", file=sys.stderr)
