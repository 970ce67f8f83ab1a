"""Durable intake: the store of accepted requests, and the huey queue that feeds the workers.

Two layers, each doing one job:

- The **request store** is the source of truth. The webhook writes a request there (and its
  idempotency keys) before answering 202; workers save the document after every step
  (checkpoints), and the final status (`done`, or `failed` = dead letter). SQLite under the
  data dir by default (the webhook's commits at synchronous=FULL: an answered request
  survives a power cut), or Redis when `HANDLER_QUEUE_URL` is set, so several machines
  share it.
- **huey** carries request ids to workers, runs the worker threads and schedules retries.
  Its messages can be lost without harm (huey pops a message before running it, so a
  `kill -9` loses the one in flight): the store still says the request is open, and the
  sweep (at start-up, then every minute) puts every open request that no message stands for
  back on the queue. A message that arrives twice is harmless: a worker must first *claim*
  the request (an atomic status change with a lease), and a done request cannot be claimed.

A request is `queued`, then `running` (claimed, under a lease the worker renews), then `done`,
`retrying` (a transient failure; back after a growing delay) or `failed`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from handler_cli.config import ConfigError, Settings
from handler_cli.steps import PIPELINE, Step

if TYPE_CHECKING:
    from huey import Huey
    from huey.api import Task

    from handler_cli.context import Context
    from handler_cli.document import Document

log = logging.getLogger("handler_cli")

STATUSES = ("queued", "running", "retrying", "done", "failed")
OPEN_STATUSES = ("queued", "running", "retrying")
QUEUE_NAME = "handler-cli"
TASK_NAME = "process_request"
DISPATCH_NAME = "dispatch_requests"  # one per webhook batch: queues a TASK_NAME per request
PAYLOAD_WINDOW = 24 * 3600  # identical payloads within this window are the same request
KEY_WINDOW = 30 * 24 * 3600  # how long a webhook-id / Idempotency-Key is remembered
LEASE_SECONDS = 120.0  # a claimed request's lease, renewed while its worker lives
CLOCK_SKEW = 1.0  # between machines sharing the Redis store
BUSY_TIMEOUT_MS = 30_000  # how long a SQLite writer waits for another's lock


_ID_PREFIX = {"pid": -1, "bits": ""}
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """Unique and sortable by arrival: milliseconds, 32 random bits drawn once per process,
    a counter. (Not a secret: reading a request's status needs the credentials anyway. No
    system call per id either: the webhook's event loop must not give up the GIL here.)"""
    if _ID_PREFIX["pid"] != os.getpid():
        _ID_PREFIX.update(pid=os.getpid(), bits=secrets.token_hex(4))
    return f"req_{int(time.time() * 1000):012x}{_ID_PREFIX['bits']}{next(_ID_COUNTER) % 65536:04x}"


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class NewRequest:
    """What the webhook hands to the store: the document plus its idempotency keys."""

    request_id: str
    document: str  # JSON
    fingerprint: str  # Payload.payload_fingerprint()
    key: str | None = None  # "webhook-id:..." or "idempotency-key:...", when the sender gave one


@dataclass(frozen=True)
class Accepted:
    """The store's answer: the request's id and status; `created` False for a repeat."""

    request_id: str
    status: str
    created: bool


class StoreBusy(Exception):
    """Another process holds the store's write lock (accept_many with wait=False)."""


@dataclass
class RequestRecord:
    request_id: str
    status: str
    document: str = "{}"
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    due_at: float | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    last_error: str | None = None
    idempotency_key: str | None = None

    def data(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.document or "{}")
        return loaded

    def summary(self) -> dict[str, Any]:
        """One line of `requests list`: enough to decide what to look at."""
        data = self.data()
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "status": self.status,
            "attempts": self.attempts,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "source": data.get("source"),
            "objet": data.get("objet"),
            "ticket_id": data.get("ticket_id"),
        }
        if self.status == "retrying":
            out["next_attempt_at"] = iso(self.due_at)
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything, for `requests show`."""
        return {
            **self.summary(),
            "idempotency_key": self.idempotency_key,
            "steps": self.steps,
            "document": self.data(),
        }


class RequestStore(Protocol):
    """Where accepted requests live. Every transition of a running request is conditional on
    the worker still holding its lease, so a worker that lost it cannot overwrite another's."""

    def accept_many(self, items: Sequence[NewRequest], now: float) -> list[Accepted]: ...
    def get(self, request_id: str) -> RequestRecord | None: ...
    def recent(self, status: str | None = None, limit: int = 50) -> list[RequestRecord]: ...
    def open_requests(self) -> list[RequestRecord]:
        """Queued, retrying and running requests, without their documents."""
        ...
    def claim(
        self, request_id: str, owner: str, now: float, lease_until: float
    ) -> RequestRecord | None: ...
    def update_owned(
        self, request_id: str, owner: str, status: str, fields: dict[str, Any]
    ) -> bool: ...
    def renew(self, request_ids: Iterable[str], owner: str, lease_until: float) -> None: ...
    def requeue(self, request_id: str, now: float, allowed: Sequence[str]) -> str | None:
        """Put a request back to `queued` if its status is in `allowed`; the previous status."""
        ...
    def prune(self, now: float) -> None: ...
    def ping(self, now: float) -> None: ...
    def close(self) -> None: ...


# --- SQLite -------------------------------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
  request_id TEXT PRIMARY KEY, status TEXT NOT NULL, document TEXT NOT NULL,
  steps TEXT NOT NULL DEFAULT '{}', fingerprint TEXT NOT NULL, idempotency_key TEXT,
  attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL,
  due_at REAL, lease_owner TEXT, lease_until REAL, last_error TEXT);
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, created_at);
CREATE TABLE IF NOT EXISTS idempotency (
  key TEXT PRIMARY KEY, request_id TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""
_COLUMNS = ("request_id", "status", "document", "steps", "attempts", "created_at", "updated_at",
            "due_at", "lease_owner", "lease_until", "last_error", "idempotency_key")
_LIGHT = tuple(c for c in _COLUMNS if c != "document")


def _record(row: Sequence[Any], columns: Sequence[str] = _COLUMNS) -> RequestRecord:
    values = dict(zip(columns, row, strict=True))
    values["steps"] = json.loads(values.get("steps") or "{}")
    return RequestRecord(**values)


class SqliteRequestStore:
    """One SQLite file; a connection per thread (and per process, after a fork)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self._conn() as conn:
            conn.executescript(_SQLITE_SCHEMA)

    def _conn(self, durable: bool = False) -> sqlite3.Connection:
        """This thread's connection. `durable`: FULL, each commit is on disk before it
        returns, even across a power cut: what the webhook needs before answering 202.
        Otherwise NORMAL (WAL: safe from a crashed process, not from a power cut): a lost
        checkpoint or status change only means a step runs again, which steps allow, and
        the workers' writes do not hold the lock the webhook waits for during an fsync."""
        slot = "durable" if durable else "conn"
        conn: sqlite3.Connection | None = getattr(self._local, slot, None)
        if conn is None or getattr(self._local, slot + "_pid", None) != os.getpid():
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            setattr(self._local, slot, conn)
            setattr(self._local, slot + "_pid", os.getpid())
            with self._lock:
                self._all.append(conn)
        return conn

    def accept_many(self, items: Sequence[NewRequest], now: float, *, wait: bool = True
                    ) -> list[Accepted]:
        """Store a batch in one durable transaction: one lookup query for all its idempotency
        keys, then the new requests and their keys, then COMMIT (the fsync).

        `wait=False` is for the webhook's event loop: when a worker holds the write lock,
        raise StoreBusy at once instead of waiting for it; the caller tries again shortly.
        """
        conn = self._conn(durable=True)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS if wait else 0}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not wait and exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                raise StoreBusy() from None
            raise
        try:
            results = self._insert(conn, items, now)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    def _insert(self, conn: sqlite3.Connection, items: Sequence[NewRequest], now: float
                ) -> list[Accepted]:
        lookups = [item.key or f"payload:{item.fingerprint}" for item in items]
        known: dict[str, Accepted] = {}
        for start in range(0, len(lookups), 500):  # SQLite's bound-variable limit
            chunk = lookups[start:start + 500]
            for key, request_id, status in conn.execute(
                "SELECT i.key, r.request_id, r.status FROM idempotency i JOIN requests r"
                " ON r.request_id = i.request_id WHERE i.expires_at > ?"
                f" AND i.key IN ({', '.join('?' * len(chunk))})", (now, *chunk),
            ):
                known[key] = Accepted(request_id, status, False)
        results: list[Accepted] = []
        rows: list[tuple[Any, ...]] = []
        keys: list[tuple[str, str, float]] = []
        for item, lookup in zip(items, lookups, strict=True):
            prior = known.get(lookup)
            if prior is not None:
                results.append(prior)
                continue
            rows.append((item.request_id, item.document, item.fingerprint, item.key,
                         now, now, now))
            repeat = Accepted(item.request_id, "queued", False)
            payload_key = f"payload:{item.fingerprint}"
            keys.append((payload_key, item.request_id, now + PAYLOAD_WINDOW))
            known[payload_key] = repeat  # a later item of this batch repeats this one
            if item.key:
                keys.append((item.key, item.request_id, now + KEY_WINDOW))
                known[item.key] = repeat
            results.append(Accepted(item.request_id, "queued", True))
        conn.executemany(
            "INSERT INTO requests (request_id, status, document, fingerprint,"
            " idempotency_key, created_at, updated_at, due_at)"
            " VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)", rows)
        conn.executemany(
            "INSERT OR REPLACE INTO idempotency (key, request_id, expires_at)"
            " VALUES (?, ?, ?)", keys)
        return results

    def get(self, request_id: str) -> RequestRecord | None:
        row = self._conn().execute(
            f"SELECT {', '.join(_COLUMNS)} FROM requests WHERE request_id = ?", (request_id,)
        ).fetchone()
        return _record(row) if row else None

    def recent(self, status: str | None = None, limit: int = 50) -> list[RequestRecord]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM requests"
        args: tuple[Any, ...] = ()
        if status:
            sql, args = sql + " WHERE status = ?", (status,)
        rows = self._conn().execute(sql + " ORDER BY created_at DESC LIMIT ?", (*args, limit))
        return [_record(r) for r in rows.fetchall()]

    def open_requests(self) -> list[RequestRecord]:
        rows = self._conn().execute(
            f"SELECT {', '.join(_LIGHT)} FROM requests"
            " WHERE status IN ('queued', 'running', 'retrying') ORDER BY created_at"
        ).fetchall()
        return [_record(r, _LIGHT) for r in rows]

    def claim(
        self, request_id: str, owner: str, now: float, lease_until: float
    ) -> RequestRecord | None:
        row = self._conn().execute(
            "UPDATE requests SET status = 'running', lease_owner = ?, lease_until = ?,"
            " attempts = attempts + 1, updated_at = ? WHERE request_id = ? AND ("
            " (status IN ('queued', 'retrying') AND coalesce(due_at, 0) <= ?)"
            " OR (status = 'running' AND coalesce(lease_until, 0) < ?))"
            f" RETURNING {', '.join(_COLUMNS)}",
            (owner, lease_until, now, request_id, now + CLOCK_SKEW, now),
        ).fetchone()
        return _record(row) if row else None

    def update_owned(
        self, request_id: str, owner: str, status: str, fields: dict[str, Any]
    ) -> bool:
        values = {**fields, "status": status}
        if "steps" in values:
            values["steps"] = json.dumps(values["steps"])
        assignments = ", ".join(f"{name} = ?" for name in values)
        cur = self._conn().execute(
            f"UPDATE requests SET {assignments} WHERE request_id = ? AND status = 'running'"
            " AND lease_owner = ?",
            (*values.values(), request_id, owner),
        )
        return cur.rowcount == 1

    def renew(self, request_ids: Iterable[str], owner: str, lease_until: float) -> None:
        ids = list(request_ids)
        if ids:
            self._conn().execute(
                "UPDATE requests SET lease_until = ? WHERE status = 'running' AND lease_owner = ?"
                f" AND request_id IN ({', '.join('?' * len(ids))})",
                (lease_until, owner, *ids),
            )

    def requeue(self, request_id: str, now: float, allowed: Sequence[str]) -> str | None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT status FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row is not None and row[0] in allowed:
                conn.execute(
                    "UPDATE requests SET status = 'queued', attempts = 0, due_at = ?,"
                    " updated_at = ?, lease_owner = NULL, lease_until = NULL, last_error = NULL"
                    " WHERE request_id = ?",
                    (now, now, request_id),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return row[0] if row else None

    def prune(self, now: float) -> None:
        self._conn().execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,))

    def ping(self, now: float) -> None:
        self._conn().execute("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)", (now,))

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


# --- Redis --------------------------------------------------------------------------------
# One hash per request, a sorted set per status (score: arrival) and one key per idempotency
# key ("id|expiry", with a TTL). Every change is one Lua script, so it is atomic. Redis Cluster is not
# supported (the scripts touch keys they compute); one Redis, or Sentinel, is.

_LUA_ACCEPT = """
local p, id, key, fpkey, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local lookup = fpkey
if key ~= '' then lookup = key end
local prior = redis.call('GET', p .. 'idem:' .. lookup)
if prior then
  local cut = string.find(prior, '|', 1, true)
  local rid, expires = string.sub(prior, 1, cut - 1), tonumber(string.sub(prior, cut + 1))
  local st = redis.call('HGET', p .. 'req:' .. rid, 'status')
  if st and expires > tonumber(now) then return {rid, st, '0'} end
end
redis.call('HSET', p .. 'req:' .. id, 'status', 'queued', 'document', ARGV[8], 'steps', '{}',
  'fingerprint', ARGV[9], 'idempotency_key', key, 'attempts', '0', 'created_at', now,
  'updated_at', now, 'due_at', now, 'lease_owner', '', 'lease_until', '0', 'last_error', '')
redis.call('ZADD', p .. 'status:queued', now, id)
redis.call('ZADD', p .. 'all', now, id)
-- The value carries its expiry (judged against the caller's clock); the TTL, a day longer,
-- only cleans up.
local function remember(k, window_ms)
  local expires = tonumber(now) + tonumber(window_ms) / 1000
  redis.call('SET', p .. 'idem:' .. k, id .. '|' .. expires, 'PX', tonumber(window_ms) + 86400000)
end
if key ~= '' then remember(key, ARGV[6]) end
remember(fpkey, ARGV[7])
return {id, 'queued', '1'}
"""
_LUA_CLAIM = """
local p, id, owner, now, untl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local rk = p .. 'req:' .. id
local f = redis.call('HMGET', rk, 'status', 'due_at', 'lease_until', 'created_at')
local st = f[1]
if not st then return false end
local ok = false
if (st == 'queued' or st == 'retrying') and (tonumber(f[2]) or 0) <= now + tonumber(ARGV[6]) then
  ok = true
end
if st == 'running' and (tonumber(f[3]) or 0) < now then ok = true end
if not ok then return false end
if st ~= 'running' then
  redis.call('ZREM', p .. 'status:' .. st, id)
  redis.call('ZADD', p .. 'status:running', f[4], id)
end
redis.call('HSET', rk, 'status', 'running', 'lease_owner', owner, 'lease_until', untl,
  'updated_at', ARGV[4])
redis.call('HINCRBY', rk, 'attempts', 1)
return redis.call('HGETALL', rk)
"""
_LUA_UPDATE_OWNED = """
local p, id, owner, new = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local rk = p .. 'req:' .. id
local f = redis.call('HMGET', rk, 'status', 'lease_owner', 'created_at')
if f[1] ~= 'running' or f[2] ~= owner then return 0 end
if new ~= 'running' then
  redis.call('ZREM', p .. 'status:running', id)
  redis.call('ZADD', p .. 'status:' .. new, f[3], id)
end
local args = {'status', new}
for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('HSET', rk, unpack(args))
return 1
"""
_LUA_REQUEUE = """
local p, id, now = ARGV[1], ARGV[2], ARGV[3]
local rk = p .. 'req:' .. id
local f = redis.call('HMGET', rk, 'status', 'created_at')
if not f[1] then return false end
for i = 4, #ARGV do
  if ARGV[i] == f[1] then
    redis.call('ZREM', p .. 'status:' .. f[1], id)
    redis.call('ZADD', p .. 'status:queued', f[2], id)
    redis.call('HSET', rk, 'status', 'queued', 'attempts', '0', 'due_at', now,
      'updated_at', now, 'lease_owner', '', 'lease_until', '0', 'last_error', '')
  end
end
return f[1]
"""


def _redis_value(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name == "steps":
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def _from_redis(request_id: str, raw: dict[str, str]) -> RequestRecord:
    def num(name: str) -> float | None:
        value = raw.get(name) or ""
        return float(value) if value not in ("", "0") else None

    return RequestRecord(
        request_id=request_id,
        status=raw["status"],
        document=raw.get("document") or "{}",
        steps=json.loads(raw.get("steps") or "{}"),
        attempts=int(raw.get("attempts") or 0),
        created_at=float(raw.get("created_at") or 0),
        updated_at=float(raw.get("updated_at") or 0),
        due_at=num("due_at"),
        lease_owner=raw.get("lease_owner") or None,
        lease_until=num("lease_until"),
        last_error=raw.get("last_error") or None,
        idempotency_key=raw.get("idempotency_key") or None,
    )


class RedisRequestStore:
    """The same store in Redis, shared by every `serve` and worker on every machine."""

    def __init__(self, url: str, prefix: str = "handler-cli:") -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, decode_responses=True)
        self._accept = self._redis.register_script(_LUA_ACCEPT)
        self._claim = self._redis.register_script(_LUA_CLAIM)
        self._update = self._redis.register_script(_LUA_UPDATE_OWNED)
        self._requeue = self._redis.register_script(_LUA_REQUEUE)

    def accept_many(self, items: Sequence[NewRequest], now: float) -> list[Accepted]:
        pipe = self._redis.pipeline(transaction=False)
        for item in items:
            self._accept(
                args=[self.prefix, item.request_id, item.key or "",
                      f"payload:{item.fingerprint}", repr(now), int(KEY_WINDOW * 1000),
                      int(PAYLOAD_WINDOW * 1000), item.document, item.fingerprint],
                client=pipe,
            )
        return [Accepted(r[0], r[1], r[2] == "1") for r in pipe.execute()]

    def _hashes(self, ids: Sequence[str], fields: Sequence[str] | None = None
                ) -> list[RequestRecord]:
        pipe = self._redis.pipeline(transaction=False)
        for request_id in ids:
            if fields:
                pipe.hmget(self.prefix + "req:" + request_id, list(fields))
            else:
                pipe.hgetall(self.prefix + "req:" + request_id)
        records = []
        for request_id, raw in zip(ids, pipe.execute(), strict=True):
            if fields:
                raw = dict(zip(fields, raw, strict=True))
            if raw and raw.get("status"):
                records.append(_from_redis(request_id, raw))
        return records

    def get(self, request_id: str) -> RequestRecord | None:
        found = self._hashes([request_id])
        return found[0] if found else None

    def recent(self, status: str | None = None, limit: int = 50) -> list[RequestRecord]:
        index = f"status:{status}" if status else "all"
        ids: list[str] = self._redis.zrevrange(self.prefix + index, 0, limit - 1)  # type: ignore[assignment]
        return self._hashes(ids)

    def open_requests(self) -> list[RequestRecord]:
        ids: list[str] = []
        for status in OPEN_STATUSES:
            ids.extend(self._redis.zrange(self.prefix + f"status:{status}", 0, -1))  # type: ignore[arg-type]
        return self._hashes(ids, [c for c in _LIGHT if c != "request_id"])

    def claim(
        self, request_id: str, owner: str, now: float, lease_until: float
    ) -> RequestRecord | None:
        flat = self._claim(args=[self.prefix, request_id, owner, repr(now), repr(lease_until),
                                 CLOCK_SKEW])
        if not flat:
            return None
        return _from_redis(request_id, dict(zip(flat[::2], flat[1::2], strict=True)))

    def update_owned(
        self, request_id: str, owner: str, status: str, fields: dict[str, Any]
    ) -> bool:
        args: list[Any] = [self.prefix, request_id, owner, status]
        for name, value in fields.items():
            args += [name, _redis_value(name, value)]
        return bool(self._update(args=args))

    def renew(self, request_ids: Iterable[str], owner: str, lease_until: float) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for request_id in request_ids:
            self._update(args=[self.prefix, request_id, owner, "running", "lease_until",
                               repr(lease_until)], client=pipe)
        pipe.execute()

    def requeue(self, request_id: str, now: float, allowed: Sequence[str]) -> str | None:
        previous = self._requeue(args=[self.prefix, request_id, repr(now), *allowed])
        return str(previous) if previous else None

    def prune(self, now: float) -> None:
        """Idempotency keys expire by themselves (TTL)."""

    def ping(self, now: float) -> None:
        self._redis.set(self.prefix + "probe", repr(now))

    def close(self) -> None:
        self._redis.close()


def open_store(settings: Settings) -> RequestStore:
    """Redis when `HANDLER_QUEUE_URL` is set, else SQLite in the data dir."""
    url = settings.handler_queue_url
    if url:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("HANDLER_QUEUE_URL: expected a redis://, rediss:// or unix:// URL")
        return RedisRequestStore(url)
    return SqliteRequestStore(settings.data_dir / "requests.sqlite3")


# --- who holds a lease ----------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a process from /proc, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]


def owner_id() -> str:
    """host:pid:process start time:random; the random part tells apart two queues of one
    process (tests), the start time a reused pid."""
    pid = os.getpid()
    stat = _proc_stat(pid)
    return f"{socket.gethostname()}:{pid}:{stat[1] if stat else ''}:{secrets.token_hex(4)}"


def owner_is_dead(owner: str | None) -> bool:
    """True only when we can tell for sure: the owner ran on this host and is gone."""
    if not owner:
        return True
    try:
        host, pid_text, started, _ = owner.rsplit(":", 3)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        return False  # our own leases are renewed; our workers are alive
    stat = _proc_stat(pid)
    if stat is None:
        if os.path.isdir("/proc"):
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    state, start = stat
    return state in ("Z", "X") or (bool(started) and start != started)


class _LeaseKeeper:
    """Renews the leases of the requests this process is working on, from one thread."""

    def __init__(self, store: RequestStore, owner: str, lease: float) -> None:
        self.store, self.owner, self.lease = store, owner, lease
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, request_id: str) -> None:
        with self._lock:
            self._held.add(request_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lease-keeper",
                                                daemon=True)
                self._thread.start()

    def drop(self, request_id: str) -> None:
        with self._lock:
            self._held.discard(request_id)

    def _run(self) -> None:
        while not self._stop.wait(self.lease / 3):
            with self._lock:
                held = list(self._held)
            if held:
                try:
                    self.store.renew(held, self.owner, time.time() + self.lease)
                except Exception:  # a store hiccup: the next round tries again
                    log.exception("could not renew the leases of %d request(s)", len(held))

    def stop(self) -> None:
        self._stop.set()


# --- the worker side ------------------------------------------------------------------------


class _HandBack(Exception):
    """Shutting down: the current step finished and was saved; the rest goes back."""


class _LeaseLost(Exception):
    """Another worker took this request over (our lease ran out); stop touching it."""


@dataclass(frozen=True)
class _Observed(Step):
    """A step of the chain that remembers whether its failure may pass with time.

    The runner records only the message on the document; the retry policy needs to know if
    waiting can help (HubSpot down, 429, 5xx) or not (a rejected property, a bad address).
    An unexpected exception (a full disk, a bug fixed by the next deploy) counts as
    transient: retried, then dead-lettered, never dropped. A missing input says nothing by
    itself: the step it waits for has its own cause.
    """

    inner: Step | None = field(default=None, compare=False)
    causes: dict[str, bool] = field(default_factory=dict, compare=False, hash=False)

    def load(self) -> Callable[[Document, Context], Document]:
        from handler_cli.services import ServiceError
        from handler_cli.steps import MissingInput

        assert self.inner is not None
        fn = self.inner.load()

        def run(doc: Document, ctx: Context) -> Document:
            try:
                return fn(doc, ctx)
            except ServiceError as exc:
                self.causes[self.name] = exc.transient
                raise
            except (MissingInput, ConfigError):
                raise
            except Exception:
                self.causes[self.name] = True
                raise

        return run


def retry_delay(attempt: int, settings: Settings) -> float:
    """The wait after the `attempt`-th run failed: doubling from the base, capped."""
    base = settings.handler_queue_retry_seconds
    return float(min(base * 2 ** max(attempt - 1, 0), settings.handler_queue_retry_max_seconds))


class RequestQueue:
    """The store, the huey instance and its task, and the worker logic, for one process."""

    def __init__(
        self,
        settings: Settings,
        steps: Sequence[Step] = PIPELINE,
        *,
        store: RequestStore | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        from huey import crontab
        from huey.signals import SIGNAL_INTERRUPTED

        self.settings = settings
        # A request from the web never reads the server's own files, whatever the CLI allows.
        self.worker_settings = settings.model_copy(update={"handler_allow_local_files": False})
        self.steps = tuple(steps)
        self.store = store if store is not None else open_store(settings)
        self.lease = lease_seconds
        self.owner = owner_id()
        self.stopping = threading.Event()
        self.huey = make_huey(settings)
        self._task = self.huey.task(name=TASK_NAME)(self.process)
        self._dispatch = self.huey.task(name=DISPATCH_NAME)(self.enqueue_many)
        self.huey.periodic_task(crontab(), name="sweep_requests")(self.periodic_sweep)
        self.huey.on_startup(name="startup_sweep")(self._startup_sweep)
        self.huey.signal(SIGNAL_INTERRUPTED)(self._interrupted)
        self._keeper = _LeaseKeeper(self.store, self.owner, lease_seconds)
        self._ctx: Context | None = None
        self._ctx_lock = threading.Lock()
        self._swept_at_startup = threading.Lock()
        self._startup_done = False
        self._consumer: Any = None

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    # queue side

    def enqueue(self, request_id: str, delay: float | None = None) -> None:
        if delay:
            self._task.schedule(args=(request_id,), delay=delay)
        else:
            self._task(request_id)

    def announce(self, request_ids: Sequence[str]) -> None:
        """Queue the requests the webhook just stored, in one message: the worker that takes
        it queues one task per request. Serializing and writing a message per request was
        a tenth of the webhook's time per post. A message lost on the way loses no request:
        the sweep queues every open request that no message stands for."""
        if request_ids:
            self._dispatch(list(request_ids))

    def enqueue_many(self, request_ids: Iterable[str]) -> None:
        """One task per request, written at once (what a dispatch message does)."""
        messages = [self.huey.serialize_task(self._task.s(rid)) for rid in request_ids]
        if messages:
            self.huey.storage.enqueue_many(messages)

    def _queued_ids(self) -> set[str]:
        """Request ids some huey message (pending or scheduled) already stands for."""
        ids: set[str] = set()
        tasks: list[Task] = [*self.huey.pending(), *self.huey.scheduled()]
        for task in tasks:
            if task.name == TASK_NAME and task.args:
                ids.add(str(task.args[0]))
            elif task.name == DISPATCH_NAME and task.args:
                ids.update(str(rid) for rid in task.args[0])
        return ids

    def sweep(self, grace: float = 30.0, now: float | None = None) -> list[str]:
        """Re-enqueue open requests that no message stands for; return their ids.

        A running request whose worker is gone (lease run out, or its process dead on this
        host) is taken back first. `grace` leaves alone requests accepted a moment ago,
        whose message the webhook is still writing.
        """
        now = time.time() if now is None else now
        candidates: list[str] = []
        for rec in self.store.open_requests():
            if rec.status == "running":
                stale = (rec.lease_until or 0) < now or owner_is_dead(rec.lease_owner)
                if stale and rec.lease_owner and self.store.update_owned(
                    rec.request_id, rec.lease_owner, "running", {"lease_until": 0.0}
                ):
                    candidates.append(rec.request_id)
            elif (rec.due_at or 0) <= now - grace:
                candidates.append(rec.request_id)
        self.store.prune(now)
        if not candidates:
            return []
        present = self._queued_ids()
        missing = [c for c in candidates if c not in present]
        for request_id in missing:
            self.enqueue(request_id)
        if missing:
            log.info("re-queued %d request(s) left open: %s", len(missing),
                     ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        return missing

    def periodic_sweep(self) -> None:
        self.sweep()

    def _startup_sweep(self) -> None:
        """Once per process, when its first worker starts (also under `huey_consumer`)."""
        with self._swept_at_startup:
            if self._startup_done:
                return
            self._startup_done = True
        try:
            self.sweep(grace=0.0)
        except Exception:
            log.exception("start-up sweep failed; the periodic sweep will retry")

    def retry(self, request_id: str) -> str | None:
        """Operator replay of a failed (or waiting) request; the previous status, or None."""
        previous = self.store.requeue(request_id, time.time(), ("failed", "retrying"))
        if previous in ("failed", "retrying"):
            self.enqueue(request_id)
        return previous

    # worker side

    def _context(self) -> Context:
        """One Context for all the worker threads of this process.

        The backends lock around their own writes (the local CRM numbers tickets by counting
        them), so two threads must share one instance, not each build their own: the
        services are built here once, under a lock, before any thread uses them.
        """
        with self._ctx_lock:
            if self._ctx is None:
                from handler_cli.context import Context

                ctx = Context(self.worker_settings)
                for service in ("crm", "files", "mailer", "tasks", "llm", "ledger",
                                "renderer", "documents"):
                    try:
                        getattr(ctx, service)
                    except Exception:  # a missing setting: the step that needs it says so
                        log.debug("%s not built in advance", service, exc_info=True)
                self._ctx = ctx
            return self._ctx

    def process(self, request_id: str) -> None:
        """The huey task: claim the request, run the chain from where it stands, record."""
        if self.stopping.is_set():
            # Shutting down: leave it queued. Wait a moment first, or this worker would
            # spin through the whole queue before huey's stop flag reaches it.
            self.enqueue(request_id)
            time.sleep(0.2)
            return
        now = time.time()
        rec = self.store.claim(request_id, self.owner, now, now + self.lease)
        if rec is None:
            log.debug("%s: nothing to do (done, not due, or held by a live worker)", request_id)
            return
        self._keeper.hold(request_id)
        try:
            self._run(rec)
        finally:
            self._keeper.drop(request_id)

    def _save(self, rec: RequestRecord, status: str, doc: Document | None,
              steps: dict[str, dict[str, Any]], **fields: Any) -> bool:
        now = time.time()
        values: dict[str, Any] = {"steps": steps, "updated_at": now, **fields}
        if doc is not None:
            values["document"] = doc.to_json()
        if status != "running":
            values.update(lease_owner=None, lease_until=None)
        return self.store.update_owned(rec.request_id, self.owner, status, values)

    def _run(self, rec: RequestRecord) -> None:
        from handler_cli.document import Document
        from handler_cli.pipeline import run_chain

        max_attempts = self.settings.handler_queue_max_attempts
        if rec.attempts > max_attempts:
            # Claimed again and again without ever finishing: its worker keeps dying on it.
            self._save(rec, "failed", None, rec.steps, last_error=(
                f"gave up after {rec.attempts - 1} attempts that never finished"))
            log.error("%s: failed, its workers stopped %d times", rec.request_id,
                      rec.attempts - 1)
            return
        doc = Document.model_validate_json(rec.document)
        steps = dict(rec.steps)
        if self.stopping.is_set():
            self._hand_back(rec, doc, steps)
            return
        causes: dict[str, bool] = {}
        chain = [_Observed(s.name, s.module, s.summary, inner=s, causes=causes)
                 for s in self.steps]

        def checkpoint(step: Step, current: Document, ok: bool) -> None:
            steps[step.name] = {"ok": ok, "at": iso(time.time())}
            if not self._save(rec, "running", current, steps,
                              lease_until=time.time() + self.lease):
                raise _LeaseLost()
            if self.stopping.is_set():
                raise _HandBack()

        try:
            ok = run_chain(doc, self._context(), chain, checkpoint=checkpoint)
        except _HandBack:
            self._hand_back(rec, doc, steps)
            return
        except _LeaseLost:
            log.warning("%s: lease lost to another worker, leaving it", rec.request_id)
            return
        except Exception as exc:  # a setting, a bug, a full disk: wait and try again
            log.exception("%s: the chain stopped", rec.request_id)
            self._retry_or_fail(rec, doc, steps, f"{type(exc).__name__}: {exc}")
            return
        if ok:
            self._save(rec, "done", doc, steps, due_at=None, last_error=None)
            log.info("%s: done (ticket %s)", rec.request_id, doc.ticket_id)
            return
        error = "; ".join(f"{e.step}: {e.error}" for e in doc.errors) or "a step failed"
        if any(causes.get(e.step) for e in doc.errors):
            self._retry_or_fail(rec, doc, steps, error)
        else:
            self._save(rec, "failed", doc, steps, due_at=None, last_error=error)
            log.error("%s: failed (not transient): %s", rec.request_id, error)

    def _retry_or_fail(self, rec: RequestRecord, doc: Document,
                       steps: dict[str, dict[str, Any]], error: str) -> None:
        if rec.attempts >= self.settings.handler_queue_max_attempts:
            self._save(rec, "failed", doc, steps, due_at=None,
                       last_error=f"gave up after {rec.attempts} attempts: {error}")
            log.error("%s: failed after %d attempts: %s", rec.request_id, rec.attempts, error)
            return
        delay = retry_delay(rec.attempts, self.settings)
        if self._save(rec, "retrying", doc, steps, due_at=time.time() + delay,
                      last_error=error):
            self.enqueue(rec.request_id, delay=delay)
            log.warning("%s: attempt %d failed, next in %.0f s: %s", rec.request_id,
                        rec.attempts, delay, error)

    def _hand_back(self, rec: RequestRecord, doc: Document,
                   steps: dict[str, dict[str, Any]]) -> None:
        if self._save(rec, "queued", doc, steps, due_at=time.time(),
                      attempts=max(rec.attempts - 1, 0)):
            self.enqueue(rec.request_id)
            log.info("%s: handed back to the queue (shutting down)", rec.request_id)

    def _interrupted(self, signal: str, task: Task, *args: Any, **kwargs: Any) -> None:
        """huey is exiting with this task unfinished: hand its request back now. (The
        requests of an unfinished dispatch are still `queued`: the start-up sweep takes them.)"""
        if task.name != TASK_NAME or not task.args:
            return
        request_id = str(task.args[0])
        if self.store.update_owned(request_id, self.owner, "queued",
                                   {"due_at": time.time(), "lease_owner": None,
                                    "lease_until": None}):
            self.enqueue(request_id)

    # in-process workers (`serve`)

    def start_workers(self, count: int, shutdown_timeout: float = 30.0) -> None:
        """Run `count` huey worker threads (and its scheduler) inside this process."""
        poll = self.settings.handler_queue_poll_seconds
        consumer = self.huey.create_consumer(
            workers=count, worker_type="thread", periodic=True,
            initial_delay=min(0.05, poll), backoff=1.15, max_delay=poll,
            check_worker_health=False, shutdown_timeout=shutdown_timeout,
        )
        # Not consumer.run(): uvicorn owns this process's main thread and its signals.
        consumer.scheduler.start()
        for _, thread in consumer.worker_threads:
            thread.start()
        self._consumer = consumer

    def stop_workers(self) -> None:
        """Finish the steps in flight, hand the rest of their chains back, stop."""
        self.stopping.set()
        if self._consumer is not None:
            self._consumer.stop(graceful=True)
            self.huey.notify_interrupted_tasks()
            self._consumer = None

    def run_consumer(self, workers: int, shutdown_timeout: float = 30.0) -> None:
        """Run huey's consumer in this process's main thread until SIGTERM or SIGINT.

        SIGTERM is graceful: each worker finishes the step it is in, hands the rest of its
        chain back to the queue, and the process exits. A second SIGTERM changes nothing
        (systemd and the parent may both send one); SIGINT interrupts at once, handing the
        requests in flight back.
        """
        from huey.consumer import Consumer

        rq = self

        class _Consumer(Consumer):  # type: ignore[misc]
            def _handle_signal(self, signum: int, frame: Any) -> None:
                if signum == signal.SIGTERM and rq.stopping.is_set():
                    return
                rq.stopping.set()
                super()._handle_signal(signum, frame)

        poll = self.settings.handler_queue_poll_seconds
        _Consumer(
            self.huey, workers=workers, worker_type="thread", periodic=True,
            initial_delay=min(0.05, poll), backoff=1.15, max_delay=poll,
            shutdown_timeout=shutdown_timeout, graceful_signal="TERM",
        ).run()

    def close(self) -> None:
        self._keeper.stop()
        self.store.close()
        self.huey.storage.close()


def make_huey(settings: Settings) -> Huey:
    """RedisHuey with `HANDLER_QUEUE_URL`, else SqliteHuey in the data dir."""
    from huey import Huey
    from huey.storage import RedisStorage, SqliteStorage

    class _Redis(RedisStorage):  # type: ignore[misc]
        def enqueue_many(self, datas: list[bytes]) -> None:
            # LPUSH of several values keeps their order for huey's BRPOP: still FIFO.
            self.conn.lpush(self.queue_key, *datas)

    class _Sqlite(SqliteStorage):  # type: ignore[misc]
        def _create_connection(self) -> sqlite3.Connection:
            conn: sqlite3.Connection = super()._create_connection()
            # NORMAL, not FULL: the request store is durable; a lost message is re-sent.
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn

        def enqueue_many(self, datas: list[bytes]) -> None:
            # The row huey's own enqueue() writes, for a whole batch in one transaction.
            self.sql_many("insert into task (queue, data, priority) values (?, ?, ?)",
                          [(self.name, self.to_blob(d), 0) for d in datas])

        def sql_many(self, query: str, rows: list[tuple[Any, ...]]) -> None:
            with self.db(commit=True) as curs:
                curs.executemany(query, rows)

    if settings.handler_queue_url:
        return Huey(QUEUE_NAME, results=False, utc=True, storage_class=_Redis,
                    url=settings.handler_queue_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Huey(QUEUE_NAME, results=False, utc=True, storage_class=_Sqlite,
                filename=str(settings.data_dir / "queue.sqlite3"))


def settings_environ(settings: Settings) -> dict[str, str]:
    """This process's environment plus `settings` as variables: what a child process needs
    to rebuild the same settings with load_settings()."""
    environ = dict(os.environ)
    for name, value in settings.model_dump(exclude={"sources"}).items():
        if value is not None:
            environ[name.upper()] = str(value)
    return environ


class WorkerProcess:
    """`serve`'s workers in one child process (`python -m handler_cli.queue`), at the lowest
    CPU priority (nice 19, and idle scheduling on Linux): under a burst the webhook keeps
    answering in milliseconds and the chains catch up after. The child dies with its
    parent (even after a `kill -9`), and is started again if it exits on its own."""

    def __init__(self, settings: Settings, workers: int, shutdown_timeout: float = 30.0
                 ) -> None:
        self.command = [sys.executable, "-m", "handler_cli.queue", "--workers", str(workers),
                        "--shutdown-timeout", str(shutdown_timeout), "--parent",
                        str(os.getpid())]
        self.environ = settings_environ(settings)
        self.shutdown_timeout = shutdown_timeout
        self._stopping = threading.Event()
        self.proc = self._spawn()
        self.restarts = 0
        # The watcher spawns replacements, so it must live as long as the server: a child
        # started from a thread is killed when that thread ends (PR_SET_PDEATHSIG).
        self._watcher = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
        self._watcher.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, env=self.environ)

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            code = self.proc.poll()
            if code is not None and not self._stopping.is_set():
                log.error("worker process exited (code %s); starting it again", code)
                self.restarts += 1
                self.proc = self._spawn()

    @property
    def problem(self) -> str | None:
        code = self.proc.poll()
        return None if code is None else f"worker process exited (code {code})"

    def stop(self) -> None:
        """SIGTERM: steps in flight finish, the rest goes back to the queue."""
        self._stopping.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.shutdown_timeout + 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _die_with(parent: int) -> None:
    """Never outlive the `serve` process that started us."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # elsewhere, or if the parent died before prctl
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _idle_priority() -> None:
    """Linux: run only on CPU time nothing else wants (SCHED_IDLE). Under nice 19 alone the
    workers still took a share of the CPU beside a busy webhook, which then answered ~10%
    fewer posts a second (bench/bench_serve.py on 2 CPUs). Threads started later inherit it."""
    if hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:
            log.debug("SCHED_IDLE refused (%s); nice only", exc)


def main(argv: Sequence[str] | None = None) -> None:
    """The worker process of `serve` (settings from the environment)."""
    import argparse

    from handler_cli import logs
    from handler_cli.config import load_settings

    parser = argparse.ArgumentParser(prog="python -m handler_cli.queue", description=main.__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shutdown-timeout", type=float, default=30.0)
    parser.add_argument("--parent", type=int, help="exit when this process is gone")
    parser.add_argument("--nice", type=int, default=19,
                        help="CPU priority increment; with any, idle scheduling on Linux")
    args = parser.parse_args(argv)
    if args.parent:
        _die_with(args.parent)
    if args.nice:
        os.nice(args.nice)
        _idle_priority()
    logs.setup(0)
    logging.getLogger("huey").setLevel(logging.WARNING)
    RequestQueue(load_settings()).run_consumer(args.workers, args.shutdown_timeout)


_default: RequestQueue | None = None


def __getattr__(name: str) -> Any:
    """`huey_consumer handler_cli.queue.huey`: separate workers, built from the environment."""
    global _default
    if name == "huey":
        if _default is None:
            from handler_cli.config import load_settings

            _default = RequestQueue(load_settings())
        return _default.huey
    raise AttributeError(name)


if __name__ == "__main__":
    # Through the package, not this `__main__` copy: huey names tasks after their module.
    from handler_cli.queue import main as _main

    _main()
