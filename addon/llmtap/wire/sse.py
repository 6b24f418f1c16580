"""Incremental Server-Sent Events framing, safe across arbitrary chunk splits.

Network chunks are not event boundaries: an event may arrive in many pieces and one chunk may
carry many events. `EventSplitter` cuts a byte stream into whole raw events (each keeps its exact
bytes, blank-line terminator included, so a tee can forward or drop them unchanged) and
`parse_event` reads the `event:` and `data:` fields of one of them. Line endings may be CRLF, LF
or CR, as the SSE spec allows (Gemini uses CRLF). Nothing here raises on malformed input.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

# An empty line ends an event: two consecutive line terminators of any kind.
_BOUNDARY = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
# Only CR, LF and CRLF end an SSE line; str.splitlines() would also split on U+2028 and friends,
# which JSON may carry raw inside strings.
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Event:
    event: str
    data: str


class EventSplitter:
    """Feed bytes, get back complete raw events; the unfinished tail is kept for the next feed."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        events: list[bytes] = []
        start = 0
        while True:
            m = _BOUNDARY.search(buf, start)
            if m is None:
                break
            end = m.end()
            # A CR at the very end may be the first half of a CRLF still in flight.
            if end == len(buf) and buf.endswith(b"\r"):
                break
            events.append(buf[start:end])
            start = end
        self._buf = buf[start:]
        return events

    def flush(self) -> bytes:
        """Return (and forget) whatever incomplete event is still buffered."""
        rest, self._buf = self._buf, b""
        return rest

    @property
    def pending(self) -> int:
        return len(self._buf)


def parse_event(raw: bytes) -> Event:
    """Read one raw event's type and data; several data lines join with newlines (spec)."""
    event_type = "message"
    data: list[str] = []
    for line in _LINE_END.split(raw.decode("utf-8", "replace")):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
    return Event(event_type, "\n".join(data))


def iter_events(body: bytes) -> Iterator[Event]:
    """All events of a complete (or truncated) body; a trailing partial event is parsed too."""
    splitter = EventSplitter()
    for raw in splitter.feed(body):
        yield parse_event(raw)
    rest = splitter.flush()
    if rest.strip():
        yield parse_event(rest)
