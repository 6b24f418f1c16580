"""The dashboard over HTTP: its page, its static files and its JSON views.

One function, `handle`, answers for both servers: the proxy's local API (port `llmtap_api`, on
mitmproxy's event loop, which calls it in a worker thread) and `llmtap ui` over a file. Every view
is a URL: `/ui/<page>?since=24h&model=gpt-4o&tz=Europe/Paris` serves the same page, whose script
reads its filters from the query string and fetches `/api/ui/<view>` with them.

Safety: a page or view is served only to a `Host` that names this server on loopback (a DNS
rebinding page cannot read it), never with CORS headers, always with a Content-Security-Policy
that allows only this origin's own scripts, styles and data (no inline script, no outside host).
What the database holds (prompts, answers: attacker-controlled text) is sent as JSON and put on the
page as text only, never as HTML.
"""

from __future__ import annotations

import json
import mimetypes
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from llmtap.ui import views

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
VENDOR = HERE / "node_modules"  # `npm ci` in this folder (scripts/setup.sh), from package-lock.json
VENDORED = {
    "uPlot.iife.min.js": VENDOR / "uplot" / "dist" / "uPlot.iife.min.js",
    "uPlot.min.css": VENDOR / "uplot" / "dist" / "uPlot.min.css",
}
PAGES = ("overview", "requests", "live", "users", "properties", "cache", "sessions", "sql")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")  # fmt: skip
SECURITY = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "x-frame-options": "DENY",
            "referrer-policy": "no-referrer", "cache-control": "no-store"}  # fmt: skip
_LOOPBACK_HOST = re.compile(r"^(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?$")


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def all_headers(self) -> dict[str, str]:
        return {**SECURITY, "content-type": self.content_type, **self.headers}


def is_dashboard(method: str, path: str) -> bool:
    """The paths the dashboard answers (everything else is the local API's)."""
    path = path.split("?", 1)[0]
    return method == "GET" and (path in ("/", "/ui") or path.startswith(("/ui/", "/static/", "/api/ui/")))


HOST_ERROR = "the dashboard answers only to a loopback Host (127.0.0.1 or localhost)"


def host_ok(headers: dict[str, str]) -> bool:
    """A loopback Host: a page from another site that rebinds its name to 127.0.0.1 gets nothing.
    Behind `llmtap_api_key` the key does that job (a rebinding page has no cookie for it), so any
    Host the server is reached by is served."""
    return _LOOPBACK_HOST.match(headers.get("host", "")) is not None


def handle(
    method: str, target: str, headers: dict[str, str], db: views.Target, now: datetime | None = None
) -> Response:
    path, _, qs = target.partition("?")
    if not host_ok(headers) and not headers.get("x-llmtap-authorized"):
        return _error(421, HOST_ERROR)
    if path in ("/", "/ui", "/ui/"):
        return Response(302, "text/plain", b"", {"location": "/ui/overview" + (f"?{qs}" if qs else "")})
    if path.startswith("/ui/") and path[4:] in PAGES:
        return _file(STATIC / "index.html")
    if path.startswith("/static/"):
        name = path[len("/static/") :]
        if name in VENDORED:
            return _file(VENDORED[name])
        if re.fullmatch(r"[a-z0-9_-]+\.(js|css|svg)", name):
            return _file(STATIC / name)
        return _error(404, f"no file {path}")
    if path == "/api/ui/live":
        return _error(404, "the Live page needs a running proxy: calls are pushed from its memory")
    if path.startswith("/api/ui/"):
        return _view(path[len("/api/ui/") :], parse_qs(qs, keep_blank_values=True), db, now)
    return _error(404, f"no page {path}")


def _view(name: str, params: dict[str, list[str]], db: views.Target, now: datetime | None) -> Response:
    try:
        if m := re.fullmatch(r"request/([^/]+)", name):
            return _json(200, views.request(db, unquote(m[1]), params.get("at", [None])[-1]))
        if m := re.fullmatch(r"request/([^/]+)/body/(request|response)", name):
            data = views.body(db, unquote(m[1]), m[2])
            disposition = f'attachment; filename="{m[2]}-body-{re.sub(r"[^A-Za-z0-9_-]", "", m[1])}.txt"'
            return Response(200, "text/plain; charset=utf-8", data, {"content-disposition": disposition})
        if name in ("sql", "sql.csv", "sql.json"):
            text = params.get("sql", [""])[-1]
            if name == "sql":
                return _json(200, views.sql(db, text))
            fmt = name.split(".")[1]
            headers = {"content-disposition": f'attachment; filename="llmtap-sql.{fmt}"'}
            return Response(200, views.EXPORTS[fmt], views.sql_export(db, text, fmt), headers)
        if name == "property-keys":
            return _json(200, views.property_keys(db))
        if name == "score-names":
            return _json(200, views.score_names(db))
        opts = views.options(params)
        if m := re.fullmatch(r"export/(.+)\.(csv|json|parquet)", name):
            data = views.export(db, m[1], m[2], opts, params)
            filename = f"llmtap-{m[1].replace('/', '-')}.{m[2]}"
            headers = {"content-disposition": f'attachment; filename="{filename}"'}
            return Response(200, views.EXPORTS[m[2]], data, headers)
        if m := re.fullmatch(r"report/([a-z]+)", name):
            return _json(200, views.report(db, m[1], opts, params))
        if name == "overview":
            return _json(200, views.overview(db, opts, now, params.get("stack", ["model"])[-1]))
        if name == "requests":
            return _json(200, views.requests(db, opts, params, now))
    except views.ViewError as e:
        return _error(e.status, str(e))
    return _error(404, f"no view {name!r}")


def _file(path: Path) -> Response:
    if not path.is_file():
        return _error(404, f"{path.name} is not installed (run scripts/setup.sh)")
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind.endswith("javascript"):
        kind += "; charset=utf-8"
    return Response(200, kind, path.read_bytes())


def _json(status: int, value: Any) -> Response:
    return Response(status, "application/json", json.dumps(value, default=_plain).encode())


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": {"message": message, "status": status}})


def _plain(value: Any) -> Any:
    """Money as exact decimal strings, times as ISO 8601, as `llmtap report --format json`."""
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)
