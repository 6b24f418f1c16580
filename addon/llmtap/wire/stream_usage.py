"""The usage chunk llmtap's `include_usage` adds to an OpenAI-style stream, and the stream without it.

When llmtap asks for the final usage chunk on the client's behalf (proxy/addon.py), the provider
sends one more event, with `"choices": []` and the usage, and adds `"usage": null` to every other
chunk. The client asked for neither: `client_view` gives back one event as the client would have
seen it (b"" for the usage chunk), `client_view_of` a whole stream (for the cache to replay).
"""

from __future__ import annotations

import re

from llmtap.wire.sse import EventSplitter

_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null')
_USAGE_ONLY = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


def client_view(raw: bytes) -> bytes:
    """The event as the client would have seen it without injected include_usage."""
    if _USAGE_ONLY.search(raw) and _USAGE_OBJECT.search(raw):
        return b""
    if b'"usage"' in raw:
        return _USAGE_NULL.sub(b"", raw)
    return raw


def client_view_of(body: bytes) -> bytes:
    """A whole upstream stream as the client received it (for the cache to replay)."""
    splitter = EventSplitter()
    return b"".join(client_view(raw) for raw in splitter.feed(body)) + splitter.flush()
