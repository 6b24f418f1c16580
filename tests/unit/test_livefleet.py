"""The fleet's Live feed on a real redis-server: a page open on one proxy gets the others' calls,
and their tokens and cost; with no page open anywhere, nothing is sent; Redis away costs nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from llmtap.api.live import LiveFeed
from llmtap.fleet import redisstate
from llmtap.proxy import livefleet
from llmtap.proxy.fleet import SharedState
from llmtap.proxy.livefleet import LiveRelay
from tests.servers import RedisServer, free_port

from . import samples


def call(n: int, proxy: str) -> Any:
    c = samples.capture()
    c.meta.request_id, c.proxy_id = f"req-{n}", proxy
    return c


async def stop(relay: LiveRelay) -> None:
    listener = relay.listener
    relay._stop_listening()
    if listener is not None:
        await asyncio.wait([listener])
    await relay.shared.close()


async def next_events(q: asyncio.Queue, n: int) -> list[dict[str, Any]]:
    return [await asyncio.wait_for(q.get(), 5) for _ in range(n)]


def test_a_page_on_one_proxy_shows_the_others_calls(redis_server: RedisServer) -> None:
    async def main() -> None:
        feeds = {name: LiveFeed() for name in ("a", "b")}
        relays = [LiveRelay(SharedState(redis_server.url), feeds[n], n) for n in feeds]
        page: asyncio.Queue = asyncio.Queue()
        for relay in relays:  # nobody listens: nothing is kept to send
            await relay.check()
        assert (feeds["a"].outbox, feeds["b"].outbox) == (None, None)
        feeds["a"].subscribers[page] = 0  # a Live page opens on a
        await relays[0].check()  # a subscribes
        while feeds["b"].outbox is None:  # b's next check finds the subscriber
            await relays[1].check()
        assert feeds["a"].outbox is None, "a's own page is not a listener elsewhere"
        await asyncio.sleep(3 * redisstate.TIMEOUT)  # an idle subscription outlives the socket timeout
        feeds["b"].publish(call(1, "b"), "done")
        feeds["a"].publish(call(2, "a"), "done")  # a's own, straight to its page
        feeds["b"].account([{"request_id": "req-1", "model": "gpt-4o-mini", "cost_usd": "0.000001"}])
        await relays[1].tick()  # one message for what b had waiting
        got = await next_events(page, 3)
        assert [(e["state"], e["request_id"], e.get("proxy_id")) for e in got] == [
            ("done", "req-2", "a"), ("done", "req-1", "b"), ("accounted", "req-1", None)
        ]  # fmt: skip
        relayed = [e for e in feeds["a"].recent if e["request_id"] == "req-1"]
        assert relayed[0]["cost_usd"] == "0.000001", "a page opened later sees the merged row"
        assert feeds["b"].watched, "b's writer sends tokens and cost while a's page listens"
        del feeds["a"].subscribers[page]  # the page closes
        await relays[0].check()
        await asyncio.sleep(0)  # the listener's cancellation runs
        while feeds["b"].outbox is not None:
            await relays[1].check()
        assert not feeds["b"].watched
        assert [r.errors for r in relays] == [0, 0]
        for relay in relays:
            await stop(relay)

    asyncio.run(main())


def test_redis_away_leaves_each_page_its_own_calls() -> None:
    async def main() -> None:
        feed = LiveFeed()
        relay = LiveRelay(SharedState(f"redis://127.0.0.1:{free_port()}/0"), feed, "a")
        page: asyncio.Queue = asyncio.Queue()
        feed.subscribers[page] = 0
        task = asyncio.ensure_future(relay.run())
        while relay.errors == 0:
            await asyncio.sleep(livefleet.TICK_SECONDS)
        feed.publish(call(1, "a"), "done")
        assert [e["request_id"] for e in await next_events(page, 1)] == ["req-1"]
        assert feed.outbox is None
        task.cancel()
        await stop(relay)

    asyncio.run(main())
