from __future__ import annotations

import gzip
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from llmtap.accounting.entry import Entry
from llmtap.accounting.record import COLUMNS, Capture, Feedback, PropertyUpdate, Score, to_row
from llmtap.policy import cache_keys
from llmtap.policy.cache_keys import Lookup
from llmtap.policy.values import CachePolicy
from llmtap.storage import writer as store_module
from llmtap.storage.cachestore import CacheStore
from llmtap.storage.writer import Store
from llmtap.wire.helicone import CallMeta

from . import samples

# Holds the database file read-write (DuckDB's process lock) until its stdin closes.
HOLD_LOCK = """
import sys, duckdb
conn = duckdb.connect(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
conn.close()
"""


# Flushes 500 rows with 20 KB bodies at a time, in two appender chunks, until killed.
FLUSH_FOREVER = """
import sys
sys.path.insert(0, sys.argv[2])
from llmtap.wire.helicone import CallMeta
from llmtap.accounting.record import COLUMNS, to_row
from llmtap.storage.writer import Store
from tests.unit import samples
base = list(to_row(samples.capture(meta=CallMeta(request_id="x"))))
base[COLUMNS.index("request_body")] = "x" * 20_000
store = Store(sys.argv[1], batch_size=250)
assert store.flush()
print("ready", flush=True)
n = 0
while True:
    for _ in range(500):
        base[0] = f"{sys.argv[3]}-{n:07d}"
        store._pending.append(tuple(base))
        n += 1
    assert store.flush()
"""


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def rows(path: Path, sql: str = "SELECT request_id FROM requests ORDER BY request_id") -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def capture(n: int) -> Capture:
    return samples.capture(meta=CallMeta(request_id=f"req-{n:03d}", user_id="alice"))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "llmtap.duckdb"


@pytest.fixture
def make_store() -> Iterator[Callable[..., Store]]:
    stores: list[Store] = []

    def make(path: Path | str, **kwargs: float) -> Store:
        s = Store(str(path), **{"flush_interval": 0.05, **kwargs})  # type: ignore[arg-type]
        stores.append(s)
        return s

    yield make
    for s in stores:
        s.close(timeout=10)


@pytest.fixture
def lock_holder(db_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(db_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(10) == 0


def test_submit_then_close_writes_every_row(make_store: Callable[..., Store], db_path: Path) -> None:
    s = make_store(db_path)
    s.start()
    assert all(s.submit(capture(n)) for n in range(3))
    s.close()

    assert rows(db_path) == [("req-000",), ("req-001",), ("req-002",)]
    sql = "SELECT model, input_tokens, output_tokens, cost_usd, user_id, usage_source FROM requests LIMIT 1"
    model, n_in, n_out, cost, user, source = rows(db_path, sql)[0]
    assert (model, n_in, n_out, user, source) == ("gpt-4o-2024-08-06", 1200, 300, "alice", "response")
    assert cost == samples.openai_cost()
    assert (s.stats.queued, s.stats.written, s.stats.dropped, s.stats.write_errors) == (3, 3, 0, 0)


def test_rows_are_flushed_while_running(make_store: Callable[..., Store], db_path: Path) -> None:
    s = make_store(db_path)
    s.start()
    s.submit(capture(1))
    wait_for(lambda: s.stats.written == 1, "the periodic flush")
    assert rows(db_path) == [("req-001",)], "the file is not held between flushes"


def test_full_queue_drops_and_counts(
    make_store: Callable[..., Store], db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = make_store(db_path, queue_size=2)  # writer not started: nothing drains the queue
    assert [s.submit(capture(n)) for n in range(5)] == [True, True, False, False, False]
    assert (s.stats.queued, s.stats.dropped) == (2, 3)
    assert "write queue full, dropped a record (1 so far)" in caplog.text
    s.start()
    s.close()
    assert rows(db_path) == [("req-000",), ("req-001",)]


def test_locked_file_keeps_rows_until_the_lock_is_released(
    make_store: Callable[..., Store], db_path: Path, lock_holder: subprocess.Popen[str]
) -> None:
    s = make_store(db_path)
    s.start()
    assert s.submit(capture(1)) and s.submit(capture(2))
    wait_for(lambda: s.stats.write_errors >= 2, "flushes against the locked file")
    assert s.submit(capture(3)), "submit works while the file is locked"
    assert s.stats.written == 0

    release(lock_holder)
    wait_for(lambda: s.stats.written == 3, "the retried flush")
    s.close()
    assert rows(db_path) == [("req-001",), ("req-002",), ("req-003",)]
    assert s.stats.dropped == 0


def test_flush_returns_false_on_a_locked_file(db_path: Path, lock_holder: subprocess.Popen[str]) -> None:
    s = Store(str(db_path))
    s._convert(capture(1))
    assert s.flush() is False
    assert s.stats.write_errors == 1
    release(lock_holder)
    assert s.flush() is True
    assert rows(db_path) == [("req-001",)]


@pytest.mark.parametrize(
    "make_path",
    [
        # a path under a regular file
        lambda tmp: tmp / "not-a-dir" / "llmtap.duckdb",
        # a directory where the database file should be
        lambda tmp: tmp,
    ],
)
def test_unwritable_path_counts_errors_and_never_blocks(
    make_store: Callable[..., Store], tmp_path: Path, make_path: Callable[[Path], Path]
) -> None:
    (tmp_path / "not-a-dir").write_text("a file")
    s = make_store(make_path(tmp_path), queue_size=2)
    s.start()
    results = [s.submit(capture(n)) for n in range(10)]
    wait_for(lambda: s.stats.write_errors >= 1, "a failed flush")
    results += [s.submit(capture(n)) for n in range(10, 12)]
    assert all(isinstance(r, bool) for r in results)
    s.close()
    # at most queue_size rows wait in memory, the rest are dropped at once; the ones still
    # waiting are counted as dropped at shutdown, when there is no file to write them to
    assert (s.stats.written, s.stats.dropped) == (0, 12)


def test_accounting_failure_still_writes_a_bare_row(
    make_store: Callable[..., Store], db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(c: object) -> tuple:
        raise KeyError("usage")

    monkeypatch.setattr(store_module, "to_row", broken)
    s = make_store(db_path)
    s.start()
    s.submit(capture(1))
    s.close()
    sql = "SELECT request_id, host, status, input_tokens, cost_usd, cost_note, error FROM requests"
    assert rows(db_path, sql) == [
        (
            "req-001",
            "api.openai.com",
            200,
            None,
            None,
            "accounting failed",
            "llmtap accounting failed: KeyError('usage')",
        )
    ]
    assert s.stats.row_errors == 1


def test_close_without_start_is_a_no_op(db_path: Path) -> None:
    Store(str(db_path)).close()
    assert not db_path.exists()


def test_a_deleted_database_file_is_recreated(make_store: Callable[..., Store], db_path: Path) -> None:
    s = make_store(db_path)
    s.start()
    s.submit(capture(1))
    wait_for(lambda: s.stats.written == 1, "the first flush")
    db_path.unlink()
    s.submit(capture(2))
    s.close()
    assert rows(db_path) == [("req-002",)]


def test_close_while_the_file_is_locked_waits_for_the_lock(
    make_store: Callable[..., Store], db_path: Path, lock_holder: subprocess.Popen[str]
) -> None:
    s = make_store(db_path)
    s.start()
    s.submit(capture(1))
    wait_for(lambda: s.stats.write_errors >= 1, "a flush against the locked file")
    errors = s.stats.write_errors
    closing = threading.Thread(target=s.close, kwargs={"timeout": 10})
    closing.start()
    wait_for(lambda: s.stats.write_errors > errors or not closing.is_alive(), "the final flush attempt")
    release(lock_holder)
    closing.join(15)
    assert s.stats.written == 1
    assert rows(db_path) == [("req-001",)]


# -- the response cache side --

CACHE_HEADERS = {"authorization": "Bearer sk-test", "helicone-cache-enabled": "true"}


DEFAULT_POLICY = CachePolicy()


def lookup(policy: CachePolicy = DEFAULT_POLICY, body: bytes = samples.dumps(samples.CHAT_REQUEST)) -> Lookup:
    return cache_keys.lookup_for(
        policy, "POST", "api.openai.com", "/v1/chat/completions", body, CACHE_HEADERS
    )


@pytest.fixture
def cache_store(tmp_path: Path) -> Iterator[CacheStore]:
    c = CacheStore(tmp_path / "cache.sqlite")
    yield c
    c.close()


def just_now(**overrides: object) -> Capture:
    """A call that has just finished: a cache entry's TTL counts from its end."""
    return samples.capture(**{"started": time.time() - 1, **overrides})


def run_through(
    make_store: Callable[..., Store], db_path: Path, cache_store: CacheStore, *caps: Capture
) -> None:
    s = make_store(db_path, cache=cache_store)
    s.start()
    for c in caps:
        assert s.submit(c)
    s.close()
    assert s.stats.written == len(caps)


def test_a_2xx_capture_is_saved_with_the_rows_tokens_and_cost(
    make_store: Callable[..., Store], db_path: Path, cache_store: CacheStore
) -> None:
    save = lookup(CachePolicy(seed="v1", bucket_max_size=2))
    c = just_now(cache_save=save, cache_status="MISS", content_type="application/json")
    run_through(make_store, db_path, cache_store, c)

    saved, empty = cache_store.get(save.keys())
    assert empty is None, "the first free slot"
    assert saved is not None
    sql = (
        "SELECT request_id, provider, model, input_tokens, output_tokens, cache_read_tokens,"
        " cache_write_tokens, reasoning_tokens, usage_source, cost_usd, latency_ms FROM requests"
    )
    [row] = rows(db_path, sql)
    assert row[9] == samples.openai_cost(at=datetime.fromtimestamp(c.started, UTC))
    assert (
        saved.request_id, saved.provider, saved.model, saved.input_tokens, saved.output_tokens,
        saved.cache_read_tokens, saved.cache_write_tokens, saved.reasoning_tokens, saved.usage_source,
        saved.cost_usd, saved.latency_ms,
    ) == row  # fmt: skip
    assert (saved.status, saved.content_type, saved.streamed, saved.seed) == (
        200,
        "application/json",
        False,
        "v1",
    )
    assert saved.body == samples.dumps(samples.openai_chat_json())


@pytest.mark.parametrize(
    "overrides",
    [
        # not 2xx
        dict(status=429, response_body=b'{"error":{"message":"slow down"}}'),
        dict(status=500),
        dict(status=304),
        # no response at all
        dict(status=None, response_body=b"", error="Connection refused"),
        # incomplete
        dict(truncated=True),
        dict(error="stream ended early"),
        # a TTL of 0 (Cache-Control: max-age=0)
        dict(cache_save=lookup(CachePolicy(ttl=0.0))),
        # nothing to save into
        dict(cache_save=None),
    ],
)
def test_what_is_not_saved(
    make_store: Callable[..., Store], db_path: Path, cache_store: CacheStore, overrides: dict[str, object]
) -> None:
    values: dict[str, object] = {"cache_save": lookup(), **overrides}
    run_through(make_store, db_path, cache_store, just_now(**values))
    assert cache_store.stats()["entries"] == 0
    assert len(rows(db_path)) == 1, "the call is still logged"


def test_a_2xx_that_is_not_200_is_saved(
    make_store: Callable[..., Store], db_path: Path, cache_store: CacheStore
) -> None:
    run_through(make_store, db_path, cache_store, just_now(status=201, cache_save=lookup()))
    [saved] = cache_store.get(lookup().keys())
    assert saved is not None and saved.status == 201


def test_a_stream_is_saved_as_the_client_saw_it(
    make_store: Callable[..., Store], db_path: Path, cache_store: CacheStore
) -> None:
    body = samples.dumps(samples.STREAM_REQUEST)
    save = lookup(body=body)
    c = just_now(
        request_body=body, response_body=samples.openai_stream("final"), streamed=True, strip_usage=True,
        content_type="text/event-stream", cache_save=save,
    )  # fmt: skip
    run_through(make_store, db_path, cache_store, c)
    [saved] = cache_store.get(save.keys())
    assert saved is not None
    assert saved.body == samples.openai_stream("none")
    assert b'"choices":[]' not in saved.body and b',"usage":null' not in saved.body
    assert (saved.streamed, saved.content_type) == (True, "text/event-stream")
    assert (saved.input_tokens, saved.output_tokens, saved.usage_source) == (19, 3, "response")
    assert rows(db_path, "SELECT response_body FROM requests") == [(samples.openai_stream("final").decode(),)]


def test_a_stream_the_client_asked_usage_for_is_saved_unchanged(
    make_store: Callable[..., Store], db_path: Path, cache_store: CacheStore
) -> None:
    c = just_now(
        response_body=samples.openai_stream("final"), streamed=True, strip_usage=False,
        content_type="text/event-stream", cache_save=lookup(),
    )  # fmt: skip
    run_through(make_store, db_path, cache_store, c)
    [saved] = cache_store.get(lookup().keys())
    assert saved is not None and saved.body == samples.openai_stream("final")


def test_a_gzip_response_is_saved_decoded(
    make_store: Callable[..., Store], db_path: Path, cache_store: CacheStore
) -> None:
    plain = samples.dumps(samples.openai_chat_json())
    c = just_now(response_body=gzip.compress(plain), content_encoding="gzip", cache_save=lookup())
    run_through(make_store, db_path, cache_store, c)
    [saved] = cache_store.get(lookup().keys())
    assert saved is not None and saved.body == plain


def test_a_hit_counts_and_saves_nothing(
    make_store: Callable[..., Store], db_path: Path, cache_store: CacheStore
) -> None:
    key = lookup().keys()[0]
    original = Entry("req-original", 200, "application/json", False, b"{}", cost_usd=Decimal("0.01"))
    cache_store.put([key], original, 3600)
    hit = samples.capture(hit=original, hit_key=key, cache_status="HIT")
    run_through(make_store, db_path, cache_store, hit, hit)
    assert cache_store.stats()["hits"] == 2
    assert cache_store.stats()["entries"] == 1
    assert rows(db_path, "SELECT cache_status, cache_reference_id, cost_usd FROM requests") == [
        ("HIT", "req-original", Decimal(0)),
        ("HIT", "req-original", Decimal(0)),
    ]


def test_a_broken_cache_never_loses_the_row(
    make_store: Callable[..., Store],
    db_path: Path,
    cache_store: CacheStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(cache_store, "put", broken)
    run_through(make_store, db_path, cache_store, just_now(cache_save=lookup()))
    assert rows(db_path) == [("0b9e5f2a-8d63-4c1e-9f0a-5a3c7d2e1b44",)]
    assert "could not update the cache for 0b9e5f2a-8d63-4c1e-9f0a-5a3c7d2e1b44" in caplog.text


def test_costs_are_stored_exactly_whatever_their_notation(db_path: Path) -> None:
    """The appender gets costs as text; a tiny or zero Decimal prints as 1.95E-7 / 0E-9."""
    s = Store(str(db_path))
    cost, saved = COLUMNS.index("cost_usd"), COLUMNS.index("cost_saved_usd")
    base = list(to_row(capture(1)))
    for n, (c, v) in enumerate([(Decimal("1.95E-7"), Decimal("0E-9")), (Decimal("123.456789012"), None)]):
        row = list(base)
        row[0], row[cost], row[saved] = f"r{n}", c, v
        s._pending.append(tuple(row))
    assert s.flush()
    got = rows(db_path, "SELECT cost_usd::VARCHAR, cost_saved_usd::VARCHAR FROM requests ORDER BY request_id")
    assert got == [("0.000000195", "0.000000000"), ("123.456789012", None)]


def test_full_batches_leave_merging_row_groups_to_a_later_smaller_flush(db_path: Path) -> None:
    """Under load (full batches) each flush adds its own row group: merging them on every commit
    rewrites the growing last group again and again. The first flush that is not full merges them."""
    s = Store(str(db_path), batch_size=100)
    base = to_row(capture(1))
    sql = "SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('requests')"

    def add(n: int) -> None:
        start = len(rows(db_path)) if db_path.exists() else 0
        s._pending.extend((f"r{start + k:05d}", *base[1:]) for k in range(n))
        assert s.flush()

    for _ in range(3):
        add(100)
    assert rows(db_path, sql) == [(3,)]
    add(10)
    assert rows(db_path, sql) == [(1,)]
    assert len(rows(db_path)) == 310


def test_a_kill_during_a_write_leaves_whole_batches(db_path: Path) -> None:
    """Every commit is a checkpoint straight into the file (no WAL): killed at any moment, the
    file opens and holds whole flushes (500 rows, appended in two chunks), each row once."""
    timing = random.Random(5)
    root = str(Path(__file__).resolve().parents[2])
    for attempt in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", FLUSH_FOREVER, str(db_path), root, f"run{attempt}"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(timing.uniform(0.1, 0.8))
        proc.kill()
        proc.wait(10)
        total, distinct = rows(db_path, "SELECT count(*), count(DISTINCT request_id) FROM requests")[0]
        assert total == distinct and total % 500 == 0
    assert total > 0


def test_a_hit_from_the_proxys_memory_gets_the_saved_originals_tokens(
    make_store: Callable[..., Store], db_path: Path, cache_store: CacheStore
) -> None:
    """The proxy answered the hit before the writer saved the original: the hit carries no tokens;
    the writer converts the original first (one queue, in order) and reads them from its entry."""
    save = lookup()
    original = just_now(cache_save=save, cache_status="MISS", cache_slot=0)
    unsaved = Entry(original.meta.request_id, 200, "application/json", False, b"{}")
    hit = samples.capture(
        meta=CallMeta(request_id="req-hit"), hit=unsaved, hit_key=save.keys()[0], hit_fresh=True,
        cache_status="HIT",
    )  # fmt: skip
    run_through(make_store, db_path, cache_store, original, hit)
    sql = (
        "SELECT request_id, cache_status, input_tokens, output_tokens, cache_read_tokens, reasoning_tokens,"
        " cost_usd, cost_saved_usd, cache_reference_id, latency_saved_ms FROM requests ORDER BY request_id"
    )
    first, second = rows(db_path, sql)
    assert first[:6] == (original.meta.request_id, "MISS", 1200, 300, 1024, 128)
    assert second[:6] == ("req-hit", "HIT", 1200, 300, 1024, 128)
    assert second[6:] == (Decimal(0), first[6], original.meta.request_id, 812.5)
    assert cache_store.stats()["hits"] == 1


def test_annotations_on_a_quiet_writer_are_flushed_without_a_call(
    make_store: Callable[..., Store], db_path: Path
) -> None:
    """Feedback minutes after the call, with no other traffic: stored within a flush interval."""
    s = make_store(db_path)
    s.start()
    s.submit(capture(1))
    wait_for(lambda: s.stats.written == 1, "the call's row")
    at = samples.datetime(2025, 6, 1, 12, 5, tzinfo=samples.UTC)
    for note in (Feedback("req-001", True, at), Score("req-001", "accuracy", 92, at),
                 PropertyUpdate("req-001", "reviewed", "yes")):  # fmt: skip
        assert s.submit(note)  # type: ignore[arg-type]

    def stored() -> bool:
        try:
            return rows(db_path, "SELECT count(*) FROM feedback") == [(1,)]
        except duckdb.Error:  # this process's writer has the file attached right now
            return False

    wait_for(stored, "the feedback row", timeout=5)
    assert rows(db_path, "SELECT request_id, name, value FROM scores") == [("req-001", "accuracy", 92)]
    assert rows(db_path, "SELECT properties->>'reviewed' FROM requests") == [("yes",)]


def test_annotations_queued_at_shutdown_are_stored(make_store: Callable[..., Store], db_path: Path) -> None:
    s = make_store(db_path, flush_interval=3600)
    s.start()
    s.submit(capture(1))
    s.close()
    s = make_store(db_path, flush_interval=3600)
    s.start()
    s.submit(Feedback("req-001", False, samples.datetime.now(samples.UTC)))  # type: ignore[arg-type]
    s.close()
    assert rows(db_path, "SELECT request_id, rating FROM feedback") == [("req-001", False)]
