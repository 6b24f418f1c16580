"""The proxy's side of `llmtap_redis`: one round trip per request, and what happens when Redis is away.

Only calls that use a cache or a rate limit talk to Redis, once on the way in (`decide`: the cache
pick and the limits together) and once more after a 2xx to be saved or to charge cents / tokens.
A call whose headers settle its limits (no cache, no rule on the body) sends its script from
`requestheaders` (`ask`, proxy/addon.py `_decide_early`) and reads the verdict in `request`
(`answer`). A save is awaited before the response completes, so the client's next identical
call, through any proxy of the fleet, finds it.

Redis unreachable, slow (past `redisstate.TIMEOUT`) or erroring never fails a request: the call
is answered as if Redis were empty (a cache MISS, nothing saved) and its limits are checked in
this process alone (rows say `rate_limit_store = 'local'`). The outage is logged once, counted,
and Redis is asked again after `RETRY_SECONDS`, so a dead server costs one timeout per interval,
not one per request.

The scripts run on one connection this state reads itself (`Pipe`), not through redis-py's
command path (its pool lock, per-command checks, retry wrapper, observability hooks, pure-Python
packing, stream reader and two timeouts: ~60 µs a call, measured alone). Every call is pipelined
on that connection: Redis answers in order, so replies go to the calls in order. redis-py still
makes and greets the connection (URL, TLS, unix sockets, AUTH, SELECT). mitmproxy goes from
`requestheaders` to `request` without a turn of its loop, so an early ask's reply, back long
before, still waits in the socket; `answer` reads it there rather than after one more turn
(~0.1-0.2 ms a call here).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as ConnectionLost
from redis.exceptions import NoScriptError, ResponseError

from llmtap.accounting.entry import Entry
from llmtap.fleet import redisstate
from llmtap.fleet.redisstate import Decision
from llmtap.policy.ratelimit import Limit
from llmtap.policy.redact import redact_url

logger = logging.getLogger(__name__)

RETRY_SECONDS = 1.0


@dataclass
class Asked:
    """A script sent ahead of its answer (`SharedState.ask`), read later by `answer`."""

    script: AsyncScript
    packed: bytes
    pipe: Pipe
    reply: asyncio.Future[Any]


class SharedState:
    def __init__(self, url: str) -> None:
        import redis.asyncio

        self.url = url
        self.client = redis.asyncio.Redis.from_url(url, **redisstate.client_options())
        self._decide = self.client.register_script(redisstate.DECIDE)
        self._charge = self.client.register_script(redisstate.CHARGE)
        self._put = self.client.register_script(redisstate.PUT)
        self.errors = 0  # failed Redis calls
        self.fallbacks = 0  # calls decided without Redis
        self._retry_at = 0.0
        self._down = False
        self._pipe: Pipe | None = None  # every call's connection, once made
        self._opening = asyncio.Lock()

    @property
    def available(self) -> bool:
        return not self._down or time.monotonic() >= self._retry_at

    async def open(self) -> None:
        """Connect and load the scripts as the proxy starts, so its first calls can already be
        asked from their headers. Best effort: when it fails, the first call meets the failure,
        and reports and counts it. It waits for the rest of mitmproxy's start, which keeps the loop
        busy for longer than `redisstate.TIMEOUT`."""
        await asyncio.sleep(0)
        try:
            for script in (self._decide, self._charge, self._put):
                await self._load(script)
        except Exception as e:
            logger.debug(f"llmtap: connecting to Redis at start failed ({type(e).__name__}: {e})")

    async def decide(self, slots: list[str], drawn: int, limits: list[Limit]) -> Decision | None:
        """The cache pick and the limits' verdict in one call; None when Redis is away."""
        args = redisstate.decide_args(slots, drawn, buckets(limits))
        return self._decision(await self._run(self._decide, args))

    def ask(self, limits: list[Limit]) -> Asked | None:
        """Send the limits' `decide` now and read its verdict later (`answer`): a call's early ask.
        None when no connection is open yet (the call is then decided in `request`)."""
        pipe = self._pipe
        if pipe is None or pipe.closed or not self.available:
            return None
        args = redisstate.decide_args([], 0, buckets(limits))
        packed = evalsha(self._decide, args)
        return Asked(self._decide, packed, pipe, pipe.send(packed))

    async def answer(self, asked: Asked) -> Decision | None:
        """An early ask's verdict. A reply already in the socket is read here, without a turn of
        the event loop (mitmproxy usually runs from `requestheaders` to `request` without one, so
        the reply waits unread though it came back long before: ~0.1-0.2 ms a call)."""
        if not asked.reply.done():
            asked.pipe.poll()
        return self._decision(await self._call(asked.script, asked.packed, asked))

    async def charge(self, limits: list[Limit], amounts: list[float]) -> bool:
        spent = [(redisstate.bucket_key(lim.key), lim.policy.quota, lim.policy.window, amount)
                 for lim, amount in zip(limits, amounts, strict=True)]  # fmt: skip
        return await self._run(self._charge, redisstate.charge_args(spent)) is not None

    async def put(self, slots: list[str], entry: Entry, ttl: float) -> int | None:
        """Save into the first free slot; the slot (0-based), or None when full or Redis is away."""
        reply = await self._run(self._put, redisstate.put_args(slots, entry, int(ttl * 1000)))
        return int(reply) - 1 if reply else None

    def _decision(self, reply: Any) -> Decision | None:
        if reply is None:
            self.fallbacks += 1
            return None
        return redisstate.read_decision(reply)

    async def _run(self, script: AsyncScript, args: redisstate.Args) -> Any:
        return await self._call(script, evalsha(script, args))

    async def _call(self, script: AsyncScript, packed: bytes, asked: Asked | None = None) -> Any:
        """A script's reply (the one already sent, when `asked`); None when Redis is away."""
        if asked is None and not self.available:
            return None
        try:
            try:
                reply = await self._command(packed, asked)
            except NoScriptError:  # a restarted or flushed Redis: load it, as redis-py would
                await self._load(script)
                reply = await self._command(packed)
        except Exception as e:
            self._failed(e)
            return None
        if self._down:
            self._down = False
            where = redact_url(self.url)
            logger.info(f"llmtap: Redis at {where} is back: limits and cache are shared again")
        return reply

    async def _load(self, script: AsyncScript) -> None:
        await self._command(hiredis.pack_command(("SCRIPT", "LOAD", script.script)))

    async def _command(self, packed: bytes, asked: Asked | None = None) -> Any:
        """A command's reply; sent once more on a new connection when the server had closed the
        first (Redis restarted since the last call: the command never reached it)."""
        try:
            if asked is not None:
                return await self._read(asked.pipe, asked.reply)
            return await self._send(packed)
        except ConnectionLost:
            return await self._send(packed)

    async def _send(self, packed: bytes) -> Any:
        pipe = self._pipe
        if pipe is None or pipe.closed:
            pipe = await self._open()
        return await self._read(pipe, pipe.send(packed))

    async def _read(self, pipe: Pipe, reply: asyncio.Future[Any]) -> Any:
        if not reply.done():
            try:
                async with asyncio.timeout(redisstate.TIMEOUT):
                    await reply
            except TimeoutError as e:  # a stalled server: the calls queued behind fail too
                pipe.close(e)
                raise
        return outcome(reply.result())

    async def _open(self) -> Pipe:
        """A new connection from redis-py (made on first use, and after the server closed one)."""
        async with self._opening:
            if self._pipe is None or self._pipe.closed:
                if self._pipe is not None:
                    await self._release(self._pipe)
                    self._pipe = None
                self._pipe = Pipe(await self.client.connection_pool.get_connection())
            return self._pipe

    async def _release(self, pipe: Pipe) -> None:
        await pipe.conn.disconnect(nowait=True)  # not waiting: redis-py's protocol no longer reads it
        await self.client.connection_pool.release(pipe.conn)

    def _failed(self, e: Exception) -> None:
        self.errors += 1
        self._retry_at = time.monotonic() + RETRY_SECONDS
        if not self._down:
            self._down = True
            where = redact_url(self.url)
            logger.warning(
                f"llmtap: Redis at {where} failed ({type(e).__name__}: {e}); rate limits are "
                "per-process and the cache misses until it is back"
            )

    async def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close(ConnectionLost("llmtap is stopping"))
            await self._release(self._pipe)
            self._pipe = None
        await self.client.aclose()


def buckets(limits: list[Limit]) -> list[tuple[str, float, int, str]]:
    return [(redisstate.bucket_key(lim.key), lim.policy.quota, lim.policy.window, lim.policy.unit)
            for lim in limits]  # fmt: skip


def evalsha(script: AsyncScript, args: redisstate.Args) -> bytes:
    keys, argv = args
    return hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *argv))


class Pipe(asyncio.Protocol):
    """A connection redis-py opened and greeted (URL, TLS, unix socket, AUTH, SELECT), read from
    here on by this protocol. Redis answers in the order it was asked, so each reply goes to the
    oldest call still waiting: calls share the connection (pipelined), and a cancelled call's
    reply is read and dropped, never taken for the next call's. Failures are delivered as replies
    (an exception `outcome` raises), so a reply nobody waits for any more is never an error."""

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport = conn._writer.transport  # type: ignore[union-attr]
        self.transport.set_protocol(self)
        plain = self.transport.get_extra_info("sslcontext") is None
        self.fd: int | None = self.transport.get_extra_info("socket").fileno() if plain else None
        self.closed = False

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        reply = asyncio.get_running_loop().create_future()
        self.waiting.append(reply)
        self.transport.write(packed)
        return reply

    def poll(self) -> None:
        """Read what the socket holds now, without waiting (plain TCP and unix sockets: a TLS
        connection's bytes must go through its transport)."""
        if self.fd is None or self.closed:
            return
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.close(ConnectionLost(f"reading from Redis failed: {e}"))
            return
        if data:
            self.data_received(data)
        else:
            self.close(ConnectionLost("Redis closed the connection"))

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                waiter = self.waiting.popleft()
                if not waiter.done():
                    waiter.set_result(reply)
        except Exception as e:  # a reply nobody asked for, or not RESP: this connection is done
            self.close(ConnectionLost(f"unreadable reply from Redis: {e!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(ConnectionLost("Redis closed the connection"))

    def close(self, why: Exception) -> None:
        self.closed = True
        self.transport.close()
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(why)


def outcome(reply: Any) -> Any:
    """A reply, or the error it stands for raised (redis-py's exceptions, as its parser would)."""
    if isinstance(reply, hiredis.ReplyError):
        message = str(reply)
        raise NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)
    if isinstance(reply, Exception):
        raise reply
    return reply
