"""The live task board: subtasks of one ClickUp parent task, through the REST API v2.

ClickUp only creates a subtask in the parent's own list (`POST /list/{list_id}/task` with
`parent`), so the parent task is read once (its real id and its list id) and cached. Only
requests that cannot have taken effect are retried inside a call (reads, 429, refused
connections): a POST whose answer was lost raises instead, and the ledger's `recover`
(`find_subtask`) settles on the next run whether it happened, so a retry never makes a second
subtask.

The description goes in `markdown_content`, the create-task field of ClickUp's API v2
reference (OpenAPI document of June 2025, `CreateTaskrequest`); `markdown_description` is what
a GET returns with `include_markdown_description=true`, and a create ignores it. The marker
`find_subtask` looks for lives in that description.

A custom task id (`DEV-123`, a Workspace setting) names the parent only with
`custom_task_ids=true&team_id=<Workspace id>` (`CLICKUP_TEAM_ID`); the parent is then read
once by that id and used by its real id, the one subtasks carry in `parent`.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from handler_cli.checks import Finding, proved
from handler_cli.config import ConfigError, Settings
from handler_cli.services import ServiceError

log = logging.getLogger("handler_cli")

PAGE_SIZE = 100  # ClickUp's fixed page size for Get Tasks
# ClickUp's own task ids are short alphanumerics ("86c7r48ha"); a custom task id is a
# Workspace prefix, a dash and a number ("DEV-123").
_CUSTOM_TASK_ID = re.compile(r"[A-Za-z][A-Za-z0-9]*-\d+")
# Statuses after which a request may have been handled, so a POST must not be sent again.
_AMBIGUOUS_FOR_POST = frozenset({500, 502, 504})


def is_custom_task_id(task_id: str) -> bool:
    return _CUSTOM_TASK_ID.fullmatch(task_id.strip()) is not None


@dataclass(frozen=True)
class _Parent:
    """The parent task as ClickUp knows it: its real id, its list, its name."""

    task_id: str
    list_id: str
    name: str
    list_name: str


class ClickUpBoard:
    """TaskBoard on ClickUp. `transport` lets tests swap the network (httpx's own seam)."""

    name = "clickup"

    def __init__(
        self,
        settings: Settings,
        transport: httpx.BaseTransport | None = None,
        *,
        max_attempts: int = 4,
        max_rate_wait: float = 60.0,
        max_pages: int = 100,
    ) -> None:
        if not settings.clickup_api_token:
            raise ConfigError("CLICKUP_API_TOKEN is not set")
        self.base_url = settings.clickup_base_url.rstrip("/")
        self.parent_task_id = settings.clickup_parent_task_id
        self.team_id = (settings.clickup_team_id or "").strip() or None
        self._custom_ids_usable(self.parent_task_id)
        self.retry_base = settings.handler_retry_base_seconds
        self.max_attempts = max(1, max_attempts)
        self.max_rate_wait = max_rate_wait
        self.max_pages = max_pages
        self._parents: dict[str, _Parent] = {}
        self._client = httpx.Client(
            base_url=self.base_url,
            # A personal token goes bare in the header: ClickUp rejects "Bearer pk_...".
            headers={"Authorization": settings.clickup_api_token, "Accept": "application/json"},
            timeout=httpx.Timeout(20.0, connect=5.0),
            transport=transport,
        )

    def describe(self) -> str:
        return f"ClickUp at {self.base_url} (parent task {self.parent_task_id})"

    def close(self) -> None:
        self._client.close()

    # -- TaskBoard -------------------------------------------------------------------------

    def check(self) -> list[Finding]:
        """Read the parent task, for `doctor --check`: proves the token and the task id."""
        parent = self._parent(self.parent_task_id)
        named = (f"{self.parent_task_id} ({parent.task_id})"
                 if parent.task_id != self.parent_task_id else parent.task_id)
        return [proved(f"parent task {named} \"{parent.name}\" in list {parent.list_name} "
                       f"({parent.list_id})")]

    def create_subtask(self, parent_id: str, name: str, description: str) -> str:
        parent = self._parent(parent_id)
        task = self._request(
            "POST",
            f"/list/{parent.list_id}/task",
            json={"name": name, "markdown_content": description, "parent": parent.task_id},
        )
        task_id = task.get("id")
        if not task_id:
            raise ServiceError("clickup", f"created a task in list {parent.list_id} but got "
                               "no id")
        return str(task_id)

    def find_subtask(self, parent_id: str, marker: str) -> str | None:
        """Scan the parent's list, newest first, for a subtask whose description has `marker`.

        Get Task with `include_subtasks` lists subtasks without their descriptions, while
        Get Tasks (`subtasks=true`) returns descriptions 100 tasks a page: fewer calls.
        A task listed without any description field is read on its own.
        """
        parent = self._parent(parent_id)
        list_id = parent.list_id
        unread: list[str] = []
        for page in range(self.max_pages):
            data = self._request(
                "GET",
                f"/list/{list_id}/task",
                params={
                    "subtasks": "true", "include_closed": "true", "archived": "false",
                    "include_markdown_description": "true", "order_by": "created",
                    "reverse": "true", "page": str(page),
                },
            )
            tasks: list[dict[str, Any]] = data.get("tasks") or []
            for task in tasks:
                if str(task.get("parent") or "") != parent.task_id:
                    continue
                found = _has_marker(task, marker)
                if found:
                    return str(task["id"])
                if found is None:
                    unread.append(str(task["id"]))
            # `last_page` when ClickUp sends it; a short page otherwise.
            last_page = data.get("last_page")
            if not tasks or (last_page if isinstance(last_page, bool)
                             else len(tasks) < PAGE_SIZE):
                break
        else:
            log.warning("clickup: stopped looking for %s after %d pages of list %s",
                        marker, self.max_pages, list_id)
        for task_id in unread:
            task = self._request(
                "GET", f"/task/{task_id}", params={"include_markdown_description": "true"}
            )
            if _has_marker(task, marker):
                return task_id
        return None

    # -- HTTP ------------------------------------------------------------------------------

    def _custom_ids_usable(self, task_id: str) -> None:
        if is_custom_task_id(task_id) and not self.team_id:
            raise ConfigError(
                f"CLICKUP_PARENT_TASK_ID={task_id} is a custom task id: ClickUp reads it only "
                "with the Workspace id; set CLICKUP_TEAM_ID (the number after "
                "app.clickup.com/ in the Workspace's URLs), or use the task's own id"
            )

    def _parent(self, parent_id: str) -> _Parent:
        """The parent task, read once: its real id (a custom id resolved) and its list."""
        if parent_id not in self._parents:
            params = None
            if is_custom_task_id(parent_id):
                self._custom_ids_usable(parent_id)
                assert self.team_id is not None
                params = {"custom_task_ids": "true", "team_id": self.team_id}
            task = self._request("GET", f"/task/{parent_id}", params=params)
            list_info = task.get("list") or {}
            if not list_info.get("id") or not task.get("id"):
                raise ServiceError(
                    "clickup", f"task {parent_id} has no id or list id", transient=False
                )
            self._parents[parent_id] = _Parent(
                str(task["id"]), str(list_info["id"]), str(task.get("name", "?")),
                str(list_info.get("name", "?")))
        return self._parents[parent_id]

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One API call with ClickUp's rate limit honoured and safe retries; JSON back."""
        what = f"{method} {path}"
        idempotent = method in ("GET", "HEAD", "PUT", "DELETE")
        for attempt in range(1, self.max_attempts + 1):
            last = attempt == self.max_attempts
            try:
                response = self._client.request(method, path, params=params, json=json)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Never reached ClickUp: safe to send again, whatever the method.
                if last:
                    raise ServiceError("clickup", f"{what}: cannot connect: {exc}") from exc
                self._backoff(attempt, what, "cannot connect")
                continue
            except httpx.HTTPError as exc:
                # Sent, but the answer was lost: a POST may have taken effect.
                if last or not idempotent:
                    raise ServiceError(
                        "clickup", f"{what}: {type(exc).__name__}: {exc}"
                    ) from exc
                self._backoff(attempt, what, type(exc).__name__)
                continue

            status = response.status_code
            if status < 400:
                try:
                    body: dict[str, Any] = response.json()
                except ValueError as exc:
                    raise ServiceError("clickup", f"{what}: HTTP {status}, not JSON") from exc
                return body
            if status == 429 and not last:
                self._wait_rate_limit(response, attempt, what)
                continue
            if (
                status >= 500
                and not last
                and (idempotent or status not in _AMBIGUOUS_FOR_POST)
            ):
                self._backoff(attempt, what, f"HTTP {status}")
                continue
            raise _error(what, response)
        raise AssertionError("unreachable")  # the last attempt always returns or raises

    def _backoff(self, attempt: int, what: str, why: str) -> None:
        delay = self.retry_base * 2 ** (attempt - 1)
        log.warning("clickup: %s: %s; retry %d in %.2fs", what, why, attempt, delay)
        time.sleep(delay)

    def _wait_rate_limit(self, response: httpx.Response, attempt: int, what: str) -> None:
        """Sleep until X-RateLimit-Reset (epoch seconds), capped; backoff without the header."""
        reset = response.headers.get("X-RateLimit-Reset")
        try:
            delay = float(reset) - time.time() if reset else None
        except ValueError:
            delay = None
        if delay is None:
            delay = self.retry_base * 2 ** (attempt - 1)
        delay = min(max(delay, 0.0), self.max_rate_wait)
        log.warning("clickup: %s: rate limited (limit %s); waiting %.2fs", what,
                    response.headers.get("X-RateLimit-Limit", "?"), delay)
        time.sleep(delay)


def _has_marker(task: dict[str, Any], marker: str) -> bool | None:
    """Whether the task's description carries `marker`; None when no description came."""
    texts = [task.get(k) for k in ("markdown_description", "description", "text_content")]
    present = [t for t in texts if isinstance(t, str)]
    if not present:
        return None
    # Markdown may come back with escaped brackets: "\[Ticket #1\]".
    return any(marker in t.replace("\\[", "[").replace("\\]", "]") for t in present)


def _error(what: str, response: httpx.Response) -> ServiceError:
    """A ServiceError carrying ClickUp's own `err` and `ECODE`."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and (body.get("err") or body.get("ECODE")):
        detail = f"{body.get('err', '')} ({body.get('ECODE', '?')})".strip()
    else:
        detail = response.text[:200] or response.reason_phrase
    transient = status == 429 or status >= 500
    return ServiceError("clickup", f"{what}: HTTP {status}: {detail}", transient=transient)
