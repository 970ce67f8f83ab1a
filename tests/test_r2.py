"""The R2 file store against moto's S3 server on loopback, and the lasting links to its files."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from handler_cli.checks import proved
from handler_cli.config import ConfigError, Settings
from handler_cli.services import ServiceError
from handler_cli.services.files.r2 import R2FileStore
from tests.peers import (
    LOOPBACK,
    S3Peer,
    closed_port,
    http_server,
    s3_peer,
    s3_server_session,
)

__all__ = ["s3_peer", "s3_server_session"]  # fixtures, used by name below

BUCKET = "valione-attachments"
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


PUBLIC = "https://intake.valione-services.com"


def make_store(tmp_path: Path, **values: Any) -> R2FileStore:
    # One attempt and short timeouts: a dead endpoint must fail in well under a second.
    if "r2_public_url" not in values:
        values.setdefault("handler_public_url", PUBLIC)
    return R2FileStore(
        Settings(handler_data_dir=tmp_path, **values),
        connect_timeout=1.0, read_timeout=5.0, max_attempts=1,
    )


def test_a_presigned_link_serves_the_file_with_its_type_and_name(
    tmp_path: Path, s3_peer: S3Peer
) -> None:
    s3_peer.create_bucket(BUCKET)
    store = make_store(tmp_path, **s3_peer.settings(BUCKET))
    key = "requests/REQ-42/plan façade été.pdf"
    store.put(key, PDF, "application/pdf")

    link = store.presigned(key, 600)

    assert link.startswith(s3_peer.endpoint_url + "/")
    assert "X-Amz-Signature=" in link and "X-Amz-Expires=600" in link
    response = httpx.get(link, timeout=5.0)
    assert response.status_code == 200
    assert response.content == PDF
    assert response.headers["content-type"] == "application/pdf"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('inline; filename="plan facade ete.pdf"')
    assert "filename*=UTF-8''plan%20fa%C3%A7ade%20%C3%A9t%C3%A9.pdf" in disposition


def test_object_is_stored_under_its_key_with_its_content_type(
    tmp_path: Path, s3_peer: S3Peer
) -> None:
    s3_peer.create_bucket(BUCKET)
    store = make_store(tmp_path, **s3_peer.settings(BUCKET))

    store.put("requests/REQ-7/photo.jpg", b"\xff\xd8\xff\xe0jpeg", "image/jpeg")

    stored = s3_peer.client().get_object(Bucket=BUCKET, Key="requests/REQ-7/photo.jpg")
    assert stored["Body"].read() == b"\xff\xd8\xff\xe0jpeg"
    assert stored["ContentType"] == "image/jpeg"


def test_public_url_link_quotes_the_key(tmp_path: Path, s3_peer: S3Peer) -> None:
    s3_peer.create_bucket(BUCKET)
    store = make_store(tmp_path, **s3_peer.settings(
        BUCKET, r2_public_url="https://files.valione-services.com/"))
    key = "requests/REQ-42/devis n°1 (v2).pdf"

    link = store.put(key, PDF, "application/pdf")

    assert link == (
        "https://files.valione-services.com/requests/REQ-42/devis%20n%C2%B01%20%28v2%29.pdf"
    )
    assert unquote(urlsplit(link).path) == "/" + key
    # The public form is a link only: the object itself really was uploaded.
    assert s3_peer.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == PDF


def test_missing_bucket_is_a_permanent_error(tmp_path: Path, s3_peer: S3Peer) -> None:
    store = make_store(tmp_path, **s3_peer.settings("no-such-bucket"))

    with pytest.raises(ServiceError) as caught:
        store.put("requests/REQ-1/a.txt", b"hello", "text/plain")

    assert caught.value.service == "r2"
    assert caught.value.transient is False
    assert "no-such-bucket" in str(caught.value) and "not found" in str(caught.value)


def test_check_reports_a_missing_bucket(tmp_path: Path, s3_peer: S3Peer) -> None:
    store = make_store(tmp_path, **s3_peer.settings("absent-bucket"))

    with pytest.raises(ServiceError) as caught:
        store.check()

    assert caught.value.transient is False
    assert "absent-bucket" in str(caught.value) and "not found" in str(caught.value)


def test_server_down_fails_fast_and_transient(tmp_path: Path) -> None:
    store = make_store(
        tmp_path,
        r2_endpoint_url=f"http://{LOOPBACK}:{closed_port()}",
        r2_bucket=BUCKET,
        r2_access_key_id="key-id",
        r2_secret_access_key="very-secret-key",
    )

    started = time.monotonic()
    with pytest.raises(ServiceError) as caught:
        store.put("requests/REQ-1/a.txt", b"hello", "text/plain")

    assert time.monotonic() - started < 3.0
    assert caught.value.service == "r2"
    assert caught.value.transient is True
    assert "very-secret-key" not in str(caught.value)


def test_endpoint_defaults_to_the_account_and_describe_hides_keys(tmp_path: Path) -> None:
    store = make_store(
        tmp_path, r2_account_id="abc123", r2_bucket=BUCKET,
        r2_access_key_id="key-id", r2_secret_access_key="very-secret-key",
    )

    assert store.endpoint_url == "https://abc123.r2.cloudflarestorage.com"
    description = store.describe()
    assert BUCKET in description and "abc123.r2.cloudflarestorage.com" in description
    assert "very-secret-key" not in description and "key-id" not in description


def test_presigned_urls_never_outlive_seven_days(tmp_path: Path, s3_peer: S3Peer) -> None:
    store = make_store(tmp_path, **s3_peer.settings(BUCKET, r2_presign_seconds=30 * 24 * 3600))

    assert "X-Amz-Expires=604800" in store.presigned("requests/REQ-1/a.txt")


def test_importing_the_module_does_not_import_boto3() -> None:
    code = (
        "import sys, handler_cli.services.files.r2\n"
        "print(sorted(m for m in ('boto3', 'botocore') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


class _RecordingS3(BaseHTTPRequestHandler):
    """Answers PUT like S3 and keeps the request, to see exactly what goes on the wire."""

    seen: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_PUT(self) -> None:  # noqa: N802 - http.server's hook name
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("ETag", '"0123456789abcdef"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_upload_sends_no_default_checksums_that_r2_rejects(tmp_path: Path) -> None:
    _RecordingS3.seen.clear()
    with http_server(_RecordingS3) as url:
        store = make_store(
            tmp_path, r2_endpoint_url=url,
            r2_bucket=BUCKET, r2_access_key_id="key-id", r2_secret_access_key="secret",
            r2_public_url="https://files.example.com",
        )

        store.put("requests/REQ-9/a.bin", PDF, "application/octet-stream")

    [(headers, body)] = _RecordingS3.seen
    assert body == PDF  # plain body, not aws-chunked with a trailing checksum
    assert not [h for h in headers if h.startswith("x-amz-checksum-")]
    assert "x-amz-sdk-checksum-algorithm" not in headers
    assert "aws-chunked" not in headers.get("content-encoding", "")
    assert "/us-east-1/" not in headers["authorization"]
    assert "/auto/s3/aws4_request" in headers["authorization"]


# -- links that last as long as the file -------------------------------------------------------


def test_without_a_public_bucket_or_a_public_server_the_store_refuses_to_start(
    tmp_path: Path, s3_peer: S3Peer
) -> None:
    with pytest.raises(ConfigError) as caught:
        R2FileStore(Settings(handler_data_dir=tmp_path, **s3_peer.settings(BUCKET)))

    assert "presigned URLs die within 7 days: set R2_PUBLIC_URL" in str(caught.value)
    assert "or HANDLER_PUBLIC_URL" in str(caught.value)


def test_a_link_through_the_server_carries_no_expiry_and_a_signature(
    tmp_path: Path, s3_peer: S3Peer
) -> None:
    s3_peer.create_bucket(BUCKET)
    store = make_store(tmp_path, **s3_peer.settings(BUCKET))

    link = store.put("requests/REQ-42/devis n°1.pdf", PDF, "application/pdf")

    assert link.startswith(f"{PUBLIC}/files/requests/REQ-42/devis%20n%C2%B01.pdf?sig=")
    assert "X-Amz" not in link and s3_peer.endpoint_url not in link
    assert store.link("requests/REQ-42/devis n°1.pdf") == link  # stable: the same every time


@pytest.fixture
def served(tmp_path: Path, s3_peer: S3Peer) -> Iterator[tuple[str, R2FileStore, S3Peer]]:
    """The real webhook app (uvicorn on loopback) with R2 on moto, links through it."""
    from tests.test_server import running, webhook_settings

    s3_peer.create_bucket(BUCKET)
    env = {"R2_ENDPOINT_URL": s3_peer.endpoint_url, "R2_BUCKET": BUCKET,
           "R2_ACCESS_KEY_ID": s3_peer.access_key_id,
           "R2_SECRET_ACCESS_KEY": s3_peer.secret_access_key, "HANDLER_PUBLIC_URL": PUBLIC,
           "HANDLER_WORKERS": "0"}
    settings = webhook_settings(tmp_path / "data", **env)
    with running(settings) as base_url:
        yield base_url, R2FileStore(settings), s3_peer


def on(base_url: str, link: str) -> str:
    """The link as the server behind HANDLER_PUBLIC_URL receives it."""
    assert link.startswith(PUBLIC)
    return base_url + link.removeprefix(PUBLIC)


def test_a_click_days_later_is_sent_to_a_fresh_presigned_url(
    served: tuple[str, R2FileStore, S3Peer]
) -> None:
    base_url, store, s3 = served
    link = store.put("requests/REQ-1/tok/plan.pdf", PDF, "application/pdf")

    answer = httpx.get(on(base_url, link), timeout=10.0)

    assert answer.status_code == 302
    location = answer.headers["location"]
    assert location.startswith(s3.endpoint_url + f"/{BUCKET}/requests/REQ-1/tok/plan.pdf?")
    assert "X-Amz-Expires=3600" in location  # made now, for this click
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert httpx.get(location, timeout=10.0).content == PDF


def test_a_link_whose_signature_or_key_was_changed_is_not_found(
    served: tuple[str, R2FileStore, S3Peer]
) -> None:
    base_url, store, _ = served
    link = store.put("requests/REQ-1/tok/plan.pdf", PDF, "application/pdf")
    store.put("requests/REQ-2/tok/other.pdf", PDF, "application/pdf")
    path, _, sig = link.partition("?sig=")

    forged = [f"{path}?sig={sig[:-2]}xx", f"{path}?sig=", path,
              link.replace("REQ-1/tok/plan.pdf", "REQ-2/tok/other.pdf")]
    answers = [httpx.get(on(base_url, u), timeout=10.0) for u in forged]

    assert [a.status_code for a in answers] == [404, 404, 404, 404]
    assert all("location" not in a.headers for a in answers)


def test_a_link_to_a_file_deleted_since_is_not_found(
    served: tuple[str, R2FileStore, S3Peer]
) -> None:
    base_url, store, s3 = served
    link = store.put("requests/REQ-3/tok/gone.pdf", PDF, "application/pdf")
    s3.client().delete_object(Bucket=BUCKET, Key="requests/REQ-3/tok/gone.pdf")

    assert httpx.get(on(base_url, link), timeout=10.0).status_code == 404


def test_links_survive_setting_and_rotating_the_link_secret(
    tmp_path: Path, s3_peer: S3Peer
) -> None:
    s3_peer.create_bucket(BUCKET)
    generated = make_store(tmp_path, **s3_peer.settings(BUCKET)).link("requests/a.pdf")
    first = make_store(tmp_path, **s3_peer.settings(BUCKET, handler_file_link_secret="s1" * 20))
    rotated = make_store(tmp_path, **s3_peer.settings(
        BUCKET, handler_file_link_secret=f"{'s2' * 20} {'s1' * 20}"))
    old_link = first.link("requests/a.pdf")

    assert rotated.link("requests/a.pdf") != old_link  # the first value signs
    for link in (generated, old_link, rotated.link("requests/a.pdf")):
        key = "requests/a.pdf"
        assert rotated.links is not None
        assert rotated.links.verify(key, link.partition("?sig=")[2])
    assert not rotated.links.verify("requests/b.pdf", old_link.partition("?sig=")[2])


# -- doctor --check: what a bucket-scoped token may do ------------------------------------------


class _ScopedToken(BaseHTTPRequestHandler):
    """R2 in front of moto, answering as a bucket-scoped token is answered: objects may be
    listed, read (and, with Object Read & Write, written and deleted); bucket-level calls
    (HeadBucket, ListBuckets, CreateBucket) are AccessDenied."""

    upstream: ClassVar[str] = ""
    writes: ClassVar[bool] = True
    seen: ClassVar[list[str]] = []

    def _serve(self) -> None:
        split = urlsplit(self.path)
        parts = [p for p in split.path.split("/") if p]
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append(f"{self.command} {split.path}?{split.query}")
        bucket_level = len(parts) < 2 and not (self.command == "GET" and "list-type=2" in
                                              split.query)
        if bucket_level or (self.command in ("PUT", "DELETE", "POST") and not self.writes):
            denied = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied'
                      b"</Code><Message>Access Denied</Message></Error>")
            self._answer(403, {"Content-Type": "application/xml"}, denied)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        resp = httpx.request(self.command, self.upstream + self.path, headers=headers,
                             content=body, timeout=10.0)
        keep = {k: v for k, v in resp.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                     "content-encoding")}
        self._answer(resp.status_code, keep, resp.content)

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_DELETE = do_HEAD = do_POST = _serve  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def scoped(s3_peer: S3Peer) -> Iterator[str]:
    """The endpoint of a bucket-scoped token on BUCKET (Object Read & Write by default)."""
    s3_peer.create_bucket(BUCKET)
    _ScopedToken.upstream, _ScopedToken.writes = s3_peer.endpoint_url, True
    _ScopedToken.seen = []
    with http_server(_ScopedToken) as url:
        yield url


def test_check_proves_a_bucket_scoped_token_without_heading_the_bucket(
    tmp_path: Path, s3_peer: S3Peer, scoped: str
) -> None:
    store = make_store(tmp_path, **{**s3_peer.settings(BUCKET), "r2_endpoint_url": scoped,
                                    "handler_file_link_secret": "x" * 40})

    findings = store.check()

    assert all(f.ok for f in findings), findings
    listed, written, links = (f.text for f in findings)
    assert listed == f"bucket {BUCKET} at {scoped}: objects can be listed"
    assert written.startswith(f"bucket {BUCKET}: objects can be written and deleted (probe ")
    assert links == (f"links to files go through {PUBLIC}/files/ (signed with "
                     "HANDLER_FILE_LINK_SECRET; each click gets a fresh presigned URL)")
    assert not any(line.startswith("HEAD") for line in _ScopedToken.seen)
    assert s3_peer.client().list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0  # probe gone


def test_check_catches_a_read_only_token_in_one_line(
    tmp_path: Path, s3_peer: S3Peer, scoped: str
) -> None:
    _ScopedToken.writes = False
    store = make_store(tmp_path, **{**s3_peer.settings(BUCKET), "r2_endpoint_url": scoped,
                                    "handler_file_link_secret": "x" * 40})

    (failed,) = [f.text for f in store.check() if not f.ok]

    assert "writing a probe object: access to bucket" in failed and "AccessDenied" in failed
    assert failed.endswith("the token needs Object Read & Write on this bucket")


def test_check_says_to_set_the_link_secret_when_links_rely_on_a_generated_one(
    tmp_path: Path, s3_peer: S3Peer
) -> None:
    s3_peer.create_bucket(BUCKET)
    store = make_store(tmp_path, **s3_peer.settings(BUCKET))

    (failed,) = [f.text for f in store.check() if not f.ok]

    assert failed.startswith(f"links to files go through {PUBLIC}/files/, signed with a "
                             "secret generated in")
    assert "set HANDLER_FILE_LINK_SECRET to its value (the same on every node)" in failed


def test_check_with_a_public_bucket_says_so(tmp_path: Path, s3_peer: S3Peer) -> None:
    s3_peer.create_bucket(BUCKET)
    store = make_store(tmp_path, **s3_peer.settings(BUCKET, r2_public_url="https://f.example"))

    assert store.check()[-1] == proved("links to files are public: https://f.example/<key>")


def test_a_boto3_too_old_for_r2_is_a_clear_permanent_error(
    tmp_path: Path, s3_peer: S3Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import botocore.config

    class OldConfig:  # botocore < 1.36 had no checksum settings
        def __init__(self, **options: Any) -> None:
            if "request_checksum_calculation" in options:
                raise TypeError("Got unexpected keyword argument 'request_checksum_calculation'")

    monkeypatch.setattr(botocore.config, "Config", OldConfig)
    store = make_store(tmp_path, **s3_peer.settings(BUCKET))

    with pytest.raises(ServiceError) as caught:
        store.put("requests/REQ-1/a.txt", b"x", "text/plain")

    assert caught.value.transient is False
    assert "install boto3>=1.36" in str(caught.value)
