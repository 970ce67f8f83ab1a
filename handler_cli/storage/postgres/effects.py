"""The shared ledger: effects claimed in `handler_effects`, a row lock per claim."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from handler_cli.ledger import Claim, request_of
from handler_cli.storage.postgres.connections import Connections


class PostgresEffects:
    """`EffectStore` in `handler_effects`: a claim is one transaction holding the key's row
    lock, so two machines never both get it."""

    def __init__(self, db: Connections) -> None:
        self.db = db

    def claim(self, key: str, owner: str, now: float, until: float,
              is_dead: Callable[[str | None], bool]) -> Claim:
        with self.db.unavailable_is_transient("ledger"), self.db.transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO handler_effects (key, state, owner, lease_until, request_id,"
                " updated_at) VALUES (%s, 'pending', %s, %s, %s, %s)"
                " ON CONFLICT (key) DO NOTHING RETURNING key",
                (key, owner, until, request_of(key), now)).fetchone()
            if inserted is not None:
                return Claim("new")
            row = conn.execute(
                "SELECT state, result, owner, lease_until FROM handler_effects WHERE key = %s"
                " FOR UPDATE", (key,)).fetchone()
            assert row is not None  # inserted or present: never deleted under a claim
            state, result, holder, lease_until = row
            if state == "done":
                return Claim("done", result)
            if holder != owner and (lease_until or 0) > now and not is_dead(holder):
                return Claim("held")
            conn.execute("UPDATE handler_effects SET owner = %s, lease_until = %s,"
                         " updated_at = %s WHERE key = %s", (owner, until, now, key))
            return Claim("stale")

    def complete(self, key: str, owner: str, result: str, now: float) -> None:
        with self.db.unavailable_is_transient("ledger"):
            self.db.conn().execute(
                "UPDATE handler_effects SET state = 'done', result = %s, owner = NULL,"
                " lease_until = NULL, updated_at = %s WHERE key = %s", (result, now, key))

    def release(self, key: str, owner: str) -> None:
        with self.db.unavailable_is_transient("ledger"):
            self.db.conn().execute("UPDATE handler_effects SET lease_until = 0 WHERE key = %s"
                                   " AND owner = %s AND state = 'pending'", (key, owner))

    def get(self, key: str) -> tuple[str, str | None] | None:
        row = self.db.conn().execute("SELECT state, result FROM handler_effects WHERE key = %s",
                                     (key,)).fetchone()
        return (row[0], row[1]) if row else None

    def forget(self, key: str) -> None:
        self.db.conn().execute("DELETE FROM handler_effects WHERE key = %s", (key,))

    def remove(self, request_ids: Sequence[str]) -> int:
        """Delete every effect of these requests (retention, `forget`); how many."""
        return self.db.conn().execute("DELETE FROM handler_effects WHERE request_id = ANY(%s)",
                                      (list(request_ids),)).rowcount

    def close(self) -> None:
        self.db.close()
