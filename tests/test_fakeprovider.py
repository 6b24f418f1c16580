"""The fake provider against the real openai and anthropic SDKs, with no proxy in between.

If the SDKs parse the fake's replies, tests of the proxy that use the fake exercise the same
wire formats as the real services.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
from anthropic import Anthropic
from openai import OpenAI

from tests.fakeprovider import FakeProvider, Received

REPLY = "Hello from the fake provider!"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDKs honour proxy variables; these tests must reach the fake directly."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def fp() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def oai(fp: FakeProvider) -> OpenAI:
    return OpenAI(base_url=fp.url + "/v1", api_key="sk-test", max_retries=0)


@pytest.fixture
def claude(fp: FakeProvider) -> Anthropic:
    return Anthropic(base_url=fp.url, api_key="sk-ant-test", max_retries=0)


def expected_input(fp: FakeProvider) -> int:
    """The fake's documented default: 10 + request body bytes // 50."""
    return 10 + len(fp.received[-1].body) // 50


def raw(
    fp: FakeProvider, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP request, for the formats no SDK here speaks and for framing checks."""
    conn = http.client.HTTPConnection("127.0.0.1", fp.port, timeout=10)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers=headers or {})
    resp = conn.getresponse()
    content = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, content


def sse_data(content: bytes, eol: str = "\n") -> list[str]:
    events = content.decode().split(eol * 2)
    assert events[-1] == ""
    return [
        line[len("data: ") :] for ev in events[:-1] for line in ev.split(eol) if line.startswith("data: ")
    ]


# --- OpenAI ---------------------------------------------------------------------------------


def test_chat_non_stream_usage(oai: OpenAI, fp: FakeProvider) -> None:
    usage = json.dumps({"input": 120, "output": 40, "cached": 100, "reasoning": 30})
    headers = {"x-fake-usage": usage, "x-fake-reply": "Hi there"}
    r = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers=headers)
    assert r.object == "chat.completion" and r.model == "gpt-4o-mini"
    assert r.choices[0].message.content == "Hi there"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.prompt_tokens == 120 and r.usage.completion_tokens == 40
    assert r.usage.total_tokens == 160
    assert r.usage.prompt_tokens_details and r.usage.prompt_tokens_details.cached_tokens == 100
    assert r.usage.completion_tokens_details
    assert r.usage.completion_tokens_details.reasoning_tokens == 30


def test_chat_default_usage_and_model_override(oai: OpenAI, fp: FakeProvider) -> None:
    r = oai.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, extra_headers={"x-fake-model": "gpt-4o-2024-08-06"}
    )
    assert r.model == "gpt-4o-2024-08-06"
    assert r.choices[0].message.content == REPLY
    assert r.usage is not None
    assert r.usage.prompt_tokens == expected_input(fp)
    assert r.usage.completion_tokens == len(REPLY.split()) + 1


def test_chat_stream_without_usage(oai: OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY
    assert len(chunks) == 1 + len(REPLY.split()) + 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_chat_stream_with_usage(oai: OpenAI, fp: FakeProvider) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-reply": "one two three"},
    )
    chunks = list(stream)
    assert [c.choices[0].delta.content for c in chunks[1:4]] == ["one ", "two ", "three"]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens == expected_input(fp)
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_framing(fp: FakeProvider) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    status, headers, content = raw(fp, "POST", "/v1/chat/completions", body)
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert headers["transfer-encoding"] == "chunked" and headers["cache-control"] == "no-cache"
    data = sse_data(content)
    assert data[-1] == "[DONE]" and '"usage"' not in content.decode()
    assert all(json.loads(d)["object"] == "chat.completion.chunk" for d in data[:-1])
    with_usage = raw(fp, "POST", "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})[
        2
    ]
    assert all('"usage":' in d for d in sse_data(with_usage)[:-1])


def test_legacy_completions(oai: OpenAI) -> None:
    r = oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hello")
    assert r.object == "text_completion" and r.choices[0].text == REPLY
    assert r.usage is not None and r.usage.completion_tokens == 6
    chunks = list(
        oai.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt="Say hello",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == REPLY
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])


def test_embeddings(oai: OpenAI) -> None:
    b64 = oai.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    floats = oai.embeddings.create(model="text-embedding-3-small", input=["a", "b"], encoding_format="float")
    assert [d.index for d in b64.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in b64.data + floats.data)
    assert b64.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    sent = b'{"input":["a","b"],"model":"text-embedding-3-small","encoding_format":"base64"}'
    assert b64.usage.prompt_tokens == b64.usage.total_tokens == 10 + len(sent) // 50  # default_usage
    single = oai.embeddings.create(model="text-embedding-3-small", input="just one")
    assert len(single.data) == 1


def test_responses_create(oai: OpenAI) -> None:
    usage = json.dumps({"cached": 4, "reasoning": 2})
    r = oai.responses.create(model="gpt-4.1", input="Say hello", extra_headers={"x-fake-usage": usage})
    assert r.output_text == REPLY and r.status == "completed" and r.model == "gpt-4.1"
    assert r.usage is not None and r.usage.output_tokens == 6
    assert r.usage.total_tokens == r.usage.input_tokens + 6
    assert r.usage.input_tokens_details.cached_tokens == 4
    assert r.usage.output_tokens_details.reasoning_tokens == 2


def test_responses_stream(oai: OpenAI) -> None:
    with oai.responses.stream(model="gpt-4.1", input="Say hello") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.output_text == REPLY and final.usage is not None
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types.count("response.output_text.delta") == len(REPLY.split())
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert all(e.response.usage is None for e in events[:2])  # type: ignore[union-attr]


# --- Anthropic --------------------------------------------------------------------------------


def test_anthropic_create(claude: Anthropic, fp: FakeProvider) -> None:
    m = claude.messages.create(model="claude-fake-1", max_tokens=50, messages=MESSAGES)
    assert m.content[0].type == "text" and m.content[0].text == REPLY
    assert m.stop_reason == "end_turn" and m.model == "claude-fake-1"
    assert m.usage.input_tokens == expected_input(fp) and m.usage.output_tokens == 6
    assert "anthropic-version" in fp.received[-1].headers


def test_anthropic_stream_cache_usage(claude: Anthropic) -> None:
    usage = json.dumps({"input": 1000, "cached": 600, "cache_write": 300, "output": 9})
    with claude.messages.stream(
        model="claude-fake-1", max_tokens=50, messages=MESSAGES, extra_headers={"x-fake-usage": usage}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY and final.content[0].text == REPLY  # type: ignore[union-attr]
    assert final.usage.input_tokens == 100  # Anthropic's input excludes cache tokens
    assert final.usage.cache_read_input_tokens == 600
    assert final.usage.cache_creation_input_tokens == 300
    assert final.usage.output_tokens == 9


def test_anthropic_event_sequence(fp: FakeProvider) -> None:
    body = {"model": "claude", "max_tokens": 5, "messages": MESSAGES, "stream": True}
    content = raw(fp, "POST", "/v1/messages", body, {"x-fake-reply": "a b"})[2].decode()
    names = [line[len("event: ") :] for line in content.split("\n") if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


# --- Errors -------------------------------------------------------------------------------------


def test_openai_errors(oai: OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="m", messages=MESSAGES, extra_headers={"x-fake-status": "429"})
    assert info.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_headers={"x-fake-status": "500"}
        )


def test_anthropic_errors(claude: Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as info:
        claude.messages.create(
            model="c", max_tokens=5, messages=MESSAGES, extra_headers={"x-fake-status": "429"}
        )
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(
            model="c", max_tokens=5, messages=MESSAGES, extra_headers={"x-fake-status": "500"}
        )


def test_gemini_error(fp: FakeProvider) -> None:
    status, _, content = raw(
        fp, "POST", "/v1beta/models/gemini-2.0-flash:generateContent", {}, {"x-fake-status": "429"}
    )
    assert status == 429
    error = json.loads(content)["error"]
    assert error["code"] == 429 and error["status"] == "RESOURCE_EXHAUSTED" and error["message"]


# --- Gemini -------------------------------------------------------------------------------------

GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}


def gemini(
    fp: FakeProvider,
    path: str,
    headers: dict[str, str] | None = None,
) -> tuple[str, bytes]:
    """Gemini through plain urllib: no Gemini SDK is installed here."""
    headers = {"content-type": "application/json", **(headers or {})}
    data = json.dumps(GEMINI_BODY).encode()
    request = urllib.request.Request(fp.url + path, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.headers["content-type"], resp.read()


def test_gemini_generate(fp: FakeProvider) -> None:
    usage = json.dumps({"input": 50, "output": 20, "reasoning": 5, "cached": 10})
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    _, content = gemini(fp, path, {"x-fake-usage": usage})
    doc = json.loads(content)
    assert doc["candidates"][0]["content"] == {"parts": [{"text": REPLY}], "role": "model"}
    assert doc["candidates"][0]["finishReason"] == "STOP"
    assert doc["modelVersion"] == "gemini-2.5-flash"
    assert doc["usageMetadata"] == {
        "promptTokenCount": 50,
        "candidatesTokenCount": 15,
        "totalTokenCount": 70,
        "cachedContentTokenCount": 10,
        "thoughtsTokenCount": 5,
    }
    _, plain = gemini(fp, path)
    assert set(json.loads(plain)["usageMetadata"]) == {
        "promptTokenCount",
        "candidatesTokenCount",
        "totalTokenCount",
    }


def test_gemini_sse(fp: FakeProvider) -> None:
    ctype, content = gemini(fp, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    assert ctype == "text/event-stream"
    chunks = [json.loads(d) for d in sse_data(content, "\r\n")]
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == REPLY
    assert all(set(c["usageMetadata"]) == {"promptTokenCount"} for c in chunks[:-1])
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 6
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_gemini_json_array_stream(fp: FakeProvider) -> None:
    ctype, content = gemini(fp, "/v1beta/models/gemini-2.5-flash:streamGenerateContent")
    assert ctype == "application/json" and b",\r\n" in content
    chunks = json.loads(content)
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == REPLY
    first, last = chunks[0]["usageMetadata"], chunks[-1]["usageMetadata"]
    assert last["totalTokenCount"] > first["promptTokenCount"] and "totalTokenCount" not in first


# --- Other OpenAI-compatible paths ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/chat/completions",
        "/openai/v1/chat/completions",
        "/api/v1/chat/completions",
        "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21",
    ],
)
def test_compatible_chat_paths(fp: FakeProvider, path: str) -> None:
    status, _, content = raw(fp, "POST", path, {"messages": MESSAGES})
    assert status == 200
    doc = json.loads(content)
    assert doc["choices"][0]["message"]["content"] == REPLY
    assert doc["model"] == ("my-gpt" if "deployments" in path else "fake-model")


# --- Non-LLM endpoints, recording, streaming behaviour --------------------------------------------


def test_non_llm_endpoints(fp: FakeProvider) -> None:
    assert raw(fp, "GET", "/plain")[::2] == (200, b"plain body")
    status, headers, content = raw(fp, "GET", "/bytes/1000")
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert len(content) == 1000 and content[:3] == b"\x00\x01\x02" and content[256] == 0
    echoed = json.loads(raw(fp, "POST", "/echo?x=1", {"a": 1}, {"x-test": "yes"})[2])
    assert echoed["method"] == "POST" and echoed["path"] == "/echo"
    assert echoed["headers"]["x-test"] == "yes" and json.loads(echoed["body"]) == {"a": 1}
    assert json.loads(raw(fp, "GET", "/echo")[2])["method"] == "GET"
    status, _, content = raw(fp, "POST", "/v2/nothing")
    assert status == 404 and "error" in json.loads(content)
    assert raw(fp, "GET", "/v1/chat/completions")[0] == 404


def test_received_records_requests(oai: OpenAI, fp: FakeProvider) -> None:
    oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"X-Trace": "t1"})
    raw(fp, "GET", "/plain?q=1")
    first, second = fp.received
    assert isinstance(first, Received) and first.method == "POST"
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == "Bearer sk-test" and first.headers["x-trace"] == "t1"
    assert json.loads(first.body)["messages"] == MESSAGES
    assert (second.method, second.path, second.body) == ("GET", "/plain?q=1", b"")
    fp.clear()
    assert fp.received == []


def test_delay_spreads_events_over_time(fp: FakeProvider) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fp.port, timeout=10)
    body = json.dumps({"model": "m", "messages": MESSAGES, "stream": True})
    conn.request("POST", "/v1/chat/completions", body, {"x-fake-delay-ms": "100", "x-fake-reply": "a b"})
    resp = conn.getresponse()  # headers come at once, each event 100 ms later
    headers_at = time.monotonic()
    assert resp.read1().startswith(b"data: ")
    first_at = time.monotonic()
    assert resp.read().endswith(b"data: [DONE]\n\n")  # 5 events: role, a, b, finish, DONE
    assert first_at - headers_at >= 0.05 and time.monotonic() - headers_at >= 0.35
    conn.close()


def test_survives_client_abort_and_keeps_alive(fp: FakeProvider, oai: OpenAI) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fp.port, timeout=10)
    body = json.dumps({"model": "m", "messages": MESSAGES, "stream": True})
    conn.request("POST", "/v1/chat/completions", body, {"x-fake-delay-ms": "50"})
    conn.getresponse().read1()
    conn.close()  # abort mid-stream, and at once a new connection
    keep = http.client.HTTPConnection("127.0.0.1", fp.port, timeout=10)
    for _ in range(2):  # two requests on one connection
        keep.request("GET", "/plain")
        assert keep.getresponse().read() == b"plain body"
    keep.close()
    reply = oai.chat.completions.create(model="m", messages=MESSAGES)
    assert reply.choices[0].message.content == REPLY


def test_main_runs_in_foreground() -> None:
    addon = Path(__file__).resolve().parents[1] / "addon"
    env = {**os.environ, "PYTHONPATH": str(addon)}
    command = [sys.executable, "-m", "llmtap.demo.fakeprovider", "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("fake provider listening at http://127.0.0.1:")
            with urllib.request.urlopen(line.rsplit(" ", 1)[1] + "/plain", timeout=10) as resp:
                assert resp.read() == b"plain body"
        finally:
            proc.terminate()
