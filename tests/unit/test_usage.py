from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import pytest
import tiktoken

from llmtap.accounting import estimate
from llmtap.accounting.usage import Tokens, account

from . import samples

FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_reasoning_tokens",
)
CHAT = samples.dumps(samples.CHAT_REQUEST)
STREAM = samples.dumps(samples.STREAM_REQUEST)


@pytest.fixture(autouse=True)
def offline_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on these machines: no cached encoding and no network, whatever this host has."""

    def unavailable(name: str) -> None:
        raise OSError(f"cannot download {name}: network is unreachable")

    monkeypatch.setattr(tiktoken, "get_encoding", unavailable)
    monkeypatch.setattr(estimate, "_encoder", None)
    monkeypatch.setattr(estimate, "_method", "")


def counts(t: Tokens) -> tuple[int, ...]:
    assert t.usage is not None
    return tuple(getattr(t.usage, f) for f in FIELDS)


EMBEDDINGS = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.0023, -0.0093]}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}
OPENAI_JSON = samples.dumps(samples.openai_chat_json())
ANTHROPIC_JSON = samples.dumps(samples.ANTHROPIC_JSON)
GEMINI_ARRAY = samples.dumps(samples.gemini_chunks())
O3, CLAUDE, GEMINI = "o3-mini-2025-01-31", samples.ANTHROPIC_MODEL, samples.GEMINI_MODEL


@pytest.mark.parametrize(
    "api, kind, streamed, response, model, expected",
    [
        # OpenAI chat completion: cached tokens are part of prompt_tokens, reasoning of completion
        ("openai", "chat", False, OPENAI_JSON, "gpt-4o-2024-08-06", (1200, 300, 1024, 0, 128)),
        # OpenAI stream with include_usage: the final "choices": [] chunk
        ("openai", "chat", True, samples.openai_stream("final"), samples.OPENAI_MODEL, (19, 3, 0, 0, 0)),
        # Responses API, JSON and stream (response.completed)
        ("openai", "responses", False, samples.dumps(samples.responses_json()), O3, (36, 87, 16, 0, 64)),
        ("openai", "responses", True, samples.responses_stream(), O3, (36, 87, 16, 0, 64)),
        # embeddings
        ("openai", "embeddings", False, samples.dumps(EMBEDDINGS), "text-embedding-3-small", (8, 0, 0, 0, 0)),
        # Anthropic JSON: input_tokens excludes cache; llmtap input = 100 + 300 read + 200 write
        ("anthropic", "messages", False, ANTHROPIC_JSON, CLAUDE, (600, 50, 300, 200, 0)),
        # Anthropic stream: message_start usage, output_tokens from message_delta
        ("anthropic", "messages", True, samples.anthropic_stream(), CLAUDE, (135, 15, 100, 10, 0)),
        # Gemini JSON, SSE (CRLF) and the JSON-array stream (no alt=sse)
        ("gemini", "generate", False, samples.dumps(samples.gemini_json()), GEMINI, (8, 12, 0, 0, 0)),
        ("gemini", "stream_generate", True, samples.gemini_sse(), GEMINI, (8, 12, 0, 0, 0)),
        ("gemini", "stream_generate", True, GEMINI_ARRAY, GEMINI, (8, 12, 0, 0, 0)),
        ("gemini", "stream_generate", False, GEMINI_ARRAY, GEMINI, (8, 12, 0, 0, 0)),
    ],
)  # fmt: skip
def test_usage_reported_by_the_provider(
    api: str, kind: str, streamed: bool, response: bytes, model: str, expected: tuple[int, ...]
) -> None:
    t = account(api, kind, streamed, True, CHAT, response)
    assert (t.source, t.model, t.provider_cost, t.note) == ("response", model, None, None)
    assert counts(t) == expected


def test_a_gemini_stream_cut_before_its_finished_chunk_keeps_the_reported_prompt_tokens() -> None:
    first_only = samples.sse(samples.gemini_chunks()[0], eol=b"\r\n")
    t = account("gemini", "stream_generate", True, True, b"{}", first_only)
    assert t.source == "partial", "a usageMetadata without finishReason is a running count"
    assert t.usage is not None and t.usage.input_tokens == 8
    assert t.usage.output_tokens == max(1, math.ceil(len("Hello") / 4))


@pytest.mark.parametrize(
    "cost, expected",
    [
        (0.000213, Decimal("0.000213")),  # float in JSON: the printed digits, not binary noise
        (0, Decimal("0")),
        (2, Decimal("2")),
    ],
)
def test_openrouter_cost_is_the_provider_cost(cost: float, expected: Decimal) -> None:
    body = samples.openai_chat_json()
    body["usage"] = {"prompt_tokens": 14, "completion_tokens": 163, "total_tokens": 177, "cost": cost}
    t = account("openai", "chat", False, True, CHAT, samples.dumps(body))
    assert t.provider_cost == expected
    assert isinstance(t.provider_cost, Decimal)
    assert counts(t)[:2] == (14, 163)


def test_openrouter_stream_cost() -> None:
    chunks = samples.openai_chunks("final")
    chunks[-1] = {**chunks[-1], "usage": {**samples.STREAM_USAGE, "cost": 0.0000456, "is_byok": False}}
    t = account("openai", "chat", True, True, STREAM, samples.sse(*chunks, "[DONE]"))
    assert t.provider_cost == Decimal("0.0000456")


@pytest.mark.parametrize("cost", [None, "0.01", True])
def test_non_numeric_usage_cost_is_ignored(cost: object) -> None:
    body = samples.openai_chat_json(cost=cost)
    assert account("openai", "chat", False, True, CHAT, samples.dumps(body)).provider_cost is None


def test_aborted_openai_stream_is_estimated_offline() -> None:
    # the client went away after two deltas: no usage chunk, no [DONE], a half event at the end
    stream = samples.openai_stream("null", done=False)
    cut = stream.index(b'"content":"!"')
    t = account("openai", "chat", True, True, STREAM, stream[:cut])

    assert t.source == "estimated"
    assert t.model == samples.OPENAI_MODEL
    prompt = "Be brief.\nSay hello"
    assert counts(t)[:2] == (math.ceil(len(prompt) / 4), math.ceil(len("Hello there") / 4))
    assert t.note == "tokens estimated (chars/4 heuristic): the response reported no final usage"


def test_stream_without_usage_chunk_is_estimated() -> None:
    """An OpenAI-compatible server that ignored include_usage."""
    t = account("openai", "chat", True, True, STREAM, samples.openai_stream("none"))
    assert t.source == "estimated"
    assert counts(t)[:2] == (5, math.ceil(len("Hello there!") / 4))


def test_an_anthropic_stream_cut_after_message_start_keeps_its_exact_input_and_cache_tokens() -> None:
    t = account("anthropic", "messages", True, True, CHAT, samples.anthropic_stream(complete=False))
    assert (t.source, t.model) == ("partial", samples.ANTHROPIC_MODEL)
    # message_start: 25 uncached + 10 cache-write + 100 cache-read; output estimated from "Hello!"
    assert counts(t) == (135, math.ceil(len("Hello!") / 4), 100, 10, 0)
    assert t.note == (
        "input and cache tokens as reported; output tokens estimated (chars/4 heuristic): the stream"
        " ended before its final usage"
    )


def test_estimate_reads_text_parts_of_the_request() -> None:
    request = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "x" * 40}, {"type": "image_url"}]}
        ],
        "temperature": 0.2,
    }
    t = account("openai", "chat", True, True, samples.dumps(request), b"")
    assert counts(t)[:2] == (10, 0)


@pytest.mark.parametrize(
    "api, kind, streamed, response",
    [
        # a rate-limit error in JSON
        (
            "openai", "chat", False,
            b'{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}',
        ),
        ("anthropic", "messages", False, b'{"type":"error","error":{"type":"overloaded_error"}}'),
        # an error page that is not JSON
        ("gemini", "generate", False, b"<html>502 Bad Gateway</html>"),
        # an error status on a stream request, nothing streamed
        ("openai", "chat", True, b'{"error":{"message":"bad key"}}'),
    ],
)  # fmt: skip
def test_error_status_has_no_usage_and_no_estimate(
    api: str, kind: str, streamed: bool, response: bytes
) -> None:
    t = account(api, kind, streamed, False, CHAT, response)
    assert (t.usage, t.source, t.provider_cost) == (None, None, None)


@pytest.mark.parametrize(
    "api, response",
    [
        # GET /v1/models
        ("openai", b'{"object":"list","data":[{"id":"gpt-4o","object":"model"}]}'),
        # Anthropic count_tokens, a POST but not a generation
        ("anthropic", b'{"input_tokens":2095}'),
        ("openai", b""),
    ],
)
def test_call_that_is_not_a_generation_gets_nothing(api: str, response: bytes) -> None:
    t = account(api, None, False, True, b"", response)
    assert (t.usage, t.source) == (None, None)


def test_unreadable_usage_falls_back_to_an_estimate() -> None:
    body = samples.openai_chat_json()
    body["usage"] = {"prompt_tokens": "many"}
    t = account("openai", "chat", False, True, CHAT, samples.dumps(body))
    assert t.source == "estimated"
    assert t.usage is not None and t.usage.output_tokens == math.ceil(len("Hello! How can I help?") / 4)


def test_gemini_final_chunk_with_a_line_separator_in_text() -> None:
    chunks = samples.gemini_chunks()
    chunks[-1]["candidates"][0]["content"]["parts"][0]["text"] = "line\u2028break"
    body = b"".join(b"data: " + json.dumps(c, ensure_ascii=False).encode() + b"\r\n\r\n" for c in chunks)
    assert account("gemini", "stream_generate", True, True, b"{}", body).source == "response"


@pytest.mark.parametrize(
    "doc, tier",
    [
        ({**samples.openai_chat_json(), "service_tier": "flex"}, "flex"),
        ({**samples.openai_chat_json(), "service_tier": "default"}, None),
        ({**samples.responses_json(), "service_tier": "priority"}, "priority"),
        (
            {
                **samples.ANTHROPIC_JSON,
                "usage": {**samples.ANTHROPIC_JSON["usage"], "service_tier": "standard"},
            },
            None,
        ),
    ],
)
def test_the_service_tier_the_response_reports(doc: dict[str, Any], tier: str | None) -> None:
    api, kind = ("anthropic", "messages") if doc.get("type") == "message" else (
        "openai", "responses" if doc.get("object") == "response" else "chat"
    )  # fmt: skip
    assert account(api, kind, False, True, CHAT, samples.dumps(doc)).service_tier == tier


def test_a_model_genai_prices_does_not_list_keeps_its_exact_tokens() -> None:
    """Tokens come from the response; only pricing needs the model (a new or private one)."""
    doc = {**samples.openai_chat_json(), "model": "my-private-finetune-7b"}
    t = account("openai", "chat", False, True, CHAT, samples.dumps(doc), vendor="groq")
    assert (t.source, t.model) == ("response", "my-private-finetune-7b")
    assert counts(t) == (1200, 300, 1024, 0, 128)


def test_a_gemini_model_named_as_its_resource_is_the_bare_model() -> None:
    doc = {**samples.gemini_json(), "modelVersion": "models/gemini-2.5-pro"}
    assert account("gemini", "generate", False, True, b"{}", samples.dumps(doc)).model == "gemini-2.5-pro"


def test_the_minimal_compatible_usage_is_read() -> None:
    doc = {"id": "x", "object": "chat.completion", "model": "llama3", "choices": [],
           "usage": {"prompt_tokens": 10, "completion_tokens": 5}}  # fmt: skip
    for vendor in (
        None,
        "groq",
        "mistral",
        "deepseek",
        "together",
        "fireworks",
        "x-ai",
        "openrouter",
        "azure",
    ):
        t = account("openai", "chat", False, True, CHAT, samples.dumps(doc), vendor=vendor)
        assert (t.source, counts(t)[:2]) == ("response", (10, 5)), vendor
