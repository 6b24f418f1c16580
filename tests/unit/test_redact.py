from __future__ import annotations

import pytest

from llmtap.policy.redact import REDACTED, is_secret_header, redact_headers, redact_path


@pytest.mark.parametrize(
    "name",
    [
        # the fixed list
        "Authorization", "Proxy-Authorization", "x-api-key", "api-key", "x-goog-api-key",
        "Helicone-Auth", "Cookie", "Set-Cookie",
        # by shape: a provider's new key header, tokens, secrets
        "X-Foo-Api-Key", "X-Foo-ApiKey", "x_custom_api_key", "X-Amz-Security-Token", "X-Client-Secret",
        "X-Goog-Signature", "X-Aws-Credential", "X-Password",
    ],
)  # fmt: skip
def test_secret_headers(name: str) -> None:
    assert is_secret_header(name)
    assert redact_headers([(name, "sk-proj-abc123SECRET")]) == {name.lower(): REDACTED}


@pytest.mark.parametrize(
    "name",
    [
        # ordinary HTTP
        "Content-Type", "Accept", "User-Agent", "Host", "Content-Length", "Accept-Encoding",
        # provider and SDK headers that are not secrets
        "anthropic-version", "anthropic-beta", "OpenAI-Organization", "OpenAI-Project",
        "X-Stainless-Lang", "X-Stainless-Retry-Count",
        # Helicone metadata headers
        "Helicone-User-Id", "Helicone-Session-Id", "Helicone-Property-App",
    ],
)  # fmt: skip
def test_other_headers_are_kept(name: str) -> None:
    assert not is_secret_header(name)
    assert redact_headers([(name, "value-1")]) == {name.lower(): "value-1"}


def test_redact_headers_lowercases_and_joins_repeats() -> None:
    fields = [
        ("Authorization", "Bearer sk-1"),
        ("X-Tag", "a"),
        ("x-tag", "b"),
        ("Cookie", "session=1"),
        ("cookie", "other=2"),
    ]
    out = redact_headers(fields)
    assert out == {"authorization": REDACTED, "x-tag": "a, b", "cookie": f"{REDACTED}, {REDACTED}"}
    assert "sk-1" not in str(out) and "session" not in str(out)


@pytest.mark.parametrize(
    "path, expected",
    [
        # Gemini key in the query string
        (
            "/v1beta/models/gemini-1.5-flash:generateContent?key=AIzaSyD-SECRET",
            "/v1beta/models/gemini-1.5-flash:generateContent?key=[REDACTED]",
        ),
        (
            "/v1beta/models/gemini-1.5-flash:streamGenerateContent?alt=sse&key=AIzaSyD-SECRET",
            "/v1beta/models/gemini-1.5-flash:streamGenerateContent?alt=sse&key=[REDACTED]",
        ),
        ("/v1/chat?api_key=SECRET&x=1", "/v1/chat?api_key=[REDACTED]&x=1"),
        ("/v1/chat?API-KEY=SECRET", "/v1/chat?API-KEY=[REDACTED]"),
        ("/v1/x?access_token=SECRET&sig=SECRET2", "/v1/x?access_token=[REDACTED]&sig=[REDACTED]"),
        # a blank secret is still replaced
        ("/v1/x?key=", "/v1/x?key=[REDACTED]"),
        # nothing secret: the path comes back byte-identical
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/models?limit=10&after=gpt%2D4", "/v1/models?limit=10&after=gpt%2D4"),
        # 'monkey' is not 'key': only whole `key`, `sig`, `code` names
        ("/v1/x?monkey=banana", "/v1/x?monkey=banana"),
    ],
)
def test_redact_path(path: str, expected: str) -> None:
    assert redact_path(path) == expected
    assert "SECRET" not in redact_path(path)
