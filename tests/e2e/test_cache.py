"""The response cache end to end: real mitmdump, real SDKs, the fake provider counting calls.

Calls follow each other at once, as a script's or a retry loop's do: the second identical call
must be a hit although the writer process has not saved the first one yet. Only tests about the
cache file itself (`llmtap cache stats`) wait for the writer, for the fact (`wait_entries`).
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import genai_prices
import openai
import pytest
from anthropic import Anthropic
from genai_prices import Usage
from openai import OpenAI

from tests.e2e.conftest import Proxy, free_port
from tests.fakeprovider import FakeProvider

MSGS = [{"role": "user", "content": "Say hello"}]
CACHE = {"Helicone-Cache-Enabled": "true"}
REPLY = "Hello from the fake provider!"
ROOT = Path(__file__).resolve().parents[2]


def wait_entries(proxy: Proxy, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.cache.exists():
            with sqlite3.connect(proxy.cache) as conn:
                if conn.execute("SELECT count(*) FROM entries").fetchone()[0] >= n:
                    return
        time.sleep(0.02)
    raise AssertionError(f"the cache did not reach {n} entries")


def client(proxy: Proxy, key: str = "sk-test") -> OpenAI:
    return OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)


def chat_raw(proxy: Proxy, headers: dict[str, str], key: str = "sk-test", **body):
    body = {"model": "gpt-4o-mini", "messages": MSGS, **body}
    return client(proxy, key).chat.completions.with_raw_response.create(**body, extra_headers=headers)


def test_second_call_is_a_hit_and_never_reaches_the_provider(gateway: Proxy, fake: FakeProvider) -> None:
    usage = json.dumps({"input": 1000, "cached": 200, "output": 50})
    first = chat_raw(gateway, {**CACHE, "x-fake-usage": usage})
    assert first.headers["helicone-cache"] == "MISS"
    second = chat_raw(gateway, {**CACHE, "x-fake-usage": usage})
    assert second.headers["helicone-cache"] == "HIT"
    assert second.headers["helicone-cache-bucket-idx"] == "0"
    assert second.parse().model_dump() == first.parse().model_dump()
    assert len(fake.received) == 1
    miss, hit = gateway.rows()
    assert (miss["cache_status"], hit["cache_status"]) == ("MISS", "HIT")
    assert hit["request_id"] == second.headers["helicone-id"] != miss["request_id"]
    assert hit["cache_reference_id"] == miss["request_id"]
    usage = Usage(input_tokens=1000, cache_read_tokens=200, output_tokens=50)
    at = miss["created_at"]
    calc = genai_prices.calc_price(usage, "gpt-4o-mini", provider_id="openai", genai_request_timestamp=at)
    assert miss["cost_usd"] == calc.total_price.quantize(Decimal("0.000000001"))
    assert hit["cost_usd"] == Decimal(0) and hit["cost_saved_usd"] == miss["cost_usd"]
    assert hit["latency_saved_ms"] == miss["latency_ms"] > 0 and miss["latency_saved_ms"] is None
    for col in ("input_tokens", "output_tokens", "cache_read_tokens", "model", "usage_source"):
        assert hit[col] == miss[col]
    assert (hit["input_tokens"], hit["cache_read_tokens"]) == (1000, 200)


def test_no_header_no_rule_no_cache(gateway: Proxy, fake: FakeProvider) -> None:
    r = chat_raw(gateway, {})
    assert "helicone-cache" not in r.headers
    chat_raw(gateway, {})
    assert len(fake.received) == 2
    assert [row["cache_status"] for row in gateway.rows()] == [None, None]


def sse_bytes(proxy: Proxy, headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port)
    body = json.dumps({"model": "gpt-4o-mini", "messages": MSGS, "stream": True})
    auth = {"content-type": "application/json", "authorization": "Bearer sk-test"}  # as the SDK sends it
    conn.request("POST", "/v1/chat/completions", body, {**auth, **headers})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return {k.lower(): v for k, v in resp.getheaders()}, data


def test_streams_are_replayed_event_for_event(gateway: Proxy, fake: FakeProvider) -> None:
    h1, original = sse_bytes(gateway, CACHE)
    h2, replayed = sse_bytes(gateway, CACHE)
    assert (h1["helicone-cache"], h2["helicone-cache"]) == ("MISS", "HIT")
    assert h2["content-type"].startswith("text/event-stream")
    assert replayed == original  # the client's view: no injected usage chunk in either
    assert b'"choices":[]' not in replayed and b"data: [DONE]" in replayed
    chunks = list(
        client(gateway).chat.completions.create(
            model="gpt-4o-mini", messages=MSGS, stream=True, extra_headers=CACHE
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the fake provider!"
    assert len(fake.received) == 1
    rows = gateway.rows()
    assert [r["cache_status"] for r in rows] == ["MISS", "HIT", "HIT"]
    assert all(r["streamed"] for r in rows)
    assert rows[1]["output_tokens"] == rows[0]["output_tokens"] == len(REPLY.split()) + 1


def test_anthropic_stream_from_a_hit_works_in_the_sdk(gateway: Proxy, fake: FakeProvider) -> None:
    claude = Anthropic(base_url=gateway.url, api_key="sk-ant", max_retries=0)

    def ask() -> str:
        with claude.messages.stream(
            model="claude-haiku-4-5", max_tokens=32, messages=MSGS, extra_headers=CACHE
        ) as s:
            return s.get_final_message().content[0].text

    first = ask()
    assert ask() == first
    assert len(fake.received) == 1


def test_bucket_fills_before_it_hits(gateway: Proxy, fake: FakeProvider) -> None:
    headers = {**CACHE, "Helicone-Cache-Bucket-Max-Size": "3"}
    for i in range(3):
        r = chat_raw(gateway, {**headers, "x-fake-reply": f"reply {i}"})
        assert r.headers["helicone-cache"] == "MISS"
    replies, slots = set(), set()
    for _ in range(30):
        r = chat_raw(gateway, headers)
        assert r.headers["helicone-cache"] == "HIT"
        slots.add(r.headers["helicone-cache-bucket-idx"])
        replies.add(r.parse().choices[0].message.content)
    assert len(fake.received) == 3
    assert slots <= {"0", "1", "2"} and len(slots) >= 2
    assert replies <= {"reply 0", "reply 1", "reply 2"} and len(replies) >= 2


def test_bucket_over_20_is_a_400_naming_the_header(gateway: Proxy, fake: FakeProvider) -> None:
    with pytest.raises(openai.BadRequestError, match="Helicone-Cache-Bucket-Max-Size"):
        chat_raw(gateway, {**CACHE, "Helicone-Cache-Bucket-Max-Size": "21"})
    assert fake.received == []
    [row] = gateway.rows()
    assert row["status"] == 400


def test_ttl_from_cache_control_expires(gateway: Proxy, fake: FakeProvider) -> None:
    headers = {**CACHE, "Cache-Control": "max-age=1"}
    chat_raw(gateway, headers)
    assert chat_raw(gateway, headers).headers["helicone-cache"] == "HIT"
    time.sleep(1.2)
    assert chat_raw(gateway, headers).headers["helicone-cache"] == "MISS"
    assert len(fake.received) == 2


def test_ignore_keys_in_both_forms(gateway: Proxy, fake: FakeProvider) -> None:
    for form in ("user,metadata", '"user","metadata"'):
        fake.clear()
        headers = {**CACHE, "Helicone-Cache-Ignore-Keys": form, "Helicone-Cache-Seed": form}
        chat_raw(gateway, headers, user="alice")
        assert chat_raw(gateway, headers, user="bob").headers["helicone-cache"] == "HIT"
        assert chat_raw(gateway, headers, user="bob", temperature=0.5).headers["helicone-cache"] == "MISS"
        assert len(fake.received) == 2


def test_isolated_by_api_key_and_by_host(fake: FakeProvider, start_proxy: Callable[..., Proxy]) -> None:
    with FakeProvider() as other:
        p1, p2 = free_port(), free_port()
        start_proxy("--mode", f"reverse:{fake.url}@{p1}", "--mode", f"reverse:{other.url}@{p2}")

        def call(port: int, key: str) -> str:
            c = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
            raw = c.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MSGS, extra_headers=CACHE
            )
            return raw.headers["helicone-cache"]

        assert call(p1, "sk-alice") == "MISS"
        assert call(p1, "sk-bob") == "MISS"  # another key never shares an entry
        assert call(p2, "sk-alice") == "MISS"  # another host neither
        assert [call(p1, "sk-alice"), call(p1, "sk-bob"), call(p2, "sk-alice")] == ["HIT"] * 3
        assert (len(fake.received), len(other.received)) == (2, 1)


def test_persists_across_restart_and_serves_hits_with_the_upstream_down(
    start_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    cache = tmp_path / "shared-cache.sqlite"
    with FakeProvider() as fake:
        first = start_proxy("--mode", f"reverse:{fake.url}", cache=cache)
        original = chat_raw(first, CACHE).parse().choices[0].message.content
        first.stop()
        dead = fake.url
    second = start_proxy("--mode", f"reverse:{dead}", cache=cache)  # nothing listens there now
    hit = chat_raw(second, CACHE)
    assert hit.headers["helicone-cache"] == "HIT"
    assert hit.parse().choices[0].message.content == original
    with pytest.raises(openai.APIStatusError):  # a miss does need the (dead) upstream
        chat_raw(second, {**CACHE, "Helicone-Cache-Seed": "other"})


def test_only_2xx_responses_are_saved(gateway: Proxy, fake: FakeProvider) -> None:
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            chat_raw(gateway, {**CACHE, "x-fake-status": "500"})
    assert len(fake.received) == 2


def test_save_only_then_read_only(gateway: Proxy, fake: FakeProvider) -> None:
    r = chat_raw(gateway, {"Helicone-Cache-Save": "true"})
    assert "helicone-cache" not in r.headers  # no read was asked for
    assert chat_raw(gateway, {"Helicone-Cache-Read": "true"}).headers["helicone-cache"] == "HIT"
    assert len(fake.received) == 1


def test_rule_turns_the_cache_on_and_hot_reload(
    fake: FakeProvider, start_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    proxy = start_proxy("--mode", f"reverse:{fake.url}", "--set", f"llmtap_rules={rules}")
    assert "helicone-cache" not in chat_raw(proxy, {}).headers
    rules.write_text(
        "rules:\n  - name: cache-mini\n    match: {model: 'gpt-4o-mini*', path: /v1/chat/completions}\n"
        "    cache: {ttl: 1h, seed: v1}\n"
    )
    deadline = time.monotonic() + 10
    while "helicone-cache" not in chat_raw(proxy, {}).headers:
        assert time.monotonic() < deadline, "the rule was not picked up"
        time.sleep(0.2)
    assert chat_raw(proxy, {}).headers["helicone-cache"] == "HIT"
    assert "helicone-cache" not in chat_raw(proxy, {}, model="gpt-4o").headers  # the rule does not match
    assert chat_raw(proxy, {"Helicone-Cache-Enabled": "false"}).headers.get("helicone-cache") is None
    rules.write_text("rules:\n  - name: broken\n    match: {}\n    cache: {ttl: soon}\n")
    deadline = time.monotonic() + 10
    while "keeping the previous rules" not in proxy.log():
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.2)
    assert "rules[0].cache.ttl: expected a duration like '1h', got 'soon'" in proxy.log()
    assert chat_raw(proxy, {}).headers["helicone-cache"] == "HIT"  # the previous rules still apply


def test_cache_stats_and_clear_by_seed(gateway: Proxy) -> None:
    chat_raw(gateway, {**CACHE, "Helicone-Cache-Seed": "a"})
    chat_raw(gateway, {**CACHE, "Helicone-Cache-Seed": "b"})
    wait_entries(gateway, 2)  # `llmtap cache` reads the file: wait for the writer to save them
    cli = [sys.executable, "-m", "llmtap.cli", "cache"]
    env = {"PYTHONPATH": str(ROOT / "addon"), "PATH": "/usr/bin:/bin"}
    stats = subprocess.run(
        [*cli, "stats", "--cache", str(gateway.cache)], capture_output=True, text=True, env=env
    )
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.splitlines()[2].split()[0] == "2"
    clear = subprocess.run(
        [*cli, "clear", "--seed", "a", "--cache", str(gateway.cache)], capture_output=True, text=True, env=env
    )
    assert clear.stdout.strip() == "deleted 1 cached responses with seed 'a'"
    assert chat_raw(gateway, {**CACHE, "Helicone-Cache-Seed": "a"}).headers["helicone-cache"] == "MISS"
    assert chat_raw(gateway, {**CACHE, "Helicone-Cache-Seed": "b"}).headers["helicone-cache"] == "HIT"


def test_back_to_back_identical_calls_json_and_sse_openai_and_anthropic(
    gateway: Proxy, fake: FakeProvider
) -> None:
    """Each pair is sent as a loop would, the second the moment the first returned."""
    oai = client(gateway)
    claude = Anthropic(base_url=gateway.url, api_key="sk-ant", max_retries=0)
    headers = {**CACHE, "x-fake-usage": json.dumps({"input": 1500, "cached": 1024, "output": 40})}

    def openai_json() -> tuple[str, str]:
        raw = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSGS,
                                                            extra_headers=headers)  # fmt: skip
        return raw.headers["helicone-cache"], raw.parse().choices[0].message.content or ""

    def openai_sse() -> tuple[str, str]:
        raw = oai.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MSGS, stream=True, extra_headers=headers
        )
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        return raw.headers["helicone-cache"], text

    def anthropic_json() -> tuple[str, str]:
        raw = claude.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=32,
                                                       messages=MSGS, extra_headers=headers)  # fmt: skip
        return raw.headers["helicone-cache"], raw.parse().content[0].text

    def anthropic_sse() -> tuple[str, str]:
        with claude.messages.with_streaming_response.create(
            model="claude-haiku-4-5", max_tokens=32, messages=MSGS, stream=True, extra_headers=headers
        ) as resp:
            body = resp.read()
            return resp.headers["helicone-cache"], body.decode()

    for n, ask in enumerate((openai_json, openai_sse, anthropic_json, anthropic_sse), start=1):
        status, first = ask()
        assert status == "MISS"
        assert ask() == ("HIT", first), ask.__name__
        assert len(fake.received) == n, f"{ask.__name__}: the second call reached the provider"
    rows = gateway.rows()
    assert [r["cache_status"] for r in rows] == ["MISS", "HIT"] * 4
    for miss, hit in zip(rows[::2], rows[1::2], strict=True):
        assert hit["cache_reference_id"] == miss["request_id"]
        assert (hit["input_tokens"], hit["cache_read_tokens"], hit["output_tokens"]) == (
            miss["input_tokens"], miss["cache_read_tokens"], miss["output_tokens"],
        )  # fmt: skip
        assert hit["input_tokens"] == 1500 and hit["output_tokens"] == 40
        assert hit["cost_usd"] == Decimal(0) and hit["cost_saved_usd"] == miss["cost_usd"]
        model, provider = (
            ("claude-haiku-4-5", "anthropic") if miss["api"] == "anthropic" else ("gpt-4o-mini", "openai")
        )
        calc = genai_prices.calc_price(
            Usage(input_tokens=1500, cache_read_tokens=1024, output_tokens=40), model, provider_id=provider,
            genai_request_timestamp=miss["created_at"],
        )  # fmt: skip
        assert miss["cost_usd"] == calc.total_price.quantize(Decimal("0.000000001"))
