"""`handler-cli doctor`: which backend each service uses, where its settings came from."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from handler_cli.commands._common import ExitCode, settings_or_exit

if TYPE_CHECKING:
    from handler_cli.context import Context

SERVICE_SETTINGS = {
    "crm": ("hubspot_access_token", "hubspot_base_url", "hubspot_portal_id", "hubspot_pipeline",
            "hubspot_pipeline_stage"),
    "files": ("r2_account_id", "r2_access_key_id", "r2_secret_access_key", "r2_bucket",
              "r2_public_url", "r2_endpoint_url"),
    "tasks": ("clickup_api_token", "clickup_base_url", "clickup_parent_task_id"),
    "mailer": ("smtp_host", "smtp_port", "smtp_user", "smtp_password", "smtp_security",
               "mail_from", "admin_email"),
    "llm": ("anthropic_api_key", "anthropic_base_url", "handler_llm_model"),
    "replies": ("handler_reply_sources", "imap_host", "imap_port", "imap_user", "imap_password",
                "imap_folder", "imap_security"),
}


def mask(name: str, value: object) -> str:
    from handler_cli.config import SECRET_FIELDS

    text = str(value)
    if name in SECRET_FIELDS:
        return (text[:4] + "…" + f" ({len(text)} chars)") if len(text) > 8 else "****"
    return text


def doctor(
    check: Annotated[bool, typer.Option("--check", help="Also prove each live backend works "
                                        "(one small real call each); exit 1 if one does not.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Treat a local backend as an error.")] = False,
) -> None:
    """Show the backend of each service and where its settings came from (secrets masked)."""
    from handler_cli.checks import missing
    from handler_cli.config import ConfigError
    from handler_cli.context import Context
    from handler_cli.services import ServiceError

    settings = settings_or_exit(quiet=True, strict=strict)
    ctx = Context(settings)
    out = sys.stderr
    failures = 0
    print(f"data dir: {settings.data_dir}", file=out)
    print(f"strict mode: {'on' if settings.handler_strict else 'off'}", file=out)
    for service, names in SERVICE_SETTINGS.items():
        try:
            backends = _backends(ctx, service)
        except ConfigError as exc:
            print(f"\n{service}: ERROR {exc}", file=out)
            failures += 1
            continue
        labels = [b.describe() for b in backends] or ["none (keywords and form type only)"]
        print(f"\n{service}: {'; '.join(labels)}", file=out)
        for name in names:
            source = settings.sources.get(name)
            if source:
                print(f"  {name.upper()} = {mask(name, getattr(settings, name))}  [{source}]",
                      file=out)
        for backend in backends:
            if check and hasattr(backend, "check"):
                try:
                    findings = backend.check()
                except ServiceError as exc:
                    findings = [missing(str(exc))]
                for finding in findings:
                    print(f"  check: {finding}", file=out)
                    failures += not finding.ok
    raise typer.Exit(ExitCode.FAILED if failures else ExitCode.OK)


def _backends(ctx: Context, service: str) -> list[Any]:
    """The backend(s) in use for a service: the reply sources are several, the LLM optional."""
    if service == "replies":
        from handler_cli.replies import build_sources

        return list(build_sources(ctx))
    backend = getattr(ctx, service)
    return [] if backend is None else [backend]
