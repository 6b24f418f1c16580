"""The one shape that crosses from the hooks to the writer, and how it becomes a row.

Hooks build a `Capture` from what they already hold (raw bytes, timestamps, redacted headers) and
queue it; nothing here runs on the event loop except the constructor. `to_row` runs in the writer
thread: it decodes bodies, finds usage, prices the call and produces the `requests` row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from mitmproxy.net import encoding as net_encoding

from llmtap.accounting import pricing, usage
from llmtap.accounting.entry import Entry
from llmtap.policy.cache_keys import Lookup
from llmtap.wire.helicone import CallMeta
from llmtap.wire.providers import path_model
from llmtap.wire.stream_usage import client_view_of

logger = logging.getLogger(__name__)

# The `requests` columns the writer fills, with the types its batch insert casts to.
# (migrations.py owns the table itself; a unit test checks the two agree.)
ROW_SCHEMA: tuple[tuple[str, str], ...] = (
    ("request_id", "VARCHAR"),
    ("created_at", "TIMESTAMPTZ"),
    ("source", "VARCHAR"),
    ("provider", "VARCHAR"),
    ("api", "VARCHAR"),
    ("endpoint", "VARCHAR"),
    ("host", "VARCHAR"),
    ("method", "VARCHAR"),
    ("path", "VARCHAR"),
    ("model", "VARCHAR"),
    ("requested_model", "VARCHAR"),
    ("status", "INTEGER"),
    ("streamed", "BOOLEAN"),
    ("latency_ms", "DOUBLE"),
    ("ttft_ms", "DOUBLE"),
    ("input_tokens", "BIGINT"),
    ("output_tokens", "BIGINT"),
    ("cache_read_tokens", "BIGINT"),
    ("cache_write_tokens", "BIGINT"),
    ("reasoning_tokens", "BIGINT"),
    ("usage_source", "VARCHAR"),
    ("cost_usd", "DECIMAL(18,9)"),
    ("cost_note", "VARCHAR"),
    ("prices_version", "VARCHAR"),
    ("user_id", "VARCHAR"),
    ("session_id", "VARCHAR"),
    ("session_path", "VARCHAR"),
    ("session_name", "VARCHAR"),
    ("properties", "JSON"),
    ("request_headers", "JSON"),
    ("request_body", "VARCHAR"),
    ("response_body", "VARCHAR"),
    ("error", "VARCHAR"),
    ("cache_status", "VARCHAR"),
    ("cache_reference_id", "VARCHAR"),
    ("cost_saved_usd", "DECIMAL(18,9)"),
    ("rate_limited", "BOOLEAN"),
    ("retries", "INTEGER"),
    ("attempts", "JSON"),
    ("fallback_index", "INTEGER"),
    ("latency_saved_ms", "DOUBLE"),
    ("proxy_id", "VARCHAR"),
    ("rate_limit_store", "VARCHAR"),
)
COLUMNS: tuple[str, ...] = tuple(name for name, _ in ROW_SCHEMA)
TYPES: tuple[str, ...] = tuple(kind for _, kind in ROW_SCHEMA)


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
    content_type: str | None = None
    cache_status: str | None = None  # 'HIT' | 'MISS' when the request asked to read the cache
    hit: Entry | None = None  # the entry a hit was answered from
    hit_key: str | None = None
    hit_fresh: bool = False  # answered from the proxy's memory: the writer reads the tokens from the file
    cache_save: Lookup | None = None  # where to save a 2xx response
    cache_slot: int | None = None  # the slot the proxy holds it in until the writer saves it
    strip_usage: bool = False  # the client saw the stream without the injected usage chunk
    rate_limited: bool = False
    retries: int | None = None  # set when llmtap made the attempts itself
    attempts: list[dict[str, Any]] | None = None
    fallback_index: int | None = None
    source: str = "proxy"  # 'async' for calls logged after the fact through the local API
    proxy_id: str | None = None
    rate_limit_store: str | None = None  # 'redis' | 'local' when a rate limit applied

    @property
    def ended(self) -> float:
        """When the last byte arrived (epoch seconds); a cached response's TTL counts from here."""
        return self.started + (self.latency_ms or 0.0) / 1000

    @property
    def cacheable(self) -> bool:
        """A complete 2xx response whose client asked to save it."""
        ok = self.status is not None and 200 <= self.status < 300
        save = self.cache_save
        return save is not None and ok and not self.truncated and not self.error and save.policy.ttl > 0


@dataclass(frozen=True, slots=True)
class Feedback:
    request_id: str
    rating: bool
    at: datetime


@dataclass(frozen=True, slots=True)
class Score:
    request_id: str
    name: str
    value: int
    at: datetime


@dataclass(frozen=True, slots=True)
class PropertyUpdate:
    request_id: str
    key: str
    value: str


Annotation = Feedback | Score | PropertyUpdate


def annotation_rows(
    notes: Iterable[Annotation],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[str, str]]]:
    """What annotations write, whatever the database: `feedback` rows, `scores` rows, and the
    JSON patch (`{"key": value}`) and request id of each late property, in order."""
    notes = list(notes)
    feedback = [(n.request_id, n.rating, n.at) for n in notes if isinstance(n, Feedback)]
    scores = [(n.request_id, n.name, n.value, n.at) for n in notes if isinstance(n, Score)]
    patches = [(json.dumps({n.key: n.value}), n.request_id) for n in notes if isinstance(n, PropertyUpdate)]
    return feedback, scores, patches


def to_row(c: Capture) -> tuple[Any, ...]:
    """The `requests` row for a capture, in COLUMNS order. Never raises for bad bodies."""
    response = decoded_response(c)
    request = _loads(c.request_body)
    requested_model = request.get("model") if isinstance(request, dict) else None
    if not isinstance(requested_model, str):  # Gemini and Azure name it in the URL
        requested_model = path_model(c.api, c.path)
    common = dict(
        **identity(c),
        requested_model=requested_model,
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
        cache_status=c.cache_status,
        rate_limited=c.rate_limited,
        retries=c.retries,
        attempts=json.dumps(c.attempts) if c.attempts is not None else None,
        fallback_index=c.fallback_index,
        rate_limit_store=c.rate_limit_store,
    )
    if c.hit is not None:
        return as_row(**common, **_hit(c.hit, requested_model))
    return as_row(**common, **_accounted(c, response, requested_model, common["created_at"]))


def identity(c: Capture) -> dict[str, Any]:
    """The columns that need no parsing: what even a failed accounting still records."""
    return dict(
        request_id=c.meta.request_id,
        created_at=datetime.fromtimestamp(c.started, UTC),
        source=c.source,
        provider=c.provider,
        api=c.api,
        endpoint=c.endpoint,
        host=c.host,
        method=c.method,
        path=c.path,
        status=c.status,
        streamed=c.streamed,
        latency_ms=c.latency_ms,
        ttft_ms=c.ttft_ms,
        proxy_id=c.proxy_id,
    )


def _accounted(c: Capture, response: bytes, requested_model: str | None, at: datetime) -> dict[str, Any]:
    """Tokens and cost of a call that reached the provider."""
    ok = c.status is not None and 200 <= c.status < 300
    tokens = usage.account(c.api, c.endpoint, c.streamed, ok, c.request_body, response, c.price_id)
    model = tokens.model or requested_model
    cost = pricing.price(tokens, model, c.price_id, c.provider, at)
    notes = [n for n in (cost.note, *c.extra_notes) if n]
    if c.inferred and cost.usd is not None and tokens.provider_cost is None:
        notes.append(f"priced as {c.price_id}: host {c.host} is not a known provider")
    if c.truncated:
        notes.append("response body larger than llmtap_max_body: stored head and tail only")
    u = tokens.usage
    # An estimate knows only input and output, so the cache and reasoning parts stay unknown; a
    # stream cut after reporting its input knows the cache parts, but not the reasoning.
    cached = tokens.source in ("response", "partial")
    return dict(
        model=model,
        input_tokens=_int(u, "input_tokens"),
        output_tokens=_int(u, "output_tokens"),
        cache_read_tokens=_int(u, "cache_read_tokens") if cached else None,
        cache_write_tokens=_int(u, "cache_write_tokens") if cached else None,
        reasoning_tokens=_int(u, "output_reasoning_tokens") if tokens.source == "response" else None,
        usage_source=tokens.source,
        cost_usd=cost.usd,
        cost_note="; ".join(notes) or None,
    )


def _hit(entry: Entry, requested_model: str | None) -> dict[str, Any]:
    """A cache hit: the original's tokens, nothing spent, the original's cost saved."""
    return dict(
        model=entry.model or requested_model,
        input_tokens=entry.input_tokens,
        output_tokens=entry.output_tokens,
        cache_read_tokens=entry.cache_read_tokens,
        cache_write_tokens=entry.cache_write_tokens,
        reasoning_tokens=entry.reasoning_tokens,
        usage_source=entry.usage_source,
        cost_usd=Decimal(0),
        cost_saved_usd=entry.cost_usd,
        latency_saved_ms=entry.latency_ms,
        cost_note=f"cache hit of {entry.request_id}",
        cache_reference_id=entry.request_id,
    )


def decoded_response(c: Capture) -> bytes:
    return _decode(c.response_body, c.content_encoding)


def replay_body(c: Capture) -> bytes:
    """What a cache hit sends: the body decoded, and a stream as its client received it."""
    body = decoded_response(c)
    return client_view_of(body) if c.streamed and c.strip_usage else body


def entry_for(c: Capture, row: tuple[Any, ...]) -> Entry:
    """The cache entry of a response to be saved: its replay, with the tokens and cost of its row."""
    assert c.cache_save is not None
    v = dict(zip(COLUMNS, row, strict=True))
    return Entry(
        request_id=v["request_id"],
        status=c.status or 200,
        content_type=c.content_type or "application/json",
        streamed=c.streamed,
        body=replay_body(c),
        seed=c.cache_save.policy.seed,
        provider=v["provider"],
        model=v["model"],
        input_tokens=v["input_tokens"],
        output_tokens=v["output_tokens"],
        cache_read_tokens=v["cache_read_tokens"],
        cache_write_tokens=v["cache_write_tokens"],
        reasoning_tokens=v["reasoning_tokens"],
        usage_source=v["usage_source"],
        cost_usd=v["cost_usd"],
        latency_ms=v["latency_ms"],
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


def spent(c: Capture) -> tuple[float | None, int | None]:
    """What a finished call cost, in cents, and its tokens (input + output), for rate limits."""
    row = dict(zip(COLUMNS, to_row(c), strict=True))
    cost = row["cost_usd"]
    tokens = [row[k] for k in ("input_tokens", "output_tokens") if row[k] is not None]
    return (float(cost) * 100 if cost is not None else None), (sum(tokens) if tokens else None)
