"""`poll`, `reply` and `reply-intent`: the client's answer, read and acted on.

Thin commands: the work is in `handler_cli.poll` (the pass), `handler_cli.replies` (where
replies come from) and `handler_cli.intent` (what a reply means). Exit 0: done or nothing
to do (also when another poll holds the lock); 1: a backend failed or input was unreadable;
2: usage or configuration error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from handler_cli.commands._common import (
    ExitCode,
    PrettyOpt,
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
    strict: StrictOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Read the clients' replies to quotes and requests for information, and act on them.

    For each ticket waiting for its client (pending_credits, pending_info): a validation
    creates the ClickUp subtask and confirms to the client, a refusal closes the ticket, a
    question goes to the admin, missing information gets the request analysed again. No
    reply: one reminder after HANDLER_REMIND_DAYS, the admin told after HANDLER_STALE_DAYS.

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
        report: PollReport = poll_once(ctx, dry_run=dry_run)
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


def reply(
    ticket_id: Annotated[str, typer.Argument(help="The ticket the client answers.")],
    text: Annotated[str, typer.Argument(help="What the client wrote.")],
    files: Annotated[list[Path] | None, typer.Option(
        "--file", "-f", help="A file the client attached (repeatable).")] = None,
    sender: Annotated[str | None, typer.Option(
        "--from", help="The sender's address (default: the client's).")] = None,
    quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Record a client's reply by hand on the local backend; the next `poll` reads it.

    For trying the workflow without a mailbox, or typing in an answer given by phone. With
    HubSpot, the client's e-mails are read from the ticket instead.

    Example: handler-cli reply 1001 "Je valide" && handler-cli poll
    """
    import json
    import logging
    import sys
    from email.utils import make_msgid

    from handler_cli.context import Context
    from handler_cli.poll import awaited_email
    from handler_cli.services import EmailRecord, ServiceError

    log = logging.getLogger("handler_cli")
    settings = settings_or_exit(quiet=quiet, verbose=verbose)
    ctx = Context(settings)
    if ctx.crm.name != "local":
        log.error("reply records a reply in the local CRM only; with %s, the client's "
                  "e-mails are read from the ticket by `handler-cli poll`", ctx.crm.name)
        raise typer.Exit(ExitCode.USAGE)
    try:
        ctx.crm.get_ticket(ticket_id)
    except ServiceError:
        log.error("no ticket %s in the local CRM (%s)", ticket_id, ctx.crm.describe())
        raise typer.Exit(ExitCode.USAGE) from None
    paths = [p.expanduser().resolve() for p in files or []]
    for path in paths:
        if not path.is_file():
            log.error("--file %s: no such file", path)
            raise typer.Exit(ExitCode.USAGE)
    if not text.strip() and not paths:
        log.error("the reply is empty: give its text, or --file")
        raise typer.Exit(ExitCode.USAGE)
    doc = ctx.documents.by_ticket(ticket_id)
    awaited = awaited_email(doc) if doc else None
    subject = f"Re: {awaited[1].subject}" if awaited else f"Re: [Ticket #{ticket_id}]"
    record = EmailRecord(
        message_id=make_msgid(domain="reply.handler-cli.local"), direction="INCOMING",
        sender=sender or (doc.user_email if doc else "client@inconnu.invalid"),
        to=settings.mail_reply_to or settings.mail_from, subject=subject, text=text,
        at=ctx.now(), in_reply_to=awaited[1].message_id if awaited else None,
        attachments=tuple(str(p) for p in paths),
    )
    ctx.crm.log_email(ticket_id, record)
    sys.stdout.write(json.dumps({
        "ticket_id": ticket_id, "message_id": record.message_id, "from": record.sender,
        "subject": subject, "text": text, "files": [str(p) for p in paths],
    }, ensure_ascii=False, separators=(",", ":")) + "\n")
    log.info("reply recorded on ticket %s; `handler-cli poll` will act on it", ticket_id)


def reply_intent(
    input: Annotated[Path | None, typer.Argument(
        help="JSON file of {\"text\": ...} objects (one, an array, or JSON Lines). "
             "Reads stdin when absent or '-'.", show_default=False)] = None,
    pretty: PrettyOpt = False,
    quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Say what each reply means: validation, refus, question or none.

    Adds `intent`, `confiance` and `method` (keywords, or llm when Claude was asked) to
    each object; other fields pass through. Quoted history and signatures are ignored.

    Example: echo '{"text": "OK mais quel délai ?"}' | handler-cli reply-intent
    """
    import json
    import logging
    import sys

    from handler_cli.commands._common import open_input
    from handler_cli.config import ConfigError
    from handler_cli.context import Context
    from handler_cli.intent import read_intent, strip_quoted
    from handler_cli.jsonio import InputError, read_values

    log = logging.getLogger("handler_cli")
    settings = settings_or_exit(quiet=quiet, verbose=verbose)
    stream = open_input(input, "echo '{\"text\": \"Je valide\"}' | handler-cli reply-intent")
    unreadable = 0
    try:
        llm = Context(settings).llm
    except ConfigError as exc:
        fail(ExitCode.USAGE, "%s", exc)
    for value in read_values(stream):
        if isinstance(value, InputError):
            problem: InputError | None = value
        else:
            line, item = value
            problem = (
                InputError(line, [f"expected a JSON object, got {type(item).__name__}"])
                if not isinstance(item, dict)
                else None if isinstance(item.get("text"), str)
                else InputError(line, ["text: required, a string"])
            )
        if problem is not None:
            log.error("%s", problem)
            unreadable += 1
            continue
        result = read_intent(strip_quoted(str(item["text"])), llm=llm)
        out = {**item, "intent": result.intent, "confiance": round(float(result.confiance), 3),
               "method": result.method}
        sys.stdout.write(json.dumps(out, ensure_ascii=False, indent=2 if pretty else None,
                                    separators=None if pretty else (",", ":")) + "\n")
    sys.stdout.flush()
    raise typer.Exit(ExitCode.FAILED if unreadable else ExitCode.OK)
