"""Gateway mode, every wire format, through a real mitmdump with the real SDKs."""

from __future__ import annotations

import json
import math
import urllib.request
from decimal import Decimal

import genai_prices
import pytest
from anthropic import Anthropic
from genai_prices import Usage
from openai import OpenAI

from tests.e2e.conftest import Proxy
from tests.fakeprovider import FakeProvider

MSGS = [{"role": "user", "content": "Say hello"}]
REPLY = "Hello from the fake provider!"


def expected_cost(model: str, provider: str, at, **usage: int) -> Decimal:
    calc = genai_prices.calc_price(Usage(**usage), model, provider_id=provider, genai_request_timestamp=at)
    return calc.total_price.quantize(Decimal("0.000000001"))


def oai(proxy: Proxy, key: str = "sk-test-openai") -> OpenAI:
    return OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)


def claude(proxy: Proxy, key: str = "sk-ant-test") -> Anthropic:
    return Anthropic(base_url=proxy.url, api_key=key, max_retries=0)


def test_openai_chat_exact_tokens_and_cost(gateway: Proxy, fake: FakeProvider) -> None:
    usage = {"input": 1200, "cached": 1000, "output": 300, "reasoning": 100}
    raw = oai(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MSGS,
        extra_headers={
            "x-fake-usage": json.dumps(usage),
            "Helicone-User-Id": "alice",
            "Helicone-Property-Feature": "Search",
            "Helicone-Session-Id": "s1",
            "Helicone-Session-Path": "/plan/step",
            "Helicone-Session-Name": "trip",
        },
    )
    assert raw.parse().choices[0].message.content == REPLY
    [row] = gateway.rows()
    assert raw.headers["helicone-id"] == row["request_id"]
    assert (row["provider"], row["endpoint"], row["model"], row["status"]) == (
        "openai",
        "chat",
        "gpt-4o-mini",
        200,
    )
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (
        1200,
        1000,
        300,
        100,
    )
    assert row["usage_source"] == "response" and row["streamed"] is False
    assert row["cost_usd"] == expected_cost(
        "gpt-4o-mini",
        "openai",
        row["created_at"],
        input_tokens=1200,
        cache_read_tokens=1000,
        output_tokens=300,
    )
    assert row["user_id"] == "alice"
    assert json.loads(row["properties"]) == {"feature": "Search"}
    assert (row["session_id"], row["session_path"], row["session_name"]) == ("s1", "/plan/step", "trip")
    assert row["latency_ms"] > 0 and row["ttft_ms"] is None
    sent = fake.received[-1]
    assert not [h for h in sent.headers if h.startswith("helicone-")]
    assert sent.headers["authorization"] == "Bearer sk-test-openai"  # the provider still gets the key


def test_openai_stream_gets_exact_usage_without_changing_what_the_client_sees(
    gateway: Proxy, fake: FakeProvider
) -> None:
    chunks = list(oai(gateway).chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert all(c.choices for c in chunks), "the injected usage-only chunk reached the client"
    assert all(c.usage is None for c in chunks)
    assert all("usage" not in c.model_dump(exclude_unset=True) for c in chunks)
    body = json.loads(fake.received[-1].body)
    assert body["stream_options"] == {"include_usage": True}
    [row] = gateway.rows()
    assert row["streamed"] is True and row["usage_source"] == "response"
    assert row["input_tokens"] == 10 + len(fake.received[-1].body) // 50
    assert row["output_tokens"] == len(REPLY.split()) + 1
    assert row["cost_usd"] == expected_cost(
        "gpt-4o-mini", "openai", row["created_at"], input_tokens=row["input_tokens"], output_tokens=6
    )
    assert 0 < row["ttft_ms"] <= row["latency_ms"]


def test_openai_stream_that_asked_for_usage_keeps_its_usage_chunk(gateway: Proxy) -> None:
    chunks = list(
        oai(gateway).chat.completions.create(
            model="gpt-4o-mini", messages=MSGS, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    [row] = gateway.rows()
    assert row["output_tokens"] == chunks[-1].usage.completion_tokens


def test_responses_api_and_embeddings(gateway: Proxy) -> None:
    client = oai(gateway)
    usage = json.dumps({"input": 500, "cached": 100, "output": 40, "reasoning": 8})
    resp = client.responses.create(model="gpt-4.1-mini", input="hi", extra_headers={"x-fake-usage": usage})
    assert resp.output_text == REPLY
    stream = list(client.responses.create(model="gpt-4.1-mini", input="hi", stream=True))
    assert stream[-1].type == "response.completed"
    client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    rows = gateway.rows()
    assert [(r["endpoint"], r["streamed"]) for r in rows] == [
        ("responses", False),
        ("responses", True),
        ("embeddings", False),
    ]
    first, streamed, emb = rows
    assert (first["input_tokens"], first["cache_read_tokens"], first["output_tokens"]) == (500, 100, 40)
    assert first["reasoning_tokens"] == 8
    assert first["cost_usd"] == expected_cost(
        "gpt-4.1-mini",
        "openai",
        first["created_at"],
        input_tokens=500,
        cache_read_tokens=100,
        output_tokens=40,
    )
    assert (
        streamed["usage_source"] == "response"
        and streamed["output_tokens"] == stream[-1].response.usage.output_tokens
    )
    sent = b'{"input":["a","b"],"model":"text-embedding-3-small","encoding_format":"base64"}'
    assert emb["input_tokens"] == 10 + len(sent) // 50  # the fake's default_usage
    assert emb["cost_usd"] == expected_cost(
        "text-embedding-3-small", "openai", emb["created_at"], input_tokens=emb["input_tokens"]
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_anthropic_cache_tokens_are_counted_and_priced(gateway: Proxy, stream: bool) -> None:
    usage = {"input": 5100, "cached": 3000, "cache_write": 2000, "output": 50}
    headers = {"x-fake-usage": json.dumps(usage), "Helicone-User-Id": "bob"}
    client = claude(gateway)
    if stream:
        with client.messages.stream(
            model="claude-haiku-4-5", max_tokens=64, messages=MSGS, extra_headers=headers
        ) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(
            model="claude-haiku-4-5", max_tokens=64, messages=MSGS, extra_headers=headers
        )
    assert msg.usage.input_tokens == 100  # Anthropic's own field excludes cache tokens
    [row] = gateway.rows()
    assert (row["provider"], row["endpoint"], row["streamed"]) == ("anthropic", "messages", stream)
    assert (
        row["input_tokens"],
        row["cache_read_tokens"],
        row["cache_write_tokens"],
        row["output_tokens"],
    ) == (
        5100,
        3000,
        2000,
        50,
    )
    assert row["cost_usd"] == expected_cost(
        "claude-haiku-4-5",
        "anthropic",
        row["created_at"],
        input_tokens=5100,
        cache_read_tokens=3000,
        cache_write_tokens=2000,
        output_tokens=50,
    )
    assert row["user_id"] == "bob"
    if stream:
        assert 0 < row["ttft_ms"] <= row["latency_ms"]


@pytest.mark.parametrize(
    "path", [":generateContent", ":streamGenerateContent?alt=sse", ":streamGenerateContent"]
)
def test_gemini(gateway: Proxy, path: str) -> None:
    usage = json.dumps({"input": 80, "cached": 20, "output": 30, "reasoning": 10})
    req = urllib.request.Request(
        f"{gateway.url}/v1beta/models/gemini-2.0-flash{path}",
        data=json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}).encode(),
        headers={"content-type": "application/json", "x-goog-api-key": "AIza-secret", "x-fake-usage": usage},
    )
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 200 and resp.read()
    [row] = gateway.rows()
    assert (row["provider"], row["model"]) == ("google", "gemini-2.0-flash")
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (
        80,
        20,
        30,
        10,
    )
    assert row["streamed"] is ("stream" in path)
    assert row["cost_usd"] == expected_cost(
        "gemini-2.0-flash",
        "google",
        row["created_at"],
        input_tokens=80,
        cache_read_tokens=20,
        output_tokens=30,
        output_reasoning_tokens=10,
    )


def test_unknown_model_and_error_status_are_null_not_zero(gateway: Proxy) -> None:
    client = oai(gateway)
    client.chat.completions.create(model="my-private-model-7", messages=MSGS)
    with pytest.raises(Exception, match="429|rate"):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MSGS, extra_headers={"x-fake-status": "429"}
        )
    unknown, limited = gateway.rows()
    assert unknown["cost_usd"] is None and "my-private-model-7" in unknown["cost_note"]
    assert (unknown["input_tokens"], unknown["output_tokens"], unknown["usage_source"]) == (
        10 + len(b'{"messages":[{"role":"user","content":"Say hello"}],"model":"my-private-model-7"}') // 50,
        len(REPLY.split()) + 1,
        "response",
    )
    assert limited["status"] == 429 and limited["cost_usd"] is None and limited["input_tokens"] is None
    assert limited["cost_note"]


def test_omit_headers_keep_tokens_but_not_bodies(gateway: Proxy) -> None:
    oai(gateway).chat.completions.create(
        model="gpt-4o-mini",
        messages=MSGS,
        extra_headers={"Helicone-Omit-Request": "true", "Helicone-Omit-Response": "true"},
    )
    [row] = gateway.rows()
    assert row["request_body"] is None and row["response_body"] is None
    assert (row["input_tokens"], row["output_tokens"]) == (11, 6)  # the fake's default_usage
    assert row["cost_usd"] == expected_cost(
        "gpt-4o-mini", "openai", row["created_at"], input_tokens=11, output_tokens=6
    )


def test_request_id_header_is_kept_when_it_is_a_uuid(gateway: Proxy) -> None:
    rid = "1f0c2d6e-6b1a-4c52-9f57-2a4b8c7d9e01"
    raw = oai(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MSGS, extra_headers={"Helicone-Request-Id": rid}
    )
    raw2 = oai(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MSGS, extra_headers={"Helicone-Request-Id": "not-a-uuid"}
    )
    assert raw.headers["helicone-id"] == rid
    assert raw2.headers["helicone-id"] != "not-a-uuid"
    assert [r["request_id"] for r in gateway.rows()] == [rid, raw2.headers["helicone-id"]]


def test_an_anthropic_stream_cut_after_message_start_keeps_its_exact_input_and_cache_tokens(
    gateway: Proxy,
) -> None:
    """The client gives up mid-stream: message_start already reported the input side exactly."""
    import http.client

    usage = json.dumps({"input": 5100, "cached": 3000, "cache_write": 2000, "output": 50})
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port)
    body = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 64, "messages": MSGS, "stream": True})
    words = " ".join(f"w{i}" for i in range(40))
    conn.request("POST", "/v1/messages", body, {"content-type": "application/json", "x-api-key": "sk-ant-x",
                                                 "x-fake-usage": usage, "x-fake-delay-ms": "30",
                                                 "x-fake-reply": words})  # fmt: skip
    resp = conn.getresponse()
    seen = b""
    while seen.count(b"content_block_delta") < 3:
        seen += resp.read1(4096)
    conn.sock.close()  # abort
    conn.close()
    [row] = gateway.wait_rows("SELECT * FROM requests", 1)
    assert row["usage_source"] == "partial" and "disconnect" in row["error"].lower()
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (5100, 3000, 2000)
    seen_text = "".join(  # what passed through the proxy before the abort
        json.loads(line[6:])["delta"]["text"]
        for line in row["response_body"].splitlines()
        if line.startswith("data: ") and '"text_delta"' in line
    )
    assert seen_text and row["output_tokens"] == max(1, math.ceil(len(seen_text) / 4))
    assert row["reasoning_tokens"] is None
    assert row["cost_note"] == (
        "input and cache tokens as reported; output tokens estimated (chars/4 heuristic): the stream"
        f" ended before its final usage; priced as anthropic: host {row['host']} is not a known provider"
    )
    assert row["cost_usd"] == expected_cost(
        "claude-haiku-4-5", "anthropic", row["created_at"], input_tokens=5100, cache_read_tokens=3000,
        cache_write_tokens=2000, output_tokens=row["output_tokens"],
    )  # fmt: skip
