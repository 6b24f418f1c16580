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
import json
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ReverseMode
from mitmproxy.utils import asyncio_utils

from . import answers, cache, headers, options, providers, reload, rules
from .cachestore import CacheStore
from .headers import HeaderError
from .record import Capture
from .redact import redact_headers, redact_path
from .tee import StreamTee
from .writerproc import HANDOFF_SECONDS, WriterProcess

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Call:
    provider: providers.Provider
    host: str
    path: str
    capture: Capture | None = None
    tee: StreamTee | None = None


class LLMTap:
    def __init__(self) -> None:
        self.rules = rules.Rules()
        self.rules_stamp: reload.Stamp = None
        self.store: WriterProcess | None = None
        self.cache: CacheStore | None = None
        self.calls: dict[str, Call] = {}
        self.hook_errors = 0
        self._watcher: asyncio.Task | None = None
        self._handoff: asyncio.Task | None = None

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
        if self.store is not None and any(o in updated for o in options.STORE_OPTIONS):
            self._stop_store()
            self._start_store()

    def running(self) -> None:
        if ctx.options.connection_strategy == "eager":
            # Lazy: answers made by llmtap (cache hits) never need, or wait for, the upstream.
            ctx.options.connection_strategy = "lazy"
        if self.store is None:
            self._start_store()
        self._start_watcher()
        if self._handoff is None:
            self._handoff = _background(self._handoff_loop, "llmtap handoff")
        logger.info(f"llmtap: logging LLM calls to {ctx.options.llmtap_db}")

    def done(self) -> None:
        for task in (self._watcher, self._handoff):
            if task is not None:
                task.cancel()
        self._watcher = self._handoff = None
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

    def _stop_store(self) -> None:
        if self.store is None:
            return
        self.store.close()
        s = self.store.stats
        logger.info(
            f"llmtap: {s.written} rows written, {s.dropped} dropped, "
            f"{s.write_errors} write errors, {self.hook_errors} hook errors"
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

    async def _handoff_loop(self) -> None:
        """Captures of a quiet moment still reach the writer promptly."""
        while True:
            await asyncio.sleep(HANDOFF_SECONDS)
            if self.store is not None:
                self.store.handoff()

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

    def request(self, flow: http.HTTPFlow) -> None:
        call = self.calls.get(flow.id)
        if call is None:
            return
        with self._guard(flow, "request"):
            try:
                self._start_call(flow, call)
            except HeaderError as e:
                flow.response = answers.error(call.provider.api, 400, str(e), e.header)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = self.calls.get(flow.id)
        if call is None or call.capture is None or flow.response is None or call.capture.hit:
            return
        with self._guard(flow, "responseheaders"):
            c, resp = call.capture, flow.response
            resp.headers["helicone-id"] = c.meta.request_id
            if c.cache_status:
                resp.headers["helicone-cache"] = c.cache_status
            if 200 <= resp.status_code < 300 and _is_stream(resp, c.endpoint):
                call.tee = StreamTee(ctx.options.llmtap_max_body, c.strip_usage)
                resp.stream = call.tee

    def response(self, flow: http.HTTPFlow) -> None:
        call = self.calls.pop(flow.id, None)
        if call is not None and call.capture is not None:
            with self._guard(flow, "response"):
                self._finish(flow, call, None)

    def error(self, flow: http.HTTPFlow) -> None:
        call = self.calls.pop(flow.id, None)
        if call is not None and call.capture is not None:
            with self._guard(flow, "error"):
                self._finish(flow, call, flow.error.msg if flow.error else "unknown error")

    # -- helpers --

    def _start_call(self, flow: http.HTTPFlow, call: Call) -> None:
        req = flow.request
        fields = list(req.headers.items(multi=True))
        for name in headers.proxy_only(list(req.headers.keys())):
            del req.headers[name]  # first, so no later failure can leak them upstream
        meta = headers.parse(fields)
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
        if key and meta.auth != f"Bearer {key}":
            flow.response = answers.error(api, 401, "llmtap: missing or wrong Helicone-Auth proxy access key")
            return
        lowered = {name.lower(): value for name, value in fields}
        if self._answer_from_cache(flow, call, lowered):
            return
        if providers.wants_stream(api, kind, body):
            req.headers["accept-encoding"] = "identity"  # the tee reads the events as they pass
            if (
                ctx.options.llmtap_stream_usage
                and call.provider.stream_usage
                and providers.needs_usage_injection(api, kind, body)
            ):
                c.strip_usage = _inject_include_usage(req)

    def _answer_from_cache(self, flow: http.HTTPFlow, call: Call, lowered: dict[str, str]) -> bool:
        """Set up caching for this call; True when a hit answered it."""
        c = call.capture
        assert c is not None
        found = self.rules.cache_for(self._match_request(flow, call, c)) if self.rules.rules else None
        policy = cache.policy_for(lowered, found[1] if found else None)
        if policy is None or c.endpoint is None:
            return False
        req = flow.request
        lookup = cache.lookup_for(policy, req.method, call.host, req.path, c.request_body, lowered)
        if policy.save:
            c.cache_save = lookup
        if not policy.read:
            return False
        c.cache_status = "MISS"
        picked = self._cache_pick(lookup)
        if picked is None:
            return False
        idx, entry = picked
        c.cache_status, c.hit, c.hit_key, c.cache_save = "HIT", entry, lookup.keys()[idx], None
        c.streamed = entry.streamed
        flow.response = answers.cache_hit(entry, idx, c.meta.request_id)
        return True

    def _cache_pick(self, lookup: cache.Lookup):
        if self.cache is None:
            return None
        try:
            return self.cache.pick(lookup.keys())
        except Exception:  # an unreadable cache is a miss, never a failed request
            logger.exception("llmtap: cache lookup failed; treating it as a miss")
            return None

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
        elif resp is not None:
            c.response_body = resp.raw_content or b""
        c.latency_ms = (end - c.started) * 1000
        c.error = error
        if self.store is not None:
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


def _is_stream(resp: http.Response, kind: str | None) -> bool:
    ctype = resp.headers.get("content-type", "")
    return ctype.startswith("text/event-stream") or kind == "stream_generate"


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
