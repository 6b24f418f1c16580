"""LLMTap: the mitmproxy addon. Its hooks read as a call's life; the modules decide.

requestheaders (is it an LLM call? in a fleet, Redis may be asked about its limits already) ->
request (capture it; the cache may answer, a rate limit may; retries and fallbacks make llmtap
deliver it itself) -> responseheaders (tee a stream) -> response / error (close the capture, hand
it to the writer process; a failed streamed call may be retried first). Hooks are synchronous and
do no blocking I/O, so they never stall other connections; they return a coroutine (mitmproxy
awaits it) only to wait for the network or for a rate-limit charge. Every hook body runs inside
`_guard`, which logs, counts and lets the flow pass: llmtap must never be the reason a request
fails. Per-flow state (`calls.Call`) lives on the addon keyed by flow id and is removed in
`response` or `error`, exactly one of which runs per flow.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ReverseMode
from mitmproxy.utils import asyncio_utils

from llmtap import options
from llmtap.accounting.record import Annotation, Capture, entry_for, to_row
from llmtap.api import httpserver
from llmtap.api.handlers import Service
from llmtap.api.live import LiveFeed
from llmtap.fleet import redisstate
from llmtap.policy import cache_keys, ratelimit, retry, rules
from llmtap.policy.cache_keys import Lookup
from llmtap.policy.ratelimit import Limit
from llmtap.policy.redact import redact_path, redact_url
from llmtap.policy.values import CachePolicy
from llmtap.proxy import attempts, calls, reload, replies, upstream
from llmtap.proxy.caching import ResponseCache
from llmtap.proxy.calls import Call
from llmtap.proxy.fleet import SharedState
from llmtap.proxy.limits import RateLimits
from llmtap.proxy.livefleet import LiveRelay
from llmtap.proxy.stream import StreamTee
from llmtap.storage.writerproc import HANDOFF_BATCH, HANDOFF_SECONDS, WriterProcess
from llmtap.wire import providers
from llmtap.wire.helicone import HeaderError

logger = logging.getLogger(__name__)


class LLMTap:
    def __init__(self) -> None:
        self.rules = rules.Rules()
        self.rules_stamp: reload.Stamp = None
        self.store: WriterProcess | None = None
        self.cache = ResponseCache()
        self.limits = RateLimits()
        self.shared: SharedState | None = None  # llmtap_redis: the fleet's limits and cache
        self.calls: dict[str, Call] = {}
        self.hook_errors = 0
        self.tls = upstream.tls_context(False, None)
        self._watcher: asyncio.Task | None = None
        self._handoff: asyncio.Task | None = None
        self._relay: asyncio.Task | None = None  # the fleet's Live feed (livefleet.py)
        self.api_server: httpserver.Server | None = None
        self.live = LiveFeed()
        self.service = Service(
            submit=self._submit_from_api,
            db_path=lambda: ctx.options.llmtap_db,
            extra_providers=lambda: self.rules.providers,
            store_limit=lambda: ctx.options.llmtap_max_body,
            pending=self._pending,
            live=self.live,
        )

    # -- lifecycle (sync on purpose: async done/running break -s hot reload) --

    def load(self, loader) -> None:
        options.register(loader)

    def configure(self, updated: set[str]) -> None:
        if "llmtap_rules" in updated:
            path = ctx.options.llmtap_rules
            try:
                self.rules = rules.load(path) if path else rules.Rules()
            except rules.RulesError as e:
                raise exceptions.OptionsError(str(e)) from e
            self.rules_stamp = reload.stamp(path) if path else None
            if self._watcher is not None:
                self._start_watcher()
        if "llmtap_api" in updated or "llmtap_api_key" in updated:
            self._check_api_options()
        if "llmtap_queue_size" in updated:
            # The hand-off queue plus the rows the writer holds while the file is locked.
            self.service.keep_recent(2 * ctx.options.llmtap_queue_size + HANDOFF_BATCH)
        if self.store is not None and any(o in updated for o in options.STORE_OPTIONS):
            self._stop_store()
            self._start_store()

    def running(self) -> None:
        self.tls = upstream.tls_context(ctx.options.ssl_insecure, ctx.options.ssl_verify_upstream_trusted_ca)
        if ctx.options.connection_strategy == "eager":
            # Lazy: answers made by llmtap (cache hits) never need, or wait for, the upstream.
            ctx.options.connection_strategy = "lazy"
        if self.store is None:
            self._start_store()
        # Everything loaded by now (mitmproxy, and llmtap's duckdb and genai-prices: ~13k more
        # objects) lives as long as the process: kept out of every later full collection, which
        # otherwise rescans it (GC was ~+20 us per call, scripts/bench_overhead.py).
        gc.collect()
        gc.freeze()
        self._start_watcher()
        if self._handoff is None:
            self._handoff = _background(self._handoff_loop, "llmtap handoff")
        if ctx.options.llmtap_api and self.api_server is None:
            _background(self._start_api, "llmtap api")
        logger.info(f"llmtap: logging LLM calls to {redact_url(ctx.options.llmtap_db)}")

    def done(self) -> None:
        gc.unfreeze()  # back to normal at exit (frozen objects are never collected, and say so)
        if self.api_server is not None:
            self.api_server.close()
            self.api_server = None
        for task in (self._watcher, self._handoff):
            if task is not None:
                task.cancel()
        self._watcher = self._handoff = None
        for call in self.calls.values():  # still in flight: their hooks would come after the writer stops
            c = calls.abandon(call)
            if c is not None and self.store is not None:
                self.store.submit(c)
        self.calls.clear()
        self._stop_store()

    def _start_store(self) -> None:
        o = ctx.options
        if o.llmtap_redis:
            self.shared = self.limits.shared = SharedState(o.llmtap_redis)
            _background(self.shared.open, "llmtap redis connect")  # the first calls can ask early
            where = redact_url(o.llmtap_redis)
            logger.info(f"llmtap: rate limits and cache shared in Redis at {where}")
            relay = LiveRelay(self.shared, self.live, o.llmtap_proxy_id)
            self._relay = _background(relay.run, "llmtap live relay")
        # In a fleet the cache is Redis; the proxy saves into it itself (_save_shared).
        cached = not o.llmtap_redis and self.cache.open(
            o.llmtap_cache, o.llmtap_cache_max_mb, o.llmtap_queue_size
        )
        self.store = WriterProcess(
            o.llmtap_db,
            o.llmtap_queue_size,
            o.llmtap_flush_ms / 1000,
            cache_path=o.llmtap_cache if cached else None,
            cache_max_bytes=o.llmtap_cache_max_mb * 1024 * 1024,
        )
        self.store.start()

    def _stop_store(self) -> None:
        if self.store is None:
            return
        self.store.close()
        s = self.store.stats
        logger.info(
            f"llmtap: {s.written} rows written, {s.dropped} dropped, "
            f"{s.write_errors} write errors, {self.hook_errors + self.limits.errors} hook errors; "
            f"{s.annotations} feedback, score and property updates written"
        )
        self.store = None
        self.cache.close()
        if self._relay is not None:
            self._relay.cancel()
            self._relay = None
        if self.shared is not None:
            shared = self.shared
            logger.info(f"llmtap: Redis: {shared.errors} errors, {shared.fallbacks} calls decided without it")
            _background(self.shared.close, "llmtap redis close")
            self.shared = self.limits.shared = None

    def _submit_from_api(self, item: Capture | Annotation) -> bool:
        """Async logs and annotations from the local API, to the writer (logs stamped as ours)."""
        if isinstance(item, Capture):
            item.proxy_id = ctx.options.llmtap_proxy_id
        return self.store.submit(item) if self.store is not None else False

    def _pending(self) -> int:
        """Records submitted to the writer and not yet written, dropped or failed."""
        if self.store is None:
            return 0
        s = self.store.stats
        return max(0, s.queued - s.written - s.dropped - s.row_errors - s.annotations)

    def _start_watcher(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        path = ctx.options.llmtap_rules
        if path:
            stamp = self.rules_stamp
            self._watcher = _background(
                lambda: reload.watch(path, stamp, self._swap_rules), "llmtap rules watcher"
            )

    def _check_api_options(self) -> None:
        value = ctx.options.llmtap_api
        if not value:
            return
        try:
            host, _ = httpserver.parse_listen(value)
        except ValueError as e:
            raise exceptions.OptionsError(f"llmtap_api: {e}") from e
        if not httpserver.is_loopback(host) and not ctx.options.llmtap_api_key:
            raise exceptions.OptionsError(f"llmtap_api: {value} is not loopback; set llmtap_api_key too")

    async def _start_api(self) -> None:
        host, port = httpserver.parse_listen(ctx.options.llmtap_api)
        key = (
            ""
            if httpserver.is_loopback(host) and not ctx.options.llmtap_api_key
            else ctx.options.llmtap_api_key
        )
        server = httpserver.Server(host, port, key, self.service.handle)
        try:
            await server.start()
        except OSError as e:  # a warning: the proxy itself is fine without its API
            logger.warning(f"llmtap: local API not started on {host}:{port}: {e}")
            return
        self.api_server = server
        logger.info(f"llmtap: local API at http://{host}:{server.port}")

    async def _handoff_loop(self) -> None:
        """Captures of a quiet moment still reach the writer promptly; the Live page gets the tokens
        and cost the writer worked out."""
        while True:
            await asyncio.sleep(HANDOFF_SECONDS)
            if self.store is not None:
                self.store.handoff()
                self.cache.settle(self.store.settled())
                self.store.watch(self.live.watched)
                self.live.account(self.store.accounted())

    def _swap_rules(self, new: rules.Rules) -> None:
        self.rules = new

    # -- hooks, in a call's order --

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or flow.request.method == "CONNECT":
            return
        with self._guard(flow, "requestheaders"):
            req = flow.request
            reverse = isinstance(flow.client_conn.proxy_mode, ReverseMode)
            found = providers.detect(req.host, req.port, req.path, self.rules.providers, reverse)
            if found is not None:
                host = req.host if req.port in (80, 443) else f"{req.host}:{req.port}"
                call = self.calls[flow.id] = Call(found, host, redact_path(req.path))
                if self.shared is not None:
                    try:
                        self._decide_early(flow, call)
                    except Exception:  # the call is still captured; `request` asks Redis instead
                        self.hook_errors += 1
                        logger.exception("llmtap: asking Redis from the headers failed")

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Sync on the fast path; a coroutine only to deliver the call itself, or to let the cents /
        tokens charges of calls that have just finished land first (limits.py)."""
        call = self.calls.get(flow.id)
        if call is None:
            return None
        if self.limits.charging:
            return self._guarded(flow, "request", self._request_after_charges(flow, call))
        return self._request(flow, call)

    async def _request_after_charges(self, flow: http.HTTPFlow, call: Call) -> None:
        await self.limits.settled()
        work = self._request(flow, call)
        if work is not None:
            await work

    def _request(self, flow: http.HTTPFlow, call: Call) -> Coroutine[Any, Any, None] | None:
        with self._guard(flow, "request"):
            try:
                shared = self._start_call(flow, call)
            except HeaderError as e:
                flow.response = replies.error(call.provider.api, 400, str(e), e.header)
                shared = None
            if shared is not None:
                return self._guarded(flow, "request", self._deliver_after(flow, call, shared))
            return self._deliver(flow, call)
        return None

    def _deliver(self, flow: http.HTTPFlow, call: Call) -> Coroutine[Any, Any, None] | None:
        if flow.response is None and call.delivers and not (call.capture and call.capture.streamed):
            # Retries / fallbacks for a non-streamed call: llmtap makes every attempt itself,
            # so connection errors and timeouts can be retried too (reference §4, approach A).
            return self._guarded(flow, "request", attempts.answer(flow, call, None, self.tls))
        return None

    async def _deliver_after(
        self, flow: http.HTTPFlow, call: Call, decided: Coroutine[Any, Any, None]
    ) -> None:
        await decided
        work = self._deliver(flow, call)
        if work is not None:
            await work

    def _start_call(self, flow: http.HTTPFlow, call: Call) -> Coroutine[Any, Any, None] | None:
        """Capture the call, then let the cache, the rate limits and the retry policy decide; in a
        fleet, a coroutine that asks Redis first (only for calls that cache or are limited)."""
        c, headers = calls.open_capture(flow, call, ctx.options.llmtap_max_body)
        c.proxy_id = ctx.options.llmtap_proxy_id
        if not calls.authorized(c.meta, ctx.options.llmtap_access_key):
            flow.response = replies.error(
                c.api, 401, "llmtap: missing or wrong Helicone-Auth proxy access key"
            )
            return None
        ruled = bool(self.rules.rules)
        # What rules match on is read only when something will match (the common case is neither).
        match = (
            calls.match_request(flow, call, c.meta, c.request_body if self.rules.needs_body else None)
            if ruled or "helicone-ratelimit-policy" in headers
            else None
        )
        if call.early is not None:  # its headers settled it: no cache, these limits
            return self._decide_shared(flow, call, headers, match, None, call.early.limits)
        cache_rule, limits = self._policies(match, headers) if match is not None else (None, [])
        if self.shared is not None:
            lookup = self.cache.plan(flow, c, cache_rule, headers)
            if lookup is not None or limits:
                return self._decide_shared(flow, call, headers, match, lookup, limits)
        elif self.cache.answer(flow, c, cache_rule, headers):
            return None
        elif limits and self.limits.limited(flow, call, limits):
            return None
        self._set_up_delivery(flow, call, headers, match)
        return None

    async def _decide_shared(
        self,
        flow: http.HTTPFlow,
        call: Call,
        headers: dict[str, str],
        match: rules.Request | None,
        lookup: Lookup | None,
        limits: list[Limit],
    ) -> None:
        """One Redis round trip: a fleet-wide cache hit, or the fleet's limits (fleet.py)."""
        assert self.shared is not None and call.capture is not None
        c = call.capture
        slots = redisstate.slot_keys(lookup.policy.seed, lookup.keys()) if lookup is not None else []
        drawn = random.randrange(len(slots)) if slots else 0
        if call.early is not None:
            decision = await self.shared.answer(call.early.asked)
        else:
            decision = await self.shared.decide(slots, drawn, limits)
        if decision is None:  # Redis away: a miss, nothing saved, this process's buckets
            c.cache_save = None
            if limits and self.limits.limited(flow, call, limits):
                return
        elif decision.hit is not None:
            idx, entry = decision.hit
            self.cache.serve(flow, c, idx, entry, slots[idx])
            return
        elif limits:
            states = ratelimit.states(limits, decision.levels)
            if self.limits.verdict(flow, call, limits, decision.admitted, states, "redis"):
                return
        self._set_up_delivery(flow, call, headers, match)

    def _decide_early(self, flow: http.HTTPFlow, call: Call) -> None:
        """Ask Redis for the verdict on a call's limits as soon as its headers are in, when nothing
        else can change it: Redis answers while mitmproxy reads the body and works between the
        two hooks (0.3-0.7 ms here), and `request` reads the reply (fleet.py `answer`), with the
        headers read here unless an addon changed them. No ask before the proxy's connection to
        Redis is open (it opens as the proxy starts, and again on a call's demand). Not when a
        rule reads the body, a cache could answer (its key is the body), a cents / tokens charge
        is still being priced, the access key is wrong or a header is bad: those calls ask in
        `request`, as before. The bucket is charged when the headers arrive, so a client gone
        before its body was sent still used its place."""
        assert self.shared is not None
        ruled = bool(self.rules.rules)
        if not ruled and "helicone-ratelimit-policy" not in flow.request.headers:
            return  # no limit (the common case)
        if self.rules.needs_body or self.limits.charging or not self.shared.available:
            return
        read = calls.read_headers(flow.request)
        if not calls.authorized(read.meta, ctx.options.llmtap_access_key):
            return
        try:
            match = calls.match_request(flow, call, read.meta, None)
            cache_rule, limits = self._policies(match, read.by_name)
            if cache_keys.policy_for(read.by_name, cache_rule) is not None:
                return
        except HeaderError:
            return
        if limits and (asked := self.shared.ask(limits)) is not None:
            call.early = calls.Early(limits, asked, read)

    def _policies(
        self, match: rules.Request, headers: dict[str, str]
    ) -> tuple[CachePolicy | None, list[Limit]]:
        """The cache rule's policy and every limit of a call. Raises HeaderError for a bad header."""
        ruled = bool(self.rules.rules)
        cache_rule = self.rules.cache_for(match) if ruled else None
        found = [(r.name, p) for r, p in self.rules.rate_limits_for(match)] if ruled else []
        return cache_rule[1] if cache_rule else None, self.limits.limits_of(headers, match, found)

    def _set_up_delivery(
        self, flow: http.HTTPFlow, call: Call, headers: dict[str, str], match: rules.Request | None
    ) -> None:
        ruled = bool(self.rules.rules)
        retry_rule = self.rules.retry_for(match) if match and ruled else None
        call.retry = retry.policy_for(headers, retry_rule[1] if retry_rule else None)
        call.fallbacks = attempts.fallbacks_for(
            headers, self.rules.fallbacks_for(match) if match and ruled else ()
        )
        assert call.capture is not None
        calls.prepare_stream(flow.request, call, call.capture, ctx.options.llmtap_stream_usage)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = self.calls.get(flow.id)
        if call is None or call.capture is None or flow.response is None or call.capture.hit:
            return
        with self._guard(flow, "responseheaders"):
            c, resp = call.capture, flow.response
            resp.headers["helicone-id"] = c.meta.request_id
            if c.cache_status:
                resp.headers["helicone-cache"] = c.cache_status
            resp.headers.update(call.rate_headers)
            if calls.tees(resp, c):
                resp.stream = call.tee = StreamTee(ctx.options.llmtap_max_body, c.strip_usage)
                c.status = resp.status_code
                self.live.publish(c, "streaming")

    def response(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        call = self.calls.pop(flow.id, None)
        if call is None or call.capture is None:
            return None
        resp = flow.response
        if (
            call.delivers
            and not call.delivered
            and resp is not None
            and call.tee is None
            and retry.retryable(resp.status_code)
        ):
            return self._retry_then_finish(flow, call, resp)
        with self._guard(flow, "response"):
            save = self._finish(flow, call, None)
            if save is not None:
                return self._guarded(flow, "response", save)
        return None

    async def _retry_then_finish(self, flow: http.HTTPFlow, call: Call, resp: http.Response) -> None:
        """A streamed call that failed before anything reached the client (reference §4, B)."""
        await self._guarded(
            flow, "response", attempts.answer(flow, call, attempts.first_reply(resp), self.tls)
        )
        with self._guard(flow, "response"):
            save = self._finish(flow, call, None)
        if save is not None:
            await self._guarded(flow, "response", save)

    def error(self, flow: http.HTTPFlow) -> None:
        call = self.calls.pop(flow.id, None)
        if call is not None and call.capture is not None:
            with self._guard(flow, "error"):
                save = self._finish(flow, call, flow.error.msg if flow.error else "unknown error")
                if save is not None:
                    save.close()  # an error is never cached

    def _finish(self, flow: http.HTTPFlow, call: Call, error: str | None) -> Coroutine[Any, Any, None] | None:
        """Close the capture and hand it over: to the writer, to the rate limits, to the cache (in a
        fleet, a coroutine that saves it in Redis and lands its cents / tokens charge there before
        the response completes)."""
        c = calls.close_capture(flow, call, error)
        self.service.remember(c.meta.request_id)
        self.live.publish(c, "done")
        charging = self.limits.charge_later(call)
        if self.shared is not None:
            if self.store is not None:
                self.store.submit(c)
            save = self._save_shared(c) if c.cacheable and self.shared.available else None
            if charging is not None:
                return self._charged_then(charging, save)
            return save
        if self.store is None:
            return None
        slot = self.cache.claim(c)  # before the hand-off: the capture carries its slot to the writer
        if self.store.submit(c) and slot is not None:
            self.cache.hold(slot, c, self.store.queued)
        return None

    async def _charged_then(
        self, charging: asyncio.Future[None], save: Coroutine[Any, Any, None] | None
    ) -> None:
        """Let the fleet's charge land before the response completes: the client's next call may
        reach another proxy, which must find the bucket charged. A failed charge is logged by
        limits.py and never fails this response."""
        await asyncio.wait([charging])
        if save is not None:
            await save

    async def _save_shared(self, c: Capture) -> None:
        """Price the response off the loop and save it in the fleet's cache, TTL from its arrival."""
        assert self.shared is not None and c.cache_save is not None
        save = c.cache_save
        entry = await asyncio.get_running_loop().run_in_executor(None, lambda: entry_for(c, to_row(c)))
        ttl = save.policy.ttl - max(0.0, time.time() - c.ended)
        if ttl > 0:
            await self.shared.put(redisstate.slot_keys(save.policy.seed, save.keys()), entry, ttl)

    # -- the guard --

    async def _guarded(self, flow: http.HTTPFlow, hook: str, work: Coroutine[Any, Any, None]) -> None:
        with self._guard(flow, hook):
            await work

    @contextmanager
    def _guard(self, flow: http.HTTPFlow, hook: str) -> Iterator[None]:
        try:
            yield
        except Exception:
            self.hook_errors += 1
            self.calls.pop(flow.id, None)
            where = f"{flow.request.host}{redact_path(flow.request.path)}"
            logger.exception(f"llmtap: {hook} hook failed for {where}; passing the request through")


def _background(make: Callable[[], Coroutine[Any, Any, None]], name: str) -> asyncio.Task | None:
    """A named task on mitmproxy's loop; None where no loop runs (unit tests drive hooks directly)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return asyncio_utils.create_task(make(), name=name, keep_ref=True)
