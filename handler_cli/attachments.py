"""Attachments: fetched from a URL, a local path or base64, then checked before storage.

Everything a client sends is untrusted: names are reduced to a safe base name, only known
file types are accepted, and what a request's files may cost is bounded: each file has a
size cap and a deadline, and all the files of one request share a byte budget and a deadline
(`Budget`), so one post can neither hold a worker nor fill the disk. URLs are fetched from
public addresses only (`handler_cli.netguard`). A rejected file raises FileRejected, which
the upload step turns into a note on the request rather than a failure (never a retry).
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING
from urllib.parse import unquote, urljoin, urlsplit

from handler_cli.config import Settings
from handler_cli.document import FileItem, FileObject

if TYPE_CHECKING:
    from handler_cli.netguard import NetGuard

PHOTO = {"jpg", "jpeg", "png", "webp", "heic", "heif", "gif", "tif", "tiff", "bmp"}
PLAN = {"pdf", "dwg", "dxf", "svg"}
MODEL_3D = {"glb", "gltf", "usdz", "obj", "mtl", "fbx", "stl", "step", "stp", "3ds", "blend",
            "3mf", "ply", "dae"}
OTHER = {"zip", "txt"}
ALLOWED_EXTENSIONS = PHOTO | PLAN | MODEL_3D | OTHER
EXTRA_TYPES = {"glb": "model/gltf-binary", "gltf": "model/gltf+json", "usdz": "model/vnd.usdz+zip",
               "obj": "model/obj", "stl": "model/stl", "fbx": "application/octet-stream",
               "3mf": "model/3mf", "heic": "image/heic"}


class FileRejected(Exception):
    """This attachment cannot be accepted; the message (French) goes into the request's notes."""


@dataclass(frozen=True)
class Attachment:
    name: str
    data: bytes
    content_type: str


def extension(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def safe_name(raw: str) -> str:
    """A base name without directories, control characters or leading dots."""
    base = PureWindowsPath(PurePosixPath(unquote(raw)).name).name
    base = unicodedata.normalize("NFKC", base)
    base = re.sub(r"[^\w.\-]+", "_", base).strip(" ._")
    if not base or base in {".", ".."}:
        raise FileRejected(f"nom de fichier invalide : {raw!r}")
    stem, dot, ext = base.rpartition(".")
    return (stem[:120] + dot + ext[:10]) if dot else base[:120]


def _size(count: int) -> str:
    if count >= 1_048_576:
        return f"{count / 1_048_576:g} Mo"
    return f"{count / 1024:g} Ko" if count >= 1024 else f"{count} octets"


@dataclass
class Budget:
    """What the files of one request may still cost: a deadline (monotonic clock) and bytes.

    Each file gets the smaller of its own limits (HANDLER_DOWNLOAD_TIMEOUT,
    HANDLER_MAX_FILE_BYTES) and what the request has left (HANDLER_REQUEST_DOWNLOAD_TIMEOUT,
    HANDLER_MAX_REQUEST_FILE_BYTES). Only kept files spend bytes."""

    deadline: float
    bytes_left: int

    @classmethod
    def for_request(cls, settings: Settings) -> Budget:
        return cls(time.monotonic() + settings.handler_request_download_timeout,
                   settings.handler_max_request_file_bytes)

    def file_deadline(self, settings: Settings) -> float:
        return min(time.monotonic() + settings.handler_download_timeout, self.deadline)

    def file_cap(self, settings: Settings) -> int:
        return min(settings.handler_max_file_bytes, self.bytes_left)

    def too_big(self, settings: Settings) -> FileRejected:
        if self.bytes_left < settings.handler_max_file_bytes:
            return FileRejected("volume total des fichiers de la demande dépassé (plus de "
                                f"{_size(settings.handler_max_request_file_bytes)})")
        return FileRejected(f"fichier trop volumineux (plus de "
                            f"{_size(settings.handler_max_file_bytes)})")

    def too_slow(self, settings: Settings, deadline: float) -> FileRejected:
        if deadline >= self.deadline:
            return FileRejected("délai de téléchargement des fichiers de la demande dépassé "
                                f"({settings.handler_request_download_timeout:g} s)")
        return FileRejected(f"délai de téléchargement dépassé "
                            f"({settings.handler_download_timeout:g} s)")


MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HEADERS = [(b"Accept", b"*/*"), (b"Accept-Encoding", b"identity"),
            (b"User-Agent", b"handler-cli (attachment download)")]


def _download(url: str, settings: Settings, budget: Budget, guard: NetGuard) -> bytes:
    """GET `url` through the guard: redirects followed here (each hop checked, at most
    MAX_REDIRECTS), the body read up to the byte cap, everything by the file's deadline."""
    import ssl

    import httpcore

    from handler_cli.netguard import Refused, check_url

    deadline = budget.file_deadline(settings)
    cap = budget.file_cap(settings)
    try:
        with guard.pool(deadline) as pool:
            for _hop in range(MAX_REDIRECTS + 1):
                target = check_url(url)
                left = max(deadline - time.monotonic(), 0.001)
                with pool.stream(
                    "GET",
                    httpcore.URL(scheme=target.scheme.encode(), host=target.host.encode(),
                                 port=target.port, target=target.target.encode()),
                    headers=[(b"Host", target.host_header.encode()), *_HEADERS],
                    extensions={"timeout": dict.fromkeys(("connect", "read", "write", "pool"),
                                                         left)},
                ) as response:
                    if response.status in _REDIRECTS:
                        location = _header(response.headers, b"location")
                        if not location:
                            raise FileRejected("redirection sans destination")
                        try:
                            url = urljoin(url, location)
                        except ValueError:
                            raise FileRejected("redirection vers une adresse mal formée") from None
                        continue
                    if response.status != 200:
                        raise FileRejected(f"téléchargement refusé (HTTP {response.status})")
                    declared = _header(response.headers, b"content-length")
                    if declared and declared.isdigit() and int(declared) > cap:
                        raise budget.too_big(settings)
                    chunks, size = [], 0
                    for chunk in response.iter_stream():
                        size += len(chunk)
                        if size > cap:
                            raise budget.too_big(settings)
                        chunks.append(chunk)
                    return b"".join(chunks)
            raise FileRejected(f"trop de redirections (plus de {MAX_REDIRECTS})")
    except Refused as exc:
        raise FileRejected(str(exc)) from None
    except httpcore.TimeoutException:
        raise budget.too_slow(settings, deadline) from None
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol,
            httpcore.ConnectionNotAvailable, ssl.SSLError, OSError) as exc:
        raise FileRejected(f"téléchargement impossible ({type(exc).__name__})") from None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    return next((v.decode("latin-1").strip() for k, v in headers if k.lower() == name), None)


def file_name(item: FileItem) -> str:
    """The safe base name an item will be stored under (before de-duplication)."""
    if isinstance(item, FileObject):
        return safe_name(item.name)
    return safe_name(urlsplit(item).path if "://" in item else item)


def fetch(item: FileItem, settings: Settings, budget: Budget | None = None,
          guard: NetGuard | None = None, name: str | None = None) -> Attachment:
    """Resolve one `fichiers` item into checked bytes, or raise FileRejected.

    `budget` is the request's (one is made for a lone file); `name` the name the item is
    stored under (`file_name` by default); `guard` decides where downloads may connect."""
    budget = budget if budget is not None else Budget.for_request(settings)
    name = name if name is not None else file_name(item)
    source = item.url if isinstance(item, FileObject) else item
    ext = extension(name)
    if ext not in ALLOWED_EXTENSIONS:
        raise FileRejected(f"type de fichier non accepté (.{ext or '?'})")
    cap = budget.file_cap(settings)
    if time.monotonic() >= budget.deadline:
        raise budget.too_slow(settings, budget.deadline)

    if isinstance(item, FileObject) and item.content_base64 is not None:
        if len(item.content_base64) > cap * 4 // 3 + 4:
            raise budget.too_big(settings)
        try:
            data = base64.b64decode(item.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise FileRejected("contenu base64 invalide") from None
    elif source is not None and urlsplit(source).scheme.lower() in {"http", "https"}:
        if guard is None:
            from handler_cli.netguard import NetGuard

            guard = NetGuard.from_settings(settings)
        data = _download(source, settings, budget, guard)
    elif source is not None and "://" in source:
        raise FileRejected(f"adresse non prise en charge ({urlsplit(source).scheme}://)")
    elif source is not None:
        if not settings.handler_allow_local_files:
            raise FileRejected("les chemins locaux ne sont pas acceptés ici")
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileRejected("fichier introuvable")
        if path.stat().st_size > cap:
            raise budget.too_big(settings)
        data = path.read_bytes()
    else:  # pragma: no cover - FileObject guarantees url or content
        raise FileRejected("fichier sans contenu")
    if len(data) > cap:
        raise budget.too_big(settings)
    if not data:
        raise FileRejected("fichier vide")
    budget.bytes_left -= len(data)
    content_type = EXTRA_TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Attachment(name=name, data=data, content_type=content_type)


def unique_names(names: list[str]) -> list[str]:
    """The same names, made distinct (`image.jpg`, `image-2.jpg`...): two attachments never
    overwrite each other. Compared case-insensitively (a case-insensitive disk would merge
    them); decided by position only, so a re-run gives every file the same name again."""
    taken = {name.casefold() for name in names}
    seen: set[str] = set()
    result = []
    for name in names:
        candidate = name
        if candidate.casefold() in seen:
            stem, dot, ext = name.rpartition(".")
            stem, ext = (stem, dot + ext) if dot else (name, "")
            number = 2
            while (candidate := f"{stem}-{number}{ext}").casefold() in seen | taken:
                number += 1
        seen.add(candidate.casefold())
        result.append(candidate)
    return result
