"""A loopback OAuth2 authorization server for the mail tests: token endpoint and introspection.

It speaks what Google's and Microsoft's token endpoints speak for the two grants we use
(RFC 6749 §6 refresh_token, §4.4 client_credentials; form-encoded POST, JSON answer with
`access_token`, `token_type`, `expires_in`, and a rotated `refresh_token` like Microsoft's),
and errors as RFC 6749 §5.2 (`invalid_grant`, `invalid_client`, ...). The SMTP test server
checks bearer tokens against it in process; dovecot's `oauth2` passdb asks its introspection
endpoint (RFC 7662 style, `introspection_mode = post`) over HTTP on loopback.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from tests.peers import LOOPBACK


@dataclass
class Issued:
    """An access token the server handed out."""

    client_id: str
    user: str | None  # None: an application token (client credentials)
    scope: str
    expires_at: float
    revoked: bool = False


@dataclass
class OAuth2Server:
    """State of the running server; tests add clients and refresh tokens, then read `grants`."""

    url: str
    lifetime: int = 3600
    rotate_refresh_tokens: bool = True  # Microsoft hands out a new one each time
    clients: dict[str, str | None] = field(default_factory=dict)  # id -> secret (None: public)
    refresh_tokens: dict[str, tuple[str, str]] = field(default_factory=dict)  # -> (client, user)
    app_mailboxes: dict[str, set[str]] = field(default_factory=dict)  # client -> mailboxes
    tokens: dict[str, Issued] = field(default_factory=dict)
    grants: list[dict[str, str]] = field(default_factory=list)  # every token request received
    introspections: list[str] = field(default_factory=list)  # tokens dovecot asked about
    down: bool = False  # answer 503, like an endpoint in trouble
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def introspection_url(self) -> str:
        return f"{self.url}/introspect"

    def add_client(self, client_id: str, secret: str | None = None) -> None:
        self.clients[client_id] = secret

    def issue_refresh_token(self, client_id: str, user: str) -> str:
        """What the operator gets once from the consent screen (authorization code flow)."""
        token = "rt-" + secrets.token_urlsafe(24)
        self.refresh_tokens[token] = (client_id, user)
        return token

    def grant_mailbox(self, client_id: str, mailbox: str) -> None:
        """Microsoft's Add-MailboxPermission for the app's service principal."""
        self.app_mailboxes.setdefault(client_id, set()).add(mailbox.lower())

    def expire_all(self) -> None:
        """Every access token handed out so far stops working (the clock moved on)."""
        with self._lock:
            for issued in self.tokens.values():
                issued.expires_at = 0.0

    def revoke(self, token: str) -> None:
        self.tokens[token].revoked = True

    def valid(self, token: str, user: str, scope: str | None = None) -> bool:
        """Whether `token` lets `user`'s mailbox in (with `scope` among its scopes, if given)."""
        with self._lock:
            issued = self.tokens.get(token)
            if issued is None or issued.revoked or issued.expires_at <= time.time():
                return False
            if scope is not None and scope not in issued.scope.split():
                return False
            if issued.user is not None:
                return issued.user.lower() == user.lower()
            return user.lower() in self.app_mailboxes.get(issued.client_id, set())

    def mailbox_of(self, token: str) -> str | None:
        """The user a valid token acts for (an app token: the mailbox it was granted)."""
        issued = self.tokens.get(token)
        if issued is None:
            return None
        if issued.user is not None:
            return issued.user
        granted = sorted(self.app_mailboxes.get(issued.client_id, set()))
        return granted[0] if granted else None

    # -- the endpoints ---------------------------------------------------------------------

    def token_request(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.grants.append(dict(form))
        if self.down:
            return 503, {"error": "temporarily_unavailable"}
        client_id = form.get("client_id", "")
        if client_id not in self.clients:
            return 401, {"error": "invalid_client", "error_description": "unknown client"}
        secret = self.clients[client_id]
        if secret is not None and form.get("client_secret") != secret:
            return 401, {"error": "invalid_client",
                         "error_description": "AADSTS7000215: Invalid client secret provided."}
        grant = form.get("grant_type")
        scope = form.get("scope", "")
        answer: dict[str, Any] = {"token_type": "Bearer", "expires_in": self.lifetime}
        if grant == "refresh_token":
            held = self.refresh_tokens.get(form.get("refresh_token", ""))
            if held is None or held[0] != client_id:
                return 400, {"error": "invalid_grant",
                             "error_description": "AADSTS70008: The refresh token has expired "
                                                  "or is invalid."}
            user = held[1]
            if self.rotate_refresh_tokens:
                answer["refresh_token"] = self.issue_refresh_token(client_id, user)
        elif grant == "client_credentials":
            if secret is None:
                return 400, {"error": "unauthorized_client"}
            user = None
        else:
            return 400, {"error": "unsupported_grant_type"}
        token = "at-" + secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[token] = Issued(client_id, user, scope, time.time() + self.lifetime)
        answer.update(access_token=token, scope=scope)
        return 200, answer

    def introspect(self, form: dict[str, str]) -> dict[str, Any]:
        token = form.get("token", "")
        self.introspections.append(token)
        user = self.mailbox_of(token)
        if user is None or not self.valid(token, user):
            return {"active": False}
        return {"active": True, "username": user}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's hook name
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        state = self.server.state  # type: ignore[attr-defined]
        if self.path == "/token":
            status, answer = state.token_request(form)
        elif self.path == "/introspect":
            status, answer = 200, state.introspect(form)
        else:
            status, answer = 404, {"error": "not_found"}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep stderr quiet
        pass


@contextmanager
def oauth2_server(lifetime: int = 3600) -> Iterator[OAuth2Server]:
    """The authorization server on 127.0.0.1, a port chosen by the OS."""
    httpd = ThreadingHTTPServer((LOOPBACK, 0), _Handler)
    httpd.daemon_threads = True
    state = OAuth2Server(url=f"http://{LOOPBACK}:{httpd.server_address[1]}", lifetime=lifetime)
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              name="oauth2-server", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
