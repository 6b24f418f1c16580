from __future__ import annotations

import asyncio
import gzip
import inspect
import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from mitmproxy import exceptions, http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from llmtap.accounting.record import Capture
from llmtap.policy import cache_keys, ratelimit
from llmtap.policy.values import CachePolicy
from llmtap.proxy import addon as addon_module
from llmtap.proxy import calls
from llmtap.proxy import limits as limits_module
from llmtap.proxy.addon import LLMTap
from llmtap.proxy.fleet import SharedState
from llmtap.proxy.fresh import FreshEntries
from llmtap.proxy.stream import StreamTee
from llmtap.storage.cachestore import CacheStore, Entry
from llmtap.wire import helicone, providers
from tests.servers import RedisServer

from . import samples

REQUEST_ID = "0b9e5f2a-8d63-4c1e-9f0a-5a3c7d2e1b44"
CHAT_BODY = samples.dumps(samples.CHAT_REQUEST)
STREAM_BODY = samples.dumps(samples.STREAM_REQUEST)
INJECTED = samples.openai_stream("final")
AS_ASKED = samples.openai_stream("none")


class FakeStore:
    """Collects what the addon queues; never blocks, like the real Store."""

    def __init__(self) -> None:
        self.submitted: list[Capture] = []
        self.converted = 0  # how far the writer has got, as WriterProcess.settled() reports it

    @property
    def queued(self) -> int:
        return len(self.submitted)

    def submit(self, capture: Capture) -> bool:
        self.submitted.append(capture)
        return True

    def settled(self) -> int:
        return self.converted

    def close(self, timeout: float = 30.0) -> None:
        pass


Tap = tuple[LLMTap, taddons.context, FakeStore]


@pytest.fixture
def tap() -> Iterator[Tap]:
    a = LLMTap()
    with taddons.context(a) as tctx:
        store = FakeStore()
        a.store = store  # type: ignore[assignment]
        yield a, tctx, store


def request(
    host: str = "api.openai.com",
    path: str = "/v1/chat/completions",
    body: bytes = CHAT_BODY,
    extra: tuple[tuple[str, str], ...] = (),
    port: int = 443,
) -> http.HTTPFlow:
    fields = [
        ("Host", host),
        ("Authorization", "Bearer sk-proj-SECRET"),
        ("Content-Type", "application/json"),
        *extra,
    ]
    req = tutils.treq(
        host=host, port=port, scheme=b"https", method=b"POST", path=path.encode(),
        headers=http.Headers([(k.encode(), v.encode()) for k, v in fields]), content=body,
    )  # fmt: skip
    return tflow.tflow(req=req)


def respond(
    status: int = 200,
    body: bytes = samples.dumps(samples.openai_chat_json()),
    ctype: str = "application/json",
) -> http.Response:
    return tutils.tresp(status_code=status, headers=http.Headers(content_type=ctype), content=body)


def drive(result: object) -> None:
    """Run a hook's coroutine to completion, as mitmproxy awaits async hooks."""
    if inspect.iscoroutine(result):
        asyncio.run(result)


def send(a: LLMTap, f: http.HTTPFlow) -> None:
    a.requestheaders(f)
    if f.response is None:
        drive(a.request(f))


def receive(a: LLMTap, f: http.HTTPFlow, resp: http.Response, chunks: list[bytes] | None = None) -> bytes:
    """Run the response hooks; with chunks, drive the stream like mitmproxy. Returns what the client got."""
    f.response = resp
    a.responseheaders(f)
    received = b""
    if chunks is not None:
        assert callable(f.response.stream)
        for chunk in [*chunks, b""]:
            out = f.response.stream(chunk)
            received += out if isinstance(out, bytes) else b"".join(out)
        f.response.content = None  # store_streamed_bodies=false
    drive(a.response(f))
    return received


def test_openai_call_strips_proxy_headers_and_sets_helicone_id(tap: Tap) -> None:
    a, _, store = tap
    f = request(extra=(
        ("Helicone-Request-Id", REQUEST_ID), ("Helicone-User-Id", "alice"),
        ("Helicone-Property-App", "docs"), ("Helicone-Omit-Response", "true"),
    ))  # fmt: skip
    send(a, f)
    assert [k for k in f.request.headers if k.lower().startswith("helicone-")] == []
    assert f.request.headers["authorization"] == "Bearer sk-proj-SECRET", "the provider key goes upstream"
    assert f.request.raw_content == CHAT_BODY
    assert f.response is None

    receive(a, f, respond())
    assert f.response is not None and f.response.headers["helicone-id"] == REQUEST_ID
    assert f.response.stream is False
    assert a.calls == {}

    [c] = store.submitted
    assert (c.provider, c.api, c.endpoint, c.method) == ("openai", "openai", "chat", "POST")
    assert (c.host, c.path) == ("api.openai.com", "/v1/chat/completions")
    assert (c.meta.request_id, c.meta.user_id, c.meta.properties) == (REQUEST_ID, "alice", {"app": "docs"})
    assert c.meta.omit_response
    assert c.request_headers["authorization"] == "[REDACTED]"
    assert c.request_headers["helicone-user-id"] == "alice"
    assert "sk-proj-SECRET" not in json.dumps(c.request_headers)
    assert (c.status, c.streamed, c.error) == (200, False, None)
    assert c.request_body == CHAT_BODY
    assert c.response_body == samples.dumps(samples.openai_chat_json())
    assert c.latency_ms == pytest.approx((946681203 - 946681200) * 1000)


def test_generated_request_id_is_returned(tap: Tap) -> None:
    a, _, store = tap
    f = request()
    send(a, f)
    receive(a, f, respond())
    assert f.response is not None
    assert f.response.headers["helicone-id"] == store.submitted[0].meta.request_id


def test_non_llm_host_is_untouched(tap: Tap) -> None:
    a, _, store = tap
    f = request(host="example.com", path="/v1/chat/completions", extra=(("Helicone-User-Id", "alice"),))
    before = f.request.get_state()
    send(a, f)
    resp = respond(ctype="text/event-stream", body=INJECTED)
    resp_before = resp.get_state()
    receive(a, f, resp)
    assert f.request.get_state() == before
    assert f.response is not None and f.response.get_state() == resp_before
    assert f.response.stream is False
    assert store.submitted == [] and a.calls == {}


@pytest.mark.parametrize(
    "status, ctype, streamed",
    [
        # 2xx event streams are teed
        (200, "text/event-stream", True),
        (200, "text/event-stream; charset=utf-8", True),
        # errors and JSON are buffered as usual
        (429, "text/event-stream", False),
        (200, "application/json", False),
    ],
)
def test_responseheaders_sets_a_tee_for_2xx_event_streams(
    tap: Tap, status: int, ctype: str, streamed: bool
) -> None:
    a, _, _ = tap
    f = request(body=STREAM_BODY)
    send(a, f)
    f.response = respond(status, INJECTED, ctype)
    a.responseheaders(f)
    assert isinstance(f.response.stream, StreamTee) is streamed


def test_stream_without_include_usage_gets_it_and_the_client_never_sees_it(tap: Tap) -> None:
    a, _, store = tap
    f = request(body=STREAM_BODY, extra=(("Accept-Encoding", "gzip, br"),))
    send(a, f)
    upstream = json.loads(f.request.content or b"")
    assert upstream == {**samples.STREAM_REQUEST, "stream_options": {"include_usage": True}}
    assert f.request.headers["accept-encoding"] == "identity"

    events = [e + b"\n\n" for e in INJECTED.split(b"\n\n") if e]
    received = receive(a, f, respond(body=b"", ctype="text/event-stream"), events)
    assert received == AS_ASKED

    [c] = store.submitted
    assert c.request_body == STREAM_BODY, "the row keeps the request as the client sent it"
    assert (c.streamed, c.response_body, c.truncated, c.error) == (True, INJECTED, False, None)
    assert c.ttft_ms is not None


@pytest.mark.parametrize(
    "host, body, options",
    [
        # the client already asked for usage
        (
            "api.openai.com",
            samples.dumps({**samples.STREAM_REQUEST, "stream_options": {"include_usage": True}}),
            {},
        ),
        # turned off by option
        ("api.openai.com", STREAM_BODY, {"llmtap_stream_usage": False}),
        # a provider that rejects unknown fields
        ("api.mistral.ai", STREAM_BODY, {}),
        # not a stream
        ("api.openai.com", CHAT_BODY, {}),
    ],
)
def test_request_body_is_left_alone(tap: Tap, host: str, body: bytes, options: dict[str, object]) -> None:
    a, tctx, _ = tap
    if options:
        tctx.configure(a, **options)
    f = request(host=host, body=body)
    send(a, f)
    assert f.request.raw_content == body
    f.response = respond(body=b"", ctype="text/event-stream")
    a.responseheaders(f)
    if body != CHAT_BODY:
        assert callable(f.response.stream)
        assert f.response.stream(INJECTED) == INJECTED, "no usage chunk is hidden"


@pytest.mark.parametrize(
    "auth, status",
    [
        (None, 401),
        ("Bearer wrong", 401),
        ("k1", 401),
        ("Bearer k1", None),
    ],
)
def test_access_key(tap: Tap, auth: str | None, status: int | None) -> None:
    a, tctx, store = tap
    tctx.configure(a, llmtap_access_key="k1")
    f = request(extra=(("Helicone-Auth", auth),) if auth else ())
    send(a, f)
    assert "helicone-auth" not in f.request.headers
    if status is None:
        assert f.response is None
        return
    assert f.response is not None and f.response.status_code == status
    assert f.response.headers["content-type"] == "application/json"
    assert json.loads(f.response.content or b"") == {
        "error": {
            "message": "llmtap: missing or wrong Helicone-Auth proxy access key",
            "type": "authentication_error",
            "param": None,
            "code": "authentication_error",
        }
    }
    a.responseheaders(f)
    drive(a.response(f))
    assert [c.status for c in store.submitted] == [401]
    assert "k1" not in json.dumps(store.submitted[0].request_headers)


@pytest.mark.parametrize(
    "target, hook",
    [
        (lambda mp: mp.setattr(providers, "detect", boom), "requestheaders"),
        (lambda mp: mp.setattr(helicone, "parse", boom), "request"),
        (lambda mp: mp.setattr(addon_module, "StreamTee", boom), "responseheaders"),
    ],
)
def test_an_exception_in_a_hook_does_not_propagate(
    tap: Tap,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    target: object,
    hook: str,
) -> None:
    a, _, store = tap
    target(monkeypatch)  # type: ignore[operator]
    f = request(body=STREAM_BODY, extra=(("Helicone-User-Id", "alice"),))
    with caplog.at_level(logging.ERROR, logger="llmtap.proxy.addon"):
        send(a, f)
        receive(a, f, respond(body=INJECTED, ctype="text/event-stream"))
    assert a.hook_errors == 1
    assert f"llmtap: {hook} hook failed for api.openai.com/v1/chat/completions" in caplog.text
    assert f.response is not None and f.response.status_code == 200 and f.response.stream is False
    assert store.submitted == [] and a.calls == {}


def boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("injected failure")


def test_error_hook_records_the_failure(tap: Tap) -> None:
    a, _, store = tap
    f = request()
    send(a, f)
    f.error = tflow.terr("Connection refused")
    a.error(f)
    [c] = store.submitted
    assert (c.status, c.error, c.response_body) == (None, "Connection refused", b"")
    assert a.calls == {}


def test_stream_cut_before_the_end_is_an_error(tap: Tap) -> None:
    a, _, store = tap
    f = request(body=STREAM_BODY)
    send(a, f)
    f.response = respond(body=b"", ctype="text/event-stream")
    a.responseheaders(f)
    assert callable(f.response.stream)
    f.response.stream(INJECTED[:200])
    drive(a.response(f))
    [c] = store.submitted
    assert (c.streamed, c.error, c.response_body) == (True, "stream ended early", INJECTED[:200])


def test_reverse_mode_recognises_an_unlisted_host_by_path(tap: Tap) -> None:
    a, _, store = tap
    f = request(host="llm-gateway.internal", port=8443)
    f.client_conn.proxy_mode = ProxyMode.parse("reverse:https://llm-gateway.internal:8443")
    send(a, f)
    receive(a, f, respond())
    [c] = store.submitted
    assert (c.provider, c.inferred, c.host) == ("openai", True, "llm-gateway.internal:8443")


def test_gemini_key_is_redacted_from_the_path(tap: Tap) -> None:
    a, _, store = tap
    path = "/v1beta/models/gemini-1.5-flash:generateContent?key=AIzaSyD-SECRET"
    f = request(host="generativelanguage.googleapis.com", path=path, body=b'{"contents":[]}')
    send(a, f)
    receive(a, f, respond(body=samples.dumps(samples.gemini_json())))
    assert f.request.path == path, "upstream still gets its key"
    [c] = store.submitted
    assert c.path == "/v1beta/models/gemini-1.5-flash:generateContent?key=[REDACTED]"


def test_bad_rules_file_refuses_to_configure(tap: Tap, tmp_path: Path) -> None:
    a, tctx, _ = tap
    path = tmp_path / "rules.yaml"
    path.write_text("providers:\n  - host: localhost:8000\n    api: grpc\n")
    with pytest.raises(
        exceptions.OptionsError,
        match=r"providers\[0\]\.api: expected one of openai, anthropic, gemini, got 'grpc'",
    ):
        tctx.configure(a, llmtap_rules=str(path))


def test_rules_file_adds_a_provider(tap: Tap, tmp_path: Path) -> None:
    a, tctx, store = tap
    path = tmp_path / "rules.yaml"
    path.write_text("providers:\n  - host: localhost:8000\n    api: openai\n    name: vllm\n")
    tctx.configure(a, llmtap_rules=str(path))
    f = request(host="localhost", port=8000)
    send(a, f)
    receive(a, f, respond())
    [c] = store.submitted
    assert (c.provider, c.price_id, c.host) == ("vllm", None, "localhost:8000")


def test_running_and_done_write_rows_with_the_real_store(tmp_path: Path) -> None:
    a = LLMTap()
    db = tmp_path / "tap.duckdb"
    with taddons.context(a) as tctx:
        tctx.options.add_option("connection_strategy", str, "eager", "from mitmproxy's Proxyserver addon")
        tctx.configure(a, llmtap_db=str(db), llmtap_flush_ms=50)
        a.running()
        assert tctx.options.connection_strategy == "lazy"
        f = request()
        send(a, f)
        receive(a, f, respond())
        a.done()
    with duckdb.connect(str(db), read_only=True) as conn:
        assert conn.execute("SELECT host, model, input_tokens, usage_source FROM requests").fetchall() == [
            ("api.openai.com", "gpt-4o-2024-08-06", 1200, "response")
        ]


# -- the response cache --

CACHE_ON = (("Helicone-Cache-Enabled", "true"),)


@pytest.fixture
def cached(tap: Tap, tmp_path: Path) -> Iterator[Tap]:
    a, _, _ = tap
    a.cache.file = CacheStore(tmp_path / "cache.sqlite")
    # As _start_store makes it; its clock is the test flows' (tflow's timestamps are from 2000).
    a.cache.fresh = FreshEntries(100, 1 << 20, clock=lambda: tutils.tresp().timestamp_end + 1)
    yield tap
    a.cache.close()


def saved_entry(
    c: Capture, body: bytes = samples.dumps(samples.openai_chat_json()), **fields: object
) -> Entry:
    values: dict[str, object] = dict(
        request_id=c.meta.request_id, status=200, content_type="application/json", streamed=False, body=body,
        model="gpt-4o-2024-08-06", input_tokens=1200, output_tokens=300, cost_usd=Decimal("0.0047"),
        latency_ms=812.5,
    )  # fmt: skip
    values.update(fields)
    return Entry(**values)  # type: ignore[arg-type]


def test_a_cache_miss_is_marked_and_saved_for_later(cached: Tap) -> None:
    a, _, store = cached
    f = request(extra=CACHE_ON)
    send(a, f)
    assert f.response is None, "a miss goes upstream"
    assert "helicone-cache-enabled" not in f.request.headers
    receive(a, f, respond())
    assert f.response is not None and f.response.headers["helicone-cache"] == "MISS"
    [c] = store.submitted
    assert c.cache_status == "MISS" and c.hit is None and c.hit_key is None
    assert c.cache_save is not None and c.cache_save.policy == CachePolicy()
    sent = {"authorization": "Bearer sk-proj-SECRET", "helicone-cache-enabled": "true"}
    expected = cache_keys.lookup_for(
        CachePolicy(), "POST", "api.openai.com", "/v1/chat/completions", CHAT_BODY, sent
    )
    assert c.cache_save == expected


def test_an_identical_call_is_answered_from_the_cache(cached: Tap) -> None:
    a, _, store = cached
    first = request(extra=CACHE_ON)
    send(a, first)
    receive(a, first, respond())
    [miss] = store.submitted
    assert miss.cache_save is not None and a.cache.file is not None
    a.cache.file.put(miss.cache_save.keys(), saved_entry(miss), 3600)  # what the writer does

    f = request(extra=(*CACHE_ON, ("Helicone-Request-Id", REQUEST_ID)))
    send(a, f)
    assert f.response is not None, "answered by the request hook: the provider is never contacted"
    assert f.response.status_code == 200
    assert f.response.content == samples.dumps(samples.openai_chat_json())
    assert f.response.headers["helicone-cache"] == "HIT"
    assert f.response.headers["helicone-cache-bucket-idx"] == "0"
    assert f.response.headers["helicone-id"] == REQUEST_ID
    assert f.response.headers["content-type"] == "application/json"
    drive(a.response(f))  # mitmproxy skips responseheaders for a response set in `request`
    hit = store.submitted[1]
    assert hit.cache_status == "HIT" and hit.hit is not None
    assert hit.hit.request_id == miss.meta.request_id
    assert hit.hit_key == miss.cache_save.keys()[0]
    assert hit.cache_save is None, "a hit is not saved again"
    assert (hit.status, hit.meta.request_id, hit.streamed) == (200, REQUEST_ID, False)
    assert a.calls == {}


def test_the_next_identical_call_is_a_hit_before_the_writer_has_saved_it(cached: Tap) -> None:
    """A script's second call, sent as the first returned: the file has no entry yet."""
    a, _, store = cached
    first = request(extra=CACHE_ON)
    send(a, first)
    plain = samples.dumps(samples.openai_chat_json())
    gz = respond(body=gzip.compress(plain))
    gz.headers["content-encoding"] = "gzip"  # as the real API answers an SDK
    receive(a, first, gz)
    [miss] = store.submitted
    assert miss.cache_save is not None and miss.cache_slot == 0
    assert a.cache.file is not None and a.cache.file.stats()["entries"] == 0

    f = request(extra=CACHE_ON)
    send(a, f)
    assert f.response is not None and f.response.headers["helicone-cache"] == "HIT"
    assert f.response.raw_content == plain and "content-encoding" not in f.response.headers
    drive(a.response(f))
    hit = store.submitted[1]
    assert (hit.cache_status, hit.hit_fresh, hit.hit_key) == ("HIT", True, miss.cache_save.keys()[0])
    assert hit.hit is not None and hit.hit.request_id == miss.meta.request_id

    store.converted = store.queued  # the writer has converted both: memory lets go
    a.cache.settle(store.settled())
    assert len(a.cache.fresh) == 0
    g = request(extra=CACHE_ON)
    send(a, g)
    assert g.response is None, "nothing in memory and (here) nothing saved: a miss"


def test_a_bucket_fills_with_its_first_calls_back_to_back(cached: Tap) -> None:
    a, _, store = cached
    bucket = (*CACHE_ON, ("Helicone-Cache-Bucket-Max-Size", "3"))
    for i in range(3):
        f = request(extra=bucket)
        send(a, f)
        assert f.response is None, f"call {i} fills a slot"
        receive(a, f, respond(body=samples.dumps(samples.openai_chat_json()).replace(b"Hello!", b"%d" % i)))
    assert [c.cache_slot for c in store.submitted] == [0, 1, 2]
    seen = set()
    for _ in range(30):
        f = request(extra=bucket)
        send(a, f)
        assert f.response is not None and f.response.headers["helicone-cache"] == "HIT"
        seen.add(f.response.headers["helicone-cache-bucket-idx"])
        drive(a.response(f))
    assert seen == {"0", "1", "2"}


def test_a_slot_the_file_already_has_is_not_taken_again(cached: Tap) -> None:
    a, _, store = cached
    bucket = (*CACHE_ON, ("Helicone-Cache-Bucket-Max-Size", "2"))
    first = request(extra=bucket)
    send(a, first)
    c = a.calls[first.id].capture
    assert c is not None and c.cache_save is not None and a.cache.file is not None
    a.cache.file.put(c.cache_save.keys(), saved_entry(c), 3600)  # slot 0 saved by an earlier run
    receive(a, first, respond())
    assert store.submitted[0].cache_slot == 1
    f = request(extra=bucket)
    send(a, f)
    assert f.response is not None and f.response.headers["helicone-cache"] == "HIT"


@pytest.mark.parametrize("cut", [False, True])
def test_what_will_not_be_saved_is_not_held(cached: Tap, cut: bool) -> None:
    a, _, store = cached
    f = request(body=STREAM_BODY if cut else CHAT_BODY, extra=CACHE_ON)
    send(a, f)
    if cut:  # a stream that ended before its end
        f.response = respond(body=b"", ctype="text/event-stream")
        a.responseheaders(f)
        assert callable(f.response.stream)
        f.response.stream(INJECTED[:200])
        drive(a.response(f))
    else:
        receive(a, f, respond(status=500))
    assert len(a.cache.fresh) == 0 and store.submitted[0].cache_slot is None
    g = request(body=STREAM_BODY if cut else CHAT_BODY, extra=CACHE_ON)
    send(a, g)
    assert g.response is None


def test_a_cached_stream_is_replayed_as_a_stream(cached: Tap) -> None:
    a, _, store = cached
    f = request(body=STREAM_BODY, extra=CACHE_ON)
    send(a, f)
    c = a.calls[f.id].capture
    assert c is not None and c.cache_save is not None and a.cache.file is not None
    a.cache.file.put(
        c.cache_save.keys(), saved_entry(c, AS_ASKED, streamed=True, content_type="text/event-stream"), 60
    )

    g = request(body=STREAM_BODY, extra=CACHE_ON)
    send(a, g)
    assert g.response is not None and g.response.content == AS_ASKED
    assert g.response.headers["content-type"] == "text/event-stream"
    assert g.request.raw_content == STREAM_BODY, "no usage injection for a call that never goes upstream"
    drive(a.response(g))
    assert store.submitted[-1].streamed is True


@pytest.mark.parametrize(
    "extra, auth, body",
    [
        # another seed, API key or body is another entry
        ((*CACHE_ON, ("Helicone-Cache-Seed", "v2")), None, CHAT_BODY),
        (CACHE_ON, "Bearer sk-other", CHAT_BODY),
        (CACHE_ON, None, CHAT_BODY.replace(b"Say hello", b"Say bye")),
        # read not asked for: save-only
        ((("Helicone-Cache-Save", "true"),), None, CHAT_BODY),
    ],
)
def test_no_hit_for_a_different_call(
    cached: Tap, extra: tuple[tuple[str, str], ...], auth: str | None, body: bytes
) -> None:
    a, _, _ = cached
    first = request(extra=CACHE_ON)
    send(a, first)
    c = a.calls[first.id].capture
    assert c is not None and c.cache_save is not None and a.cache.file is not None
    a.cache.file.put(c.cache_save.keys(), saved_entry(c), 3600)

    f = request(body=body, extra=extra)
    if auth is not None:
        f.request.headers["Authorization"] = auth
    send(a, f)
    assert f.response is None
    same = request(extra=CACHE_ON)
    send(a, same)
    assert same.response is not None and same.response.headers["helicone-cache"] == "HIT", "control"


def test_save_only_is_not_marked_but_saved(cached: Tap) -> None:
    a, _, store = cached
    f = request(extra=(("Helicone-Cache-Save", "true"),))
    send(a, f)
    receive(a, f, respond())
    assert f.response is not None and "helicone-cache" not in f.response.headers
    [c] = store.submitted
    assert (c.cache_status, c.cache_save is not None) == (None, True)


def test_no_cache_headers_no_caching(cached: Tap) -> None:
    a, _, store = cached
    f = request()
    send(a, f)
    receive(a, f, respond())
    [c] = store.submitted
    assert (c.cache_status, c.cache_save) == (None, None)
    assert f.response is not None and "helicone-cache" not in f.response.headers


def test_a_cache_rule_turns_caching_on_and_a_header_can_turn_it_off(cached: Tap, tmp_path: Path) -> None:
    a, tctx, store = cached
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n  - name: mini\n    match: {model: 'gpt-4o-mini*'}\n    cache: {ttl: 1h, seed: r1}\n"
    )
    tctx.configure(a, llmtap_rules=str(path))
    for extra in ((), (("Helicone-Cache-Enabled", "false"),)):
        f = request(extra=extra)
        send(a, f)
        receive(a, f, respond())
    on, off = store.submitted
    assert on.cache_status == "MISS"
    assert on.cache_save is not None and on.cache_save.policy == CachePolicy(ttl=3600.0, seed="r1")
    assert (off.cache_status, off.cache_save) == (None, None)


def test_a_bad_bucket_header_is_a_400_naming_it(cached: Tap) -> None:
    a, _, store = cached
    f = request(extra=(*CACHE_ON, ("Helicone-Cache-Bucket-Max-Size", "21")))
    send(a, f)
    assert f.response is not None and f.response.status_code == 400
    message = "Helicone-Cache-Bucket-Max-Size: expected a whole number from 1 to 20, got '21'"
    assert json.loads(f.response.content or b"") == {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": "Helicone-Cache-Bucket-Max-Size",
            "code": "invalid_request_error",
        }
    }
    assert [k for k in f.request.headers if k.lower().startswith("helicone-")] == []
    drive(a.response(f))
    assert [c.status for c in store.submitted] == [400]
    assert a.hook_errors == 0


def test_a_bad_bucket_header_to_anthropic_is_anthropic_shaped(cached: Tap) -> None:
    a, _, _ = cached
    f = request(host="api.anthropic.com", path="/v1/messages", body=b'{"model":"claude-3-5-sonnet-latest"}',
                extra=(*CACHE_ON, ("Helicone-Cache-Bucket-Max-Size", "0")))  # fmt: skip
    send(a, f)
    assert f.response is not None and f.response.status_code == 400
    body = json.loads(f.response.content or b"")
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("Helicone-Cache-Bucket-Max-Size: ")


def test_a_failing_cache_lookup_is_a_miss(
    cached: Tap, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a, _, store = cached
    monkeypatch.setattr(a.cache.file, "get", boom)
    f = request(extra=CACHE_ON)
    with caplog.at_level(logging.ERROR, logger="llmtap.proxy.addon"):
        send(a, f)
    assert f.response is None, "the call goes upstream"
    assert "cache lookup failed; treating it as a miss" in caplog.text
    receive(a, f, respond())
    assert f.response is not None and f.response.headers["helicone-cache"] == "MISS"
    [c] = store.submitted
    assert (c.cache_status, c.status) == ("MISS", 200)
    assert a.hook_errors == 0


def test_without_a_cache_store_a_read_is_a_miss(tap: Tap) -> None:
    a, _, store = tap
    assert a.cache.file is None
    f = request(extra=CACHE_ON)
    send(a, f)
    receive(a, f, respond())
    assert f.response is not None and f.response.headers["helicone-cache"] == "MISS"
    assert store.submitted[0].cache_save is not None


# -- rate limits --

ONE_A_MINUTE = (("Helicone-RateLimit-Policy", "1;w=60"),)
ANTHROPIC_BODY = samples.dumps(
    {"model": "claude-3-5-sonnet-latest", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
)
LIMITED = "llmtap: rate limited by Helicone-RateLimit-Policy (1;w=60); retry after 60 s"
RATE_LIMIT = "rate_limit_error"  # what the openai and anthropic SDKs turn into RateLimitError


@pytest.fixture
def limited(tap: Tap) -> Tap:
    """Buckets on a frozen clock, so nothing refills between calls."""
    tap[0].limits.buckets = ratelimit.MemoryBuckets(lambda: 1000.0)
    return tap


def rate_headers(resp: http.Response | None) -> dict[str, str]:
    assert resp is not None
    wanted = ("helicone-ratelimit-", "retry-after", "x-helicone-error")
    return {k.lower(): v for k, v in resp.headers.items() if k.lower().startswith(wanted)}


@pytest.mark.parametrize(
    "host, path, body, reply, error",
    [
        (
            "api.openai.com", "/v1/chat/completions", CHAT_BODY, samples.openai_chat_json(),
            {"error": {"message": LIMITED, "type": RATE_LIMIT, "param": None, "code": RATE_LIMIT}},
        ),
        (
            "api.anthropic.com", "/v1/messages", ANTHROPIC_BODY, samples.ANTHROPIC_JSON,
            {"type": "error", "error": {"type": RATE_LIMIT, "message": LIMITED}},
        ),
    ],
)  # fmt: skip
def test_a_call_over_its_limit_is_answered_with_a_429(
    limited: Tap, host: str, path: str, body: bytes, reply: dict[str, object], error: dict[str, object]
) -> None:
    a, _, store = limited
    first = request(host=host, path=path, body=body, extra=ONE_A_MINUTE)
    send(a, first)
    assert first.response is None, "allowed: the call goes upstream"
    assert "helicone-ratelimit-policy" not in first.request.headers
    receive(a, first, respond(body=samples.dumps(reply)))
    assert rate_headers(first.response) == {
        "helicone-ratelimit-limit": "1",
        "helicone-ratelimit-remaining": "0",
        "helicone-ratelimit-policy": "1;w=60",
        "helicone-ratelimit-reset": "60",
    }

    second = request(host=host, path=path, body=body, extra=ONE_A_MINUTE)
    send(a, second)
    resp = second.response
    assert resp is not None and resp.status_code == 429, (
        "answered by the request hook: never reaches upstream"
    )
    assert resp.headers["content-type"] == "application/json"
    assert json.loads(resp.content or b"") == error
    assert rate_headers(resp) == {
        "helicone-ratelimit-limit": "1",
        "helicone-ratelimit-remaining": "0",
        "helicone-ratelimit-policy": "1;w=60",
        "helicone-ratelimit-reset": "60",
        "retry-after": "60",
        "x-helicone-error": "rate_limited",
    }
    drive(a.response(second))  # mitmproxy skips responseheaders for a response set in `request`
    allowed, denied = store.submitted
    assert (allowed.status, allowed.rate_limited) == (200, False)
    assert (denied.status, denied.rate_limited) == (429, True)
    assert a.calls == {} and a.hook_errors == 0


def test_a_user_segmented_limit_counts_each_user(limited: Tap) -> None:
    a, _, _ = limited
    policy = ("Helicone-RateLimit-Policy", "1;w=60;s=user")
    statuses = []
    for user in ("alice", "alice", "bob"):
        f = request(extra=(policy, ("Helicone-User-Id", user)))
        send(a, f)
        statuses.append(f.response.status_code if f.response else None)
    assert statuses == [None, 429, None]


@pytest.mark.parametrize(
    "extra, message",
    [
        ((("Helicone-RateLimit-Policy", "10;w=30"),),
         "Helicone-RateLimit-Policy: w must be whole seconds from 60 to 31536000, got '30'"),
        ((("Helicone-RateLimit-Policy", "ten;w=60"),),
         "Helicone-RateLimit-Policy: expected quota;w=seconds[;u=unit][;s=segment], got 'ten;w=60'"),
        ((("Helicone-RateLimit-Policy", "10;w=60;s=user"),),
         "Helicone-RateLimit-Policy: segment s=user needs a Helicone-User-Id header on the request"),
        ((("Helicone-RateLimit-Policy", "10;w=60;s=team"), ("Helicone-User-Id", "alice")),
         "Helicone-RateLimit-Policy: segment s=team needs a Helicone-Property-team header on the request"),
    ],
)  # fmt: skip
def test_a_bad_rate_limit_policy_is_a_400_naming_it(
    limited: Tap, extra: tuple[tuple[str, str], ...], message: str
) -> None:
    a, _, store = limited
    f = request(extra=extra)
    send(a, f)
    assert f.response is not None and f.response.status_code == 400
    assert json.loads(f.response.content or b"") == {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": "Helicone-RateLimit-Policy",
            "code": "invalid_request_error",
        }
    }
    assert [k for k in f.request.headers if k.lower().startswith("helicone-")] == []
    drive(a.response(f))
    [c] = store.submitted
    assert (c.status, c.rate_limited) == (400, False)
    assert a.hook_errors == 0


def test_a_tokens_limit_is_charged_with_the_real_usage(limited: Tap) -> None:
    a, _, _ = limited
    policy = (("Helicone-RateLimit-Policy", "1000;w=60;u=tokens"),)
    first = request(extra=policy)
    send(a, first)
    assert first.response is None
    receive(a, first, respond())  # usage: 1200 + 300 tokens
    assert rate_headers(first.response)["helicone-ratelimit-remaining"] == "1000", "charged after the call"

    second = request(extra=policy)
    send(a, second)
    assert second.response is not None and second.response.status_code == 429, "1000 - 1500 tokens left"
    assert rate_headers(second.response)["helicone-ratelimit-policy"] == "1000;w=60;u=tokens"


def test_the_next_call_waits_for_the_last_ones_charge(limited: Tap, monkeypatch: pytest.MonkeyPatch) -> None:
    """On mitmproxy's loop the charge is priced in a worker thread; a call that comes at once must
    still be admitted against the charged bucket (it awaits the charge; the loop never blocks)."""
    a, _, _ = limited
    slow_spent = limits_module.spent

    def slow(c: Capture) -> tuple[float | None, int | None]:
        import time

        time.sleep(0.2)  # pricing that takes long
        return slow_spent(c)

    monkeypatch.setattr(limits_module, "spent", slow)
    policy = (("Helicone-RateLimit-Policy", "1000;w=60;u=tokens"),)

    async def two_calls() -> http.HTTPFlow:
        first = request(extra=policy)
        a.requestheaders(first)
        assert a.request(first) is None
        first.response = respond()  # usage: 1200 + 300 tokens
        a.responseheaders(first)
        assert a.response(first) is None
        assert len(a.limits.charging) == 1, "priced off the loop"
        second = request(extra=policy)
        a.requestheaders(second)
        work = a.request(second)
        assert inspect.iscoroutine(work), "waits for the pending charge"
        await work
        return second

    second = asyncio.run(two_calls())
    assert second.response is not None and second.response.status_code == 429


def test_in_a_fleet_the_response_completes_after_its_redis_charge(
    tap: Tap, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's next call may go to another proxy, which reads the bucket in Redis: the charge
    must be there when this response completes, however long pricing takes (CI saw a third call
    admitted on a third proxy when the charge was left to land later)."""
    a = tap[0]
    a.shared = a.limits.shared = SharedState(redis_server.url)  # what the writer's start sets up
    slow_spent = limits_module.spent

    def slow(c: Capture) -> tuple[float | None, int | None]:
        import time

        time.sleep(0.2)
        return slow_spent(c)

    monkeypatch.setattr(limits_module, "spent", slow)

    async def one_call() -> None:
        f = request(extra=(("Helicone-RateLimit-Policy", "1000;w=60;u=tokens"),))
        a.requestheaders(f)
        work = a.request(f)
        assert inspect.iscoroutine(work), "asks Redis"
        await work
        assert f.response is None
        f.response = respond()  # usage: 1200 + 300 tokens
        a.responseheaders(f)
        finish = a.response(f)
        assert inspect.iscoroutine(finish), "the response waits for the charge"
        await finish
        assert not a.limits.charging
        await a.shared.close()

    asyncio.run(one_call())
    r = redis_server.client()
    [key] = r.keys("llmtap:v1:rl:*")
    assert float(r.hget(key, "tokens")) == -500.0, "a full bucket of 1000, charged 1500"


def fleet_call(a: LLMTap, extra: tuple[tuple[str, str], ...]) -> tuple[http.HTTPFlow, bool]:
    """One call's request hooks in a fleet, on a running loop as in mitmproxy; whether its limits
    were asked for from its headers (before the body). Connects first, as the proxy does when it
    starts; closes the Redis client after (it is bound to this loop)."""

    async def run() -> tuple[http.HTTPFlow, bool]:
        assert a.shared is not None
        await a.shared.open()
        f = request(extra=extra)
        a.requestheaders(f)
        call = a.calls.get(f.id)
        early = call is not None and call.early is not None
        if f.response is None:
            work = a.request(f)
            if inspect.iscoroutine(work):
                await work
        assert a.shared is not None
        await a.shared.close()
        return f, early

    return asyncio.run(run())


def redis_levels(redis_server: RedisServer) -> list[float]:
    r = redis_server.client()
    return sorted(float(r.hget(key, "tokens")) for key in r.keys("llmtap:v1:rl:*"))


POLICY_5 = (("Helicone-RateLimit-Policy", "5;w=3600"),)


@pytest.mark.parametrize(
    ("rule", "extra", "levels"),
    [
        ("", POLICY_5, [4.0]),
        ("    match: {provider: openai}\n    rate_limit: {quota: 3, window: 1h}\n", POLICY_5, [2.0, 4.0]),
        ("    match: {provider: openai}\n    rate_limit: {quota: 3, window: 1h}\n", (), [2.0]),
    ],
    ids=["header", "rule-and-header", "rule"],
)
def test_in_a_fleet_limits_are_asked_from_the_headers_and_charged_once(
    tap: Tap, redis_server: RedisServer, tmp_path: Path, rule: str, extra: tuple, levels: list[float]
) -> None:
    a, tctx, _ = tap
    if rule:
        path = tmp_path / "rules.yaml"
        path.write_text("rules:\n  - name: r\n" + rule)
        tctx.configure(a, llmtap_rules=str(path))
    a.shared = a.limits.shared = SharedState(redis_server.url)
    f, early = fleet_call(a, extra)
    assert early, "asked in requestheaders"
    assert f.response is None
    c = a.calls[f.id].capture
    assert c is not None and c.rate_limit_store == "redis"
    assert a.calls[f.id].rate_headers["Helicone-RateLimit-Remaining"] == str(int(min(levels)))
    assert redis_levels(redis_server) == levels


@pytest.mark.parametrize(
    ("extra", "option", "status", "levels"),
    [
        ((*POLICY_5, ("Helicone-Cache-Enabled", "true")), {}, None, [4.0]),  # the cache's key is the body
        ((("Helicone-RateLimit-Policy", "5;w=soon"),), {}, 400, []),
        ((*POLICY_5, ("Helicone-Auth", "Bearer wrong")), {"llmtap_access_key": "k"}, 401, []),
        ((), {}, None, []),
    ],
    ids=["cache", "bad-policy", "wrong-access-key", "no-limit"],
)
def test_in_a_fleet_calls_the_headers_cannot_settle_are_asked_in_request(
    tap: Tap, redis_server: RedisServer, extra: tuple, option: dict, status: int | None, levels: list[float]
) -> None:
    a, tctx, _ = tap
    tctx.configure(a, **option)
    a.shared = a.limits.shared = SharedState(redis_server.url)
    f, early = fleet_call(a, extra)
    assert not early
    assert (f.response.status_code if f.response else None) == status
    assert redis_levels(redis_server) == levels  # charged once, or not at all when refused


def test_in_a_fleet_a_rule_on_the_body_or_a_pending_charge_waits_for_request(
    tap: Tap, redis_server: RedisServer, tmp_path: Path
) -> None:
    a, tctx, _ = tap
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n  - name: mini\n    match: {model: 'gpt-4o-mini*'}\n    rate_limit: {quota: 3, window: 1h}\n"
    )
    tctx.configure(a, llmtap_rules=str(path))
    a.shared = a.limits.shared = SharedState(redis_server.url)
    f, early = fleet_call(a, ())
    assert not early and f.response is None
    assert redis_levels(redis_server) == [2.0]  # the model is in the body: matched in request
    tctx.configure(a, llmtap_rules="")
    a.shared = a.limits.shared = SharedState(redis_server.url)

    async def with_a_charge_pending() -> bool:
        pending = asyncio.get_running_loop().create_future()
        a.limits.charging.add(pending)
        f = request(extra=POLICY_5)
        a.requestheaders(f)
        call = a.calls[f.id]
        a.limits.charging.discard(pending)
        await a.shared.close()
        return call.early is not None

    assert not asyncio.run(with_a_charge_pending())


@pytest.mark.parametrize("changed", [False, True], ids=["as-read", "changed-by-an-addon"])
def test_in_a_fleet_the_headers_read_for_the_early_ask_are_read_again_only_if_changed(
    tap: Tap, redis_server: RedisServer, changed: bool
) -> None:
    a, _, _ = tap
    a.shared = a.limits.shared = SharedState(redis_server.url)

    async def run() -> tuple[http.HTTPFlow, calls.Call]:
        assert a.shared is not None
        await a.shared.open()
        f = request(extra=(*POLICY_5, ("Helicone-Property-Team", "blue")))
        a.requestheaders(f)
        if changed:  # another addon, between the two hooks
            f.request.headers["Helicone-Property-Team"] = "red"
        work = a.request(f)
        assert inspect.iscoroutine(work)
        await work
        await a.shared.close()
        return f, a.calls[f.id]

    f, call = asyncio.run(run())
    assert call.early is not None and call.capture is not None
    assert (call.capture.meta is call.early.headers.meta) is not changed
    assert call.capture.meta.properties == {"team": "red" if changed else "blue"}
    assert "Helicone-Property-Team" not in f.request.headers  # proxy-only: stripped either way
    assert redis_levels(redis_server) == [4.0]


def test_in_a_fleet_a_failed_early_ask_still_captures_and_decides_the_call(
    tap: Tap, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a, _, _ = tap
    a.shared = a.limits.shared = SharedState(redis_server.url)

    def broken(flow: http.HTTPFlow, call: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(a, "_decide_early", broken)
    f, early = fleet_call(a, POLICY_5)
    assert not early and f.response is None
    c = a.calls[f.id].capture
    assert c is not None and c.rate_limit_store == "redis"
    assert redis_levels(redis_server) == [4.0]  # asked in request, once
    assert a.hook_errors == 1
    assert "asking Redis from the headers failed" in caplog.text


def test_a_rule_limit_without_its_segment_is_one_shared_bucket(limited: Tap, tmp_path: Path) -> None:
    a, tctx, _ = limited
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: per-user\n    rate_limit: {quota: 1, window: 60s, segment: user}\n")
    tctx.configure(a, llmtap_rules=str(path))
    responses = []
    for extra in ((), (), (("Helicone-User-Id", "alice"),)):
        f = request(extra=extra)
        send(a, f)
        responses.append(f.response)
    anonymous, again, alice = responses
    assert anonymous is None and alice is None
    assert again is not None and again.status_code == 429
    assert json.loads(again.content or b"")["error"]["message"] == (
        "llmtap: rate limited by rule per-user (1;w=60;s=user); retry after 60 s"
    )


def test_recent_ids_follow_the_queue_size(tap: Tap) -> None:
    """The local API remembers as many ids as can still be unwritten: the queue, twice, plus a batch."""
    a, tctx, _ = tap
    a.store = None  # no writer restart: only the API's memory is under test
    tctx.configure(a, llmtap_queue_size=100)
    assert a.service.recent.size == 200 + addon_module.HANDOFF_BATCH
