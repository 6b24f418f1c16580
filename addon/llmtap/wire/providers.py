"""Which requests are LLM calls, and in which wire format.

A request is an LLM call when its host is a known provider (the table below), a provider added in
rules.yaml, or, in reverse (gateway) mode only, when its path is an LLM endpoint: there the user
pointed llmtap at an LLM API on purpose, so an unlisted host (a corporate gateway, a local stand-in)
is still recognised by its path and labelled with its wire format. Everything else is not ours and
passes through untouched.

`api` is the wire format (`openai`, `anthropic`, `gemini`); `price_id` is the genai-prices
provider id used for cost, or None when llmtap must not guess a price (a self-hosted model).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

APIS = ("openai", "anthropic", "gemini")


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    api: str
    price_id: str | None
    inferred: bool = False  # recognised by path only (reverse mode, unlisted host)
    stream_usage: bool = True  # llmtap adds `stream_options.include_usage` when a stream lacks it


_OPENAI = Provider("openai", "openai", "openai")
_ANTHROPIC = Provider("anthropic", "anthropic", "anthropic")
_GEMINI = Provider("google", "gemini", "google")

# `stream_usage=False`: the host reports a stream's usage without being asked (fakehosts.py cites
# each host's reference), so llmtap leaves the request as the client made it; Mistral would even
# refuse `stream_options` with a 422. OpenAI, Azure and x.ai send it only on `include_usage`.
KNOWN_HOSTS: dict[str, Provider] = {
    "api.openai.com": _OPENAI,
    "api.anthropic.com": _ANTHROPIC,
    "generativelanguage.googleapis.com": _GEMINI,
    "api.groq.com": Provider("groq", "openai", "groq", stream_usage=False),  # in x_groq.usage
    "api.together.xyz": Provider("together", "openai", "together", stream_usage=False),
    "api.mistral.ai": Provider("mistral", "openai", "mistral", stream_usage=False),
    "api.deepseek.com": Provider("deepseek", "openai", "deepseek", stream_usage=False),
    "openrouter.ai": Provider("openrouter", "openai", "openrouter", stream_usage=False),
    "api.x.ai": Provider("x-ai", "openai", "x-ai"),
    "api.fireworks.ai": Provider("fireworks", "openai", "fireworks", stream_usage=False),
}
KNOWN_SUFFIXES: tuple[tuple[str, Provider], ...] = (
    (".openai.azure.com", Provider("azure", "openai", "azure")),
)
_BY_API = {"openai": _OPENAI, "anthropic": _ANTHROPIC, "gemini": _GEMINI}

_GEMINI_MODEL = re.compile(r"/models/([^/:]+):")


def detect(host: str, port: int, path: str, extra: dict[str, Provider], reverse: bool) -> Provider | None:
    """The provider of a request, or None for traffic llmtap leaves alone."""
    host = host.lower()
    found = extra.get(f"{host}:{port}") or extra.get(host) or KNOWN_HOSTS.get(host)
    if found is None:
        for suffix, provider in KNOWN_SUFFIXES:
            if host.endswith(suffix):
                found = provider
                break
    if found is not None:
        return found
    if reverse:
        api = api_for_path(path)
        if api is not None:
            base = _BY_API[api]
            return Provider(base.name, api, base.price_id, inferred=True)
    return None


def api_for_path(path: str) -> str | None:
    """Guess the wire format from an LLM endpoint path (reverse mode, unlisted hosts)."""
    for api in APIS:
        if endpoint(api, path) is not None:
            return api
    return None


def endpoint(api: str, path: str) -> str | None:
    """The kind of call (`chat`, `responses`, `messages`, `generate`...), None if not an LLM call."""
    path = path.split("?", 1)[0].rstrip("/")
    if api == "openai":
        for suffix, name in (
            ("/chat/completions", "chat"),
            ("/responses", "responses"),
            ("/completions", "completions"),
            ("/embeddings", "embeddings"),
        ):
            if path.endswith(suffix):
                return name
    elif api == "anthropic":
        if path.endswith("/v1/messages"):
            return "messages"
    elif api == "gemini":
        if path.endswith(":generateContent"):
            return "generate"
        if path.endswith(":streamGenerateContent"):
            return "stream_generate"
    return None


def path_model(api: str, path: str) -> str | None:
    """Models named in the URL: Gemini `models/<m>:...`, Azure `deployments/<d>/...`."""
    if api == "gemini":
        m = _GEMINI_MODEL.search(path)
        return m.group(1) if m else None
    if "/deployments/" in path:
        return path.split("/deployments/", 1)[1].split("/", 1)[0] or None
    return None


_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
_INCLUDE_USAGE = re.compile(rb'"include_usage"\s*:\s*true')


def wants_stream(api: str, kind: str | None, body: bytes) -> bool:
    if api == "gemini":
        return kind == "stream_generate"
    return _STREAM_TRUE.search(body) is not None


def needs_usage_injection(api: str, kind: str | None, body: bytes) -> bool:
    """An OpenAI-style stream without `stream_options.include_usage` reports no tokens at all."""
    return api == "openai" and kind in ("chat", "completions") and _INCLUDE_USAGE.search(body) is None
