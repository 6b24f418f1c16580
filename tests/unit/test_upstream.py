"""llmtap's own HTTP client against a real local server (the fake provider) and dead ports."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmtap.proxy import upstream
from llmtap.proxy.upstream import Reply
from tests.fakeprovider import FakeProvider

from . import samples

TLS = upstream.tls_context(False, None)
CHAT = samples.dumps(samples.CHAT_REQUEST)
JSON_TYPE = ("Content-Type", "application/json")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as fp:
        yield fp


@pytest.fixture
def provider(fake: FakeProvider) -> FakeProvider:
    fake.clear()
    return fake


@pytest.fixture
def dead_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) but never answers."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def send(url: str, headers: list[tuple[str, str]], body: bytes = CHAT, timeout: float = 5.0) -> Reply:
    return asyncio.run(upstream.send("POST", url, headers, body, TLS, timeout))


def test_send_returns_status_headers_and_body(provider: FakeProvider) -> None:
    reply = send(f"{provider.url}/v1/chat/completions", [JSON_TYPE, ("x-fake-reply", "Hi there")])
    assert (reply.status, reply.error) == (200, None)
    assert reply.header_map()["content-type"] == "application/json"
    doc = json.loads(reply.body)
    assert doc["object"] == "chat.completion"
    assert doc["choices"][0]["message"]["content"] == "Hi there"
    assert reply.latency_ms > 0


def test_the_request_arrives_as_given(provider: FakeProvider) -> None:
    headers = [
        JSON_TYPE,
        ("Authorization", "Bearer sk-1"),
        ("X-Title", "docs"),
        ("Accept", "application/json"),
    ]
    send(f"{provider.url}/v1/chat/completions?api-version=2024-10-21", headers)
    [got] = provider.received
    assert (got.method, got.path, got.body) == ("POST", "/v1/chat/completions?api-version=2024-10-21", CHAT)
    assert got.headers == {
        "host": f"127.0.0.1:{provider.port}",
        "content-type": "application/json",
        "authorization": "Bearer sk-1",
        "x-title": "docs",
        "accept": "application/json",
        "content-length": str(len(CHAT)),
    }, "nothing added (no Accept-Encoding), nothing lost"


def test_hop_by_hop_request_headers_are_not_forwarded(provider: FakeProvider) -> None:
    hop = [
        ("Host", "api.openai.com"),
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic cHJveHk6cw=="),
        ("Proxy-Authenticate", "Basic"),
        ("TE", "trailers"),
        ("Trailer", "x-checksum"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "websocket"),
        ("Content-Length", "999"),
    ]
    reply = send(f"{provider.url}/v1/chat/completions", [JSON_TYPE, *hop])
    assert reply.status == 200
    [got] = provider.received
    assert got.body == CHAT
    assert got.headers["host"] == f"127.0.0.1:{provider.port}", "Host follows the URL"
    assert got.headers["content-length"] == str(len(CHAT)), "recomputed from the body"
    assert set(got.headers) == {"host", "content-type", "content-length"}


def test_hop_by_hop_response_headers_are_dropped(provider: FakeProvider) -> None:
    body = samples.dumps({**samples.STREAM_REQUEST, "stream_options": {"include_usage": True}})
    reply = send(f"{provider.url}/v1/chat/completions", [JSON_TYPE, ("x-fake-reply", "a b")], body)
    names = {k.lower() for k, _ in reply.headers}
    assert "transfer-encoding" not in names and "content-length" not in names
    assert reply.header_map()["content-type"] == "text/event-stream"
    assert reply.body.startswith(b"data: {") and reply.body.endswith(b"data: [DONE]\n\n"), "de-chunked"
    assert b'"usage":{"prompt_tokens"' in reply.body

    plain = send(f"{provider.url}/v1/chat/completions", [JSON_TYPE])
    assert "content-length" not in {k.lower() for k, _ in plain.headers}
    assert plain.body and json.loads(plain.body)["object"] == "chat.completion"


@pytest.mark.parametrize("status", [400, 429, 500, 503])
def test_an_error_status_is_a_reply(provider: FakeProvider, status: int) -> None:
    extra = [("x-fake-status", str(status)), ("x-fake-retry-after", "3")]
    reply = send(f"{provider.url}/v1/chat/completions", [JSON_TYPE, *extra])
    assert (reply.status, reply.error) == (status, None)
    assert reply.header_map()["retry-after"] == "3"
    assert json.loads(reply.body)["error"]["message"].startswith(f"fake error {status}")


def test_header_map_lowercases_names() -> None:
    reply = Reply(200, [("Content-Type", "a"), ("Retry-After", "1")])
    assert reply.header_map() == {"content-type": "a", "retry-after": "1"}


def test_a_connection_reset_is_no_response(provider: FakeProvider) -> None:
    reply = send(f"{provider.url}/v1/chat/completions", [("x-fake-fail", "reset"), ("x-fake-key", "reset-1")])
    assert reply.status is None
    assert (reply.headers, reply.body) == ([], b"")
    assert reply.error is not None
    assert reply.error.startswith(("ConnectionResetError: ", "RemoteDisconnected: ")), reply.error
    assert len(provider.received) == 1, "the request did arrive"


def test_a_refused_port_is_no_response(dead_port: int) -> None:
    reply = send(f"http://127.0.0.1:{dead_port}/v1/chat/completions", [JSON_TYPE])
    assert reply.status is None
    assert reply.error is not None and reply.error.startswith("ConnectionRefusedError: "), reply.error
    assert reply.latency_ms >= 0


def test_a_timeout_is_no_response(silent: int) -> None:
    reply = send(f"http://127.0.0.1:{silent}/v1/chat/completions", [JSON_TYPE], timeout=0.2)
    assert reply.status is None
    assert reply.error is not None and reply.error.startswith("TimeoutError: "), reply.error


@pytest.mark.parametrize("name", ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"])
def test_environment_proxies_are_never_used(
    provider: FakeProvider, dead_port: int, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, f"http://127.0.0.1:{dead_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    reply = send(f"{provider.url}/v1/chat/completions", [JSON_TYPE])
    assert (reply.status, reply.error) == (200, None)
    [got] = provider.received
    assert got.path == "/v1/chat/completions", "origin-form, not a proxy's absolute URL"


def test_waiting_on_the_network_does_not_block_the_event_loop(silent: int) -> None:
    order: list[str] = []

    async def call() -> None:
        reply = await upstream.send("POST", f"http://127.0.0.1:{silent}/", [], b"", TLS, 0.3)
        order.append(f"send {reply.status}")

    async def other() -> None:
        await asyncio.sleep(0)
        order.append("other")

    async def main() -> None:
        await asyncio.gather(call(), other())

    asyncio.run(main())
    assert order == ["other", "send None"]


def test_tls_context() -> None:
    strict = upstream.tls_context(False, None)
    assert (strict.verify_mode, strict.check_hostname) == (ssl.CERT_REQUIRED, True)
    insecure = upstream.tls_context(True, None)
    assert (insecure.verify_mode, insecure.check_hostname) == (ssl.CERT_NONE, False)


def test_tls_context_with_a_missing_ca_file_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        upstream.tls_context(False, str(tmp_path / "missing-ca.pem"))
