"""Retries and fallbacks: the attempts llmtap makes itself, and what each one did.

The primary target is tried up to `retry.num` times in all (retry.py decides the waits, which are
`asyncio.sleep`s: other clients keep flowing while one call backs off). If its last outcome is
still one a retry would have answered (429, 5xx, no response) the fallbacks are tried in order,
once each: entry i's request headers are the original ones with the API-key headers removed and
the entry's `headers` applied (`${ENV}` expanded), `bodyKeyOverride` is merged into a JSON body,
and the path and query are kept. As in Helicone, a fallback whose status matches its own `onCodes`
(or that gets no response) hands over to the next; the last one's response stands.
`first` lets mitmproxy's own first attempt (which streamed nothing, because it failed) count.
`answer` makes a call's attempts and sets what they got as the flow's response: decoded, so that
body and `content-encoding` always agree for the client, whatever it accepted.
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

from mitmproxy import http
from mitmproxy.net import encoding as net_encoding

from llmtap.policy import retry
from llmtap.policy.cache_keys import AUTH_HEADERS
from llmtap.policy.values import Fallback, PolicyError, RetryPolicy, expand_env, fallbacks_policy
from llmtap.proxy import replies, upstream
from llmtap.proxy.calls import Call, is_event_stream
from llmtap.proxy.upstream import Reply
from llmtap.wire.helicone import HeaderError
from llmtap.wire.stream_usage import client_view_of

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


async def answer(flow: http.HTTPFlow, call: Call, first: Reply | None, tls: ssl.SSLContext) -> None:
    """Make the call's attempts (retries, then fallbacks) and set the outcome as its response."""
    c = call.capture
    assert c is not None
    req = flow.request
    target = Target(req.method, req.url, list(req.headers.items(multi=True)), req.raw_content or b"")
    call.delivered = True
    out = await deliver(target, call.retry, call.fallbacks, tls, timeout=600.0, first=first)
    c.retries, c.attempts, c.fallback_index = out.retries, out.attempts, out.fallback_index
    reply = out.reply
    if reply.status is None:
        flow.response = replies.error(
            c.api, 502, f"llmtap: no response after {len(out.attempts)} attempts: {reply.error}"
        )
        return
    body, fields = identity(reply)
    call.upstream_body = body
    if is_event_stream(reply.header_map()) and c.strip_usage and 200 <= reply.status < 300:
        body = client_view_of(body)
    flow.response = http.Response.make(reply.status, b"", fields)
    flow.response.raw_content = body  # as is: `content` would encode it by content-encoding
    flow.response.headers["content-length"] = str(len(body))
    if out.fallback_index is not None:
        flow.response.headers["helicone-fallback-index"] = str(out.fallback_index)
    flow.response.headers.update(call.rate_headers)
    flow.response.headers["helicone-id"] = c.meta.request_id


def first_reply(resp: http.Response) -> Reply:
    """mitmproxy's own first attempt at a streamed call, which failed before streaming anything."""
    return Reply(resp.status_code, list(resp.headers.items(multi=True)), resp.raw_content or b"")


def identity(reply: Reply) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The body llmtap's own client received, decoded, and its headers without content-encoding:
    body and header then always agree (identity is acceptable to every client), and the row reads
    the usage from plain JSON. A body that cannot be decoded goes out exactly as it came."""
    fields = [(k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in reply.headers]
    encoding = reply.header_map().get("content-encoding", "identity").strip().lower()
    if encoding == "identity" or not reply.body:
        return reply.body, fields
    try:
        body = net_encoding.decode(reply.body, encoding)
    except (ValueError, LookupError):
        return reply.body, fields
    return body, [(k, v) for k, v in fields if k.lower() != b"content-encoding"]
