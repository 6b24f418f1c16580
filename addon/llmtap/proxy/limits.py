"""Rate limits as the hooks use them: admit or answer 429, then charge what a call spent.

The buckets and their arithmetic are policy/ratelimit.py's (in Redis, fleet/redisstate.py's); this
is the part that touches flows.
`request` buckets are charged before the call; `cents` / `tokens` ones after it, with its real
usage, priced in a worker thread (pricing a call takes ~0.3 ms: not on the event loop). A call
that arrives while such a charge is still being priced waits for it (`settled`), so a script's next
call is admitted against the charged bucket; the event loop never blocks. In a fleet the next
call may reach another proxy, so there the response hook awaits the Redis charge before the
response completes (the client's next call, anywhere, sees the bucket charged).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from mitmproxy import http

from llmtap.accounting.record import spent
from llmtap.policy import ratelimit, rules
from llmtap.policy.values import RateLimitPolicy
from llmtap.proxy import replies
from llmtap.proxy.calls import Call
from llmtap.proxy.fleet import SharedState

logger = logging.getLogger(__name__)


class RateLimits:
    def __init__(self) -> None:
        self.buckets = ratelimit.MemoryBuckets()
        self.shared: SharedState | None = None  # the fleet's buckets, when llmtap_redis is set
        self.charging: set[asyncio.Future[None]] = set()  # cents / tokens charges being priced
        self.errors = 0

    @staticmethod
    def limits_of(
        headers: Mapping[str, str], match: rules.Request, found: list[tuple[str, RateLimitPolicy]]
    ) -> list[ratelimit.Limit]:
        """Every limit of this call (rules' and the header's). Raises HeaderError for a bad header."""
        header = headers.get("helicone-ratelimit-policy")
        if not found and header is None:
            return []
        return ratelimit.limits_for(found, header, match.user, match.properties)

    def limited(self, flow: http.HTTPFlow, call: Call, limits: list[ratelimit.Limit]) -> bool:
        """Check the limits in this process; True when one answered 429."""
        ok, states = ratelimit.admit(self.buckets, limits)
        return self.verdict(flow, call, limits, ok, states, "local")

    def verdict(
        self,
        flow: http.HTTPFlow,
        call: Call,
        limits: list[ratelimit.Limit],
        ok: bool,
        states: list[ratelimit.State],
        store: str,
    ) -> bool:
        """Apply what the buckets (`store`: 'local' or 'redis') said; True when it is a 429."""
        c = call.capture
        assert c is not None
        c.rate_limit_store = store
        call.rate_headers = ratelimit.headers_for(states, limited=not ok)
        if ok:
            call.charge = [lim for lim in limits if lim.policy.unit != "request"]
            return False
        c.rate_limited = True
        message = "llmtap: rate limited by " + ", ".join(
            f"{s.limit.source} ({s.limit.policy.spec()})" for s in states if s.retry_after > 0
        )
        flow.response = replies.error(
            c.api, 429, f"{message}; retry after {call.rate_headers['Retry-After']} s"
        )
        flow.response.headers.update(call.rate_headers)
        return True

    def charge_later(self, call: Call) -> asyncio.Future[None] | None:
        """Charge a successful call's cents / tokens buckets with its real usage, off the loop. Returns
        the charge when it goes to the fleet's Redis (the response must wait for it), else None."""
        c, limits = call.capture, call.charge
        if not limits or c is None or c.status is None or not 200 <= c.status < 300:
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (unit tests): do it now
            ratelimit.charge(self.buckets, limits, *spent(c))
            return None

        shared = self.shared if c.rate_limit_store == "redis" else None

        async def work() -> None:
            cents, tokens = await loop.run_in_executor(None, spent, c)
            if shared is not None and (owed := ratelimit.charges(limits, cents, tokens)):
                if await shared.charge([lim for lim, _ in owed], [amount for _, amount in owed]):
                    return
            ratelimit.charge(self.buckets, limits, cents, tokens)  # no Redis, or it failed

        pending = asyncio.ensure_future(work())
        self.charging.add(pending)
        pending.add_done_callback(self._charged)
        return pending if shared is not None else None

    async def settled(self) -> None:
        """Wait for the charges being priced (sub-millisecond; other connections keep flowing)."""
        if self.charging:
            await asyncio.wait(list(self.charging))

    def _charged(self, done: asyncio.Future[None]) -> None:
        self.charging.discard(done)
        if not done.cancelled() and done.exception() is not None:
            self.errors += 1
            logger.error("llmtap: charging a rate limit failed", exc_info=done.exception())
