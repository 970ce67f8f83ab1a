"""`handler-cli stats [--since 30d]`: the desk at a glance, for the admin.

A table on a terminal, one JSON object when piped (`handler-cli stats | jq .quotes`). The
figures are `handler_cli.stats.desk_stats` over every request the installation knows.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from handler_cli.commands._common import settings_or_exit
from handler_cli.commands.requests import SinceOpt, since_or_exit


def stats(since: SinceOpt = "30d") -> None:
    """The desk at a glance: requests by form and type, reclassified and LLM shares, quotes
    by credits, validated / refused / waiting (and for how long), time to validation.

    Example: `handler-cli stats --since 7d`
    """
    from handler_cli.overview import Overview
    from handler_cli.stats import desk_stats

    settings = settings_or_exit()
    start = since_or_exit(since)
    with Overview(settings) as overview:
        views = overview.requests(since=start)
    figures = desk_stats(views, datetime.now(UTC), start)
    if sys.stdout.isatty():
        _render(figures, since)
    else:
        print(json.dumps(figures, ensure_ascii=False))


def _render(f: dict[str, Any], since: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    def pairs(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in counts.items()) or "—"

    def share(part: dict[str, Any]) -> str:
        return "—" if part["share"] is None else f"{part['count']} ({part['share']:.0%})"

    def days(value: float | None) -> str:
        return "—" if value is None else f"{value:g} d"

    waiting = f["waiting"]
    validation = f["request_to_validation"]
    table = Table(title=f"handler-cli stats — {f'last {since}' if since else 'all time'}",
                  title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in (
        ("requests", f"{f['requests']} ({pairs(f['by_door'])})"),
        ("by form", pairs(f["by_form"])),
        ("by type", pairs(f["by_type"])),
        ("reclassified", share(f["reclassified"])),
        ("decided by the LLM", share(f["llm"])),
        ("quotes sent", f"{f['quotes']['sent']}"
         + (f" ({', '.join(f'{n} × {c} cr.' for c, n in f['quotes']['by_credits'].items())})"
            if f["quotes"]["sent"] else "")),
        ("validated", str(f["validated"])),
        ("refused", str(f["refused"])),
        ("waiting", f"{waiting['count']}" + (f" ({pairs(waiting['by_status'])}; median "
                                              f"{days(waiting['median_days'])}, longest "
                                              f"{days(waiting['longest_days'])})"
                                              if waiting["count"] else "")),
        ("failed", str(f["failed"])),
        ("request → validation", "—" if validation["median_hours"] is None else
         f"median {validation['median_hours']:g} h ({validation['count']} validated)"),
    ):
        table.add_row(name, value)
    Console().print(table)
