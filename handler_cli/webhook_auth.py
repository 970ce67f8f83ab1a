"""Who may post to the webhook: Standard Webhooks signatures, or a bearer token.

Form builders that can sign send `webhook-id`, `webhook-timestamp` and `webhook-signature`
(HMAC-SHA256 over `id.timestamp.body`, https://www.standardwebhooks.com); those that cannot
send `Authorization: Bearer <token>`. Every comparison is constant-time, and several secrets
or tokens may be configured at once (space-separated) so a key can be rotated without a gap.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from handler_cli.config import Settings

SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 5 * 60
MAX_SIGNATURES = 16  # a header with more entries than this is not a key rotation


class AuthError(Exception):
    """The request is not authenticated; the message says why (logged, never sent back)."""


def parse_secret(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (the prefix is optional)."""
    raw = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("WEBHOOK_SECRET: expected 'whsec_' followed by base64") from None
    if len(key) < 16:
        raise ValueError("WEBHOOK_SECRET: the key must be at least 16 bytes")
    return key


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value a sender computes (`v1,<base64>`); tests and docs use it."""
    digest = _digest(parse_secret(secret), webhook_id, str(timestamp), body)
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    secret: str, webhook_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three headers of a signed request, for senders written in Python."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, webhook_id, ts, body),
    }


def _digest(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> bytes:
    signed = webhook_id.encode() + b"." + timestamp.encode() + b"." + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def verify_signature(
    keys: Sequence[bytes],
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
    tolerance: int = TOLERANCE_SECONDS,
) -> str:
    """Check a Standard Webhooks signature; return the `webhook-id` or raise AuthError."""
    webhook_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (webhook_id and timestamp and signatures):
        raise AuthError("missing webhook-id, webhook-timestamp or webhook-signature")
    if len(webhook_id) > 256:
        raise AuthError("webhook-id too long")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise AuthError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance:
        raise AuthError("webhook-timestamp outside the tolerance (stale or in the future)")
    candidates = []
    for entry in signatures.split()[:MAX_SIGNATURES]:
        version, _, value = entry.partition(",")
        if version != "v1":
            continue  # v1a (asymmetric) and future versions are not ours to check
        try:
            candidates.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    matched = False
    for key in keys:
        expected = _digest(key, webhook_id, timestamp, body)
        for candidate in candidates:
            # No early exit: the time taken does not tell which key or entry matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise AuthError("no valid signature")
    return webhook_id


def verify_bearer(tokens: Sequence[str], authorization: str | None) -> bool:
    """True when `Authorization: Bearer <token>` carries one of `tokens`."""
    if not authorization or not tokens:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return False
    given = value.strip().encode()
    ok = False
    for token in tokens:
        ok |= hmac.compare_digest(given, token.encode())
    return ok


@dataclass(frozen=True)
class Verdict:
    """How a request was let in; `webhook_id` is set when it was signed."""

    method: Literal["signature", "token", "none"]
    webhook_id: str | None = None


@dataclass(frozen=True)
class WebhookAuth:
    """The configured credentials and the one check the server runs."""

    keys: tuple[bytes, ...] = ()
    tokens: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookAuth:
        keys = tuple(parse_secret(s) for s in (settings.webhook_secret or "").split())
        tokens = tuple((settings.webhook_token or "").split())
        return cls(keys=keys, tokens=tokens)

    @property
    def configured(self) -> bool:
        return bool(self.keys or self.tokens)

    def token_ok(self, headers: Mapping[str, str]) -> bool:
        """The cheap check, done before the body is read."""
        return verify_bearer(self.tokens, headers.get("authorization"))

    def may_be_signed(self, headers: Mapping[str, str]) -> bool:
        """Worth reading the body to check a signature (a secret is set and headers present)."""
        return bool(self.keys) and "webhook-signature" in headers

    def check(
        self, headers: Mapping[str, str], body: bytes, now: float | None = None
    ) -> Verdict:
        """Let the request in with either credential, or raise AuthError."""
        if not self.configured:
            return Verdict("none", headers.get("webhook-id") or None)
        if self.token_ok(headers):
            return Verdict("token", headers.get("webhook-id") or None)
        if self.keys:
            return Verdict("signature", verify_signature(self.keys, headers, body, now))
        raise AuthError("missing or wrong bearer token")
