"""The live task board: subtasks of one ClickUp parent task, through the REST API v2.

ClickUp only creates a subtask in the parent's own list (`POST /list/{list_id}/task` with
`parent`), so the list id is read from the parent task once and cached. Only requests that
cannot have taken effect are retried inside a call (reads, 429, refused connections): a POST
whose answer was lost raises instead, and the ledger's `recover` (`find_subtask`) settles on
the next run whether it happened, so a retry never makes a second subtask.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

from handler_cli.checks import Finding, proved
from handler_cli.config import ConfigError, Settings
from handler_cli.services import ServiceError

log = logging.getLogger("handler_cli")

PAGE_SIZE = 100  # ClickUp's fixed page size for Get Tasks
# Statuses after which a request may have been handled, so a POST must not be sent again.
_AMBIGUOUS_FOR_POST = frozenset({500, 502, 504})


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
        self.retry_base = settings.handler_retry_base_seconds
        self.max_attempts = max(1, max_attempts)
        self.max_rate_wait = max_rate_wait
        self.max_pages = max_pages
        self._list_ids: dict[str, str] = {}
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
        task = self._request("GET", f"/task/{self.parent_task_id}")
        list_info = task.get("list") or {}
        if list_info.get("id"):
            self._list_ids[self.parent_task_id] = str(list_info["id"])
        return [proved(
            f"parent task {self.parent_task_id} \"{task.get('name', '?')}\" in list "
            f"{list_info.get('name', '?')} ({list_info.get('id', '?')})"
        )]

    def create_subtask(self, parent_id: str, name: str, description: str) -> str:
        list_id = self._list_id(parent_id)
        task = self._request(
            "POST",
            f"/list/{list_id}/task",
            json={"name": name, "markdown_description": description, "parent": parent_id},
        )
        task_id = task.get("id")
        if not task_id:
            raise ServiceError("clickup", f"created a task in list {list_id} but got no id")
        return str(task_id)

    def find_subtask(self, parent_id: str, marker: str) -> str | None:
        """Scan the parent's list, newest first, for a subtask whose description has `marker`.

        Get Task with `include_subtasks` lists subtasks without their descriptions, while
        Get Tasks (`subtasks=true`) returns descriptions 100 tasks a page: fewer calls.
        A task listed without any description field is read on its own.
        """
        list_id = self._list_id(parent_id)
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
                if str(task.get("parent") or "") != parent_id:
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

    def _list_id(self, parent_id: str) -> str:
        if parent_id not in self._list_ids:
            task = self._request("GET", f"/task/{parent_id}")
            list_id = (task.get("list") or {}).get("id")
            if not list_id:
                raise ServiceError(
                    "clickup", f"task {parent_id} has no list id", transient=False
                )
            self._list_ids[parent_id] = str(list_id)
        return self._list_ids[parent_id]

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
