"""Tokens from a finished call: the provider's own usage first, an estimate second.

For each wire format this module finds the *usage document*: the JSON object that carries the
final usage (a non-streamed body; the last OpenAI chunk with `usage`; the Responses API
`response.completed` payload; Anthropic's `message_start` message with `message_delta` usage
merged in; Gemini's last chunk with `usageMetadata`). genai-prices then reads it, so the mapping
to input / output / cache-read / cache-write / reasoning tokens is the maintained one, with the
genai-prices conventions: input includes cached and cache-write tokens, output includes reasoning.

When no final usage exists (client abort, a server that ignored `include_usage`), tokens are
estimated from the request text and the generated text seen (tokens.py) and marked 'estimated'.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from genai_prices import Usage, extract_usage

from . import sse, tokens

# Which genai-prices extractor reads each wire format (the wire format decides, not the host).
_EXTRACTOR = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}
_FLAVOR = {"chat": "chat", "completions": "chat", "responses": "responses", "embeddings": "embeddings"}
_GENERATES = frozenset({"chat", "completions", "responses", "messages", "generate", "stream_generate"})
_TEXT_KEYS = frozenset({"content", "text", "prompt", "input", "system", "instructions"})


@dataclass(slots=True)
class Tokens:
    usage: Usage | None = None
    source: str | None = None  # 'response' | 'estimated'
    model: str | None = None
    provider_cost: Decimal | None = None
    note: str | None = None


@dataclass(slots=True)
class _Seen:
    doc: dict[str, Any] | None = None
    model: str | None = None
    text: list[str] | None = None
    complete: bool = False


def account(api: str, kind: str | None, streamed: bool, ok: bool, request: bytes, response: bytes) -> Tokens:
    """Usage for one call from its request body and (decoded) response body.

    `ok` is a 2xx status. Error responses carry no usage and get no estimate; a stream that
    started and ended without its final usage (abort, cut connection) does get one.
    """
    seen = _scan(api, kind, streamed, response)
    out = Tokens(model=seen.model)
    if seen.doc is not None and seen.complete:
        try:
            extracted = extract_usage(seen.doc, provider_id=_EXTRACTOR[api], api_flavor=_flavor(api, kind))
        except Exception as e:
            out.note = f"no usage in response ({e})"
        else:
            out.usage, out.source = extracted.usage, "response"
            out.provider_cost = _provider_cost(seen.doc)
            return out
    if kind in _GENERATES and (ok or (streamed and seen.text)):
        return _estimate(out, request, seen)
    return out


def _flavor(api: str, kind: str | None) -> str:
    return _FLAVOR.get(kind or "", "chat") if api == "openai" else "default"


def _doc_model(doc: dict[str, Any]) -> str | None:
    model = doc.get("model") or doc.get("modelVersion")
    return model if isinstance(model, str) else None


def _provider_cost(doc: dict[str, Any]) -> Decimal | None:
    """OpenRouter (and compatible gateways) report the charged cost in `usage.cost`."""
    usage = doc.get("usage")
    cost = usage.get("cost") if isinstance(usage, dict) else None
    if isinstance(cost, int | float) and not isinstance(cost, bool):
        return Decimal(str(cost))
    return None


def _estimate(out: Tokens, request: bytes, seen: _Seen) -> Tokens:
    prompt = "\n".join(_strings(_loads(request)))
    text = seen.text if seen.text is not None else list(_strings(seen.doc))
    completion = "".join(text)
    n_in, method = tokens.count(prompt)
    n_out, _ = tokens.count(completion)
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
