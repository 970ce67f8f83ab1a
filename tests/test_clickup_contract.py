"""Every request our ClickUp board sends must be one ClickUp's OpenAPI document allows.

The document is ClickUp's own "API v2 Reference" (June 2025), copied unchanged into
tests/specs/clickup/. It does not forbid unknown body fields, so the check compares field
names too: the create-task body once sent `markdown_description` (what a GET returns), which
ClickUp ignores, so the production subtask was created without the marker crash recovery
looks for. `clickup_server()` runs the check on every scenario when it stops; here a tour of
the board is checked and the check is shown to catch what the document forbids.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from handler_cli.config import load_settings
from handler_cli.services import ServiceError
from handler_cli.services.tasks.clickup import ClickUpBoard
from tests.fakes.clickup import (
    DEFAULT_LIST_ID,
    DEFAULT_PARENT_ID,
    SPEC,
    TEAM_ID,
    RecordedRequest,
    clickup_server,
    contract_violations,
)


def test_a_tour_of_the_board_stays_within_clickups_document(tmp_path: Path) -> None:
    with clickup_server(custom_id="DEV-123", check_contract=False) as fake:
        settings = load_settings(environ={
            "HANDLER_DATA_DIR": str(tmp_path), "HANDLER_ENV_FILE": str(tmp_path / "no.env"),
            "CLICKUP_API_TOKEN": fake.token, "CLICKUP_BASE_URL": fake.url,
            "CLICKUP_PARENT_TASK_ID": "DEV-123", "CLICKUP_TEAM_ID": TEAM_ID,
            "HANDLER_RETRY_BASE_SECONDS": "0.01"})
        board = ClickUpBoard(settings)
        board.check()
        fake.fail_next("drop", when="POST")
        with pytest.raises(ServiceError):
            board.create_subtask("DEV-123", "Demande", "`[Ticket #1]`")
        made = board.find_subtask("DEV-123", "[Ticket #1]")
        fake.list_descriptions = False  # a task listed without one is read on its own
        assert board.find_subtask("DEV-123", "[Ticket #1]") == made is not None
        board.close()

    assert contract_violations(fake.requests) == []
    assert {(r.method, r.path.split("/")[1]) for r in fake.requests} == {
        ("GET", "task"), ("POST", "list"), ("GET", "list")}


def test_the_document_is_clickups_api_v2_reference() -> None:
    raw = json.loads(SPEC.read_text(encoding="utf-8"))
    assert raw["info"]["title"] == "ClickUp API v2 Reference"
    assert raw["servers"][0]["url"] == "https://api.clickup.com/api"
    create = raw["paths"]["/v2/list/{list_id}/task"]["post"]["requestBody"]
    fields = create["content"]["application/json"]["schema"]["properties"]
    assert "markdown_content" in fields and "markdown_description" not in fields


def request(method: str, path: str, body: object = None,
            **query: str) -> RecordedRequest:
    return RecordedRequest(method, path, {k: [v] for k, v in query.items()}, {}, body, 0.0)


LIST_TASKS = f"/list/{DEFAULT_LIST_ID}/task"


@pytest.mark.parametrize(("request_", "reason"), [
    (request("POST", LIST_TASKS, {"name": "x", "markdown_description": "y"}),
     "body field 'markdown_description' is not in CreateTaskrequest"),
    (request("POST", LIST_TASKS, {"markdown_content": "y"}), "'name' is a required property"),
    (request("POST", LIST_TASKS, {"name": "x", "parent": 12}), "12 is not of type"),
    (request("GET", LIST_TASKS, subtask="true"), "query parameter 'subtask' not in the document"),
    (request("GET", LIST_TASKS, page="deux"), "query parameter page='deux' is not a"),
    (request("GET", "/list/abc/task"), "path parameter list_id='abc' is not a number"),
    (request("GET", "/task/86c1", team_id="acme"), "query parameter team_id='acme' is not a"),
    (request("DELETE", LIST_TASKS), "not an operation of ClickUp's API v2 document"),
    (request("GET", "/task/86c1", {"name": "x"}), "a body, where the operation takes none"),
], ids=lambda v: f"{v.method} {v.path}" if isinstance(v, RecordedRequest) else "")
def test_the_contract_check_catches_what_the_document_forbids(request_: RecordedRequest,
                                                             reason: str) -> None:
    violations = contract_violations([request_])

    assert len(violations) == 1
    assert reason in violations[0]


def test_clickup_ignores_a_misnamed_description_so_the_stand_in_does(tmp_path: Path) -> None:
    with (pytest.raises(AssertionError, match="body field 'markdown_description'"),
          clickup_server() as fake):
        created = httpx.post(f"{fake.url}/list/{DEFAULT_LIST_ID}/task", timeout=5.0,
                             headers={"Authorization": fake.token},
                             json={"name": "x", "markdown_description": "[Ticket #1]",
                                   "parent": DEFAULT_PARENT_ID}).json()
        assert fake.tasks[created["id"]]["markdown_description"] == ""  # created empty
