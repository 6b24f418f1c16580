from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from llmtap.accounting.entry import Entry
from llmtap.storage.cachestore import CacheStore

from . import samples

HOUR = 3600.0
KEYS = [f"c1:{'a' * 64}/{i}" for i in range(3)]
ONE = KEYS[:1]


class Clock:
    """A settable clock for TTL and LRU order."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def entry(n: int = 0, body: bytes = b"", **fields: object) -> Entry:
    values: dict[str, object] = dict(
        request_id=f"req-{n}", status=200, content_type="application/json", streamed=False,
        body=body or samples.dumps(samples.openai_chat_json()), seed="v1", provider="openai",
        model="gpt-4o-2024-08-06", input_tokens=1200, output_tokens=300, cache_read_tokens=1024,
        cache_write_tokens=0, reasoning_tokens=128, usage_source="response",
        cost_usd=Decimal("0.004720000"), latency_ms=812.5,
    )  # fmt: skip
    values.update(fields)
    return Entry(**values)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_cache(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., CacheStore]]:
    opened: list[CacheStore] = []

    def make(**kwargs: object) -> CacheStore:
        c = CacheStore(tmp_path / "cache.sqlite", clock=clock, **kwargs)  # type: ignore[arg-type]
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


@pytest.fixture
def store(make_cache: Callable[..., CacheStore]) -> CacheStore:
    return make_cache()


def test_round_trip(store: CacheStore, clock: Clock) -> None:
    saved = entry(cost_usd=Decimal("0.000123450"), body=b"\x00\xffbinary\n")
    assert store.put(ONE, saved, HOUR) == 0
    [got] = store.get(ONE)
    assert got == dataclasses.replace(saved, created=clock.now)
    assert got is not None
    assert isinstance(got.cost_usd, Decimal) and str(got.cost_usd) == "0.000123450"
    assert isinstance(got.body, bytes) and got.body == b"\x00\xffbinary\n"


def test_streamed_entry_and_empty_fields(store: CacheStore) -> None:
    stream = entry(streamed=True, body=samples.openai_stream("none"), content_type="text/event-stream")
    bare = Entry("req-9", 201, "application/json", False, b"{}")
    store.put([KEYS[0]], stream, HOUR)
    store.put([KEYS[1]], bare, HOUR)
    got = store.get(KEYS[:2])
    assert got[0] is not None and got[0].streamed is True and got[0].body == samples.openai_stream("none")
    assert got[1] is not None and (got[1].cost_usd, got[1].model, got[1].status) == (None, None, 201)


def test_get_keeps_the_order_and_reports_empty_slots(store: CacheStore) -> None:
    store.put(KEYS[1:2], entry(1), HOUR)
    got = store.get(KEYS)
    assert got[0] is None and got[2] is None
    assert got[1] is not None and got[1].request_id == "req-1"
    assert store.get([]) == []


def test_put_fills_the_first_free_slot_then_refuses(store: CacheStore) -> None:
    assert [store.put(KEYS, entry(n), HOUR) for n in range(4)] == [0, 1, 2, None]
    assert [e.request_id for e in store.get(KEYS) if e] == ["req-0", "req-1", "req-2"]


def test_pick_waits_until_the_bucket_is_full(store: CacheStore) -> None:
    assert store.pick(KEYS) is None
    store.put(KEYS, entry(0), HOUR)
    store.put(KEYS, entry(1), HOUR)
    assert store.pick(KEYS) is None, "Helicone: a miss while any slot is empty"
    store.put(KEYS, entry(2), HOUR)
    picks = [store.pick(KEYS) for _ in range(300)]
    assert all(p is not None for p in picks)
    seen = {idx: e.request_id for idx, e in picks}  # type: ignore[misc]
    assert seen == {0: "req-0", 1: "req-1", 2: "req-2"}, "each filled slot comes back, chosen at random"


def test_pick_of_a_single_slot(store: CacheStore) -> None:
    store.put(ONE, entry(0), HOUR)
    picked = store.pick(ONE)
    assert picked is not None and picked[0] == 0 and picked[1].request_id == "req-0"


def test_expired_entries_are_not_served_and_their_slot_is_reused(store: CacheStore, clock: Clock) -> None:
    store.put(KEYS[:2], entry(0), 60)
    store.put(KEYS[:2], entry(1), HOUR)
    clock.now += 59.9
    assert store.pick(KEYS[:2]) is not None
    clock.now += 0.1
    assert store.get(KEYS[:2])[0] is None, "expired at created + ttl"
    assert store.pick(KEYS[:2]) is None
    assert store.stats()["expired"] == 1
    assert store.put(KEYS[:2], entry(2), HOUR) == 0, "the expired slot is free again"
    assert [e.request_id for e in store.get(KEYS[:2]) if e] == ["req-2", "req-1"]
    assert store.stats()["expired"] == 0


def test_touch_counts_hits(store: CacheStore) -> None:
    store.put(KEYS, entry(0), HOUR)
    store.put(KEYS, entry(1), HOUR)
    for _ in range(3):
        store.touch(KEYS[0])
    store.touch(KEYS[1])
    store.touch("c1:missing/0")
    assert store.stats()["hits"] == 4


def test_stats(make_cache: Callable[..., CacheStore], clock: Clock) -> None:
    store = make_cache(max_bytes=10_000)
    assert store.stats() == {"entries": 0, "bytes": 0, "hits": 0, "expired": 0, "max_bytes": 10_000}
    store.put(KEYS, entry(0, body=b"x" * 100), 60)
    store.put(KEYS, entry(1, body=b"y" * 50), HOUR)
    store.touch(KEYS[1])
    clock.now += 120
    assert store.stats() == {"entries": 2, "bytes": 150, "hits": 1, "expired": 1, "max_bytes": 10_000}


def test_size_bound_evicts_the_least_recently_used_first(
    make_cache: Callable[..., CacheStore], clock: Clock
) -> None:
    store = make_cache(max_bytes=1000)
    keys = [f"c1:{n}/0" for n in range(4)]
    for n, k in enumerate(keys[:3]):
        clock.now += 1
        assert store.put([k], entry(n, body=bytes([65 + n]) * 300), HOUR) == 0
    clock.now += 1
    store.touch(keys[0])  # now the oldest use is keys[1]
    clock.now += 1
    store.put([keys[3]], entry(3, body=b"D" * 300), HOUR)  # 1200 bytes > 1000: evict down to 900
    alive = [e.request_id if e else None for e in store.get(keys)]
    assert alive == ["req-0", None, "req-2", "req-3"]
    assert store.stats()["bytes"] == 900


def test_eviction_drops_expired_entries_before_live_ones(
    make_cache: Callable[..., CacheStore], clock: Clock
) -> None:
    store = make_cache(max_bytes=1000)
    store.put(["c1:old/0"], entry(0, body=b"O" * 400), HOUR)
    clock.now += 1
    store.put(["c1:short/0"], entry(1, body=b"S" * 400), 10)
    clock.now += 20
    store.put(["c1:new/0"], entry(2, body=b"N" * 400), HOUR)
    assert [e is not None for e in store.get(["c1:old/0", "c1:new/0"])] == [True, True]
    assert store.stats()["entries"] == 2


def test_clear_all_and_by_seed(store: CacheStore) -> None:
    store.put([KEYS[0]], entry(0, seed="v1"), HOUR)
    store.put([KEYS[1]], entry(1, seed="v2"), HOUR)
    store.put([KEYS[2]], entry(2, seed="v2"), HOUR)
    assert store.clear("nope") == 0
    assert store.clear("v2") == 2
    assert [e.seed if e else None for e in store.get(KEYS)] == ["v1", None, None]
    assert store.clear() == 1
    assert store.stats()["entries"] == 0


def test_two_stores_on_one_file_see_each_other(make_cache: Callable[..., CacheStore]) -> None:
    proxy, cli = make_cache(), make_cache()
    proxy.put(ONE, entry(0), HOUR)
    assert cli.stats()["entries"] == 1
    picked = cli.pick(ONE)
    assert picked is not None and picked[1].request_id == "req-0"
    cli.touch(ONE[0])
    assert proxy.stats()["hits"] == 1
    assert cli.clear() == 1
    assert proxy.get(ONE) == [None]
    assert proxy.put(ONE, entry(1), HOUR) == 0


def test_use_from_two_threads(store: CacheStore) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(tag: str) -> None:
        try:
            barrier.wait(10)
            for n in range(50):
                keys = [f"c1:{tag}{n}/{i}" for i in range(2)]
                assert store.put(keys, entry(n, seed=tag), HOUR) == 0
                assert store.put(keys, entry(n, seed=tag), HOUR) == 1
                picked = store.pick(keys)
                assert picked is not None and picked[1].seed == tag
                store.touch(keys[picked[0]])
        except BaseException as e:  # reported below, from the main thread
            errors.append(e)
        finally:
            store.close()

    threads = [threading.Thread(target=work, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert store.stats()["entries"] == 200
    assert store.stats()["hits"] == 100


def test_both_slots_of_one_bucket_filled_from_two_threads(store: CacheStore) -> None:
    """Two writers racing for one bucket never share a slot (BEGIN IMMEDIATE)."""
    results: list[int | None] = []
    barrier = threading.Barrier(4)

    def work(n: int) -> None:
        barrier.wait(10)
        results.append(store.put(KEYS[:2], entry(n), HOUR))
        store.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results, key=lambda r: -1 if r is None else r) == [None, None, 0, 1]
    assert len({e.request_id for e in store.get(KEYS[:2]) if e}) == 2


def test_file_persists_across_opens(make_cache: Callable[..., CacheStore]) -> None:
    first = make_cache()
    first.put(ONE, entry(0), HOUR)
    first.close()
    assert make_cache().get(ONE)[0] is not None


def test_put_takes_the_preferred_slot_when_it_is_free(store: CacheStore) -> None:
    assert store.put(KEYS, entry(1), 60, prefer=2) == 2
    assert store.put(KEYS, entry(2), 60, prefer=2) == 0, "taken: the first free one"
    assert store.put(KEYS, entry(3), 60, prefer=None) == 1
    assert [e.request_id if e else None for e in store.get(KEYS)] == ["req-2", "req-3", "req-1"]


def test_the_ttl_counts_from_when_the_response_arrived(store: CacheStore, clock: Clock) -> None:
    """The writer saves a response a moment (or, while busy, much) after it arrived."""
    arrived = clock.now
    clock.now += 30
    store.put(ONE, entry(1), 60, since=arrived)
    clock.now = arrived + 59
    assert store.get(ONE) != [None]
    clock.now = arrived + 61
    assert store.get(ONE) == [None]
    store.put(ONE, entry(2), 60, since=clock.now + 100)  # never in the future
    clock.now += 59
    assert store.get(ONE) != [None]
