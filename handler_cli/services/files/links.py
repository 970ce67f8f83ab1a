"""Links to stored files that last: `HANDLER_PUBLIC_URL/files/<key>?sig=<HMAC>`.

A link we write somewhere (the ticket's `fichiers_urls`, the admin's e-mail, a ClickUp subtask
made days later) must open the file as long as the file exists. A presigned R2 URL dies after
seven days at most (SigV4's limit), so without a public bucket (`R2_PUBLIC_URL`) the link
points at this server instead: `GET /files/<key>?sig=...` checks the signature, checks the
file is still there, and answers a 302 to a presigned URL made at that moment
(`R2_PRESIGN_SECONDS`, one hour by default).

The signature is an HMAC-SHA256 of the key with a secret of the installation
(`HANDLER_FILE_LINK_SECRET`, space-separated values: the first signs, any verifies, for
rotation; else one generated once in the data dir, `file-link.secret`, which stays accepted
after the setting is set). Nobody can make a link to a key they were not given, nor walk the
bucket. The route is public on purpose: the admin opens these links from an e-mail.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from handler_cli.config import Settings
    from handler_cli.services.files.r2 import R2FileStore

log = logging.getLogger("handler_cli")

SECRET_FILE = "file-link.secret"
ROUTE = "/files/{key:path}"


def _generated_secret(data_dir: Path, *, create: bool) -> bytes | None:
    """The secret generated in the data dir (0600, created atomically), or None."""
    path = data_dir / SECRET_FILE
    try:
        existing = path.read_bytes().strip()
    except FileNotFoundError:
        existing = b""
    if len(existing) >= 32 or not create:
        return existing or None
    from handler_cli.storage import generated_secret  # never half a secret across processes

    return generated_secret(path)


@dataclass(frozen=True)
class FileLinks:
    """Signs and checks the links to stored files handed out through this server."""

    base_url: str
    signing: bytes
    accepted: tuple[bytes, ...]

    @classmethod
    def from_settings(cls, settings: Settings, *, create: bool = True) -> FileLinks | None:
        """None when HANDLER_PUBLIC_URL is not set (no server to link through)."""
        base = (settings.handler_public_url or "").strip().rstrip("/")
        if not base:
            return None
        configured = [s.encode() for s in (settings.handler_file_link_secret or "").split()]
        generated = _generated_secret(settings.data_dir, create=create and not configured)
        keys = [*configured, *([generated] if generated else [])]
        if not keys:  # `create=False` on a fresh data dir: nothing signed yet
            keys = [b""]
        return cls(base, keys[0], tuple(k for k in keys if k))

    @staticmethod
    def _mac(secret: bytes, key: str) -> str:
        digest = hmac.new(secret, f"handler-cli file link:{key}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")

    def url(self, key: str) -> str:
        return f"{self.base_url}/files/{quote(key, safe='/')}?sig={self._mac(self.signing, key)}"

    def verify(self, key: str, sig: str) -> bool:
        return any(hmac.compare_digest(self._mac(secret, key), sig) for secret in self.accepted)


_stores: dict[int, tuple[Settings, R2FileStore | None]] = {}


def _store_for(settings: Settings) -> R2FileStore | None:
    """The R2 store behind the links (one per settings object, built on first click)."""
    kept = _stores.get(id(settings))
    if kept is None or kept[0] is not settings:
        from handler_cli.config import ConfigError
        from handler_cli.context import Context
        from handler_cli.services.files.r2 import R2FileStore

        try:
            files = Context(settings).files
        except ConfigError:
            files = None
        kept = (settings, files if isinstance(files, R2FileStore) else None)
        _stores[id(settings)] = kept
    return kept[1]


async def redirect(intake: Any, request: Request) -> JSONResponse:
    """`GET /files/<key>?sig=...`: a 302 to a fresh presigned URL, or 404 (bad signature,
    unknown file: the same answer, so nothing can be learnt by trying)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse

    from handler_cli.services import ServiceError

    settings = intake.settings
    key = str(request.path_params.get("key", ""))
    links = FileLinks.from_settings(settings, create=False)
    store = _store_for(settings)
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    if links is None or store is None or not links.verify(key, request.query_params.get(
            "sig", "")):
        return JSONResponse({"error": "not_found"}, status_code=404, headers=headers)
    try:
        url = await run_in_threadpool(store.fresh_link, key, store.presign_seconds)
    except ServiceError as exc:
        log.warning("file link %s: %s", key, exc)
        return JSONResponse({"error": "unavailable"}, status_code=503,
                            headers={**headers, "Retry-After": "30"})
    if url is None:
        return JSONResponse({"error": "not_found"}, status_code=404, headers=headers)
    return JSONResponse({"location": url}, status_code=302, headers={**headers, "Location": url})
