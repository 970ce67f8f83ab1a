"""A client's files erased from the live file store (R2 on moto's S3 server, loopback) by
`forget` and `prune`, not only from the data dir (issue 14): the request's objects and only
them, every page of them, an id that could name another prefix refused, and R2 down leaving
the files owed to the next run instead of forgotten."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest

from handler_cli.config import Settings
from handler_cli.retention import prune, prune_after_poll
from handler_cli.services import ServiceError
from handler_cli.services.files.local import LocalFileStore
from handler_cli.services.files.r2 import R2FileStore
from tests.conftest import clean_environ
from tests.peers import (
    LOOPBACK,
    S3Peer,
    closed_port,
    http_server,
    s3_peer,
    s3_server_session,
)
from tests.postgres import pg_session, pg_url  # noqa: F401 - fixtures
from tests.test_retention import CLAIRE, LATER, PAUL, cli, context, present, run, validated

__all__ = ["s3_peer", "s3_server_session"]  # fixtures, used by name below

BUCKET = "valione-attachments"
PUBLIC = "https://intake.valione-services.com"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
UNSAFE = ("", ".", "..", "...", "a/b", "../x", "REQ-1/..", "*", "a b", "REQ\n", "x" * 65,
          "2026-11-25")  # the last: a day's folder of older versions


def photos(*names: str) -> list[dict[str, str]]:
    return [{"name": name, "content_base64": PNG} for name in names]


def store_on(tmp_path: Path, s3: S3Peer, endpoint: str | None = None) -> R2FileStore:
    values = {**s3.settings(BUCKET), **({"r2_endpoint_url": endpoint} if endpoint else {})}
    return R2FileStore(Settings(handler_data_dir=tmp_path, handler_public_url=PUBLIC, **values),
                       connect_timeout=1.0, read_timeout=5.0, max_attempts=1)


def keys(s3: S3Peer, prefix: str = "") -> list[str]:
    found = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(str(item["Key"]) for item in found)


# -- the stores ------------------------------------------------------------------------------


def test_r2_erases_every_page_of_the_request_and_nothing_beside_it(
        tmp_path: Path, s3_peer: S3Peer) -> None:
    s3_peer.create_bucket(BUCKET)
    store = store_on(tmp_path, s3_peer)
    mine = [f"requests/REQ-1/tok/photo-{n}.png" for n in range(5)]
    others = ["requests/REQ-10/tok/photo.png",  # a longer id beginning with the same letters
              "requests/REQ-2/tok/REQ-1/photo.png", "requests/REQ-1.png", "REQ-1/photo.png"]
    for key in [*mine, *others]:
        store.put(key, b"png", "image/png")
    store.page_size = 2  # five objects: three pages, three DeleteObjects calls

    assert store.erase_request("REQ-1", dry_run=True) == 5
    assert keys(s3_peer) == sorted([*mine, *others])  # a dry run counts, deletes nothing

    assert store.erase_request("REQ-1") == 5

    assert keys(s3_peer) == sorted(others)
    assert store.erase_request("REQ-1") == 0  # again: nothing left, nothing else touched
    assert keys(s3_peer) == sorted(others)


def test_an_unsafe_request_id_is_refused_before_anything_is_deleted(
        tmp_path: Path, s3_peer: S3Peer) -> None:
    s3_peer.create_bucket(BUCKET)
    r2 = store_on(tmp_path, s3_peer)
    local = LocalFileStore(tmp_path / "files")
    stored = ["requests/REQ-1/tok/a.png", "requests/./x.png", "requests/x.png"]
    for key in stored:
        r2.put(key, b"png", "image/png")
    local.put("requests/REQ-1/tok/a.png", b"png", "image/png")
    (tmp_path / "outside.txt").write_text("not ours")

    for wrong in UNSAFE:
        for store in (r2, local):
            with pytest.raises(ValueError, match="unsafe request id"):
                store.erase_request(wrong)

    assert keys(s3_peer) == sorted(stored)
    assert (tmp_path / "files" / "requests" / "REQ-1" / "tok" / "a.png").is_file()
    assert (tmp_path / "outside.txt").is_file()


def test_the_local_store_erases_the_request_folder_and_the_dated_one_of_older_versions(
        tmp_path: Path) -> None:
    local = LocalFileStore(tmp_path / "files")
    local.put("requests/REQ-1/tok/a.png", b"png", "image/png")
    local.put("requests/REQ-1/tok/b.pdf", b"pdf", "application/pdf")
    local.put("requests/2026-11-25/REQ-1/plan.pdf", b"pdf", "application/pdf")  # older layout
    local.put("requests/REQ-2/tok/a.png", b"png", "image/png")
    local.put("requests/REQ-2/REQ-1/a.png", b"png", "image/png")  # not a dated folder

    assert local.erase_request("REQ-1", dry_run=True) == 3
    assert local.erase_request("REQ-1") == 3

    left = sorted(str(p.relative_to(tmp_path / "files")) for p in
                  (tmp_path / "files").rglob("*") if p.is_file())
    assert left == ["requests/REQ-2/REQ-1/a.png", "requests/REQ-2/tok/a.png"]
    assert local.erase_request("REQ-1") == 0
    assert LocalFileStore(tmp_path / "nothing").erase_request("REQ-1") == 0


class _FakeS3(BaseHTTPRequestHandler):
    """Answers a listing with two keys and records each DeleteObjects request; `refuse`
    makes the bucket refuse to delete one of them."""

    protocol_version = "HTTP/1.1"
    deletes: ClassVar[list[dict[str, str]]] = []
    refuse: ClassVar[str | None] = None

    def do_GET(self) -> None:  # noqa: N802
        contents = "".join(f"<Contents><Key>requests/REQ-9/tok/{n}.png</Key><Size>3</Size>"
                           "</Contents>" for n in ("a", "b"))
        self._xml(f"<ListBucketResult><Name>{BUCKET}</Name><Prefix>requests/REQ-9/</Prefix>"
                  f"<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false"
                  f"</IsTruncated>{contents}</ListBucketResult>")

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _FakeS3.deletes.append({k.lower(): v for k, v in self.headers.items()})
        error = (f"<Error><Key>requests/REQ-9/tok/a.png</Key><Code>{self.refuse}</Code>"
                 "<Message>refused</Message></Error>") if self.refuse else ""
        self._xml(f"<DeleteResult>{error}</DeleteResult>")

    def _xml(self, body: str) -> None:
        data = ('<?xml version="1.0" encoding="UTF-8"?>' + body.replace(
            ">", ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/">', 1)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_s3(s3_peer: S3Peer) -> Iterator[str]:
    _FakeS3.deletes.clear()
    _FakeS3.refuse = None
    with http_server(_FakeS3) as url:
        yield url


def test_delete_objects_carries_exactly_one_integrity_header(
        tmp_path: Path, s3_peer: S3Peer, fake_s3: str) -> None:
    """S3 wants one on DeleteObjects; R2 refuses two at once (Content-MD5 and a CRC)."""
    assert store_on(tmp_path, s3_peer, fake_s3).erase_request("REQ-9") == 2

    [headers] = _FakeS3.deletes
    integrity = [h for h in headers if h == "content-md5" or h.startswith("x-amz-checksum-")]
    assert len(integrity) == 1, headers


@pytest.mark.parametrize(("code", "transient"), [("AccessDenied", False),
                                                 ("InternalError", True)])
def test_a_key_the_bucket_refuses_to_delete_fails_the_erasure(
        tmp_path: Path, s3_peer: S3Peer, fake_s3: str, code: str, transient: bool) -> None:
    _FakeS3.refuse = code

    with pytest.raises(ServiceError) as failed:
        store_on(tmp_path, s3_peer, fake_s3).erase_request("REQ-9")

    assert failed.value.transient is transient
    assert f"1 object(s) not deleted ({code} refused); 1 deleted" in str(failed.value)


def test_r2_down_is_a_transient_failure(tmp_path: Path, s3_peer: S3Peer) -> None:
    store = store_on(tmp_path, s3_peer, f"http://{LOOPBACK}:{closed_port()}")
    with pytest.raises(ServiceError) as failed:
        store.erase_request("REQ-1")
    assert failed.value.transient and "erasing requests/REQ-1/" in str(failed.value)


# -- forget and prune --------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def environ(request: pytest.FixtureRequest, tmp_path: Path, s3_peer: S3Peer
            ) -> dict[str, str]:
    """A data dir whose file store is R2 (moto), on the embedded or the shared storage."""
    s3_peer.create_bucket(BUCKET)
    extra = {"R2_ENDPOINT_URL": s3_peer.endpoint_url, "R2_BUCKET": BUCKET,
             "R2_ACCESS_KEY_ID": s3_peer.access_key_id,
             "R2_SECRET_ACCESS_KEY": s3_peer.secret_access_key, "HANDLER_PUBLIC_URL": PUBLIC}
    if request.param == "postgresql":
        extra["HANDLER_DATABASE_URL"] = request.getfixturevalue("pg_url")
    return clean_environ(tmp_path / "data", **extra)


def down(environ: dict[str, str]) -> dict[str, str]:
    return {**environ, "R2_ENDPOINT_URL": f"http://{LOOPBACK}:{closed_port()}"}


def test_forget_erases_the_clients_r2_objects_and_no_one_elses(
        environ: dict[str, str], s3_peer: S3Peer) -> None:
    claire = run(environ, "modelisation_simple", 1, user_email=CLAIRE, user_name="Claire Martin",
                 fichiers=photos("vase.png", "face.png", "dessous.png"))
    paul = run(environ, "modelisation_simple", 2, fichiers=photos("vase.png"))
    assert len(keys(s3_peer, f"requests/{claire.request_id}/")) == 3
    assert len(keys(s3_peer, f"requests/{paul.request_id}/")) == 1
    # Files kept in the data dir from before R2 was set up go too.
    old = Path(environ["HANDLER_DATA_DIR"]) / "files" / "requests" / claire.request_id
    old.mkdir(parents=True)
    (old / "ancien.png").write_bytes(b"png")

    dry = cli(environ, "forget", CLAIRE, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["would erase"] == {"stored attachments": 1,
                                                     "r2 attachments": 3}
    assert len(keys(s3_peer, f"requests/{claire.request_id}/")) == 3 and old.is_dir()

    done = cli(environ, "forget", CLAIRE)

    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["removed"]["r2 attachments"] == 3 and out["removed"]["stored attachments"] == 1
    assert out["left"] == [] and "failures" not in out
    assert "r2 attachments 3" in done.stderr
    assert keys(s3_peer, f"requests/{claire.request_id}/") == [] and not old.exists()
    assert len(keys(s3_peer, f"requests/{paul.request_id}/")) == 1  # the other client's stay
    assert present(environ, paul.request_id, None)["document"]


def test_prune_erases_the_r2_objects_of_a_finished_request_and_keeps_a_waiting_ones(
        environ: dict[str, str], s3_peer: S3Peer) -> None:
    finished = validated(environ, run(environ, "modelisation_simple", 3, user_email=PAUL,
                                      fichiers=photos("vase.png", "face.png")))
    waiting = run(environ, "modelisation_simple", 4, user_email="marc@example.fr",
                  fichiers=photos("vase.png"))

    dry = prune(context(environ), now=time.time() + LATER, dry_run=True)
    assert dry.request_ids == [finished.request_id] and dry.removed == {}
    assert dry.extra["would erase"] == {"stored attachments": 0, "r2 attachments": 2}

    erased = prune(context(environ), now=time.time() + LATER)

    assert erased.request_ids == [finished.request_id] and not erased.failures
    assert erased.removed["r2 attachments"] == 2 and erased.left == []
    assert keys(s3_peer, f"requests/{finished.request_id}/") == []
    assert len(keys(s3_peer, f"requests/{waiting.request_id}/")) == 1


def test_r2_down_during_forget_leaves_the_files_owed_and_the_next_forget_erases_them(
        environ: dict[str, str], s3_peer: S3Peer) -> None:
    claire = run(environ, "modelisation_simple", 5, user_email=CLAIRE,
                 fichiers=photos("vase.png", "face.png", "dessous.png"))

    failed = cli(down(environ), "forget", CLAIRE)

    assert failed.returncode == 1
    out = json.loads(failed.stdout)
    [failure] = out["failures"]
    assert failure.startswith("the r2 attachments of 1 request(s), owed to the next forget or"
                              f" prune (r2: erasing requests/{claire.request_id}/ failed: ")
    assert "run it again once the service answers" in failed.stderr
    # The local erasure is done; the objects are still in R2, owed.
    assert out["request_ids"] == [claire.request_id] and out["removed"]["documents"] == 1
    assert not any(present(environ, claire.request_id, None).values())
    assert len(keys(s3_peer, f"requests/{claire.request_id}/")) == 3
    # The poll's retention pass, with R2 still down, says so (the poll exits 1).
    poll_ctx = context(down(environ))
    assert (prune_after_poll(poll_ctx) or "").startswith(
        "retention: could not erase the r2 attachments of 1 request(s)")
    poll_ctx.storage.close()
    pruned = cli(down(environ), "requests", "prune")
    assert pruned.returncode == 1 and "prune: could not erase the r2 attachments" in pruned.stderr

    again = cli(environ, "forget", CLAIRE)  # R2 is back

    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout)
    assert out["request_ids"] == [] and out["removed"] == {"r2 attachments": 3}
    assert keys(s3_peer, f"requests/{claire.request_id}/") == []
    ctx = context(environ)
    assert ctx.storage.forgotten.files_owed() == []  # paid: nothing asked again
    ctx.storage.close()
    assert json.loads(cli(environ, "forget", CLAIRE).stdout)["removed"] == {}
