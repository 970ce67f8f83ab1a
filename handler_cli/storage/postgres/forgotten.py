"""The shared list of forgotten addresses: keyed hashes in `handler_forgotten`."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from functools import cached_property

from handler_cli.storage import email_hash
from handler_cli.storage.postgres.connections import Connections

OWED = "files_owed:"  # handler_meta keys of the requests whose files are still to erase


class PostgresForgotten:
    """`ForgottenAddresses` in `handler_forgotten`, its key in `handler_meta`."""

    def __init__(self, db: Connections) -> None:
        self.db = db

    @cached_property
    def _salt(self) -> str:
        """This installation's key for the hashes, made once for every machine."""
        conn = self.db.conn()
        conn.execute("INSERT INTO handler_meta (key, value) VALUES ('email_salt', %s)"
                     " ON CONFLICT (key) DO NOTHING", (secrets.token_hex(32),))
        row = conn.execute("SELECT value FROM handler_meta WHERE key = 'email_salt'").fetchone()
        assert row is not None
        return str(row[0])

    def remember(self, email: str, at: float) -> None:
        self.db.conn().execute(
            "INSERT INTO handler_forgotten (email_hash, forgotten_at) VALUES (%s, %s)"
            " ON CONFLICT (email_hash) DO UPDATE SET forgotten_at = excluded.forgotten_at",
            (email_hash(email, self._salt), at))

    def forgotten_at(self, email: str) -> float | None:
        row = self.db.conn().execute("SELECT forgotten_at FROM handler_forgotten"
                                     " WHERE email_hash = %s",
                                     (email_hash(email, self._salt),)).fetchone()
        return float(row[0]) if row else None

    def lift(self, email: str) -> bool:
        return self.db.conn().execute("DELETE FROM handler_forgotten WHERE email_hash = %s",
                                      (email_hash(email, self._salt),)).rowcount > 0

    def owe_files(self, request_ids: Sequence[str], at: float) -> None:
        if request_ids:
            self.db.conn().cursor().executemany(
                "INSERT INTO handler_meta (key, value) VALUES (%s, %s)"
                " ON CONFLICT (key) DO NOTHING", [(OWED + rid, repr(at)) for rid in request_ids])

    def files_owed(self) -> list[str]:
        rows = self.db.conn().execute("SELECT key FROM handler_meta WHERE left(key, %s) = %s"
                                      " ORDER BY key", (len(OWED), OWED)).fetchall()
        return [str(row[0])[len(OWED):] for row in rows]

    def files_erased(self, request_ids: Sequence[str]) -> None:
        if request_ids:
            self.db.conn().execute("DELETE FROM handler_meta WHERE key = ANY(%s)",
                                   ([OWED + rid for rid in request_ids],))

    def close(self) -> None:
        self.db.close()
