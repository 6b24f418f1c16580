"""Fleet mode's log end to end: several real mitmdumps write one real Postgres (llmtap_db=URL).

Every call must land exactly once, stamped with the proxy that carried it; feedback for a call
may arrive through any proxy, right after the call returned; a Postgres that stops and comes back
costs no call and no row.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from itertools import cycle
from typing import Any

import pytest

from llmtap.storage import postgres
from tests.e2e.conftest import Proxy
from tests.e2e.test_cache import REPLY, chat_raw
from tests.fakeprovider import FakeProvider
from tests.servers import PostgresServer, RedisServer


def pg(url: str, sql: str, params: list[Any] | None = None) -> list[tuple]:
    with postgres.connect(url, read_only=True) as conn:
        return conn.execute(sql, params).fetchall()


def api(proxy: Proxy, path: str, body: dict[str, Any], method: str = "POST") -> int:
    req = urllib.request.Request(
        proxy.api + path, json.dumps(body).encode(), {"content-type": "application/json"}, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture
def logged_fleet(
    fake: FakeProvider, start_proxy: Callable[..., Proxy], redis_server: RedisServer
) -> Callable[..., list[Proxy]]:
    def start(n: int, db: str) -> list[Proxy]:
        return [
            start_proxy("--mode", f"reverse:{fake.url}", "--set", f"llmtap_redis={redis_server.url}",
                        "--set", f"llmtap_db={db}", "--set", f"llmtap_proxy_id=proxy-{i}")
            for i in range(n)
        ]  # fmt: skip

    return start


def test_every_call_lands_once_with_its_proxy_and_feedback_from_any_proxy(
    logged_fleet: Callable[..., list[Proxy]], postgres_db: str
) -> None:
    proxies = logged_fleet(3, postgres_db)
    sent: list[tuple[str, str]] = []
    for _, (i, proxy) in zip(range(12), cycle(enumerate(proxies)), strict=False):
        reply = chat_raw(proxy, {"Helicone-User-Id": f"u{i}"})
        assert reply.parse().choices[0].message.content == REPLY
        sent.append((reply.headers["helicone-id"], f"proxy-{i}"))
    # Feedback and a property for proxy-0's last call, through proxy-2, the moment it returned
    # (proxy-0's writer may not have flushed it yet), and a score through a quiet proxy-1.
    last = sent[-3][0]
    assert api(proxies[2], f"/v1/request/{last}/feedback", {"rating": False}) == 201
    assert api(proxies[2], f"/v1/request/{last}/property", {"key": "reviewed", "value": "no"}, "PUT") == 200
    assert api(proxies[1], f"/v1/request/{sent[0][0]}/score", {"scores": {"accuracy": 7}}) == 201
    assert (
        api(proxies[1], "/v1/request/00000000-0000-4000-8000-000000000000/feedback", {"rating": True}) == 404
    )
    for proxy in proxies:
        assert proxy.stop() == 0, proxy.log()
    rows = pg(postgres_db, "SELECT request_id, proxy_id, user_id, status, cost_usd IS NOT NULL FROM requests")
    assert sorted(rows) == sorted((rid, p, f"u{p[-1]}", 200, True) for rid, p in sent)
    assert pg(postgres_db, "SELECT request_id, rating FROM feedback") == [(last, False)]
    assert pg(postgres_db, "SELECT request_id, name, value FROM scores") == [(sent[0][0], "accuracy", 7)]
    assert pg(postgres_db, "SELECT properties->>'reviewed' FROM requests WHERE request_id = %s", [last]) == [
        ("no",)
    ]


def test_postgres_stopped_and_restarted_costs_no_call_and_no_row(
    logged_fleet: Callable[..., list[Proxy]],
) -> None:
    server = PostgresServer().start()
    try:
        url = server.create_database("llmtap")
        proxies = logged_fleet(2, url)
        ids = [chat_raw(p, {}).headers["helicone-id"] for p in proxies]
        server.stop()
        ids += [chat_raw(p, {}).headers["helicone-id"] for p in proxies for _ in range(3)]
        server.start()
        ids += [chat_raw(p, {}).headers["helicone-id"] for p in proxies]
        for proxy in proxies:
            assert proxy.stop() == 0, proxy.log()
        assert sorted(pg(url, "SELECT request_id FROM requests")) == sorted((i,) for i in ids)
        assert any("cannot write to postgresql://postgres@127.0.0.1" in p.log() for p in proxies)
    finally:
        server.remove()
