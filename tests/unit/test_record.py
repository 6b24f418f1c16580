from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from genai_prices import Usage

from llmtap.accounting.record import COLUMNS, TYPES, Capture, to_row
from llmtap.storage.cachestore import Entry
from llmtap.wire.helicone import CallMeta

from . import samples

NINE = Decimal("0.000000001")
RESPONSE = samples.dumps(samples.openai_chat_json())
capture = samples.capture


def row(c: Capture) -> dict[str, Any]:
    values = to_row(c)
    assert len(values) == len(COLUMNS)
    return dict(zip(COLUMNS, values, strict=True))


def test_columns_and_types_line_up() -> None:
    assert len(COLUMNS) == len(TYPES) == len(set(COLUMNS))


def test_openai_chat_row() -> None:
    r = row(capture())
    usage = genai_prices.Usage(
        input_tokens=1200, cache_read_tokens=1024, output_tokens=300, output_reasoning_tokens=128
    )
    at = datetime.fromtimestamp(samples.STARTED, UTC)
    expected_cost = genai_prices.calc_price(
        usage, "gpt-4o-2024-08-06", provider_id="openai", genai_request_timestamp=at
    )
    assert r == {
        "request_id": "0b9e5f2a-8d63-4c1e-9f0a-5a3c7d2e1b44",
        "created_at": datetime(2025, 6, 1, 12, 0, tzinfo=UTC),
        "source": "proxy", "provider": "openai", "api": "openai", "endpoint": "chat",
        "host": "api.openai.com", "method": "POST", "path": "/v1/chat/completions",
        "model": "gpt-4o-2024-08-06", "requested_model": "gpt-4o-mini",
        "status": 200, "streamed": False, "latency_ms": 812.5, "ttft_ms": None,
        "input_tokens": 1200, "output_tokens": 300, "cache_read_tokens": 1024,
        "cache_write_tokens": 0, "reasoning_tokens": 128,
        "usage_source": "response", "cost_usd": expected_cost.total_price.quantize(NINE), "cost_note": None,
        "prices_version": genai_prices.__version__,
        "user_id": None, "session_id": None, "session_path": None, "session_name": None,
        "properties": "{}",
        "request_headers": '{"content-type": "application/json", "authorization": "[REDACTED]"}',
        "request_body": samples.dumps(samples.CHAT_REQUEST).decode(),
        "response_body": RESPONSE.decode(),
        "error": None,
        "cache_status": None, "cache_reference_id": None, "cost_saved_usd": None,
        "rate_limited": False, "retries": None, "attempts": None, "fallback_index": None,
        "latency_saved_ms": None,
        "proxy_id": None,
        "rate_limit_store": None,
    }  # fmt: skip


def test_meta_fields_reach_the_row() -> None:
    meta = CallMeta(
        request_id="r1",
        user_id="alice",
        session_id="s1",
        session_path="/plan/step",
        session_name="Trip",
        properties={"app": "docs", "env": "prod"},
    )
    r = row(capture(meta=meta))
    assert (r["user_id"], r["session_id"], r["session_path"], r["session_name"]) == (
        "alice",
        "s1",
        "/plan/step",
        "Trip",
    )
    assert json.loads(r["properties"]) == {"app": "docs", "env": "prod"}


@pytest.mark.parametrize(
    "omit_request, omit_response, has_request, has_response",
    [
        (True, False, False, True),
        (False, True, True, False),
        (True, True, False, False),
    ],
)
def test_omit_flags_null_the_bodies(
    omit_request: bool, omit_response: bool, has_request: bool, has_response: bool
) -> None:
    meta = CallMeta(request_id="r1", omit_request=omit_request, omit_response=omit_response)
    r = row(capture(meta=meta))
    assert (r["request_body"] is not None, r["response_body"] is not None) == (has_request, has_response)
    assert r["input_tokens"] == 1200, "omitted bodies are still accounted for"
    assert r["cost_usd"] is not None


@pytest.mark.parametrize(
    "header_user, body_user, expected",
    [
        # Helicone-User-Id wins
        ("alice", "bob", "alice"),
        # OpenAI's `user` field is the fallback
        (None, "bob", "bob"),
        # empty or non-string `user` is no user
        (None, "", None),
        (None, 42, None),
        (None, None, None),
    ],
)
def test_user_falls_back_to_the_body_user(
    header_user: str | None, body_user: object, expected: str | None
) -> None:
    body = {**samples.CHAT_REQUEST, "user": body_user}
    r = row(capture(meta=CallMeta(request_id="r1", user_id=header_user), request_body=samples.dumps(body)))
    assert r["user_id"] == expected


def test_gzip_response_is_decoded() -> None:
    r = row(capture(response_body=gzip.compress(RESPONSE), content_encoding="gzip"))
    assert r["response_body"] == RESPONSE.decode()
    assert (r["input_tokens"], r["usage_source"]) == (1200, "response")


def test_undecodable_response_is_kept_and_estimated(caplog: pytest.LogCaptureFixture) -> None:
    r = row(capture(response_body=b"not gzip at all", content_encoding="gzip"))
    assert r["response_body"] == "not gzip at all"
    assert r["usage_source"] == "estimated"
    assert "could not decode gzip response body" in caplog.text


def test_store_limit_truncates_both_bodies_but_not_the_accounting() -> None:
    r = row(capture(store_limit=10))
    assert r["request_body"] == samples.dumps(samples.CHAT_REQUEST)[:10].decode()
    assert r["response_body"] == RESPONSE[:10].decode()
    assert r["output_tokens"] == 300


def test_store_limit_cutting_a_multibyte_character_does_not_raise() -> None:
    r = row(capture(response_body='{"x":"é"}'.encode(), store_limit=7))
    assert r["response_body"] == '{"x":"\ufffd'


@pytest.mark.parametrize(
    "overrides, note",
    [
        # a stream whose body was cut to head and tail
        (dict(truncated=True), "response body larger than llmtap_max_body: stored head and tail only"),
        # notes the addon collected
        (dict(extra_notes=["stream tee error: RuntimeError()"]), "stream tee error: RuntimeError()"),
        # a host recognised by its path only (reverse mode)
        (
            dict(inferred=True, host="llm.corp:8443"),
            "priced as openai: host llm.corp:8443 is not a known provider",
        ),
    ],
)
def test_notes(overrides: dict[str, Any], note: str) -> None:
    assert row(capture(**overrides))["cost_note"] == note


def test_error_row_without_response() -> None:
    r = row(capture(status=None, response_body=b"", error="Client disconnected."))
    assert (r["status"], r["error"], r["response_body"]) == (None, "Client disconnected.", None)
    assert (r["input_tokens"], r["usage_source"], r["cost_usd"]) == (None, None, None)
    assert r["model"] == "gpt-4o-mini", "the requested model is the fallback"


def test_bad_bodies_do_not_raise() -> None:
    r = row(capture(request_body=b"\xff{not json", response_body=b"<html>oops</html>", status=502))
    assert (r["requested_model"], r["model"], r["usage_source"], r["cost_usd"]) == (None, None, None, None)
    assert r["request_body"] == "\ufffd{not json"


def test_gemini_model_comes_from_the_path() -> None:
    body = samples.gemini_json()
    del body["modelVersion"]
    r = row(capture(
        provider="google", api="gemini", price_id="google", endpoint="generate",
        host="generativelanguage.googleapis.com",
        path="/v1beta/models/gemini-1.5-flash:generateContent?key=[REDACTED]",
        request_body=b'{"contents":[{"parts":[{"text":"Hi"}]}]}', response_body=samples.dumps(body),
    ))  # fmt: skip
    assert (r["model"], r["requested_model"]) == ("gemini-1.5-flash", "gemini-1.5-flash")
    assert (r["input_tokens"], r["output_tokens"]) == (8, 12)
    at = datetime.fromtimestamp(samples.STARTED, UTC)
    expected = genai_prices.calc_price(
        Usage(input_tokens=8, output_tokens=12), "gemini-1.5-flash", provider_id="google",
        genai_request_timestamp=at,
    ).total_price  # fmt: skip
    assert r["cost_usd"] == expected.quantize(NINE)


def test_streamed_row() -> None:
    r = row(capture(request_body=samples.dumps(samples.STREAM_REQUEST), response_body=samples.openai_stream(),
                    streamed=True, ttft_ms=120.0))  # fmt: skip
    assert (r["streamed"], r["ttft_ms"], r["model"]) == (True, 120.0, samples.OPENAI_MODEL)
    assert (r["input_tokens"], r["output_tokens"], r["usage_source"]) == (19, 3, "response")
    assert r["response_body"] == samples.openai_stream().decode()


ORIGINAL_ID = "11111111-2222-4333-8444-555555555555"


def hit_entry(**fields: Any) -> Entry:
    values: dict[str, Any] = dict(
        request_id=ORIGINAL_ID, status=200, content_type="application/json", streamed=False, body=RESPONSE,
        provider="openai", model="gpt-4o-2024-08-06", input_tokens=1200, output_tokens=300,
        cache_read_tokens=1024, cache_write_tokens=0, reasoning_tokens=128, usage_source="response",
        cost_usd=Decimal("0.004720000"), latency_ms=812.5,
    )  # fmt: skip
    values.update(fields)
    return Entry(**values)


def test_cache_hit_row() -> None:
    r = row(capture(hit=hit_entry(), hit_key="c1:abc/0", cache_status="HIT", latency_ms=3.5))
    assert (r["cache_status"], r["cache_reference_id"]) == ("HIT", ORIGINAL_ID)
    assert r["cost_usd"] == Decimal(0) and isinstance(r["cost_usd"], Decimal)
    assert r["cost_saved_usd"] == Decimal("0.004720000")
    assert r["latency_saved_ms"] == 812.5, "the original's latency, what the hit did not wait"
    assert (r["model"], r["input_tokens"], r["output_tokens"]) == ("gpt-4o-2024-08-06", 1200, 300)
    assert (r["cache_read_tokens"], r["cache_write_tokens"], r["reasoning_tokens"]) == (1024, 0, 128)
    assert r["usage_source"] == "response"
    assert r["cost_note"] == f"cache hit of {ORIGINAL_ID}"
    assert r["request_id"] == "0b9e5f2a-8d63-4c1e-9f0a-5a3c7d2e1b44", "a hit is its own row"
    assert (r["latency_ms"], r["status"], r["requested_model"]) == (3.5, 200, "gpt-4o-mini")


def test_cache_hit_tokens_come_from_the_entry_not_the_body() -> None:
    entry = hit_entry(input_tokens=7, output_tokens=2, cost_usd=None, model=None, usage_source="estimated")
    r = row(capture(hit=entry, cache_status="HIT"))
    assert (r["input_tokens"], r["output_tokens"], r["usage_source"]) == (7, 2, "estimated")
    assert (r["cost_usd"], r["cost_saved_usd"]) == (Decimal(0), None), (
        "an unpriced original saved nothing known"
    )
    assert r["model"] == "gpt-4o-mini", "the requested model when the entry has none"


def test_a_miss_is_an_ordinary_row() -> None:
    r = row(capture(cache_status="MISS"))
    assert (r["cache_status"], r["cache_reference_id"], r["cost_saved_usd"]) == ("MISS", None, None)
    assert r["cost_usd"] == samples.openai_cost()
