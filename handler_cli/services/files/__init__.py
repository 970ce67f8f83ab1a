"""File stores: R2 (`r2.py`) and a local folder (`local.py`), behind `services.FileStore`."""

from __future__ import annotations

import re

# The document's request_id pattern (`document.Document.request_id`), non-empty.
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def request_prefix(request_id: str) -> str:
    """`requests/<request id>/`: where a request's attachments are stored (steps/upload.py).

    Refuses (ValueError) an id that is not the document's pattern, or only dots: erasing
    `requests/../` or `requests//` would erase another prefix than the request's, and
    refusing is better than erasing the wrong files."""
    if not _REQUEST_ID.fullmatch(request_id) or not request_id.strip("."):
        raise ValueError(f"unsafe request id {request_id!r}: its files are not erased")
    return f"requests/{request_id}/"
