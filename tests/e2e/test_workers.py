"""`llmtap proxy --workers N` end to end: real workers sharing a port, one Redis, one Postgres.

Two launchers of two workers each make four proxies on two ports. The real SDK sends every call
on a new connection (a new client each), so the kernel spreads them over a port's workers.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import cycle
from pathlib import Path

import openai
import pytest

from llmtap.storage import postgres
from tests.e2e.conftest import Proxy
from tests.e2e.test_cache import REPLY, chat_raw
from tests.fakeprovider import FakeProvider
from tests.servers import RedisServer

LLMTAP = str(Path(sys.executable).with_name("llmtap"))
HOST = socket.gethostname()


def pg(url: str, sql: str) -> list[tuple]:
    with postgres.connect(url, read_only=True) as conn:
        return conn.execute(sql).fetchall()


def logged(url: str) -> int:
    """Rows in Postgres so far (0 before a writer has created the table)."""
    import psycopg

    try:
        return pg(url, "SELECT count(*) FROM requests")[0][0]
    except psycopg.errors.UndefinedTable:
        return 0


def wait_log(proxy: Proxy, pattern: str, count: int, timeout: float = 30.0) -> list[str]:
    """Wait for the launcher's log (its workers' too) to show `pattern` `count` times."""
    deadline = time.monotonic() + timeout
    while len(found := re.findall(pattern, proxy.log())) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} {pattern!r}:\n{proxy.log()}"
        time.sleep(0.05)
    return found


@pytest.fixture
def launch(
    fake: FakeProvider, start_proxy: Callable[..., Proxy], redis_server: RedisServer
) -> Callable[..., Proxy]:
    def start(db: str, workers: int = 2) -> Proxy:
        proxy = start_proxy(
            "--mode", f"reverse:{fake.url}", "--set", f"llmtap_redis={redis_server.url}",
            "--set", f"llmtap_db={db}", command=[LLMTAP, "proxy", "--workers", str(workers)],
        )  # fmt: skip
        wait_log(proxy, r"llmtap: logging LLM calls", workers)
        wait_log(proxy, r"listening at", workers)
        return proxy

    return start


def calls(proxies: list[Proxy], n: int, headers: dict[str, str]) -> list[tuple[int, str]]:
    """`n` calls round robin over the ports, each the moment the last returned: (status, id)."""
    out = []
    for _, proxy in zip(range(n), cycle(proxies), strict=False):
        try:
            reply = chat_raw(proxy, headers)
            assert reply.parse().choices[0].message.content == REPLY
            out.append((200, reply.headers["helicone-id"]))
        except openai.RateLimitError as e:
            out.append((429, e.response.headers["helicone-id"]))
    return out


def test_four_workers_on_two_ports_admit_a_limit_once_and_log_every_call_once(
    launch: Callable[..., Proxy], postgres_db: str, fake: FakeProvider
) -> None:
    ports = [launch(postgres_db), launch(postgres_db)]
    got = calls(ports, 30, {"Helicone-RateLimit-Policy": "10;w=60"})
    assert [s for s, _ in got] == [200] * 10 + [429] * 20
    per_user = calls(ports, 8, {"Helicone-RateLimit-Policy": "3;w=60;s=user", "Helicone-User-Id": "ann"})
    assert [s for s, _ in per_user] == [200] * 3 + [429] * 5
    assert len(fake.received) == 13
    for proxy in ports:
        assert proxy.stop() == 0, proxy.log()
    rows = pg(postgres_db, "SELECT request_id, status, proxy_id, rate_limit_store FROM requests")
    assert sorted((r[1], r[0]) for r in rows) == sorted(got + per_user)
    assert {r[3] for r in rows} == {"redis"}
    assert {r[2] for r in rows} == {f"{HOST}:0", f"{HOST}:1"}  # both workers of the ports served
    assert pg(postgres_db, "SELECT count(DISTINCT proxy_id) FROM requests") == [(2,)]


def test_a_killed_worker_costs_no_call_and_is_restarted(
    launch: Callable[..., Proxy], postgres_db: str
) -> None:
    proxy = launch(postgres_db)
    pids = [int(p) for p in wait_log(proxy, r"worker \d started \(pid (\d+)\)", 2)]
    first = calls([proxy], 6, {})
    deadline = time.monotonic() + 10
    while logged(postgres_db) != 6:  # flushed, then the crash
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(pids[0], signal.SIGKILL)
    after = calls([proxy], 10, {})  # the kernel sends every new connection to the live worker
    assert [s for s, _ in after] == [200] * 10
    wait_log(proxy, r"worker 0 exited with status -9; the others keep serving; restarting it", 1)
    wait_log(proxy, r"worker \d started \(pid (\d+)\)", 3)
    wait_log(proxy, r"listening at", 3)
    again = calls([proxy], 6, {})
    assert proxy.stop() == 0, proxy.log()
    ids = sorted(i for _, i in first + after + again)
    assert sorted(r[0] for r in pg(postgres_db, "SELECT request_id FROM requests")) == ids


def test_workers_refuse_to_start_without_redis_and_postgres(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMTAP_")}
    out = subprocess.run(
        [LLMTAP, "proxy", "--workers", "2"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 2
    assert "--workers 2 needs llmtap_redis" in out.stderr
    assert "a Postgres llmtap_db (it is 'llmtap.duckdb'" in out.stderr
    env["LLMTAP_REDIS"] = "redis://127.0.0.1:1/0"
    out = subprocess.run(
        [LLMTAP, "proxy", "--workers", "2"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 2
    assert "llmtap_redis" not in out.stderr.split("needs", 1)[1]
    assert "a Postgres llmtap_db" in out.stderr


def test_a_live_page_on_one_worker_shows_every_workers_calls(
    launch: Callable[..., Proxy], postgres_db: str
) -> None:
    """The page is served by the worker whose API it opened; the other worker's calls reach it
    through Redis, from that worker's next check for listeners (within a second), with their
    tokens and cost once written."""
    import json
    import threading

    proxy = launch(postgres_db)
    host, port = proxy.api.removeprefix("http://").split(":")
    page = socket.create_connection((host, int(port)), timeout=60)
    page.sendall(f"GET /api/ui/live HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    stream = page.makefile("rb")
    head = list(iter(stream.readline, b"\r\n"))
    assert head[0].startswith(b"HTTP/1.1 200") and b"content-type: text/event-stream\r\n" in head, head
    events: list[dict] = []

    def read() -> None:
        try:
            while line := stream.readline():
                if line.startswith(b"data: "):
                    events.append(json.loads(line[6:]))
        except (OSError, ValueError):
            pass  # the page closed

    threading.Thread(target=read, daemon=True).start()

    def shown(request_id: str, state: str = "done", timeout: float = 10.0) -> dict | None:
        """The page's event for this call, waited for up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in list(events) if (e["request_id"], e["state"]) == (request_id, state)]
            if found or time.monotonic() > deadline:
                return found[0] if found else None
            time.sleep(0.02)

    workers: set[str] = set()
    deadline = time.monotonic() + 20
    while len(workers) < 2:  # until the other worker has found the page (its next check)
        assert time.monotonic() < deadline, (events, proxy.log())
        [(_, rid)] = calls([proxy], 1, {})
        if (event := shown(rid, timeout=1.5)) is not None:  # the other's, sent before it knew: never
            workers.add(event["proxy_id"])
    sent = calls([proxy], 20, {})  # new connections: the kernel spreads them over both workers
    seen = {rid: event["proxy_id"] if (event := shown(rid)) else None for _, rid in sent}
    last = shown(sent[-1][1], "accounted")
    assert last is not None, events
    page.shutdown(socket.SHUT_RDWR)  # the page closes
    page.close()
    assert proxy.stop() == 0, proxy.log()
    rows = dict(pg(postgres_db, "SELECT request_id, proxy_id FROM requests"))
    assert seen == {rid: rows[rid] for _, rid in sent}  # every call, with the worker that carried it
    assert set(seen.values()) == workers == {f"{HOST}:0", f"{HOST}:1"}
    cost = pg(postgres_db, f"SELECT cost_usd::text FROM requests WHERE request_id = '{sent[-1][1]}'")
    assert last["cost_usd"] == cost[0][0]
