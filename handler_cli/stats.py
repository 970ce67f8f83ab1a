"""The desk at a glance (`handler-cli stats`): what came in over a period and where it stands.

Computed from the one view of every request (`handler_cli.overview`), so every door counts:
requests by form and by type, how often the form was wrong (reclassified) and how often
Claude had to decide, the quotes sent by credits, what the clients did with them (validated,
refused, still waiting and for how long) and how long a request takes to be validated.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from handler_cli.overview import WAITING, RequestView


def desk_stats(views: Sequence[RequestView], now: datetime, since: datetime | None
               ) -> dict[str, Any]:
    """The figures of `handler-cli stats` over `views` (the requests received since `since`)."""
    docs = [v.document for v in views]
    classified = [d for d in docs if d.get("type_final")]
    reclassified = sum(1 for d in classified if d.get("reclassifie"))
    by_llm = sum(1 for d in classified if (d.get("classification") or {}).get("method") == "llm")
    quotes = [q for q in (v.quote for v in views) if q is not None]
    waiting = [v for v in views if v.status in WAITING]
    waited = [_days(now - (v.quote[1] if v.quote else v.received_at or now)) for v in waiting]
    to_validation = [_hours(v.validated_at - v.received_at) for v in views
                     if v.validated_at is not None and v.received_at is not None]
    return {
        "period": {"since": since.isoformat(timespec="seconds") if since else None,
                   "until": now.isoformat(timespec="seconds")},
        "requests": len(views),
        "by_door": _counts(v.door for v in views),
        "by_form": _counts(d.get("source") or "?" for d in docs),
        "by_type": _counts(d.get("type_final") or "unclassified" for d in docs),
        "reclassified": {"count": reclassified, "share": _share(reclassified, len(classified))},
        "llm": {"count": by_llm, "share": _share(by_llm, len(classified))},
        "quotes": {"sent": len(quotes), "by_credits": _counts(str(c) for c, _ in quotes)},
        "validated": sum(1 for v in views if v.status == "validated"),
        "refused": sum(1 for v in views if v.status == "rejected"),
        "waiting": {"count": len(waiting), "by_status": _counts(v.status for v in waiting),
                    "median_days": _median(waited), "longest_days": max(waited, default=None)},
        "failed": sum(1 for v in views if v.status == "failed"),
        "request_to_validation": {"count": len(to_validation),
                                  "median_hours": _median(to_validation)},
    }


def _counts(values: Any) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _days(delta: Any) -> float:
    return round(delta.total_seconds() / 86400, 1)


def _hours(delta: Any) -> float:
    return round(delta.total_seconds() / 3600, 1)
