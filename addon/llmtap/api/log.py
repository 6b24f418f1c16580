"""`llmtap.log(...)`: log a call made without the proxy, through the local API's async log.

Takes what the openai / anthropic SDKs give you (the request's keyword arguments and the response
object, or plain dicts) and posts Helicone's async-log body to a running llmtap proxy, which prices
and stores it like a proxied call (`source = 'async'`). Standard library only.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

_URLS = {
    "chat.completion": "https://api.openai.com/v1/chat/completions",
    "text_completion": "https://api.openai.com/v1/completions",
    "response": "https://api.openai.com/v1/responses",
    "list": "https://api.openai.com/v1/embeddings",
    "message": "https://api.anthropic.com/v1/messages",
}


def log(
    request: Mapping[str, Any] | Any,
    response: Any,
    *,
    api: str | None = None,
    url: str | None = None,
    user: str | None = None,
    properties: Mapping[str, str] | None = None,
    session_id: str | None = None,
    session_path: str | None = None,
    session_name: str | None = None,
    request_id: str | None = None,
    start: float | None = None,
    end: float | None = None,
    status: int = 200,
    api_key: str | None = None,
    timeout: float = 10.0,
) -> str:
    """Log one call; returns its request id (the Helicone-Id). `api` defaults to $LLMTAP_API or
    127.0.0.1:8788; `url` (the provider endpoint) is guessed from the response type."""
    req, resp = _plain(request), _plain(response)
    url = url or _URLS.get(str(resp.get("object") or resp.get("type")))
    if url is None:
        raise ValueError("cannot tell which endpoint this response came from; pass url=")
    meta = {
        "Helicone-User-Id": user,
        "Helicone-Session-Id": session_id,
        "Helicone-Session-Path": session_path,
        "Helicone-Session-Name": session_name,
        "Helicone-Request-Id": request_id,
    }
    meta.update({f"Helicone-Property-{k}": v for k, v in (properties or {}).items()})
    end = end if end is not None else time.time()
    start = start if start is not None else end
    body = {
        "providerRequest": {
            "url": url,
            "json": req,
            "meta": {k: v for k, v in meta.items() if v is not None},
        },
        "providerResponse": {"json": resp, "status": status, "headers": {}},
        "timing": {"startTime": _stamp(start), "endTime": _stamp(end)},
    }
    base = api or os.environ.get("LLMTAP_API", "127.0.0.1:8788")
    base = base if base.startswith("http") else f"http://{base}"
    headers = {"content-type": "application/json"}
    if api_key or os.environ.get("LLMTAP_API_KEY"):
        headers["authorization"] = f"Bearer {api_key or os.environ['LLMTAP_API_KEY']}"
    http = urllib.request.Request(f"{base}/custom/v1/log", json.dumps(body).encode(), headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with opener.open(http, timeout=timeout) as reply:
        return json.loads(reply.read())["id"]


def _plain(value: Any) -> dict[str, Any]:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_unset=False)
    if isinstance(value, Mapping):
        return json.loads(json.dumps(dict(value), default=str))
    raise TypeError(f"expected a dict or an SDK object, got {type(value).__name__}")


def _stamp(t: float) -> dict[str, int]:
    return {"seconds": int(t), "milliseconds": int(round((t - int(t)) * 1000))}


def wait_written(api: str, timeout: float = 30.0) -> None:
    """Until the proxy behind `api` (host:port) has written what its writer was handed (its health
    says `pending: 0`); at once when no API answers (then the file shows what it holds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{api}/v1/health", timeout=2) as reply:
                if json.load(reply).get("pending", 0) == 0:
                    return
        except (OSError, ValueError):
            return
        time.sleep(0.05)
