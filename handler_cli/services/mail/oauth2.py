"""OAuth2 access tokens for the mailbox: SASL XOAUTH2 over SMTP (sending) and IMAP (replies).

Microsoft 365 refuses password IMAP and turns password SMTP AUTH off by default at the end of
December 2026 (Exchange Team blog, "Exchange Online to retire Basic auth for Client
Submission (SMTP AUTH)", update of 27 January 2026); Google Workspace accounts that cannot use
an app password need OAuth2 too. Both accept the same SASL mechanism, XOAUTH2:

    base64("user=" + user + "\\x01auth=Bearer " + access_token + "\\x01\\x01")

(Google, "OAuth 2.0 Mechanism", developers.google.com/workspace/gmail/imap/xoauth2-protocol;
Microsoft Learn, "Authenticate an IMAP, POP or SMTP connection using OAuth", both read on
2026-11-29). The access token comes from the provider's token endpoint:

- a **refresh token** (Google; Microsoft delegated permissions), grant `refresh_token`;
- **client credentials** (Microsoft application permissions, the app's own identity, no
  user consent), grant `client_credentials`, scope `https://outlook.office365.com/.default`.

Tokens are kept per process and fetched again a few minutes before they expire, or at once
when the server refuses one (`invalidate`). Microsoft hands out a new refresh token with each
use and lets each one live 90 days (Microsoft Learn, "Refresh tokens in the Microsoft identity
platform", read 2026-11-29): the newest is kept in the data dir (mode 0600) so the one
configured once keeps working. Secrets (client secret, refresh and access tokens) never
appear in a log line, a description or an error message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from handler_cli.config import ConfigError
from handler_cli.services import ServiceError

if TYPE_CHECKING:
    from handler_cli.config import Settings

log = logging.getLogger("handler_cli")

Protocol = Literal["smtp", "imap"]

# Token endpoints (Google: "Using OAuth 2.0 for Web Server Applications", refresh section;
# Microsoft: "Microsoft identity platform and OAuth 2.0 ... client credentials flow"; both read
# 2026-11-29).
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
MICROSOFT_TOKEN_URL = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
# Scopes per provider, grant and protocol. Google: one scope for IMAP, POP and SMTP, and a
# refresh request takes no scope. Microsoft delegated: the Outlook resource URL in full, plus
# offline_access so a new refresh token comes back. Microsoft application permissions
# (IMAP.AccessAsApp, SMTP.SendAsApp): `.default` of the Exchange Online resource.
GOOGLE_SCOPE = "https://mail.google.com/"
MICROSOFT_SCOPES: dict[Protocol, str] = {
    "smtp": "https://outlook.office.com/SMTP.Send offline_access",
    "imap": "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
}
MICROSOFT_APP_SCOPE = "https://outlook.office365.com/.default"

REFRESH_MARGIN = 300.0  # seconds before expiry when a token is fetched again
DEFAULT_LIFETIME = 600.0  # when the endpoint does not say (expires_in is only RECOMMENDED)
HTTP_TIMEOUT = 20.0


def xoauth2(user: str, access_token: str) -> str:
    """The XOAUTH2 initial client response, before base64 (SMTP and IMAP encode it)."""
    return f"user={user}\x01auth=Bearer {access_token}\x01\x01"


class XOAuth2Answer:
    """The SASL callback smtplib's `auth()` and imaplib's `authenticate()` both take: the
    XOAUTH2 response first, then an empty one to the error challenge a server sends when it
    refuses the token (a JSON status, kept in `server_said` for the error message)."""

    def __init__(self, user: str, access_token: str) -> None:
        self._response = xoauth2(user, access_token)
        self._sent = False
        self.server_said = ""

    def __call__(self, challenge: bytes | None = None) -> str:
        if not self._sent:
            self._sent = True
            return self._response
        self.server_said = " ".join((challenge or b"").decode("utf-8", "replace").split())
        return ""

    def imap(self, challenge: bytes) -> bytes:
        """imaplib's form of the callback (bytes out)."""
        return self(challenge).encode()


@dataclass(frozen=True)
class OAuth2Client:
    """Everything needed to ask the token endpoint for an access token."""

    token_url: str
    client_id: str
    client_secret: str | None
    refresh_token: str | None  # None: client credentials grant
    scope: str | None

    @property
    def grant(self) -> str:
        return "refresh_token" if self.refresh_token else "client_credentials"

    @property
    def host(self) -> str:
        return urlsplit(self.token_url).netloc or self.token_url


def oauth2_client(settings: Settings, protocol: Protocol) -> OAuth2Client:
    """The MAIL_OAUTH2_* settings as a client for `protocol`; ConfigError names what lacks."""
    s = settings
    setting = f"{protocol.upper()}_AUTH=xoauth2"
    provider = s.mail_oauth2_provider
    token_url = s.mail_oauth2_token_url
    if not token_url:
        if provider == "google":
            token_url = GOOGLE_TOKEN_URL
        elif provider == "microsoft":
            if not s.mail_oauth2_tenant:
                raise ConfigError(f"{setting} with MAIL_OAUTH2_PROVIDER=microsoft needs "
                                  "MAIL_OAUTH2_TENANT (the directory (tenant) id or domain)")
            token_url = MICROSOFT_TOKEN_URL.format(tenant=s.mail_oauth2_tenant)
        else:
            raise ConfigError(f"{setting} needs MAIL_OAUTH2_PROVIDER (google or microsoft) "
                              "or MAIL_OAUTH2_TOKEN_URL")
    if not token_url.startswith(("https://", "http://127.0.0.1", "http://localhost",
                                 "http://[::1]")):
        raise ConfigError("MAIL_OAUTH2_TOKEN_URL: must be an https:// URL")
    if not s.mail_oauth2_client_id:
        raise ConfigError(f"{setting} needs MAIL_OAUTH2_CLIENT_ID")
    refresh = s.mail_oauth2_refresh_token or None
    if refresh is None:
        if provider == "google":
            raise ConfigError(f"{setting} with Google needs MAIL_OAUTH2_REFRESH_TOKEN "
                              "(Google has no client-credentials grant for mail)")
        if not s.mail_oauth2_client_secret:
            raise ConfigError(f"{setting} needs MAIL_OAUTH2_REFRESH_TOKEN, or "
                              "MAIL_OAUTH2_CLIENT_SECRET for the client-credentials grant")
    scope = s.mail_oauth2_scope or None
    if scope is None and provider == "microsoft":
        scope = MICROSOFT_SCOPES[protocol] if refresh else MICROSOFT_APP_SCOPE
    return OAuth2Client(token_url=token_url, client_id=s.mail_oauth2_client_id,
                        client_secret=s.mail_oauth2_client_secret or None,
                        refresh_token=refresh, scope=scope)


class TokenSource:
    """Access tokens for one client and scope, kept until shortly before they expire.

    Thread-safe: the webhook's workers share one per process. `clock` is monotonic seconds
    (tests move it forward instead of waiting).
    """

    def __init__(self, client: OAuth2Client, store: Path | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0

    def describe(self) -> str:
        how = "refresh token" if self.client.refresh_token else "client credentials"
        return f"OAuth2 {how} from {self.client.host}"

    def token(self) -> str:
        """A bearer token valid for a few more minutes at least."""
        with self._lock:
            if self._token is None or self._clock() >= self._expires:
                self._token, lifetime = self._fetch()
                margin = min(REFRESH_MARGIN, lifetime / 2)
                self._expires = self._clock() + lifetime - margin
            return self._token

    def invalidate(self, token: str) -> None:
        """The server refused `token` (revoked, expired early): the next `token()` fetches."""
        with self._lock:
            if self._token == token:
                self._token = None

    # -- the token endpoint ----------------------------------------------------------------

    def _fetch(self) -> tuple[str, float]:
        try:
            return self._fetch_or_refuse()
        except _Refused as exc:
            raise exc.error from None

    def _fetch_or_refuse(self) -> tuple[str, float]:
        """The newest refresh token kept first; if refused, the configured one."""
        c = self.client
        if c.refresh_token is None:
            return self._grant({"grant_type": "client_credentials"})
        saved = self._saved_refresh_token()
        if saved and saved != c.refresh_token:
            try:
                return self._grant({"grant_type": "refresh_token", "refresh_token": saved})
            except _Refused as exc:
                if exc.code != "invalid_grant":
                    raise
                log.warning("mail oauth2: the saved refresh token was refused (%s); "
                            "trying the configured one", exc.code)
                self._save_refresh_token(None)
        return self._grant({"grant_type": "refresh_token", "refresh_token": c.refresh_token})

    def _grant(self, form: dict[str, str]) -> tuple[str, float]:
        import httpx

        c = self.client
        form = {**form, "client_id": c.client_id}
        if c.client_secret:
            form["client_secret"] = c.client_secret
        if c.scope:
            form["scope"] = c.scope
        try:
            response = httpx.post(c.token_url, data=form, timeout=HTTP_TIMEOUT,
                                  headers={"Accept": "application/json"})
        except httpx.TimeoutException:
            raise self._error(f"token endpoint {c.host} did not answer within "
                              f"{HTTP_TIMEOUT:g} s", transient=True) from None
        except httpx.HTTPError as exc:
            raise self._error(f"cannot reach the token endpoint {c.host}: "
                              f"{type(exc).__name__}", transient=True) from None
        body = _json(response)
        if response.status_code == 200 and isinstance(body.get("access_token"), str):
            new_refresh = body.get("refresh_token")
            if (c.refresh_token and isinstance(new_refresh, str) and new_refresh
                    and new_refresh != form.get("refresh_token")):
                self._save_refresh_token(new_refresh)
            lifetime = _seconds(body.get("expires_in"))
            log.debug("mail oauth2: new access token from %s (%s, %.0f s)", c.host, c.grant,
                      lifetime)
            return body["access_token"], lifetime
        code = str(body.get("error") or f"HTTP {response.status_code}")
        detail = str(body.get("error_description") or "").split("\n")[0].strip()
        if response.status_code == 429 or response.status_code >= 500:
            raise self._error(f"token endpoint {c.host} answered {response.status_code}"
                              f"{': ' + detail if detail else ''}", transient=True)
        raise _Refused(code, self._error(
            f"token endpoint {c.host} refused the {c.grant} grant ({code}"
            f"{': ' + detail if detail else ''}){_HINTS.get(code, '')}", transient=False))

    def _error(self, message: str, *, transient: bool) -> ServiceError:
        for secret in (self.client.client_secret, self.client.refresh_token,
                       self._saved_refresh_token(), self._token):
            if secret:
                message = message.replace(secret, "***")
        return ServiceError("mail oauth2", message, transient=transient)

    # -- the rotated refresh token ---------------------------------------------------------

    def _saved_refresh_token(self) -> str | None:
        if self._store is None:
            return None
        try:
            data = json.loads(self._store.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        token = data.get("refresh_token") if isinstance(data, dict) else None
        return token if isinstance(token, str) and token else None

    def _save_refresh_token(self, token: str | None) -> None:
        """Keep the newest refresh token (0600), or forget it (`None`)."""
        if self._store is None:
            return
        try:
            if token is None:
                self._store.unlink(missing_ok=True)
                return
            self._store.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self._store.with_name(f"{self._store.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump({"refresh_token": token, "saved_at": int(time.time())}, out)
            os.replace(tmp, self._store)
        except OSError as exc:  # the configured token still works until it expires
            log.warning("mail oauth2: cannot keep the new refresh token in %s: %s",
                        self._store.parent, exc.strerror)


class _Refused(Exception):
    """The endpoint said no (4xx); `code` is OAuth2's error code, `error` what to raise."""

    def __init__(self, code: str, error: ServiceError) -> None:
        super().__init__(code)
        self.code = code
        self.error = error


_HINTS = {
    "invalid_grant": ": the refresh token is expired or revoked, or consent was withdrawn; "
                     "get a new one (docs/production.md, \"The mailbox\")",
    "invalid_client": ": check MAIL_OAUTH2_CLIENT_ID and MAIL_OAUTH2_CLIENT_SECRET "
                      "(an expired client secret gives this too)",
    "unauthorized_client": ": the app registration does not allow this grant",
    "invalid_scope": ": the app lacks the mail permission, or MAIL_OAUTH2_SCOPE is wrong",
}


def _json(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _seconds(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]  # Microsoft once sent it as a string
    except (TypeError, ValueError):
        return DEFAULT_LIFETIME
    return seconds if seconds > 0 else DEFAULT_LIFETIME


_SOURCES: dict[tuple[OAuth2Client, Path | None], TokenSource] = {}
_SOURCES_LOCK = threading.Lock()


def token_source(settings: Settings, protocol: Protocol) -> TokenSource:
    """The process's token source for `protocol`: SMTP and IMAP share one when their client
    and scope are the same (Google, Microsoft client credentials)."""
    client = oauth2_client(settings, protocol)
    store = None
    if client.refresh_token:
        key = hashlib.sha256("\n".join(
            (client.token_url, client.client_id, client.refresh_token)).encode()).hexdigest()
        store = settings.data_dir / "oauth2" / f"refresh-{key[:24]}.json"
    with _SOURCES_LOCK:
        source = _SOURCES.get((client, store))
        if source is None:
            source = _SOURCES[(client, store)] = TokenSource(client, store)
        return source
