"""The embedded file store: attachments in a folder, linked by file:// URLs."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from handler_cli.services.files import request_prefix

if TYPE_CHECKING:
    from handler_cli.checks import Finding


class LocalFileStore:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"local folder {self.root}"

    def check(self) -> list[Finding]:
        from handler_cli.checks import writable_place

        return [writable_place(self.root, "file folder")]

    def put(self, key: str, data: bytes, content_type: str) -> str:
        target = (self.root / key).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise ValueError(f"unsafe storage key {key!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own per writer: two processes storing at once never share a .part.
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
        tmp.write_bytes(data)
        tmp.replace(target)
        return target.as_uri()

    def erase_request(self, request_id: str, *, dry_run: bool = False) -> int:
        """Delete the request's folder `requests/<request id>/` (and the dated
        `requests/<date>/<request id>/` of versions before 29 Nov 2026); how many files
        were in them. An OSError (a folder we may not delete) goes through: not erased."""
        folder = self.root / request_prefix(request_id)
        base = self.root / "requests"
        if not base.is_dir():
            return 0
        dated = base.glob(f"[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]/{request_id}")
        folders = [p for p in (folder, *dated) if p.is_dir()]
        count = sum(1 for p in folders for f in p.rglob("*") if f.is_file())
        if not dry_run:
            for p in folders:
                shutil.rmtree(p)
        return count
