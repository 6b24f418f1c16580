"""proxy/fleet.py's SharedState against a real redis-server: the scripts on its own connection.

The proxy runs its scripts on a connection it reads itself rather than through redis-py's command
path, so what redis-py did there is checked here: TCP, unix sockets and TLS, a restarted or
flushed server, connections the server closed, a call cancelled before its reply, concurrency,
and the early ask (sent from a call's headers, read in `request`).
"""

from __future__ import annotations

import asyncio
import gc
import math
import select
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

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


@pytest.fixture(params=["tcp", "unix", "tls"])
def any_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RedisServer, str]]:
    """A server of its own, and the URL of one of its transports."""
    server = RedisServer(tmp_path / "redis", tls=request.param == "tls").start()
    yield server, {"tcp": server.url, "unix": server.unix_url, "tls": server.tls_url}[request.param]
    server.stop()


def test_decide_put_and_charge_round_trip(any_redis: tuple[RedisServer, str]) -> None:
    redis_server, url = any_redis
    slots = redisstate.slot_keys("s1", ["k"])
    tokens = limit("t", "1000;w=3600;u=tokens")

    async def run() -> list[object]:
        shared = SharedState(url)
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
            # three calls at once, pipelined on one connection
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


def test_concurrent_calls_on_one_bucket_get_exactly_its_quota_over_one_connection(
    redis_server: RedisServer,
) -> None:
    observer = redis_server.client()

    async def run() -> tuple[int, int]:
        shared = SharedState(redis_server.url)
        try:
            got = await asyncio.gather(*(shared.decide([], 0, [limit("a", "20;w=3600")]) for _ in range(50)))
            return sum(bool(d and d.admitted) for d in got), observer.info("clients")["connected_clients"]
        finally:
            await shared.close()

    admitted, clients = asyncio.run(run())
    assert admitted == 20
    assert clients == 2  # this test's own and the state's: the 50 calls were pipelined on one


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


def test_an_early_ask_is_read_without_a_turn_of_the_loop(any_redis: tuple[RedisServer, str]) -> None:
    """mitmproxy goes from `requestheaders` to `request` without a turn of its loop, so the reply
    to an early ask waits in the socket; `answer` reads it there (TLS: through the loop)."""
    redis_server, url = any_redis

    async def run() -> tuple[object, ...]:
        shared = SharedState(url)
        try:
            before = shared.ask([limit("a", "5;w=3600")])
            await shared.open()
            asked = shared.ask([limit("a", "5;w=3600")])
            assert asked is not None
            select.select([asked.pipe.transport.get_extra_info("socket")], [], [], 5)  # the reply is in
            answering = asyncio.Task(shared.answer(asked), loop=asyncio.get_running_loop(), eager_start=True)
            at_once = answering.done()
            return before, at_once, await answering, shared.errors
        finally:
            await shared.close()

    before, at_once, decision, errors = asyncio.run(run())
    assert before is None  # no connection yet: such a call asks in `request`
    assert at_once is (not url.startswith("rediss:"))
    assert decision == redisstate.Decision(None, True, [4.0])
    assert errors == 0


def test_an_early_ask_on_a_connection_the_server_closed_is_sent_again(redis_server: RedisServer) -> None:
    async def run() -> tuple[object, ...]:
        shared = SharedState(redis_server.url)
        ten = [limit("a", "10;w=3600")]
        try:
            await shared.open()
            first = await shared.answer(shared.ask(ten))  # type: ignore[arg-type]
            redis_server.stop(signal.SIGKILL)
            redis_server.start()  # same port, empty; the loop has not seen the old connection close
            again = await shared.answer(shared.ask(ten))  # type: ignore[arg-type]
            return whole(first), whole(again), shared.errors, shared.fallbacks
        finally:
            await shared.close()

    assert asyncio.run(run()) == ([9], [9], 0, 0)


def test_early_asks_never_answered_leave_nothing_behind(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A client gone between its headers and its body: its ask is never read. The next calls get
    their own replies, and closing with asks unread (or failed) logs no error."""

    async def run() -> list[list[int] | None]:
        shared = SharedState(redis_server.url)
        try:
            await shared.open()
            got = []
            for i in range(5):
                shared.ask([limit(f"gone{i}", "1000;w=3600")])
                got.append(whole(await shared.decide([], 0, [limit(f"kept{i}", f"{i + 2};w=3600")])))
            shared.ask([limit("last", "3;w=3600")])
            return got
        finally:
            await shared.close()

    assert asyncio.run(run()) == [[1], [2], [3], [4], [5]]
    gc.collect()
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


def test_opening_against_a_dead_server_leaves_it_to_the_first_call(redis_server: RedisServer) -> None:
    redis_server.stop(signal.SIGKILL)

    async def run() -> tuple[object, ...]:
        shared = SharedState(redis_server.url)
        try:
            await shared.open()  # at the proxy's start: quiet
            opened = (shared.available, shared.errors, shared.ask([limit("a", "5;w=3600")]))
            return opened, await shared.decide([], 0, []), shared.available, shared.errors
        finally:
            await shared.close()

    assert asyncio.run(run()) == ((True, 0, None), None, False, 1)  # the first call: a fallback, counted
