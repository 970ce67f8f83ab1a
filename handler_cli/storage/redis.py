"""The request store in Redis, shared by every `serve` and worker on every machine.

One hash per request, a sorted set per status (score: arrival) and one key per idempotency
key ("id|expiry", with a TTL). Every change is one Lua script, so it is atomic. Redis Cluster
is not supported (the scripts touch keys they compute); one Redis, or Sentinel, is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from handler_cli.intake.records import (
    KEY_WINDOW,
    OPEN,
    PAYLOAD_WINDOW,
    Accepted,
    NewRequest,
    RequestRecord,
)

CLOCK_SKEW = 1.0  # between machines sharing the Redis store
_LIGHT = ("status", "steps", "attempts", "created_at", "updated_at", "due_at", "lease_owner",
          "lease_until", "last_error", "idempotency_key")

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
-- The request id is the submission's identity: stored before (keys expired since) is a repeat.
local known = redis.call('HGET', p .. 'req:' .. id, 'status')
if known then return {id, known, '0'} end
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

    accept_blocks = True  # a network round trip: the webhook calls it from a thread

    def accept_now(self, items: Sequence[NewRequest], now: float) -> list[Accepted]:
        return self.accept_many(items, now)

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
        for status in OPEN:
            ids.extend(self._redis.zrange(self.prefix + f"status:{status}", 0, -1))  # type: ignore[arg-type]
        return self._hashes(ids, list(_LIGHT))

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


