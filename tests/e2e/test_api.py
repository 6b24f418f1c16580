"""The local API over HTTP with the proxy running: feedback, scores, properties, async logging."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from genai_prices import Usage
from openai import OpenAI

from tests.e2e.conftest import Proxy
from tests.fakeprovider import FakeProvider

MSGS = [{"role": "user", "content": "Say hello"}]


def call(url: str, method: str = "POST", body: Any = None, raw: bytes | None = None, headers=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def request_id(proxy: Proxy, **headers: str) -> str:
    raw = OpenAI(
        base_url=f"{proxy.url}/v1", api_key="sk-x", max_retries=0
    ).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSGS, extra_headers=headers)
    return raw.headers["helicone-id"]


def test_feedback_scores_and_properties(gateway: Proxy) -> None:
    rid = request_id(gateway, **{"Helicone-Property-Feature": "search"})
    base = f"{gateway.api}/v1/request/{rid}"
    assert call(f"{base}/feedback", body={"rating": True})[0] == 201
    status, body, _ = call(f"{base}/score", body={"scores": {"accuracy": 92, "is_safe": True}})
    assert status == 201 and body["scores"] == {"accuracy": 92, "is_safe": 1}
    assert call(f"{base}/property", "PUT", {"key": "Reviewed", "value": "yes"})[0] == 200
    # the clear errors
    assert call(f"{base}/score", body={"scores": {"accuracy": 0.5}})[:2] == (
        400,
        {"error": {"message": "scores.accuracy: expected an integer or a boolean, got 0.5", "status": 400}},
    )
    assert call(f"{gateway.api}/v1/request/not-a-real-id/feedback", body={"rating": True})[0] == 404
    assert call(f"{base}/feedback", body={"rating": "yes"})[0] == 400
    assert call(f"{base}/feedback", raw=b"{not json")[0] == 400
    assert call(f"{gateway.api}/v1/nothing/here", "GET")[0] == 404
    assert call(f"{base}/feedback", raw=b"x" * (10 * 1024 * 1024 + 1))[0] == 413
    gateway.stop()
    import duckdb

    with duckdb.connect(str(gateway.db), read_only=True) as conn:
        assert conn.execute("SELECT rating FROM feedback WHERE request_id = ?", [rid]).fetchall() == [(True,)]
        assert sorted(
            conn.execute("SELECT name, value FROM scores WHERE request_id = ?", [rid]).fetchall()
        ) == [("accuracy", 92), ("is_safe", 1)]
        props = conn.execute("SELECT properties FROM requests WHERE request_id = ?", [rid]).fetchone()[0]
    assert json.loads(props) == {"feature": "search", "reviewed": "yes"}


def test_async_log_lands_in_the_same_table(gateway: Proxy) -> None:
    body = {
        "providerRequest": {
            "url": "https://api.openai.com/v1/chat/completions",
            "json": {"model": "gpt-4o-mini", "messages": MSGS},
            "meta": {"Helicone-User-Id": "carol", "Helicone-Property-App": "batch",
                     "Authorization": "Bearer sk-SECRET"},
        },
        "providerResponse": {
            "json": {"id": "x", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [],
                     "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}},
            "status": 200, "headers": {},
        },
        "timing": {"startTime": {"seconds": 1_760_000_000, "milliseconds": 0},
                   "endTime": {"seconds": 1_760_000_001, "milliseconds": 500}},
    }  # fmt: skip
    status, reply, headers = call(f"{gateway.api}/custom/v1/log", body=body)
    assert status == 200 and headers["helicone-id"] == reply["id"]
    bad = dict(body, timing={"startTime": {"seconds": 2}, "endTime": {"seconds": 1}})
    assert call(f"{gateway.api}/custom/v1/log", body=bad)[0] == 400
    [row] = gateway.rows()
    assert row["source"] == "async" and row["request_id"] == reply["id"]
    assert (row["provider"], row["model"], row["input_tokens"], row["output_tokens"]) == (
        "openai",
        "gpt-4o-mini",
        100,
        20,
    )
    assert row["cost_usd"] > 0 and row["latency_ms"] == 1500
    assert row["user_id"] == "carol" and json.loads(row["properties"]) == {"app": "batch"}
    assert "sk-SECRET" not in json.dumps(row, default=str)


def test_python_helper_logs_sdk_objects(gateway: Proxy, fake: FakeProvider) -> None:
    import llmtap

    client = OpenAI(base_url=f"{fake.url}/v1", api_key="sk-x", max_retries=0)  # straight to the provider
    request = {"model": "gpt-4o-mini", "messages": MSGS}
    started = time.time()
    response = client.chat.completions.create(**request)
    rid = llmtap.log(request, response, api=gateway.api, user="dave", properties={"Step": "1"}, start=started)
    [row] = gateway.rows()
    assert row["request_id"] == rid and row["source"] == "async" and row["user_id"] == "dave"
    assert (row["input_tokens"], row["output_tokens"]) == (
        response.usage.prompt_tokens, response.usage.completion_tokens,
    )  # fmt: skip
    calc = genai_prices.calc_price(
        Usage(input_tokens=response.usage.prompt_tokens, output_tokens=response.usage.completion_tokens),
        "gpt-4o-mini", provider_id="openai", genai_request_timestamp=row["created_at"],
    )  # fmt: skip
    assert row["cost_usd"] == calc.total_price.quantize(Decimal("0.000000001"))


def test_off_loopback_needs_a_key(fake: FakeProvider, start_proxy: Callable[..., Proxy]) -> None:
    with pytest.raises(RuntimeError, match="llmtap_api: 0.0.0.0:0 is not loopback; set llmtap_api_key"):
        start_proxy("--mode", f"reverse:{fake.url}", "--set", "llmtap_api=0.0.0.0:0")
    proxy = start_proxy("--mode", f"reverse:{fake.url}", "--set", "llmtap_api_key=k1")
    assert call(f"{proxy.api}/v1/health", "GET")[0] == 401
    assert call(f"{proxy.api}/v1/health", "GET", headers={"Authorization": "Bearer k1"})[0] == 200


def test_feedback_and_score_commands_with_and_without_the_proxy(gateway: Proxy, tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    import duckdb

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "addon")}

    def llmtap(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "llmtap.cli", *args], capture_output=True, text=True, env=env
        )

    rid = request_id(gateway)
    out = llmtap("feedback", rid, "--rating", "up", "--api", gateway.api, "--db", str(gateway.db))
    assert out.returncode == 0 and "through the proxy" in out.stdout, out.stderr
    out = llmtap("score", rid, "accuracy=92", "is_safe=true", "--api", gateway.api)
    assert out.returncode == 0, out.stderr
    bad = llmtap("score", rid, "accuracy=0.5", "--api", gateway.api)
    assert bad.returncode == 1 and "scores are integers or true/false" in bad.stderr
    gateway.stop()
    offline = llmtap("feedback", rid, "--rating", "down", "--api", "127.0.0.1:9", "--db", str(gateway.db))
    assert offline.returncode == 0 and "no proxy answered" in offline.stdout, offline.stderr
    missing = llmtap("feedback", "nope", "--rating", "down", "--api", "127.0.0.1:9", "--db", str(gateway.db))
    assert missing.returncode == 1 and "no request with id 'nope'" in missing.stderr
    with duckdb.connect(str(gateway.db), read_only=True) as conn:
        assert conn.execute("SELECT rating FROM feedback ORDER BY created_at").fetchall() == [
            (True,),
            (False,),
        ]
        assert sorted(conn.execute("SELECT name, value FROM scores").fetchall()) == [
            ("accuracy", 92),
            ("is_safe", 1),
        ]
    report = llmtap("report", "cost", "--by", "rating", "--db", str(gateway.db), "--format", "json")
    assert report.returncode == 0, report.stderr
    assert [r["rating"] for r in json.loads(report.stdout)] == ["down"]  # the latest rating counts
