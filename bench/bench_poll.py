"""HubSpot calls and time of one `poll` pass over many waiting tickets, on a loopback HubSpot.

    python bench/bench_poll.py [--sizes 100,1000,5000] [--replies 10]

For each size it seeds the stand-in HubSpot (tests/fakes/hubspot.py, search limited to ~5
per second like the real one) with that many tickets waiting for their client, and the local
document store with their requests, then times one pass of the poll:

- `quiet, bare`: no e-mail on any ticket (the floor: search pages + the three associations
  reads: ticket e-mails, ticket contacts, contact e-mails, 1,000 inputs a call);
- `quiet, quote logged`: each ticket carries the quote e-mail `run` logged on it (what a
  real portal looks like), no reply. The backend remembers the ids of the e-mails it logged
  (and of any non-client e-mail it read once), so a poll never reads them again;
- `N replies`: as above, and N tickets got a "Je valide" (each acted on: subtask, e-mails).

The issue's aim: 1,000 waiting tickets with no new reply cost at most 10 HubSpot calls.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handler_cli.config import load_settings  # noqa: E402
from handler_cli.context import Context  # noqa: E402
from handler_cli.document import Document, SentEmail  # noqa: E402
from handler_cli.poll import Poller  # noqa: E402
from handler_cli.services import EmailRecord  # noqa: E402
from tests.fakes.hubspot import FakeHubSpot, hubspot_server  # noqa: E402

EMAIL_TO_TICKET = 224
TICKET_TO_CONTACT = 16
DOMAIN = "valione-services.com"


def seed(fake: FakeHubSpot, ctx: Context, size: int, *, quotes: bool, replies: int) -> None:
    sent = datetime.now(UTC) - timedelta(days=1)
    for n in range(size):
        request_id = f"req_bench_{n:06d}"
        contact = fake.add("contacts", {"email": f"client{n}@example.fr"})
        ticket_id = fake.add("tickets", {
            "subject": f"[MODELISATION] Objet {n}", "content": "Un vase en céramique, 30 cm.",
            "hs_pipeline": "0", "hs_pipeline_stage": "1", "hs_ticket_priority": "MEDIUM",
            "validation_status": "pending_credits", "credits_estimes": "1",
            "handler_request_id": request_id,
        }, [("contacts", contact, TICKET_TO_CONTACT)])
        quote_id = f"<{request_id}.client@{DOMAIN}>"
        doc = Document(
            source="modelisation", objet=f"Objet {n}", description="Un vase en céramique, 30 cm.",
            user_email=f"client{n}@example.fr", user_name=f"Client {n}", request_id=request_id,
            type_final="MODELISATION", ticket_id=ticket_id, credits_estimes=1,
            completeness="complete", validation_status="pending_credits",
            ticket_url=f"https://app.hubspot.com/contacts/1/record/0-5/{ticket_id}",
            emails={"client": SentEmail(message_id=quote_id, to=f"client{n}@example.fr",
                                        subject="[Ticket] Votre devis : 1 crédit",
                                        template="client_quote_1", sent_at=sent)},
        )
        ctx.documents.save(doc)
        if quotes:  # logged the way `run` logs it, through the CRM backend
            ctx.crm.log_email(ticket_id, EmailRecord(
                message_id=quote_id, direction="OUTGOING", sender=f"studio@{DOMAIN}",
                to=doc.user_email, subject="Votre devis : 1 crédit", text="Devis", at=sent))
        if n < replies:
            fake.add("emails", {
                "hs_timestamp": datetime.now(UTC).isoformat(),
                "hs_email_direction": "INCOMING_EMAIL", "hs_email_subject": "Re: devis",
                "hs_email_text": "Je valide, merci.", "hs_email_from_email": doc.user_email,
                "hs_email_headers": json.dumps({"Message-Id": f"<r{n}@mail.example.fr>",
                                                "In-Reply-To": quote_id}),
            }, associations=[("tickets", ticket_id, EMAIL_TO_TICKET)])


def one(size: int, *, quotes: bool, replies: int) -> tuple[Counter[str], float, str]:
    with tempfile.TemporaryDirectory() as tmp, hubspot_server(check_contract=False) as fake:
        environ = {"HANDLER_DATA_DIR": tmp, "HANDLER_ENV_FILE": f"{tmp}/no.env",
                   "HANDLER_RETRY_BASE_SECONDS": "0.05", **fake.environ()}
        ctx = Context(load_settings(environ=environ))
        seed(fake, ctx, size, quotes=quotes, replies=replies)
        fake.requests.clear()
        started = time.perf_counter()
        report = Poller(ctx).run()
        elapsed = time.perf_counter() - started
        calls = Counter(r.op or f"{r.method} {r.path}" for r in fake.requests)
        if report.failures:
            raise SystemExit(f"poll failed: {report.failures}")
        return calls, elapsed, report.summary()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--replies", type=int, default=10)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    worst_quiet_1000 = 0
    print(f"{'tickets':>7}  {'scenario':<20} {'calls':>5}  {'time':>7}  breakdown")
    for size in sizes:
        for label, quotes, replies in (("quiet, bare", False, 0),
                                       ("quiet, quote logged", True, 0),
                                       (f"{args.replies} replies", True, args.replies)):
            calls, elapsed, _ = one(size, quotes=quotes, replies=replies)
            total = sum(calls.values())
            if size == 1000 and replies == 0:
                worst_quiet_1000 = max(worst_quiet_1000, total)
            detail = ", ".join(f"{k} {v}" for k, v in calls.most_common())
            print(f"{size:>7}  {label:<20} {total:>5}  {elapsed:>6.2f}s  {detail}", flush=True)
    if 1000 in sizes:
        verdict = "met" if worst_quiet_1000 <= 10 else "MISSED"
        print(f"\naim (1,000 waiting tickets, no new reply: <= 10 HubSpot calls): {verdict} "
              f"({worst_quiet_1000} calls in the worst quiet scenario)")
        return 0 if worst_quiet_1000 <= 10 else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
