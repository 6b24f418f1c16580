"""Cache entries the proxy has just delivered, held until the writer process has saved them.

The writer saves a response into the cache file a hand-off and a conversion after the call
(milliseconds, more while it is busy). A script's next identical call, sent the moment the first
one returned, must still be a hit, and a bucket must fill with exactly its first N calls at any
speed. So the proxy keeps every response it will ask the writer to save here, under the slot key
it will be saved in, and a lookup fills the slots the file does not have yet from here
(read-your-writes inside one proxy).

An entry leaves once the writer has converted its capture (the file has it then, or refused it:
its bucket filled meanwhile), when it expires, or when the bounds push the oldest out (a writer that
is down or far behind). Nothing is copied: an entry keeps the capture's own bytes, and decodes its
body (gzip, a stream's client view) at its first hit only. Runs on the event loop; no I/O.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from llmtap.accounting.entry import Entry
from llmtap.accounting.record import Capture, replay_body


@dataclass(slots=True)
class _Fresh:
    ordinal: int  # the capture's place in the hand-off order (WriterProcess.queued)
    expires: float
    size: int
    capture: Capture
    entry: Entry | None = None  # made at the first hit

    def as_entry(self) -> Entry:
        if self.entry is None:
            c = self.capture
            self.entry = Entry(
                request_id=c.meta.request_id,
                status=c.status or 200,
                content_type=c.content_type or "application/json",
                streamed=c.streamed,
                body=replay_body(c),
                latency_ms=c.latency_ms,
            )
        return self.entry


class FreshEntries:
    def __init__(self, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.max_entries, self.max_bytes, self.clock = max_entries, max_bytes, clock
        self._by_key: OrderedDict[str, _Fresh] = OrderedDict()  # oldest first
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def add(self, key: str, capture: Capture, ordinal: int, ttl: float) -> None:
        """Hold a delivered response under the slot key the writer will save it in."""
        size = len(capture.response_body) + len(capture.request_body)
        if size > self.max_bytes:
            return
        self._drop(key)
        self._by_key[key] = _Fresh(ordinal, capture.ended + ttl, size, capture)
        self._bytes += size
        while len(self._by_key) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._by_key)))

    def fill(self, keys: list[str], stored: list[Entry | None]) -> list[Entry | None]:
        """The file's entries for `keys`, with the slots it lacks filled from here."""
        if not self._by_key:
            return stored
        now = self.clock()
        out = list(stored)
        for i, key in enumerate(keys):
            fresh = self._by_key.get(key) if out[i] is None else None
            if fresh is not None and fresh.expires > now:
                out[i] = fresh.as_entry()
        return out

    def settle(self, ordinal: int) -> None:
        """Forget the entries whose captures the writer has converted (ordinals up to `ordinal`)."""
        while self._by_key:
            key, oldest = next(iter(self._by_key.items()))
            if oldest.ordinal > ordinal:
                return
            self._drop(key)

    def _drop(self, key: str) -> None:
        fresh = self._by_key.pop(key, None)
        if fresh is not None:
            self._bytes -= fresh.size
