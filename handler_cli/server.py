"""The webhook: `POST /webhook/request` stores a request durably, then answers 202.

`handler_cli.server:app` is the ASGI app (`uvicorn handler_cli.server:app` works, settings
from the environment); `handler-cli serve` builds the same app with its options. The
answer waits for the store's commit and nothing else: the chain runs on the workers (a
low-priority child process by default, threads of this process, or separate worker
processes on other machines in the scaled-out mode).

Posts that arrive together are stored in one transaction (group commit): one fsync for
fifty concurrent posts instead of fifty. See docs/production.md.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from handler_cli.config import Settings, load_settings
from handler_cli.document import Document, FileObject, Payload, submission_id
from handler_cli.intake.records import NewRequest
from handler_cli.intake.worker_process import WorkerProcess
from handler_cli.intake.writer import IntakeWriter
from handler_cli.queue import RequestQueue
from handler_cli.services.files import links as files
from handler_cli.steps import PIPELINE, Step
from handler_cli.webhook_auth import AuthError, Verdict, WebhookAuth

log = logging.getLogger("handler_cli")

# Fields the pipeline writes: a sender setting them would skip steps (a fake ticket_id).
PIPELINE_FIELDS = frozenset(Document.model_fields) - frozenset(Payload.model_fields)
MAX_KEY_LENGTH = 255
# Replaced at once by the submission's id (`document.submission_id`), computed from the
# fingerprint of the validated payload.
PENDING_ID = "req_pending"


class Answer(JSONResponse):
    """JSONResponse with one encoder built once (json.dumps with options builds one per call)."""

    _encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

    def render(self, content: Any) -> bytes:
        return self._encoder.encode(content).encode("utf-8")


def _problem(status: int, error: str, **extra: Any) -> JSONResponse:
    return Answer({"error": error, **extra}, status_code=status)


# --- the payload -----------------------------------------------------------------------------


def _field_name(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc)


def _pydantic_problems(exc: ValidationError, data: dict[str, Any]) -> list[dict[str, str]]:
    """One entry per bad field. A `fichiers` item may be a string or an object: report the
    errors of the form the sender used, not both."""
    problems: dict[str, str] = {}
    for err in exc.errors():
        loc = list(err["loc"])
        if len(loc) >= 3 and loc[0] == "fichiers" and isinstance(loc[1], int):
            item = data.get("fichiers", [None] * (loc[1] + 1))[loc[1]]
            branch = str(loc[2])
            if isinstance(item, str) != ("str" in branch):
                if not isinstance(item, (str, dict)):
                    problems.setdefault(_field_name(loc[:2]), "expected a URL string or an "
                                        "object {name, url} or {name, content_base64}")
                continue
            loc = loc[:2] + loc[3:]
        message = str(err["msg"]).removeprefix("Value error, ")
        problems.setdefault(_field_name(loc), message)
    return [{"field": name, "message": msg} for name, msg in problems.items()]


def _web_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def validate_payload(data: Any, request_id: str) -> tuple[Document | None, list[dict[str, str]]]:
    """The document, or the problems naming each bad field (the 422 body)."""
    if not isinstance(data, dict):
        return None, [{"field": "body", "message": "expected a JSON object"}]
    problems = [
        {"field": name, "message": "set by the pipeline, not accepted from the webhook"}
        for name in sorted(PIPELINE_FIELDS & data.keys())
    ]
    if problems:
        return None, problems
    try:
        doc = Document.model_validate({**data, "request_id": request_id})
    except ValidationError as exc:
        return None, _pydantic_problems(exc, data)
    # A string is a local path to the CLI; over the web it would read the server's files.
    for position, item in enumerate(doc.fichiers):
        url = item.url if isinstance(item, FileObject) else item
        if url is not None and not _web_url(url):
            where = f"fichiers.{position}" + (".url" if isinstance(item, FileObject) else "")
            problems.append({"field": where, "message": "expected an http(s) URL"})
    return (None, problems) if problems else (doc, [])


# --- the app ---------------------------------------------------------------------------------


@dataclass
class Intake:
    """What the handlers share, built at start-up."""

    settings: Settings
    auth: WebhookAuth
    rq: RequestQueue
    writer: IntakeWriter
    backend_problems: list[str] = field(default_factory=list)
    worker_process: WorkerProcess | None = None


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")


# Headers a proxy adds: their presence means the loopback peer is a proxy, not the client.
FORWARDED_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto",
                     b"x-real-ip", b"x-client-ip", b"true-client-ip", b"cf-connecting-ip",
                     b"fastly-client-ip", b"x-cluster-client-ip", b"via")


def _through_a_proxy(request: Request) -> bool:
    return any(name in FORWARDED_HEADERS for name, _ in request.scope["headers"])


def _unauthenticated_ok(intake: Intake, request: Request) -> bool:
    """With no credential configured, only loopback clients (unless told otherwise), and
    only when they came straight: a reverse proxy on this host is a loopback peer too, and
    it would make every client on the Internet look local (issue 10)."""
    if intake.settings.handler_insecure:
        return True
    return _loopback(request) and not _through_a_proxy(request)


_NO_CREDENTIALS = ("no credential is configured: only loopback clients that come straight "
                   "(no Forwarded or X-Forwarded-* header) are accepted; behind a reverse "
                   "proxy, set WEBHOOK_SECRET or WEBHOOK_TOKEN")


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it passes `limit` bytes (chunked uploads too).

    Straight from the ASGI messages: Starlette's stream() is an async generator, which
    costs more than the rest of reading a form's few hundred bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _headers(request: Request) -> dict[str, str]:
    """The headers as a plain dict (names are lower-case in ASGI): cheap to look up often."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}


def _idempotency_key(headers: dict[str, str], webhook_id: str | None) -> str | None:
    if webhook_id:
        return f"webhook-id:{webhook_id}"
    given = headers.get("idempotency-key", "").strip()
    return f"idempotency-key:{given}" if given else None


def _status_url(settings: Settings, request: Request, request_id: str) -> str:
    """Where the sender asks for news: on HANDLER_PUBLIC_URL, else a path on this server.

    Never built from the Host header (or X-Forwarded-Host): whoever sends the post chooses
    those, and a link we hand out must point where we say, not where a sender said."""
    path = f"{request.scope.get('root_path', '')}/requests/{request_id}"
    if settings.handler_public_url:
        return settings.handler_public_url.rstrip("/") + f"/requests/{request_id}"
    return path


async def receive_request(intake: Intake, request: Request) -> JSONResponse:
    """POST /webhook/request"""
    headers = _headers(request)
    if not intake.auth.configured and not _unauthenticated_ok(intake, request):
        return _problem(401, _NO_CREDENTIALS)
    token_ok = intake.auth.token_ok(headers)
    if intake.auth.configured and not token_ok and not intake.auth.may_be_signed(headers):
        return _problem(401, "authentication required (bearer token or webhook signature)")

    limit = intake.settings.handler_max_body_bytes
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            return _problem(400, "invalid Content-Length")
        if int(declared) > limit:
            return _problem(413, f"body larger than {limit} bytes")
    body = await _read_body(request, limit)
    if body is None:
        return _problem(413, f"body larger than {limit} bytes")

    try:
        verdict = (Verdict("token", headers.get("webhook-id") or None) if token_ok
                   else intake.auth.check(headers, body))
    except AuthError as exc:
        request.state.refusal = f"invalid or expired signature: {exc}"  # logged by the route
        return _problem(401, "invalid or expired signature")

    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/")
                                            and media.endswith("+json")):
        return _problem(415, "expected Content-Type: application/json")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _problem(400, f"body is not valid UTF-8 (byte {exc.start})")
    try:
        data = json.loads(text)
    except ValueError as exc:
        return _problem(400, f"body is not valid JSON: {exc}")
    except RecursionError:
        return _problem(400, "body is not valid JSON: nested too deeply")

    for name in ("webhook-id", "idempotency-key"):
        if len(headers.get(name, "")) > MAX_KEY_LENGTH:
            return _problem(400, f"{name} longer than {MAX_KEY_LENGTH} characters")
    key = _idempotency_key(headers, verdict.webhook_id)
    doc, problems = validate_payload(data, PENDING_ID)
    if doc is None:
        return _problem(422, "invalid payload", fields=problems)
    # One submission, one request, whatever door it came through (the CLI computes the same).
    fingerprint = doc.payload_fingerprint()
    doc.request_id = submission_id(fingerprint)

    # pydantic's own JSON: the same document as doc.to_json(), a few times faster.
    item = NewRequest(doc.request_id, doc.model_dump_json(exclude_none=True), fingerprint, key)
    try:
        accepted = await intake.writer.submit(item)
    except Exception:
        return Answer({"error": "the request could not be stored; send it again"},
                      status_code=503, headers={"Retry-After": "5"})
    if not accepted.created and key is not None:
        reused = await run_in_threadpool(_key_reused, intake, accepted.request_id, fingerprint)
        if reused:
            return _problem(422, f"{key.split(':', 1)[0]} already used for a different payload: "
                                 "send a new key for a new submission, or the same payload to "
                                 "retry", fields=[{"field": key.split(":", 1)[0],
                                                   "message": "reused with a different payload"}])
    if accepted.created:
        log.debug("%s: accepted (%s)", accepted.request_id, doc.source)
    body_out: dict[str, Any] = {
        "request_id": accepted.request_id,
        "status_url": _status_url(intake.settings, request, accepted.request_id),
        "status": accepted.status,
    }
    if not accepted.created:
        body_out["duplicate"] = True
    return Answer(body_out, status_code=202 if accepted.created else 200)


def _key_reused(intake: Intake, request_id: str, fingerprint: str) -> bool:
    """True when the request first stored under this key carried a different payload: the
    IETF Idempotency-Key draft (draft-ietf-httpapi-idempotency-key-header-07, Oct. 2025,
    "Error Scenarios") answers 422, as Stripe answers an `idempotency_error`, so the sender
    learns that its second submission was not taken."""
    rec = intake.rq.store.get(request_id)
    if rec is None:
        return False
    try:
        first = Document.model_validate_json(rec.document)
    except ValidationError:
        return False
    return first.payload_fingerprint() != fingerprint


async def request_status(intake: Intake, request: Request) -> JSONResponse:
    """GET /requests/{request_id}: needs the token, or a signed request (empty body)."""
    if not intake.auth.configured:
        if not _unauthenticated_ok(intake, request):
            return _problem(401, _NO_CREDENTIALS)
    else:
        try:
            intake.auth.check(_headers(request), b"")
        except AuthError:
            return _problem(401, "authentication required (bearer token or webhook signature)")
    request_id = request.path_params["request_id"]
    rec = await run_in_threadpool(intake.rq.store.get, request_id)
    if rec is None:
        return _problem(404, f"no request {request_id}")
    return Answer(rec.status_view(intake.rq.step_names))


async def healthz(intake: Intake, request: Request) -> JSONResponse:
    """Alive: the process answers."""
    return Answer({"status": "ok"})


async def readyz(intake: Intake, request: Request) -> JSONResponse:
    """Ready: the store takes a write and every backend is configured."""
    problems = list(intake.backend_problems)
    if intake.worker_process is not None and intake.worker_process.problem:
        problems.append(intake.worker_process.problem)
    try:
        await run_in_threadpool(intake.rq.store.ping, time.time())
    except Exception as exc:
        problems.append(f"store: {type(exc).__name__}: {exc}")
    if problems:
        return Answer({"status": "not ready", "problems": problems}, status_code=503)
    return Answer({"status": "ready"})


def _backend_problems(settings: Settings) -> list[str]:
    """Build each service once from the settings, as workers will (strict mode refuses)."""
    from handler_cli.context import Context

    ctx = Context(settings)
    problems = []
    for service in ("crm", "files", "mailer", "tasks", "llm"):
        try:
            getattr(ctx, service)
        except Exception as exc:
            problems.append(f"{service}: {exc}")
    return problems


def _log_refused(request: Request, response: JSONResponse) -> None:
    """One line on stderr per refused post: status, reason (and the fields at fault, or the
    authentication detail the answer keeps to itself), and who sent it."""
    try:
        body = json.loads(bytes(response.body))
    except ValueError:
        body = {}
    reason = str(getattr(request.state, "refusal", None) or body.get("error") or "refused")
    fields = [f"{f.get('field')}: {f.get('error') or f.get('message') or ''}".rstrip(": ")
              for f in body.get("fields") or [] if isinstance(f, dict)]
    if fields:
        reason += " (" + "; ".join(fields) + ")"
    log.warning("webhook refused %d from %s: %s", response.status_code,
                request.client.host if request.client else "?", reason)


def create_app(
    settings: Settings | None = None,
    *,
    steps: Sequence[Step] = PIPELINE,
    shutdown_timeout: float = 30.0,
) -> Starlette:
    """The webhook app. Settings from the environment when not given (read at start-up)."""
    shared: list[Intake] = []  # filled at start-up, read by every handler

    def bind(handler: Callable[[Intake, Request], Awaitable[JSONResponse]]
             ) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def endpoint(request: Request) -> JSONResponse:
            response = await handler(shared[0], request)
            if response.status_code >= 400 and request.method == "POST":
                _log_refused(request, response)
            return response

        return endpoint

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        current = settings if settings is not None else load_settings()
        auth = WebhookAuth.from_settings(current)
        rq = await run_in_threadpool(RequestQueue, current, steps)
        problems = await run_in_threadpool(_backend_problems, rq.worker_settings)
        for problem in problems:
            log.error("not ready: %s", problem)
        intake = Intake(current, auth, rq, IntakeWriter(rq.store, rq.dispatch, asyncio.get_running_loop()),
                        problems)
        shared[:] = [intake]
        workers = current.handler_workers
        mode = current.handler_worker_mode if tuple(steps) == PIPELINE else "thread"
        if workers > 0 and mode == "process":
            intake.worker_process = WorkerProcess(current, workers, shutdown_timeout)
        elif workers > 0:
            rq.start_workers(workers, shutdown_timeout=shutdown_timeout)
        log.info("webhook ready: %s store, %d worker thread(s)%s, %s",
                 type(rq.store).__name__, workers,
                 " in a worker process" if intake.worker_process else "",
                 "authentication on" if auth.configured else
                 "NO authentication (loopback clients only)" if not current.handler_insecure
                 else "NO authentication (insecure)")
        # Everything built so far lives as long as the process: keep the garbage
        # collector from walking it again and again under load.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            # uvicorn has stopped accepting and finished the HTTP requests in flight.
            await intake.writer.close()
            if intake.worker_process is not None:
                await run_in_threadpool(intake.worker_process.stop)
            await run_in_threadpool(rq.stop_workers)
            rq.close()

    return Starlette(
        routes=[
            Route("/webhook/request", bind(receive_request), methods=["POST"]),
            Route("/requests/{request_id}", bind(request_status), methods=["GET"],
                  name="request_status"),
            Route("/healthz", bind(healthz), methods=["GET"]),
            Route("/readyz", bind(readyz), methods=["GET"]),
            Route(files.ROUTE, bind(files.redirect), methods=["GET"]),  # lasting file links
        ],
        lifespan=lifespan,
    )


def run_server(
    settings: Settings,
    host: str,
    port: int,
    *,
    forwarded_allow_ips: str | None = None,
    access_log: bool = False,
    shutdown_timeout: float = 30.0,
    sock: socket.socket | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT: stop accepting, finish in-flight posts and steps.

    `sock`: already bound by `handler-cli serve`, so a busy port is said before start-up."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    logging.basicConfig(
        level=settings.handler_log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("huey").setLevel(logging.WARNING)  # two lines per task otherwise
    config = uvicorn.Config(
        create_app(settings, shutdown_timeout=shutdown_timeout),
        host=host,
        port=port,
        lifespan="on",
        access_log=access_log,
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
        timeout_graceful_shutdown=max(1, round(shutdown_timeout)),
        server_header=False,
        log_level=settings.handler_log_level.lower(),
        log_config=_stderr_only(LOGGING_CONFIG),
    )
    uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)


def _stderr_only(config: dict[str, Any]) -> dict[str, Any]:
    """uvicorn's logging with the access log on stderr too: stdout is for documents."""
    import copy

    config = copy.deepcopy(config)
    for handler in config["handlers"].values():
        if handler.get("stream") == "ext://sys.stdout":
            handler["stream"] = "ext://sys.stderr"
    return config


_app: Starlette | None = None


def __getattr__(name: str) -> Any:
    """`uvicorn handler_cli.server:app`: built on first use, settings read at start-up."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)


if __name__ == "__main__":
    import typer

    from handler_cli.commands.serve import serve

    typer.run(serve)
