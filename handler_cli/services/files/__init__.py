"""File stores: R2 (`r2.py`) and a local folder (`local.py`), behind `services.FileStore`."""

from __future__ import annotations

import re

# The document's request_id pattern (`document.Document.request_id`), non-empty.
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# Versions before 29 Nov 2026 stored files under `requests/<date>/<request id>/`: an id
# shaped like a date would name a whole day of other requests' files.
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def request_prefix(request_id: str) -> str:
    """`requests/<request id>/`: where a request's attachments are stored (steps/upload.py).

    Refuses (ValueError) an id that is not the document's pattern, or only dots: erasing
    `requests/../` or `requests//` would erase another prefix than the request's, and
    refusing is better than erasing the wrong files. A date too: older versions named a
    day's folder so."""
    if (not _REQUEST_ID.fullmatch(request_id) or not request_id.strip(".")
            or _DAY.fullmatch(request_id)):
        raise ValueError(f"unsafe request id {request_id!r}: its files are not erased")
    return f"requests/{request_id}/"
