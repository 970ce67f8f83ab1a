"""What the HubSpot backend keeps in the data dir so it does not ask HubSpot twice.

- The account (portal id and UI domain, for ticket links), one file keyed by base URL and
  token: one account-info call per installation, not per run.
- The ids of e-mails known not to come from the client (our own quotes and acknowledgements
  sit on every waiting ticket): read once, never again, so a quiet poll costs pages, not
  tickets.
- When each incoming e-mail on a client's contact was written: one older than the quotes
  being waited on is never read again (a contact keeps its whole history).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("handler_cli")

ACCOUNT_FILE = "hubspot_account.json"
EMAILS_FILE = "hubspot_emails.sqlite3"


class AccountCache:
    """The portal's account details, from this file or from one call (then written here)."""

    def __init__(self, data_dir: Path, base_url: str, token: str) -> None:
        self.path = data_dir / ACCOUNT_FILE
        self.key = hashlib.sha256(f"{base_url}\n{token}".encode()).hexdigest()[:16]
        self._lock = threading.Lock()
        self._account: dict[str, Any] | None = None

    def get(self, fetch: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            if self._account is not None:
                return self._account
            try:
                cache = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                cache = {}
            cache = cache if isinstance(cache, dict) else {}
            if isinstance(cache.get(self.key), dict) and cache[self.key].get("portalId"):
                self._account = cache[self.key]
                return cache[self.key]
            account = fetch()
            cache[self.key] = account
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
                tmp.replace(self.path)
            except OSError as exc:  # a read-only data dir costs one call per run, no more
                log.warning("hubspot: cannot cache the portal id in %s: %s", self.path, exc)
            self._account = account
            return account


class EmailMemo:
    """What is known of e-mail engagements without reading them again: which are not the
    client's (ours, or forwarded), and when each incoming one was written."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / EMAILS_FILE
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            from handler_cli.sqlite import connect

            self._db = connect(
                self.path, "CREATE TABLE IF NOT EXISTS not_from_client "
                "(email_id TEXT PRIMARY KEY);"
                "CREATE TABLE IF NOT EXISTS incoming (email_id TEXT PRIMARY KEY, "
                "at_ms INTEGER NOT NULL)")
        return self._db

    def older_than(self, ids: Iterable[str], at: datetime) -> set[str]:
        """Which of `ids` are incoming e-mails written before `at`."""
        with self._lock:
            return {row[0] for row in self._open().execute(
                "SELECT email_id FROM incoming WHERE at_ms < ? AND email_id IN"
                " (SELECT value FROM json_each(?))",
                (int(at.timestamp() * 1000), json.dumps(sorted(ids))))}

    def remember_incoming(self, written: Iterable[tuple[str, datetime]]) -> None:
        rows = [(i, int(at.timestamp() * 1000)) for i, at in written]
        if rows:
            with self._lock:
                self._open().executemany(
                    "INSERT OR IGNORE INTO incoming (email_id, at_ms) VALUES (?, ?)", rows)

    def among(self, ids: Iterable[str]) -> set[str]:
        """Which of `ids` are known not to be the client's."""
        with self._lock:
            return {row[0] for row in self._open().execute(
                "SELECT email_id FROM not_from_client WHERE email_id IN"
                " (SELECT value FROM json_each(?))", (json.dumps(sorted(ids)),))}

    def remember(self, ids: Iterable[str]) -> None:
        rows = [(i,) for i in ids]
        if rows:
            with self._lock:
                self._open().executemany(
                    "INSERT OR IGNORE INTO not_from_client (email_id) VALUES (?)", rows)
