"""The fleet's Redis scripts against a real redis-server: atomic, all-or-nothing, exact levels."""

from __future__ import annotations

import multiprocessing

import pytest

from llmtap.fleet import redisstate
from llmtap.policy.redact import redact_url
from tests.servers import RedisServer

from .samples import CACHE_ENTRY as ENTRY


def run(client, script: str, args: redisstate.Args):
    keys, argv = args
    return client.register_script(script)(keys=keys, args=argv)


def decide(client, slots: list[str], drawn: int, buckets: list[tuple[str, float, int, str]]):
    reply = run(client, redisstate.DECIDE, redisstate.decide_args(slots, drawn, buckets))
    return redisstate.read_decision(reply)


def level(client, key: str) -> float:
    return float(client.hget(key, "tokens"))


def test_an_entry_round_trips_through_a_hash() -> None:
    fields = redisstate.entry_fields(ENTRY)
    assert "cache_read_tokens" not in fields  # None is an absent field
    stored = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}
    back = redisstate.entry_from(stored)
    assert back == ENTRY


def test_request_buckets_are_all_or_nothing(redis_server: RedisServer) -> None:
    r = redis_server.client()
    a, b = ("llmtap:v1:rl:a", 3.0, 60, "request"), ("llmtap:v1:rl:b", 1.0, 60, "request")
    first = decide(r, [], 0, [a, b])
    assert first.admitted and first.hit is None
    assert [round(x, 3) for x in first.levels] == [2.0, 0.0]
    second = decide(r, [], 0, [a, b])
    assert not second.admitted
    # b denied the call, so a was not charged either (only refilled by the few ms since)
    assert 2.0 <= level(r, a[0]) < 2.01 and second.levels[0] >= 2.0
    assert r.pttl(a[0]) > 170_000  # 2 windows + 60 s


def test_cents_buckets_admit_while_positive_and_are_charged_after(redis_server: RedisServer) -> None:
    r = redis_server.client()
    cents = ("llmtap:v1:rl:c", 5.0, 3600, "cents")
    assert decide(r, [], 0, [cents]).admitted
    assert not r.exists(cents[0])  # nothing deducted up front for cents
    run(r, redisstate.CHARGE, redisstate.charge_args([(cents[0], 5.0, 3600, 7.5)]))
    assert -2.5 <= level(r, cents[0]) < -2.49  # may go negative, as Helicone's
    assert not decide(r, [], 0, [cents]).admitted


def test_a_full_cache_bucket_is_a_hit_and_charges_no_limit(redis_server: RedisServer) -> None:
    r = redis_server.client()
    slots = redisstate.slot_keys("s1", ["c1:abc/0", "c1:abc/1"])
    limit = ("llmtap:v1:rl:x", 1.0, 60, "request")
    put = redisstate.put_args(slots, ENTRY, 60_000)
    assert run(r, redisstate.PUT, put) == 1
    half = decide(r, slots, 1, [limit])  # one slot of two: a miss, and the limit is charged
    assert half.hit is None and half.admitted
    assert run(r, redisstate.PUT, put) == 2
    assert run(r, redisstate.PUT, put) == 0  # full
    hit = decide(r, slots, 1, [limit])
    assert hit.hit == (1, ENTRY)
    assert r.hget(slots[1], "hits") == b"1"
    assert 0 <= level(r, limit[0]) < 0.01  # the hit took nothing
    assert 59_000 < r.pttl(slots[0]) <= 60_000


def _race(url: str, key: str, n: int, out) -> None:
    import redis

    client = redis.Redis.from_url(url)
    won = 0
    for _ in range(n):
        won += decide(client, [], 0, [(key, 50.0, 31_536_000, "request")]).admitted
    out.put(won)


def test_processes_racing_on_one_bucket_get_exactly_its_quota(redis_server: RedisServer) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    args = (redis_server.url, "llmtap:v1:rl:race", 40, out)
    procs = [ctx.Process(target=_race, args=args) for _ in range(4)]
    for p in procs:
        p.start()
    won = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sum(won) == 50  # of 160 asks; the year-long window refills 0.0003 in a second


def test_cache_stats_and_clear_by_seed(redis_server: RedisServer) -> None:
    r = redis_server.client()
    for seed, base in (("s1", "c1:a"), ("s1", "c1:b"), ("s2", "c1:a")):
        slots = redisstate.slot_keys(seed, [f"{base}/0"])
        run(r, redisstate.PUT, redisstate.put_args(slots, ENTRY, 60_000))
    r.set("unrelated", "kept")
    cache = redisstate.SyncCache(redis_server.url)
    assert cache.stats() == {"entries": 3, "bytes": 3 * len(ENTRY.body), "hits": 0}
    assert cache.clear("s1") == 2
    assert cache.stats()["entries"] == 1
    assert cache.clear() == 1
    assert r.get("unrelated") == b"kept"
    cache.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@cache.internal:6380/0", "redis://:***@cache.internal:6380/0"),
        ("rediss://app:pw@h/1", "rediss://app:***@h/1"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_logged_urls_hide_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
