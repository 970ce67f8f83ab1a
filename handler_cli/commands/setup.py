"""`handler-cli setup hubspot`: create what the live HubSpot backend expects to find.

The ticket step writes custom ticket properties (validation_status, credits_estimes, ...)
and relies on `handler_request_id` being unique to never open a second ticket for a request;
HubSpot refuses unknown properties, so they must exist first. Safe to run again: a second
run creates nothing. Reports go to stderr; exit 0 done, 1 HubSpot refused, 2 not configured.
"""

from __future__ import annotations

import sys

import typer

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

app = typer.Typer(
    help="Prepare a live service for handler-cli (safe to run again).",
    no_args_is_help=True,
)


@app.callback()
def setup() -> None:
    """Prepare a live service for handler-cli (safe to run again)."""


def _say(text: str) -> None:
    print(f"handler-cli: {text}", file=sys.stderr)


@app.command("hubspot")
def hubspot() -> None:
    """Create the `handler_cli` property group and the custom ticket properties missing."""
    from handler_cli.config import ConfigError, load_settings
    from handler_cli.services import ServiceError

    try:
        settings = load_settings()
    except ConfigError as exc:
        _say(f"error: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    if not settings.hubspot_access_token:
        _say("error: HubSpot is not configured: set HUBSPOT_ACCESS_TOKEN (a private app "
             "token with the tickets and crm.schemas.tickets.write scopes)")
        raise typer.Exit(EXIT_USAGE)

    from handler_cli.services.crm.hubspot import HubSpotCRM

    try:
        with HubSpotCRM(settings) as crm:
            _say(f"setting up {crm.describe()}")
            report = crm.ensure_properties()
    except ServiceError as exc:
        _say(f"error: {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    for name in report.created:
        _say(f"created {name}")
    for name in report.updated:
        _say(f"updated {name}")
    if report.existing:
        _say(f"already there: {', '.join(report.existing)}")
    for warning in report.warnings:
        _say(f"warning: {warning}")
    _say("nothing to create" if not report.created and not report.updated else "done")
    raise typer.Exit(EXIT_OK)
