"""Clients are asked to reply only where a reply source reads: defaults, doctor, doctor --check."""

from __future__ import annotations

from pathlib import Path

import pytest

from handler_cli.config import load_settings
from handler_cli.context import Context
from handler_cli.replies import source_names
from handler_cli.services.mail.reply_address import reply_address_findings
from tests.conftest import RunCli, clean_environ
from tests.peers import SMTPPeer, smtp_peer

__all__ = ["smtp_peer"]

RELAY = {"SMTP_HOST": "smtp.studio.example"}
IMAP = {"IMAP_HOST": "imap.studio.example", "IMAP_USER": "atelier@studio.example",
        "IMAP_PASSWORD": "pw"}


def context(tmp_path: Path, **env: str) -> Context:
    return Context(load_settings(environ=clean_environ(tmp_path, **env)))


def finding(tmp_path: Path, **env: str) -> tuple[bool, str]:
    (only,) = reply_address_findings(context(tmp_path, **env))
    return only.ok, only.text


# -- the defaults ------------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "sender", "reply_to"), [
    # Nothing configured: the no-reply fallback, and replies to the admin, a person.
    ({}, "no-reply@valione-services.com", "yvanol.fotso@valione-services.com"),
    (RELAY, "no-reply@valione-services.com", "yvanol.fotso@valione-services.com"),
    ({**RELAY, "ADMIN_EMAIL": "chef@studio.example"}, "no-reply@valione-services.com",
     "chef@studio.example"),
    # The mailbox we log in to sends and receives.
    ({**RELAY, "SMTP_USER": "atelier@studio.example"}, "atelier@studio.example", None),
    # IMAP on: replies go to the mailbox it reads.
    (IMAP, "atelier@studio.example", None),
    ({**RELAY, **IMAP, "SMTP_USER": "relay-login@smtp.example"}, "relay-login@smtp.example",
     "atelier@studio.example"),
    ({**IMAP, "MAIL_FROM": "Valione <no-reply@studio.example>"}, "no-reply@studio.example",
     "atelier@studio.example"),
    ({**IMAP, "IMAP_USER": "team", "IMAP_ADDRESSES": "Atelier <contact@studio.example>, x@y.fr"},
     "contact@studio.example", None),
    # IMAP configured but not a reply source: its mailbox is not the reply address.
    ({**IMAP, "HANDLER_REPLY_SOURCES": "local"}, "no-reply@valione-services.com",
     "yvanol.fotso@valione-services.com"),
    # What the operator sets wins.
    ({**IMAP, "MAIL_REPLY_TO": "devis@studio.example"}, "atelier@studio.example",
     "devis@studio.example"),
])
def test_defaults_never_ask_to_reply_to_an_unread_address(
    tmp_path: Path, env: dict[str, str], sender: str, reply_to: str | None
) -> None:
    s = context(tmp_path, **env).settings
    assert (s.mail_from.rpartition("<")[2].rstrip(">"), s.mail_reply_to) == (sender, reply_to)


def test_derived_values_say_where_they_come_from(tmp_path: Path) -> None:
    s = context(tmp_path, **RELAY, **IMAP, SMTP_USER="login@smtp.example").settings
    assert s.sources["mail_from"] == "default: SMTP_USER"
    assert s.sources["mail_reply_to"] == "default: the IMAP mailbox"


@pytest.mark.parametrize(("env", "names"), [
    ({}, ["local"]),
    (IMAP, ["imap", "local"]),
    ({"HUBSPOT_ACCESS_TOKEN": "pat-x"}, ["hubspot"]),
    ({**IMAP, "HUBSPOT_ACCESS_TOKEN": "pat-x"}, ["imap", "hubspot"]),
    ({**IMAP, "HUBSPOT_ACCESS_TOKEN": "pat-x", "HANDLER_REPLY_SOURCES": "hubspot"}, ["hubspot"]),
])
def test_imap_is_a_default_reply_source_when_configured(
    tmp_path: Path, env: dict[str, str], names: list[str]
) -> None:
    assert source_names(context(tmp_path, **env)) == names


def test_every_default_configuration_passes(tmp_path: Path) -> None:
    for env in ({}, RELAY, {**RELAY, "SMTP_USER": "a@studio.example"}, IMAP, {**RELAY, **IMAP},
                {**RELAY, "HUBSPOT_ACCESS_TOKEN": "pat-x"},
                {**RELAY, **IMAP, "HUBSPOT_ACCESS_TOKEN": "pat-x"}):
        ok, text = finding(tmp_path, **env)
        assert ok, (env, text)


# -- one line per fact -------------------------------------------------------------------------


def test_outbox_says_nothing_is_sent(tmp_path: Path) -> None:
    ok, text = finding(tmp_path)
    assert ok and "nothing is sent" in text and str(tmp_path / "replies") in text


def test_reply_read_by_imap_is_proved(tmp_path: Path) -> None:
    ok, text = finding(tmp_path, **RELAY, **IMAP)
    assert ok and text == ("clients reply to atelier@studio.example, the mailbox the imap source "
                           "reads (atelier@studio.example@imap.studio.example/INBOX)")


def test_an_explicit_no_reply_address_fails(tmp_path: Path) -> None:
    ok, text = finding(tmp_path, **RELAY, **IMAP, MAIL_REPLY_TO="Ne pas répondre "
                       "<ne-pas-repondre@studio.example>")
    assert not ok
    assert text == ("clients are asked to reply to ne-pas-repondre@studio.example (MAIL_REPLY_TO),"
                    " an address nobody reads: set MAIL_REPLY_TO to the mailbox a reply source "
                    "reads")


def test_a_reply_address_the_imap_source_does_not_read_fails(tmp_path: Path) -> None:
    ok, text = finding(tmp_path, **RELAY, **IMAP, MAIL_FROM="devis@studio.example")
    # MAIL_FROM given, no MAIL_REPLY_TO: the default Reply-To is the mailbox, so this passes...
    assert ok
    ok, text = finding(tmp_path, **RELAY, **IMAP, MAIL_REPLY_TO="devis@studio.example")
    assert not ok  # ...but an explicit Reply-To elsewhere does not.
    assert text.startswith("clients are asked to reply to devis@studio.example (MAIL_REPLY_TO), "
                           "but the imap source reads atelier@studio.example")
    assert "set MAIL_REPLY_TO=atelier@studio.example, or list devis@studio.example in " \
           "IMAP_ADDRESSES" in text
    assert finding(tmp_path, **RELAY, **IMAP, MAIL_REPLY_TO="devis@studio.example",
                   IMAP_ADDRESSES="atelier@studio.example, devis@studio.example")[0]


def test_an_imap_login_that_is_not_an_address_asks_for_imap_addresses(tmp_path: Path) -> None:
    ok, text = finding(tmp_path, **{**RELAY, **IMAP, "IMAP_USER": "team",
                                    "MAIL_REPLY_TO": "atelier@studio.example"})
    assert not ok and "set IMAP_ADDRESSES" in text


def test_hubspot_says_what_it_needs_to_see_the_reply(tmp_path: Path) -> None:
    ok, text = finding(tmp_path, **RELAY, HUBSPOT_ACCESS_TOKEN="pat-x",
                       MAIL_REPLY_TO="atelier@studio.example")
    assert ok and "only if atelier@studio.example is an inbox connected to HubSpot" in text


def test_local_source_with_real_mail_says_how_replies_arrive(tmp_path: Path) -> None:
    ok, text = finding(tmp_path, **RELAY, SMTP_USER="atelier@studio.example")
    assert ok and "only the local source is on" in text and "saved as a .eml" in text


def test_no_address_at_all_fails(tmp_path: Path) -> None:
    ok, text = finding(tmp_path, **RELAY, MAIL_FROM="Valione Services", MAIL_REPLY_TO="atelier")
    assert not ok and text.startswith("clients have no address to reply to (MAIL_REPLY_TO is not")


# -- in doctor ---------------------------------------------------------------------------------


def test_doctor_warns_and_doctor_check_fails_in_one_line(cli: RunCli, smtp_peer: SMTPPeer) -> None:
    env = {**smtp_peer.environ(), "MAIL_REPLY_TO": "no-reply@studio.example"}

    shown = cli("doctor", env=env)
    checked = cli("doctor", "--check", env=env)

    assert shown.returncode == 0
    warnings = [line for line in shown.stdout.splitlines() if "warning:" in line]
    assert warnings == ["  warning: clients are asked to reply to no-reply@studio.example "
                        "(MAIL_REPLY_TO), an address nobody reads: set MAIL_REPLY_TO to the "
                        "mailbox a reply source reads"]
    assert checked.returncode == 1
    failed = [line for line in checked.stdout.splitlines() if "check: FAILED" in line]
    assert failed == ["  check: FAILED — clients are asked to reply to no-reply@studio.example "
                      "(MAIL_REPLY_TO), an address nobody reads: set MAIL_REPLY_TO to the mailbox"
                      " a reply source reads"]


def test_doctor_shows_the_derived_reply_address(cli: RunCli, smtp_peer: SMTPPeer) -> None:
    shown = cli("doctor", env=smtp_peer.environ())
    assert shown.returncode == 0, shown.stderr
    assert ("MAIL_REPLY_TO = yvanol.fotso@valione-services.com  [default: ADMIN_EMAIL, the sender"
            " is a no-reply address]") in shown.stdout
    assert "  reply address: clients reply to yvanol.fotso@valione-services.com" in shown.stdout
