"""The Context: settings plus the services, each built on first use from the settings.

This is the one place that chooses a backend: live when its settings are present, local
otherwise, and an error instead of the local fallback in strict mode. Backend modules are
imported here, lazily, so a step that needs no CRM never pays for httpx, boto3 or anthropic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING

from handler_cli.config import ConfigError, Settings

if TYPE_CHECKING:
    from handler_cli.ledger import Ledger
    from handler_cli.mailing import Renderer
    from handler_cli.poll.journal import PollJournal
    from handler_cli.services import CRM, LLM, FileStore, Mailer, TaskBoard
    from handler_cli.storage import DocumentStore, Storage

log = logging.getLogger("handler_cli")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Context:
    """What a step may use. Services are created lazily and announced once on stderr."""

    def __init__(self, settings: Settings, now: Callable[[], datetime] = _utcnow) -> None:
        self.settings = settings
        self.now = now

    def _local(self, service: str, missing: list[str]) -> None:
        """Refuse the local fallback in strict mode, naming what is missing."""
        if self.settings.handler_strict:
            raise ConfigError(
                f"strict mode: {service} has no live backend configured "
                f"(missing {', '.join(missing)})"
            )

    def _announce(self, service: str, backend: object) -> None:
        log.info("%s: %s", service, backend.describe())  # type: ignore[attr-defined]

    @cached_property
    def crm(self) -> CRM:
        s = self.settings
        crm: CRM
        if s.hubspot_access_token:
            from handler_cli.services.crm.hubspot import HubSpotCRM

            crm = HubSpotCRM(s)
        else:
            self._local("CRM", ["HUBSPOT_ACCESS_TOKEN"])
            from handler_cli.services.crm.local import LocalCRM

            crm = LocalCRM(s.data_dir / "crm.sqlite3")
        self._announce("crm", crm)
        return crm

    @cached_property
    def files(self) -> FileStore:
        s = self.settings
        needed = {"R2_ACCESS_KEY_ID": s.r2_access_key_id, "R2_SECRET_ACCESS_KEY":
                  s.r2_secret_access_key, "R2_BUCKET": s.r2_bucket}
        store: FileStore
        if all(needed.values()) and (s.r2_account_id or s.r2_endpoint_url):
            from handler_cli.services.files.r2 import R2FileStore

            store = R2FileStore(s)
        else:
            missing = [k for k, v in needed.items() if not v]
            if not (s.r2_account_id or s.r2_endpoint_url):
                missing.append("R2_ACCOUNT_ID")
            self._local("file store", missing)
            from handler_cli.services.files.local import LocalFileStore

            store = LocalFileStore(s.data_dir / "files")
        self._announce("files", store)
        return store

    @cached_property
    def mailer(self) -> Mailer:
        s = self.settings
        mailer: Mailer
        if s.smtp_host:
            from handler_cli.services.mail.smtp import SMTPMailer

            mailer = SMTPMailer(s)
        else:
            self._local("mail", ["SMTP_HOST"])
            from handler_cli.services.mail.outbox import OutboxMailer

            mailer = OutboxMailer(s.data_dir / "outbox")
        self._announce("mail", mailer)
        return mailer

    @cached_property
    def tasks(self) -> TaskBoard:
        s = self.settings
        board: TaskBoard
        if s.clickup_api_token:
            from handler_cli.services.tasks.clickup import ClickUpBoard

            board = ClickUpBoard(s)
        else:
            self._local("task board", ["CLICKUP_API_TOKEN"])
            from handler_cli.services.tasks.local import LocalTaskBoard

            board = LocalTaskBoard(s.data_dir / "tasks.sqlite3")
        self._announce("tasks", board)
        return board

    @cached_property
    def llm(self) -> LLM | None:
        """Claude when a key is set; None otherwise (steps then fall back, never crash)."""
        s = self.settings
        if not s.anthropic_api_key:
            self._local("LLM", ["ANTHROPIC_API_KEY"])
            return None
        from handler_cli.services.llm.claude import ClaudeLLM

        llm = ClaudeLLM(s)
        self._announce("llm", llm)
        return llm

    @cached_property
    def storage(self) -> Storage:
        """Every durable state of the installation: SQLite in the data dir, or the shared
        PostgreSQL of `HANDLER_DATABASE_URL` (each store opened on first use)."""
        from handler_cli.storage import open_storage

        storage = open_storage(self.settings)
        if storage.shared:
            log.info("storage: %s", storage.describe())
        return storage

    @cached_property
    def ledger(self) -> Ledger:
        from handler_cli.ledger import Ledger

        return Ledger(self.storage.effects)

    @cached_property
    def documents(self) -> DocumentStore:
        return self.storage.documents

    @cached_property
    def journal(self) -> PollJournal:
        return self.storage.journal

    @cached_property
    def renderer(self) -> Renderer:
        from handler_cli.mailing import Renderer

        return Renderer(self.settings.handler_templates_dir)
