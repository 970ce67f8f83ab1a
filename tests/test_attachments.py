from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from handler_cli.attachments import (
    MAX_REDIRECTS,
    Budget,
    FileRejected,
    fetch,
    safe_name,
    unique_names,
)
from handler_cli.config import Settings, load_settings
from handler_cli.document import FileObject
from handler_cli.netguard import Allowance, NetGuard
from tests.file_peer import PHOTO, FilePeer, file_peer
from tests.peers import peer_cert
from tests.test_netguard import Resolver


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


# --- downloads: loopback servers of our own, reached only through the allow setting ----------


ALLOW_LOOPBACK = {"HANDLER_DOWNLOAD_ALLOW": "127.0.0.1"}


@pytest.fixture
def peer() -> Iterator[FilePeer]:
    with file_peer() as server:
        yield server


def allowing(environ: dict[str, str], **extra: str) -> Settings:
    return load_settings(environ={**environ, **ALLOW_LOOPBACK, **extra})


def test_urls_are_downloaded_over_http(environ: dict[str, str], peer: FilePeer) -> None:
    settings = allowing(environ)
    got = fetch(peer.url("/photo.png"), settings)
    assert (got.name, got.data) == ("photo.png", PHOTO)
    with pytest.raises(FileRejected, match="HTTP 404"):
        fetch(peer.url("/missing.png"), settings)
    with pytest.raises(FileRejected, match="trop volumineux"):
        fetch(FileObject(name="big.png", url=peer.url("/big.png")), settings)


@pytest.mark.parametrize("host", [
    "127.0.0.1", "localhost", "[::1]", "2130706433", "0x7f000001", "127.1", "0177.0.0.1",
    "0.0.0.0", "[::ffff:127.0.0.1]", "[::]", "user@127.0.0.1", "user:pw@localhost",
])
def test_loopback_in_every_spelling_is_refused_and_never_contacted(
    settings: Settings, peer: FilePeer, host: str
) -> None:
    with pytest.raises(FileRejected):
        fetch(peer.url("/photo.png", host), settings)
    assert peer.seen == []


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1", "0177.0.0.1",
                                  "user@127.0.0.1"])
def test_allowing_loopback_does_not_allow_odd_spellings_of_it(
    environ: dict[str, str], peer: FilePeer, host: str
) -> None:
    with pytest.raises(FileRejected, match="forme non standard|identifiants"):
        fetch(peer.url("/photo.png", host), allowing(environ))
    assert peer.seen == []


def test_the_connection_goes_to_the_checked_address_under_the_name(
    settings: Settings, peer: FilePeer
) -> None:
    # "files.example.test" exists only in the stand-in: had anything looked it up again
    # (a second lookup), the download would fail.
    resolver = Resolver({"files.example.test": ["127.0.0.1"]})
    guard = NetGuard(allowance=Allowance.parse("127.0.0.1"), resolver=resolver)
    got = fetch(peer.url("/photo.png", "files.example.test"), settings, guard=guard)
    assert got.data == PHOTO
    assert resolver.asked == ["files.example.test"]
    assert [seen.host for seen in peer.seen] == [f"files.example.test:{peer.port}"]


def test_one_internal_answer_among_several_refuses_the_name(
    settings: Settings, peer: FilePeer
) -> None:
    resolver = Resolver({"files.example.test": ["127.0.0.1", "10.0.0.1"]})
    guard = NetGuard(allowance=Allowance.parse("127.0.0.1"), resolver=resolver)
    with pytest.raises(FileRejected, match="10.0.0.1 : réseau privé"):
        fetch(peer.url("/photo.png", "files.example.test"), settings, guard=guard)
    assert peer.seen == []


def test_tls_keeps_the_name_for_sni_and_the_certificate(settings: Settings) -> None:
    cert = peer_cert()
    with file_peer(tls=cert.server_context()) as server:
        resolver = Resolver({"localhost": ["127.0.0.1"], "files.example.test": ["127.0.0.1"]})
        guard = NetGuard(allowance=Allowance.parse("127.0.0.1"), resolver=resolver,
                         ssl_context=cert.client_context())
        got = fetch(server.url("/photo.png", "localhost"), settings, guard=guard)
        assert got.data == PHOTO
        assert server.server_names == ["localhost"]
        assert server.seen[0].host == f"localhost:{server.port}"
        # The certificate is checked against the name, not the address connected to.
        with pytest.raises(FileRejected, match="téléchargement impossible"):
            fetch(server.url("/photo.png", "files.example.test"), settings, guard=guard)
        assert len(server.seen) == 1


@pytest.mark.parametrize("to", [
    "http://127.0.0.1:{port}/photo.png", "http://localhost:{port}/photo.png",
    "http://2130706433:{port}/photo.png", "http://[::ffff:127.0.0.1]:{port}/photo.png",
    "file:///etc/passwd", "http://[::1/photo.png",
])
def test_a_redirect_is_checked_like_the_first_url(
    settings: Settings, peer: FilePeer, to: str
) -> None:
    # The first host is allowed by name (an operator's internal file server); where it
    # redirects to is checked again, and loopback is not allowed.
    resolver = Resolver({"files.example.test": ["127.0.0.1"], "localhost": ["127.0.0.1"]})
    guard = NetGuard(allowance=Allowance.parse("files.example.test"), resolver=resolver)
    first = peer.url("/redirect?to=" + to.format(port=peer.port), "files.example.test")
    with pytest.raises(FileRejected):
        fetch(FileObject(name="photo.png", url=first), settings, guard=guard)
    assert [seen.path.split("?")[0] for seen in peer.seen] == ["/redirect"]


def test_redirects_are_followed_then_capped(environ: dict[str, str], peer: FilePeer) -> None:
    settings = allowing(environ)
    to = peer.url("/photo.png")
    assert fetch(FileObject(name="p.png", url=peer.url(f"/redirect?to={to}")),
                 settings).data == PHOTO
    peer.seen.clear()
    with pytest.raises(FileRejected, match="trop de redirections"):
        fetch(peer.url("/loop.png"), settings)
    assert len(peer.seen) == 1 + MAX_REDIRECTS


def test_a_url_httpx_would_refuse_is_a_rejected_file(settings: Settings) -> None:
    with pytest.raises(FileRejected, match="forme non standard"):
        fetch("http://0177.0.0.1/x.png", settings)


# --- budgets: each file and each request, in time and in bytes ------------------------------------


@pytest.mark.parametrize("path", ["/trickle.png", "/stall.png", "/silent.png"])
def test_a_slow_server_costs_at_most_the_file_deadline(
    environ: dict[str, str], peer: FilePeer, path: str
) -> None:
    settings = allowing(environ, HANDLER_DOWNLOAD_TIMEOUT="0.3")
    with pytest.raises(FileRejected, match=r"délai de téléchargement dépassé \(0.3 s\)"):
        fetch(peer.url(path), settings)
    assert peer.seen[0].sent < 100_000  # given up long before the end


def test_an_endless_body_stops_at_the_size_cap(environ: dict[str, str], peer: FilePeer) -> None:
    settings = allowing(environ, HANDLER_MAX_FILE_BYTES="50000")
    with pytest.raises(FileRejected, match=r"trop volumineux \(plus de 48.8281 Ko\)"):
        fetch(peer.url("/endless.png"), settings)


def test_a_request_shares_one_byte_budget(environ: dict[str, str]) -> None:
    settings = load_settings(environ={**environ, "HANDLER_MAX_REQUEST_FILE_BYTES": "25"})
    budget = Budget.for_request(settings)
    item = FileObject(name="a.png", content_base64=b64(b"x" * 10))
    assert fetch(item, settings, budget).data == b"x" * 10
    assert fetch(item, settings, budget).data == b"x" * 10
    with pytest.raises(FileRejected, match="volume total des fichiers de la demande"):
        fetch(item, settings, budget)
    assert budget.bytes_left == 5


def test_a_request_shares_one_deadline(environ: dict[str, str], peer: FilePeer) -> None:
    settings = allowing(environ, HANDLER_DOWNLOAD_TIMEOUT="0.3",
                        HANDLER_REQUEST_DOWNLOAD_TIMEOUT="0.4")
    budget = Budget.for_request(settings)
    reasons = []
    for _ in range(4):
        with pytest.raises(FileRejected) as caught:
            fetch(peer.url("/trickle.png"), settings, budget)
        reasons.append(str(caught.value))
    assert reasons[0] == "délai de téléchargement dépassé (0.3 s)"
    assert set(reasons[1:]) == {
        "délai de téléchargement des fichiers de la demande dépassé (0.4 s)"}
    assert len(peer.seen) <= 2  # once the request's time is spent, nothing more is asked


def test_same_names_are_made_distinct_by_position() -> None:
    assert unique_names(["image.jpg", "image.jpg", "photo_1.jpg", "photo_1.jpg", "IMAGE.jpg",
                         "image-2.jpg", "plan"]) == [
        "image.jpg", "image-3.jpg", "photo_1.jpg", "photo_1-2.jpg", "IMAGE-4.jpg",
        "image-2.jpg", "plan"]
