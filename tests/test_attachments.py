from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from handler_cli.attachments import FileRejected, fetch, safe_name
from handler_cli.config import Settings, load_settings
from handler_cli.document import FileObject


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd.png", "passwd.png"),
        ("/abs/path/photo.JPG", "photo.JPG"),
        ("C:\\Users\\me\\plan.pdf", "plan.pdf"),
        ("mon fichier (1).png", "mon_fichier_1_.png"),
        ("..%2F..%2Fsecret.png", "secret.png"),
        ("chaise\nbois.jpg", "chaise_bois.jpg"),
    ],
)
def test_names_lose_their_directories_and_odd_characters(raw: str, expected: str) -> None:
    assert safe_name(raw) == expected


def test_a_name_that_is_only_dots_is_rejected() -> None:
    with pytest.raises(FileRejected):
        safe_name("../..")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_base64_is_decoded_and_typed(settings: Settings) -> None:
    got = fetch(FileObject(name="vase.png", content_base64=b64(b"\x89PNG")), settings)
    assert (got.name, got.data, got.content_type) == ("vase.png", b"\x89PNG", "image/png")
    glb = fetch(FileObject(name="shoe.glb", content_base64=b64(b"glTF")), settings)
    assert glb.content_type == "model/gltf-binary"


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (FileObject(name="virus.exe", content_base64=b64(b"MZ")), "type de fichier non accepté"),
        (FileObject(name="a.png", content_base64="%%%"), "base64 invalide"),
        (FileObject(name="a.png", content_base64=""), "fichier vide"),
        (FileObject(name="a.png", url="ftp://example.com/a.png"), "non prise en charge"),
        ("/nonexistent/dir/a.png", "introuvable"),
    ],
)
def test_bad_files_are_rejected_with_a_french_reason(
    settings: Settings, item: object, reason: str
) -> None:
    with pytest.raises(FileRejected, match=reason):
        fetch(item, settings)  # type: ignore[arg-type]


def test_size_is_capped(environ: dict[str, str]) -> None:
    small = load_settings(environ={**environ, "HANDLER_MAX_FILE_BYTES": "10"})
    with pytest.raises(FileRejected, match="trop volumineux"):
        fetch(FileObject(name="a.png", content_base64=b64(b"x" * 11)), small)


def test_local_paths_are_read_only_when_allowed(environ: dict[str, str], tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"jpeg")
    assert fetch(str(photo), load_settings(environ=environ)).data == b"jpeg"
    server = load_settings(environ={**environ, "HANDLER_ALLOW_LOCAL_FILES": "0"})
    with pytest.raises(FileRejected, match="chemins locaux"):
        fetch(str(photo), server)


class _Files(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/photo.png":
            body = b"png-bytes"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/big.png":
            self.send_response(200)
            self.send_header("Content-Length", "999999999")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def file_server() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_urls_are_downloaded_over_http(settings: Settings, file_server: str) -> None:
    got = fetch(f"{file_server}/photo.png", settings)
    assert (got.name, got.data) == ("photo.png", b"png-bytes")
    with pytest.raises(FileRejected, match="HTTP 404"):
        fetch(f"{file_server}/missing.png", settings)
    with pytest.raises(FileRejected, match="trop volumineux"):
        fetch(FileObject(name="big.png", url=f"{file_server}/big.png"), settings)
