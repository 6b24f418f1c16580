"""The fleet's shared state in Redis: rate-limit buckets and the response cache, as atomic scripts.

Every proxy that names the same `llmtap_redis` draws from the same buckets and reads and fills the
same cache (`../shared/reference/scaleout.md` §5.2). Three Lua scripts keep every decision atomic
on the server, with the server's clock (`TIME`), so no proxy's clock or memory is trusted:

- `decide`: one round trip per request. If every slot of the request's cache bucket is filled it
  answers with the slot the proxy drew (Helicone's rule; the draw is the client's, so the script
  has no randomness) and charges no limit: a hit is never charged. Otherwise it checks every
  bucket and deducts the `request` ones only if all admit the call (TensorZero's all-or-nothing
  `consume_tickets`, with Helicone's continuous refill), and returns the levels for the headers.
- `charge`: a finished call's real cents / tokens off its buckets (which may go negative).
- `put`: a response into the first free slot, fleet-wide.

Buckets are HASHes `{tokens, ts}` that expire after 2 windows + 60 s (a full bucket needs no
state). Cache slots are HASHes of the entry's fields (`Entry`) that expire with their TTL; the
seed's hash is in the key so `llmtap cache clear --seed S` is one prefix. Names carry `v1`: a
change of layout bumps it, so old and new proxies of a rolling upgrade never misread each other.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

from llmtap.accounting.entry import Entry

PREFIX = "llmtap:v1:"
CACHE_PREFIX = PREFIX + "cache:"
TIMEOUT = 0.1  # seconds: a slow or dead Redis costs a request at most this, then the proxy stops asking

_LEVEL = """
local function level(key, quota, window, now)
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  if not v[1] then return quota end
  return math.min(quota, tonumber(v[1]) + (now - tonumber(v[2])) * quota / window)
end
local function store(key, tokens, window, now)
  redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
  redis.call('PEXPIRE', key, math.floor((2 * window + 60) * 1000))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: n cache slots, then the buckets. ARGV: n, drawn slot (1-based), then quota, window, unit
# per bucket. Returns {1, slot, fields...} for a hit, else {0, admitted, level...} (levels as text:
# Redis turns Lua numbers into integers).
DECIDE = (
    _LEVEL
    + """
local n = tonumber(ARGV[1])
if n > 0 then
  local full = true
  for i = 1, n do
    if redis.call('EXISTS', KEYS[i]) == 0 then full = false break end
  end
  if full then
    local slot = tonumber(ARGV[2])
    redis.call('HINCRBY', KEYS[slot], 'hits', 1)
    return {1, slot, redis.call('HGETALL', KEYS[slot])}
  end
end
local levels, ok = {}, 1
for j = n + 1, #KEYS do
  local a = 3 + (j - n - 1) * 3
  local lvl = level(KEYS[j], tonumber(ARGV[a]), tonumber(ARGV[a + 1]), now)
  levels[j - n] = lvl
  if ARGV[a + 2] == 'request' then
    if lvl < 1 then ok = 0 end
  elseif lvl <= 0 then ok = 0 end
end
if ok == 1 then
  for j = n + 1, #KEYS do
    local a = 3 + (j - n - 1) * 3
    if ARGV[a + 2] == 'request' then
      levels[j - n] = levels[j - n] - 1
      store(KEYS[j], levels[j - n], tonumber(ARGV[a + 1]), now)
    end
  end
end
local out = {0, ok}
for i, lvl in ipairs(levels) do out[i + 2] = string.format('%.17g', lvl) end
return out
"""
)

# KEYS: buckets. ARGV: quota, window, amount per bucket.
CHARGE = (
    _LEVEL
    + """
for j = 1, #KEYS do
  local a = (j - 1) * 3 + 1
  local quota, window = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  store(KEYS[j], level(KEYS[j], quota, window, now) - tonumber(ARGV[a + 2]), window, now)
end
return #KEYS
"""
)

# KEYS: the bucket's slots. ARGV: ttl ms, then field, value... Returns the slot filled (1-based),
# or 0 when every slot is already taken.
PUT = """
local free = nil
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then free = i break end
end
if not free then return 0 end
redis.call('HSET', KEYS[free], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[free], ARGV[1])
return free
"""


def client_options() -> dict[str, Any]:
    """Shared by the proxy's asyncio client and the CLI's: short timeouts, bytes in and out."""
    return {"socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT, "decode_responses": False}


@functools.lru_cache(maxsize=4096)  # the same users' buckets, call after call
def bucket_key(limit_key: str) -> str:
    return f"{PREFIX}rl:{_hash(limit_key, 24)}"


def seed_prefix(seed: str) -> str:
    return f"{CACHE_PREFIX}{_hash(seed, 12)}:"


def slot_keys(seed: str, keys: Iterable[str]) -> list[str]:
    """Redis names of a cache bucket's slots (`cache_keys.Lookup.keys()`)."""
    prefix = seed_prefix(seed)
    return [prefix + k for k in keys]


def _hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


@dataclass(frozen=True, slots=True)
class Decision:
    """What `decide` answered: a hit (slot 0-based and its entry), or the limits' verdict."""

    hit: tuple[int, Entry] | None
    admitted: bool
    levels: list[float]


Args = tuple[list[str], list[Any]]  # a script's KEYS and ARGV


def decide_args(slots: list[str], drawn: int, buckets: list[tuple[str, float, int, str]]) -> Args:
    """`buckets` are (key, quota, window, unit)."""
    argv: list[Any] = [len(slots), drawn + 1]
    for _, quota, window, unit in buckets:
        argv += [repr(float(quota)), window, unit]
    return [*slots, *(b[0] for b in buckets)], argv


def read_decision(reply: list[Any]) -> Decision:
    if int(reply[0]) == 1:
        return Decision((int(reply[1]) - 1, entry_from(_pairs(reply[2]))), True, [])
    return Decision(None, bool(int(reply[1])), [float(v) for v in reply[2:]])


def charge_args(buckets: list[tuple[str, float, int, float]]) -> Args:
    """`buckets` are (key, quota, window, amount)."""
    argv: list[Any] = []
    for _, quota, window, amount in buckets:
        argv += [repr(float(quota)), window, repr(float(amount))]
    return [b[0] for b in buckets], argv


def put_args(slots: list[str], entry: Entry, ttl_ms: int) -> Args:
    argv: list[Any] = [max(1, ttl_ms)]
    for name, value in entry_fields(entry).items():
        argv += [name, value]
    return slots, argv


_ENTRY = {f.name: f.type for f in fields(Entry)}


def entry_fields(entry: Entry) -> dict[str, bytes | str]:
    """An entry as a HASH's fields (absent for None)."""
    out: dict[str, bytes | str] = {}
    for name in _ENTRY:
        value = getattr(entry, name)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "1" if value else ""
        out[name] = value if isinstance(value, bytes) else str(value)
    return out


def entry_from(values: Mapping[bytes, bytes]) -> Entry:
    got = {k.decode(): v for k, v in values.items()}
    kwargs: dict[str, Any] = {}
    for name, kind in _ENTRY.items():
        raw = got.get(name)
        if raw is None:
            continue
        if name == "body":
            kwargs[name] = bytes(raw)
        elif name == "streamed":
            kwargs[name] = raw == b"1"
        elif "int" in kind:
            kwargs[name] = int(raw)
        elif "float" in kind:
            kwargs[name] = float(raw)
        elif "Decimal" in kind:
            kwargs[name] = Decimal(raw.decode())
        else:
            kwargs[name] = raw.decode()
    return Entry(**kwargs)


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class SyncCache:
    """`llmtap cache stats|clear` against a fleet's Redis (the same answers as the SQLite file's)."""

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self.client = redis.Redis.from_url(url, **{**client_options(), "socket_timeout": 5})

    def _keys(self, prefix: str) -> Iterable[bytes]:
        return self.client.scan_iter(match=prefix + "*", count=1000)

    def stats(self) -> dict[str, int]:
        entries = size = hits = 0
        for batch in _chunks(self._keys(CACHE_PREFIX), 500):
            pipe = self.client.pipeline(transaction=False)
            for key in batch:
                pipe.hstrlen(key, "body")
                pipe.hget(key, "hits")
            replies = pipe.execute()
            for length, n in zip(replies[::2], replies[1::2], strict=True):
                entries, size, hits = entries + 1, size + int(length), hits + int(n or 0)
        return {"entries": entries, "bytes": size, "hits": hits}

    def clear(self, seed: str | None = None) -> int:
        n = 0
        for batch in _chunks(self._keys(CACHE_PREFIX if seed is None else seed_prefix(seed)), 500):
            n += int(self.client.unlink(*batch))
        return n

    def close(self) -> None:
        self.client.close()


def _chunks(items: Iterable[bytes], size: int) -> Iterable[list[bytes]]:
    batch: list[bytes] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
