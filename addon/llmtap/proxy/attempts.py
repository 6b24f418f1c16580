"""Retries and fallbacks: the attempts llmtap makes itself, and what each one did.

The primary target is tried up to `retry.num` times in all (retry.py decides the waits, which are
`asyncio.sleep`s: other clients keep flowing while one call backs off). If its last outcome is
still one a retry would have answered (429, 5xx, no response) the fallbacks are tried in order,
once each: entry i's request headers are the original ones with the API-key headers removed and
the entry's `headers` applied (`${ENV}` expanded), `bodyKeyOverride` is merged into a JSON body,
and the path and query are kept. As in Helicone, a fallback whose status matches its own `onCodes`
(or that gets no response) hands over to the next; the last one's response stands.
`first` lets mitmproxy's own first attempt (which streamed nothing, because it failed) count.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from llmtap.policy import retry
from llmtap.policy.cache_keys import AUTH_HEADERS
from llmtap.policy.values import Fallback, PolicyError, RetryPolicy, expand_env, fallbacks_policy
from llmtap.proxy import upstream
from llmtap.proxy.upstream import Reply
from llmtap.wire.helicone import HeaderError

_KEY_HEADERS = frozenset(AUTH_HEADERS)  # the headers that carry an API key, as the cache key reads them


@dataclass(slots=True)
class Outcome:
    reply: Reply
    attempts: list[dict[str, Any]] = field(default_factory=list)
    retries: int = 0
    fallback_index: int | None = None


@dataclass(frozen=True, slots=True)
class Target:
    method: str
    url: str  # full URL of the primary, query included
    headers: list[tuple[str, str]]
    body: bytes


async def deliver(
    target: Target,
    policy: RetryPolicy | None,
    fallbacks: tuple[Fallback, ...],
    tls: ssl.SSLContext,
    timeout: float,
    first: Reply | None = None,
    env: Mapping[str, str] = os.environ,
) -> Outcome:
    out = Outcome(first or Reply(None))
    attempts = policy.num if policy else 1
    waited = 0.0
    for attempt in range(attempts):
        if attempt > 0 or first is None:
            out.reply = await upstream.send(
                target.method, target.url, target.headers, target.body, tls, timeout
            )
        _note(out, "primary", attempt, target.url)
        delay = retry.wait_before_next(policy, attempt, out.reply.status, out.reply.header_map(), waited) if (
            policy
        ) else None  # fmt: skip
        if delay is None:
            break
        waited += delay
        out.retries += 1
        await asyncio.sleep(delay)
    if not fallbacks or not retry.retryable(out.reply.status):
        return out
    for i, fb in enumerate(fallbacks):
        try:
            url, headers, body = _fallback_request(target, fb, env)
        except PolicyError as e:
            out.attempts.append({"target": f"fallback {i}", "status": None, "error": str(e)})
            continue
        out.reply = await upstream.send(target.method, url, headers, body, tls, timeout)
        out.fallback_index = i
        _note(out, f"fallback {i}", 0, url)
        if not fb.leaves_on(out.reply.status):
            break
    return out


def _note(out: Outcome, target: str, attempt: int, url: str) -> None:
    r = out.reply
    out.attempts.append(
        {"target": target, "attempt": attempt, "host": urlsplit(url).netloc, "status": r.status,
         "latency_ms": round(r.latency_ms, 1), "error": r.error}
    )  # fmt: skip


def _fallback_request(
    target: Target, fb: Fallback, env: Mapping[str, str]
) -> tuple[str, list[tuple[str, str]], bytes]:
    parts = urlsplit(target.url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    extra = {name.lower(): expand_env(value, env) for name, value in fb.headers}
    headers = [(k, v) for k, v in target.headers if k.lower() not in _KEY_HEADERS and k.lower() not in extra]
    headers += [(name, value) for name, value in extra.items()]
    body = target.body
    if fb.body_override:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            doc.update(dict(fb.body_override))
            body = json.dumps(doc, separators=(",", ":")).encode()
    return fb.target_url + path, headers, body


def fallbacks_for(headers: Mapping[str, str], rule: tuple[Fallback, ...]) -> tuple[Fallback, ...]:
    """`Helicone-Fallbacks` (a JSON array, Helicone's shape) wins over a rule's `fallbacks:`."""
    raw = headers.get("helicone-fallbacks")
    if raw is None:
        return rule
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise HeaderError("Helicone-Fallbacks", f"not valid JSON: {e}") from None
    try:
        return fallbacks_policy(data, "")
    except PolicyError as e:  # field is "" for the list itself, else like "[0].target-url"
        raise HeaderError("Helicone-Fallbacks", f"{e.field}: {e.reason}" if e.field else e.reason) from None
