"""Every provider and host llmtap claims, through a real mitmdump, as apps call them.

Each documented response of tests/documented.py is replayed by the fake provider to the real SDK
(the openai SDK for every OpenAI-compatible host at its documented base URL, the anthropic SDK, and
httpx for Gemini), through llmtap in transparent mode: the client only sets HTTPS_PROXY and trusts
mitmproxy's CA; `--map-remote` sends each real host to the fake. JSON is gzip-compressed as the real
APIs send it to the SDKs; streams arrive split mid-event. Each row must carry the exact tokens and
the cost genai-prices gives for them (computed here), or NULL for a model genai-prices does not list.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest
import requests
from anthropic import Anthropic
from genai_prices import Usage
from openai import AzureOpenAI, OpenAI

from llmtap import proxyproc
from llmtap.storage import query
from tests.documented import ALL, AZURE_HOST, Documented
from tests.fakeprovider import FakeProvider
from tests.unit.test_documented import expected_cost

BASE_URLS = {  # each host's documented base URL for the openai SDK
    "api.openai.com": "https://api.openai.com/v1",
    "api.groq.com": "https://api.groq.com/openai/v1",
    "api.mistral.ai": "https://api.mistral.ai/v1",
    "api.deepseek.com": "https://api.deepseek.com",
    "openrouter.ai": "https://openrouter.ai/api/v1",
    "api.together.xyz": "https://api.together.xyz/v1",
    "api.fireworks.ai": "https://api.fireworks.ai/inference/v1",
    "api.x.ai": "https://api.x.ai/v1",
}
HOSTS = sorted({d.host for d in ALL})


class Tap:
    def __init__(self, proc: proxyproc.ProxyProcess, db: Path, fake: FakeProvider) -> None:
        self.proc, self.db, self.fake = proc, db, fake
        self.ca = str(db.parent / "work" / "conf" / "mitmproxy-ca-cert.pem")

    def row(self, request_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:  # rows reach the file within llmtap_flush_ms
            conn = query.connect(self.db, wait=10) if self.db.exists() else None
            if conn is not None:
                try:
                    cur = conn.execute("SELECT * FROM requests WHERE request_id = ?", [request_id])
                    found = cur.fetchone()
                    names = [c[0] for c in cur.description]
                finally:
                    conn.close()
                if found is not None:
                    return dict(zip(names, found, strict=True))
            assert time.monotonic() < deadline, f"no row for {request_id}:\n{self.proc.output()[-3000:]}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def tap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tap]:
    from tests.documented import REPLIES

    work = tmp_path_factory.mktemp("documented")
    with FakeProvider(replies=REPLIES) as fake:
        maps = [a for h in HOSTS for a in ("--map-remote", f"|https://{re.escape(h)}/|{fake.url}/_host/{h}/")]
        settings = {"llmtap_db": work / "llmtap.duckdb", "llmtap_cache": work / "cache.sqlite",
                    "llmtap_flush_ms": 200, "llmtap_api": ""}  # fmt: skip
        args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
        proc = proxyproc.start([*args, *maps], work / "work")
        try:
            yield Tap(proc, work / "llmtap.duckdb", fake)
        finally:
            proc.stop()


@pytest.fixture
def env(tap: Tap, monkeypatch: pytest.MonkeyPatch) -> Tap:
    """What the user sets in the app's shell (every CA variable: these machines preset them)."""
    monkeypatch.setenv("HTTPS_PROXY", tap.proc.url)
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, tap.ca)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return tap


def call(d: Documented) -> tuple[str, str]:
    """Make the documented call with the real client; its Helicone-Id and what the client read."""
    headers = {"x-fake-replay": d.name}
    request = dict(d.request)
    if d.host == "api.anthropic.com":
        raw: Any = Anthropic(api_key="sk-ant-test", max_retries=0).messages.with_raw_response.create(
            **request, extra_headers=headers
        )
        parsed = raw.parse()
        text = "".join(str(e.type) for e in parsed) if d.streamed else parsed.content[0].text
        return raw.headers["helicone-id"], text
    if d.host == "generativelanguage.googleapis.com":  # REST, as its docs' curl examples (requests)
        resp = requests.post(f"https://{d.host}{d.path}", json=request, timeout=30,
                             headers={**headers, "x-goog-api-key": "AIza-test"})  # fmt: skip
        resp.raise_for_status()
        return resp.headers["helicone-id"], resp.text
    if d.host == AZURE_HOST:
        client: Any = AzureOpenAI(
            azure_endpoint=f"https://{d.host}", api_version="2024-10-21", api_key="az-test", max_retries=0
        )
        request["model"] = "my-o1"
    else:
        client = OpenAI(base_url=BASE_URLS[d.host], api_key="sk-test", max_retries=0)
    endpoint = {"/chat/completions": client.chat.completions, "/responses": client.responses,
                "/completions": client.completions, "/embeddings": client.embeddings}  # fmt: skip
    resource = next(r for suffix, r in endpoint.items() if d.path.split("?")[0].endswith(suffix))
    raw = resource.with_raw_response.create(**request, extra_headers=headers)
    parsed = raw.parse()
    text = str([c.model_dump() for c in parsed]) if d.streamed else parsed.model_dump_json()
    return raw.headers["helicone-id"], text


@pytest.mark.parametrize("d", ALL, ids=[d.name for d in ALL])
def test_documented_response_gives_exact_tokens_and_cost(env: Tap, d: Documented) -> None:
    request_id, seen = call(d)
    assert env.fake.received[-1].path == f"/_host/{d.host}{d.path}", "the SDK called its real URL"
    assert seen  # the client read a well-formed answer (gzip decoded, stream reassembled)
    row = env.row(request_id)
    u = d.usage
    assert (row["host"], row["provider"], row["model"], row["usage_source"], row["streamed"]) == (
        d.host, d.provider, d.model, "response", d.streamed,
    )  # fmt: skip
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"],
            row["reasoning_tokens"]) == (u["input_tokens"], u["output_tokens"], u["cache_read_tokens"],
                                         u["cache_write_tokens"], u["output_reasoning_tokens"])  # fmt: skip
    created: datetime = row["created_at"]
    assert row["cost_usd"] == expected_cost(d, created), row["cost_note"]
    if d.reported_cost is not None:
        assert row["cost_note"] == f"reported by {d.provider}"
    elif d.priced:
        assert row["cost_note"] is None
    in_url = "my-o1" if d.host == AZURE_HOST else d.path.split("/models/")[-1].split(":")[0]
    assert row["requested_model"] == (d.request.get("model") or in_url)


# -- each compatible host's own dialect, from the fake provider's live answers --

NEUTRAL = {"input": 1500, "cached": 1024, "cache_write": 0, "output": 60, "reasoning": 20}
DIALECT_MODELS = {
    "api.openai.com": ("gpt-4o-mini", "openai"),
    "api.groq.com": ("llama-3.3-70b-versatile", "groq"),
    "api.mistral.ai": ("mistral-small-latest", "mistral"),
    "api.deepseek.com": ("deepseek-chat", "deepseek"),
    "openrouter.ai": ("openai/gpt-4o", "openrouter"),
    "api.together.xyz": ("meta-llama/Llama-3.3-70B-Instruct-Turbo", "together"),
    "api.fireworks.ai": ("accounts/fireworks/models/llama-v3p1-8b-instruct", "fireworks"),
    "api.x.ai": ("grok-3", "x-ai"),
    AZURE_HOST: ("gpt-4o-2024-08-06", "azure"),
}
NO_REASONING = {"mistral", "together", "fireworks"}  # their usage has no reasoning field
INJECTED = {"openai", "x-ai", "azure"}  # report stream usage only when include_usage is asked


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("host", list(DIALECT_MODELS))
def test_each_hosts_own_usage_shape(env: Tap, host: str, stream: bool) -> None:
    model, provider = DIALECT_MODELS[host]
    headers = {"x-fake-usage": json.dumps(NEUTRAL), "x-fake-model": model, "x-fake-cost": "0.0123"}
    if host == AZURE_HOST:
        client: Any = AzureOpenAI(
            azure_endpoint=f"https://{host}", api_version="2024-10-21", api_key="az-test", max_retries=0
        )
        name = "my-deployment"
    else:
        client, name = OpenAI(base_url=BASE_URLS[host], api_key="sk-test", max_retries=0), model
    raw = client.chat.completions.with_raw_response.create(
        model=name, messages=[{"role": "user", "content": "Say hello"}], stream=stream, extra_headers=headers
    )
    if stream:
        chunks = [c.model_dump() for c in raw.parse()]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        if provider in INJECTED:  # llmtap asked for the usage; the client, which did not, never sees it
            assert [c for c in chunks if c.get("usage")] == []
    else:
        text = raw.parse().choices[0].message.content
    assert text == "Hello from the fake provider!"
    sent = json.loads(env.fake.received[-1].body)
    assert ("stream_options" in sent) == (stream and provider in INJECTED), "only where the host needs it"
    row = env.row(raw.headers["helicone-id"])
    reasoning = 0 if provider in NO_REASONING else 20
    assert (row["provider"], row["model"], row["usage_source"]) == (provider, model, "response")
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (
        1500, 1024, 60, reasoning,
    )  # fmt: skip
    if provider == "openrouter":
        assert (row["cost_usd"], row["cost_note"]) == (Decimal("0.0123"), "reported by openrouter")
        return
    usage = Usage(input_tokens=1500, cache_read_tokens=1024, output_tokens=60)
    at = row["created_at"]
    calc = genai_prices.calc_price(usage, model, provider_id=provider, genai_request_timestamp=at)
    assert (row["cost_usd"], row["cost_note"]) == (calc.total_price.quantize(Decimal("0.000000001")), None)
