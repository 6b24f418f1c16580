"""LLMTap: the mitmproxy addon. It only wires the modules together.

Hook policy: hooks are synchronous and do no blocking I/O, so they never stall other
connections; they read headers, strip proxy-only headers, look up the cache (a SQLite point
lookup, microseconds), set up the stream tee and queue a `Capture`. Every hook body runs inside
`_guard`, which logs, counts and lets the flow pass: llmtap must never be the reason a request
fails. Per-flow state lives on the addon keyed by flow id (flow.metadata only holds primitives)
and is removed in `response` or `error`, exactly one of which runs per flow.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.net import encoding as net_encoding
from mitmproxy.proxy.mode_specs import ReverseMode
from mitmproxy.utils import asyncio_utils

from llmtap import options
from llmtap.accounting.record import Capture, spent
from llmtap.api import httpserver
from llmtap.api.handlers import Service
from llmtap.policy import cache_keys, ratelimit, retry, rules
from llmtap.policy.redact import redact_headers, redact_path
from llmtap.policy.values import Fallback, RetryPolicy
from llmtap.proxy import attempts, reload, replies, upstream
from llmtap.proxy.fresh import FreshEntries
from llmtap.proxy.stream import StreamTee, client_view_of
from llmtap.storage import cachestore
from llmtap.storage.cachestore import CacheStore, Entry
from llmtap.storage.writerproc import HANDOFF_BATCH, HANDOFF_SECONDS, WriterProcess
from llmtap.wire import helicone, providers
from llmtap.wire.helicone import HeaderError

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Call:
    provider: providers.Provider
    host: str
    path: str
    capture: Capture | None = None
    tee: StreamTee | None = None
    retry: RetryPolicy | None = None
    fallbacks: tuple[Fallback, ...] = ()
    rate_headers: dict[str, str] = field(default_factory=dict)
    charge: list[ratelimit.Limit] = field(default_factory=list)  # cents/tokens buckets to charge after
    upstream_body: bytes | None = None  # what our own client received, before the client's view
    delivered: bool = False  # llmtap's own attempts already produced the response

    @property
    def delivers(self) -> bool:
        return self.retry is not None or bool(self.fallbacks)


class LLMTap:
    def __init__(self) -> None:
        self.rules = rules.Rules()
        self.rules_stamp: reload.Stamp = None
        self.store: WriterProcess | None = None
        self.cache: CacheStore | None = None
        self.fresh = FreshEntries(0, 0)  # sized by _start_store
        self.calls: dict[str, Call] = {}
        self.hook_errors = 0
        self.buckets = ratelimit.MemoryBuckets()
        self.tls = upstream.tls_context(False, None)
        self._watcher: asyncio.Task | None = None
        self._handoff: asyncio.Task | None = None
        self._charging: set[asyncio.Future[None]] = set()  # cents / tokens charges being priced
        self.api_server: httpserver.Server | None = None
        self.service = Service(
            submit=lambda item: self.store.submit(item) if self.store is not None else False,
            db_path=lambda: ctx.options.llmtap_db,
            extra_providers=lambda: self.rules.providers,
            store_limit=lambda: ctx.options.llmtap_max_body,
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
        logger.info(f"llmtap: logging LLM calls to {ctx.options.llmtap_db}")

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
            self._abandon(call)
        self.calls.clear()
        self._stop_store()

    def _start_store(self) -> None:
        o = ctx.options
        try:
            self.cache = CacheStore(o.llmtap_cache, o.llmtap_cache_max_mb * 1024 * 1024)
        except Exception as e:  # a warning: an ERROR during startup would make mitmdump exit
            logger.warning(f"llmtap: response cache unavailable ({o.llmtap_cache}: {e}); caching is off")
            self.cache = None
        self.store = WriterProcess(
            o.llmtap_db,
            o.llmtap_queue_size,
            o.llmtap_flush_ms / 1000,
            cache_path=o.llmtap_cache if self.cache is not None else None,
            cache_max_bytes=o.llmtap_cache_max_mb * 1024 * 1024,
        )
        self.store.start()
        # At most every record not yet converted by the writer: its queue and the batch it holds.
        self.fresh = FreshEntries(
            2 * o.llmtap_queue_size + HANDOFF_BATCH, min(o.llmtap_cache_max_mb, 256) * 1024 * 1024
        )

    def _stop_store(self) -> None:
        if self.store is None:
            return
        self.store.close()
        s = self.store.stats
        logger.info(
            f"llmtap: {s.written} rows written, {s.dropped} dropped, "
            f"{s.write_errors} write errors, {self.hook_errors} hook errors; "
            f"{s.annotations} feedback, score and property updates written"
        )
        self.store = None
        if self.cache is not None:
            self.cache.close()

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
        """Captures of a quiet moment still reach the writer promptly."""
        while True:
            await asyncio.sleep(HANDOFF_SECONDS)
            if self.store is not None:
                self.store.handoff()
                self.fresh.settle(self.store.settled())

    def _swap_rules(self, new: rules.Rules) -> None:
        self.rules = new

    # -- hooks --

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or flow.request.method == "CONNECT":
            return
        with self._guard(flow, "requestheaders"):
            req = flow.request
            reverse = isinstance(flow.client_conn.proxy_mode, ReverseMode)
            found = providers.detect(req.host, req.port, req.path, self.rules.providers, reverse)
            if found is not None:
                host = req.host if req.port in (80, 443) else f"{req.host}:{req.port}"
                self.calls[flow.id] = Call(found, host, redact_path(req.path))

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Sync on the fast path; returns a coroutine (mitmproxy awaits it) only to deliver, or to
        let the cents / tokens charges of calls that have finished land first."""
        call = self.calls.get(flow.id)
        if call is None:
            return None
        if self._charging:
            return self._guarded(flow, "request", self._request_after_charges(flow, call))
        return self._request(flow, call)

    async def _request_after_charges(self, flow: http.HTTPFlow, call: Call) -> None:
        """A script's next call comes the moment the last one returned, before that call's real
        cost or tokens (priced off the event loop) are charged: it waits for those charges, so its
        buckets are up to date (sub-millisecond; other connections keep flowing meanwhile)."""
        await asyncio.wait(list(self._charging))
        work = self._request(flow, call)
        if work is not None:
            await work

    def _request(self, flow: http.HTTPFlow, call: Call) -> Coroutine[Any, Any, None] | None:
        with self._guard(flow, "request"):
            try:
                self._start_call(flow, call)
            except HeaderError as e:
                flow.response = replies.error(call.provider.api, 400, str(e), e.header)
            if flow.response is None and call.delivers and not (call.capture and call.capture.streamed):
                # Retries / fallbacks for a non-streamed call: llmtap makes every attempt itself,
                # so connection errors and timeouts can be retried too (reference §4, approach A).
                return self._guarded(flow, "request", self._deliver(flow, call, None))
        return None

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
            if 200 <= resp.status_code < 300 and _is_stream(resp, c.endpoint):
                call.tee = StreamTee(ctx.options.llmtap_max_body, c.strip_usage)
                resp.stream = call.tee

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
            self._finish(flow, call, None)
        return None

    async def _retry_then_finish(self, flow: http.HTTPFlow, call: Call, resp: http.Response) -> None:
        """A streamed call that failed before anything reached the client (reference §4, B)."""
        first = upstream.Reply(
            resp.status_code, list(resp.headers.items(multi=True)), resp.raw_content or b""
        )
        await self._guarded(flow, "response", self._deliver(flow, call, first))
        with self._guard(flow, "response"):
            self._finish(flow, call, None)

    async def _guarded(self, flow: http.HTTPFlow, hook: str, work: Coroutine[Any, Any, None]) -> None:
        with self._guard(flow, hook):
            await work

    def error(self, flow: http.HTTPFlow) -> None:
        call = self.calls.pop(flow.id, None)
        if call is not None and call.capture is not None:
            with self._guard(flow, "error"):
                self._finish(flow, call, flow.error.msg if flow.error else "unknown error")

    # -- helpers --

    def _start_call(self, flow: http.HTTPFlow, call: Call) -> None:
        req = flow.request
        fields = list(req.headers.items(multi=True))
        # Names from `fields`: Headers.keys() costs ~50 us (it looks every name up again).
        for name in helicone.proxy_only({name.lower() for name, _ in fields}):
            del req.headers[name]  # first, so no later failure can leak them upstream
        meta = helicone.parse(fields)
        body = req.raw_content or b""
        api = call.provider.api
        kind = providers.endpoint(api, req.path)
        c = call.capture = Capture(
            meta=meta,
            provider=call.provider.name,
            api=api,
            price_id=call.provider.price_id,
            inferred=call.provider.inferred,
            endpoint=kind,
            host=call.host,
            method=req.method,
            path=call.path,
            started=req.timestamp_start,
            request_headers=redact_headers(fields),
            request_body=body,
            store_limit=ctx.options.llmtap_max_body,
        )
        key = ctx.options.llmtap_access_key
        if key and not hmac.compare_digest(meta.auth or "", f"Bearer {key}"):
            flow.response = replies.error(api, 401, "llmtap: missing or wrong Helicone-Auth proxy access key")
            return
        lowered = {name.lower(): value for name, value in fields}
        # What rules match on is read only when something will match (the common case is neither).
        needed = self.rules.rules or "helicone-ratelimit-policy" in lowered
        match = self._match_request(flow, call, c) if needed else None
        if self._answer_from_cache(flow, call, lowered, match) or self._rate_limited(
            flow, call, lowered, match
        ):
            return
        found = self.rules.retry_for(match) if match and self.rules.rules else None
        call.retry = retry.policy_for(lowered, found[1] if found else None)
        call.fallbacks = attempts.fallbacks_for(
            lowered, self.rules.fallbacks_for(match) if match and self.rules.rules else ()
        )
        c.streamed = providers.wants_stream(api, kind, body)
        if c.streamed:
            req.headers["accept-encoding"] = "identity"  # the tee reads the events as they pass
            if (
                ctx.options.llmtap_stream_usage
                and call.provider.stream_usage
                and providers.needs_usage_injection(api, kind, body)
            ):
                c.strip_usage = _inject_include_usage(req)

    def _rate_limited(
        self, flow: http.HTTPFlow, call: Call, lowered: dict[str, str], match: rules.Request | None
    ) -> bool:
        """Apply every rate limit of this call; True when one of them answered it with a 429."""
        c = call.capture
        assert c is not None
        if match is None:
            return False
        found = [(r.name, p) for r, p in self.rules.rate_limits_for(match)] if self.rules.rules else []
        header = lowered.get("helicone-ratelimit-policy")
        if not found and header is None:
            return False
        limits = ratelimit.limits_for(found, header, match.user, c.meta.properties)
        ok, states = ratelimit.admit(self.buckets, limits)
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

    def _answer_from_cache(
        self, flow: http.HTTPFlow, call: Call, lowered: dict[str, str], match: rules.Request | None
    ) -> bool:
        """Set up caching for this call; True when a hit answered it."""
        c = call.capture
        assert c is not None
        found = self.rules.cache_for(match) if match and self.rules.rules else None
        policy = cache_keys.policy_for(lowered, found[1] if found else None)
        if policy is None or c.endpoint is None:
            return False
        req = flow.request
        lookup = cache_keys.lookup_for(policy, req.method, call.host, req.path, c.request_body, lowered)
        if policy.save:
            c.cache_save = lookup
        if not policy.read:
            return False
        c.cache_status = "MISS"
        keys = lookup.keys()
        slots = self._cache_slots(keys)
        picked = cachestore.pick(slots[1]) if slots is not None else None
        if slots is None or picked is None:
            return False
        idx, entry = picked
        c.cache_status, c.hit, c.hit_key, c.cache_save = "HIT", entry, keys[idx], None
        c.hit_fresh = slots[0][idx] is None
        c.streamed = entry.streamed
        flow.response = replies.cache_hit(entry, idx, c.meta.request_id)
        return True

    def _cache_slots(self, keys: list[str]) -> tuple[list[Entry | None], list[Entry | None]] | None:
        """A bucket's entries in the file, and the same with the slots the writer has not saved yet
        filled from memory; None when there is no cache or it cannot be read (a miss)."""
        if self.cache is None:
            return None
        try:
            stored = self.cache.get(keys)
        except Exception:  # an unreadable cache is a miss, never a failed request
            logger.exception("llmtap: cache lookup failed; treating it as a miss")
            return None
        return stored, self.fresh.fill(keys, stored)

    def _fresh_slot(self, c: Capture) -> str | None:
        """The slot a response to be saved will take (c.cache_slot), so that the next identical
        call finds it in memory until the writer has saved it; None when the bucket is full."""
        assert c.cache_save is not None
        keys = c.cache_save.keys()
        slots = self._cache_slots(keys)
        if slots is None:
            return None
        c.cache_slot = cachestore.first_free([e is not None for e in slots[1]])
        return keys[c.cache_slot] if c.cache_slot is not None else None

    def _match_request(self, flow: http.HTTPFlow, call: Call, c: Capture) -> rules.Request:
        model = user = None
        if self.rules.needs_body:
            try:
                doc = json.loads(c.request_body) if c.request_body else None
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                model = doc.get("model") if isinstance(doc.get("model"), str) else None
                user = doc.get("user") if isinstance(doc.get("user"), str) else None
            model = model or providers.path_model(c.api, flow.request.path)
        return rules.Request(
            provider=call.provider.name,
            host=call.host,
            path=flow.request.path.split("?", 1)[0],
            method=flow.request.method,
            model=model,
            user=c.meta.user_id or user,
            properties=c.meta.properties,
        )

    async def _deliver(self, flow: http.HTTPFlow, call: Call, first: upstream.Reply | None) -> None:
        c = call.capture
        assert c is not None
        req = flow.request
        target = attempts.Target(
            req.method, req.url, list(req.headers.items(multi=True)), req.raw_content or b""
        )
        call.delivered = True
        out = await attempts.deliver(target, call.retry, call.fallbacks, self.tls, timeout=600.0, first=first)
        c.retries, c.attempts, c.fallback_index = out.retries, out.attempts, out.fallback_index
        reply = out.reply
        if reply.status is None:
            flow.response = replies.error(
                c.api, 502, f"llmtap: no response after {len(out.attempts)} attempts: {reply.error}"
            )
            return
        body, fields = _identity(reply)
        call.upstream_body = body
        if _is_event_stream(reply.header_map()) and c.strip_usage and 200 <= reply.status < 300:
            body = client_view_of(body)
        flow.response = http.Response.make(reply.status, b"", fields)
        flow.response.raw_content = body  # as is: `content` would encode it by content-encoding
        flow.response.headers["content-length"] = str(len(body))
        if out.fallback_index is not None:
            flow.response.headers["helicone-fallback-index"] = str(out.fallback_index)
        flow.response.headers.update(call.rate_headers)
        flow.response.headers["helicone-id"] = c.meta.request_id

    def _charge_later(self, call: Call) -> None:
        """cents / tokens limits are charged with the real usage, priced off the event loop."""
        c, limits = call.capture, call.charge
        assert c is not None

        def work() -> None:
            cents, tokens = spent(c)
            ratelimit.charge(self.buckets, limits, cents, tokens)

        try:
            pending = asyncio.get_running_loop().run_in_executor(None, work)
        except RuntimeError:  # no loop (unit tests): do it now
            work()
            return
        self._charging.add(pending)
        pending.add_done_callback(self._charged)

    def _charged(self, done: asyncio.Future[None]) -> None:
        self._charging.discard(done)
        if not done.cancelled() and done.exception() is not None:
            self.hook_errors += 1
            logger.error("llmtap: charging a rate limit failed", exc_info=done.exception())

    def _finish(self, flow: http.HTTPFlow, call: Call, error: str | None) -> None:
        c = call.capture
        assert c is not None
        resp = flow.response
        end = time.time()
        if resp is not None:
            c.status = resp.status_code
            c.content_encoding = resp.headers.get("content-encoding")
            c.content_type = resp.headers.get("content-type")
            end = resp.timestamp_end or end
        if call.tee is not None:
            c.streamed = True
            c.response_body, c.truncated = call.tee.body(), call.tee.truncated
            if call.tee.first_token_at is not None:
                c.ttft_ms = (call.tee.first_token_at - c.started) * 1000
            if call.tee.failed:
                c.extra_notes.append(call.tee.failed)
            if error is None and not call.tee.ended:
                error = "stream ended early"
        elif call.upstream_body is not None:  # its encoding is the response's (see _identity)
            c.response_body = call.upstream_body
        elif resp is not None:
            c.response_body = resp.raw_content or b""
        c.latency_ms = (end - c.started) * 1000
        c.error = error
        self.service.remember(c.meta.request_id)
        if call.charge and c.status is not None and 200 <= c.status < 300:
            self._charge_later(call)
        if self.store is None:
            return
        slot = self._fresh_slot(c) if c.cacheable else None
        if self.store.submit(c) and slot is not None:
            assert c.cache_save is not None
            self.fresh.add(slot, c, self.store.queued, c.cache_save.policy.ttl)

    def _abandon(self, call: Call) -> None:
        c = call.capture
        if c is None or self.store is None:
            return
        if call.tee is not None:
            c.streamed = True
            c.response_body, c.truncated = call.tee.body(), call.tee.truncated
        c.latency_ms = (time.time() - c.started) * 1000
        c.error = "proxy shut down before the call finished"
        self.store.submit(c)

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


def _identity(reply: upstream.Reply) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The body llmtap's own client received, decoded, and its headers without content-encoding:
    body and header then always agree (identity is acceptable to every client), and the row reads
    the usage from plain JSON. A body that cannot be decoded goes out exactly as it came."""
    fields = [(k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in reply.headers]
    encoding = reply.header_map().get("content-encoding", "identity").strip().lower()
    if encoding == "identity" or not reply.body:
        return reply.body, fields
    try:
        body = net_encoding.decode(reply.body, encoding)
    except (ValueError, LookupError):
        return reply.body, fields
    return body, [(k, v) for k, v in fields if k.lower() != b"content-encoding"]


def _is_event_stream(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").startswith("text/event-stream")


def _is_stream(resp: http.Response, kind: str | None) -> bool:
    return _is_event_stream(resp.headers) or kind == "stream_generate"


def _inject_include_usage(req: http.Request) -> bool:
    """Ask for the final usage chunk; True when the body was changed (the tee then hides it)."""
    try:
        body = json.loads(req.get_content(strict=False) or b"")
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    opts = body.get("stream_options")
    body["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    req.content = json.dumps(body, separators=(",", ":")).encode()
    return True
