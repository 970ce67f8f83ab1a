"""The R2 file store against moto's S3 server on loopback."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from handler_cli.checks import proved
from handler_cli.config import Settings
from handler_cli.services import ServiceError
from handler_cli.services.files.r2 import R2FileStore
from tests.peers import LOOPBACK, S3Peer, closed_port, s3_peer, s3_server_session

__all__ = ["s3_peer", "s3_server_session"]  # fixtures, used by name below

BUCKET = "valione-attachments"
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


def make_store(tmp_path: Path, **values: Any) -> R2FileStore:
    # One attempt and short timeouts: a dead endpoint must fail in well under a second.
    return R2FileStore(
        Settings(handler_data_dir=tmp_path, **values),
        connect_timeout=1.0, read_timeout=5.0, max_attempts=1,
    )


def test_upload_then_download_through_the_presigned_link(
    tmp_path: Path, s3_peer: S3Peer
) -> None:
    s3_peer.create_bucket(BUCKET)
    store = make_store(tmp_path, **s3_peer.settings(BUCKET, r2_presign_seconds=600))
    key = "requests/REQ-42/plan façade été.pdf"

    link = store.put(key, PDF, "application/pdf")

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


def test_check_heads_the_bucket(tmp_path: Path, s3_peer: S3Peer) -> None:
    s3_peer.create_bucket(BUCKET)
    store = make_store(tmp_path, **s3_peer.settings(BUCKET))

    assert store.check() == [proved(f"bucket {BUCKET} reachable at {s3_peer.endpoint_url}")]


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


def test_presigned_links_never_outlive_seven_days(tmp_path: Path, s3_peer: S3Peer) -> None:
    store = make_store(tmp_path, **s3_peer.settings(BUCKET, r2_presign_seconds=30 * 24 * 3600))

    assert "X-Amz-Expires=604800" in store.link("requests/REQ-1/a.txt")


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
    server = ThreadingHTTPServer((LOOPBACK, 0), _RecordingS3)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        _RecordingS3.seen.clear()
        store = make_store(
            tmp_path, r2_endpoint_url=f"http://{LOOPBACK}:{server.server_address[1]}",
            r2_bucket=BUCKET, r2_access_key_id="key-id", r2_secret_access_key="secret",
            r2_public_url="https://files.example.com",
        )

        store.put("requests/REQ-9/a.bin", PDF, "application/octet-stream")
    finally:
        server.shutdown()
        thread.join()
        server.server_close()

    [(headers, body)] = _RecordingS3.seen
    assert body == PDF  # plain body, not aws-chunked with a trailing checksum
    assert not [h for h in headers if h.startswith("x-amz-checksum-")]
    assert "x-amz-sdk-checksum-algorithm" not in headers
    assert "aws-chunked" not in headers.get("content-encoding", "")
    assert "/us-east-1/" not in headers["authorization"]
    assert "/auto/s3/aws4_request" in headers["authorization"]
