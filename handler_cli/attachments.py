"""Attachments: fetched from a URL, a local path or base64, then checked before storage.

Everything a client sends is untrusted: names are reduced to a safe base name, only known
file types are accepted and sizes are capped. A rejected file raises FileRejected, which the
upload step turns into a note on the request rather than a failure.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import unquote, urlsplit

from handler_cli.config import Settings
from handler_cli.document import FileItem, FileObject

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


def _download(url: str, settings: Settings) -> bytes:
    import httpx

    cap = settings.handler_max_file_bytes
    try:
        with httpx.stream("GET", url, timeout=settings.handler_download_timeout,
                          follow_redirects=True) as response:
            if response.status_code != 200:
                raise FileRejected(f"téléchargement refusé (HTTP {response.status_code})")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > cap:
                raise FileRejected(f"fichier trop volumineux (plus de {cap // 1_048_576} Mo)")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > cap:
                    raise FileRejected(f"fichier trop volumineux (plus de {cap // 1_048_576} Mo)")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise FileRejected(f"téléchargement impossible ({type(exc).__name__})") from None


def fetch(item: FileItem, settings: Settings) -> Attachment:
    """Resolve one `fichiers` item into checked bytes, or raise FileRejected."""
    cap = settings.handler_max_file_bytes
    if isinstance(item, FileObject):
        name = safe_name(item.name)
        source = item.url
    else:
        source = item
        name = safe_name(urlsplit(item).path if "://" in item else item)
    ext = extension(name)
    if ext not in ALLOWED_EXTENSIONS:
        raise FileRejected(f"type de fichier non accepté (.{ext or '?'})")

    if isinstance(item, FileObject) and item.content_base64 is not None:
        if len(item.content_base64) > cap * 4 // 3 + 4:
            raise FileRejected(f"fichier trop volumineux (plus de {cap // 1_048_576} Mo)")
        try:
            data = base64.b64decode(item.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise FileRejected("contenu base64 invalide") from None
    elif source is not None and urlsplit(source).scheme in {"http", "https"}:
        data = _download(source, settings)
    elif source is not None and "://" in source:
        raise FileRejected(f"adresse non prise en charge ({urlsplit(source).scheme}://)")
    elif source is not None:
        if not settings.handler_allow_local_files:
            raise FileRejected("les chemins locaux ne sont pas acceptés ici")
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileRejected("fichier introuvable")
        if path.stat().st_size > cap:
            raise FileRejected(f"fichier trop volumineux (plus de {cap // 1_048_576} Mo)")
        data = path.read_bytes()
    else:  # pragma: no cover - FileObject guarantees url or content
        raise FileRejected("fichier sans contenu")
    if len(data) > cap:
        raise FileRejected(f"fichier trop volumineux (plus de {cap // 1_048_576} Mo)")
    if not data:
        raise FileRejected("fichier vide")
    content_type = EXTRA_TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Attachment(name=name, data=data, content_type=content_type)
