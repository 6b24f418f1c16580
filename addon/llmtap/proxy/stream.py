"""The callable set as `flow.response.stream` for LLM event streams.

Every chunk goes to the client as it arrives. On the hot path the tee only copies bytes (up to a
cap, plus a bounded tail so the final usage event survives a long stream) and notes when the first
token went by; all JSON parsing happens later in the writer thread.

One rewrite is allowed: when llmtap added `stream_options.include_usage` to an OpenAI-style
request the client did not make, the usage-only chunk that this causes (`"choices":[]`) is held
back and the `"usage":null` field it adds to every other chunk is removed, so the client sees
exactly the stream it asked for. Those events are cut at event boundaries (see sse.py).

mitmproxy drops a chunk silently when the callable raises and ends the body when it returns b""
for a non-empty chunk (reference/mitmproxy.md), so `__call__` never raises and never returns b""
except for the final b"".
"""

from __future__ import annotations

import logging
import re
import time

from llmtap.wire.sse import EventSplitter
from llmtap.wire.stream_usage import client_view

logger = logging.getLogger(__name__)

# A string value that starts with a real character in a field that carries generated content:
# OpenAI `content`/`arguments`/`refusal`, Anthropic `text`/`partial_json`/`thinking`,
# Gemini `text`, Responses API `delta`. Empty strings and role-only chunks do not count.
_TOKEN = re.compile(
    rb'"(?:content|text|delta|arguments|partial_json|thinking|reasoning_content|refusal)"'
    rb'\s*:\s*"[^"]'
)
TAIL_BYTES = 64 * 1024
_EDGE = 64


class StreamTee:
    """Forwards a streamed response body and keeps what the writer needs to account for it."""

    def __init__(self, max_bytes: int, strip_usage_chunk: bool = False) -> None:
        self.max_bytes = max_bytes
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.first_token_at: float | None = None
        self.first_byte_at: float | None = None
        self.ended = False
        self.failed: str | None = None
        self._strip = strip_usage_chunk
        self._splitter = EventSplitter() if strip_usage_chunk else None

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        try:
            return self._handle(data)
        except Exception as e:  # never let a bug cut the user's stream
            self._failed(e)
            if not self._strip or self._splitter is None:
                return data
            # Release what the splitter was holding back (it never absorbs a chunk it raised on).
            self._strip = False
            held = self._splitter.flush() + data
            return held if held else []

    def _handle(self, data: bytes) -> bytes | list[bytes]:
        if not data:
            self.ended = True
            if self._splitter is not None and self._strip:
                rest = self._splitter.flush()
                return rest if rest else b""
            return b""
        now = time.time()
        if self.first_byte_at is None:
            self.first_byte_at = now
        if self.first_token_at is None and _TOKEN.search(self._edge + data):
            self.first_token_at = now
        self._keep(data)
        if self._splitter is None or not self._strip:
            return data
        events = self._splitter.feed(data)
        out: list[bytes] = []
        for i, raw in enumerate(events):
            try:
                view = client_view(raw)
            except Exception as e:  # stop rewriting; everything from here on goes out as it came
                self._failed(e)
                self._strip = False
                out.append(b"".join(events[i:]) + self._splitter.flush())
                break
            if view:
                out.append(view)
        return out

    def _failed(self, e: Exception) -> None:
        if self.failed is None:
            self.failed = f"stream tee error: {e!r}"
            logger.exception("llmtap: stream tee failed; passing the rest through unchanged")

    @property
    def _edge(self) -> bytes:
        """The end of what came before, so a token split across two chunks is still seen."""
        kept = self.tail if self.tail else self.head
        return bytes(kept[-_EDGE:])

    def _keep(self, data: bytes) -> None:
        self.total += len(data)
        room = self.max_bytes - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > TAIL_BYTES:
                del self.tail[: len(self.tail) - TAIL_BYTES]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + len(self.tail)

    def body(self) -> bytes:
        """What was seen: the whole stream, or its head and tail when it was longer than the cap."""
        if not self.tail:
            return bytes(self.head)
        sep = b"\n\n" if self.truncated else b""
        return bytes(self.head) + sep + bytes(self.tail)
