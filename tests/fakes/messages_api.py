"""A stand-in for the Anthropic Messages API on loopback: real HTTP, real error shapes.

It answers `POST /v1/messages` the way the API does for the calls handler-cli makes: the key
must come in `x-api-key` or as `Authorization: Bearer <key>` (recent SDKs send the latter;
401 `authentication_error` otherwise) and a dated `anthropic-version` must be sent (400
otherwise); the body must name a model, a positive `max_tokens` and at least one
message; when tools are given, `tool_choice` must force one of them (this fake only plays
forced tool calls). The answer is a `tool_use` block carrying the next scripted verdict, with
a `usage` object. Failures are scripted: `fail(status)` answers 429/500/529 with an
Anthropic-shaped error body, `hang()` holds the connection open past the client's timeout,
`reply_content(...)` sends arbitrary (malformed) content blocks. Error answers carry
`retry-after-ms` (short by default) so the SDK's own retries do not slow the tests down.

    with messages_api() as fake:
        fake.answer("MODELISATION", 0.92, "demande de création d'un modèle")
        settings = load_settings(environ={"ANTHROPIC_API_KEY": fake.api_key,
                                          "ANTHROPIC_BASE_URL": fake.url, ...})
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"
API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class RecordedCall:
    """One request as the fake received it."""

    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class _Action:
    kind: str  # "verdict" | "error" | "hang" | "content"
    label: str = ""
    confidence: Any = 0.9
    reason: str = ""
    status: int = 500
    content: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FakeMessagesAPI:
    """The fake's state: tests script answers and read `calls`."""

    api_key: str = "sk-ant-test-0000000000000000"
    retry_after_ms: int = 5
    hang_seconds: float = 10.0
    calls: list[RecordedCall] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._script: deque[_Action] = deque()
        self._release = threading.Event()
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    # -- scripting ---------------------------------------------------------------------------

    def answer(self, label: str, confidence: Any = 0.9, reason: str = "scripted") -> None:
        """The next call gets a tool_use block with this verdict."""
        with self._lock:
            self._script.append(_Action("verdict", label, confidence, reason))

    def fail(self, status: int, times: int = 1) -> None:
        """The next `times` calls get an Anthropic error body with this status."""
        with self._lock:
            self._script.extend(_Action("error", status=status) for _ in range(times))

    def hang(self, times: int = 1) -> None:
        """The next `times` calls get no answer until the fake stops (or hang_seconds)."""
        with self._lock:
            self._script.extend(_Action("hang") for _ in range(times))

    def reply_content(self, content: list[dict[str, Any]]) -> None:
        """The next call gets these content blocks as they are (to test malformed answers)."""
        with self._lock:
            self._script.append(_Action("content", content=content))

    def pending(self) -> int:
        with self._lock:
            return len(self._script)

    def _next(self) -> _Action | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    # -- the API -------------------------------------------------------------------------------

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any],
                                                                           dict[str, str]]:
        """Status, JSON body and extra headers for one request (None action = hang)."""
        try:
            body = json.loads(raw or b"null")
        except json.JSONDecodeError:
            body = None
        with self._lock:
            self.calls.append(RecordedCall(path, headers, body))
        if path != "/v1/messages":
            return _error(404, f"{path} not found")
        bearer = headers.get("authorization", "")
        key = headers.get("x-api-key") or (bearer[7:] if bearer.startswith("Bearer ") else None)
        if key != self.api_key:
            return _error(401, "invalid x-api-key")
        if not API_VERSION.match(headers.get("anthropic-version", "")):
            return _error(400, "anthropic-version: header is required")
        problem = _validate(body)
        if problem:
            return _error(400, problem)

        action = self._next()
        if action is not None and action.kind == "hang":
            self._release.wait(self.hang_seconds)
            return _error(500, "the fake hung and was released")
        if action is not None and action.kind == "error":
            status, payload, extra = _error(action.status, f"scripted {action.status}")
            extra["retry-after-ms"] = str(self.retry_after_ms)
            return status, payload, extra

        text = json.dumps(body.get("messages"), ensure_ascii=False)
        usage = {"input_tokens": 40 + len(text) // 4, "output_tokens": 0}
        message_id = f"msg_fake_{next(self._ids):04d}"
        tools = body.get("tools")
        if action is not None and action.kind == "content":
            content = action.content
        elif not tools:
            content = [{"type": "text", "text": "pong"[: max(1, int(body["max_tokens"]))]}]
        else:
            if action is None:
                action = _Action("verdict", _default_label(tools[0]), 0.5, "default answer")
            content = [{
                "type": "tool_use",
                "id": f"toolu_fake_{message_id[-4:]}",
                "name": body["tool_choice"]["name"],
                "input": {"label": action.label, "confidence": action.confidence,
                          "reason": action.reason},
            }]
        usage["output_tokens"] = 12 + len(json.dumps(content)) // 4
        return 200, {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": "tool_use" if tools else "max_tokens",
            "stop_sequence": None,
            "usage": usage,
        }, {}

    def release(self) -> None:
        """Let hanging requests finish (called on stop)."""
        self._release.set()


def _error(status: int, message: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    kind = ERROR_TYPES.get(status, "api_error")
    return status, {"type": "error", "error": {"type": kind, "message": message}}, {}


def _default_label(tool: dict[str, Any]) -> str:
    enum = tool.get("input_schema", {}).get("properties", {}).get("label", {}).get("enum")
    return str(enum[0]) if enum else "none"


def _validate(body: Any) -> str | None:
    """What the real API would refuse with 400, for the fields handler-cli sends."""
    if not isinstance(body, dict):
        return "body: expected a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        return "max_tokens: must be a positive integer"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    if messages[0].get("role") != "user":
        return "messages: the first message must use the user role"
    tools = body.get("tools")
    if tools is None:
        return None
    names = {t.get("name") for t in tools if isinstance(t, dict)}
    for tool in tools:
        schema = tool.get("input_schema") if isinstance(tool, dict) else None
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return "tools.0.input_schema: type must be 'object'"
    choice = body.get("tool_choice")
    if not (isinstance(choice, dict) and choice.get("type") == "tool"
            and choice.get("name") in names):
        return "tool_choice: this fake answers forced tool calls only ({'type': 'tool', ...})"
    return None


def _handler(fake: FakeMessagesAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload, extra = fake.handle(self.path, headers, raw)
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", f"req_fake_{len(fake.calls):04d}")
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout) before the answer

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler


@contextmanager
def messages_api(**options: Any) -> Iterator[FakeMessagesAPI]:
    """Run the fake on 127.0.0.1 (port 0) in a thread for the duration of the block."""
    fake = FakeMessagesAPI(**options)
    server = ThreadingHTTPServer((LOOPBACK, 0), _handler(fake))
    server.daemon_threads = True
    fake.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.release()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
