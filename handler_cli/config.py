"""Settings, read from the environment and an optional `.env` file.

The variable names are the operators' contract (README, "Configuration"). We read them
ourselves rather than through pydantic-settings: it costs ~80 ms of start-up that every
step would pay, and we also want to know where each value came from (`handler-cli doctor`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_ADMIN_EMAIL = "yvanol.fotso@valione-services.com"
SENDER_NAME = "Valione Services"
FALLBACK_MAIL_FROM = f"{SENDER_NAME} <no-reply@valione-services.com>"  # nothing better known


class ConfigError(Exception):
    """A setting is missing or wrong; the message names the variable."""


class Settings(BaseModel):
    """Every knob of handler-cli; field names are the variable names, lower-cased."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    handler_data_dir: Path | None = None
    handler_templates_dir: Path | None = None
    handler_strict: bool = False
    handler_llm_model: str = "claude-haiku-4-5"
    handler_llm_timeout: float = 8.0
    handler_max_file_bytes: int = 25 * 1024 * 1024
    # Overall deadline of one attachment download: connection to last byte, redirects included.
    handler_download_timeout: float = 20.0
    # Client-given file URLs (issue 10, docs/production.md "Threat model"): besides the
    # per-file limits above, all the files of one request share a deadline and a byte budget,
    # and downloads reach public addresses only, plus the internal hosts listed here (names or
    # CIDR networks, space- or comma-separated) by an operator who really needs one.
    handler_request_download_timeout: float = 60.0
    handler_max_request_file_bytes: int = 100 * 1024 * 1024
    handler_download_allow: str | None = None
    # Keys the unguessable part of stored files' keys (128 bits, stable per request); without
    # it, a secret generated once in the data dir. Set the same one on every node when scaled out.
    handler_file_key_secret: str | None = None
    # Attachments given as local paths are read only where an operator runs the CLI;
    # the webhook server turns this off so a form cannot make it read the server's files.
    handler_allow_local_files: bool = True
    handler_log_level: str = "INFO"
    # Base of the exponential backoff of HTTP backends (HubSpot, ClickUp); tests shorten it.
    handler_retry_base_seconds: float = 1.0

    # The webhook (`handler-cli serve`): credentials, limits, and the shared queue.
    webhook_secret: str | None = None  # Standard Webhooks key(s), "whsec_..." (space-separated)
    webhook_token: str | None = None  # accepted as "Authorization: Bearer ..." (space-separated)
    handler_max_body_bytes: int = 1024 * 1024
    # The webhook's public base URL (https://intake.example.com): what links we hand out
    # (status URLs, file links) are built on it, never on a request's Host header.
    handler_public_url: str | None = None
    handler_queue_url: str | None = None  # no longer used (Redis): refused, see storage
    handler_workers: int = 2  # worker threads run by `serve`; 0 = intake only
    # "process": one low-priority child process runs them (the webhook keeps its CPU and GIL);
    # "thread": inside the webhook's own process.
    handler_worker_mode: Literal["process", "thread"] = "process"
    handler_insecure: bool = False  # accept unauthenticated requests from non-loopback clients
    handler_queue_retry_seconds: float = 60.0  # first delay after a transient failure, doubling
    handler_queue_retry_max_seconds: float = 3600.0
    handler_queue_max_attempts: int = 12  # then the request is marked failed (~6 h)
    handler_queue_poll_seconds: float = 1.0  # longest idle wait of a worker polling the queue

    # Storage (handler_cli.storage): SQLite in the data dir, or one PostgreSQL shared by the
    # machines of a scaled-out installation (state and queue).
    handler_database_url: str | None = None  # postgresql://user:pass@host:5432/db
    # Personal data (handler_cli.retention): finished requests untouched this many days are
    # erased from every local store by `poll` and `requests prune`; 0 keeps them forever.
    handler_retention_days: float = Field(default=365.0, ge=0)

    hubspot_access_token: str | None = None
    hubspot_base_url: str = "https://api.hubapi.com"
    hubspot_portal_id: str | None = None
    # With HUBSPOT_PORTAL_ID (no account-info call), where ticket links open: EU portals are
    # app-eu1.hubspot.com; `doctor --check` compares it with the portal's own uiDomain.
    hubspot_ui_domain: str | None = None
    hubspot_pipeline: str = "0"
    hubspot_pipeline_stage: str = "1"

    r2_account_id: str | None = None
    r2_access_key_id: str | None = None
    r2_secret_access_key: str | None = None
    r2_bucket: str | None = None
    r2_public_url: str | None = None
    r2_endpoint_url: str | None = None
    r2_presign_seconds: int = 3600  # life of the presigned URL a click on a file link gets
    # Signs the lasting links to files served through HANDLER_PUBLIC_URL/files/ when there is
    # no R2_PUBLIC_URL (space-separated: the first signs, any verifies); else generated once
    # in the data dir (file-link.secret).
    handler_file_link_secret: str | None = None

    clickup_api_token: str | None = None
    clickup_base_url: str = "https://api.clickup.com/api/v2"
    clickup_parent_task_id: str = "86c7r48ha"
    # The Workspace id: needed (custom_task_ids=true&team_id=...) when CLICKUP_PARENT_TASK_ID
    # is a custom task id such as DEV-123.
    clickup_team_id: str | None = None

    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_timeout: float = 20.0
    mail_from: str = FALLBACK_MAIL_FROM  # else derived: see mail_defaults()
    mail_reply_to: str | None = None
    admin_email: str = DEFAULT_ADMIN_EMAIL

    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None

    # The poll (`handler-cli poll`): where replies are read, when to remind, when to give up.
    handler_reply_sources: str | None = None  # comma list of hubspot, imap, local
    handler_remind_days: float = 3.0
    handler_stale_days: float = 14.0
    imap_host: str | None = None
    imap_port: int | None = None
    imap_user: str | None = None
    imap_password: str | None = None
    imap_folder: str = "INBOX"
    imap_security: Literal["ssl", "starttls", "none"] = "ssl"
    imap_timeout: float = 20.0

    # Mail authentication and the reply address (services/mail/, replies/imap.py). "password"
    # logs in with SMTP_PASSWORD / IMAP_PASSWORD; "xoauth2" uses an OAuth2 access token from
    # the MAIL_OAUTH2_* client (Google, Microsoft 365). IMAP_ADDRESSES: the addresses whose
    # mail lands in the IMAP mailbox (default IMAP_USER when it is an address); MAIL_REPLY_TO
    # defaults to the first of them, so clients reply where the imap source reads.
    smtp_auth: Literal["password", "xoauth2"] = "password"
    imap_auth: Literal["password", "xoauth2"] = "password"
    imap_addresses: str | None = None
    mail_oauth2_provider: Literal["google", "microsoft"] | None = None
    mail_oauth2_tenant: str | None = None  # Microsoft: directory (tenant) id or domain
    mail_oauth2_token_url: str | None = None  # else the provider's
    mail_oauth2_client_id: str | None = None
    mail_oauth2_client_secret: str | None = None
    mail_oauth2_refresh_token: str | None = None  # unset: client-credentials grant (Microsoft)
    mail_oauth2_scope: str | None = None  # else the provider's for the grant and protocol

    # The client loop (issue 11): how long a ticket the client is not asked about (a support
    # request, decided by the poll or by hand) is still read, so a later message from the
    # client reaches the admin; counted from the ticket's last activity here, 0 reads none.
    # The name, from when only decided tickets were watched, is kept for compatibility.
    # Bounded so a quiet poll's CRM calls do not grow with the years.
    handler_watch_decided_days: float = Field(default=30.0, ge=0)

    # Where each set value came from: "env", ".env (path)" or absent (default). A plain `{}`
    # default (pydantic copies it) rather than a factory: see document.empty_list.
    sources: dict[str, str] = Field(default={}, exclude=True)

    @field_validator("handler_download_allow")
    @classmethod
    def _allow_list(cls, value: str | None) -> str | None:
        """A typo here must stop `serve` at start, not fail every request with files."""
        if value:
            from handler_cli.netguard import Allowance

            try:
                Allowance.parse(value)
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix("HANDLER_DOWNLOAD_ALLOW: ")) from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _mail_defaults(cls, data: Any) -> Any:
        return mail_defaults(data) if isinstance(data, dict) else data

    @property
    def imap_mailbox(self) -> list[str]:
        """The addresses delivered to the IMAP mailbox, lower-cased (none without IMAP_HOST)."""
        return _imap_mailbox(self.imap_host, self.imap_addresses, self.imap_user)

    @property
    def data_dir(self) -> Path:
        if self.handler_data_dir is not None:
            return self.handler_data_dir
        from platformdirs import user_data_dir

        return Path(user_data_dir("handler-cli", appauthor=False))


# -- mail defaults: the reply address follows the mailbox a reply source reads ---------------

_ADDRESS = re.compile(r"^[^<>\s@]+@[^<>\s@]+\.[^<>\s@]+$")
_ANGLE = re.compile(r"<([^<>]*)>\s*$")
_NO_REPLY = re.compile(r"^(no|do[-_.]?not|ne[-_.]?pas)[-_.]?(reply|repondre|répondre)\b",
                       re.IGNORECASE)


def is_no_reply(address: str | None) -> bool:
    """`no-reply@`, `noreply@`, `donotreply@`, `ne-pas-repondre@`: an address nobody reads."""
    return bool(address and _NO_REPLY.match(address))


def mail_address(value: str | None) -> str | None:
    """The bare address of `Name <addr>` or `addr`, lower-cased; None when there is none."""
    if not value:
        return None
    found = _ANGLE.search(value)
    address = (found.group(1) if found else value).strip()
    return address.lower() if _ADDRESS.match(address) else None


def _imap_mailbox(host: object, addresses: object, user: object) -> list[str]:
    if not host:
        return []
    listed = [mail_address(a) for a in str(addresses or "").split(",")]
    found = [a for a in listed if a] or [a for a in [mail_address(str(user or ""))] if a]
    return list(dict.fromkeys(found))


def mail_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Fill MAIL_FROM and MAIL_REPLY_TO left unset so that no default asks clients to reply
    to an address nobody reads.

    MAIL_FROM: SMTP_USER when it is an address (a relay lets us send as the mailbox we log in
    to), else the IMAP mailbox when the imap source is on, else the no-reply fallback.
    MAIL_REPLY_TO: the IMAP mailbox when the imap source is on and the sender is not it; else
    ADMIN_EMAIL when the sender is a no-reply address (a person reads it). Where a derived
    value came from is recorded in `sources`, for `doctor`.
    """
    def given(name: str) -> str | None:
        value = data.get(name)
        return str(value) if value not in (None, "") else None

    raw_sources = given("handler_reply_sources")
    imap_on = raw_sources is None or "imap" in [n.strip().lower() for n in raw_sources.split(",")]
    mailbox = _imap_mailbox(given("imap_host"), given("imap_addresses"), given("imap_user"))
    mailbox = mailbox if imap_on else []
    sources = dict(data.get("sources") or {})
    data = dict(data)
    if not given("mail_from"):
        login = mail_address(given("smtp_user")) if given("smtp_host") else None
        if login:  # the relay lets us send as the mailbox we log in to
            data["mail_from"] = f"{SENDER_NAME} <{login}>"
            sources["mail_from"] = "default: SMTP_USER"
        elif mailbox:
            data["mail_from"] = f"{SENDER_NAME} <{mailbox[0]}>"
            sources["mail_from"] = "default: the IMAP mailbox"
    sender = mail_address(given("mail_from") or FALLBACK_MAIL_FROM)
    if not given("mail_reply_to"):
        if mailbox and sender not in mailbox:
            data["mail_reply_to"] = mailbox[0]
            sources["mail_reply_to"] = "default: the IMAP mailbox"
        elif not mailbox and is_no_reply(sender):
            data["mail_reply_to"] = given("admin_email") or DEFAULT_ADMIN_EMAIL
            sources["mail_reply_to"] = "default: ADMIN_EMAIL, the sender is a no-reply address"
    if sources:
        data["sources"] = sources
    return data


SECRET_FIELDS = frozenset(
    {"hubspot_access_token", "r2_secret_access_key", "clickup_api_token", "smtp_password",
     "anthropic_api_key", "r2_access_key_id", "webhook_secret", "webhook_token",
     "imap_password", "handler_file_key_secret", "handler_file_link_secret", "handler_database_url",
     # mail OAuth2 (services/mail/oauth2.py)
     "mail_oauth2_client_secret", "mail_oauth2_refresh_token"}
)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a `.env` file: KEY=value lines, `#` comments, optional quotes and `export`."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_settings(
    environ: dict[str, str] | None = None, env_file: Path | None = None, **overrides: object
) -> Settings:
    """Build the settings: explicit overrides, then the environment, then `.env`."""
    environ = dict(os.environ if environ is None else environ)
    if env_file is None:
        env_file = Path(environ.get("HANDLER_ENV_FILE", ".env"))
    file_values = read_env_file(env_file) if env_file.is_file() else {}

    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for name in Settings.model_fields:
        if name == "sources":
            continue
        key = name.upper()
        if name in overrides and overrides[name] is not None:
            values[name], sources[name] = overrides[name], "command line"
        elif environ.get(key, "") != "":
            values[name], sources[name] = environ[key], "environment"
        elif file_values.get(key, "") != "":
            values[name], sources[name] = file_values[key], f".env ({env_file})"
    try:
        return Settings(**values, sources=sources)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{str(err['loc'][0]).upper()}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid setting: {problems}") from None
