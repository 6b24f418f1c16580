"""proxy/fleet.py's SharedState against a real redis-server: the scripts on its own connections.

The proxy runs its scripts on connections it keeps rather than through redis-py's command path
(~60 µs less a call), so what redis-py did there is checked here: a restarted or flushed server,
connections the server closed, a call cancelled before its reply, concurrency.
"""

from __future__ import annotations

import asyncio
import math
import signal
from dataclasses import replace

from llmtap.fleet import redisstate
from llmtap.policy import ratelimit
from llmtap.proxy.fleet import SharedState
from tests.servers import RedisServer

from .samples import CACHE_ENTRY


def limit(key: str, spec: str) -> ratelimit.Limit:
    return ratelimit.Limit(key=key, policy=ratelimit.parse_header(spec), source="header")


def whole(decision: redisstate.Decision | None) -> list[int] | None:
    """A decision's levels less the refill since (one token an hour per unit of quota here)."""
    return None if decision is None else [math.floor(level) for level in decision.levels]


ENTRY = replace(CACHE_ENTRY, body=CACHE_ENTRY.body + b"\r\n$3\r\n")  # and RESP's own framing


def test_decide_put_and_charge_round_trip(redis_server: RedisServer) -> None:
    slots = redisstate.slot_keys("s1", ["k"])
    tokens = limit("t", "1000;w=3600;u=tokens")

    async def run() -> list[object]:
        shared = SharedState(redis_server.url)
        try:
            first = await shared.decide(slots, 0, [limit("a", "3;w=3600"), tokens])
            saved = await shared.put(slots, ENTRY, 60)
            full = await shared.put(slots, ENTRY, 60)
            hit = await shared.decide(slots, 0, [limit("a", "3;w=3600")])
            charged = await shared.charge([tokens], [1500.0])
            return [first, saved, full, hit, charged, shared.errors]
        finally:
            await shared.close()

    first, saved, full, hit, charged, errors = asyncio.run(run())
    assert first == redisstate.Decision(None, True, [2.0, 1000.0])
    assert (saved, full) == (0, None)  # one slot: the second save finds it taken
    assert hit == redisstate.Decision((0, ENTRY), True, [])  # byte for byte, and no limit charged
    assert charged is True and errors == 0
    r = redis_server.client()
    assert float(r.hget(redisstate.bucket_key("a"), "tokens")) == 2.0
    assert float(r.hget(redisstate.bucket_key("t"), "tokens")) == -500.0


def test_a_flushed_server_gets_the_script_again(redis_server: RedisServer) -> None:
    async def run() -> tuple[list[redisstate.Decision | None], int]:
        shared = SharedState(redis_server.url)
        try:
            got = [await shared.decide([], 0, [limit("a", "5;w=3600")])]
            redis_server.client().script_flush()
            got.append(await shared.decide([], 0, [limit("a", "5;w=3600")]))
            return got, shared.errors
        finally:
            await shared.close()

    got, errors = asyncio.run(run())
    assert [whole(d) for d in got] == [[4], [3]]
    assert errors == 0


def test_connections_the_server_closed_are_replaced_without_a_fallback(
    redis_server: RedisServer,
) -> None:
    """A managed Redis's idle timeout (or CLIENT KILL), and a restart between two calls: the next
    call is still answered by Redis, not by this process's buckets."""

    async def run() -> tuple[list[list[int] | None], int, int]:
        shared = SharedState(redis_server.url)
        ten = [limit("a", "10;w=3600")]
        try:
            # three calls at once: three connections kept
            first = await asyncio.gather(*(shared.decide([], 0, ten) for _ in range(3)))
            got = sorted(whole(d) or [] for d in first)
            redis_server.client().client_kill_filter(_type="normal", skipme=True)
            got.append(whole(await shared.decide([], 0, ten)))
            redis_server.stop(signal.SIGKILL)
            redis_server.start()  # empty again, same port; the kept connections are dead
            got.append(whole(await shared.decide([], 0, ten)))
            return got, shared.errors, shared.fallbacks
        finally:
            await shared.close()

    got, errors, fallbacks = asyncio.run(run())
    assert got == [[7], [8], [9], [6], [9]]  # after the restart: a new, full bucket
    assert (errors, fallbacks) == (0, 0)


def test_a_call_cancelled_before_its_reply_leaves_no_reply_behind(redis_server: RedisServer) -> None:
    """mitmproxy cancels a hook's work when the client goes away; the reply still comes, and must
    not be read as the next call's."""

    async def run() -> list[list[float]]:
        shared = SharedState(redis_server.url)
        got = []
        try:
            await shared.decide([], 0, [limit("warm", "1;w=3600")])  # a kept connection
            for i in range(20):  # cancelled at every point from before the send to after the reply
                task = asyncio.ensure_future(shared.decide([], 0, [limit(f"x{i}", "1000;w=3600")]))
                for _ in range(i % 5):
                    await asyncio.sleep(0)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                decision = await shared.decide([], 0, [limit(f"y{i}", "7;w=3600")])
                assert decision is not None
                got.append(decision.levels)  # a new bucket each time: exact
            return got
        finally:
            await shared.close()

    assert asyncio.run(run()) == [[6.0]] * 20


def test_concurrent_calls_on_one_bucket_get_exactly_its_quota(redis_server: RedisServer) -> None:
    async def run() -> tuple[int, int]:
        shared = SharedState(redis_server.url)
        try:
            got = await asyncio.gather(*(shared.decide([], 0, [limit("a", "20;w=3600")]) for _ in range(50)))
            return sum(bool(d and d.admitted) for d in got), len(shared._idle)
        finally:
            await shared.close()

    admitted, kept = asyncio.run(run())
    assert admitted == 20
    assert 1 <= kept <= 50


def test_a_dead_server_answers_none_at_once_then_is_asked_again(redis_server: RedisServer) -> None:
    async def run() -> tuple[object, ...]:
        shared = SharedState(redis_server.url)
        try:
            up = await shared.decide([], 0, [limit("a", "5;w=3600")])
            redis_server.stop(signal.SIGKILL)
            down = await shared.decide([], 0, [limit("a", "5;w=3600")])
            skipped = await shared.decide([], 0, [limit("a", "5;w=3600")])  # within RETRY_SECONDS: not asked
            errors = shared.errors
            redis_server.start()
            shared._retry_at = 0.0  # as if RETRY_SECONDS had passed
            back = await shared.decide([], 0, [limit("a", "5;w=3600")])
            return up, down, skipped, errors, back, shared.fallbacks
        finally:
            await shared.close()

    up, down, skipped, errors, back, fallbacks = asyncio.run(run())
    assert isinstance(up, redisstate.Decision) and up.levels == [4.0]
    assert (down, skipped, errors) == (None, None, 1)
    assert isinstance(back, redisstate.Decision) and back.levels == [4.0]  # a new server: full again
    assert fallbacks == 2
