"""The data files a person tunes (lexicons, the credit grid), shipped inside the package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent


def load_json(name: str) -> Any:
    """Parse `handler_cli/data/<name>`; callers cache what they build from it."""
    return json.loads((DATA_DIR / name).read_text(encoding="utf-8"))
