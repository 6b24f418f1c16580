"""Policy values shared by rules.yaml and request headers: cache, rate limit, retry.

Each policy is a frozen dataclass built by a pure `*_policy(mapping, where)` function that raises
`PolicyError(field, reason)` with the field path and the bad value; rules.py adds the file name,
the header parsers name the header. Durations are written like `1h`, `60s`, `500ms`, `7d` (a bare
number is seconds).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_CACHE_TTL = 7 * 24 * 3600.0  # Helicone's default
MAX_CACHE_TTL = 365 * 24 * 3600.0
MAX_BUCKET = 20
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class PolicyError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass(frozen=True, slots=True)
class CachePolicy:
    ttl: float = DEFAULT_CACHE_TTL
    bucket_max_size: int = 1
    seed: str = ""
    ignore_keys: tuple[str, ...] = ()
    read: bool = True
    save: bool = True


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    quota: float
    window: float  # seconds
    unit: str = "request"  # request | cents | tokens
    segment: str | None = None  # None (global) | "user" | a property name

    def spec(self) -> str:
        """Helicone's normalised form: `100;w=60;s=user` (u=request and the global segment dropped)."""
        parts = [plain_number(self.quota), f"w={plain_number(self.window)}"]
        if self.unit != "request":
            parts.append(f"u={self.unit}")
        if self.segment:
            parts.append(f"s={self.segment}")
        return ";".join(parts)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    num: int = 5  # attempts in all, Helicone's default
    factor: float = 2.0
    min_timeout: float = 1.0
    max_timeout: float = 10.0


def plain_number(x: float) -> str:
    """A number as Helicone's grammar writes it: never in exponent form."""
    return str(int(x)) if x == int(x) else repr(x)


def duration(value: Any, field: str, example: str = "1h") -> float:
    """Seconds from `1h` / `60s` / `500ms` / `7d` / a number of seconds."""
    if isinstance(value, bool):
        raise PolicyError(field, f"expected a duration like '{example}', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(value) if isinstance(value, str) else None
        if m is None:
            raise PolicyError(field, f"expected a duration like '{example}', got {value!r}")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise PolicyError(field, f"expected a duration like '{example}', got {value!r}")
    return seconds


def _only(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        key = sorted(unknown)[0]
        raise PolicyError(f"{where}.{key}", f"unknown key (expected {', '.join(sorted(allowed))})")


def _mapping(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PolicyError(where, f"expected a mapping, got {data!r}")
    return data


def _int_in(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PolicyError(field, f"expected a whole number from {low} to {high}, got {value!r}")
    return value


def _number(value: Any, field: str, low: float, high: float = math.inf) -> float:
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if bad or not math.isfinite(value) or not low <= value <= high:
        bound = f"at least {low:g}" if high == math.inf else f"from {low:g} to {high:g}"
        raise PolicyError(field, f"expected a number {bound}, got {value!r}")
    return float(value)


def cache_policy(data: Any, where: str) -> CachePolicy:
    data = _mapping(data, where)
    _only(data, {"ttl", "bucket_max_size", "seed", "ignore_keys", "read", "save"}, where)
    ttl = duration(data.get("ttl", DEFAULT_CACHE_TTL), f"{where}.ttl")
    if not 1 <= ttl <= MAX_CACHE_TTL:
        raise PolicyError(f"{where}.ttl", f"expected a duration from 1s to 365d, got {data.get('ttl')!r}")
    bucket = _int_in(data.get("bucket_max_size", 1), f"{where}.bucket_max_size", 1, MAX_BUCKET)
    seed = data.get("seed", "")
    if not isinstance(seed, str | int) or isinstance(seed, bool):
        raise PolicyError(f"{where}.seed", f"expected a string, got {seed!r}")
    keys = data.get("ignore_keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise PolicyError(f"{where}.ignore_keys", f"expected a list of body keys, got {keys!r}")
    flags = {}
    for flag in ("read", "save"):
        flags[flag] = data.get(flag, True)
        if not isinstance(flags[flag], bool):
            raise PolicyError(f"{where}.{flag}", f"expected true or false, got {flags[flag]!r}")
    return CachePolicy(ttl, bucket, str(seed), tuple(keys), flags["read"], flags["save"])


def rate_limit_policy(data: Any, where: str) -> RateLimitPolicy:
    data = _mapping(data, where)
    _only(data, {"quota", "window", "unit", "segment"}, where)
    if "quota" not in data or "window" not in data:
        raise PolicyError(where, "needs quota and window, e.g. {quota: 100, window: 60s}")
    raw_quota = data["quota"]
    if isinstance(raw_quota, bool) or not isinstance(raw_quota, int | float) or not raw_quota > 0:
        raise PolicyError(f"{where}.quota", f"expected a number above 0, got {raw_quota!r}")
    quota = _number(raw_quota, f"{where}.quota", 0)
    window = duration(data["window"], f"{where}.window", "60s")
    if not 60 <= window <= 31_536_000:
        raise PolicyError(f"{where}.window", f"expected a duration from 60s to 365d, got {data['window']!r}")
    unit = data.get("unit", "request")
    if unit not in ("request", "cents", "tokens"):
        raise PolicyError(f"{where}.unit", f"expected request, cents or tokens, got {unit!r}")
    segment = data.get("segment")
    if segment is not None and (not isinstance(segment, str) or not segment.strip()):
        raise PolicyError(f"{where}.segment", f"expected 'user' or a property name, got {segment!r}")
    return RateLimitPolicy(quota, window, unit, segment.strip().lower() if segment else None)


def retry_policy(data: Any, where: str) -> RetryPolicy:
    data = _mapping(data, where)
    _only(data, {"num", "factor", "min_timeout", "max_timeout"}, where)
    num = _int_in(data.get("num", 5), f"{where}.num", 1, 20)
    factor = _number(data.get("factor", 2), f"{where}.factor", 1, 10)
    low = duration(data.get("min_timeout", 1.0), f"{where}.min_timeout", "1s")
    high = duration(data.get("max_timeout", 10.0), f"{where}.max_timeout", "10s")
    if high < low:
        raise PolicyError(
            f"{where}.max_timeout", f"must not be below min_timeout, got {data.get('max_timeout')!r}"
        )
    return RetryPolicy(num, factor, low, high)


@dataclass(frozen=True, slots=True)
class Fallback:
    """One `Helicone-Fallbacks` entry: another target to try, Helicone's shape."""

    target_url: str
    headers: tuple[tuple[str, str], ...] = ()  # values may hold ${ENV_VAR}, expanded at use
    on_codes: tuple[tuple[int, int], ...] = ()  # inclusive ranges; leaving this entry for the next
    body_override: tuple[tuple[str, Any], ...] = ()

    def leaves_on(self, status: int | None) -> bool:
        return status is None or any(lo <= status <= hi for lo, hi in self.on_codes)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: str, env: Mapping[str, str]) -> str:
    """`${NAME}` from the environment, so keys stay out of rules.yaml; a missing one is an error."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise PolicyError("headers", f"environment variable {m.group(1)} is not set")
        return env[m.group(1)]

    return _ENV.sub(sub, value)


def fallbacks_policy(data: Any, where: str) -> tuple[Fallback, ...]:
    if not isinstance(data, list) or not data:
        raise PolicyError(where, f"expected a non-empty list of fallback entries, got {data!r}")
    return tuple(_fallback(entry, f"{where}[{i}]") for i, entry in enumerate(data))


def _fallback(data: Any, where: str) -> Fallback:
    data = _mapping(data, where)
    _only(data, {"target-url", "headers", "onCodes", "bodyKeyOverride"}, where)
    url = data.get("target-url")
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        raise PolicyError(f"{where}.target-url", f"expected an http(s) URL, got {url!r}")
    headers = data.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise PolicyError(
            f"{where}.headers", f"expected a mapping of header names to strings, got {headers!r}"
        )
    listed = data.get("onCodes", [])
    if not isinstance(listed, list):
        raise PolicyError(
            f"{where}.onCodes", f"expected a list of statuses or {{from, to}} ranges, got {listed!r}"
        )
    codes = []
    for j, code in enumerate(listed):
        if isinstance(code, int) and not isinstance(code, bool):
            codes.append((code, code))
        elif (
            isinstance(code, dict)
            and set(code) == {"from", "to"}
            and all(isinstance(code[k], int) for k in ("from", "to"))
        ):
            codes.append((code["from"], code["to"]))
        else:
            raise PolicyError(f"{where}.onCodes[{j}]", f"expected a status or {{from, to}}, got {code!r}")
    override = data.get("bodyKeyOverride", {})
    if not isinstance(override, dict):
        raise PolicyError(f"{where}.bodyKeyOverride", f"expected a mapping, got {override!r}")
    return Fallback(url.rstrip("/"), tuple(headers.items()), tuple(codes), tuple(override.items()))
