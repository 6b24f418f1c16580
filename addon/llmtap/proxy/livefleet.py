"""The Live page across a fleet: what each proxy shows is every proxy's calls, over Redis pub/sub.

A Live page is served by whichever proxy (or `--workers` worker) took its connection, and calls
are pushed from each proxy's own memory (api/live.py). With `llmtap_redis`, a proxy that has a
page open subscribes to one channel and shows what arrives there; every proxy asks Redis once a
second whether anyone subscribes (`PUBSUB NUMSUB`) and, while someone does, sends its events there
in one message per hand-off tick (50 ms), so the cost is one publish per tick, not one per call,
and nothing at all while no page is open. A page opened on one proxy shows another's calls from
that proxy's next check on (within a second); it does not get the others' earlier calls.

Redis away: each page shows its own proxy's calls, as without a fleet; nothing fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from llmtap.api.live import LiveFeed
from llmtap.proxy.fleet import SharedState

logger = logging.getLogger(__name__)

CHANNEL = b"llmtap:v1:live"
CHECK_SECONDS = 1.0
TICK_SECONDS = 0.05


class LiveRelay:
    def __init__(self, shared: SharedState, feed: LiveFeed, proxy_id: str) -> None:
        self.shared, self.feed, self.proxy_id = shared, feed, proxy_id
        self.listener: asyncio.Task[None] | None = None
        self.errors = 0
        self._check_at = 0.0

    async def run(self) -> None:
        """Check for listeners once a second, send what is waiting each tick; until cancelled."""
        try:
            while True:
                await asyncio.sleep(TICK_SECONDS)
                try:
                    await self.tick()
                except Exception as e:  # Redis away: the pages show this proxy's calls only
                    self._failed(e)
        finally:
            self._stop_listening()

    async def tick(self) -> None:
        if time.monotonic() >= self._check_at:
            self._check_at = time.monotonic() + CHECK_SECONDS
            await self.check()
        if self.feed.outbox:
            events, self.feed.outbox = self.feed.outbox, []
            await self.shared.client.publish(CHANNEL, json.dumps([self.proxy_id, events]))

    async def check(self) -> None:
        """Listen while a page is open here; send while a page is open anywhere else."""
        if self.feed.subscribers and (self.listener is None or self.listener.done()):
            self.listener = asyncio.ensure_future(self._listen())
        elif not self.feed.subscribers:
            self._stop_listening()
        [(_, count)] = await self.shared.client.pubsub_numsub(CHANNEL)
        others = count - (1 if self.listener is not None and not self.listener.done() else 0)
        if others <= 0:
            self.feed.outbox = None
        elif self.feed.outbox is None:
            self.feed.outbox = []

    async def _listen(self) -> None:
        pubsub = self.shared.client.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=CHECK_SECONDS)
                if message is not None and message["type"] == "message":
                    self._relay(message["data"])
        except Exception as e:  # the next check starts another
            self._failed(e, stop=False)
        finally:
            await pubsub.aclose()

    def _relay(self, data: bytes) -> None:
        try:
            sender, events = json.loads(data)
        except (ValueError, TypeError):  # not ours: ignored
            self.errors += 1
            return
        if sender != self.proxy_id and isinstance(events, list):
            self.feed.relay([e for e in events if isinstance(e, dict) and "request_id" in e])

    def _stop_listening(self) -> None:
        if self.listener is not None:
            self.listener.cancel()
            self.listener = None

    def _failed(self, e: Exception, stop: bool = True) -> None:
        self.errors += 1
        self.feed.outbox = None
        if stop:
            self._stop_listening()
        if self.errors == 1 or self.errors % 100 == 0:
            logger.warning(f"llmtap: the fleet's Live feed failed ({type(e).__name__}: {e}); pages show"
                           f" this proxy's calls ({self.errors} failures so far)")  # fmt: skip
