"""Shared fixtures: a clean environment for every test, the fake provider, mitmdump runners."""

from __future__ import annotations

import os
from collections.abc import Iterator

import duckdb
import genai_prices
import mitmproxy.version
import pytest

from tests.servers import PostgresServer, RedisServer

CLEARED_PREFIXES = ("OPENAI_", "ANTHROPIC_", "HELICONE_", "LLMTAP_")
CLEARED = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def pytest_report_header() -> list[str]:
    return [
        f"duckdb {duckdb.__version__}, mitmproxy {mitmproxy.version.VERSION}, "
        f"genai-prices {genai_prices.__version__}"
    ]


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test may see the machine's proxy, SDK or llmtap settings (these machines preset some)."""
    for name in list(os.environ):
        if name.upper() in CLEARED or name.upper().startswith(CLEARED_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this test's own (tests/servers.py), stopped by PID at the end."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresServer]:
    """One throwaway Postgres cluster for the session (initdb + start: ~1 s), removed at the end;
    every test gets a database of its own from `postgres_db`. A test that stops the server starts
    a `PostgresServer` of its own."""
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture
def postgres_db(postgres_cluster: PostgresServer, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database on the session's cluster."""
    name = "t_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name.lower())[:50]
    return postgres_cluster.create_database(f"{name}_{os.getpid()}_{id(request)}"[:63])
