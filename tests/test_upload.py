"""The upload step against issue 10: unguessable keys, nothing doubled, every same-name file
kept, refused and over-budget files as French notes (never a failure, never a retry)."""

from __future__ import annotations

import base64
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from handler_cli.config import load_settings
from handler_cli.context import Context
from handler_cli.document import Document
from handler_cli.steps import STEPS, apply, upload
from tests.conftest import classified
from tests.file_peer import PHOTO, FilePeer, file_peer

KEY = re.compile(r"/requests/(?P<request>[^/]+)/(?P<token>[0-9a-f]{32})/(?P<name>[^/]+)$")


@pytest.fixture
def peer() -> Iterator[FilePeer]:
    with file_peer() as server:
        yield server


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def stored(ctx: Context) -> list[Path]:
    return sorted(p for p in (ctx.settings.data_dir / "files").rglob("*") if p.is_file())


def with_files(*files: object, **fields: object) -> Document:
    return classified("modelisation_simple", fichiers=list(files), **fields)


def test_keys_carry_128_unguessable_bits_besides_the_public_request_id(ctx: Context,
                                                                       tmp_path: Path) -> None:
    doc = upload.run(classified("modelisation_simple"), ctx)
    (url,) = doc.fichiers_urls or []
    match = KEY.search(url)
    assert match and match["request"] == doc.request_id and match["name"] == "vase.png"
    # The token comes from this installation's secret: another installation, or another
    # request, gets another one; nothing in the request id or the payload predicts it.
    other = Context(load_settings(environ={"HANDLER_DATA_DIR": str(tmp_path / "elsewhere"),
                                           "HANDLER_ENV_FILE": str(tmp_path / "no.env")}))
    assert upload.file_token(other.settings, doc.request_id) != match["token"]
    assert upload.file_token(ctx.settings, doc.request_id + "x") != match["token"]
    secret = ctx.settings.data_dir / upload.SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_bytes().strip()) == 64  # 256 bits


def test_the_configured_secret_gives_every_node_the_same_keys(tmp_path: Path) -> None:
    nodes = [load_settings(environ={"HANDLER_DATA_DIR": str(tmp_path / name),
                                    "HANDLER_FILE_KEY_SECRET": "s3cr3t-shared-by-the-nodes",
                                    "HANDLER_ENV_FILE": str(tmp_path / "no.env")})
             for name in ("a", "b")]
    assert upload.file_token(nodes[0], "req_1") == upload.file_token(nodes[1], "req_1")
    assert not (tmp_path / "a" / upload.SECRET_FILE).exists()


def test_running_the_upload_again_stores_no_second_copy(ctx: Context) -> None:
    files = [{"name": "vase.png", "content_base64": b64(PHOTO)},
             {"name": "plan.pdf", "content_base64": b64(b"%PDF-1.4")}]
    first = upload.run(with_files(*files), ctx)
    before = stored(ctx)
    # The same submission again, from the payload (no token on it), as a retry would.
    again = upload.run(with_files(*files), ctx)
    assert again.request_id == first.request_id
    assert again.fichiers_urls == first.fichiers_urls
    assert stored(ctx) == before and len(before) == 2


def test_same_name_attachments_are_all_kept_under_distinct_names(ctx: Context) -> None:
    files = [{"name": "image.jpg", "content_base64": b64(b"first")},
             {"name": "image.jpg", "content_base64": b64(b"second")},
             {"name": "photo 1.jpg", "content_base64": b64(b"third")},
             {"name": "photo_1.jpg", "content_base64": b64(b"fourth")},
             {"name": "dossier/IMAGE.JPG", "content_base64": b64(b"fifth")}]
    doc = upload.run(with_files(*files), ctx)
    urls = doc.fichiers_urls or []
    names = [KEY.search(u)["name"] for u in urls]  # type: ignore[index]
    assert names == ["image.jpg", "image-2.jpg", "photo_1.jpg", "photo_1-2.jpg", "IMAGE-3.JPG"]
    contents = [Path(u.removeprefix("file://")).read_bytes() for u in urls]
    assert contents == [b"first", b"second", b"third", b"fourth", b"fifth"]
    assert len(stored(ctx)) == 5


def test_an_internal_url_becomes_a_french_note_never_a_failure(
    ctx: Context, peer: FilePeer
) -> None:
    doc = with_files(peer.url("/photo.png"), f"http://0177.0.0.1:{peer.port}/photo.png",
                     {"name": "ok.png", "content_base64": b64(PHOTO)})
    assert apply(STEPS["upload"], doc, ctx) is True
    assert doc.errors == []
    assert [KEY.search(u)["name"] for u in doc.fichiers_urls or []] == ["ok.png"]  # type: ignore[index]
    assert doc.notes == [
        "Fichier « photo.png (n°1) » écarté : adresse interne refusée (127.0.0.1 : boucle "
        "locale (loopback)).",
        "Fichier « photo.png (n°2) » écarté : adresse IP écrite sous une forme non standard.",
    ]
    assert peer.seen == []


def test_a_request_over_its_byte_budget_keeps_what_fits(tmp_path: Path, peer: FilePeer) -> None:
    ctx = Context(load_settings(environ={
        "HANDLER_DATA_DIR": str(tmp_path / "data"), "HANDLER_ENV_FILE": str(tmp_path / "no"),
        "HANDLER_DOWNLOAD_ALLOW": "127.0.0.1",
        "HANDLER_MAX_REQUEST_FILE_BYTES": str(2 * len(PHOTO) + 10)}))
    doc = upload.run(with_files(*[peer.url("/photo.png")] * 3), ctx)
    assert [KEY.search(u)["name"] for u in doc.fichiers_urls or []] == [  # type: ignore[index]
        "photo.png", "photo-2.png"]
    assert doc.notes == ["Fichier « photo.png (n°3) » écarté : volume total des fichiers de la "
                         f"demande dépassé (plus de {2 * len(PHOTO) + 10} octets)."]
    assert doc.errors == []


def test_many_slow_urls_cost_one_request_deadline(tmp_path: Path, peer: FilePeer) -> None:
    ctx = Context(load_settings(environ={
        "HANDLER_DATA_DIR": str(tmp_path / "data"), "HANDLER_ENV_FILE": str(tmp_path / "no"),
        "HANDLER_DOWNLOAD_ALLOW": "127.0.0.1", "HANDLER_DOWNLOAD_TIMEOUT": "0.3",
        "HANDLER_REQUEST_DOWNLOAD_TIMEOUT": "0.4"}))
    doc = upload.run(with_files(*[peer.url(f"/trickle.png?{n}") for n in range(20)]), ctx)
    assert doc.fichiers_urls == [] and doc.errors == []
    assert len(doc.notes) == 20
    assert sum("de la demande dépassé" in note for note in doc.notes) >= 18
    assert len(peer.seen) <= 2
