"""`handler-cli serve`: the webhook, with its workers, until SIGTERM.

Secure by default: with neither WEBHOOK_SECRET nor WEBHOOK_TOKEN set, it binds to loopback
only; listening elsewhere without authentication takes an explicit `--insecure`.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Annotated

import typer

from handler_cli.commands._common import ExitCode, fail, settings_or_exit

log = logging.getLogger("handler_cli")


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
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address to listen on.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port to listen on.")] = 5000,
    workers: Annotated[int | None, typer.Option(
        metavar="N", help="Worker threads running the chain (HANDLER_WORKERS, default 2). "
        "0: intake only, for separate `huey_consumer handler_cli.queue.huey` workers.",
        min=0)] = None,
    worker_mode: Annotated[str | None, typer.Option(
        metavar="MODE", help="`process`: one low-priority child process runs the workers "
        "(default, HANDLER_WORKER_MODE); `thread`: inside this process.")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure",
        help="Allow listening beyond loopback without WEBHOOK_SECRET or WEBHOOK_TOKEN.")] = False,
    forwarded_allow_ips: Annotated[str | None, typer.Option(
        metavar="ADDRESSES", help="Trust X-Forwarded-For/-Proto from these addresses (the "
        "reverse proxy), e.g. 127.0.0.1.")] = None,
    access_log: Annotated[bool, typer.Option(
        "--access-log", help="Log every HTTP request on stderr (the reverse proxy usually "
        "does).")] = False,
    shutdown_timeout: Annotated[float, typer.Option(
        metavar="SECONDS", help="On SIGTERM, how long in-flight posts and steps may take "
        "to finish.")] = 30.0,
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
        log.warning("no WEBHOOK_SECRET or WEBHOOK_TOKEN: %s",
                    "accepting unauthenticated requests from anywhere (--insecure)"
                    if settings.handler_insecure else "loopback clients only")
    sock = listen(host, port)  # before anything starts: a busy port is said at once

    from handler_cli.server import run_server

    log.info("listening on %s", _url(host, port))
    run_server(settings, host, port, forwarded_allow_ips=forwarded_allow_ips,
               access_log=access_log, shutdown_timeout=shutdown_timeout, sock=sock)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the webhook starts (its store, its workers): a port
    already taken, an address this machine does not have, is a usage error (exit 2)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        fail(ExitCode.USAGE, "--host %s: unknown address (%s)", host, exc.strerror)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fail(ExitCode.USAGE, "port %d on %s is already in use (another `handler-cli "
                 "serve`?); choose another with --port", port, host)
        if exc.errno == errno.EACCES:
            fail(ExitCode.USAGE, "not allowed to listen on port %d (ports below 1024 need "
                 "privileges); choose another with --port", port)
        fail(ExitCode.USAGE, "cannot listen on %s port %d: %s", host, port, exc.strerror)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
