"""`llmtap feedback` / `score` / `property`: rate, score and tag a logged call from the shell.

Through the running proxy's local API when it answers (the proxy owns the database); otherwise
straight into the database file, which is then free to open read-write.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from llmtap.storage.query import QueryError


def parse_scores(pairs: list[str]) -> dict[str, int]:
    """`accuracy=92 is_safe=true` -> {"accuracy": 92, "is_safe": 1}; floats are refused, as Helicone."""
    out: dict[str, int] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        value = raw.strip().lower()
        if not sep or not name.strip():
            raise QueryError(f"expected name=value, got {pair!r}")
        if value in ("true", "false"):
            out[name.strip()] = int(value == "true")
        elif value.lstrip("-").isdigit():
            out[name.strip()] = int(value)
        else:
            raise QueryError(f"{name.strip()}: scores are integers or true/false, got {raw!r}")
    return out


def parse_properties(pairs: list[str]) -> dict[str, str]:
    """`Reviewed=yes team=search` -> {"reviewed": "yes", "team": "search"} (keys lowercased, as the
    Helicone-Property-* headers are)."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise QueryError(f"expected name=value, got {pair!r}")
        out[name.strip().lower()] = value
    return out


def annotate(kind: str, request_id: str, body: dict[str, Any], api: str, db: str) -> str:
    """Send through the API, or write to the file when no proxy answers; returns what was done.
    A property is one `{"key", "value"}` PUT per name, as Helicone's API takes them."""
    if kind == "property":
        sends = [("PUT", {"key": k, "value": v}) for k, v in body["properties"].items()]
    else:
        sends = [("POST", body)]
    for method, payload in sends:
        reply = _send(api, f"/v1/request/{request_id}/{kind}", method, payload)
        if reply is None:
            break
        status, data = reply
        if status >= 400:
            raise QueryError(data.get("error", {}).get("message", f"the local API answered {status}"))
    else:
        return f"{kind} recorded for {request_id} (through the proxy at {api})"
    _write(kind, request_id, body, db)
    return f"{kind} recorded for {request_id} (in {db}; no proxy answered at {api})"


def _send(api: str, path: str, method: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    base = api if api.startswith("http") else f"http://{api}"
    headers = {"content-type": "application/json"}
    if os.environ.get("LLMTAP_API_KEY"):
        headers["authorization"] = f"Bearer {os.environ['LLMTAP_API_KEY']}"
    req = urllib.request.Request(base + path, json.dumps(body).encode(), headers, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _write(kind: str, request_id: str, body: dict[str, Any], db: str) -> None:
    """Into the file, with the writer's own statements (imported here: they cost ~0.3 s to load,
    which only this path pays)."""
    from llmtap.accounting.record import Feedback, PropertyUpdate, Score
    from llmtap.storage.writer import annotate_file

    now = datetime.now(UTC)
    if kind == "feedback":
        notes: list[Any] = [Feedback(request_id, body["rating"], now)]
    elif kind == "property":
        notes = [PropertyUpdate(request_id, k, v) for k, v in body["properties"].items()]
    else:
        notes = [Score(request_id, name, value, now) for name, value in body["scores"].items()]
    annotate_file(db, request_id, notes, what=kind)
