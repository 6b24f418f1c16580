from __future__ import annotations

import tracemalloc
import uuid

from llmtap.api.handlers import RecentIds, Service


def service(size: int) -> Service:
    s = Service(submit=lambda item: True, db_path=lambda: "unused.duckdb", extra_providers=dict,
                store_limit=lambda: 1000)  # fmt: skip
    s.keep_recent(size)
    return s


def test_remembers_the_last_ids_only() -> None:
    s = service(3)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for i in ids:
        s.remember(i)
    assert [i in s.recent for i in ids] == [False, False, True, True, True]
    assert str(uuid.uuid4()) not in s.recent
    assert "not-a-uuid" not in s.recent


def test_a_match_must_be_a_whole_slot() -> None:
    recent = RecentIds(4)
    a, b = uuid.uuid4(), uuid.uuid4()
    recent.add(str(a))
    recent.add(str(b))
    straddling = uuid.UUID(bytes=a.bytes[8:] + b.bytes[:8])
    assert str(a) in recent and str(b) in recent and str(straddling) not in recent
    assert str(uuid.UUID(int=0)) not in recent, "empty slots are not ids"


def test_memory_does_not_grow_with_traffic() -> None:
    s = service(20_000)
    s.remember(str(uuid.uuid4()))
    ids = [str(uuid.uuid4()) for _ in range(50_000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in ids:
        s.remember(i)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 10_000, f"{grown} bytes for 50k ids"
    assert ids[-1] in s.recent and ids[-20_000] in s.recent and ids[-20_001] not in s.recent
