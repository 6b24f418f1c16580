from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from mitmproxy import exceptions, http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from llmtap import addon as addon_module
from llmtap import headers, providers
from llmtap.addon import LLMTap
from llmtap.record import Capture
from llmtap.tee import StreamTee

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

    def submit(self, capture: Capture) -> bool:
        self.submitted.append(capture)
        return True

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


def send(a: LLMTap, f: http.HTTPFlow) -> None:
    a.requestheaders(f)
    if f.response is None:
        a.request(f)


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
    a.response(f)
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
    a.response(f)
    assert [c.status for c in store.submitted] == [401]
    assert "k1" not in json.dumps(store.submitted[0].request_headers)


@pytest.mark.parametrize(
    "target, hook",
    [
        (lambda mp: mp.setattr(providers, "detect", boom), "requestheaders"),
        (lambda mp: mp.setattr(headers, "parse", boom), "request"),
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
    with caplog.at_level(logging.ERROR, logger="llmtap.addon"):
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
    a.response(f)
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
