"""Calls logged after the fact (`POST /custom/v1/log` and its cousins), in Helicone's async-log shape.

Body: `{"providerRequest": {"url", "json", "meta"}, "providerResponse": {"json" | "textBody",
"status", "headers"}, "timing": {"startTime": {"seconds", "milliseconds"}, "endTime": {...},
"timeToFirstToken"}}`. Helicone headers (user, properties, session, request id, omit flags) count
as a proxied call's would, whether they come in `meta` or on the log request itself (`meta` wins).
The result is an ordinary `Capture` marked `source = 'async'`, so tokens and cost are computed the
same way, from the same code.

Helicone's own loggers (`helicone-helpers` for Python, `@helicone/helpers` for Node, read from
their packages: `HeliconeManualLogger.send_log`) post to `/oai/v1/log`, `/anthropic/v1/log`,
`/googleapis/v1/log` or `/custom/v1/log` with `providerRequest.url = "custom-model-nopath"`, so the
provider comes from the route, else from the model and the body's shape; they add `_type`,
`toolName` (and `name`) to the response JSON, "unknown" when the request had none; and their
stream logs are the chunks as JSON lines, not SSE.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

from llmtap.accounting.record import Capture
from llmtap.api.httpserver import ApiError
from llmtap.policy.redact import redact_headers, redact_path
from llmtap.wire import helicone, providers

LOGGER_KEYS = ("_type", "toolName", "name")  # what Helicone's loggers add to the response JSON
CUSTOM = providers.Provider("custom", "openai", None, inferred=True)
_HOSTS = {"openai": "api.openai.com", "anthropic": "api.anthropic.com",
          "gemini": "generativelanguage.googleapis.com"}  # fmt: skip
_MODEL_PREFIXES = {"claude": "anthropic", "gemini": "gemini", "gpt-": "openai", "chatgpt-": "openai",
                   "o1": "openai", "o3": "openai", "o4": "openai", "text-embedding-": "openai"}  # fmt: skip


def capture(
    body: Any,
    extra_providers: dict[str, providers.Provider],
    store_limit: int,
    route: str = "custom",
    headers: dict[str, str] | None = None,
) -> Capture:
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object with providerRequest and providerResponse")
    req, resp = body.get("providerRequest"), body.get("providerResponse")
    if not isinstance(req, dict) or not isinstance(resp, dict):
        raise ApiError(400, "providerRequest and providerResponse must be objects")
    given = _helicone_headers(headers or {}) | _object(req.get("meta"), "providerRequest.meta")
    meta = helicone.parse((str(k), str(v)) for k, v in given.items())
    start, end, ttft = _timing(body.get("timing"))
    response_body, streamed = _response_body(resp)
    found, host, path = _target(req, resp, route, body.get("provider"), extra_providers)
    status = resp.get("status", 200)
    if not isinstance(status, int):
        raise ApiError(400, f"providerResponse.status: expected an integer, got {status!r}")
    return Capture(
        meta=meta,
        provider=found.name,
        api=found.api,
        price_id=found.price_id,
        inferred=found.inferred,
        endpoint=providers.endpoint(found.api, path),
        host=host,
        method="POST",
        path=redact_path(path),
        started=start,
        request_headers=redact_headers((k, str(v)) for k, v in given.items()),
        request_body=json.dumps(req.get("json")).encode() if req.get("json") is not None else b"",
        store_limit=store_limit,
        streamed=streamed,
        status=status,
        response_body=response_body,
        latency_ms=(end - start) * 1000,
        ttft_ms=ttft,
        source="async",
    )


def _target(
    req: dict[str, Any], resp: dict[str, Any], route: str, hint: Any, extra: dict[str, providers.Provider]
) -> tuple[providers.Provider, str, str]:
    """(provider, host, path) of the logged call: from its URL when that is an LLM endpoint llmtap
    knows, else from the log route (or the body's `provider`), the model and the body's shape."""
    url = req.get("url")
    parts = urlsplit(url) if isinstance(url, str) and "://" in url else None
    if parts is not None and parts.hostname:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        found = providers.detect(parts.hostname, port, path, extra, reverse=True)
        if found is not None:
            return found, parts.hostname if port in (80, 443) else f"{parts.hostname}:{port}", path
    request = req.get("json") if isinstance(req.get("json"), dict) else {}
    model = str(request.get("model") or (resp.get("json") or {}).get("model") or "")
    api = _api_of(route, str(hint or "").lower(), model, request, resp.get("json"))
    if api is None:
        return CUSTOM, "custom", "/v1/chat/completions"
    path = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages",
            "gemini": f"/v1beta/models/{model or 'unknown'}:generateContent"}[api]  # fmt: skip
    if api == "openai" and isinstance(resp.get("json"), dict) and resp["json"].get("object") == "response":
        path = "/v1/responses"
    host = _HOSTS[api]
    found = providers.detect(host, 443, path, extra, reverse=False)
    assert found is not None
    return found, host, path


def _api_of(route: str, hint: str, model: str, request: dict[str, Any], response: Any) -> str | None:
    by_route = {"oai": "openai", "openai": "openai", "anthropic": "anthropic", "googleapis": "gemini",
                "google": "gemini", "gemini": "gemini"}  # fmt: skip
    if route in by_route:
        return by_route[route]
    if hint in by_route:
        return by_route[hint]
    for prefix, api in _MODEL_PREFIXES.items():
        if model.lower().startswith(prefix):
            return api
    if isinstance(response, dict) and response.get("type") == "message":
        return "anthropic"
    if isinstance(response, dict) and "candidates" in response:
        return "gemini"
    return None


def _helicone_headers(headers: dict[str, str]) -> dict[str, str]:
    """The log request's own Helicone-* headers (its Authorization is the API's, not the call's)."""
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("helicone-")}


def _object(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"{name}: expected an object of Helicone headers")
    return {str(k).lower(): v for k, v in value.items()}


def _response_body(resp: dict[str, Any]) -> tuple[bytes, bool]:
    value = resp.get("json")
    if isinstance(value, dict) and not (value.keys() - set(LOGGER_KEYS)) and resp.get("textBody"):
        value = None  # a string response: Helicone's loggers send `json: {}` (or their keys) beside it
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if not (k in LOGGER_KEYS and v in ("unknown", None))}
    if value is not None:
        return json.dumps(value).encode(), False
    text = resp.get("textBody")
    if isinstance(text, str):
        if text.lstrip().startswith(("data:", "event:")):
            return text.encode(), True
        if (events := _json_lines(text)) is not None:
            return events, True
        return text.encode(), False
    raise ApiError(400, "providerResponse: expected json or textBody")


def _json_lines(text: str) -> bytes | None:
    """A stream logged as its chunks, one JSON object per line (what the loggers' stream recorders
    send), as the SSE the provider sent (Anthropic's events named by their `type`); None when the
    text is not such a list of chunks."""
    try:
        chunks = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        return None
    if not chunks or not all(isinstance(c, dict) for c in chunks):
        return None
    if len(chunks) == 1 and not str(chunks[0].get("object", "")).endswith(".chunk"):
        return None  # one JSON object: a response, not a stream
    events = []
    for chunk in chunks:
        kind = chunk.get("type")
        name = f"event: {kind}\n" if isinstance(kind, str) else ""
        events.append(f"{name}data: {json.dumps(chunk)}\n\n")
    return "".join(events).encode()


def _timing(value: Any) -> tuple[float, float, float | None]:
    now = time.time()
    if value is None:
        return now, now, None
    if not isinstance(value, dict):
        raise ApiError(400, "timing: expected an object with startTime and endTime")
    start, end = _when(value.get("startTime"), "startTime", now), _when(value.get("endTime"), "endTime", now)
    if start > end:
        raise ApiError(400, "timing: startTime is after endTime")
    ttft = value.get("timeToFirstToken")
    if ttft is not None and not isinstance(ttft, int | float):
        raise ApiError(400, f"timing.timeToFirstToken: expected milliseconds, got {ttft!r}")
    return start, end, float(ttft) if ttft is not None else None


def _when(value: Any, name: str, default: float) -> float:
    if value is None:
        return default
    if not isinstance(value, dict) or not isinstance(value.get("seconds"), int | float):
        raise ApiError(400, f"timing.{name}: expected {{seconds, milliseconds}}, got {value!r}")
    return float(value["seconds"]) + float(value.get("milliseconds") or 0) / 1000
