"""llmtap's own HTTP client, for retries and fallbacks (mitmproxy cannot re-send a flow).

A call is made with http.client in a worker thread (`asyncio.to_thread`), so waiting on the network
never blocks the event loop. No environment proxies (a retry must not loop back through this
proxy), no redirects, the body returned as received (content-encoding kept, with its header).
TLS is verified like mitmproxy verifies upstreams: system trust store, or
`ssl_verify_upstream_trusted_ca`, or not at all with `ssl_insecure`.
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
     "trailer", "transfer-encoding", "upgrade", "content-length", "host"}
)  # fmt: skip


@dataclass(slots=True)
class Reply:
    status: int | None  # None: no response (connection error or timeout)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    error: str | None = None
    latency_ms: float = 0.0

    def header_map(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers}


def tls_context(insecure: bool, cafile: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile or None)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def send(
    method: str, url: str, headers: list[tuple[str, str]], body: bytes, tls: ssl.SSLContext, timeout: float
) -> Reply:
    return await asyncio.to_thread(_send, method, url, headers, body, tls, timeout)


def _send(
    method: str, url: str, headers: list[tuple[str, str]], body: bytes, tls: ssl.SSLContext, timeout: float
) -> Reply:
    parts = urlsplit(url)
    started = time.monotonic()
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout, context=tls
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                conn.putheader(name, value.encode("latin-1", "replace"))  # header bytes as mitmproxy had them
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        reply = Reply(
            resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP], data
        )
    except (OSError, http.client.HTTPException, ValueError) as e:  # ValueError: a header http.client refuses
        reply = Reply(None, error=f"{type(e).__name__}: {e}")
    finally:
        conn.close()
    reply.latency_ms = (time.monotonic() - started) * 1000
    return reply
