"""Realistic provider payloads shared by the unit tests (shapes copied from the providers' docs).

Streams are built from dicts so a test can derive the variant it expects (for example the OpenAI
stream without `include_usage`) from the same data instead of editing bytes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import genai_prices
from genai_prices import Usage

from llmtap.accounting.entry import Entry
from llmtap.accounting.record import Capture
from llmtap.wire.helicone import CallMeta

STARTED = datetime(2025, 6, 1, 12, 0, tzinfo=UTC).timestamp()
OPENAI_MODEL = "gpt-4o-mini-2024-07-18"
CHAT_REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello"},
    ],
}
STREAM_REQUEST = {**CHAT_REQUEST, "stream": True}
STREAM_TEXT = ["Hello", " there", "!"]
STREAM_USAGE = {
    "prompt_tokens": 19,
    "completion_tokens": 3,
    "total_tokens": 22,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def sse(*events: dict[str, Any] | str, event: str | None = None, eol: bytes = b"\n") -> bytes:
    """`data:` events (dicts as compact JSON, strings as is), each ended by a blank line."""
    out = b""
    for ev in events:
        data = ev.encode() if isinstance(ev, str) else dumps(ev)
        head = b"event: " + event.encode() + eol if event else b""
        out += head + b"data: " + data + eol + eol
    return out


def openai_chat_json(**usage_overrides: Any) -> dict[str, Any]:
    usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 128, "audio_tokens": 0},
        **usage_overrides,
    }
    return {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help?", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035",
    }


def openai_cost(at: datetime | None = None) -> Decimal:
    """What genai-prices charges for openai_chat_json()'s usage, at `at` (default: STARTED)."""
    usage = Usage(input_tokens=1200, cache_read_tokens=1024, output_tokens=300, output_reasoning_tokens=128)
    when = at or datetime.fromtimestamp(STARTED, UTC)
    calc = genai_prices.calc_price(
        usage, "gpt-4o-2024-08-06", provider_id="openai", genai_request_timestamp=when
    )
    return calc.total_price.quantize(Decimal("0.000000001"))


def openai_chunks(usage: str) -> list[dict[str, Any]]:
    """A chat.completion.chunk sequence. usage: 'none' (client did not ask), 'null' or 'final'.

    'null' and 'final' are what include_usage produces: `"usage": null` on every chunk, and
    'final' adds the closing `"choices": []` chunk that carries the usage.
    """
    base = {
        "id": "chatcmpl-AzZ1",
        "object": "chat.completion.chunk",
        "created": 1739000000,
        "model": OPENAI_MODEL,
        "system_fingerprint": "fp_06737a9306",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        c = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if usage != "none":
            c["usage"] = None
        return c

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
    chunks += [chunk({"content": text}) for text in STREAM_TEXT]
    chunks.append(chunk({}, "stop"))
    if usage == "final":
        chunks.append({**base, "choices": [], "usage": STREAM_USAGE})
    return chunks


def openai_stream(usage: str = "final", done: bool = True) -> bytes:
    return sse(*openai_chunks(usage), *(["[DONE]"] if done else []))


ANTHROPIC_MODEL = "claude-3-5-sonnet-20241022"
ANTHROPIC_JSON = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": ANTHROPIC_MODEL,
    "content": [{"type": "text", "text": "Hello!"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 100,
        "cache_creation_input_tokens": 200,
        "cache_read_input_tokens": 300,
        "output_tokens": 50,
    },
}


def anthropic_stream(complete: bool = True) -> bytes:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
            "type": "message",
            "role": "assistant",
            "model": ANTHROPIC_MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 25,
                "cache_creation_input_tokens": 10,
                "cache_read_input_tokens": 100,
                "output_tokens": 1,
            },
        },
    }
    out = sse(start, event="message_start")
    out += sse(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        event="content_block_start",
    )
    out += sse({"type": "ping"}, event="ping")
    for text in ("Hello", "!"):
        out += sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
            event="content_block_delta",
        )
    if not complete:
        return out
    out += sse({"type": "content_block_stop", "index": 0}, event="content_block_stop")
    out += sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 15},
        },
        event="message_delta",
    )
    out += sse({"type": "message_stop"}, event="message_stop")
    return out


GEMINI_MODEL = "gemini-1.5-flash-002"


def gemini_chunks() -> list[dict[str, Any]]:
    def chunk(text: str, final: bool) -> dict[str, Any]:
        cand: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        if final:
            cand["finishReason"] = "STOP"
        usage = {"promptTokenCount": 8, "candidatesTokenCount": 1 if not final else 12, "totalTokenCount": 0}
        usage["totalTokenCount"] = usage["promptTokenCount"] + usage["candidatesTokenCount"]
        return {"candidates": [cand], "usageMetadata": usage, "modelVersion": GEMINI_MODEL}

    return [chunk("Hello", False), chunk(" there, how can I help?", True)]


def gemini_json() -> dict[str, Any]:
    return gemini_chunks()[-1]


def gemini_sse() -> bytes:
    """`streamGenerateContent?alt=sse`: Gemini ends its lines with CRLF."""
    return sse(*gemini_chunks(), eol=b"\r\n")


RESPONSES_USAGE = {
    "input_tokens": 36,
    "input_tokens_details": {"cached_tokens": 16},
    "output_tokens": 87,
    "output_tokens_details": {"reasoning_tokens": 64},
    "total_tokens": 123,
}


def responses_json() -> dict[str, Any]:
    return {
        "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
        "object": "response",
        "created_at": 1741476542,
        "status": "completed",
        "model": "o3-mini-2025-01-31",
        "output": [
            {
                "type": "message",
                "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "In a peaceful grove...", "annotations": []}],
            }
        ],
        "usage": RESPONSES_USAGE,
    }


def responses_stream() -> bytes:
    created = {**responses_json(), "status": "in_progress", "output": [], "usage": None}
    out = sse(
        {"type": "response.created", "sequence_number": 0, "response": created}, event="response.created"
    )
    for i, text in enumerate(("In a", " peaceful grove")):
        delta = {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": text,
            "sequence_number": i + 1,
        }
        out += sse(delta, event="response.output_text.delta")
    done = {"type": "response.completed", "sequence_number": 9, "response": responses_json()}
    return out + sse(done, event="response.completed")


def capture(**overrides: Any) -> Capture:
    """A finished, non-streamed OpenAI chat call as the addon would queue it."""
    values: dict[str, Any] = dict(
        meta=CallMeta(request_id="0b9e5f2a-8d63-4c1e-9f0a-5a3c7d2e1b44"),
        provider="openai", api="openai", price_id="openai", inferred=False, endpoint="chat",
        host="api.openai.com", method="POST", path="/v1/chat/completions", started=STARTED,
        request_headers={"content-type": "application/json", "authorization": "[REDACTED]"},
        request_body=dumps(CHAT_REQUEST), status=200, response_body=dumps(openai_chat_json()),
        latency_ms=812.5,
    )  # fmt: skip
    values.update(overrides)
    return Capture(**values)


# A cache entry as the fleet's Redis holds it (fleet/redisstate.py); the body has a NUL and invalid UTF-8.
CACHE_ENTRY = Entry(
    request_id="req-1",
    status=200,
    content_type="application/json",
    streamed=False,
    body=b'{"id": "chatcmpl-1"}\x00\xff',
    seed="s1",
    provider="openai",
    model="gpt-4o-mini",
    input_tokens=12,
    output_tokens=7,
    usage_source="response",
    cost_usd=Decimal("0.000006"),
    latency_ms=123.5,
    created=1_700_000_000.25,
)
