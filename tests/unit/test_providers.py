from __future__ import annotations

import pytest

from llmtap.wire.providers import (
    KNOWN_HOSTS,
    Provider,
    api_for_path,
    detect,
    endpoint,
    needs_usage_injection,
    path_model,
    wants_stream,
)

VLLM = Provider("vllm", "openai", None, stream_usage=False)
CORP = Provider("corp", "anthropic", "anthropic")
EXTRA = {"localhost:8000": VLLM, "llm.corp.example": CORP}

CHAT = "/v1/chat/completions"
GEMINI = "/v1beta/models/gemini-1.5-flash:generateContent"


@pytest.mark.parametrize("host", sorted(KNOWN_HOSTS))
def test_every_known_host(host: str) -> None:
    assert detect(host, 443, CHAT, {}, reverse=False) is KNOWN_HOSTS[host]
    assert detect(host.upper(), 443, "/anything", {}, reverse=True) is KNOWN_HOSTS[host]


OPENAI = Provider("openai", "openai", "openai")
ANTHROPIC = Provider("anthropic", "anthropic", "anthropic")
GOOGLE = Provider("google", "gemini", "google")


def inferred(p: Provider) -> Provider:
    return Provider(p.name, p.api, p.price_id, inferred=True)


@pytest.mark.parametrize(
    "host, port, path, extra, reverse, expected",
    [
        # the three wire formats
        ("api.openai.com", 443, CHAT, {}, False, OPENAI),
        ("api.anthropic.com", 443, "/v1/messages", {}, False, ANTHROPIC),
        ("generativelanguage.googleapis.com", 443, GEMINI, {}, False, GOOGLE),
        # OpenAI-compatible providers priced as themselves
        ("openrouter.ai", 443, "/api/v1/chat/completions", {}, False, KNOWN_HOSTS["openrouter.ai"]),
        ("api.mistral.ai", 443, CHAT, {}, False, Provider("mistral", "openai", "mistral", False, False)),
        # Azure by suffix
        ("myres.openai.azure.com", 443, "/openai/deployments/d/chat/completions", {}, False,
         Provider("azure", "openai", "azure")),
        ("openai.azure.com.evil.example", 443, CHAT, {}, False, None),
        # rules.yaml extras: host:port first, then host
        ("localhost", 8000, CHAT, EXTRA, False, VLLM),
        ("localhost", 8001, CHAT, EXTRA, False, None),
        ("LLM.corp.example", 443, "/v1/messages", EXTRA, False, CORP),
        # reverse mode: an unlisted host is recognised by its path, labelled by wire format
        ("gateway.internal", 8080, CHAT, {}, True, inferred(OPENAI)),
        ("gateway.internal", 8080, "/v1/messages", {}, True, inferred(ANTHROPIC)),
        ("gateway.internal", 8080, GEMINI, {}, True, inferred(GOOGLE)),
        ("gateway.internal", 8080, "/v1/embeddings?x=1", {}, True, inferred(OPENAI)),
        ("gateway.internal", 8080, "/healthz", {}, True, None),
        # not reverse: an unknown host is never ours, whatever its path
        ("gateway.internal", 8080, CHAT, {}, False, None),
        ("example.com", 443, "/", {}, False, None),
    ],
)  # fmt: skip
def test_detect(
    host: str, port: int, path: str, extra: dict[str, Provider], reverse: bool, expected: Provider | None
) -> None:
    assert detect(host, port, path, extra, reverse) == expected


@pytest.mark.parametrize(
    "api, path, expected",
    [
        # OpenAI
        ("openai", "/v1/chat/completions", "chat"),
        ("openai", "/openai/deployments/gpt4o/chat/completions?api-version=2024-06-01", "chat"),
        ("openai", "/v1/completions", "completions"),
        ("openai", "/v1/responses", "responses"),
        ("openai", "/v1/responses/", "responses"),
        ("openai", "/v1/embeddings", "embeddings"),
        ("openai", "/v1/models", None),
        ("openai", "/v1/responses/resp_123", None),
        ("openai", "/v1/messages", None),
        # Anthropic
        ("anthropic", "/v1/messages", "messages"),
        ("anthropic", "/v1/messages?beta=true", "messages"),
        ("anthropic", "/v1/messages/count_tokens", None),
        ("anthropic", "/v1/messages/batches", None),
        # Gemini
        ("gemini", GEMINI, "generate"),
        ("gemini", "/v1beta/models/gemini-1.5-flash:streamGenerateContent?alt=sse&key=k", "stream_generate"),
        ("gemini", "/v1beta/models/text-embedding-004:embedContent", None),
        ("gemini", "/v1beta/models", None),
        # unknown wire format
        ("grpc", "/v1/chat/completions", None),
    ],
)
def test_endpoint(api: str, path: str, expected: str | None) -> None:
    assert endpoint(api, path) == expected


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/v1/chat/completions", "openai"),
        ("/v1/messages", "anthropic"),
        (GEMINI, "gemini"),
        ("/v1/models", None),
    ],
)
def test_api_for_path(path: str, expected: str | None) -> None:
    assert api_for_path(path) == expected


@pytest.mark.parametrize(
    "api, kind, body, expected",
    [
        # OpenAI and Anthropic: the body's stream flag
        ("openai", "chat", b'{"model":"gpt-4o","stream":true}', True),
        ("openai", "chat", b'{"model":"gpt-4o", "stream" : true}', True),
        ("openai", "chat", b'{"model":"gpt-4o","stream":false}', False),
        ("openai", "chat", b'{"model":"gpt-4o"}', False),
        ("anthropic", "messages", b'{"stream":true,"max_tokens":10}', True),
        # a stream flag quoted inside a message is not the stream flag
        ("openai", "chat", b'{"messages":[{"content":"{\\"stream\\":true}"}]}', False),
        # Gemini: the endpoint decides
        ("gemini", "stream_generate", b'{"contents":[]}', True),
        ("gemini", "generate", b'{"stream":true}', False),
    ],
)
def test_wants_stream(api: str, kind: str, body: bytes, expected: bool) -> None:
    assert wants_stream(api, kind, body) is expected


@pytest.mark.parametrize(
    "api, kind, body, expected",
    [
        # OpenAI chat/completions streams without include_usage
        ("openai", "chat", b'{"stream":true}', True),
        ("openai", "completions", b'{"stream":true}', True),
        ("openai", "chat", b'{"stream":true,"stream_options":{"include_usage":false}}', True),
        # already asked for
        ("openai", "chat", b'{"stream":true,"stream_options":{"include_usage":true}}', False),
        ("openai", "chat", b'{"stream":true,"stream_options":{"include_usage": true}}', False),
        # the Responses API and other wire formats always report usage
        ("openai", "responses", b'{"stream":true}', False),
        ("openai", "embeddings", b"{}", False),
        ("anthropic", "messages", b'{"stream":true}', False),
        ("gemini", "stream_generate", b"{}", False),
    ],
)
def test_needs_usage_injection(api: str, kind: str, body: bytes, expected: bool) -> None:
    assert needs_usage_injection(api, kind, body) is expected


@pytest.mark.parametrize(
    "api, path, expected",
    [
        # Gemini: models/<m>:method
        ("gemini", GEMINI, "gemini-1.5-flash"),
        (
            "gemini",
            "/v1beta/models/gemini-2.0-flash-001:streamGenerateContent?alt=sse",
            "gemini-2.0-flash-001",
        ),
        ("gemini", "/v1beta/models", None),
        # Azure deployments
        ("openai", "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-06-01", "gpt4o-prod"),
        ("openai", "/openai/deployments//chat/completions", None),
        # no model in the URL
        ("openai", "/v1/chat/completions", None),
        ("anthropic", "/v1/messages", None),
    ],
)
def test_path_model(api: str, path: str, expected: str | None) -> None:
    assert path_model(api, path) == expected
