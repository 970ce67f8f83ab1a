"""`reply` and `reply-intent`: a client's answer typed in by hand, and what an answer means.

Thin commands: recording a reply is `handler_cli.replies.local.record_reply`, reading one is
`handler_cli.intent`. Exit 0: done; 1: an input was unreadable; 2: usage or configuration
error (not the local CRM, unknown ticket, missing file, empty reply).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from handler_cli.commands._common import (
    ExitCode,
    PrettyOpt,
    QuietOpt,
    VerboseOpt,
    fail,
    settings_or_exit,
)


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

    from handler_cli.config import ConfigError
    from handler_cli.context import Context
    from handler_cli.replies.local import record_reply

    log = logging.getLogger("handler_cli")
    settings = settings_or_exit(quiet=quiet, verbose=verbose)
    from handler_cli.poll import next_step

    ctx = Context(settings)
    try:
        record = record_reply(ctx, ticket_id, text, files or [], sender)
    except ConfigError as exc:
        fail(ExitCode.USAGE, "%s", exc)
    step = next_step(ctx, ticket_id)  # said as it is: never an action the poll will not take
    sys.stdout.write(json.dumps({
        "ticket_id": ticket_id, "message_id": record.message_id, "from": record.sender,
        "subject": record.subject, "text": text, "files": list(record.attachments),
        "poll": step,
    }, ensure_ascii=False, separators=(",", ":")) + "\n")
    if step == "act":
        log.info("reply recorded on ticket %s; the next `handler-cli poll` reads it and acts "
                 "on it", ticket_id)
    elif step == "forward":
        log.info("reply recorded on ticket %s; the client is not asked anything there (a "
                 "support request, a decided ticket, or the admin's to price): the next "
                 "`handler-cli poll` forwards it to the admin", ticket_id)
    else:
        log.warning("reply recorded on ticket %s, but `handler-cli poll` will not read it: "
                    "the ticket has been quiet for more than HANDLER_WATCH_DECIDED_DAYS, or "
                    "its request is not in this data dir; tell the admin yourself", ticket_id)


def reply_intent(
    input: Annotated[Path | None, typer.Argument(
        help="JSON file of {\"text\": ...} objects (one, an array, or JSON Lines). "
             "Reads stdin when absent or '-'.", show_default=False)] = None,
    pretty: PrettyOpt = False,
    quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Say what each reply means: validation, refus, question, none or unclear.

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
