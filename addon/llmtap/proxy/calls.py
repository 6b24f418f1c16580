"""One call's life on the proxy, from its request to the capture handed to the writer.

`Call` is the state the addon keeps per flow, by flow id (`flow.metadata` holds primitives only).
`open_capture` builds the call's `Capture` from its request, stripping the proxy-only headers
first, so no later failure can leak them upstream, and redacting secrets; `prepare_stream` sets a
streamed call up for the tee; `close_capture` fills in what the response, the tee or llmtap's own
attempts left; `abandon` closes a call still in flight when the proxy stops. Nothing here waits.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from mitmproxy import http

from llmtap.accounting.record import Capture
from llmtap.policy import ratelimit, rules
from llmtap.policy.redact import redact_headers
from llmtap.policy.values import Fallback, RetryPolicy
from llmtap.proxy.fleet import Asked
from llmtap.proxy.stream import StreamTee
from llmtap.wire import helicone, providers

SHUT_DOWN = "proxy shut down before the call finished"


@dataclass(slots=True)
class Call:
    provider: providers.Provider
    host: str
    path: str  # redacted
    capture: Capture | None = None
    tee: StreamTee | None = None
    retry: RetryPolicy | None = None
    fallbacks: tuple[Fallback, ...] = ()
    rate_headers: dict[str, str] = field(default_factory=dict)
    charge: list[ratelimit.Limit] = field(default_factory=list)  # cents/tokens buckets to charge after
    upstream_body: bytes | None = None  # what our own client received, before the client's view
    delivered: bool = False  # llmtap's own attempts already produced the response
    early: Early | None = None  # in a fleet, the limits' verdict asked for from the headers

    @property
    def delivers(self) -> bool:
        return self.retry is not None or bool(self.fallbacks)


@dataclass(frozen=True, slots=True)
class RequestHeaders:
    """A request's headers as llmtap reads them (`read_headers`)."""

    raw: tuple[tuple[bytes, bytes], ...]  # mitmproxy's own: a new tuple whenever a header changes
    fields: list[tuple[str, str]]
    by_name: dict[str, str]  # lowercased names
    meta: helicone.CallMeta


@dataclass(frozen=True, slots=True)
class Early:
    """A fleet's verdict on a call's limits, asked for in `requestheaders` (proxy/addon.py), and
    the headers it was asked from (read again in `request` only if an addon changed them)."""

    limits: list[ratelimit.Limit]
    asked: Asked
    headers: RequestHeaders


def read_headers(req: http.Request) -> RequestHeaders:
    fields = list(req.headers.items(multi=True))
    by_name = {name.lower(): value for name, value in fields}
    return RequestHeaders(req.headers.fields, fields, by_name, helicone.parse(fields))


def open_capture(flow: http.HTTPFlow, call: Call, max_body: int) -> tuple[Capture, dict[str, str]]:
    """The call's capture, and its request headers by lowercased name."""
    req = flow.request
    early = call.early.headers if call.early is not None else None
    read = early if early is not None and early.raw is req.headers.fields else read_headers(req)
    fields = read.fields
    # Names from `by_name`: Headers.keys() costs ~50 us (it looks every name up again).
    for name in helicone.proxy_only(read.by_name.keys()):
        del req.headers[name]
    api = call.provider.api
    call.capture = Capture(
        meta=read.meta,
        provider=call.provider.name,
        api=api,
        price_id=call.provider.price_id,
        inferred=call.provider.inferred,
        endpoint=providers.endpoint(api, req.path),
        host=call.host,
        method=req.method,
        path=call.path,
        started=req.timestamp_start,
        request_headers=redact_headers(fields),
        request_body=req.raw_content or b"",
        store_limit=max_body,
    )
    return call.capture, read.by_name


def authorized(meta: helicone.CallMeta, access_key: str) -> bool:
    """`Helicone-Auth: Bearer <llmtap_access_key>` when a key is set (compared in constant time)."""
    return not access_key or hmac.compare_digest(meta.auth or "", f"Bearer {access_key}")


def match_request(
    flow: http.HTTPFlow, call: Call, meta: helicone.CallMeta, body: bytes | None
) -> rules.Request:
    """What rules match on; `body` is given only when a rule looks at the model or the user."""
    model = user = None
    if body is not None:
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            model = doc.get("model") if isinstance(doc.get("model"), str) else None
            user = doc.get("user") if isinstance(doc.get("user"), str) else None
        model = model or providers.path_model(call.provider.api, flow.request.path)
    return rules.Request(
        provider=call.provider.name,
        host=call.host,
        path=flow.request.path.split("?", 1)[0],
        method=flow.request.method,
        model=model,
        user=meta.user_id or user,
        properties=meta.properties,
    )


def prepare_stream(req: http.Request, call: Call, c: Capture, add_usage: bool) -> None:
    """A streamed call reaches the tee uncompressed, and asks for its final usage where the host
    needs to be asked (`add_usage`: option `llmtap_stream_usage`)."""
    c.streamed = providers.wants_stream(c.api, c.endpoint, c.request_body)
    if not c.streamed:
        return
    req.headers["accept-encoding"] = "identity"  # the tee reads the events as they pass
    if (
        add_usage
        and call.provider.stream_usage
        and providers.needs_usage_injection(c.api, c.endpoint, c.request_body)
    ):
        c.strip_usage = _inject_include_usage(req)


def tees(resp: http.Response, c: Capture) -> bool:
    """A 2xx event stream (or Gemini's JSON-array stream) goes through the tee."""
    return 200 <= resp.status_code < 300 and (
        is_event_stream(resp.headers) or c.endpoint == "stream_generate"
    )


def is_event_stream(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").startswith("text/event-stream")


def close_capture(flow: http.HTTPFlow, call: Call, error: str | None) -> Capture:
    """The capture with what the call ended with: status, body (the tee's for a stream), timing."""
    c = call.capture
    assert c is not None
    resp = flow.response
    end = time.time()
    if resp is not None:
        c.status = resp.status_code
        c.content_encoding = resp.headers.get("content-encoding")
        c.content_type = resp.headers.get("content-type")
        end = resp.timestamp_end or end
    if call.tee is not None:
        _take_tee(c, call.tee)
        if call.tee.first_token_at is not None:
            c.ttft_ms = (call.tee.first_token_at - c.started) * 1000
        if call.tee.failed:
            c.extra_notes.append(call.tee.failed)
        if error is None and not call.tee.ended:
            error = "stream ended early"
    elif call.upstream_body is not None:  # its encoding is the response's (attempts.identity)
        c.response_body = call.upstream_body
    elif resp is not None:
        c.response_body = resp.raw_content or b""
    c.latency_ms = (end - c.started) * 1000
    c.error = error
    return c


def abandon(call: Call) -> Capture | None:
    """A call still in flight when the proxy stops: recorded with what it had, and why it ended."""
    c = call.capture
    if c is None:
        return None
    if call.tee is not None:
        _take_tee(c, call.tee)
    c.latency_ms = (time.time() - c.started) * 1000
    c.error = SHUT_DOWN
    return c


def _take_tee(c: Capture, tee: StreamTee) -> None:
    c.streamed = True
    c.response_body, c.truncated = tee.body(), tee.truncated


def _inject_include_usage(req: http.Request) -> bool:
    """Ask for the final usage chunk; True when the body was changed (the tee then hides it)."""
    try:
        body = json.loads(req.get_content(strict=False) or b"")
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    opts = body.get("stream_options")
    body["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    req.content = json.dumps(body, separators=(",", ":")).encode()
    return True
