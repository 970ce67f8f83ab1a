"""Step 6 end to end: local CRM, ledger on disk, ClickUp as a real HTTP stand-in on loopback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from handler_cli.config import load_settings
from handler_cli.context import Context
from handler_cli.document import Document
from handler_cli.services import TicketDraft
from handler_cli.steps import SUBTASK, MissingInput, apply
from handler_cli.steps.subtask import run, subtask_description
from tests.fakes.clickup import DEFAULT_LIST_ID, DEFAULT_PARENT_ID, FakeClickUp, clickup_server

FILES = ["https://files.example.com/req/plan.pdf", "https://files.example.com/req/photo.jpg"]
POSTS = rf"/list/{DEFAULT_LIST_ID}/task"


@pytest.fixture
def fake() -> Iterator[FakeClickUp]:
    with clickup_server() as server:
        yield server


def context_for(tmp_path: Path, fake: FakeClickUp | None = None) -> Context:
    environ = {"HANDLER_DATA_DIR": str(tmp_path / "data"),
               "HANDLER_ENV_FILE": str(tmp_path / "no.env"),
               "HANDLER_RETRY_BASE_SECONDS": "0.01"}
    if fake is not None:
        environ.update(CLICKUP_API_TOKEN=fake.token, CLICKUP_BASE_URL=fake.url)
    return Context(load_settings(environ=environ))


@pytest.fixture
def ctx(tmp_path: Path, fake: FakeClickUp) -> Context:
    return context_for(tmp_path, fake)


def request(**fields: object) -> Document:
    data: dict[str, object] = dict(
        source="modelisation", objet="Support mural pour écran",
        description="Bonjour, je voudrais un modèle 3D d'un support mural (plan joint).",
        user_email="Jeanne.Martin@Example.fr", user_name="Jeanne Martin",
        type_final="MODELISATION", confiance=0.95, reclassifie=False,
        fichiers_urls=FILES, credits_estimes=2, completeness="complete",
        validation_status="validated",
    )
    data.update(fields)
    return Document.model_validate(data)


def ticketed(ctx: Context, doc: Document, status: str = "validated") -> Document:
    """Open the doc's ticket in the local CRM, as steps 4 and the poll would have."""
    ticket_id = ctx.crm.create_ticket(TicketDraft(
        request_id=doc.request_id, subject=f"[MODELISATION] {doc.objet}",
        content=doc.description, priority="MEDIUM", contact_id=None,
    ))
    ctx.crm.update_ticket(ticket_id, {"validation_status": status})
    doc.ticket_id = ticket_id
    doc.ticket_url = ctx.crm.ticket_url(ticket_id)
    return doc


def test_validated_request_gets_its_subtask_under_the_parent_task(
    ctx: Context, fake: FakeClickUp
) -> None:
    doc = ticketed(ctx, request())

    assert run(doc, ctx) is doc

    [task] = fake.subtasks_of(DEFAULT_PARENT_ID)
    assert doc.clickup_subtask_id == task["id"]
    assert task["list_id"] == DEFAULT_LIST_ID
    assert task["name"] == "Demande jeanne.martin@example.fr"
    text = task["markdown_description"]
    assert f"`[Ticket #{doc.ticket_id}]`" in text
    assert doc.ticket_url is not None and doc.ticket_url in text
    assert "**Crédits estimés :** 2" in text
    assert "Support mural pour écran" in text
    assert "je voudrais un modèle 3D" in text
    assert all(f"- {url}" in text for url in FILES)
    ticket = ctx.crm.get_ticket(doc.ticket_id or "")
    assert ticket["clickup_subtask_id"] == task["id"]
    assert ticket["validation_status"] == "validated"


def test_rate_limited_create_waits_and_creates_one_subtask(
    ctx: Context, fake: FakeClickUp
) -> None:
    doc = ticketed(ctx, request())
    fake.fail_next(429, when="POST", reset_in=0)

    assert apply(SUBTASK, doc, ctx)

    assert len(fake.requests_to("POST", POSTS)) == 2
    [task] = fake.subtasks_of(DEFAULT_PARENT_ID)
    assert doc.clickup_subtask_id == task["id"]


def test_clickup_down_leaves_ticket_validated_and_a_later_run_creates_it_once(
    ctx: Context, fake: FakeClickUp
) -> None:
    doc = ticketed(ctx, request())
    fake.down()

    assert not apply(SUBTASK, doc, ctx)

    assert doc.clickup_subtask_id is None
    assert [e.step for e in doc.errors] == ["subtask"]
    assert "clickup" in doc.errors[0].error
    ticket = ctx.crm.get_ticket(doc.ticket_id or "")
    assert ticket["validation_status"] == "validated"
    assert "clickup_subtask_id" not in ticket

    fake.up()
    assert apply(SUBTASK, doc, ctx)

    [task] = fake.subtasks_of(DEFAULT_PARENT_ID)
    assert doc.clickup_subtask_id == task["id"]
    assert doc.errors == []
    assert ctx.crm.get_ticket(doc.ticket_id or "")["clickup_subtask_id"] == task["id"]


def test_rerun_creates_no_second_subtask(
    ctx: Context, fake: FakeClickUp, tmp_path: Path
) -> None:
    doc = ticketed(ctx, request())
    run(doc, ctx)
    stale = doc.model_copy(update={"clickup_subtask_id": None})  # e.g. an older saved copy

    run(doc, ctx)
    run(stale, context_for(tmp_path, fake))  # a new process, same data dir

    assert len(fake.subtasks_of(DEFAULT_PARENT_ID)) == 1
    assert len(fake.requests_to("POST", POSTS)) == 1
    assert stale.clickup_subtask_id == doc.clickup_subtask_id


def test_failed_crm_update_is_retried_without_a_second_subtask(
    ctx: Context, fake: FakeClickUp
) -> None:
    doc = request(ticket_id="1001")  # the CRM has no ticket 1001 yet: its update fails

    assert not apply(SUBTASK, doc, ctx)
    assert doc.clickup_subtask_id is None
    [task] = fake.subtasks_of(DEFAULT_PARENT_ID)

    ticketed(ctx, doc)  # the ticket now exists (the local CRM numbers from 1001)
    assert doc.ticket_id == "1001"
    assert apply(SUBTASK, doc, ctx)

    assert doc.clickup_subtask_id == task["id"]
    assert len(fake.requests_to("POST", POSTS)) == 1
    assert ctx.crm.get_ticket("1001")["clickup_subtask_id"] == task["id"]


def test_lost_create_answer_is_recovered_from_clickup_not_duplicated(
    ctx: Context, fake: FakeClickUp
) -> None:
    doc = ticketed(ctx, request())
    fake.fail_next("drop", when="POST")  # ClickUp creates it; the answer never arrives

    assert not apply(SUBTASK, doc, ctx)
    [task] = fake.subtasks_of(DEFAULT_PARENT_ID)

    assert apply(SUBTASK, doc, ctx)

    assert doc.clickup_subtask_id == task["id"]
    assert len(fake.subtasks_of(DEFAULT_PARENT_ID)) == 1
    assert len(fake.requests_to("POST", POSTS)) == 1


def test_crash_after_create_is_recovered_from_the_pending_ledger_entry(
    ctx: Context, fake: FakeClickUp, tmp_path: Path
) -> None:
    doc = ticketed(ctx, request())

    def created_then_crashed() -> str:
        fake.add_task(f"Demande {doc.user_email}", parent=DEFAULT_PARENT_ID,
                      description=subtask_description(doc))
        raise KeyboardInterrupt  # the process dies before the ledger records the result

    with pytest.raises(KeyboardInterrupt):
        ctx.ledger.once(f"subtask:{doc.request_id}", perform=created_then_crashed)
    assert ctx.ledger.get(f"subtask:{doc.request_id}") == ("pending", None)

    fresh = context_for(tmp_path, fake)
    assert apply(SUBTASK, doc, fresh)

    [task] = fake.subtasks_of(DEFAULT_PARENT_ID)
    assert doc.clickup_subtask_id == task["id"]
    assert fake.requests_to("POST", POSTS) == []
    assert fresh.crm.get_ticket(doc.ticket_id or "")["clickup_subtask_id"] == task["id"]


@pytest.mark.parametrize("status", [None, "pending_credits", "pending_info", "rejected"])
def test_request_not_validated_is_left_alone(
    ctx: Context, fake: FakeClickUp, status: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    doc = ticketed(ctx, request(validation_status=status), status=status or "pending_credits")
    before = doc.model_dump()

    with caplog.at_level(logging.INFO, logger="handler_cli"):
        assert run(doc, ctx) is doc

    assert doc.model_dump() == before
    assert fake.requests == []
    assert "not validated" in caplog.text


def test_request_with_a_subtask_already_is_left_alone(ctx: Context, fake: FakeClickUp) -> None:
    doc = ticketed(ctx, request(clickup_subtask_id="86c000abc"))

    run(doc, ctx)

    assert doc.clickup_subtask_id == "86c000abc"
    assert fake.requests == []


def test_validated_request_without_ticket_asks_for_the_ticket_step(ctx: Context) -> None:
    with pytest.raises(MissingInput, match="ticket_id"):
        run(request(), ctx)


def test_local_board_gets_the_same_subtask_and_finds_it_by_marker(tmp_path: Path) -> None:
    ctx = context_for(tmp_path)  # no ClickUp token: the embedded board
    doc = ticketed(ctx, request())

    run(doc, ctx)

    parent = ctx.settings.clickup_parent_task_id
    assert ctx.tasks.find_subtask(parent, doc.ticket_ref) == doc.clickup_subtask_id
    assert ctx.crm.get_ticket(doc.ticket_id or "")["clickup_subtask_id"] == doc.clickup_subtask_id
