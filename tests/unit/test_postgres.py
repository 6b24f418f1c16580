"""The writer's Postgres sink and readers, against a real Postgres (tests/servers.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from llmtap.accounting.record import COLUMNS, Capture, Feedback, PropertyUpdate, Score, to_row
from llmtap.policy.redact import redact_url
from llmtap.storage import postgres
from llmtap.storage.query import QueryError, run
from llmtap.storage.writer import Store, annotate_file
from llmtap.wire.helicone import CallMeta
from tests.servers import PostgresServer, free_port

from . import samples


def capture(n: int, **meta: object) -> Capture:
    return samples.capture(meta=CallMeta(request_id=f"req-{n:03d}", user_id="alice", **meta))  # type: ignore[arg-type]


def pg_rows(url: str, sql: str, params: list | None = None) -> list[tuple]:
    with postgres.connect(url, read_only=True) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def make_store() -> Iterator[Callable[..., Store]]:
    stores: list[Store] = []

    def make(target: str, **kwargs: float) -> Store:
        s = Store(target, **{"flush_interval": 0.05, **kwargs})  # type: ignore[arg-type]
        stores.append(s)
        return s

    yield make
    for s in stores:
        s.close(timeout=10)


def test_rows_are_the_rows_duckdb_gets(
    make_store: Callable[..., Store], postgres_db: str, tmp_path: Path
) -> None:
    """Every column of a call reads back from Postgres exactly as from the DuckDB file."""
    file = tmp_path / "llmtap.duckdb"
    for target in (postgres_db, str(file)):
        s = make_store(target)
        s.start()
        for n in range(3):
            assert s.submit(capture(n, properties={"feature": "search"}))
        s.close()
        assert (s.stats.written, s.stats.write_errors) == (3, 0)
    cols = ", ".join(COLUMNS)
    with duckdb.connect(str(file), read_only=True) as conn:
        expected = conn.execute(f"SELECT {cols} FROM requests ORDER BY request_id").fetchall()
    got = pg_rows(postgres_db, f"SELECT {cols} FROM requests ORDER BY request_id")
    json_cols = [k for k, name in enumerate(COLUMNS) if name in ("properties", "request_headers", "attempts")]
    normal = [
        tuple(postgres_json(v) if k in json_cols else v for k, v in enumerate(row)) for row in got
    ]  # jsonb normalises spacing: compare parsed
    assert normal == [
        tuple(postgres_json(v) if k in json_cols else v for k, v in enumerate(row)) for row in expected
    ]
    assert got[0][COLUMNS.index("cost_usd")] == samples.openai_cost()


def postgres_json(value: str | None) -> object:
    import json

    return None if value is None else json.loads(value)


def test_a_batch_lands_once_when_a_committed_batch_is_retried(postgres_db: str) -> None:
    """The COMMIT reached the server but its answer was lost: the retry skips what is there."""
    sink = postgres.PostgresSink(postgres_db)
    rows = [to_row(capture(n)) for n in range(3)]
    sink.write(rows[:2], [])
    sink.write(rows, [Feedback("req-000", True, datetime.now(UTC))])
    sink.close()
    assert pg_rows(postgres_db, "SELECT request_id FROM requests ORDER BY 1") == [
        ("req-000",), ("req-001",), ("req-002",)
    ]  # fmt: skip
    assert pg_rows(postgres_db, "SELECT request_id, rating FROM feedback") == [("req-000", True)]


def test_a_month_made_in_a_failed_batch_is_made_again(postgres_db: str) -> None:
    """A batch that creates its month's partition and then fails rolls the partition back: the
    next batch for that month creates it again (it used to be taken as made, and every later batch
    of the month failed with "no partition of relation requests found for row")."""
    import psycopg

    sink = postgres.PostgresSink(postgres_db)
    at = datetime(2025, 7, 1, 8, tzinfo=UTC).timestamp()
    rows = [to_row(samples.capture(meta=CallMeta(request_id=f"july-{n}"), started=at + n)) for n in range(3)]
    broken = list(rows[0])
    broken[COLUMNS.index("source")] = None  # NOT NULL
    with pytest.raises(psycopg.errors.NotNullViolation):
        sink.write([tuple(broken)], [])
    sink.write(rows[:2], [])
    sink.write([rows[2], rows[2]], [])  # the same call twice: the UniqueViolation path
    sink.close()
    assert pg_rows(postgres_db, "SELECT request_id FROM requests ORDER BY 1") == [
        ("july-0",), ("july-1",), ("july-2",)
    ]  # fmt: skip


def test_months_get_partitions_and_nul_characters_survive(postgres_db: str) -> None:
    sink = postgres.PostgresSink(postgres_db)
    old = to_row(
        samples.capture(
            meta=CallMeta(request_id="old"), started=datetime(2025, 12, 31, 23, 59, tzinfo=UTC).timestamp()
        )
    )
    new = list(to_row(capture(1)))
    new[COLUMNS.index("response_body")] = "a\x00b"
    new[COLUMNS.index("properties")] = '{"k": "x\\u0000y"}'
    sink.write([old, tuple(new)], [])
    sink.close()
    at = datetime.fromtimestamp(samples.STARTED, UTC)
    this, after = (at.year, at.month), (at.year + at.month // 12, at.month % 12 + 1)
    names = {f"requests_y{y:04d}m{m:02d}" for y, m in [(2025, 12), (2026, 1), this, after]}
    got = pg_rows(postgres_db, "SELECT relname FROM pg_class WHERE relispartition AND relkind = 'r'")
    assert {r[0] for r in got} == names
    body, props = pg_rows(
        postgres_db, "SELECT response_body, properties->>'k' FROM requests WHERE request_id = 'req-001'"
    )[0]
    assert (body, props) == ("a\ufffdb", "x\ufffdy")


def test_writers_starting_together_migrate_once(postgres_db: str) -> None:
    """Four writers at once: each migration is applied exactly once, nobody fails."""
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            with postgres.connect(postgres_db) as conn:
                conn.autocommit = True
                results.append(postgres.migrate(conn))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [[], [], [], [name for name, _ in postgres.MIGRATIONS]]
    assert pg_rows(postgres_db, "SELECT name FROM _llmtap_migrations ORDER BY 1") == [
        ("p001_requests",), ("p002_report_support",), ("p003_views",), ("p004_rollup",),
        ("p005_rollup_key",), ("p006_read_indexes",), ("p007_rollup_by_day",), ("p008_errors_by_day",),
        ("p009_latency_by_day",), ("p010_annotated_calls",),
    ]  # fmt: skip


def test_annotations_and_the_unknown_id_check(postgres_db: str) -> None:
    sink = postgres.PostgresSink(postgres_db)
    sink.write([to_row(capture(1, properties={"team": "a"}))], [])
    sink.close()
    now = datetime.now(UTC)
    annotate_file(
        postgres_db,
        "req-001",
        [Score("req-001", "accuracy", 92, now), PropertyUpdate("req-001", "reviewed", "yes")],
    )
    with pytest.raises(QueryError, match="no request with id 'nope' in postgresql://postgres@127"):
        annotate_file(postgres_db, "nope", [Feedback("nope", True, now)])
    assert pg_rows(postgres_db, "SELECT name, value FROM scores") == [("accuracy", 92)]
    assert pg_rows(postgres_db, "SELECT properties::text FROM requests") == [
        ('{"team": "a", "reviewed": "yes"}',)
    ]


def test_llmtap_sql_reads_postgres(postgres_db: str) -> None:
    sink = postgres.PostgresSink(postgres_db)
    sink.write([to_row(capture(n)) for n in range(2)], [])
    sink.close()
    sql = "SELECT count(*) AS calls, sum(cost_usd) AS cost FROM requests WHERE user_id = $u"
    assert run(postgres_db, sql, {"u": "alice"}) == (["calls", "cost"], [(2, 2 * samples.openai_cost())])
    out = subprocess.run(
        [str(Path(sys.executable).parent / "llmtap"), "sql", "--db", postgres_db, "--format", "csv",
         "SELECT request_id, properties FROM requests WHERE request_id LIKE 'req-%' ORDER BY 1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == "request_id,properties\nreq-000,{}\nreq-001,{}\n"
    with pytest.raises(QueryError, match="read-only transaction"):
        run(postgres_db, "DELETE FROM requests")


def test_a_password_never_shows_and_a_dead_server_is_a_clear_error() -> None:
    url = f"postgresql://llmtap:s3cret@127.0.0.1:{free_port()}/x"
    assert redact_url(url) == f"postgresql://llmtap:***@{url.split('@')[1]}"
    with pytest.raises(QueryError) as info:
        run(url, "SELECT 1")
    assert "s3cret" not in str(info.value) and "127.0.0.1" in str(info.value)


def test_the_writer_keeps_rows_while_postgres_is_down_and_writes_them_when_back(
    make_store: Callable[..., Store],
) -> None:
    server = PostgresServer().start()
    try:
        url = server.create_database("down")
        s = make_store(url, flush_interval=0.05)
        s.start()
        s.submit(capture(0))
        wait(lambda: s.stats.written == 1)
        server.stop()
        for n in range(1, 4):
            s.submit(capture(n))
        wait(lambda: s.stats.write_errors >= 1)
        assert s.stats.written == 1
        server.start()
        wait(lambda: s.stats.written == 4)
        s.close()
        assert pg_rows(url, "SELECT count(*), count(DISTINCT request_id) FROM requests") == [(4, 4)]
        assert s.stats.dropped == 0
    finally:
        server.remove()


def wait(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
