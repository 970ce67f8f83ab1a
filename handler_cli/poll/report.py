"""What a pass of the poll reports: one `TicketOutcome` per ticket acted on, and a summary.

The command only renders it (one JSON line per outcome on stdout, the summary on stderr).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("handler_cli")


@dataclass
class TicketOutcome:
    """One JSON line on stdout: a ticket the poll acted on (or would have, in dry-run)."""

    ticket_id: str
    request_id: str
    status_before: str
    status: str
    actions: list[dict[str, Any]] = field(default_factory=list)
    clickup_subtask_id: str | None = None
    error: str | None = None
    dry_run: bool = False

    def to_json(self) -> str:
        data = {k: v for k, v in vars(self).items() if v is not None and v != []}
        data["dry_run"] = self.dry_run
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


@dataclass
class PollReport:
    outcomes: list[TicketOutcome] = field(default_factory=list)
    waiting: int = 0
    watched: int = 0  # tickets the client is not asked about, still read (runner.watched_tickets)
    replies: int = 0
    orphans: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    locked_by: str | None = None
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures

    def outcome(self, ticket_id: str, request_id: str, status: str) -> TicketOutcome:
        """A new line of the report, for a ticket about to be acted on."""
        found = TicketOutcome(ticket_id=ticket_id, request_id=request_id,
                              status_before=status, status=status, dry_run=self.dry_run)
        self.outcomes.append(found)
        return found

    def fail(self, message: str) -> None:
        """Something failed: logged now, counted in the summary, and the run exits 1."""
        log.error("poll: %s", message)
        self.failures.append(message)

    def tally(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            for action in outcome.actions:
                counts[action["action"]] = counts.get(action["action"], 0) + 1
        return counts

    def summary(self) -> str:
        if self.locked_by is not None:
            return f"poll: another poll is running ({self.locked_by}); nothing done"
        done = ", ".join(f"{n} {a}" for a, n in sorted(self.tally().items())) or "nothing to do"
        head = "poll (dry run, nothing changed)" if self.dry_run else "poll"
        watched = f" (+{self.watched} not waiting for the client, still read)" if self.watched \
            else ""
        text = (f"{head}: {self.waiting} waiting ticket(s){watched}, {self.replies} new "
                f"repl(ies); {done}")
        if self.orphans:
            text += f"; {len(self.orphans)} ticket(s) without a request document here"
        if self.failures:
            text += f"; {len(self.failures)} failure(s)"
        return text
