"""Steps 2, 3, 4, 5b and 7 on the embedded backends, each on its own."""

from __future__ import annotations

import email
from email import policy
from pathlib import Path

import pytest

from handler_cli.context import Context
from handler_cli.document import Document
from handler_cli.services import ServiceError
from handler_cli.steps import STEPS, apply, notify_admin, notify_client, ticket, upload
from handler_cli.steps import contact as contact_step
from tests.conftest import classified


def outbox(ctx: Context) -> list[email.message.EmailMessage]:
    folder = ctx.settings.data_dir / "outbox"
    return [
        email.message_from_bytes(p.read_bytes(), policy=policy.default)  # type: ignore[misc]
        for p in sorted(folder.glob("*.eml"))
    ]


def test_contact_is_created_once_per_email(ctx: Context) -> None:
    a = contact_step.run(classified("support"), ctx)
    b = contact_step.run(classified("support"), ctx)
    assert a.contact_id == b.contact_id
    assert contact_step.split_name("  Marie-Claire  Dupont Leroy ") == ("Marie-Claire", "Dupont Leroy")


def test_ticket_priority_is_high_only_when_reclassified(ctx: Context) -> None:
    normal = ticket.run(classified("support"), ctx)
    moved = ticket.run(classified("misrouted_to_support", "SUPPORT"), ctx)
    assert ctx.crm.get_ticket(normal.ticket_id)["hs_ticket_priority"] == "MEDIUM"
    assert ctx.crm.get_ticket(moved.ticket_id)["hs_ticket_priority"] == "HIGH"
    assert moved.ticket_url and moved.ticket_id in moved.ticket_url


def test_ticket_is_not_created_twice_even_when_the_document_was_lost(ctx: Context) -> None:
    first = ticket.run(classified("support"), ctx)
    # The same request again from the original payload (the output was never saved).
    second = ticket.run(classified("support"), ctx)
    assert first.ticket_id == second.ticket_id
    assert ctx.crm._one("SELECT COUNT(*) AS n FROM tickets", ())["n"] == 1  # type: ignore[attr-defined]


def test_ticket_needs_the_classification(ctx: Context) -> None:
    doc = Document.model_validate(classified("support").model_dump(exclude={"type_final"}))
    assert not apply(STEPS["ticket"], doc, ctx)
    assert doc.errors[0].step == "ticket" and "type_final" in doc.errors[0].error
    assert doc.ticket_id is None


def test_upload_stores_files_under_the_request_and_its_token(ctx: Context) -> None:
    doc = upload.run(classified("modelisation_simple"), ctx)
    (url,) = doc.fichiers_urls or []
    path = Path(url.removeprefix("file://"))
    assert path.read_bytes().startswith(b"\x89PNG")
    token = upload.file_token(ctx.settings, doc.request_id)
    assert f"/requests/{doc.request_id}/{token}/vase.png" in url


def test_upload_skips_support_and_requests_without_files(ctx: Context) -> None:
    assert upload.run(classified("support"), ctx).fichiers_urls is None
    assert upload.run(classified("incomplete"), ctx).fichiers_urls is None


def test_bad_files_become_notes_and_the_good_one_goes_through(ctx: Context) -> None:
    doc = upload.run(classified("with_bad_file"), ctx)
    assert [u.rsplit("/", 1)[1] for u in doc.fichiers_urls or []] == ["theiere.png"]
    assert any("setup.exe" in n and "non accepté" in n for n in doc.notes)
    assert any("broken.jpg" in n and "base64" in n for n in doc.notes)
    # The notes reach the ticket when it is created.
    doc = ticket.run(doc, ctx)
    assert ctx.crm.notes(doc.ticket_id) == doc.notes  # type: ignore[attr-defined]
    ticket.run(Document.model_validate(doc.model_dump(exclude={"ticket_id"})), ctx)
    assert ctx.crm.notes(doc.ticket_id) == doc.notes  # type: ignore[attr-defined]


class BrokenStore:
    name = "broken"

    def describe(self) -> str:
        return "a store that is down"

    def put(self, key: str, data: bytes, content_type: str) -> str:
        raise ServiceError("r2", "connection refused")


def test_store_down_means_ticket_without_files_plus_a_note_then_a_retry(ctx: Context) -> None:
    ctx.__dict__["files"] = BrokenStore()
    doc = classified("modelisation_simple")
    assert not apply(STEPS["upload"], doc, ctx)
    assert doc.fichiers_urls is None and doc.errors[0].step == "upload"
    assert apply(STEPS["ticket"], doc, ctx)
    assert "non stocké" in ctx.crm.notes(doc.ticket_id)[0]  # type: ignore[attr-defined]
    # The store is back: a re-run uploads and puts the links on the ticket.
    del ctx.__dict__["files"]
    assert apply(STEPS["upload"], doc, ctx)
    assert doc.fichiers_urls and not doc.errors
    assert ctx.crm.get_ticket(doc.ticket_id)["fichiers_urls"] == doc.fichiers_urls[0]


@pytest.mark.parametrize(
    ("name", "status", "credits", "client_template", "phrase"),
    [
        ("incomplete", "pending_info", None, "client_missing_info", "il nous manque encore"),
        ("modelisation_simple", "pending_credits", 1, "client_quote_1", "1 crédit"),
        ("modelisation_complexe", "pending_credits", 2, "client_quote_2", "2 crédits"),
        ("admin_case", "pending_admin", None, "client_admin_ack", "estimation sur mesure"),
    ],
)
def test_client_gets_the_email_of_its_status(
    ctx: Context, name: str, status: str, credits: int | None, client_template: str, phrase: str
) -> None:
    doc = classified(name, validation_status=status, credits_estimes=credits,
                     missing_info=["Les dimensions de l'objet"] if status == "pending_info" else None)
    doc = notify_client.run(ticket.run(doc, ctx), ctx)
    assert doc.emails["client"].template == client_template
    sent = {m["To"]: m for m in outbox(ctx)}
    client = next(m for to, m in sent.items() if doc.user_email in to)
    assert client["Subject"].startswith(f"[Ticket #{doc.ticket_id}]")
    assert phrase in client.get_body(("plain",)).get_content()
    assert client.get_body(("html",)) is not None
    if status == "pending_admin":  # one e-mail per event: step 7's summary tells the admin
        assert "admin_complex" not in doc.emails and len(sent) == 1


def test_support_gets_an_acknowledgement_with_its_ticket_number(ctx: Context) -> None:
    doc = notify_client.run(ticket.run(classified("support"), ctx), ctx)
    (msg,) = outbox(ctx)
    assert doc.ticket_id in msg.get_body(("plain",)).get_content()
    assert msg["Message-ID"] == doc.emails["client"].message_id


def test_emails_are_sent_once_even_if_the_document_was_lost(ctx: Context) -> None:
    doc = ticket.run(classified("support"), ctx)
    notify_client.run(Document.model_validate(doc.model_dump()), ctx)
    notify_client.run(Document.model_validate(doc.model_dump()), ctx)
    assert len(outbox(ctx)) == 1
    logged = ctx.crm.emails(doc.ticket_id)  # type: ignore[attr-defined]
    assert len(logged) == 1 and logged[0].direction == "OUTGOING"


def test_admin_summary_alerts_on_reclassification(ctx: Context) -> None:
    doc = notify_admin.run(ticket.run(classified("misrouted_to_support", "SUPPORT"), ctx), ctx)
    (msg,) = outbox(ctx)
    assert msg["To"] == ctx.settings.admin_email == "yvanol.fotso@valione-services.com"
    assert "Demande reclassée en support" in msg["Subject"]
    text = msg.get_body(("plain",)).get_content()
    assert "Demande reclassée" in text and "formulaire" in text and "vérifiez" in text
    assert doc.emails["admin"].message_id == msg["Message-ID"]


def test_admin_summary_reports_failed_steps(ctx: Context) -> None:
    doc = classified("support")
    doc.record_error("contact", "hubspot: 503 Service Unavailable", ctx.now())
    notify_admin.run(doc, ctx)
    (msg,) = outbox(ctx)
    assert "reclassée" not in msg["Subject"]
    body = msg.get_body(("plain",)).get_content()
    assert "Le contact n'a pas pu être créé dans le CRM" in body  # what failed, in words
    assert "503" not in body and "hubspot" not in body  # the detail stays on the document


def test_a_newline_in_objet_never_reaches_a_header(ctx: Context) -> None:
    doc = classified("support", objet="Bonjour\r\nBcc: victim@example.com")
    notify_admin.run(ticket.run(doc, ctx), ctx)
    (msg,) = outbox(ctx)
    assert msg["Bcc"] is None
    assert "\n" not in msg["Subject"] and "Bcc: victim" in msg["Subject"]


def test_html_alternative_is_escaped(ctx: Context) -> None:
    doc = classified("support", objet="<script>alert(1)</script>")
    notify_client.run(ticket.run(doc, ctx), ctx)
    (msg,) = outbox(ctx)
    html = msg.get_body(("html",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_template_override_folder_wins(environ: dict[str, str], tmp_path: Path) -> None:
    from handler_cli.config import load_settings

    override = tmp_path / "tpl"
    override.mkdir()
    (override / "client_support_ack.txt.j2").write_text(
        '{% set subject = "Reçu" %}Ticket {{ doc.ticket_id }} : merci !\n', encoding="utf-8"
    )
    ctx = Context(load_settings(environ={**environ, "HANDLER_TEMPLATES_DIR": str(override)}))
    doc = notify_client.run(ticket.run(classified("support"), ctx), ctx)
    (msg,) = outbox(ctx)
    assert msg["Subject"] == f"[Ticket #{doc.ticket_id}] Reçu"
    assert msg.get_body(("plain",)).get_content().strip() == f"Ticket {doc.ticket_id} : merci !"


def test_two_processes_sharing_the_local_crm_number_tickets_without_clashes(
    settings: object,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from handler_cli.services import TicketDraft
    from handler_cli.services.crm.local import LocalCRM

    path = settings.data_dir / "crm.sqlite3"  # type: ignore[attr-defined]
    crms = [LocalCRM(path), LocalCRM(path)]  # two connections, as two processes have

    def create(n: int) -> str:
        draft = TicketDraft(request_id=f"req_{n % 30}", subject="s", content="c",
                            priority="MEDIUM", contact_id=None)
        return crms[n % 2].create_ticket(draft)

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(create, range(120)))
    assert len(set(ids)) == 30 and min(map(int, ids)) == 1001
    assert all(ids[n] == ids[n % 30] for n in range(120))
