"""Calls as they happen, for the dashboard's Live page: pushed from the proxy's memory over SSE.

The hooks `publish` a few fields of each call (no bodies) when its stream starts and when it ends;
each open Live page is a subscriber with a bounded queue, and one that cannot keep up loses events
(counted in the next one it gets), never slowing the proxy. No database is read: tokens and cost
are the writer process's work, which it sends back while a page listens (writerproc.accounted);
they follow as an `accounted` event, also merged into the recent calls a new page sees first.

In a fleet (`llmtap_redis`), a Live page on one proxy shows every proxy's calls: while any page
listens anywhere, each proxy also puts its events in `outbox`, which proxy/livefleet.py sends over
Redis, and it `relay`s what the others send.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from llmtap.accounting.record import Capture

KEEP = 200  # the last calls a new subscriber sees first
QUEUE = 1000
KEEPALIVE_SECONDS = 15.0


class LiveFeed:
    def __init__(self) -> None:
        self.recent: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self.subscribers: dict[asyncio.Queue[dict[str, Any]], int] = {}  # queue -> events it lost
        self.outbox: list[dict[str, Any]] | None = None  # for the fleet's other pages, while any listens

    @property
    def watched(self) -> bool:
        """A page listens here or, in a fleet, on another proxy."""
        return bool(self.subscribers) or self.outbox is not None

    def publish(self, c: Capture, state: str) -> None:
        event = event_of(c, state)
        self.recent.append(event)
        self._send(event)
        if self.outbox is not None:
            self.outbox.append(event)

    def account(self, items: list[dict[str, Any]]) -> None:
        """The writer's tokens and cost for calls already shown."""
        if not items:
            return
        events = [{"state": "accounted", **item} for item in items]
        self._account(events)
        if self.outbox is not None:
            self.outbox.extend(events)

    def relay(self, events: list[dict[str, Any]]) -> None:
        """Events from the fleet's other proxies, shown as this proxy's own."""
        accounted = [e for e in events if e.get("state") == "accounted"]
        for event in events:
            if event.get("state") in ("streaming", "done"):
                self.recent.append(event)
                self._send(event)
        self._account(accounted)

    def _account(self, events: list[dict[str, Any]]) -> None:
        by_id = {e["request_id"]: e for e in self.recent if e["state"] == "done"}
        for event in events:
            shown = by_id.get(event["request_id"])
            if shown is not None:
                shown.update({k: v for k, v in event.items() if k != "state"})
            self._send(event)

    def _send(self, event: dict[str, Any]) -> None:
        for q in self.subscribers:
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                self.subscribers[q] += 1

    async def stream(self) -> AsyncIterator[bytes]:
        """SSE for one subscriber: the recent calls, then each new one; a comment every 15 s keeps
        the connection (and proxies on the way) alive."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE)
        self.subscribers[q] = 0
        try:
            yield b"retry: 2000\n\n"
            for event in list(self.recent):
                yield _sse(event)
            while True:
                try:
                    event = await asyncio.wait_for(q.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                lost, self.subscribers[q] = self.subscribers[q], 0
                yield _sse({**event, "lost": lost} if lost else event)
        finally:
            self.subscribers.pop(q, None)


def event_of(c: Capture, state: str) -> dict[str, Any]:
    return {
        "state": state,  # 'streaming' or 'done'
        "request_id": c.meta.request_id,
        "started": c.started,
        "provider": c.provider,
        "endpoint": c.endpoint,
        "host": c.host,
        "status": c.status,
        "streamed": c.streamed,
        "latency_ms": c.latency_ms,
        "ttft_ms": c.ttft_ms,
        "error": c.error,
        "cache_status": c.cache_status,
        "user_id": c.meta.user_id,
        "session_id": c.meta.session_id,
        "proxy_id": c.proxy_id,
    }


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: call\ndata: {json.dumps(event)}\n\n".encode()
