"""The ClickUp board against a stand-in ClickUp API on loopback (real HTTP, real errors)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from handler_cli.config import ConfigError, Settings, load_settings
from handler_cli.services import ServiceError
from handler_cli.services.tasks.clickup import ClickUpBoard, is_custom_task_id
from tests.fakes.clickup import (
    DEFAULT_LIST_ID,
    DEFAULT_PARENT_ID,
    TEAM_ID,
    FakeClickUp,
    clickup_server,
)
from tests.peers import lines


@pytest.fixture
def fake() -> Iterator[FakeClickUp]:
    with clickup_server() as server:
        yield server


def settings_for(fake: FakeClickUp, tmp_path: Path, **extra: str) -> Settings:
    return load_settings(environ={
        "HANDLER_DATA_DIR": str(tmp_path), "HANDLER_ENV_FILE": str(tmp_path / "no.env"),
        "CLICKUP_API_TOKEN": fake.token, "CLICKUP_BASE_URL": fake.url,
        "HANDLER_RETRY_BASE_SECONDS": "0.01", **extra,
    })


@pytest.fixture
def board(fake: FakeClickUp, tmp_path: Path) -> Iterator[ClickUpBoard]:
    b = ClickUpBoard(settings_for(fake, tmp_path), max_rate_wait=0.2)
    yield b
    b.close()


def test_create_subtask_posts_to_the_parents_list_with_parent_and_markdown(
    fake: FakeClickUp, board: ClickUpBoard
) -> None:
    task_id = board.create_subtask(DEFAULT_PARENT_ID, "Demande a@b.fr", "**Référence :** `[T]`")

    task = fake.tasks[task_id]
    assert task["parent"] == DEFAULT_PARENT_ID
    assert task["list_id"] == DEFAULT_LIST_ID
    assert task["name"] == "Demande a@b.fr"
    assert task["markdown_description"] == "**Référence :** `[T]`"
    posts = fake.requests_to("POST", rf"/list/{DEFAULT_LIST_ID}/task")
    assert len(posts) == 1
    assert posts[0].headers["Authorization"] == fake.token  # bare token, no "Bearer"


def test_list_id_of_the_parent_is_read_once(fake: FakeClickUp, board: ClickUpBoard) -> None:
    board.create_subtask(DEFAULT_PARENT_ID, "Demande 1", "un")
    board.create_subtask(DEFAULT_PARENT_ID, "Demande 2", "deux")

    assert len(fake.requests_to("GET", rf"/task/{DEFAULT_PARENT_ID}")) == 1
    assert len(fake.subtasks_of(DEFAULT_PARENT_ID)) == 2


def test_find_subtask_matches_the_marker_in_the_description(
    fake: FakeClickUp, board: ClickUpBoard
) -> None:
    fake.add_task("Demande x@y.fr", parent=DEFAULT_PARENT_ID,
                  description="**Référence :** `[Ticket #1002]`")
    wanted = fake.add_task("Demande a@b.fr", parent=DEFAULT_PARENT_ID,
                           description="**Référence :** `[Ticket #1001]`\nsuite")
    fake.add_task("Autre tâche", description="[Ticket #1001] mais pas une sous-tâche")

    assert board.find_subtask(DEFAULT_PARENT_ID, "[Ticket #1001]") == wanted["id"]
    assert board.find_subtask(DEFAULT_PARENT_ID, "[Ticket #100]") is None


def test_find_subtask_pages_through_the_list(fake: FakeClickUp, board: ClickUpBoard) -> None:
    fake.page_size = 2
    wanted = fake.add_task("Demande old", parent=DEFAULT_PARENT_ID,
                           description="`[Ticket #7]`")
    for i in range(5):
        fake.add_task(f"Demande {i}", parent=DEFAULT_PARENT_ID, description=f"`[Ticket #{i}0]`")

    assert board.find_subtask(DEFAULT_PARENT_ID, "[Ticket #7]") == wanted["id"]
    pages = [r.param("page") for r in fake.requests_to("GET", rf"/list/{DEFAULT_LIST_ID}/task")]
    assert pages == ["0", "1", "2"]


def test_get_task_lists_subtasks_without_descriptions_so_board_uses_get_tasks(
    fake: FakeClickUp, board: ClickUpBoard
) -> None:
    wanted = fake.add_task("Demande", parent=DEFAULT_PARENT_ID, description="`[Ticket #9]`")

    assert board.find_subtask(DEFAULT_PARENT_ID, "[Ticket #9]") == wanted["id"]
    listing = fake.requests_to("GET", rf"/list/{DEFAULT_LIST_ID}/task")[0]
    assert listing.param("subtasks") == "true"
    assert listing.param("include_closed") == "true"


def test_rate_limited_call_waits_for_the_reset_then_succeeds(
    fake: FakeClickUp, board: ClickUpBoard
) -> None:
    fake.fail_next(429, when="POST", reset_in=0)

    task_id = board.create_subtask(DEFAULT_PARENT_ID, "Demande", "texte")

    assert task_id in fake.tasks
    assert len(fake.requests_to("POST", r"/list/.*/task")) == 2
    assert len(fake.subtasks_of(DEFAULT_PARENT_ID)) == 1


def test_rate_limited_retry_comes_no_earlier_than_the_reset_time(
    fake: FakeClickUp, tmp_path: Path
) -> None:
    board = ClickUpBoard(settings_for(fake, tmp_path), max_rate_wait=5)
    fake.fail_next(429, reset_in=1)

    board.check()

    first, retry = fake.requests
    reset = int(first.at + 1)  # what the fake put in X-RateLimit-Reset
    assert retry.at >= reset - 0.01
    assert retry.at - first.at < 1.5


def test_rate_limit_wait_is_capped(fake: FakeClickUp, board: ClickUpBoard) -> None:
    fake.fail_next(429, reset_in=3600)  # an hour away; the board waits max_rate_wait (0.2 s)

    started = time.monotonic()
    board.check()

    assert time.monotonic() - started < 2


def test_persistent_rate_limit_raises_transient_error_with_clickup_code(
    fake: FakeClickUp, board: ClickUpBoard
) -> None:
    fake.fail_next(429, times=10, reset_in=0)

    with pytest.raises(ServiceError) as info:
        board.check()

    assert info.value.transient
    assert "429" in str(info.value) and "APP_002" in str(info.value)
    assert len(fake.requests) == board.max_attempts


def test_server_error_on_a_read_is_retried(fake: FakeClickUp, board: ClickUpBoard) -> None:
    fake.fail_next(500, times=2)

    assert "Demandes clients" in lines(board.check())
    assert len(fake.requests) == 3


def test_ambiguous_server_error_on_create_is_not_retried(
    fake: FakeClickUp, board: ClickUpBoard
) -> None:
    fake.fail_next(500, when="POST")

    with pytest.raises(ServiceError) as info:
        board.create_subtask(DEFAULT_PARENT_ID, "Demande", "texte")

    assert info.value.transient and "SHARD_001" in str(info.value)
    assert len(fake.requests_to("POST", r"/list/.*/task")) == 1


def test_unavailable_on_create_is_retried(fake: FakeClickUp, board: ClickUpBoard) -> None:
    fake.fail_next(503, when="POST")

    board.create_subtask(DEFAULT_PARENT_ID, "Demande", "texte")

    assert len(fake.requests_to("POST", r"/list/.*/task")) == 2
    assert len(fake.subtasks_of(DEFAULT_PARENT_ID)) == 1


def test_lost_answer_to_create_raises_and_does_not_create_twice(
    fake: FakeClickUp, board: ClickUpBoard
) -> None:
    fake.fail_next("drop", when="POST")

    with pytest.raises(ServiceError):
        board.create_subtask(DEFAULT_PARENT_ID, "Demande", "`[Ticket #5]`")

    assert len(fake.subtasks_of(DEFAULT_PARENT_ID)) == 1  # it happened, once
    assert board.find_subtask(DEFAULT_PARENT_ID, "[Ticket #5]") is not None


def test_bad_token_is_a_permanent_error_naming_clickups_code(
    fake: FakeClickUp, tmp_path: Path
) -> None:
    board = ClickUpBoard(settings_for(fake, tmp_path, CLICKUP_API_TOKEN="pk_wrong"))

    with pytest.raises(ServiceError) as info:
        board.check()

    assert not info.value.transient
    assert "401" in str(info.value) and "Token invalid" in str(info.value)
    assert "OAUTH_025" in str(info.value)
    assert len(fake.requests) == 1  # not retried


def test_unknown_parent_task_is_a_permanent_error(fake: FakeClickUp, tmp_path: Path) -> None:
    board = ClickUpBoard(settings_for(fake, tmp_path, CLICKUP_PARENT_TASK_ID="nope"))

    with pytest.raises(ServiceError) as info:
        board.create_subtask("nope", "Demande", "texte")

    assert not info.value.transient and "404" in str(info.value)
    assert fake.requests_to("POST", r".*") == []


def test_clickup_down_raises_transient_error_after_retries(
    fake: FakeClickUp, board: ClickUpBoard
) -> None:
    fake.down()

    with pytest.raises(ServiceError) as info:
        board.create_subtask(DEFAULT_PARENT_ID, "Demande", "texte")

    assert info.value.transient and "cannot connect" in str(info.value)
    fake.up()
    assert board.create_subtask(DEFAULT_PARENT_ID, "Demande", "texte") in fake.tasks


def test_check_names_the_parent_task_and_its_list(board: ClickUpBoard) -> None:
    report = lines(board.check())

    assert DEFAULT_PARENT_ID in report and "Demandes clients" in report
    assert DEFAULT_LIST_ID in report


def test_board_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CLICKUP_API_TOKEN"):
        ClickUpBoard(load_settings(environ={"HANDLER_DATA_DIR": str(tmp_path)}))


# -- the description field, and crash recovery through it -----------------------------------


def test_the_description_is_sent_as_markdown_content_and_found_again_after_a_lost_answer(
    fake: FakeClickUp, board: ClickUpBoard
) -> None:
    fake.fail_next("drop", when="POST")  # ClickUp makes it; the answer never arrives

    with pytest.raises(ServiceError):
        board.create_subtask(DEFAULT_PARENT_ID, "Demande", "**Référence :** `[Ticket #42]`")

    (post,) = fake.requests_to("POST", r"/list/.*/task")
    assert set(post.body) == {"name", "markdown_content", "parent"}
    (made,) = fake.subtasks_of(DEFAULT_PARENT_ID)
    assert made["markdown_description"] == "**Référence :** `[Ticket #42]`"
    assert board.find_subtask(DEFAULT_PARENT_ID, "[Ticket #42]") == made["id"]


# -- a custom task id as the parent ---------------------------------------------------------


def test_a_custom_parent_task_id_is_read_with_the_workspace_id_and_used_by_its_real_id(
    tmp_path: Path
) -> None:
    with clickup_server(custom_id="DEV-123") as fake:
        board = ClickUpBoard(settings_for(fake, tmp_path, CLICKUP_PARENT_TASK_ID="DEV-123",
                                          CLICKUP_TEAM_ID=TEAM_ID))
        assert "parent task DEV-123 (86c7r48ha)" in lines(board.check())
        task_id = board.create_subtask("DEV-123", "Demande", "`[Ticket #5]`")
        found = board.find_subtask("DEV-123", "[Ticket #5]")
        board.close()

    assert found == task_id and fake.tasks[task_id]["parent"] == DEFAULT_PARENT_ID
    (read,) = fake.requests_to("GET", r"/task/DEV-123")  # once, then cached
    assert read.query == {"custom_task_ids": ["true"], "team_id": [TEAM_ID]}


def test_a_custom_parent_task_id_without_the_workspace_id_is_refused_clearly(
    fake: FakeClickUp, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        ClickUpBoard(settings_for(fake, tmp_path, CLICKUP_PARENT_TASK_ID="DEV-123"))

    assert str(caught.value).startswith(
        "CLICKUP_PARENT_TASK_ID=DEV-123 is a custom task id: ClickUp reads it only with the "
        "Workspace id; set CLICKUP_TEAM_ID")
    assert fake.requests == []


@pytest.mark.parametrize(("task_id", "custom"), [
    ("DEV-123", True), ("ab-7", True), ("86c7r48ha", False), ("9hz", False), ("DEV-", False),
])
def test_custom_task_ids_are_told_apart_from_clickups_own(task_id: str, custom: bool) -> None:
    assert is_custom_task_id(task_id) is custom
