"""Rate limits, retries and fallbacks end to end (real mitmdump, real SDKs with max_retries=0)."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import anthropic
import openai
import pytest
from anthropic import Anthropic
from openai import OpenAI

from tests.e2e.conftest import Proxy
from tests.fakeprovider import FakeProvider

MSGS = [{"role": "user", "content": "Say hello"}]
REPLY = "Hello from the fake provider!"


def oai(proxy: Proxy) -> OpenAI:
    return OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test", max_retries=0)


def chat(proxy: Proxy, headers: dict[str, str] | None = None, **body):
    body = {"model": "gpt-4o-mini", "messages": MSGS, **body}
    return oai(proxy).chat.completions.with_raw_response.create(**body, extra_headers=headers or {})


# -- rate limits --


def test_per_user_limit_and_the_429_the_sdks_parse(gateway: Proxy, fake: FakeProvider) -> None:
    policy = {"Helicone-RateLimit-Policy": "2;w=60;s=user"}
    for _ in range(2):
        ok = chat(gateway, {**policy, "Helicone-User-Id": "alice"})
    assert ok.headers["helicone-ratelimit-limit"] == "2"
    assert ok.headers["helicone-ratelimit-remaining"] == "0"
    assert ok.headers["helicone-ratelimit-policy"] == "2;w=60;s=user"
    with pytest.raises(openai.RateLimitError, match="rate limited") as info:
        chat(gateway, {**policy, "Helicone-User-Id": "alice"})
    resp = info.value.response
    assert resp.headers["x-helicone-error"] == "rate_limited"
    assert 1 <= int(resp.headers["retry-after"]) <= 30
    assert resp.headers["helicone-ratelimit-remaining"] == "0"
    chat(gateway, {**policy, "Helicone-User-Id": "bob"})  # another user has their own bucket
    assert len(fake.received) == 3
    rows = gateway.rows()
    assert [(r["status"], r["rate_limited"], r["user_id"]) for r in rows] == [
        (200, False, "alice"),
        (200, False, "alice"),
        (429, True, "alice"),
        (200, False, "bob"),
    ]


def test_anthropic_sdk_raises_its_rate_limit_error(gateway: Proxy) -> None:
    claude = Anthropic(base_url=gateway.url, api_key="sk-ant", max_retries=0)
    headers = {"Helicone-RateLimit-Policy": "1;w=60"}
    claude.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=MSGS, extra_headers=headers)
    with pytest.raises(anthropic.RateLimitError, match="rate limited"):
        claude.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=MSGS, extra_headers=headers)


def test_rule_limits_per_property_and_global(
    fake: FakeProvider, start_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - {name: per-feature, match: {}, rate_limit: {quota: 1, window: 60s, segment: feature}}\n"
        "  - {name: everyone, match: {}, rate_limit: {quota: 3, window: 1h}}\n"
    )
    proxy = start_proxy("--mode", f"reverse:{fake.url}", "--set", f"llmtap_rules={rules}")
    statuses = []
    for feature in ("search", "search", "chat", "summary", "other"):
        try:
            chat(proxy, {"Helicone-Property-Feature": feature})
            statuses.append(200)
        except openai.RateLimitError:
            statuses.append(429)
    # search twice: the per-feature bucket denies; the global bucket is spent after 3 calls
    assert statuses == [200, 429, 200, 200, 429]
    assert len(fake.received) == 3


def test_tokens_and_cents_limits_are_charged_with_real_usage(gateway: Proxy) -> None:
    usage = json.dumps({"input": 700, "output": 100})
    tokens = {"Helicone-RateLimit-Policy": "1000;w=3600;u=tokens", "x-fake-usage": usage}
    # Back to back, as a script calls: each charge (priced off the event loop) lands before the
    # next call is admitted.
    chat(gateway, tokens)  # 1000 -> 200 once charged: still positive, so the next is admitted
    chat(gateway, tokens)  # 200 -> -600
    with pytest.raises(openai.RateLimitError):
        chat(gateway, tokens)
    big = json.dumps({"input": 1_000_000, "output": 100_000})
    cents = {"Helicone-RateLimit-Policy": "10;w=3600;u=cents", "x-fake-usage": big}
    chat(gateway, cents, model="gpt-4o")  # $3.50 = 350 cents, far beyond the 10-cent quota
    with pytest.raises(openai.RateLimitError):
        chat(gateway, cents, model="gpt-4o")


@pytest.mark.parametrize(
    "policy, problem",
    [
        ("ten;w=60", "expected quota;w=seconds"),
        ("10;w=5", "w must be whole seconds from 60 to 31536000"),
        ("10;w=60;u=dollars", "expected request, cents or tokens"),
        ("10;w=60;x=1", "unexpected part 'x=1'"),
        ("10;w=60;s=user", "needs a Helicone-User-Id header"),
        ("10;w=60;s=team", "needs a Helicone-Property-team header"),
    ],
)
def test_bad_policy_header_is_a_400_naming_it(
    gateway: Proxy, fake: FakeProvider, policy: str, problem: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(gateway, {"Helicone-RateLimit-Policy": policy})
    message = info.value.body["message"]  # type: ignore[index]
    assert message.startswith("Helicone-RateLimit-Policy: ") and problem in message
    assert fake.received == []


def test_cache_hits_are_not_charged(gateway: Proxy, fake: FakeProvider) -> None:
    """A rate-limited client's next identical call, sent at once, is a hit and costs no quota."""
    headers = {"Helicone-RateLimit-Policy": "1;w=60", "Helicone-Cache-Enabled": "true"}
    assert chat(gateway, headers).headers["helicone-cache"] == "MISS"
    for _ in range(3):
        assert chat(gateway, headers).headers["helicone-cache"] == "HIT"
    with pytest.raises(openai.RateLimitError):  # the one request of the quota went to the first call
        chat(gateway, headers, temperature=0.5)
    assert len(fake.received) == 1
    rows = gateway.rows()
    assert [(r["cache_status"], r["status"], r["rate_limited"]) for r in rows] == [
        ("MISS", 200, False), ("HIT", 200, False), ("HIT", 200, False), ("HIT", 200, False),
        ("MISS", 429, True),  # it asked the cache too, and missed
    ]  # fmt: skip


# -- retries --


def key() -> str:
    return uuid.uuid4().hex


@pytest.mark.parametrize("failures", ["500", "429,503", "reset", "reset,500"])
def test_retries_until_success(gateway: Proxy, fake: FakeProvider, failures: str) -> None:
    headers = {
        "Helicone-Retry-Enabled": "true",
        "Helicone-Retry-Min-Timeout": "10",
        "Helicone-Retry-Max-Timeout": "50",
        "x-fake-fail": failures,
        "x-fake-key": key(),
    }
    raw = chat(gateway, headers)
    assert raw.parse().choices[0].message.content == REPLY
    n = len(failures.split(","))
    assert len(fake.received) == n + 1
    [row] = gateway.rows()
    assert row["status"] == 200 and row["retries"] == n
    attempts = json.loads(row["attempts"])
    expected = [None if f == "reset" else int(f) for f in failures.split(",")] + [200]
    assert [a["status"] for a in attempts] == expected
    assert all(a["latency_ms"] >= 0 for a in attempts)
    reported = raw.parse().usage
    assert (row["input_tokens"], row["output_tokens"]) == (reported.prompt_tokens, reported.completion_tokens)


@pytest.mark.parametrize("encoding", ["gzip", "br", "identity"])
def test_a_retried_call_reaches_the_sdk_in_one_consistent_encoding(
    gateway: Proxy, fake: FakeProvider, encoding: str
) -> None:
    """The real APIs compress JSON for the SDKs: llmtap's own client must hand body and
    content-encoding over in agreement (the SDK failed on byte 0x8b), and read the usage."""
    usage = {"input": 1200, "cached": 1024, "output": 40, "reasoning": 8}
    headers = {"Helicone-Retry-Enabled": "true", "Helicone-Retry-Min-Timeout": "10", "x-fake-fail": "503",
               "x-fake-key": key(), "x-fake-encoding": encoding,
               "x-fake-usage": json.dumps(usage)}  # fmt: skip
    raw = chat(gateway, headers)
    assert raw.parse().choices[0].message.content == REPLY
    assert raw.parse().usage.prompt_tokens == 1200
    assert fake.received[-1].headers["accept-encoding"].startswith("gzip, deflate")  # as the SDK sent it
    [row] = gateway.rows()
    assert (row["retries"], row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (
        1, 1200, 1024, 40,
    )  # fmt: skip
    assert row["reasoning_tokens"] == 8 and row["usage_source"] == "response"
    assert json.loads(row["response_body"])["usage"]["prompt_tokens"] == 1200, "stored decoded"


def test_no_retry_on_other_4xx_and_the_last_response_is_returned(gateway: Proxy, fake: FakeProvider) -> None:
    base = {
        "Helicone-Retry-Enabled": "true",
        "Helicone-Retry-Num": "3",
        "Helicone-Retry-Min-Timeout": "10",
        "Helicone-Retry-Max-Timeout": "20",
    }
    with pytest.raises(openai.BadRequestError):
        chat(gateway, {**base, "x-fake-fail": "400,400", "x-fake-key": key()})
    assert len(fake.received) == 1
    with pytest.raises(openai.InternalServerError):
        chat(gateway, {**base, "x-fake-fail": "500,500,500,500", "x-fake-key": key()})
    assert len(fake.received) == 1 + 3
    _, spent = gateway.rows()
    assert spent["status"] == 500 and spent["retries"] == 2


def test_retry_after_is_honoured(gateway: Proxy, fake: FakeProvider) -> None:
    headers = {
        "Helicone-Retry-Enabled": "true",
        "Helicone-Retry-Min-Timeout": "10",
        "Helicone-Retry-Max-Timeout": "20",
        "x-fake-fail": "429",
        "x-fake-retry-after": "1",
        "x-fake-key": key(),
    }
    started = time.monotonic()
    chat(gateway, headers)
    assert time.monotonic() - started >= 1.0  # the provider's 1 s, not the 10-20 ms backoff


def test_a_stream_is_retried_only_before_anything_reached_the_client(
    gateway: Proxy, fake: FakeProvider
) -> None:
    headers = {
        "Helicone-Retry-Enabled": "true",
        "Helicone-Retry-Min-Timeout": "10",
        "Helicone-Retry-Max-Timeout": "20",
        "x-fake-fail": "503",
        "x-fake-key": key(),
    }
    chunks = list(
        oai(gateway).chat.completions.create(
            model="gpt-4o-mini", messages=MSGS, stream=True, extra_headers=headers
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert all(c.choices for c in chunks), "the injected usage chunk must stay hidden after a retry"
    assert len(fake.received) == 2
    # once it streams, a cut is final: the client sees the cut, and nothing is re-sent
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port)
    body = json.dumps({"model": "gpt-4o-mini", "messages": MSGS, "stream": True})
    conn.request(
        "POST",
        "/v1/chat/completions",
        body,
        {
            "content-type": "application/json",
            "helicone-retry-enabled": "true",
            "x-fake-delay-ms": "30",
            "x-fake-reply": " ".join(["w"] * 30),
        },
    )
    resp = conn.getresponse()
    resp.read1(100)
    resp.close()
    conn.close()
    gateway.wait_rows("SELECT 1 FROM requests", 2)  # the cut call's row: its error hook has run
    assert len(fake.received) == 3
    rows = gateway.rows()
    assert rows[0]["retries"] == 1 and rows[0]["streamed"] and rows[0]["usage_source"] == "response"
    assert rows[0]["output_tokens"] == len(REPLY.split()) + 1
    assert rows[1]["retries"] is None and "disconnect" in rows[1]["error"].lower()


def test_a_backing_off_call_does_not_delay_other_clients(gateway: Proxy, fake: FakeProvider) -> None:
    slow = {
        "Helicone-Retry-Enabled": "true",
        "Helicone-Retry-Min-Timeout": "2000",
        "Helicone-Retry-Max-Timeout": "2000",
        "x-fake-fail": "500",
        "x-fake-key": key(),
    }
    done: list[float] = []
    started = time.monotonic()
    waiting = threading.Thread(target=lambda: (chat(gateway, slow), done.append(time.monotonic() - started)))
    waiting.start()
    deadline = time.monotonic() + 10
    while not fake.received:  # its first attempt failed: it is backing off now
        assert time.monotonic() < deadline
        time.sleep(0.01)
    quick = []
    for _ in range(5):
        t = time.monotonic()
        chat(gateway)
        quick.append(time.monotonic() - t)
    waiting.join(10)
    assert done and done[0] >= 2.0  # it really backed off
    assert max(quick) < 1.0  # while others went straight through


# -- fallbacks --


def test_fallbacks_on_listed_codes(gateway: Proxy, fake: FakeProvider) -> None:
    with FakeProvider() as second, FakeProvider() as third:
        fallbacks = [
            {
                "target-url": second.url,
                "headers": {"Authorization": "Bearer sk-second", "x-fake-status": "503"},
                "onCodes": [{"from": 500, "to": 599}],
            },
            {
                "target-url": third.url,
                "headers": {"Authorization": "Bearer sk-third", "x-fake-status": "0"},
                "bodyKeyOverride": {"model": "gpt-4o"},
            },
        ]
        raw = chat(gateway, {"Helicone-Fallbacks": json.dumps(fallbacks), "x-fake-status": "500"})
        assert raw.headers["helicone-fallback-index"] == "1"
        assert raw.parse().model == "gpt-4o"
        assert (len(fake.received), len(second.received), len(third.received)) == (1, 1, 1)
        assert third.received[0].headers["authorization"] == "Bearer sk-third"
    [row] = gateway.rows()
    assert row["fallback_index"] == 1 and row["model"] == "gpt-4o"
    assert row["input_tokens"] == raw.parse().usage.prompt_tokens and row["usage_source"] == "response"
    assert [a["target"] for a in json.loads(row["attempts"])] == ["primary", "fallback 0", "fallback 1"]


def test_rule_fallbacks_read_keys_from_the_environment(
    fake: FakeProvider, start_proxy: Callable[..., Proxy], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeProvider() as backup:
        rules = tmp_path / "rules.yaml"
        rules.write_text(
            "rules:\n  - name: backup\n    match: {}\n"
            f"    fallbacks:\n      - target-url: '{backup.url}'\n"
            "        headers: {Authorization: 'Bearer ${BACKUP_KEY}', x-fake-status: '0'}\n"
        )
        monkeypatch.setenv("BACKUP_KEY", "sk-from-env")
        proxy = start_proxy("--mode", f"reverse:{fake.url}", "--set", f"llmtap_rules={rules}")
        assert "sk-from-env" not in rules.read_text()
        raw = chat(proxy, {"x-fake-status": "503"})
        assert raw.headers["helicone-fallback-index"] == "0"
        assert backup.received[0].headers["authorization"] == "Bearer sk-from-env"
        assert chat(proxy).headers.get("helicone-fallback-index") is None  # healthy primary: no fallback
    assert "sk-from-env" not in json.dumps(proxy.rows(), default=str)


def test_bad_fallbacks_header_is_a_400(gateway: Proxy, fake: FakeProvider) -> None:
    with pytest.raises(openai.BadRequestError, match="Helicone-Fallbacks"):
        chat(gateway, {"Helicone-Fallbacks": '[{"target-url": "not a url"}]'})
    assert fake.received == []
