"""`handler-cli doctor`: which backend each service uses, where its settings came from."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from handler_cli.commands._common import ExitCode, settings_or_exit

if TYPE_CHECKING:
    from handler_cli.checks import Finding
    from handler_cli.context import Context

SERVICE_SETTINGS = {
    "crm": ("hubspot_access_token", "hubspot_base_url", "hubspot_portal_id", "hubspot_ui_domain",
            "hubspot_pipeline", "hubspot_pipeline_stage"),
    "files": ("r2_account_id", "r2_access_key_id", "r2_secret_access_key", "r2_bucket",
              "r2_public_url", "r2_endpoint_url"),
    "tasks": ("clickup_api_token", "clickup_base_url", "clickup_parent_task_id",
              "clickup_team_id"),
    "mailer": ("smtp_host", "smtp_port", "smtp_user", "smtp_password", "smtp_security",
               "smtp_auth", "mail_from", "mail_reply_to", "admin_email", "mail_oauth2_provider",
               "mail_oauth2_tenant", "mail_oauth2_token_url", "mail_oauth2_client_id",
               "mail_oauth2_client_secret", "mail_oauth2_refresh_token", "mail_oauth2_scope"),
    "llm": ("anthropic_api_key", "anthropic_base_url", "handler_llm_model"),
    "replies": ("handler_reply_sources", "imap_host", "imap_port", "imap_user", "imap_password",
                "imap_auth", "imap_addresses", "imap_folder", "imap_security"),
}


def mask(name: str, value: object) -> str:
    from handler_cli.config import SECRET_FIELDS

    text = str(value)
    if name in SECRET_FIELDS:
        return (text[:4] + "…" + f" ({len(text)} chars)") if len(text) > 8 else "****"
    return text


def doctor(
    check: Annotated[bool, typer.Option("--check", help="Also prove each backend works: one "
                                        "small real call per live service, a look at the "
                                        "files of each local one; exit 1 if one does not.")
                     ] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Treat a local backend as an error.")
                      ] = False,
    mail_loop: Annotated[bool, typer.Option("--mail-loop", help="Send one test e-mail to the "
                                            "address clients reply to and wait until a reply "
                                            "source sees it; exit 1 if it never does.")
                         ] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=1, metavar="SECONDS",
                                           help="How long --mail-loop waits.")] = 300.0,
) -> None:
    """Show the backend of each service and where its settings came from (secrets masked).

    The report goes to stdout (`handler-cli doctor --check > report.txt`); it creates
    nothing, not even the data dir. Exit 0: all well; 1: a backend failed its check (or is
    local with --strict); 2: a setting or the data dir is wrong.
    """
    from handler_cli import __version__
    from handler_cli.commands._common import data_dir_problem
    from handler_cli.config import ConfigError
    from handler_cli.context import Context

    settings = settings_or_exit(quiet=True, strict=strict, data_dir=False)
    ctx = Context(settings)
    if mail_loop:
        _mail_loop(ctx, timeout)
    failures = 0
    say = _Report()
    problem = data_dir_problem(settings)
    root = settings.data_dir
    state = ("ERROR " + problem if problem else "" if root.is_dir()
             else "(not created yet: the first run creates it)")
    say(f"handler-cli {__version__}")
    say(f"data dir: {root}  [{settings.sources.get('handler_data_dir', 'default')}] {state}"
        .rstrip())
    say(f"strict mode: {'on' if settings.handler_strict else 'off'}")
    for service, names in SERVICE_SETTINGS.items():
        try:
            backends = _backends(ctx, service)
        except ConfigError as exc:
            say(f"\n{service}: ERROR {exc}")
            failures += 1
            continue
        labels = [b.describe() for b in backends] or ["none (keywords and form type only)"]
        say(f"\n{service}: {'; '.join(labels)}")
        for name in names:
            source = settings.sources.get(name)
            if source:
                say(f"  {name.upper()} = {mask(name, getattr(settings, name))}  [{source}]")
        if check:
            for backend in backends:
                for finding in say.checked(service, backend):
                    say(f"  check: {finding}")
                    failures += not finding.ok
        if service == "replies":
            failures += _reply_address(ctx, check, say)
    if problem:
        raise typer.Exit(ExitCode.USAGE)
    raise typer.Exit(ExitCode.FAILED if failures else ExitCode.OK)


def _reply_address(ctx: Context, check: bool, say: _Report) -> int:
    """Whether clients are asked to reply where a source reads: a warning, or a check line."""
    from handler_cli.services.mail.reply_address import reply_address_findings

    failed = 0
    for finding in reply_address_findings(ctx):
        if check:
            say(f"  check: {finding}")
            failed += not finding.ok
        else:
            say(f"  {'reply address' if finding.ok else 'warning'}: {finding.text}")
    return failed


def _mail_loop(ctx: Context, timeout: float) -> None:
    """`--mail-loop`: the whole quote -> reply -> poll path, proved with one test e-mail."""
    from handler_cli.commands._common import fail
    from handler_cli.config import ConfigError
    from handler_cli.mail_loop import run_mail_loop

    try:
        result = run_mail_loop(ctx, timeout=timeout)
    except ConfigError as exc:
        fail(ExitCode.USAGE, "mail loop: %s", exc)
    for line in result.lines:
        print(f"mail loop: {line}", flush=True)
    raise typer.Exit(ExitCode.OK if result.ok else ExitCode.FAILED)


class _Report:
    """The report on stdout; on a terminal, a spinner on stderr while a service is asked."""

    def __init__(self) -> None:
        self.console: Any = None
        if sys.stderr.isatty():
            from rich.console import Console

            self.console = Console(stderr=True)

    def __call__(self, line: str) -> None:
        print(line, flush=True)

    def checked(self, service: str, backend: Any) -> list[Finding]:
        """The backend's findings; one that has no check() of its own but keeps a folder
        gets that folder checked. Slow answers are timed."""
        import time
        from contextlib import nullcontext

        from handler_cli.checks import missing, writable_place
        from handler_cli.services import ServiceError

        if not hasattr(backend, "check"):
            folder = getattr(backend, "folder", None)
            return [writable_place(folder, "folder")] if folder is not None else []
        started = time.monotonic()
        waiting = (self.console.status(f"checking {service}: {backend.describe()}…")
                   if self.console is not None else nullcontext())
        with waiting:
            try:
                findings: list[Finding] = list(backend.check())
            except ServiceError as exc:
                findings = [missing(str(exc))]
        seconds = time.monotonic() - started
        if seconds >= 1:
            self(f"  ({service} answered in {seconds:.1f} s)")
        return findings


def _backends(ctx: Context, service: str) -> list[Any]:
    """The backend(s) in use for a service: the reply sources are several, the LLM optional."""
    if service == "replies":
        from handler_cli.replies import build_sources

        return list(build_sources(ctx))
    backend = getattr(ctx, service)
    return [] if backend is None else [backend]
