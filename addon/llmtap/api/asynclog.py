"""Calls logged after the fact (`POST /custom/v1/log`), in Helicone's async-log shape.

Body: `{"providerRequest": {"url", "json", "meta"}, "providerResponse": {"json" | "textBody",
"status", "headers"}, "timing": {"startTime": {"seconds", "milliseconds"}, "endTime": {...},
"timeToFirstToken"}}`. `meta` carries Helicone headers (user, properties, session, request id,
omit flags) exactly as a proxied call would. The result is an ordinary `Capture` marked
`source = 'async'`, so tokens and cost are computed the same way, from the same code.
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


def capture(body: Any, extra_providers: dict[str, providers.Provider], store_limit: int) -> Capture:
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object with providerRequest and providerResponse")
    req, resp = body.get("providerRequest"), body.get("providerResponse")
    if not isinstance(req, dict) or not isinstance(resp, dict):
        raise ApiError(400, "providerRequest and providerResponse must be objects")
    url = req.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or not parts.hostname:
        raise ApiError(400, f"providerRequest.url: expected the provider URL called, got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    found = providers.detect(parts.hostname, port, path, extra_providers, reverse=True)
    if found is None:
        raise ApiError(400, f"providerRequest.url: {url} is not an LLM endpoint llmtap knows")
    meta = _meta(req.get("meta"))
    start, end, ttft = _timing(body.get("timing"))
    response_body, streamed = _response_body(resp)
    status = resp.get("status", 200)
    if not isinstance(status, int):
        raise ApiError(400, f"providerResponse.status: expected an integer, got {status!r}")
    host = parts.hostname if port in (80, 443) else f"{parts.hostname}:{port}"
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
        request_headers=redact_headers((k, str(v)) for k, v in (req.get("meta") or {}).items()),
        request_body=json.dumps(req.get("json")).encode() if req.get("json") is not None else b"",
        store_limit=store_limit,
        streamed=streamed,
        status=status,
        response_body=response_body,
        latency_ms=(end - start) * 1000,
        ttft_ms=ttft,
        source="async",
    )


def _meta(value: Any) -> helicone.CallMeta:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ApiError(400, "providerRequest.meta: expected an object of Helicone headers")
    return helicone.parse((str(k), str(v)) for k, v in value.items())


def _response_body(resp: dict[str, Any]) -> tuple[bytes, bool]:
    if resp.get("json") is not None:
        return json.dumps(resp["json"]).encode(), False
    text = resp.get("textBody")
    if isinstance(text, str):
        return text.encode(), text.lstrip().startswith(("data:", "event:"))
    raise ApiError(400, "providerResponse: expected json or textBody")


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
