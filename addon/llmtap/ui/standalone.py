"""`llmtap ui`: the dashboard over a file (or a fleet's Postgres log), without a proxy: read-only, also
while a proxy writes it.

The same `server.handle` as the proxy's local API, behind the standard library's threading HTTP
server on loopback: one thread per request, each query on its own short-lived connection.
"""

from __future__ import annotations

import webbrowser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llmtap.storage import query
from llmtap.ui import server, views


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        headers = {k.lower(): v for k, v in self.headers.items()}
        if server.is_dashboard("GET", self.path):
            self._send(server.handle("GET", self.path, headers, self.server.db))
        else:
            self._send(server.Response(404, "application/json", b'{"error": {"message": "no such page"}}'))

    def do_POST(self) -> None:  # noqa: N802
        body = b'{"error": {"message": "llmtap ui is read-only: feedback and scores go through a proxy"}}'
        self._send(server.Response(405, "application/json", body))

    do_PUT = do_DELETE = do_POST  # noqa: N815

    def _send(self, page: server.Response) -> None:
        self.send_response(page.status)
        for name, value in {**page.all_headers(), "content-length": str(len(page.body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(page.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, db: views.Target) -> None:
        self.db = db
        super().__init__(("127.0.0.1", port), _Handler)


def serve(db: views.Target, port: int, open_browser: bool = False) -> int:
    httpd = _Server(port, db)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/ui/overview"
    print(f"llmtap dashboard at {url} (read-only over {query.shown(db)}); Ctrl-C stops it", flush=True)
    if open_browser:
        webbrowser.open(url)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0
