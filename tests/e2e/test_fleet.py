"""Fleet mode end to end: several real mitmdumps share one real redis-server (llmtap_redis).

Limits must be fleet-wide (LiteLLM's N-replicas-allow-N-times bug is the failure to avoid), a
response cached through one proxy is a hit through another the moment the first call returned,
and a dead Redis never fails a call: the proxies fall back to their own buckets and say so on
the rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from itertools import cycle
from pathlib import Path

import genai_prices
import openai
import pytest
from anthropic import Anthropic
from genai_prices import Usage

from llmtap.proxy.fleet import RETRY_SECONDS
from tests.e2e.conftest import Proxy, free_port
from tests.e2e.test_cache import CACHE, MSGS, REPLY, chat_raw, client, sse_bytes
from tests.fakeprovider import FakeProvider
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fleet(
    fake: FakeProvider, start_proxy: Callable[..., Proxy], redis_server: RedisServer
) -> Callable[..., list[Proxy]]:
    def start(n: int, *args: str) -> list[Proxy]:
        return [
            start_proxy("--mode", f"reverse:{fake.url}", "--set", f"llmtap_redis={redis_server.url}",
                        "--set", f"llmtap_proxy_id=proxy-{i}", *args)
            for i in range(n)
        ]  # fmt: skip

    return start


def statuses(proxies: list[Proxy], n: int, headers: dict[str, str], **body) -> list[int]:
    """`n` calls, round robin over the proxies, each sent the moment the previous returned."""
    out = []
    for _, proxy in zip(range(n), cycle(proxies), strict=False):
        try:
            out.append(chat_raw(proxy, headers, **body).http_response.status_code)
        except openai.RateLimitError as e:
            assert "rate limited" in e.message
            out.append(429)
    return out


def all_rows(proxies: list[Proxy]) -> list[dict]:
    return sorted((r for p in proxies for r in p.rows()), key=lambda r: r["created_at"])


def test_a_limit_admits_exactly_its_quota_across_the_fleet(
    fleet: Callable[..., list[Proxy]], fake: FakeProvider
) -> None:
    proxies = fleet(3)
    got = statuses(proxies, 30, {"Helicone-RateLimit-Policy": "10;w=60"})
    assert got == [200] * 10 + [429] * 20
    assert len(fake.received) == 10
    rows = all_rows(proxies)
    assert len(rows) == 30
    assert {r["rate_limit_store"] for r in rows} == {"redis"}
    assert [r["rate_limited"] for r in rows] == [False] * 10 + [True] * 20
    assert {r["proxy_id"] for r in rows} == {"proxy-0", "proxy-1", "proxy-2"}


def test_per_user_segments_and_a_rule_with_a_header_at_once(
    fleet: Callable[..., list[Proxy]], fake: FakeProvider, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: everyone, match: {}, rate_limit: {quota: 6, window: 1h}}\n")
    proxies = fleet(3, "--set", f"llmtap_rules={rules}")
    per_user = {"Helicone-RateLimit-Policy": "2;w=60;s=user"}
    alice = statuses(proxies, 4, {**per_user, "Helicone-User-Id": "alice"})
    bob = statuses(proxies, 4, {**per_user, "Helicone-User-Id": "bob"})
    assert (alice, bob) == ([200, 200, 429, 429], [200, 200, 429, 429])
    # 4 of the rule's 6 are taken: carol gets the last 2, then the rule refuses (all-or-nothing:
    # her header's own bucket, 1 left, is not charged for the refused call)
    carol = statuses(proxies, 3, {"Helicone-RateLimit-Policy": "3;w=60", "Helicone-User-Id": "carol"})
    assert carol == [200, 200, 429]
    dave = statuses(proxies, 2, {"Helicone-User-Id": "dave"})
    assert dave == [429, 429]
    assert len(fake.received) == 6


def test_tokens_are_charged_once_fleet_wide(fleet: Callable[..., list[Proxy]], fake: FakeProvider) -> None:
    proxies = fleet(3)
    usage = json.dumps({"input": 700, "output": 100})
    tokens = {"Helicone-RateLimit-Policy": "1000;w=3600;u=tokens", "x-fake-usage": usage}
    # 1000 -> 200 (still positive) -> -600: the third call, on a third proxy, is refused
    assert statuses(proxies, 4, tokens) == [200, 200, 429, 429]
    big = json.dumps({"input": 1_000_000, "output": 100_000})
    cents = {"Helicone-RateLimit-Policy": "10;w=3600;u=cents", "x-fake-usage": big}
    assert statuses(proxies[1:], 2, cents, model="gpt-4o") == [200, 429]  # $3.50 = 350 cents of 10


def test_a_response_cached_through_one_proxy_is_a_hit_through_another(
    fleet: Callable[..., list[Proxy]], fake: FakeProvider
) -> None:
    a, b, c = fleet(3)
    usage = json.dumps({"input": 1000, "cached": 200, "output": 50})
    first = chat_raw(a, {**CACHE, "x-fake-usage": usage})
    second = chat_raw(b, {**CACHE, "x-fake-usage": usage})  # at once, through another proxy
    third = chat_raw(c, {**CACHE, "x-fake-usage": usage})
    assert [r.headers["helicone-cache"] for r in (first, second, third)] == ["MISS", "HIT", "HIT"]
    assert second.parse().model_dump() == first.parse().model_dump()
    assert len(fake.received) == 1
    [miss], [hit_b], [hit_c] = a.rows(), b.rows(), c.rows()
    calc = genai_prices.calc_price(
        Usage(input_tokens=1000, cache_read_tokens=200, output_tokens=50),
        "gpt-4o-mini",
        provider_id="openai",
        genai_request_timestamp=miss["created_at"],
    )
    assert miss["cost_usd"] == calc.total_price.quantize(Decimal("0.000000001"))
    for hit in (hit_b, hit_c):
        assert hit["cache_status"] == "HIT" and hit["cache_reference_id"] == miss["request_id"]
        assert hit["cost_usd"] == 0 and hit["cost_saved_usd"] == miss["cost_usd"]
        assert (hit["input_tokens"], hit["cache_read_tokens"], hit["output_tokens"]) == (1000, 200, 50)
        assert hit["latency_saved_ms"] == miss["latency_ms"]


def test_streams_replay_through_another_proxy_and_clear_by_seed_is_fleet_wide(
    fleet: Callable[..., list[Proxy]], fake: FakeProvider, redis_server: RedisServer
) -> None:
    a, b = fleet(2)
    seeded = {**CACHE, "Helicone-Cache-Seed": "team-a"}
    h1, original = sse_bytes(a, seeded)
    h2, replayed = sse_bytes(b, seeded)
    assert (h1["helicone-cache"], h2["helicone-cache"]) == ("MISS", "HIT")
    assert replayed == original and b"data: [DONE]" in replayed
    for proxy in (b, a):
        claude = Anthropic(base_url=proxy.url, api_key="sk-ant", max_retries=0)
        with claude.messages.stream(
            model="claude-haiku-4-5", max_tokens=32, messages=MSGS, extra_headers=CACHE
        ) as s:
            assert s.get_final_message().content[0].text == REPLY
    assert len(fake.received) == 2  # one stream of each API reached the provider

    def cli(*args: str) -> str:
        cmd = [sys.executable, "-m", "llmtap.cli", "cache", *args, "--redis", redis_server.url]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout

    assert "deleted 1 cached responses with seed 'team-a'" in cli("clear", "--seed", "team-a")
    h3, _ = sse_bytes(b, seeded)
    assert h3["helicone-cache"] == "MISS"  # gone for every proxy
    chunks = client(a).chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, stream=True, extra_headers=seeded
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY  # a hit of h3's save
    assert len(fake.received) == 3
    entries, _, hits = cli("stats").splitlines()[2].split()
    assert (entries, hits) == ("2", "2")  # the Anthropic stream and h3's, each hit once


def test_redis_down_never_fails_a_call_and_the_rows_say_local(
    fleet: Callable[..., list[Proxy]], fake: FakeProvider, redis_server: RedisServer
) -> None:
    a, b = fleet(2)
    policy = {"Helicone-RateLimit-Policy": "3;w=60"}
    assert statuses([a, b], 2, policy) == [200, 200]
    redis_server.stop(9)  # a crash: the buckets are gone with it
    # each proxy now counts alone, from a full bucket of 3: 3 calls each pass, the 4th is refused
    assert statuses([a, b], 8, policy) == [200] * 6 + [429] * 2
    miss = chat_raw(a, CACHE)
    assert miss.headers["helicone-cache"] == "MISS"
    assert chat_raw(b, CACHE).headers["helicone-cache"] == "MISS"  # nothing saved while it is down
    redis_server.start()  # empty again, on the same port
    time.sleep(RETRY_SECONDS)  # the documented interval after which a proxy asks Redis again
    assert statuses([a, b], 2, policy) == [200, 200]
    rows = all_rows([a, b])
    assert [r["rate_limit_store"] for r in rows] == ["redis"] * 2 + ["local"] * 8 + [None] * 2 + ["redis"] * 2
    assert [r["status"] for r in rows] == [200] * 8 + [429] * 2 + [200] * 4
    assert [r["cache_status"] for r in rows[10:12]] == ["MISS", "MISS"]
    for proxy in (a, b):
        log = proxy.log()
        assert log.count("rate limits are per-process and the cache misses until it is back") == 1, log
        assert log.count("is back: limits and cache are shared again") == 1, log


def test_a_proxy_starts_and_serves_with_no_redis_at_all(
    fake: FakeProvider, start_proxy: Callable[..., Proxy]
) -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    proxy = start_proxy("--mode", f"reverse:{fake.url}", "--set", f"llmtap_redis={nobody}")
    policy = {"Helicone-RateLimit-Policy": "1;w=60", **CACHE}
    assert chat_raw(proxy, policy).headers["helicone-cache"] == "MISS"
    with pytest.raises(openai.RateLimitError):  # the limit still holds, in this process
        chat_raw(proxy, policy)
    assert chat_raw(proxy, {}).parse().choices[0].message.content == REPLY
    rows = proxy.rows()
    assert [(r["status"], r["rate_limit_store"], r["cache_status"]) for r in rows] == [
        (200, "local", "MISS"), (429, "local", "MISS"), (200, None, None)
    ]  # fmt: skip
    log = proxy.log()
    assert "Redis at" in log and "hook failed" not in log, log
