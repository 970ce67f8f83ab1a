"""`handler-cli requests list|show|retry`: every request the installation knows.

Whatever door it came through (the webhook, `run`, a step command) and whatever the poll
did with the client's reply: the view is `handler_cli.overview`. On a terminal `list` is a
table and `show` a page; piped, `list` writes one JSON summary per line and `show` the
current document, so `handler-cli requests show ID | handler-cli subtask` works.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from handler_cli.commands import retention
from handler_cli.commands._common import ExitCode, PrettyOpt, fail, settings_or_exit

if TYPE_CHECKING:
    from rich.table import Table

    from handler_cli.overview import RequestView

log = logging.getLogger("handler_cli")

app = typer.Typer(
    help="Every request the installation knows (webhook, run, replies): list, show, retry.",
    no_args_is_help=True,
)

SinceOpt = Annotated[str | None, typer.Option(
    "--since", metavar="PERIOD", help="Only requests received in this period: 30d, 12h, 2w, "
    "or since a date (2026-11-01).")]


def since_or_exit(since: str | None) -> datetime | None:
    from handler_cli.overview import parse_since

    if since is None:
        return None
    try:
        return parse_since(since, datetime.now(UTC))
    except ValueError as exc:
        fail(ExitCode.USAGE, "--since: %s", exc)


@app.command("list")
def list_requests(
    status: Annotated[str | None, typer.Option(
        metavar="STATUS", help="Only this status: queued, running, retrying or failed (the "
        "webhook at work; `failed` is what needs attention); done (the chain went through), "
        "or where it then stands: open (a support ticket), pending_info, pending_credits, "
        "pending_admin, validated, rejected; received (no ticket yet).")
    ] = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option(metavar="N", help="At most this many, newest first.",
                                       min=1)] = 50,
) -> None:
    """List requests, newest first: a table on a terminal, one JSON summary per line when
    piped (`handler-cli requests list --status failed | jq .request_id`)."""
    from handler_cli.overview import STATUSES, Overview

    settings = settings_or_exit()
    if status is not None and status not in STATUSES:
        fail(ExitCode.USAGE, "--status: expected one of %s", ", ".join(STATUSES))
    start = since_or_exit(since)
    with Overview(settings) as overview:
        views = overview.requests(status=status, since=start, limit=limit)
    if not views:
        log.info("no request%s%s", f" with status {status}" if status else "",
                 f" since {since}" if since else "")
        return
    if sys.stdout.isatty():
        _table(views)
        return
    for view in views:
        print(json.dumps(view.summary(), ensure_ascii=False))


@app.command("show")
def show(
    request_id: Annotated[str, typer.Argument(
        help="The request's id (what the webhook answered, `request_id` in a document), or "
        "its ticket's number.")],
    pretty: PrettyOpt = False,
    full: Annotated[bool, typer.Option(
        "--full", help="Everything as JSON (status, the client's answers, attempts and "
        "their history, the document) instead of the document alone.")] = False,
) -> None:
    """One request: on a terminal, where it stands and what happened; piped, its current
    document, ready for the next step (`handler-cli requests show ID | handler-cli subtask`)."""
    from handler_cli.overview import Overview

    settings = settings_or_exit()
    with Overview(settings) as overview:
        view = overview.get(request_id)
    if view is None:
        fail(ExitCode.FAILED, "no request or ticket %s", request_id)
    if full:
        print(json.dumps(view.to_dict(), ensure_ascii=False, indent=2 if pretty else None))
    elif sys.stdout.isatty():
        _page(view)
    else:
        print(json.dumps(view.document, ensure_ascii=False, indent=2 if pretty else None,
                         separators=None if pretty else (",", ":")))


@app.command("retry")
def retry(
    request_id: Annotated[str, typer.Argument(help="A failed (or retrying) webhook request.")],
) -> None:
    """Queue a failed webhook request again now (steps already done are not repeated; the
    earlier attempts stay in its history, `requests show`)."""
    from handler_cli.overview import Overview
    from handler_cli.queue import RequestQueue

    settings = settings_or_exit()
    with Overview(settings) as overview:
        view = overview.get(request_id)
    if view is None:
        fail(ExitCode.FAILED, "no request %s", request_id)
    if view.door != "webhook":
        fail(ExitCode.FAILED, "%s came through the command line, not the webhook: run it "
             "again with `handler-cli requests show %s | handler-cli run`", view.request_id,
             view.request_id)
    rq = RequestQueue(settings)
    try:
        previous = rq.retry(view.request_id)
    finally:
        rq.close()
    if previous not in ("failed", "retrying"):
        fail(ExitCode.FAILED, "%s is %s; only failed or retrying requests are retried",
             view.request_id, previous)
    log.info("%s queued again (was %s)", view.request_id, previous)


app.command("prune")(retention.prune)  # personal data past its retention: commands/retention


# --- on a terminal --------------------------------------------------------------------------

STATUS_STYLE = {"failed": "bold red", "retrying": "yellow", "queued": "cyan",
                "running": "cyan", "validated": "green", "rejected": "magenta",
                "pending_admin": "yellow"}


def _table(views: list[RequestView]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold", caption_justify="left",
                  caption="age: since received; via: web(hook) or cli (run, steps); "
                          "* reclassified: the form said otherwise; client: the last answer "
                          "the poll acted on")
    for name in ("age", "request", "via", "type", "status", "ticket", "quote", "client"):
        # an id is copied whole into the next command: nothing is folded (100 columns fit)
        table.add_column(name, overflow="fold", no_wrap=name != "age")
    now = datetime.now(UTC)
    for view in views:
        doc = view.document
        quote = view.quote
        last = view.answers[-1] if view.answers else None
        status = view.status + (f" ×{view.attempts}" if view.status in ("failed", "retrying")
                                and view.attempts else "")
        cells = [
            _ago(view.received_at, now), view.request_id,
            "web" if view.door == "webhook" else view.door,
            str(doc.get("type_final") or "—") + ("*" if doc.get("reclassifie") else ""),
            status, str(doc.get("ticket_id") or "—"), f"{quote[0]} cr." if quote else "—",
            f"{last.intent} {_ago(_parse(last.at), now)}" if last else "—"]
        # Text, not markup: what a stranger wrote in the form is shown, never interpreted.
        table.add_row(*(Text(c, style=STATUS_STYLE.get(view.status, "") if i == 4 else "")
                        for i, c in enumerate(cells)))
    Console().print(table)


def _page(view: RequestView) -> None:
    from rich.console import Console
    from rich.json import JSON
    from rich.table import Table
    from rich.text import Text

    console = Console()
    doc = view.document
    now = datetime.now(UTC)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    quote = view.quote
    rows: list[tuple[str, str]] = [
        ("request", f"{view.request_id} ({view.door})"),
        ("status", view.status),
        ("received", _when(view.received_at, now, exact=True)),
        ("client", f"{doc.get('user_name', '?')} <{doc.get('user_email', '?')}>"),
        ("object", str(doc.get("objet", ""))),
        ("type", f"{doc.get('source')} form → {doc.get('type_final') or 'not classified'}"
                 + (" (reclassified)" if doc.get("reclassifie") else "")),
        ("ticket", f"{doc['ticket_id']} {doc.get('ticket_url', '')}" if doc.get("ticket_id")
         else "none yet"),
        ("quote", f"{quote[0]} credit(s), sent {_when(quote[1], now, exact=True)}" if quote
         else "none"),
    ]
    if view.attempts is not None:
        rows.append(("attempts", str(view.attempts) + (f" — {view.last_error}"
                                                       if view.last_error else "")))
    for name, value in rows:
        facts.add_row(name, Text(value, style=STATUS_STYLE.get(value, "")
                                 if name == "status" else ""))
    console.print(facts)
    if view.answers:
        answers = _section("the client's answers", "written", "intent", "done", "state", "text")
        for a in view.answers:
            answers.add_row(*map(Text, (_when(_parse(a.at), now, exact=True), a.intent, a.action,
                                        a.state + (f": {a.error}" if a.error else ""),
                                        _excerpt(a.text))))
        console.print(answers)
    if view.errors:
        errors = _section("errors", "step", "when", "error")
        for e in view.errors:
            errors.add_row(*map(Text, (str(e.get("step")),
                                       _when(_parse(e.get("at")), now, exact=True),
                                       str(e.get("error")))))
        console.print(errors)
    if view.history:
        history = _section("earlier attempts", "ended", "as", "attempts", "error", "retried")
        for h in view.history:
            history.add_row(*map(Text, (_when(_parse(h.get("ended_at")), now, exact=True),
                                        str(h.get("status")), str(h.get("attempts")),
                                        str(h.get("last_error") or ""),
                                        _when(_parse(h.get("retried_at")), now, exact=True))))
        console.print(history)
    console.print(JSON.from_data(doc, ensure_ascii=False))


def _section(title: str, *columns: str) -> Table:
    """A titled table of the page, its columns folded rather than cut."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False)
    for name in columns:
        table.add_column(name, overflow="fold")
    return table


def _parse(value: Any) -> datetime | None:
    from handler_cli.overview import _time

    return _time(value)


def _ago(when: datetime | None, now: datetime) -> str:
    """"now", "12m", "5h", "3d": how long ago, in a narrow column."""
    if when is None:
        return "—"
    seconds = (now - when).total_seconds()
    return ("now" if seconds < 60 else f"{seconds / 60:.0f}m" if seconds < 3600
            else f"{seconds / 3600:.0f}h" if seconds < 2 * 86400 else f"{seconds / 86400:.0f}d")


def _when(when: datetime | None, now: datetime, exact: bool = False) -> str:
    """"3 h ago" (and the local date and time when `exact`)."""
    if when is None:
        return "—"
    seconds = (now - when).total_seconds()
    ago = ("just now" if seconds < 60 else f"{seconds / 60:.0f} min ago" if seconds < 3600
           else f"{seconds / 3600:.0f} h ago" if seconds < 2 * 86400
           else f"{seconds / 86400:.0f} d ago")
    return f"{when.astimezone():%Y-%m-%d %H:%M} ({ago})" if exact else ago


def _excerpt(text: str, width: int = 80) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[:width - 1] + "…"
