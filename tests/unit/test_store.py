from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from llmtap import store as store_module
from llmtap.headers import CallMeta
from llmtap.record import Capture
from llmtap.store import Store

from . import samples

# Holds the database file read-write (DuckDB's process lock) until its stdin closes.
HOLD_LOCK = """
import sys, duckdb
conn = duckdb.connect(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
conn.close()
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
        s = Store(str(path), flush_interval=0.05, **kwargs)  # type: ignore[arg-type]
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
    assert isinstance(cost, Decimal) and cost > 0
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
