"""`handler-cli serve`: the webhook, with its workers, until SIGTERM.

Secure by default: with neither WEBHOOK_SECRET nor WEBHOOK_TOKEN set, it binds to loopback
only; listening elsewhere without authentication takes an explicit `--insecure`.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from handler_cli.commands._common import ExitCode, fail, settings_or_exit


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`; every other address (0.0.0.0 too) is reachable."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    workers: Annotated[int | None, typer.Option(
        help="Worker threads running the chain (HANDLER_WORKERS, default 2). "
             "0: intake only, for separate `huey_consumer handler_cli.queue.huey` workers.",
        min=0)] = None,
    worker_mode: Annotated[str | None, typer.Option(
        help="process: one low-priority child process runs the workers (default, "
             "HANDLER_WORKER_MODE); thread: inside this process.")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure",
        help="Allow listening beyond loopback without WEBHOOK_SECRET or WEBHOOK_TOKEN.")] = False,
    forwarded_allow_ips: Annotated[str | None, typer.Option(
        help="Trust X-Forwarded-For/-Proto from these addresses (the reverse proxy), "
             "e.g. 127.0.0.1.")] = None,
    access_log: Annotated[bool, typer.Option(
        help="Log every HTTP request (the reverse proxy usually does).")] = False,
    shutdown_timeout: Annotated[float, typer.Option(
        help="On SIGTERM, seconds to let in-flight posts and steps finish.")] = 30.0,
) -> None:
    """Receive the web forms' requests: store each one durably, answer 202, process it."""
    from handler_cli.webhook_auth import WebhookAuth

    settings = settings_or_exit(handler_workers=workers, handler_worker_mode=worker_mode,
                                handler_insecure=insecure or None)
    try:
        auth = WebhookAuth.from_settings(settings)
    except ValueError as exc:
        fail(ExitCode.USAGE, "%s", exc)
    if not auth.configured:
        if not is_loopback(host) and not settings.handler_insecure:
            fail(ExitCode.USAGE, "refusing to listen on %s without authentication: set "
                 "WEBHOOK_SECRET or WEBHOOK_TOKEN, or pass --insecure", host)
        print("handler-cli: no WEBHOOK_SECRET or WEBHOOK_TOKEN: "
              + ("accepting unauthenticated requests from anywhere (--insecure)"
                 if settings.handler_insecure else "loopback clients only"), file=sys.stderr)

    from handler_cli.server import run_server

    run_server(settings, host, port, forwarded_allow_ips=forwarded_allow_ips,
               access_log=access_log, shutdown_timeout=shutdown_timeout)
