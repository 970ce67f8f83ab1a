"""`handler-cli setup hubspot`: create what the live HubSpot backend expects to find.

The ticket step writes custom ticket properties (validation_status, credits_estimes, ...)
and relies on `handler_request_id` being unique to never open a second ticket for a request;
HubSpot refuses unknown properties, so they must exist first. Safe to run again: a second
run creates nothing. Reports go to stderr; exit 0 done, 1 HubSpot refused, 2 not configured.
"""

from __future__ import annotations

import logging

import typer

from handler_cli.commands._common import ExitCode, fail, settings_or_exit

log = logging.getLogger("handler_cli")


app = typer.Typer(
    help="Prepare a live service for handler-cli (safe to run again).",
    no_args_is_help=True,
)


@app.callback()
def setup() -> None:
    """Prepare a live service for handler-cli (safe to run again)."""


@app.command("hubspot")
def hubspot() -> None:
    """Create the `handler_cli` property group and the custom ticket properties missing."""
    from handler_cli.services import ServiceError
    from handler_cli.services.crm.hubspot.scopes import WHERE, scope_names

    settings = settings_or_exit()
    if not settings.hubspot_access_token:
        fail(ExitCode.USAGE, "HubSpot is not configured: set HUBSPOT_ACCESS_TOKEN to a HubSpot "
             f"service key ({WHERE}) with the scopes {', '.join(scope_names(reply_source=True))}"
             " (sales-email-read only if replies are read from HubSpot); a legacy private-app "
             "token works too")

    from handler_cli.services.crm.hubspot import HubSpotCRM

    try:
        with HubSpotCRM(settings) as crm:
            log.info("setting up %s", crm.describe())
            report = crm.ensure_properties()
    except ServiceError as exc:
        fail(ExitCode.FAILED, "%s", exc)
    for name in report.created:
        log.info("created %s", name)
    for name in report.updated:
        log.info("updated %s", name)
    if report.existing:
        log.info("already there: %s", ", ".join(report.existing))
    for warning in report.warnings:
        log.warning("%s", warning)
    log.info("nothing to create" if not report.created and not report.updated else "done")
    raise typer.Exit(ExitCode.OK)
