"""Every client, zero code change: each runs unmodified under `llmtap run`, at its default base URL.

The clients (tests/e2e/clients/) are plain apps: the openai, anthropic, google-genai, litellm and
langchain-openai SDKs, `requests`, `httpx`, the openai npm package on this machine's Node, and curl.
`llmtap run` starts the proxy, sets the environment (proxy variables, the combined CA bundle, the
Node preload), and mitmproxy's `--map-remote` sends api.openai.com, api.anthropic.com and
generativelanguage.googleapis.com to the fake provider, so TLS interception, provider detection by
the real host and the SDKs' own HTTP stacks all run offline.

The app trusted a CA of this test world before llmtap (its SSL_CERT_FILE, as a corporate bundle
would be): its other HTTPS calls, to a host reached directly (NO_PROXY: loopback) and to one through
the proxy, must still verify. Each row must carry the exact tokens the fake sent (computed here from
what reached it) and the cost genai-prices gives for them; the run's summary must add them up.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import genai_prices
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from genai_prices import Usage
from mitmproxy.certs import CertStore

from llmtap.demo.fakeprovider import DEFAULT_REPLY, default_usage
from tests.e2e.conftest import app_env, node_app
from tests.fakeprovider import FakeProvider

CLIENTS = Path(__file__).parent / "clients"
HOSTS = ("api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com")
NINE = Decimal("0.000000001")
NODE_PACKAGES = ("openai@6.30.1", "undici@7.30.2")


class _Other(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"ok": True, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class World:
    tmp: Path
    fake: FakeProvider
    test_ca: Path  # what the app trusted before llmtap
    other_port: int

    def env(self) -> dict[str, str]:
        """The app's shell: its own CA bundle, no proxy, no llmtap settings."""
        env = app_env(self.tmp / "home") | {"SSL_CERT_FILE": str(self.test_ca)}
        env |= {"OTHER_DIRECT": f"https://127.0.0.1:{self.other_port}/direct",
                "OTHER_PROXIED": "https://intranet.example/proxied"}  # fmt: skip
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "SSL_CERT_DIR"):
            env.pop(name, None)  # these machines preset them to the system roots
        return env

    def run(self, name: str, command: list[str], cwd: Path = CLIENTS) -> Run:
        db = self.tmp / f"{name}.duckdb"
        maps = [a for h in HOSTS for a in ("--map-remote", f"|https://{h}/|{self.fake.url}/")]
        maps += ["--map-remote", f"|https://intranet.example/|https://127.0.0.1:{self.other_port}/"]
        settings = {
            "llmtap_cache": self.tmp / f"{name}-cache.sqlite",
            "ssl_verify_upstream_trusted_ca": self.test_ca,
        }
        args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
        self.fake.clear()
        done = subprocess.run(
            [sys.executable, "-m", "llmtap.cli", "run", "--db", str(db), "--confdir", str(self.tmp / "conf"),
             "--format", "json", *args, *maps, "--", *command],
            env=self.env(), cwd=cwd, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        return Run(done, db, list(self.fake.received))


@dataclass
class Run:
    done: subprocess.CompletedProcess[str]
    db: Path
    received: list[Any]

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads(self.done.stderr.strip().splitlines()[-1])

    def rows(self) -> list[dict[str, Any]]:
        with duckdb.connect(str(self.db), read_only=True) as conn:
            cur = conn.execute(
                "SELECT provider, model, streamed, status, input_tokens, output_tokens, cost_usd, "
                "usage_source, created_at, request_headers FROM requests ORDER BY created_at"
            )
            columns = [d[0] for d in cur.description]
            return [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("clients")
    store = CertStore.from_store(tmp / "testca", "testworld", 2048)
    test_ca = tmp / "testca" / "testworld-ca-cert.pem"
    sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    leaf = store.get_cert("127.0.0.1", sans)
    (tmp / "leaf.pem").write_bytes(leaf.cert.to_pem())
    (tmp / "leaf.key").write_bytes(
        leaf.privatekey.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "leaf.pem", tmp / "leaf.key")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Other)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    with FakeProvider() as fake:
        yield World(tmp, fake, test_ca, server.server_address[1])
    server.shutdown()
    server.server_close()


def expected_cost(row: dict[str, Any]) -> Decimal:
    usage = Usage(input_tokens=row["input_tokens"], output_tokens=row["output_tokens"])
    at: datetime = row["created_at"]
    calc = genai_prices.calc_price(
        usage, row["model"], provider_id=row["provider"], genai_request_timestamp=at
    )
    return calc.total_price.quantize(NINE)


def check(run: Run, calls: list[tuple[str, str, bool]], printed: list[str]) -> None:
    """The run succeeded, printed what the app saw, and wrote one exact row per call."""
    assert run.done.returncode == 0, run.done.stderr[-3000:]
    lines = run.done.stdout.splitlines()
    assert lines == [*printed, "other other_direct: True", "other other_proxied: True"], run.done.stderr[
        -3000:
    ]
    rows = run.rows()
    assert [(r["provider"], r["model"], r["streamed"], r["status"]) for r in rows] == [
        (provider, model, streamed, 200) for provider, model, streamed in calls
    ]
    llm = [r for r in run.received if r.path.split("?")[0] != "/proxied"]
    assert len(llm) == len(calls)
    total = Decimal(0)
    for row, request in zip(rows, llm, strict=True):
        usage = default_usage(request.body, DEFAULT_REPLY)
        assert (row["input_tokens"], row["output_tokens"], row["usage_source"]) == (
            usage["input"], usage["output"], "response"
        )  # fmt: skip
        assert row["cost_usd"] == expected_cost(row)
        total += row["cost_usd"]
        assert "sk-test" not in row["request_headers"] and "AIza-test" not in row["request_headers"]
    s = run.summary
    assert (s["calls"], s["errors"], s["unpriced"], s["exit_status"]) == (len(calls), 0, 0, 0)
    assert Decimal(s["cost_usd"]) == total
    assert s["input_tokens"] == sum(r["input_tokens"] for r in rows)
    assert s["output_tokens"] == sum(r["output_tokens"] for r in rows)


OPENAI = ("openai", "gpt-4o-mini", False)
OPENAI_STREAM = ("openai", "gpt-4o-mini", True)
CLAUDE = ("anthropic", "claude-haiku-4-5", False)
CLAUDE_STREAM = ("anthropic", "claude-haiku-4-5", True)
GEMINI = ("google", "gemini-2.0-flash", False)
GEMINI_STREAM = ("google", "gemini-2.0-flash", True)


def python(script: str) -> list[str]:
    return [sys.executable, str(CLIENTS / script)]


def test_openai_sdk_sync_async_streaming(world: World) -> None:
    run = world.run("openai", python("py_openai.py"))
    check(run, [OPENAI, OPENAI_STREAM] * 2, [DEFAULT_REPLY] * 4)


def test_anthropic_sdk_sync_async_streaming(world: World) -> None:
    run = world.run("anthropic", python("py_anthropic.py"))
    check(run, [CLAUDE, CLAUDE_STREAM] * 2, [DEFAULT_REPLY] * 4)


def test_google_genai_sdk_json_and_stream(world: World) -> None:
    run = world.run("genai", python("py_genai.py"))
    check(run, [GEMINI, GEMINI_STREAM], [DEFAULT_REPLY] * 2)


def test_litellm_sdk_as_a_client(world: World) -> None:
    run = world.run("litellm", python("py_litellm.py"))
    check(run, [OPENAI, OPENAI_STREAM], [DEFAULT_REPLY] * 2)


def test_langchain_openai(world: World) -> None:
    run = world.run("langchain", python("py_langchain.py"))
    check(run, [OPENAI, OPENAI_STREAM], [DEFAULT_REPLY] * 2)


def test_requests_by_hand_openai_and_gemini_sse(world: World) -> None:
    run = world.run("requests", python("py_requests.py"))
    words = len(DEFAULT_REPLY.split())
    check(run, [OPENAI, GEMINI_STREAM], [DEFAULT_REPLY, f"{words} events"])


def test_httpx_by_hand_openai_and_anthropic_stream(world: World) -> None:
    run = world.run("httpx", python("py_httpx.py"))
    events = 6 + len(DEFAULT_REPLY.split())  # message_start, block start/stop, delta, stop, ping
    check(run, [OPENAI, CLAUDE_STREAM], [DEFAULT_REPLY, f"{events} events"])


def test_curl_with_the_bundle(world: World) -> None:
    run = world.run("curl", ["sh", str(CLIENTS / "curl.sh")])
    events = 6 + len(DEFAULT_REPLY.split())
    check(run, [OPENAI, CLAUDE_STREAM], [DEFAULT_REPLY, f"{events} events"])


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Node app folder with the openai npm package (and undici, which Node < 22.21 needs for
    llmtap's preload), installed from the npm registry as a user would."""
    app = node_app(tmp_path_factory.mktemp("llmtap-node-client"), NODE_PACKAGES, module=True)
    shutil.copy(CLIENTS / "node_openai.mjs", app / "app.mjs")
    return app


def test_node_openai_package(world: World, node_client: Path) -> None:
    run = world.run("node", ["node", "app.mjs"], cwd=node_client)
    check(run, [OPENAI, OPENAI_STREAM], [DEFAULT_REPLY] * 2)
