"""`doctor --check` on HubSpot proves what a run will do, one line per fact.

Each misconfiguration an operator can make on the HubSpot side (the key's scopes, the
portal, the ticket properties, the pipeline and stage, redacted e-mails) is caught here by
exactly one failing line that says what to do, and a well-configured portal proves every
fact without creating anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from handler_cli.checks import Finding
from handler_cli.config import Settings, load_settings
from handler_cli.services import ServiceError
from handler_cli.services.crm.hubspot import HubSpotCRM
from tests.conftest import RunCli
from tests.fakes.hubspot import ALL_SCOPES, FakeHubSpot, hubspot_server


def settings(hs: FakeHubSpot, data_dir: Path, **extra: Any) -> Settings:
    return load_settings(environ={
        "HANDLER_DATA_DIR": str(data_dir), "HANDLER_ENV_FILE": str(data_dir / "no.env"),
        "HANDLER_RETRY_BASE_SECONDS": "0.01", **hs.environ()}, **extra)


def check(hs: FakeHubSpot, tmp_path: Path, **extra: Any) -> list[Finding]:
    with HubSpotCRM(settings(hs, tmp_path, **extra), timeout=2.0) as crm:
        return crm.check()


def failed(findings: Iterable[Finding]) -> str:
    """The one failing line (the test fails if there are none or several)."""
    (line,) = [f.text for f in findings if not f.ok]
    return line


def test_a_well_configured_portal_proves_every_fact_and_creates_nothing(
        tmp_path: Path) -> None:
    with hubspot_server() as hs:
        findings = check(hs, tmp_path)

    assert all(f.ok for f in findings), findings
    text = "\n".join(f.text for f in findings)
    for fact in (f"portal {hs.portal_id}", "contacts can be read", "contacts can be written",
                 "tickets can be read and written", "custom ticket properties present",
                 "new tickets go to pipeline 0 (Pipeline 0), stage 1 (Stage 1)"):
        assert fact in text
    assert all(not objects for objects in hs.objects.values())  # nothing created
    assert {r.op for r in hs.requests} == {
        "account details", "list contacts", "update contact", "list tickets",
        "list ticket properties", "list ticket pipelines"}


@pytest.mark.parametrize(("scope", "says"), [
    ("crm.objects.contacts.read", "contacts cannot be read: the service key lacks the scope "
                                  "crm.objects.contacts.read"),
    ("crm.objects.contacts.write", "contacts cannot be written: the service key lacks the "
                                   "scope crm.objects.contacts.write"),
    ("crm.schemas.tickets.read", "ticket properties cannot be read: the service key lacks the "
                                 "scope crm.schemas.tickets.read"),
])
def test_each_missing_scope_is_one_line_naming_it(tmp_path: Path, scope: str,
                                                  says: str) -> None:
    with hubspot_server(scopes=ALL_SCOPES - {scope}) as hs:
        line = failed(check(hs, tmp_path))

    assert line.startswith(says)
    assert "(add it in HubSpot: Development → Keys → Service keys)" in line


def test_a_key_without_the_tickets_scope_fails_the_tickets_and_pipeline_lines(
        tmp_path: Path) -> None:
    with hubspot_server(scopes=ALL_SCOPES - {"tickets"}) as hs:
        lines = [f.text for f in check(hs, tmp_path) if not f.ok]

    assert lines == [
        "tickets cannot be read or written: the service key lacks the scope tickets (add it "
        "in HubSpot: Development → Keys → Service keys)",
        "ticket pipelines cannot be read: the service key lacks the scope tickets (add it in "
        "HubSpot: Development → Keys → Service keys)"]


def test_a_wrong_key_cannot_even_ask(tmp_path: Path) -> None:
    with hubspot_server() as hs, pytest.raises(ServiceError) as caught:
        check(hs, tmp_path, hubspot_access_token="pat-eu1-revoked")

    assert "HTTP 401" in str(caught.value) and "service key" in str(caught.value)


def test_missing_ticket_properties_point_to_setup(tmp_path: Path) -> None:
    with hubspot_server(custom_properties=False) as hs:
        line = failed(check(hs, tmp_path))

    assert line.startswith("ticket properties missing: validation_status, credits_estimes, ")
    assert "run `handler-cli setup hubspot` (needs crm.schemas.tickets.write)" in line


def test_a_request_id_property_that_allows_duplicates_is_caught(tmp_path: Path) -> None:
    with hubspot_server() as hs:
        hs.properties["tickets"]["handler_request_id"]["hasUniqueValue"] = False
        line = failed(check(hs, tmp_path))

    assert line.startswith("handler_request_id does not require unique values")


def test_a_pipeline_the_portal_does_not_have_is_caught_with_the_ones_it_has(
        tmp_path: Path) -> None:
    with hubspot_server() as hs:
        hs.pipelines["tickets"]["845123"] = ("845124", "845125")
        line = failed(check(hs, tmp_path, hubspot_pipeline="support"))

    assert line == ("HUBSPOT_PIPELINE=support: no such ticket pipeline in this portal; its "
                    "ticket pipelines are: 0 (Pipeline 0), 845123 (Pipeline 845123)")


def test_a_stage_the_pipeline_does_not_have_is_caught_with_its_stages(tmp_path: Path) -> None:
    with hubspot_server() as hs:
        line = failed(check(hs, tmp_path, hubspot_pipeline_stage="9"))

    assert line == ("HUBSPOT_PIPELINE_STAGE=9: no such stage in pipeline 0 (Pipeline 0); its "
                    "stages are: 1 (Stage 1), 2 (Stage 2), 3 (Stage 3), 4 (Stage 4)")


def test_a_portal_id_setting_of_another_portal_is_caught(tmp_path: Path) -> None:
    with hubspot_server() as hs:
        line = failed(check(hs, tmp_path, hubspot_portal_id="4242"))

    assert line == (f"HUBSPOT_PORTAL_ID=4242, but the key belongs to portal {hs.portal_id}: "
                    "fix or unset HUBSPOT_PORTAL_ID")


def test_an_eu_portal_whose_links_would_open_the_us_domain_is_caught(tmp_path: Path) -> None:
    with hubspot_server(ui_domain="app-eu1.hubspot.com") as hs:
        line = failed(check(hs, tmp_path, hubspot_portal_id=str(hs.portal_id)))
        fixed = check(hs, tmp_path, hubspot_portal_id=str(hs.portal_id),
                      hubspot_ui_domain="app-eu1.hubspot.com")
        with HubSpotCRM(settings(hs, tmp_path / "cached")) as crm:  # no setting: asked once
            link = crm.ticket_url("20001")

    assert line == (f"ticket links would open app.hubspot.com, but portal {hs.portal_id} lives "
                    "at app-eu1.hubspot.com: set HUBSPOT_UI_DOMAIN=app-eu1.hubspot.com (or "
                    "unset HUBSPOT_PORTAL_ID)")
    assert all(f.ok for f in fixed)
    assert link == f"https://app-eu1.hubspot.com/contacts/{hs.portal_id}/record/0-5/20001"


# -- the HubSpot reply source ----------------------------------------------------------------


def reply_source_check(hs: FakeHubSpot, tmp_path: Path) -> list[Finding]:
    from handler_cli.context import Context
    from handler_cli.replies.hubspot import HubSpotReplies

    ctx = Context(settings(hs, tmp_path, handler_reply_sources="hubspot"))
    return HubSpotReplies(ctx).check()


def logged_email(hs: FakeHubSpot) -> None:
    ticket = hs.add("tickets", {"subject": "t"})
    hs.add("emails", {"hs_email_direction": "INCOMING_EMAIL", "hs_email_subject": "Re: devis",
                      "hs_email_text": "Je valide"}, [("tickets", ticket, 224)])


def test_redacted_email_content_is_caught_when_replies_are_read_from_hubspot(
        tmp_path: Path) -> None:
    with hubspot_server(scopes=ALL_SCOPES - {"sales-email-read"}) as hs:
        logged_email(hs)
        line = failed(reply_source_check(hs, tmp_path))

    assert line.startswith("e-mail content comes back redacted: the service key lacks the "
                           "scope sales-email-read")


def test_readable_email_content_is_proved(tmp_path: Path) -> None:
    with hubspot_server() as hs:
        logged_email(hs)
        (finding,) = reply_source_check(hs, tmp_path)

    assert finding.ok and finding.text == "e-mail content is readable (sales-email-read)"


def test_doctor_check_prints_each_hubspot_line(cli: RunCli, tmp_path: Path) -> None:
    with hubspot_server(scopes=ALL_SCOPES - {"sales-email-read"}) as hs:
        logged_email(hs)
        result = cli("doctor", "--check", env={
            **hs.environ(), "HANDLER_REPLY_SOURCES": "hubspot", "HUBSPOT_PIPELINE_STAGE": "7",
            "HANDLER_DATA_DIR": str(tmp_path)})

    assert result.returncode == 1
    failures = [line.strip() for line in result.stdout.splitlines() if "check: FAILED" in line]
    assert len(failures) == 2
    assert failures[0].startswith("check: FAILED — HUBSPOT_PIPELINE_STAGE=7: no such stage")
    assert "sales-email-read" in failures[1]
    assert result.stdout.count("check: ok") >= 5
