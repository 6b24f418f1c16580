"""Rate limits: Helicone's token bucket, several policies at once, state behind one small interface.

A policy comes from a rule (every matching rule's `rate_limit` applies) or from the
`Helicone-RateLimit-Policy: quota;w=window;u=unit;s=segment` header. Bucket semantics follow
Helicone (reference/helicone.md §5): capacity = quota, refilled at quota/window per second.
- `u=request` (default): checked and deducted before the call; a denied call consumes nothing.
- `u=cents` / `u=tokens` (tokens: llmtap's addition): admitted while the bucket is above zero and
  charged with the call's real cost / tokens once it completes, so a bucket may go negative.
A call is admitted only if every applicable policy admits it; cache hits are never charged.

Unlike Helicone, which fails open, a malformed policy header, or one segmented by a header the
request does not carry, is answered with a 400 naming the header. A rule segmented by user or
property applies to requests without that value as one shared bucket (`segment: (none)`).

`Buckets` is the in-process state (`MemoryBuckets`): its clock is injectable, and it is thread-safe
(charges arrive from a worker thread). A fleet keeps the same buckets in Redis instead, with the
same arithmetic in a server-side script (fleet/redisstate.py); `states` reads either's levels.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from llmtap.policy.values import PolicyError, RateLimitPolicy, plain_number, rate_limit_policy
from llmtap.wire.helicone import HeaderError

HEADER = "Helicone-RateLimit-Policy"
_QUOTA = re.compile(r"^\d+(\.\d+)?$")
_SEGMENT = re.compile(r"^[\w-]+$")


@dataclass(frozen=True, slots=True)
class Limit:
    """One policy applied to one request: the bucket it draws from."""

    key: str  # policy identity + segment value
    policy: RateLimitPolicy
    source: str  # "rule <name>" or the header


@dataclass(frozen=True, slots=True)
class State:
    limit: Limit
    remaining: float
    reset: float  # seconds until the bucket is full again
    retry_after: float  # seconds until this bucket would admit a call (0 if it does now)


class Buckets(Protocol):
    def level(self, key: str, policy: RateLimitPolicy) -> float: ...
    def take(self, key: str, policy: RateLimitPolicy, amount: float) -> None: ...
    def lock(self) -> threading.Lock: ...


class MemoryBuckets:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._levels: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)
        self._lock = threading.Lock()

    def lock(self) -> threading.Lock:
        return self._lock

    def level(self, key: str, policy: RateLimitPolicy) -> float:
        now = self.clock()
        tokens, when = self._levels.get(key, (policy.quota, now))
        return min(policy.quota, tokens + (now - when) * policy.quota / policy.window)

    def take(self, key: str, policy: RateLimitPolicy, amount: float) -> None:
        self._levels[key] = (self.level(key, policy) - amount, self.clock())


@functools.lru_cache(maxsize=1024)  # a fleet's few policies, read on every call (~15 us each)
def parse_header(value: str) -> RateLimitPolicy:
    """Helicone's grammar, `100;w=60;u=request;s=user`; quota may be decimal."""
    parts = [p.strip() for p in value.split(";")]
    fields: dict[str, object] = {}
    if not _QUOTA.match(parts[0]):
        raise HeaderError(HEADER, f"expected quota;w=seconds[;u=unit][;s=segment], got {value!r}")
    fields["quota"] = float(parts[0])
    names = {"w": "window", "u": "unit", "s": "segment"}
    for part in parts[1:]:
        k, sep, v = part.partition("=")
        k = k.strip().lower()  # Helicone's grammar is case-insensitive
        if not sep or k not in names or names[k] in fields:
            raise HeaderError(HEADER, f"unexpected part {part!r} in {value!r} (expected w=, u=, s=)")
        fields[names[k]] = v.strip().lower() if k == "u" else v.strip()
    segment = fields.get("segment")
    if segment is not None and not _SEGMENT.match(str(segment)):
        raise HeaderError(HEADER, f"s must be user or a property name ([A-Za-z0-9_-]), got {segment!r}")
    if "window" not in fields:
        raise HeaderError(HEADER, f"missing w=<seconds> in {value!r}")
    window = str(fields["window"])
    if not window.isdigit() or not 60 <= int(window) <= 31_536_000:
        raise HeaderError(HEADER, f"w must be whole seconds from 60 to 31536000, got {window!r}")
    fields["window"] = int(window)
    try:
        return rate_limit_policy(fields, "policy")
    except PolicyError as e:
        raise HeaderError(HEADER, f"{e.reason} (in {value!r})") from None


def limits_for(
    rules: list[tuple[str, RateLimitPolicy]],
    header: str | None,
    user: str | None,
    properties: Mapping[str, str],
) -> list[Limit]:
    """The buckets a request draws from. Raises HeaderError for a bad or unsatisfiable header."""
    out = [Limit(_key(f"rule:{name}", p, _segment(p, user, properties) or "(none)"), p, f"rule {name}")
           for name, p in rules]  # fmt: skip
    if header is not None:
        policy = parse_header(header)
        value = _segment(policy, user, properties)
        if policy.segment and value is None:
            needs = "Helicone-User-Id" if policy.segment == "user" else f"Helicone-Property-{policy.segment}"
            raise HeaderError(HEADER, f"segment s={policy.segment} needs a {needs} header on the request")
        out.append(Limit(_key("header", policy, value or ""), policy, HEADER))
    return out


def _segment(policy: RateLimitPolicy, user: str | None, properties: Mapping[str, str]) -> str | None:
    if policy.segment is None:
        return ""
    if policy.segment == "user":
        return user
    return properties.get(policy.segment)


@functools.lru_cache(maxsize=4096)
def _key(origin: str, policy: RateLimitPolicy, segment: str) -> str:
    return f"{origin}|{policy.spec()}|{segment}"


def admit(buckets: Buckets, limits: list[Limit]) -> tuple[bool, list[State]]:
    """Check every bucket; deduct the request-unit ones only if all admit the call."""
    with buckets.lock():
        levels = [buckets.level(lim.key, lim.policy) for lim in limits]
        ok = all(_admits(lim.policy, lvl) for lim, lvl in zip(limits, levels, strict=True))
        if ok:
            for lim in limits:
                if lim.policy.unit == "request":
                    buckets.take(lim.key, lim.policy, 1)
            levels = [buckets.level(lim.key, lim.policy) for lim in limits]
    return ok, states(limits, levels)


def states(limits: list[Limit], levels: list[float]) -> list[State]:
    return [_state(lim, lvl) for lim, lvl in zip(limits, levels, strict=True)]


def charges(limits: list[Limit], cents: float | None, tokens: int | None) -> list[tuple[Limit, float]]:
    """What each cents / tokens bucket owes for a call that really cost this much."""
    out = []
    for lim in limits:
        amount = {"cents": cents, "tokens": tokens}.get(lim.policy.unit)
        if amount:
            out.append((lim, float(amount)))
    return out


def charge(buckets: Buckets, limits: list[Limit], cents: float | None, tokens: int | None) -> None:
    """Post-charge cents / tokens buckets with what the call really cost."""
    with buckets.lock():
        for lim, amount in charges(limits, cents, tokens):
            buckets.take(lim.key, lim.policy, amount)


def _admits(policy: RateLimitPolicy, level: float) -> bool:
    return level >= 1 if policy.unit == "request" else level > 0


def _state(limit: Limit, level: float) -> State:
    p = limit.policy
    rate = p.quota / p.window
    need = (1 if p.unit == "request" else 1e-9) - level
    return State(limit, level, max(0.0, (p.quota - level) / rate), max(0.0, need / rate))


def headers_for(states: list[State], limited: bool) -> dict[str, str]:
    """Helicone-RateLimit-* for the tightest bucket (plus Retry-After on a 429)."""
    if not states:
        return {}
    denying = [s for s in states if s.retry_after > 0]
    tight = (
        max(denying, key=lambda s: s.retry_after)
        if limited and denying
        else min(states, key=lambda s: s.remaining / s.limit.policy.quota)
    )
    out = {
        "Helicone-RateLimit-Limit": plain_number(tight.limit.policy.quota),
        "Helicone-RateLimit-Remaining": str(max(0, math.floor(tight.remaining))),
        "Helicone-RateLimit-Policy": tight.limit.policy.spec(),
    }
    if tight.reset > 0:
        out["Helicone-RateLimit-Reset"] = str(math.ceil(tight.reset))
    if limited:
        out["Retry-After"] = str(max(1, math.ceil(tight.retry_after)))
        out["X-Helicone-Error"] = "rate_limited"
    return out
