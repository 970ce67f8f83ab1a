"""Standard Webhooks signatures and bearer tokens, checked on their own."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from handler_cli.config import load_settings
from handler_cli.webhook_auth import (
    AuthError,
    WebhookAuth,
    parse_secret,
    sign,
    signed_headers,
    verify_bearer,
    verify_signature,
)

# The specification's published test vector (also used by the Svix libraries).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
KEY = parse_secret(VECTOR_SECRET)
NO_ENV_FILE = Path("/nonexistent/.env")


def headers(signature: str = VECTOR_SIGNATURE, ts: int = VECTOR_TS,
            webhook_id: str = VECTOR_ID) -> dict[str, str]:
    return {"webhook-id": webhook_id, "webhook-timestamp": str(ts),
            "webhook-signature": signature}


def test_signature_matches_the_specification_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE
    # The prefix is optional when pasting a secret.
    assert sign(VECTOR_SECRET.removeprefix("whsec_"), VECTOR_ID, VECTOR_TS, VECTOR_BODY) == (
        VECTOR_SIGNATURE)


def test_valid_signature_returns_the_webhook_id() -> None:
    assert verify_signature([KEY], headers(), VECTOR_BODY, now=VECTOR_TS + 10) == VECTOR_ID


@pytest.mark.parametrize(("change", "why"), [
    ({"body": VECTOR_BODY + b" "}, "body"),
    ({"webhook_id": "msg_other"}, "id"),
    ({"ts": VECTOR_TS + 1}, "timestamp"),
    ({"signature": "v1,AAAA" + VECTOR_SIGNATURE[7:]}, "signature"),
    ({"signature": "v1a," + VECTOR_SIGNATURE[3:]}, "other scheme"),
    ({"signature": "v1,not-base64!"}, "garbage"),
])
def test_any_change_breaks_the_signature(change: dict[str, object], why: str) -> None:
    body = change.pop("body", VECTOR_BODY)
    with pytest.raises(AuthError):
        verify_signature([KEY], headers(**change), body, now=VECTOR_TS)  # type: ignore[arg-type]


def test_timestamp_tolerance_is_five_minutes_both_ways() -> None:
    assert verify_signature([KEY], headers(), VECTOR_BODY, now=VECTOR_TS + 300)
    assert verify_signature([KEY], headers(), VECTOR_BODY, now=VECTOR_TS - 300)
    for now in (VECTOR_TS + 301, VECTOR_TS - 301):
        with pytest.raises(AuthError, match="tolerance"):
            verify_signature([KEY], headers(), VECTOR_BODY, now=now)


def test_missing_headers_or_bad_timestamp_are_refused() -> None:
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        partial = headers()
        del partial[name]
        with pytest.raises(AuthError, match="missing"):
            verify_signature([KEY], partial, VECTOR_BODY, now=VECTOR_TS)
    with pytest.raises(AuthError, match="integer"):
        verify_signature([KEY], {**headers(), "webhook-timestamp": "1.5e9"}, VECTOR_BODY)


def test_several_signatures_and_several_keys_allow_rotation() -> None:
    old_key = b"k" * 32
    old_secret = "whsec_" + base64.b64encode(old_key).decode()
    old_signature = sign(old_secret, VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    # The sender signs with the old and the new key while the receiver still has the old one.
    both = headers(f"{old_signature} {VECTOR_SIGNATURE}")
    assert verify_signature([old_key], both, VECTOR_BODY, now=VECTOR_TS)
    assert verify_signature([KEY], both, VECTOR_BODY, now=VECTOR_TS)
    # The receiver holds both keys while the sender still uses the old one.
    assert verify_signature([KEY, old_key], headers(old_signature), VECTOR_BODY, now=VECTOR_TS)
    with pytest.raises(AuthError):
        verify_signature([b"z" * 32], both, VECTOR_BODY, now=VECTOR_TS)


def test_signed_headers_round_trip() -> None:
    produced = signed_headers(VECTOR_SECRET, "msg_1", b"{}")
    assert verify_signature([KEY], produced, b"{}") == "msg_1"


@pytest.mark.parametrize("bad", ["whsec_not base64!", "whsec_c2hvcnQ=", ""])
def test_unusable_secrets_are_refused_with_the_variable_name(bad: str) -> None:
    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        parse_secret(bad)


def test_bearer_token() -> None:
    assert verify_bearer(["s3cret"], "Bearer s3cret")
    assert verify_bearer(["s3cret"], "bearer  s3cret ")
    assert verify_bearer(["old", "new"], "Bearer new")
    for header in (None, "", "Bearer", "Bearer wrong", "Basic s3cret", "s3cret",
                   "Bearer s3cret2", "Bearer s3cre"):
        assert not verify_bearer(["s3cret"], header), header
    assert not verify_bearer([], "Bearer anything")


def test_auth_from_settings_accepts_either_credential() -> None:
    settings = load_settings(environ={"WEBHOOK_SECRET": f"{VECTOR_SECRET} whsec_"
                                      + base64.b64encode(b"x" * 32).decode(),
                                      "WEBHOOK_TOKEN": "t1 t2"}, env_file=NO_ENV_FILE)
    auth = WebhookAuth.from_settings(settings)
    assert auth.configured and len(auth.keys) == 2 and auth.tokens == ("t1", "t2")
    assert auth.check({"authorization": "Bearer t2"}, b"").method == "token"
    verdict = auth.check(headers(), VECTOR_BODY, now=VECTOR_TS)
    assert (verdict.method, verdict.webhook_id) == ("signature", VECTOR_ID)
    with pytest.raises(AuthError):
        auth.check({"authorization": "Bearer t3"}, b"")


def test_no_credentials_means_not_configured() -> None:
    auth = WebhookAuth.from_settings(load_settings(environ={}, env_file=NO_ENV_FILE))
    assert not auth.configured
    assert auth.check({}, b"").method == "none"
