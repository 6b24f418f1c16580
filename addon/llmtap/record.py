"""The one shape that crosses from the hooks to the writer, and how it becomes a row.

Hooks build a `Capture` from what they already hold (raw bytes, timestamps, redacted headers) and
queue it; nothing here runs on the event loop except the constructor. `to_row` runs in the writer
thread: it decodes bodies, finds usage, prices the call and produces the `requests` row.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mitmproxy.net import encoding as net_encoding

from . import pricing, usage
from .headers import CallMeta
from .providers import path_model

logger = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "request_id",
    "created_at",
    "source",
    "provider",
    "api",
    "endpoint",
    "host",
    "method",
    "path",
    "model",
    "requested_model",
    "status",
    "streamed",
    "latency_ms",
    "ttft_ms",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "usage_source",
    "cost_usd",
    "cost_note",
    "prices_version",
    "user_id",
    "session_id",
    "session_path",
    "session_name",
    "properties",
    "request_headers",
    "request_body",
    "response_body",
    "error",
)
TYPES: tuple[str, ...] = (
    "VARCHAR",
    "TIMESTAMPTZ",
    "VARCHAR",
    "VARCHAR",
    "VARCHAR",
    "VARCHAR",
    "VARCHAR",
    "VARCHAR",
    "VARCHAR",
    "VARCHAR",
    "VARCHAR",
    "INTEGER",
    "BOOLEAN",
    "DOUBLE",
    "DOUBLE",
    "BIGINT",
    "BIGINT",
    "BIGINT",
    "BIGINT",
    "BIGINT",
    "VARCHAR",
    "DECIMAL(18,9)",
    "VARCHAR",
    "VARCHAR",
    "VARCHAR",
    "VARCHAR",
    "VARCHAR",
    "VARCHAR",
    "JSON",
    "JSON",
    "VARCHAR",
    "VARCHAR",
    "VARCHAR",
)


@dataclass(slots=True)
class Capture:
    meta: CallMeta
    provider: str
    api: str
    price_id: str | None
    inferred: bool
    endpoint: str | None
    host: str
    method: str
    path: str
    started: float  # epoch seconds, request start
    request_headers: dict[str, str]
    request_body: bytes
    store_limit: int = 1_000_000  # bytes of each body kept in the row
    streamed: bool = False
    status: int | None = None
    response_body: bytes = b""
    content_encoding: str | None = None
    truncated: bool = False
    latency_ms: float | None = None
    ttft_ms: float | None = None
    error: str | None = None
    extra_notes: list[str] = field(default_factory=list)


def to_row(c: Capture) -> tuple[Any, ...]:
    """The `requests` row for a capture, in COLUMNS order. Never raises for bad bodies."""
    at = datetime.fromtimestamp(c.started, UTC)
    response = _decode(c.response_body, c.content_encoding)
    request = _loads(c.request_body)
    requested_model = request.get("model") if isinstance(request, dict) else None
    if not isinstance(requested_model, str):
        requested_model = None
    ok = c.status is not None and 200 <= c.status < 300
    tokens = usage.account(c.api, c.endpoint, c.streamed, ok, c.request_body, response)
    model = tokens.model or requested_model or path_model(c.api, c.path)
    cost = pricing.price(tokens, model, c.price_id, c.provider, at)
    notes = [n for n in (cost.note, *c.extra_notes) if n]
    if c.inferred and cost.usd is not None and tokens.provider_cost is None:
        notes.append(f"priced as {c.price_id}: host {c.host} is not a known provider")
    if c.truncated:
        notes.append("response body larger than llmtap_max_body: stored head and tail only")
    u = tokens.usage
    # An estimate knows only input and output; the cache and reasoning parts stay unknown.
    known = tokens.source != "estimated"
    return as_row(
        request_id=c.meta.request_id,
        created_at=at,
        source="proxy",
        provider=c.provider,
        api=c.api,
        endpoint=c.endpoint,
        host=c.host,
        method=c.method,
        path=c.path,
        model=model,
        requested_model=requested_model,
        status=c.status,
        streamed=c.streamed,
        latency_ms=c.latency_ms,
        ttft_ms=c.ttft_ms,
        input_tokens=_int(u, "input_tokens"),
        output_tokens=_int(u, "output_tokens"),
        cache_read_tokens=_int(u, "cache_read_tokens") if known else None,
        cache_write_tokens=_int(u, "cache_write_tokens") if known else None,
        reasoning_tokens=_int(u, "output_reasoning_tokens") if known else None,
        usage_source=tokens.source,
        cost_usd=cost.usd,
        cost_note="; ".join(notes) or None,
        prices_version=pricing.VERSION,
        user_id=c.meta.user_id or (_str(request.get("user")) if isinstance(request, dict) else None),
        session_id=c.meta.session_id,
        session_path=c.meta.session_path,
        session_name=c.meta.session_name,
        properties=json.dumps(c.meta.properties),
        request_headers=json.dumps(c.request_headers),
        request_body=None if c.meta.omit_request else _text(c.request_body[: c.store_limit]),
        response_body=None if c.meta.omit_response else _text(response[: c.store_limit]),
        error=c.error,
    )


def as_row(**values: Any) -> tuple[Any, ...]:
    """A row in COLUMNS order; columns not given are NULL, unknown names are a bug."""
    unknown = values.keys() - set(COLUMNS)
    if unknown:
        raise KeyError(f"not a requests column: {sorted(unknown)}")
    return tuple(values.get(name) for name in COLUMNS)


def _int(u: object, name: str) -> int | None:
    value = getattr(u, name, None) if u is not None else None
    return int(value) if value is not None else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _text(body: bytes) -> str | None:
    return body.decode("utf-8", "replace") if body else None


def _decode(body: bytes, encoding: str | None) -> bytes:
    """Undo the response's content-encoding (gzip, deflate, br, zstd) when there is one."""
    if not body or not encoding or encoding == "identity":
        return body
    try:
        return net_encoding.decode(body, encoding)
    except Exception as e:
        logger.warning(f"llmtap: could not decode {encoding} response body: {e}")
        return body
