"""When to retry a call and how long to wait (Helicone's defaults and backoff; reference §4).

Retried: 429, any 5xx, connection errors and timeouts (`status` None). Never other 4xx. The wait
before attempt k+1 is Helicone's jittered exponential backoff,
`min((1 + random()) * min_timeout * factor**k, max_timeout)`, unless the provider said how long
to wait: `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date, honoured up to 60 s.
All waits of one call together are capped at `MAX_TOTAL_WAIT`; past it the last response stands.
Pure functions; the random source is injectable.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime

from llmtap.policy.values import RetryPolicy
from llmtap.wire.helicone import HeaderError

MAX_PROVIDER_WAIT = 60.0
MAX_TOTAL_WAIT = 120.0


def retryable(status: int | None) -> bool:
    return status is None or status == 429 or status >= 500


def backoff(policy: RetryPolicy, attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt number `attempt` (0-based)."""
    return min((1 + rng()) * max(policy.min_timeout, 0.001) * policy.factor**attempt, policy.max_timeout)


def provider_wait(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """The provider's own `retry-after-ms` / `Retry-After`, if it gave one we should honour."""
    lowered = {k.lower(): v for k, v in headers.items()}
    value: float | None = None
    if "retry-after-ms" in lowered:
        try:
            value = float(lowered["retry-after-ms"]) / 1000
        except ValueError:
            value = None
    if value is None and "retry-after" in lowered:
        raw = lowered["retry-after"].strip()
        try:
            value = float(raw)
        except ValueError:
            try:
                value = parsedate_to_datetime(raw).timestamp() - now()
            except (TypeError, ValueError):
                value = None
    if value is None or not math.isfinite(value) or value < 0 or value > MAX_PROVIDER_WAIT:
        return None
    return value


def wait_before_next(
    policy: RetryPolicy,
    attempt: int,
    status: int | None,
    headers: Mapping[str, str],
    waited: float,
    rng: Callable[[], float] = random.random,
) -> float | None:
    """Seconds to wait before another attempt, or None when the call should not be retried."""
    if not retryable(status) or attempt + 1 >= policy.num:
        return None
    delay = provider_wait(headers)
    if delay is None:
        delay = backoff(policy, attempt, rng)
    if waited + delay > MAX_TOTAL_WAIT:
        return None
    return delay


HEADERS = {
    "helicone-retry-num": "Helicone-Retry-Num",
    "helicone-retry-factor": "Helicone-Retry-Factor",
    "helicone-retry-min-timeout": "Helicone-Retry-Min-Timeout",
    "helicone-retry-max-timeout": "Helicone-Retry-Max-Timeout",
}


def policy_for(headers: Mapping[str, str], rule: RetryPolicy | None) -> RetryPolicy | None:
    """`Helicone-Retry-Enabled: true` (+ -Num, -Factor, -Min-Timeout / -Max-Timeout in ms) or a rule's.

    Headers override the rule's fields; `Helicone-Retry-Enabled: false` turns a rule's retries off.
    """
    enabled = (headers.get("helicone-retry-enabled") or "").strip().lower()
    if enabled == "false" or (rule is None and enabled != "true"):
        return None
    base = rule or RetryPolicy()
    # Helicone counts attempts in all; `Helicone-Retry-Num: 0` means no retries, like 1.
    num = max(1, _header_number(headers, "helicone-retry-num", base.num, 0, 20, whole=True))
    factor = _header_number(headers, "helicone-retry-factor", base.factor, 1, 10)
    low = _header_number(headers, "helicone-retry-min-timeout", base.min_timeout * 1000, 0, 600_000) / 1000
    high = _header_number(headers, "helicone-retry-max-timeout", base.max_timeout * 1000, 0, 600_000) / 1000
    if high < low:
        raise HeaderError(
            "Helicone-Retry-Max-Timeout", f"must not be below the min timeout ({low * 1000:g} ms)"
        )
    return RetryPolicy(int(num), factor, low, high)


def _header_number(
    headers: Mapping[str, str], name: str, default: float, low: float, high: float, whole: bool = False
) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw) if not whole else int(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        raise HeaderError(HEADERS[name], f"expected {kind} from {low:g} to {high:g}, got {raw!r}")
    return value
