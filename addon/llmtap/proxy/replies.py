"""Responses the proxy makes itself: policy errors and cache hits.

Errors are shaped like the provider's own, so the openai / anthropic SDKs raise their usual
exception classes with llmtap's message: an OpenAI-style `{"error": {...}}` for openai and gemini
wire formats, Anthropic's `{"type": "error", "error": {...}}` for anthropic.
"""

from __future__ import annotations

import json

from mitmproxy import http

from llmtap.accounting.entry import Entry

_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}


def error(api: str, status: int, message: str, param: str | None = None) -> http.Response:
    if api == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        body: dict = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        kind = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}.get(
            status, "server_error"
        )
        body = {"error": {"message": message, "type": kind, "param": param, "code": kind}}
    return http.Response.make(status, json.dumps(body), {"content-type": "application/json"})


def cache_hit(entry: Entry, idx: int, request_id: str) -> http.Response:
    headers = {
        "content-type": entry.content_type,
        "helicone-cache": "HIT",
        "helicone-cache-bucket-idx": str(idx),
        "helicone-id": request_id,
    }
    if entry.latency_ms is not None:
        headers["helicone-cache-latency"] = str(round(entry.latency_ms))
    if entry.streamed:
        headers["cache-control"] = "no-cache"
    return http.Response.make(entry.status, entry.body, headers)
