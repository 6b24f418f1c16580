"""A cached response: what a replay needs, and what a hit's row copies from its original.

The body is exactly what the client received (a stream as its SSE text, without the usage chunk
llmtap added); the tokens and cost are the original call's, as its row recorded them. It crosses
from the writer (which saves entries, storage/cachestore.py) to the proxy (which answers hits from
them) and back inside a hit's record. Kept in a module of its own, with no imports, so the CLI's
`llmtap cache` commands load it without the accounting code.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(slots=True)
class Entry:
    request_id: str
    status: int
    content_type: str
    streamed: bool
    body: bytes
    seed: str = ""
    provider: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage_source: str | None = None
    cost_usd: Decimal | None = None
    latency_ms: float | None = None
    created: float = 0.0
