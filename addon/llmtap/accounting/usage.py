"""Tokens from a finished call: the provider's own usage first, an estimate second.

For each wire format this module finds the *usage document*: the JSON object that carries the
final usage (a non-streamed body; the last OpenAI chunk with `usage`, or Groq's `x_groq.usage`; the
Responses API `response.completed` payload; Anthropic's `message_start` message with
`message_delta` usage merged in; Gemini's last chunk with `usageMetadata`). genai-prices then reads
it with the extractor of the host's own provider (Groq's, DeepSeek's, OpenRouter's...), falling back
to the wire format's (OpenAI's chat shape), so the mapping to input / output / cache-read /
cache-write / reasoning tokens is the maintained one, with the genai-prices conventions: input
includes cached and cache-write tokens, output includes reasoning. Only the usage is read here:
whether genai-prices knows the *model* is pricing's business (pricing.py), so a new or private
model keeps its exact tokens. `hosts.py` adds what a host reports beyond genai-prices' mapping.

When no final usage exists (client abort, a server that ignored `include_usage`), tokens are
estimated from the request text and the generated text seen (estimate.py) and marked 'estimated'.
A stream cut short after reporting part of its usage (Anthropic's `message_start`, a Gemini chunk)
keeps those exact counts and estimates only the output: 'partial'.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

from genai_prices import Usage, data_snapshot
from genai_prices.types import Provider as PriceProvider

from llmtap.accounting import estimate, hosts
from llmtap.wire import sse

# Which genai-prices extractor reads each wire format when the host's own provider has none.
_EXTRACTOR = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}
_FLAVORS = {  # the genai-prices api_flavor names an OpenAI-style call's usage may be under
    "chat": ("chat", "default"),
    "completions": ("chat", "default"),
    "responses": ("responses",),
    "embeddings": ("embeddings",),
}
_GENERATES = frozenset({"chat", "completions", "responses", "messages", "generate", "stream_generate"})
_TEXT_KEYS = frozenset({"content", "text", "prompt", "input", "system", "instructions"})
_DEFAULT_TIERS = frozenset({"default", "auto", "standard", "on_demand"})


@dataclass(slots=True)
class Tokens:
    usage: Usage | None = None
    source: str | None = None  # 'response' | 'partial' | 'estimated'
    model: str | None = None
    provider_cost: Decimal | None = None
    note: str | None = None
    service_tier: str | None = None  # a tier other than the default that the response reports


@dataclass(slots=True)
class _Seen:
    doc: dict[str, Any] | None = None
    model: str | None = None
    text: list[str] | None = None
    complete: bool = False


def account(
    api: str,
    kind: str | None,
    streamed: bool,
    ok: bool,
    request: bytes,
    response: bytes,
    vendor: str | None = None,
) -> Tokens:
    """Usage for one call from its request body and (decoded) response body.

    `ok` is a 2xx status; `vendor` the genai-prices provider id of the host (None: only the wire
    format is known). Error responses carry no usage and get no estimate; a stream that started and
    ended without its final usage (abort, cut connection) does get one.
    """
    seen = _scan(api, kind, streamed, response)
    out = Tokens(model=seen.model)
    if seen.doc is not None:
        out.service_tier = _tier(seen.doc)
        try:
            out.usage = hosts.adjust(vendor, seen.doc, _extract(seen.doc, api, kind, vendor))
        except ValueError as e:
            out.note = f"no usage in response ({e})"
        else:
            if seen.complete:
                out.source = "response"
                out.provider_cost = hosts.reported_cost(seen.doc)
                return out
    if kind in _GENERATES and (ok or (streamed and seen.text)):
        return _estimate(out, request, seen)
    out.usage = None
    return out


def _extract(doc: dict[str, Any], api: str, kind: str | None, vendor: str | None) -> Usage:
    """The usage genai-prices reads from `doc` with the first extractor that fits."""
    failure: ValueError | None = None
    for provider, flavor in _extractors(api, kind, vendor):
        try:
            return provider.extract_usage(doc, api_flavor=flavor)[1]
        except ValueError as e:  # a required field is missing: another extractor may fit
            failure = failure or e
    raise failure or ValueError(f"no usage extractor for {api} {kind}")


@cache
def _extractors(api: str, kind: str | None, vendor: str | None) -> tuple[tuple[PriceProvider, str], ...]:
    """The host's own provider's extractors for this kind of call, then the wire format's."""
    wire = _EXTRACTOR[api]
    if api == "openai":
        own = theirs = _FLAVORS.get(kind or "", ("chat", "default"))
    else:  # e.g. Claude's shape read by a cloud's own provider: its flavor is named after the API
        own, theirs = ("default",) if vendor == wire else (api, "default"), ("default",)
    providers = _price_providers()
    found: list[tuple[PriceProvider, str]] = []
    for pid, flavor in [*((vendor, f) for f in own), *((wire, f) for f in theirs)]:
        provider = providers.get(pid or "")
        if provider is None or not any(e.api_flavor == flavor for e in provider.extractors or ()):
            continue
        if not any(p is provider and f == flavor for p, f in found):
            found.append((provider, flavor))
    return tuple(found)


@cache
def _price_providers() -> dict[str, PriceProvider]:
    """genai-prices' bundled providers by id (the snapshot never updates itself here)."""
    return {p.id: p for p in data_snapshot.get_snapshot().providers}


def _tier(doc: dict[str, Any]) -> str | None:
    """The service tier the response reports (OpenAI's top-level `service_tier`, Anthropic's in
    `usage`), when it is not the default one."""
    usage = doc.get("usage")
    tier = doc.get("service_tier") or (usage.get("service_tier") if isinstance(usage, dict) else None)
    return tier if isinstance(tier, str) and tier.lower() not in _DEFAULT_TIERS else None


def _doc_model(doc: dict[str, Any]) -> str | None:
    model = doc.get("model") or doc.get("modelVersion")
    if not isinstance(model, str):
        return None
    return model.removeprefix("models/")  # Gemini may name it as its resource: models/gemini-2.5-pro


def _estimate(out: Tokens, request: bytes, seen: _Seen) -> Tokens:
    """Estimate what the response did not report: everything, or (`out.usage` already holds the
    counts a cut stream reported) only the output."""
    text = seen.text if seen.text is not None else list(_strings(seen.doc))
    n_out, method = estimate.count("".join(text))
    if out.usage is not None:
        partial = copy.copy(out.usage)
        partial.output_tokens = max(n_out, int(out.usage.output_tokens or 0))
        out.usage, out.source = partial, "partial"
        out.note = (
            f"input and cache tokens as reported; output tokens estimated ({method}): the stream"
            " ended before its final usage"
        )
        return out
    n_in, _ = estimate.count("\n".join(_strings(_loads(request))))
    out.usage = Usage(input_tokens=n_in, output_tokens=n_out)
    out.source = "estimated"
    out.note = f"tokens estimated ({method}): the response reported no final usage"
    return out


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _strings(value: Any, key: str | None = None) -> Iterator[str]:
    """Text for estimates: strings under content-like keys (`content`, `text`...), at any depth."""
    if isinstance(value, str):
        if key in _TEXT_KEYS:
            yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, key)


def _scan(api: str, kind: str | None, streamed: bool, body: bytes) -> _Seen:
    if not streamed:
        doc = _loads(body)
        if isinstance(doc, dict):
            # Its text is collected only if an estimate needs it (rare: usage is nearly always there).
            return _Seen(doc=doc, model=_doc_model(doc), complete=True)
        if isinstance(doc, list) and api == "gemini":  # streamGenerateContent without alt=sse
            return _scan_chunks(api, kind, [c for c in doc if isinstance(c, dict)], complete_ok=True)
        return _Seen()
    if api == "gemini" and body.lstrip().startswith(b"["):
        doc = _loads(body)
        chunks = [c for c in doc if isinstance(c, dict)] if isinstance(doc, list) else []
        return _scan_chunks(api, kind, chunks, complete_ok=isinstance(doc, list))
    events = []
    for ev in sse.iter_events(body):
        if ev.data and ev.data != "[DONE]":
            data = _loads(ev.data.encode())
            if isinstance(data, dict):
                events.append(data)
    return _scan_chunks(api, kind, events, complete_ok=True)


def _scan_chunks(api: str, kind: str | None, chunks: list[dict[str, Any]], complete_ok: bool) -> _Seen:
    if api == "anthropic":
        return _scan_anthropic(chunks)
    if api == "openai" and kind == "responses":
        return _scan_responses(chunks)
    seen = _Seen(text=[])
    for chunk in chunks:
        seen.model = seen.model or _doc_model(chunk)
        assert seen.text is not None
        seen.text.extend(_chunk_text(api, chunk))
        if api == "gemini":
            # Every Gemini chunk may carry usageMetadata; the one with finishReason is final.
            if isinstance(chunk.get("usageMetadata"), dict):
                seen.doc = chunk
                seen.complete = complete_ok and _finished(chunk)
        elif isinstance(chunk.get("usage"), dict):
            seen.doc, seen.complete = chunk, True
        elif isinstance(groq := chunk.get("x_groq"), dict) and isinstance(groq.get("usage"), dict):
            seen.doc, seen.complete = {**chunk, "usage": groq["usage"]}, True  # Groq's stream usage
    return seen


def _finished(chunk: dict[str, Any]) -> bool:
    cands = chunk.get("candidates")
    return isinstance(cands, list) and any(isinstance(c, dict) and c.get("finishReason") for c in cands)


def _chunk_text(api: str, chunk: dict[str, Any]) -> Iterator[str]:
    if api == "gemini":
        for cand in chunk.get("candidates") or []:
            for part in ((cand or {}).get("content") or {}).get("parts") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield part["text"]
        return
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta") or {}
        for value in (delta.get("content"), delta.get("reasoning_content"), choice.get("text")):
            if isinstance(value, str):
                yield value
        for call in delta.get("tool_calls") or []:
            args = ((call or {}).get("function") or {}).get("arguments")
            if isinstance(args, str):
                yield args


def _scan_responses(chunks: list[dict[str, Any]]) -> _Seen:
    seen = _Seen(text=[])
    for chunk in chunks:
        kind = chunk.get("type")
        resp = chunk.get("response")
        if isinstance(resp, dict):
            seen.model = seen.model or _doc_model(resp)
            if kind in ("response.completed", "response.incomplete", "response.failed"):
                seen.doc, seen.complete = resp, isinstance(resp.get("usage"), dict)
        elif isinstance(chunk.get("delta"), str):
            assert seen.text is not None
            seen.text.append(chunk["delta"])
    return seen


def _scan_anthropic(chunks: list[dict[str, Any]]) -> _Seen:
    seen = _Seen(text=[])
    for chunk in chunks:
        kind = chunk.get("type")
        if kind == "message_start" and isinstance(chunk.get("message"), dict):
            message = dict(chunk["message"])
            message["usage"] = dict(message.get("usage") or {})
            seen.doc, seen.model = message, _doc_model(message)
        elif kind == "message_delta" and seen.doc is not None:
            usage = chunk.get("usage") or {}
            seen.doc["usage"].update({k: v for k, v in usage.items() if v is not None})
            seen.complete = True
        elif kind == "content_block_delta":
            delta = chunk.get("delta") or {}
            for key in ("text", "partial_json", "thinking"):
                if isinstance(delta.get(key), str):
                    assert seen.text is not None
                    seen.text.append(delta[key])
    return seen
