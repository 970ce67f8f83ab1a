"""Personal data that can be forgotten (RGPD): retention and the right to erasure.

Clients are people in the EU; their requests, documents and e-mails are kept only as long as
they are needed:

- `prune`: finished requests untouched for `HANDLER_RETENTION_DAYS` (default 365) are erased
  from every store of the installation; never a request still waiting (on a worker, the
  client, the admin or its subtask). `poll` prunes after each pass; `handler-cli requests
  prune` does it on demand (`--dry-run` lists what would go).
- `forget`: everything about one address is erased (`handler-cli forget EMAIL`), its open
  requests included, and the address is remembered as a keyed hash only
  (`storage.ForgottenAddresses`): a request from it arriving later (a replayed webhook, or
  the client coming back) is held, untouched, and the admin told (`intake.runner`), until a
  person decides (`forget --lift`). With `crm=True` the live CRM erases the contact too
  (HubSpot's GDPR delete, `CRM.forget_contact`).

"Every store": the storage layer (requests and their keys, documents, the ledger's effects,
the poll's journal: SQLite or the shared PostgreSQL), the local files of this data dir (the
outbox's `.eml` copies, the local file store, the reply folder, the local CRM and task
board) and the live file store (R2: the objects under `requests/<request id>/`). What lives
in systems we do not erase from (HubSpot's tickets, ClickUp's subtasks) is listed in `left`,
for a person to erase there. docs/production.md, "Personal data".

The files of a request are owed (`ForgottenAddresses.owe_files`, by request id only) before
anything is erased and paid once they are gone: R2 down, or a crash half-way, leaves them
owed, and the next `forget` or `prune` (the poll's retention pass) erases them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import default as default_policy
from email.utils import getaddresses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handler_cli.sqlite import scrub
from handler_cli.storage import DataDir

if TYPE_CHECKING:
    from handler_cli.context import Context
    from handler_cli.document import Document
    from handler_cli.services.crm.local import LocalCRM

log = logging.getLogger("handler_cli")

DAY = 86_400.0
_CITED = re.compile(r"<(req_[A-Za-z0-9]+)\.")  # our Message-IDs: <request_id.kind@domain>


@dataclass
class Erasure:
    """What `prune` or `forget` erased (or, in a dry run, would erase)."""

    action: str  # "prune" or "forget"
    dry_run: bool
    request_ids: list[str] = field(default_factory=list)
    removed: dict[str, int] = field(default_factory=dict)  # store -> rows or files
    left: list[str] = field(default_factory=list)  # to erase elsewhere, by a person
    failures: list[str] = field(default_factory=list)  # what could not be done (run again)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, store: str, count: int) -> None:
        if count:
            self.removed[store] = self.removed.get(store, 0) + count

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "dry_run": self.dry_run,
                "request_ids": self.request_ids, "removed": self.removed, "left": self.left,
                **({"failures": self.failures} if self.failures else {}), **self.extra}

    def summary(self) -> str:
        verb = "would erase" if self.dry_run else "erased"
        where = ", ".join(f"{store} {n}" for store, n in sorted(self.removed.items()))
        text = f"{self.action}: {verb} {len(self.request_ids)} request(s)"
        return text + (f" ({where})" if where else "") + (
            f"; {len(self.left)} thing(s) to erase elsewhere" if self.left else "")


# -- retention ---------------------------------------------------------------------------------


def prune(ctx: Context, *, now: float | None = None, days: float | None = None,
          dry_run: bool = False) -> Erasure:
    """Erase the finished requests untouched for `days` (HANDLER_RETENTION_DAYS)."""
    days = ctx.settings.handler_retention_days if days is None else days
    erasure = Erasure("prune", dry_run, extra={"retention_days": days})
    if days <= 0:
        return erasure
    cutoff = (ctx.now().timestamp() if now is None else now) - days * DAY
    erasure.request_ids = ctx.storage.finished_before(cutoff)
    if erasure.request_ids:
        _erase(ctx, erasure, email=None)
        _scrub_local(ctx, erasure)
    elif not dry_run:
        _erase_files(ctx, erasure, [])  # what an earlier run still owes
    return erasure


def prune_after_poll(ctx: Context) -> str | None:
    """The poll's retention pass: None when it went through, else why not (the poll reports
    it as a failure: personal data kept past its time is something to fix)."""
    try:
        erasure = prune(ctx)
    except Exception as exc:  # noqa: BLE001 - reported, the poll's own work is done
        log.debug("retention pass failed", exc_info=True)
        return f"retention: {type(exc).__name__}: {exc}"
    if erasure.request_ids or erasure.removed:
        log.info("%s, finished more than %g days ago", erasure.summary(),
                 ctx.settings.handler_retention_days)
    if erasure.failures:
        return f"retention: could not erase {'; '.join(erasure.failures)}"
    return None


# -- the right to erasure ----------------------------------------------------------------------


def forget(ctx: Context, email: str, *, crm: bool = False, dry_run: bool = False,
           now: float | None = None) -> Erasure:
    """Erase everything about `email` from every store; remember it as a keyed hash."""
    address = email.strip().lower()
    at = ctx.now().timestamp() if now is None else now
    erasure = Erasure("forget", dry_run)
    if not dry_run:
        # First: a request from this address arriving from now on is held, not processed.
        ctx.storage.forgotten.remember(address, at)
        erasure.extra["forgotten_at"] = datetime.fromtimestamp(at, UTC).isoformat(
            timespec="seconds")
    ids = set(ctx.storage.requests_of(address))
    local_crm = _local_crm(ctx)
    if local_crm is not None:
        ids.update(local_crm.requests_of(address))
    erasure.request_ids = sorted(ids)
    _erase(ctx, erasure, email=address)
    if local_crm is not None and not dry_run and local_crm.forget_contact(address):
        erasure.add("local CRM contacts", 1)
    _scrub_local(ctx, erasure)
    if crm and ctx.crm.name != "local":
        if dry_run:
            erasure.extra["crm"] = f"would ask {ctx.crm.name} to erase the contact"
        else:
            from handler_cli.services import ServiceError

            try:
                found = ctx.crm.forget_contact(address)
            except ServiceError as exc:  # the local erasure stands; running again is safe
                erasure.failures.append(f"the contact in {ctx.crm.name}: {exc}")
            else:
                erasure.extra["crm"] = (f"{ctx.crm.name}: contact erased" if found
                                        else f"{ctx.crm.name}: no contact with this address")
    elif ctx.crm.name != "local":
        erasure.left.append(f"the contact in {ctx.crm.name} (run again with --crm to erase it)")
    return erasure


def lift(ctx: Context, email: str) -> bool:
    """The client came back and asked us to work for them again."""
    return ctx.storage.forgotten.lift(email.strip().lower())


# -- every store -------------------------------------------------------------------------------


def _erase(ctx: Context, erasure: Erasure, email: str | None) -> None:
    """Erase `erasure.request_ids` (and, for `forget`, whatever names `email`) from the
    storage layer, the local files and the file stores (`_erase_files`); list what is in
    systems we do not erase from."""
    ids = erasure.request_ids
    tickets, subtasks = _made_for(ctx, ids)
    data = DataDir(ctx.settings.data_dir)
    files = [*_outbox(data.outbox, ids, email), *_replies(data.replies, ids, email)]
    safe = _safe(erasure, ids)
    if erasure.dry_run:
        erasure.extra["files"] = [str(p) for p in files]
        _erase_files(ctx, erasure, safe)
    else:
        if safe:  # owed first: whatever happens next (R2 down, a crash), they are not lost
            ctx.storage.forgotten.owe_files(safe, ctx.now().timestamp())
        for store, count in ctx.storage.remove(ids).counts.items():
            erasure.add(store, count)
        for path in files:
            path.unlink(missing_ok=True)
        erasure.add("files", len(files))
        _erase_files(ctx, erasure, safe)
        local_crm = _local_crm(ctx)
        if local_crm is not None:
            erasure.add("local CRM tickets", local_crm.erase_tickets(ids))
        if data.tasks.exists() and tickets:
            from handler_cli.services.tasks.local import LocalTaskBoard

            markers = [f"[Ticket #{t}]" for t in tickets.values()]
            erasure.add("local subtasks", LocalTaskBoard(data.tasks).erase_subtasks(markers))
    if ctx.crm.name != "local" and tickets:
        erasure.left.append(f"{ctx.crm.name} ticket(s) {', '.join(sorted(tickets.values()))}: "
                            "they keep what the client wrote")
    if ctx.tasks.name != "local" and subtasks:
        erasure.left.append(f"{ctx.tasks.name} subtask(s) {', '.join(sorted(subtasks))}: "
                            "they name the client")


def _safe(erasure: Erasure, ids: Sequence[str]) -> list[str]:
    """The ids whose files can be erased by prefix; the others are left for a person (an id
    like `..` would name another prefix: refusing beats erasing the wrong files)."""
    from handler_cli.services.files import request_prefix

    safe = []
    for rid in ids:
        try:
            request_prefix(rid)
        except ValueError as exc:
            erasure.left.append(f"the stored files of a request: {exc}; look for them by hand")
        else:
            safe.append(rid)
    return safe


def _erase_files(ctx: Context, erasure: Erasure, ids: Sequence[str]) -> None:
    """The attachments of `ids` (safe ones, `_safe`) and of the requests an earlier run still
    owes: from the data dir's file folder always (it keeps the files stored before R2 was set
    up), and from the live store when there is one. A store that fails is not asked again in
    this run: what it holds stays owed, and the failure is reported (the command exits 1,
    the poll too). A dry run counts what would go (`extra["would erase"]`)."""
    from handler_cli.services import FileStore, ServiceError
    from handler_cli.services.files.local import LocalFileStore

    owed = [] if erasure.dry_run else ctx.storage.forgotten.files_owed()
    pending = sorted({*ids, *owed})
    if not pending:
        return
    stores: list[tuple[str, FileStore]] = [
        ("stored attachments", LocalFileStore(DataDir(ctx.settings.data_dir).files))]
    if ctx.files.name != "local":
        stores.append((f"{ctx.files.name} attachments", ctx.files))
    counted: dict[str, int] = {}
    failed: set[str] = set()
    for label, store in stores:
        for n, rid in enumerate(pending):
            try:
                counted[label] = counted.get(label, 0) + store.erase_request(
                    rid, dry_run=erasure.dry_run)
            except (ServiceError, OSError) as exc:
                failed.update(pending[n:])
                erasure.failures.append(f"the {label} of {len(pending) - n} request(s), "
                                        f"owed to the next forget or prune ({exc})")
                break
    if erasure.dry_run:
        erasure.extra["would erase"] = counted
        return
    for label, count in counted.items():
        erasure.add(label, count)
    ctx.storage.forgotten.files_erased([rid for rid in pending if rid not in failed])


def _scrub_local(ctx: Context, erasure: Erasure) -> None:
    """The local CRM's and task board's files lose the erased rows' old pages too."""
    if not erasure.dry_run:
        data = DataDir(ctx.settings.data_dir)
        scrub(data.crm)
        scrub(data.tasks)


def _local_crm(ctx: Context) -> LocalCRM | None:
    """The data dir's local CRM when it has one (in use, or left from before HubSpot)."""
    path = DataDir(ctx.settings.data_dir).crm
    if not path.exists():
        return None
    from handler_cli.services.crm.local import LocalCRM

    return LocalCRM(path)


def _made_for(ctx: Context, ids: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The ticket of each request that has one, and the production subtasks made for them,
    from the stored document (or the webhook's record when there is no document)."""
    tickets: dict[str, str] = {}
    subtasks: list[str] = []
    for rid in ids:
        doc: Document | None = ctx.storage.documents.get(rid)
        data = doc.model_dump() if doc is not None else None
        if data is None:
            rec = ctx.storage.requests.get(rid)
            data = rec.data() if rec is not None else {}
        if data.get("ticket_id"):
            tickets[rid] = str(data["ticket_id"])
        if data.get("clickup_subtask_id"):
            subtasks.append(str(data["clickup_subtask_id"]))
    return tickets, subtasks


def _headers(path: Path) -> Any:
    with path.open("rb") as handle:
        return BytesParser(policy=default_policy).parse(handle, headersonly=True)


def _names(message: Any, email: str | None) -> bool:
    if email is None:
        return False
    fields = [str(message.get(h, "")) for h in ("From", "To", "Cc", "Reply-To", "Sender")]
    return any(addr.lower() == email for _, addr in getaddresses(fields))


def _cites(message: Any, ids: set[str]) -> bool:
    cited = " ".join(str(message.get(h, "")) for h in ("Message-ID", "In-Reply-To",
                                                        "References"))
    return any(found in ids for found in _CITED.findall(cited))


def _outbox(folder: Path, ids: Sequence[str], email: str | None) -> list[Path]:
    """The outbox's copies of these requests' e-mails (named after their Message-ID), and
    any other one to or from `email`."""
    if not folder.is_dir():
        return []
    wanted = set(ids)
    found = []
    for path in folder.glob("*.eml"):
        request = path.name.split(".", 1)[0]
        if request in wanted or (email is not None and _names(_headers(path), email)):
            found.append(path)
    return sorted(found)


def _replies(folder: Path, ids: Sequence[str], email: str | None) -> list[Path]:
    """Client e-mails dropped in the reply folder (read or handled) that answer one of these
    requests, or come from `email`."""
    if not folder.is_dir():
        return []
    wanted = set(ids)
    found = []
    for path in [*folder.glob("*.eml"), *(folder / "handled").glob("*.eml")]:
        message = _headers(path)
        if _cites(message, wanted) or _names(message, email):
            found.append(path)
    return sorted(found)
