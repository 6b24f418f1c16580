"""The local API, served by the proxy process (which owns the database through its writer).

Helicone-compatible routes, on their own port (`llmtap_api`, default 127.0.0.1:8788):
- `POST /v1/request/{id}/feedback`  `{"rating": true}`                      -> 201
- `POST /v1/request/{id}/score`     `{"scores": {"accuracy": 92, "is_safe": true}}` -> 201
- `PUT  /v1/request/{id}/property`  `{"key": "...", "value": "..."}`        -> 200
- `POST /custom/v1/log`             Helicone's async-log body               -> 200, `helicone-id`
- `GET  /v1/health`                                                         -> 200, `pending`
Scores are integers or booleans (booleans stored as 1 / 0), as Helicone; a float, an unknown
request id, bad JSON, an unknown route or a body over 10 MB gets a JSON error. Bound to loopback it
needs no key; bound elsewhere every call needs `Authorization: Bearer <llmtap_api_key>` (or the
dashboard's cookie, set by `GET /ui/...?key=`). A write that a browser says comes from another site
(`Origin`, `Sec-Fetch-Site`) is refused. The same port serves the dashboard (llmtap/ui: `GET /`,
`/ui/*`, `/static/*`, `/api/ui/*`, and `/api/ui/live`, a Server-Sent Events stream).

A deliberately small HTTP/1.1 server on asyncio (one request per connection), so the proxy
needs no web framework. Handlers are plain functions of (method, path, JSON) -> (status, JSON).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, unquote

logger = logging.getLogger(__name__)

MAX_BODY = 10 * 1024 * 1024
_REQUEST_ROUTE = re.compile(r"^/v1/request/([^/]+)/(feedback|score|property)$")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[str, str, dict[str, str], Any], Awaitable[Reply]]  # method, target, headers, body


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port` (port 0: any free port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port like 127.0.0.1:8788, got {value!r}")
    return host.strip("[]"), int(port)


KEY_COOKIE = "llmtap_key"


def _authorized(headers: dict[str, str], key: str) -> bool:
    """The key as a bearer token (SDKs, curl, the loggers) or as the dashboard's cookie (browsers
    cannot add a header to a page load)."""
    if hmac.compare_digest(headers.get("authorization", ""), f"Bearer {key}"):
        return True
    cookies = dict(c.strip().partition("=")[::2] for c in headers.get("cookie", "").split(";") if "=" in c)
    return hmac.compare_digest(cookies.get(KEY_COOKIE, ""), key)


def _key_login(method: str, target: str, key: str) -> Reply | None:
    """`GET /ui/...?key=K`: the dashboard's way in when the API has a key. The key goes into an
    HttpOnly, SameSite=Strict cookie and out of the URL (history, screenshots, Referer)."""
    path, _, qs = target.partition("?")
    if method.upper() != "GET" or not path.startswith("/ui") or "key=" not in qs:
        return None
    given = [v for k, _, v in (p.partition("=") for p in qs.split("&")) if k == "key"]
    if not given or not hmac.compare_digest(unquote(given[-1]), key):
        raise ApiError(401, "wrong key: open the dashboard as /ui/overview?key=<llmtap_api_key>")
    rest = "&".join(p for p in qs.split("&") if not p.startswith("key="))
    cookie = f"{KEY_COOKIE}={quote(key)}; HttpOnly; SameSite=Strict; Path=/"
    return Reply(302, b"", {"location": path + (f"?{rest}" if rest else ""), "set-cookie": cookie,
                            "content-type": "text/plain", "cache-control": "no-store"})  # fmt: skip


def same_origin(headers: dict[str, str]) -> bool:
    """A write from a web page must come from this server's own pages: browsers send `Origin` (and
    `Sec-Fetch-Site`) with cross-site requests; SDKs, curl and the loggers send neither."""
    if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return False
    origin = headers.get("origin")
    if origin is None:
        return True
    return origin.split("://", 1)[-1] == headers.get("host")


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


LOG_ROUTES = {"/custom/v1/log": "custom", "/oai/v1/log": "oai", "/anthropic/v1/log": "anthropic",
              "/googleapis/v1/log": "googleapis"}  # fmt: skip


def route(method: str, path: str) -> tuple[str, str | None]:
    """(route name, request id; for a log, which provider's log route) or ApiError 404/405."""
    path = path.split("?", 1)[0].rstrip("/")
    m = _REQUEST_ROUTE.match(path)
    if m:
        expected = "PUT" if m.group(2) == "property" else "POST"
        if method != expected:
            raise ApiError(405, f"{method} {path}: use {expected}")
        return m.group(2), m.group(1)
    if path in LOG_ROUTES:
        if method != "POST":
            raise ApiError(405, f"{method} {path}: use POST")
        return "log", LOG_ROUTES[path]
    if path == "/v1/health":
        return "health", None
    raise ApiError(404, f"no route {method} {path}")


def rating(body: Any) -> bool:
    value = body.get("rating") if isinstance(body, dict) else None
    if not isinstance(value, bool):
        raise ApiError(400, f"rating: expected true or false, got {value!r}")
    return value


def scores(body: Any) -> dict[str, int]:
    data = body.get("scores") if isinstance(body, dict) else None
    if not isinstance(data, dict) or not data:
        raise ApiError(400, 'scores: expected an object like {"accuracy": 92, "is_safe": true}')
    out = {}
    for name, value in data.items():
        if isinstance(value, bool):
            out[name] = int(value)
        elif isinstance(value, int):
            out[name] = value
        else:
            raise ApiError(400, f"scores.{name}: expected an integer or a boolean, got {value!r}")
    return out


def property_update(body: Any) -> tuple[str, str]:
    if not isinstance(body, dict) or not isinstance(body.get("key"), str) or not body["key"]:
        raise ApiError(400, 'expected {"key": "name", "value": "text"}')
    value = body.get("value")
    if not isinstance(value, str | int | float | bool):
        raise ApiError(400, f"value: expected a string, got {value!r}")
    return body["key"].lower(), str(value)


class Server:
    def __init__(self, host: str, port: int, key: str, handler: Handler) -> None:
        self.host, self.port, self.key, self.handler = host, port, key, handler
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._handle(reader)
        except ApiError as e:
            reply = Reply(e.status, {"error": {"message": str(e), "status": e.status}})
        except Exception as e:  # a bug here must not take the proxy down
            logger.exception("llmtap: local API request failed")
            reply = Reply(500, {"error": {"message": f"internal error: {e}", "status": 500}})
        try:
            if isinstance(reply.body, AsyncIterator):
                await _stream(writer, reply)
            else:
                writer.write(_encode(reply))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader) -> Reply:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            raise ApiError(400, "malformed HTTP request") from e
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _ = lines[0].split(" ", 2)
        except ValueError:
            raise ApiError(400, "malformed request line") from None
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        headers.pop("x-llmtap-authorized", None)  # only this server says so, never a client
        if self.key:
            if (login := _key_login(method, target, self.key)) is not None:
                return login
            if not _authorized(headers, self.key):
                raise ApiError(401, "missing or wrong Authorization: Bearer <llmtap_api_key>")
            headers["x-llmtap-authorized"] = "1"  # for the dashboard: the key stands in for its Host check
        if method.upper() not in ("GET", "HEAD") and not same_origin(headers):
            raise ApiError(403, f"cross-site {method} refused (Origin {headers.get('origin')!r})")
        length = int(headers.get("content-length") or 0)
        if length > MAX_BODY:
            await _discard(reader, length)  # so the client reads our answer instead of a reset
            raise ApiError(413, f"body of {length} bytes is over the 10 MB limit")
        raw = await reader.readexactly(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError as e:
            raise ApiError(400, f"body is not valid JSON: {e}") from None
        return await self.handler(method.upper(), target, headers, body)


async def _stream(writer: asyncio.StreamWriter, reply: Reply) -> None:
    """A long-lived reply (Server-Sent Events): the head, then each piece as it comes, until the
    client goes away (a write fails) or the source ends."""
    status = f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}"
    head = [status, "connection: close", *(f"{k}: {v}" for k, v in reply.headers.items())]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    pieces = reply.body
    try:
        async for piece in pieces:
            writer.write(piece)
            await writer.drain()
    finally:
        await pieces.aclose()


async def _discard(reader: asyncio.StreamReader, length: int, limit: int = 8 * MAX_BODY) -> None:
    left = min(length, limit)
    while left > 0:
        chunk = await reader.read(min(left, 1 << 16))
        if not chunk:
            return
        left -= len(chunk)


def _encode(reply: Reply) -> bytes:
    """A JSON reply, or bytes with their own content-type header (the dashboard's pages)."""
    data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
    headers = {"content-type": "application/json", **reply.headers}
    status = f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}"
    head = [status, f"content-length: {len(data)}", "connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data
