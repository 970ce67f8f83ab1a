"""A stand-in for the ClickUp API v2 on loopback: tasks in memory, real HTTP, real failures.

It answers the calls handler-cli makes the way ClickUp does: the bare token in
`Authorization` (401 `OAUTH_025` otherwise), Get Task (subtasks listed *without* their
descriptions, as ClickUp does), Get Tasks of a list (100 a page, `subtasks`, `last_page`,
descriptions included), Create Task with `parent` (which must be a top-level task of the
same list; the description taken from `markdown_content`, else `description`, and any other
field ignored, as ClickUp does), custom task ids (`custom_task_ids=true&team_id=...`),
rate-limit headers on every answer. Failures are scripted with `fail_next` (429 with
`X-RateLimit-*`, 5xx, or "drop": do the work, then hang up without answering), and `down()` /
`up()` stop and restart the listener so connections are refused. Every request is held to
ClickUp's OpenAPI document when the server stops (`contract_violations`): operation, query
parameters, body schema and body field names (the document does not forbid unknown fields).

    with clickup_server() as fake:
        settings = load_settings(environ={"CLICKUP_API_TOKEN": fake.token,
                                          "CLICKUP_BASE_URL": fake.url, ...})
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import pytest

LOOPBACK = "127.0.0.1"
API_PREFIX = "/api/v2"
DEFAULT_PARENT_ID = "86c7r48ha"  # the Settings default
DEFAULT_LIST_ID = "901512345678"
TEAM_ID = "9015000001"  # the Workspace id
SPEC = Path(__file__).resolve().parents[1] / "specs" / "clickup" / "clickup-api-v2-2025-06-17.json"
RATE_LIMIT = 100

_TASK_PATH = re.compile(r"^/task/([^/]+)$")
_LIST_TASKS_PATH = re.compile(r"^/list/([^/]+)/task$")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it (after the /api/v2 prefix)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    at: float  # time.time() on arrival

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class _Failure:
    status: int | Literal["drop"]
    when: str | None
    reset_in: float
    err: str | None
    ecode: str | None


@dataclass
class FakeClickUp:
    """The fake's state; tests read `tasks` and `requests` and script `fail_next`."""

    token: str = "pk_48151623_FAKETOKENFORTESTSONLY"
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    lists: dict[str, str] = field(default_factory=dict)  # list id -> name
    requests: list[RecordedRequest] = field(default_factory=list)
    page_size: int = 100
    list_descriptions: bool = True  # False: Get Tasks lists tasks without any description
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._failures: deque[_Failure] = deque()
        self._ids = itertools.count(1)
        self._remaining = RATE_LIMIT
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to give as CLICKUP_BASE_URL."""
        return f"http://{LOOPBACK}:{self.port}{API_PREFIX}"

    def add_list(self, list_id: str = DEFAULT_LIST_ID, name: str = "Production") -> str:
        with self._lock:
            self.lists[list_id] = name
        return list_id

    def add_task(
        self,
        name: str,
        *,
        list_id: str = DEFAULT_LIST_ID,
        parent: str | None = None,
        description: str = "",
        task_id: str | None = None,
        custom_id: str | None = None,
    ) -> dict[str, Any]:
        """Put a task in ClickUp directly (a parent task, or a subtask made by someone else)."""
        with self._lock:
            self.lists.setdefault(list_id, "Production")
            task_id = task_id or f"86c{next(self._ids):06x}"
            created = str(int(time.time() * 1000) + len(self.tasks))  # strictly increasing
            task = {
                "id": task_id, "custom_id": custom_id, "name": name,
                "markdown_description": description,
                "parent": parent, "list_id": list_id, "date_created": created,
                "status": "to do",
            }
            self.tasks[task_id] = task
            return task

    def subtasks_of(self, parent_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [t for t in self.tasks.values() if t["parent"] == parent_id]

    def requests_to(self, method: str, path_pattern: str) -> list[RecordedRequest]:
        """Recorded requests of `method` whose path matches the regex `path_pattern`."""
        return [r for r in self.requests
                if r.method == method and re.fullmatch(path_pattern, r.path)]

    def fail_next(
        self,
        status: int | Literal["drop"],
        *,
        times: int = 1,
        when: str | None = None,
        reset_in: float = 0.0,
        err: str | None = None,
        ecode: str | None = None,
    ) -> None:
        """Make the next `times` authorised requests fail.

        `status`: 429 (with X-RateLimit-Reset `reset_in` seconds from now), a 5xx, or
        "drop" (the request takes effect, then the connection closes with no answer).
        `when`: only requests whose "METHOD /path" starts with this (e.g. "POST").
        """
        with self._lock:
            for _ in range(times):
                self._failures.append(_Failure(status, when, reset_in, err, ecode))

    def down(self) -> None:
        """Stop listening: connections to `url` are refused until `up()`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def up(self) -> None:
        """Listen (again, on the same port once one was chosen)."""
        if self._server is not None:
            return
        server = ThreadingHTTPServer((LOOPBACK, self.port), _handler_for(self))
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-clickup",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    # -- the API ---------------------------------------------------------------------------

    def _take_failure(self, method: str, path: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.when is None or f"{method} {path}".startswith(failure.when):
                    self._failures.remove(failure)
                    return failure
        return None

    def _rate_headers(self, reset_in: float = 60.0) -> dict[str, str]:
        with self._lock:
            self._remaining = max(0, self._remaining - 1)
            return {
                "X-RateLimit-Limit": str(RATE_LIMIT),
                "X-RateLimit-Remaining": str(self._remaining),
                "X-RateLimit-Reset": str(int(time.time() + reset_in)),
            }

    def _render(self, task: dict[str, Any], *, markdown: bool, full: bool = True,
                subtasks: bool = False) -> dict[str, Any]:
        """A task as ClickUp shows it (a subset of its many fields)."""
        list_id = task["list_id"]
        out: dict[str, Any] = {
            "id": task["id"], "custom_id": task.get("custom_id"), "name": task["name"],
            "status": {"status": task["status"], "type": "open", "orderindex": 0},
            "orderindex": "1.00000000000000000000000000000000",
            "date_created": task["date_created"], "date_updated": task["date_created"],
            "date_closed": None, "archived": False, "assignees": [], "tags": [],
            "parent": task["parent"], "top_level_parent": task["parent"],
            "priority": None, "due_date": None, "url": f"https://app.clickup.com/t/{task['id']}",
            "list": {"id": list_id, "name": self.lists.get(list_id, ""), "access": True},
            "folder": {"id": "90150000", "name": "hidden", "hidden": True, "access": True},
            "space": {"id": "90150001"},
        }
        if full:
            plain = _plain_text(task["markdown_description"])
            out["text_content"] = plain
            out["description"] = plain
            if markdown:
                out["markdown_description"] = task["markdown_description"]
        if subtasks:
            # ClickUp lists subtasks here without their descriptions.
            out["subtasks"] = [self._render(t, markdown=False, full=False)
                               for t in self.tasks.values() if t["parent"] == task["id"]]
        return out

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               body: Any) -> tuple[int, dict[str, Any]]:
        markdown = query.get("include_markdown_description", ["false"])[0] == "true"
        with self._lock:
            if method == "GET" and (m := _TASK_PATH.match(path)):
                if query.get("custom_task_ids", ["false"])[0] == "true":
                    team = query.get("team_id", [None])[0]
                    if team is None:
                        return 400, {"err": "Team ID is required when using custom task ids",
                                     "ECODE": "ITEM_066"}
                    if team != TEAM_ID:
                        return 401, {"err": "Team not authorized", "ECODE": "OAUTH_027"}
                    task = next((t for t in self.tasks.values()
                                 if t.get("custom_id") == m.group(1)), None)
                else:
                    task = self.tasks.get(m.group(1))
                if task is None:
                    return 404, {"err": "Task not found, deleted", "ECODE": "ITEM_013"}
                subtasks = query.get("include_subtasks", ["false"])[0] == "true"
                return 200, self._render(task, markdown=markdown, subtasks=subtasks)
            if method == "GET" and (m := _LIST_TASKS_PATH.match(path)):
                return self._list_tasks(m.group(1), query, markdown)
            if method == "POST" and (m := _LIST_TASKS_PATH.match(path)):
                return self._create_task(m.group(1), body)
        return 404, {"err": "Route not found", "ECODE": "APP_001"}

    def _list_tasks(self, list_id: str, query: dict[str, list[str]],
                    markdown: bool) -> tuple[int, dict[str, Any]]:
        if list_id not in self.lists:
            return 404, {"err": "List not found", "ECODE": "ITEM_015"}
        tasks = [t for t in self.tasks.values() if t["list_id"] == list_id]
        if query.get("subtasks", ["false"])[0] != "true":
            tasks = [t for t in tasks if t["parent"] is None]
        order = query.get("order_by", ["created"])[0]
        key = "date_updated" if order == "updated" else "date_created"
        # Oldest first by default; `reverse=true` gives newest first.
        tasks.sort(key=lambda t: int(t.get(key) or t["date_created"]),
                   reverse=query.get("reverse", ["false"])[0] == "true")
        page = int(query.get("page", ["0"])[0])
        chunk = tasks[page * self.page_size:(page + 1) * self.page_size]
        last = (page + 1) * self.page_size >= len(tasks)
        return 200, {"tasks": [self._render(t, markdown=markdown, full=self.list_descriptions)
                               for t in chunk],
                     "last_page": last}

    def _create_task(self, list_id: str, body: Any) -> tuple[int, dict[str, Any]]:
        if list_id not in self.lists:
            return 404, {"err": "List not found", "ECODE": "ITEM_015"}
        if not isinstance(body, dict) or not str(body.get("name") or "").strip():
            return 400, {"err": "Task name invalid", "ECODE": "INPUT_005"}
        parent = body.get("parent")
        if parent is not None:
            ptask = self.tasks.get(str(parent))
            if ptask is None:
                return 400, {"err": "Parent task not found", "ECODE": "ITEM_046"}
            if ptask["list_id"] != list_id or ptask["parent"] is not None:
                return 400, {"err": "Parent must be a task of the same list, not a subtask",
                             "ECODE": "ITEM_137"}
        # ClickUp's create takes `markdown_content` (preferred) or `description`; any other
        # field, `markdown_description` included, is ignored.
        description = body.get("markdown_content") or body.get("description") or ""
        task = self.add_task(str(body["name"]), list_id=list_id,
                             parent=str(parent) if parent else None, description=description)
        return 200, self._render(task, markdown=True)


def _plain_text(markdown: str) -> str:
    """Roughly what ClickUp keeps in `description`: the text without Markdown marks."""
    text = re.sub(r"^#{1,6}\s*", "", markdown, flags=re.MULTILINE)
    text = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r"\1 (\2)", text)
    return text.replace("**", "").replace("`", "")


def _handler_for(fake: FakeClickUp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so `down()` really refuses the next one.
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

        def _serve(self, method: str) -> None:
            split = urlsplit(self.path)
            path = split.path.removeprefix(API_PREFIX)
            query = parse_qs(split.query)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
            with fake._lock:
                fake.requests.append(RecordedRequest(
                    method, path, query, dict(self.headers.items()), body, time.time()))
            if self.headers.get("Authorization") != fake.token:
                self._send(401, {"err": "Token invalid", "ECODE": "OAUTH_025"})
                return
            failure = fake._take_failure(method, path)
            if failure is not None and failure.status == "drop":
                fake.handle(method, path, query, body)  # it happened...
                self.close_connection = True  # ...but the client never hears of it
                return
            if failure is not None:
                status = int(failure.status)
                if status == 429:
                    self._send(429, {"err": failure.err or "Rate limit reached",
                                     "ECODE": failure.ecode or "APP_002"},
                               {"X-RateLimit-Limit": str(RATE_LIMIT),
                                "X-RateLimit-Remaining": "0",
                                "X-RateLimit-Reset": str(int(time.time() + failure.reset_in))})
                else:
                    self._send(status, {"err": failure.err or "Internal server error",
                                        "ECODE": failure.ecode or "SHARD_001"})
                return
            status, payload = fake.handle(method, path, query, body)
            self._send(status, payload, fake._rate_headers())

        def _send(self, status: int, payload: dict[str, Any],
                  headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's naming)
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._serve("PUT")

    return Handler


@contextmanager
def clickup_server(parent_id: str = DEFAULT_PARENT_ID, list_id: str = DEFAULT_LIST_ID, *,
                   custom_id: str | None = None,
                   check_contract: bool = True) -> Iterator[FakeClickUp]:
    """A running fake with the production parent task already in its list; on a clean exit,
    every request it got must be one ClickUp's OpenAPI document allows."""
    fake = FakeClickUp()
    fake.add_list(list_id, "Production")
    fake.add_task("Demandes clients", list_id=list_id, task_id=parent_id, custom_id=custom_id)
    fake.up()
    try:
        yield fake
    finally:
        fake.down()
    if check_contract:
        violations = contract_violations(fake.requests)
        assert not violations, "requests outside ClickUp's OpenAPI document:\n" + "\n".join(
            violations)


@pytest.fixture
def clickup_peer() -> Iterator[FakeClickUp]:
    """The plain fake as a fixture (import it explicitly where needed)."""
    with clickup_server() as fake:
        yield fake


# -- the contract: ClickUp's OpenAPI document (June 2025) -----------------------------------

# The document's GetTask lists `team_id` ("when the `custom_task_ids` parameter is set to
# `true`, the Workspace ID must be provided using the `team_id` parameter") but not
# `custom_task_ids` itself, which ClickUp's reference for Get Task documents: allowed here.
DOCUMENTED_OMISSIONS = {("get", "/v2/task/{task_id}", "custom_task_ids")}


@cache
def _document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SPEC.read_text(encoding="utf-8"))
    return loaded


def _find_operation(method: str, path: str) -> tuple[str, dict[str, Any], dict[str, str]] | None:
    """The document's path template, operation and path parameters for a concrete path."""
    found = []
    for template, item in _document()["paths"].items():
        if method not in item:
            continue
        names = re.findall(r"{(\w+)}", template)
        pattern = re.sub(r"\\{\w+\\}", "([^/]+)", re.escape(template))
        match = re.fullmatch(pattern, path)
        if match:
            found.append((len(names), template, item, dict(zip(names, match.groups(),
                                                              strict=True))))
    if not found:
        return None
    _, template, item, args = min(found, key=lambda f: f[0])
    operation = item[method]
    return template, {**operation, "parameters": [*item.get("parameters", []),
                                                  *operation.get("parameters", [])]}, args


def _value_fits(raw: str, schema: dict[str, Any]) -> bool:
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "boolean" in kinds and raw in ("true", "false"):
        return True
    if ("number" in kinds or "integer" in kinds) and re.fullmatch(r"-?\d+(\.\d+)?", raw):
        return True
    return "string" in kinds or None in kinds or "array" in kinds


def _unknown_fields(body: Any, schema: dict[str, Any], where: str) -> list[str]:
    """Body field names the schema does not define (it allows them, ClickUp ignores them)."""
    if not isinstance(body, dict) or "properties" not in schema:
        return []
    problems = []
    for name, value in body.items():
        if name not in schema["properties"]:
            problems.append(f"{where}{name}")
        else:
            problems += _unknown_fields(value, schema["properties"][name], f"{where}{name}.")
    return problems


def contract_violations(requests: list[RecordedRequest]) -> list[str]:
    """Each request ClickUp's OpenAPI document does not describe, with the reason."""
    from jsonschema import Draft202012Validator

    problems = []
    for record in requests:
        where = f"{record.method} {record.path}"
        found = _find_operation(record.method.lower(), f"/v2{record.path}")
        if found is None:
            problems.append(f"{where}: not an operation of ClickUp's API v2 document")
            continue
        template, operation, args = found
        declared = {p["name"]: p for p in operation["parameters"]}
        for name, value in args.items():
            if not _value_fits(value, declared.get(name, {}).get("schema", {})):
                problems.append(f"{where}: path parameter {name}={value!r} is not a "
                                f"{declared[name]['schema'].get('type')}")
        for name, values in record.query.items():
            param = declared.get(name)
            if param is None or param.get("in") != "query":
                if (record.method.lower(), template, name) not in DOCUMENTED_OMISSIONS:
                    problems.append(f"{where}: query parameter {name!r} not in the document")
                continue
            for value in values:
                if not _value_fits(value, param.get("schema", {})):
                    problems.append(f"{where}: query parameter {name}={value!r} is not a "
                                    f"{param['schema'].get('type')}")
        body_spec = (operation.get("requestBody") or {}).get("content", {}).get(
            "application/json")
        if body_spec is None:
            if record.body is not None:
                problems.append(f"{where}: a body, where the operation takes none")
            continue
        schema = body_spec["schema"]
        for error in Draft202012Validator(schema).iter_errors(record.body):
            problems.append(f"{where}: body: {error.message}")
        for name in _unknown_fields(record.body, schema, ""):
            problems.append(f"{where}: body field {name!r} is not in {schema.get('title')}")
    return problems
