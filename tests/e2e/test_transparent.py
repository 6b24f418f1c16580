"""Transparent mode: the app only sets HTTPS_PROXY and trusts mitmproxy's CA; no code change.

The SDKs keep their default base URLs (api.openai.com, api.anthropic.com). mitmproxy's
`--map-remote` sends the intercepted calls to the local fake provider, so the whole HTTPS path
(CONNECT, TLS with mitmproxy's CA, provider detection by the real host) runs offline.
"""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from anthropic import Anthropic
from openai import OpenAI

from tests.e2e.conftest import Proxy
from tests.fakeprovider import FakeProvider

MSGS = [{"role": "user", "content": "Say hello"}]
REPLY = "Hello from the fake provider!"


@pytest.fixture
def transparent(fake: FakeProvider, start_proxy: Callable[..., Proxy]) -> Proxy:
    return start_proxy(
        "--map-remote",
        rf"|https://api\.openai\.com/|{fake.url}/",
        "--map-remote",
        rf"|https://api\.anthropic\.com/|{fake.url}/",
    )


def use_proxy(monkeypatch: pytest.MonkeyPatch, proxy: Proxy, ca: str) -> None:
    """What the user sets in the app's shell. Every CA variable is set: these machines preset them."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        monkeypatch.setenv(name, ca)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def test_sdks_work_unchanged_through_https_proxy(
    transparent: Proxy, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_proxy(monkeypatch, transparent, str(transparent.ca))
    client = OpenAI(api_key="sk-live-secret", max_retries=0)
    assert (
        client.chat.completions.create(model="gpt-4o-mini", messages=MSGS).choices[0].message.content == REPLY
    )
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True)
        if c.choices
    )
    assert text == REPLY
    claude = Anthropic(api_key="sk-ant-live", max_retries=0)
    assert (
        claude.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=MSGS).content[0].text
        == REPLY
    )
    with claude.messages.stream(model="claude-haiku-4-5", max_tokens=32, messages=MSGS) as s:
        assert s.get_final_message().content[0].text == REPLY
    rows = transparent.rows()
    assert [(r["provider"], r["host"], r["streamed"]) for r in rows] == [
        ("openai", "api.openai.com", False),
        ("openai", "api.openai.com", True),
        ("anthropic", "api.anthropic.com", False),
        ("anthropic", "api.anthropic.com", True),
    ]
    assert all(r["usage_source"] == "response" and r["cost_usd"] > 0 for r in rows)
    assert all(r["cost_note"] is None for r in rows), "known hosts are priced without a guess"
    assert len(fake.received) == 4


def test_without_the_ca_the_sdk_refuses_so_traffic_really_is_intercepted(
    transparent: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_proxy(monkeypatch, transparent, "/etc/ssl/certs/ca-certificates.crt")
    with pytest.raises(openai.APIConnectionError):
        OpenAI(api_key="sk-x", max_retries=0).chat.completions.create(model="gpt-4o-mini", messages=MSGS)
