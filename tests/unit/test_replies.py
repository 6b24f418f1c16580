from __future__ import annotations

import json
import re
from decimal import Decimal

import anthropic
import openai
import pytest
from mitmproxy import http

from llmtap.proxy import replies
from llmtap.storage.cachestore import Entry

from . import samples

try:  # the HTTP library the installed SDKs are built on
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older SDK releases
    import httpx  # type: ignore[no-redef]

REQUEST_ID = "0b9e5f2a-8d63-4c1e-9f0a-5a3c7d2e1b44"
HEADER_ERROR = "Helicone-Cache-Bucket-Max-Size: expected a whole number from 1 to 20, got '21'"


@pytest.mark.parametrize(
    "api, status, kind",
    [
        # OpenAI shape for the openai and gemini wire formats
        ("openai", 400, "invalid_request_error"),
        ("openai", 401, "authentication_error"),
        ("openai", 429, "rate_limit_error"),
        ("openai", 500, "server_error"),
        ("openai", 503, "server_error"),
        ("gemini", 400, "invalid_request_error"),
        ("gemini", 429, "rate_limit_error"),
    ],
)
def test_openai_shaped_error(api: str, status: int, kind: str) -> None:
    resp = replies.error(api, status, "llmtap: no", "Some-Header")
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/json"
    assert json.loads(resp.content or b"") == {
        "error": {"message": "llmtap: no", "type": kind, "param": "Some-Header", "code": kind}
    }


def test_openai_shaped_error_without_param() -> None:
    body = json.loads(replies.error("openai", 401, "denied").content or b"")
    assert body["error"]["param"] is None


@pytest.mark.parametrize(
    "status, kind",
    [
        # the statuses llmtap answers with
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (429, "rate_limit_error"),
        # anything else
        (500, "api_error"),
        (404, "api_error"),
    ],
)
def test_anthropic_shaped_error(status: int, kind: str) -> None:
    resp = replies.error("anthropic", status, "llmtap: no", "Ignored-Param")
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/json"
    assert json.loads(resp.content or b"") == {
        "type": "error",
        "error": {"type": kind, "message": "llmtap: no"},
    }


def replying(resp: http.Response) -> httpx.Client:
    """An HTTP client whose every request gets `resp` (no network)."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(resp.status_code, headers=dict(resp.headers), content=resp.content)

    return httpx.Client(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    "status, exc",
    [
        # bad header, access key, rate limit
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (429, openai.RateLimitError),
    ],
)
def test_the_openai_sdk_raises_its_own_error_with_our_message(status: int, exc: type[Exception]) -> None:
    resp = replies.error("openai", status, HEADER_ERROR, "Helicone-Cache-Bucket-Max-Size")
    with replying(resp) as http_client:
        client = openai.OpenAI(
            api_key="sk-test", base_url="http://llmtap.test/v1", http_client=http_client, max_retries=0
        )
        with pytest.raises(exc, match=re.escape(HEADER_ERROR)) as info:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    e = info.value
    assert isinstance(e, openai.APIStatusError)
    assert (e.status_code, e.param) == (status, "Helicone-Cache-Bucket-Max-Size")


@pytest.mark.parametrize(
    "status, exc",
    [
        # bad header, access key, rate limit
        (400, anthropic.BadRequestError),
        (401, anthropic.AuthenticationError),
        (429, anthropic.RateLimitError),
    ],
)
def test_the_anthropic_sdk_raises_its_own_error_with_our_message(status: int, exc: type[Exception]) -> None:
    resp = replies.error("anthropic", status, HEADER_ERROR)
    with replying(resp) as http_client:
        client = anthropic.Anthropic(
            api_key="sk-ant-test", base_url="http://llmtap.test", http_client=http_client, max_retries=0
        )
        with pytest.raises(exc, match="Helicone-Cache-Bucket-Max-Size") as info:
            client.messages.create(
                model="claude-3-5-sonnet-latest", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
    e = info.value
    assert isinstance(e, anthropic.APIStatusError) and e.status_code == status
    assert e.body == {"type": "error", "error": {"type": e.body["error"]["type"], "message": HEADER_ERROR}}  # type: ignore[index]


def entry(**fields: object) -> Entry:
    values: dict[str, object] = dict(
        request_id="11111111-2222-4333-8444-555555555555", status=200, content_type="application/json",
        streamed=False, body=samples.dumps(samples.openai_chat_json()), cost_usd=Decimal("0.0047"),
        latency_ms=812.5,
    )  # fmt: skip
    values.update(fields)
    return Entry(**values)  # type: ignore[arg-type]


def test_cache_hit() -> None:
    e = entry()
    resp = replies.cache_hit(e, 2, REQUEST_ID)
    assert resp.status_code == 200
    assert resp.content == e.body
    assert dict(resp.headers) == {
        "content-type": "application/json",
        "helicone-cache": "HIT",
        "helicone-cache-bucket-idx": "2",
        "helicone-id": REQUEST_ID,
        "helicone-cache-latency": "812",
        "content-length": str(len(e.body)),
    }


def test_cache_hit_of_a_stream_replays_the_same_bytes() -> None:
    body = samples.openai_stream("none")
    resp = replies.cache_hit(entry(streamed=True, body=body, content_type="text/event-stream"), 0, REQUEST_ID)
    assert resp.raw_content == body
    assert resp.headers["content-type"] == "text/event-stream"
    assert resp.headers["cache-control"] == "no-cache"
    assert resp.headers["helicone-cache-bucket-idx"] == "0"


@pytest.mark.parametrize(
    "latency, header",
    [
        # unknown: no header
        (None, None),
        # whole milliseconds, rounded
        (0.4, "0"),
        (1499.6, "1500"),
    ],
)
def test_cache_hit_latency_header(latency: float | None, header: str | None) -> None:
    resp = replies.cache_hit(entry(latency_ms=latency), 0, REQUEST_ID)
    assert resp.headers.get("helicone-cache-latency") == header


def test_cache_hit_keeps_the_saved_status() -> None:
    resp = replies.cache_hit(entry(status=201), 0, REQUEST_ID)
    assert resp.status_code == 201
    assert "cache-control" not in resp.headers
