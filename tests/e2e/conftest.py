"""End-to-end harness: a real mitmdump subprocess with addon/tap.py in front of the fake provider.

Every proxy gets its own confdir (its own CA) and database under tmp_path, and runs in a session of
its own. `Proxy.stop()` stops it as a terminal's Ctrl-C does, SIGINT to the whole process group
(the llmtap-writer child included), so every test that reads rows after a stop checks that path.
While the proxy runs, `wait_rows` waits (bounded) for rows to reach the file: tests wait for the
fact, never for a fixed time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmtap import proxyproc
from llmtap.storage import query
from tests.fakeprovider import FakeProvider


class Proxy:
    def __init__(self, proc: proxyproc.ProxyProcess, db: Path, confdir: Path, cache: Path) -> None:
        self.proc, self.db, self.confdir, self.cache = proc, db, confdir, cache

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def port(self) -> int:
        return self.proc.port

    @property
    def ca(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def stop(self, sig: int = signal.SIGINT, group: bool = True) -> int:
        return self.proc.stop(sig, group)

    def log(self) -> str:
        return self.proc.output()

    @property
    def api(self) -> str:
        """The local API's base URL (it listens on a free port in tests; `start` waited for it)."""
        api = self.proc.api
        assert api is not None, self.log()
        return f"http://{api}"

    def rows(self, where: str = "TRUE", params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts, read once the proxy has stopped (and flushed)."""
        if self.proc.proc.poll() is None:
            assert self.stop() == 0, self.log()
        return self.select(f"SELECT * FROM requests WHERE {where} ORDER BY created_at", params)

    def select(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Any query, read-only; while the proxy runs too (waiting out the writer's brief flushes)."""
        conn = query.connect(self.db, wait=10)
        try:
            cur = conn.execute(sql, params or [])
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        finally:
            conn.close()

    def wait_rows(self, sql: str, n: int, params: list[Any] | None = None, timeout: float = 10.0):
        """Poll a query while the proxy runs until it returns `n` rows; fail after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.select(sql, params) if self.db.exists() else []
            if len(found) >= n:
                return found
            assert time.monotonic() < deadline, f"{len(found)} of {n} rows after {timeout}s: {sql}"
            time.sleep(0.05)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def start(
        *args: str,
        db: Path | None = None,
        cache: Path | None = None,
        flush_ms: int = 200,
        command: list[str] | None = None,
    ) -> Proxy:
        n = len(started)
        work = tmp_path / f"proxy{n}"
        db = db or tmp_path / f"llmtap{n}.duckdb"
        cache = cache or tmp_path / f"cache{n}.sqlite"
        settings = {
            "llmtap_db": db,
            "llmtap_cache": cache,
            "llmtap_flush_ms": flush_ms,
            "llmtap_api": "127.0.0.1:0",
        }
        given = {a.split("=", 1)[0] for a in args if "=" in a}  # a test's own --set wins (no duplicates)
        defaults = [a for k, v in settings.items() if k not in given for a in ("--set", f"{k}={v}")]
        proc = proxyproc.start([*defaults, *args], work, command=command)
        proxy = Proxy(proc, db, work / "conf", cache)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def gateway(fake: FakeProvider, start_proxy: Callable[..., Proxy]) -> Proxy:
    """Gateway mode: `mitmdump --mode reverse:<provider> -s addon/tap.py`."""
    return start_proxy("--mode", f"reverse:{fake.url}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_app(app: Path, packages: tuple[str, ...], module: bool = False) -> Path:
    """A Node app folder with `packages` installed from the npm registry, as a user installs them."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed (scripts/setup.sh installs them)")
    kind = ', "type": "module"' if module else ""
    (app / "package.json").write_text(f'{{"name": "{app.name}", "private": true{kind}}}')
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", *packages], cwd=app,
                   check=True, timeout=600, capture_output=True)  # fmt: skip
    return app


def app_env(home: Path) -> dict[str, str]:
    """An app's shell before llmtap: no proxy variables, no llmtap settings from the caller's, and
    llmtap's config dir (its CA bundle, the Node preload) in `home`."""
    drop = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in drop and not k.startswith("LLMTAP_")}
    return env | {"LLMTAP_HOME": str(home)}
