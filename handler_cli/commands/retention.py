"""`handler-cli requests prune` and `handler-cli forget`: personal data kept no longer than needed.

The work is in `handler_cli.retention`. Each prints one JSON object on stdout (what was
erased, store by store, and what is left to erase elsewhere) and a summary on stderr. Exit 0
done, 1 a service failed part-way (the JSON says what was done), 2 usage or configuration.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Annotated

import typer

from handler_cli.commands._common import (
    ExitCode,
    QuietOpt,
    VerboseOpt,
    fail,
    settings_or_exit,
)

log = logging.getLogger("handler_cli")

DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="List what would be erased; erase nothing.")]
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+")


def prune(
    days: Annotated[float | None, typer.Option(
        "--days", metavar="DAYS", min=0,
        help="Erase requests finished more than DAYS ago (default HANDLER_RETENTION_DAYS, "
             "365; 0 keeps everything).")] = None,
    dry_run: DryRunOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Erase the requests finished longer ago than the retention period, from every store.

    A request is finished when nothing waits on it: not queued, running or retrying, not
    waiting for the client, the admin or its subtask. Its record, document, ledger entries,
    poll journal entries, e-mail copies, stored files (local and R2) and local CRM ticket
    go; a request still waiting is never erased, however old. `poll` does the same after
    each pass.

    Example: handler-cli requests prune --dry-run | jq '.request_ids | length'
    """
    from handler_cli.config import ConfigError
    from handler_cli.context import Context
    from handler_cli.retention import prune as run_prune

    settings = settings_or_exit(quiet=quiet, verbose=verbose)
    try:
        erasure = run_prune(Context(settings), days=days, dry_run=dry_run)
    except ConfigError as exc:
        fail(ExitCode.USAGE, "%s", exc)
    print(json.dumps(erasure.to_dict(), ensure_ascii=False))
    if erasure.extra["retention_days"] <= 0:
        log.info("prune: retention is off (HANDLER_RETENTION_DAYS=0): nothing erased")
    else:
        log.info("%s", erasure.summary())
    if erasure.failures:
        # What was erased stays erased, the rest is owed: running it again is safe.
        fail(ExitCode.FAILED, "prune: could not erase %s", "; ".join(erasure.failures))


def forget(
    email: Annotated[str, typer.Argument(
        help="The client's e-mail address, as they wrote it in the form.")],
    crm: Annotated[bool, typer.Option(
        "--crm", help="Also erase the contact in the live CRM (HubSpot's GDPR delete: the "
                      "contact and its e-mails, for good).")] = False,
    lift: Annotated[bool, typer.Option(
        "--lift", help="The client came back and asked to be served again: requests from "
                       "this address are processed again (nothing is restored).")] = False,
    dry_run: DryRunOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Erase everything about one client (the RGPD right to erasure), from every store.

    Every request from this address (open ones included), its document, ledger and journal
    entries, the e-mail copies, the stored files (local and R2), the local CRM's contact and
    tickets and the local subtasks go. The address itself is kept only as a keyed hash, so
    that a request from it arriving later (a replayed webhook) is held for the admin instead
    of bringing the data back. What lives in other systems (HubSpot tickets, ClickUp
    subtasks) is listed under "left", to erase there.

    Example: handler-cli forget claire.martin@example.fr --crm
    """
    from handler_cli.config import ConfigError
    from handler_cli.context import Context
    from handler_cli.retention import forget as run_forget
    from handler_cli.retention import lift as run_lift

    settings = settings_or_exit(quiet=quiet, verbose=verbose)
    if not _ADDRESS.fullmatch(email.strip()):
        fail(ExitCode.USAGE, "EMAIL: expected an e-mail address, got %r", email)
    if lift and (crm or dry_run):
        fail(ExitCode.USAGE, "--lift: give it alone (it erases nothing)")
    ctx = Context(settings)
    try:
        if lift:
            lifted = run_lift(ctx, email)
            print(json.dumps({"action": "lift", "lifted": lifted}))
            log.info("forget --lift: %s", "requests from this address are processed again"
                     if lifted else "this address was not forgotten: nothing to lift")
            return
        erasure = run_forget(ctx, email, crm=crm, dry_run=dry_run)
    except ConfigError as exc:
        fail(ExitCode.USAGE, "%s", exc)
    print(json.dumps(erasure.to_dict(), ensure_ascii=False))
    log.info("%s", erasure.summary())
    for item in erasure.left:
        log.warning("forget: left to erase by hand: %s", item)
    if erasure.failures:
        # The local erasure is done and the address remembered: running it again is safe.
        fail(ExitCode.FAILED, "forget: could not erase %s; run it again once the service "
             "answers", "; ".join(erasure.failures))
