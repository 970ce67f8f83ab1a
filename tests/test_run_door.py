"""The `run` door: every request it processed is known to the installation (issue 12), and
it never brings back a client erased at their request (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import SAMPLES, clean_environ
from tests.peers import closed_port
from tests.test_requests_view import cli, listed_in


def test_a_run_that_failed_before_its_ticket_is_listed_and_a_rerun_starts_from_it(
    tmp_path: Path,
) -> None:
    env = clean_environ(tmp_path / "data")
    down = {**env, "HUBSPOT_ACCESS_TOKEN": "pat-test",
            "HUBSPOT_BASE_URL": f"http://127.0.0.1:{closed_port()}"}
    failed = cli(down, "run", str(SAMPLES / "modelisation_simple.json"))
    assert failed.returncode == 1
    doc = json.loads(failed.stdout)
    assert doc.get("ticket_id") is None and {e["step"] for e in doc["errors"]} >= {"ticket"}

    (row,) = [r for r in listed_in(env) if r["request_id"] == doc["request_id"]]
    assert (row["door"], row["status"]) == ("cli", "failed") and row["errors"] >= 1
    shown = cli(env, "requests", "show", doc["request_id"])
    assert shown.returncode == 0 and json.loads(shown.stdout)["errors"], shown.stderr

    # The CRM back (here the local one): the same request again goes through once.
    again = cli(env, "run", str(SAMPLES / "modelisation_simple.json"))
    assert again.returncode == 0, again.stderr
    done = json.loads(again.stdout)
    assert done["request_id"] == doc["request_id"] and done["ticket_id"] and not done["errors"]
    (row,) = [r for r in listed_in(env) if r["request_id"] == doc["request_id"]]
    assert row["status"] == "pending_credits"
    to_client = [p for p in (tmp_path / "data" / "outbox").glob("*.eml")
                 if f"{doc['request_id']}.client" in p.name]
    assert len(to_client) == 1


def test_run_refuses_a_request_from_a_client_erased_at_their_request(tmp_path: Path) -> None:
    env = clean_environ(tmp_path / "data")
    sample = str(SAMPLES / "modelisation_simple.json")
    first = cli(env, "run", sample)
    assert first.returncode == 0, first.stderr
    address = json.loads(first.stdout)["user_email"]
    assert cli(env, "forget", address).returncode == 0

    again = cli(env, "run", sample)

    assert again.returncode == 1 and again.stdout == ""
    assert "erased at their request" in again.stderr and "forget --lift" in again.stderr
    assert address not in again.stderr
    assert listed_in(env) == []
    # The client came back and asked us to work for them again.
    assert cli(env, "forget", "--lift", address).returncode == 0
    back = cli(env, "run", sample)
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["ticket_id"] and len(listed_in(env)) == 1
