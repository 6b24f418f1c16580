from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal as D

import duckdb
import pytest

from llmtap.accounting.record import COLUMNS, TYPES
from llmtap.storage import migrations
from llmtap.storage.migrations import MIGRATIONS, applied, migrate, migration, pending

EXPECTED = {
    "request_id": "VARCHAR",
    "created_at": "TIMESTAMP WITH TIME ZONE",
    "source": "VARCHAR",
    "provider": "VARCHAR",
    "api": "VARCHAR",
    "endpoint": "VARCHAR",
    "host": "VARCHAR",
    "method": "VARCHAR",
    "path": "VARCHAR",
    "model": "VARCHAR",
    "requested_model": "VARCHAR",
    "status": "INTEGER",
    "streamed": "BOOLEAN",
    "latency_ms": "DOUBLE",
    "ttft_ms": "DOUBLE",
    "input_tokens": "BIGINT",
    "output_tokens": "BIGINT",
    "cache_read_tokens": "BIGINT",
    "cache_write_tokens": "BIGINT",
    "reasoning_tokens": "BIGINT",
    "usage_source": "VARCHAR",
    "cost_usd": "DECIMAL(18,9)",
    "cost_note": "VARCHAR",
    "prices_version": "VARCHAR",
    "user_id": "VARCHAR",
    "session_id": "VARCHAR",
    "session_path": "VARCHAR",
    "session_name": "VARCHAR",
    "properties": "JSON",
    "request_headers": "JSON",
    "request_body": "VARCHAR",
    "response_body": "VARCHAR",
    "error": "VARCHAR",
    # m002
    "cache_status": "VARCHAR",
    "cache_reference_id": "VARCHAR",
    "cost_saved_usd": "DECIMAL(18,9)",
    # m003
    "rate_limited": "BOOLEAN",
    "retries": "INTEGER",
    "attempts": "JSON",
    "fallback_index": "INTEGER",
    "latency_saved_ms": "DOUBLE",
    # m008
    "proxy_id": "VARCHAR",
    "rate_limit_store": "VARCHAR",
}


@pytest.fixture
def db() -> Iterator[duckdb.DuckDBPyConnection]:
    conn = duckdb.connect(":memory:")
    yield conn
    conn.close()


def columns(conn: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_name = ? ORDER BY ordinal_position",
        [table],
    ).fetchall()
    return dict(rows)


def test_migrate_blank(db: duckdb.DuckDBPyConnection) -> None:
    names = [fn.__name__ for fn in MIGRATIONS]
    assert pending(db) == MIGRATIONS
    assert migrate(db) == names
    assert columns(db, "requests") == EXPECTED
    assert columns(db, "_llmtap_migrations") == {"name": "VARCHAR", "applied_at": "TIMESTAMP WITH TIME ZONE"}
    assert columns(db, "feedback") == {
        "request_id": "VARCHAR", "rating": "BOOLEAN", "created_at": "TIMESTAMP WITH TIME ZONE"
    }  # fmt: skip
    assert columns(db, "scores") == {
        "request_id": "VARCHAR", "name": "VARCHAR", "value": "BIGINT",
        "created_at": "TIMESTAMP WITH TIME ZONE",
    }  # fmt: skip
    assert applied(db) == names
    assert pending(db) == []


def test_schema_matches_the_row_shape() -> None:
    assert tuple(EXPECTED) == COLUMNS
    spelled = tuple(t.replace("TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE") for t in TYPES)
    assert tuple(EXPECTED.values()) == spelled


def test_upgrade_from_m001_keeps_rows(db: duckdb.DuckDBPyConnection) -> None:
    migrations.m001_requests(db)
    db.execute("CREATE TABLE _llmtap_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)")
    db.execute("INSERT INTO _llmtap_migrations VALUES ('m001_requests', now())")
    db.execute("INSERT INTO requests (request_id, created_at) VALUES ('old', now())")
    assert migrate(db) == [fn.__name__ for fn in MIGRATIONS[1:]]
    assert columns(db, "requests") == EXPECTED
    assert db.execute("SELECT request_id, cache_status FROM requests").fetchall() == [("old", None)]


def test_m006_backfills_hits_from_their_originals(db: duckdb.DuckDBPyConnection) -> None:
    """Hits written before m006 get their original's latency; cache_savings keeps its comments."""
    for fn in MIGRATIONS[:5]:
        migrate_one(db, fn)
    db.execute(
        "INSERT INTO requests (request_id, created_at, latency_ms, cache_status, cache_reference_id) VALUES"
        " ('orig', now(), 1234.5, 'MISS', NULL), ('hit1', now(), 3, 'HIT', 'orig'),"
        " ('hit2', now(), 4, 'HIT', 'gone'), ('plain', now(), 99, NULL, NULL)"
    )
    assert migrate(db) == ["m006_latency_saved", "m007_rollup", "m008_fleet_columns"]
    got = db.execute("SELECT request_id, latency_saved_ms FROM requests ORDER BY request_id").fetchall()
    assert got == [("hit1", 1234.5), ("hit2", None), ("orig", None), ("plain", None)]
    view = db.execute("SELECT hits, latency_saved_ms FROM cache_savings").fetchall()
    assert view == [(2, 1234.5)]
    sql = "SELECT column_name, comment FROM duckdb_columns() WHERE table_name = 'cache_savings'"
    comments = dict(db.execute(sql).fetchall())
    assert comments["hits"] == "Calls answered from the cache."
    assert comments["latency_saved_ms"].startswith("Sum of latency_saved_ms")


def test_m007_builds_the_rollup_from_the_calls_logged(db: duckdb.DuckDBPyConnection) -> None:
    """Calls logged before m007 are in requests_15m: per 15 minutes, provider and model."""
    for fn in MIGRATIONS[:6]:
        migrate_one(db, fn)
    db.execute(
        "INSERT INTO requests (request_id, created_at, provider, model, status, error, input_tokens,"
        " output_tokens, cost_usd, cache_status, cost_saved_usd) VALUES"
        " ('a', '2025-06-01 10:00:00+00', 'openai', 'gpt-4o', 200, NULL, 10, 5, 0.25, 'MISS', NULL),"
        " ('b', '2025-06-01 10:14:59.999999+00', 'openai', 'gpt-4o', 200, NULL, 1, 2, 0, 'HIT', 0.25),"
        " ('c', '2025-06-01 10:15:00+00', 'openai', 'gpt-4o', 500, 'upstream 500', NULL, NULL, NULL, NULL,"
        " NULL), ('d', '2025-06-01 10:20:00+00', NULL, NULL, NULL, 'client disconnected', NULL, NULL, NULL,"
        " NULL, NULL)"
    )
    assert migrate(db) == ["m007_rollup", "m008_fleet_columns"]
    qb = int(datetime(2025, 6, 1, 10, tzinfo=UTC).timestamp()) // 900
    got = db.execute("SELECT * FROM requests_15m ORDER BY qb, provider NULLS LAST").fetchall()
    assert got == [
        (qb, "openai", "gpt-4o", 2, 11, 7, D("0.25"), 0, D("0.25"), 0, 1, 2),
        (qb + 1, "openai", "gpt-4o", 1, None, None, None, 1, None, 1, 0, 0),
        (qb + 1, None, None, 1, None, None, None, 1, None, 1, 0, 0),
    ]
    assert list(columns(db, "requests_15m")) == [
        "qb", "provider", "model", "calls", "input_tokens", "output_tokens", "cost_usd", "unpriced",
        "cost_saved_usd", "errors", "cache_hits", "cache_lookups",
    ]  # fmt: skip


def migrate_one(db: duckdb.DuckDBPyConnection, fn: migrations.Migration) -> None:
    """Apply one migration as `migrate` would, to build a file as an older release left it."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS _llmtap_migrations"
        " (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
    )
    fn(db)
    db.execute("INSERT INTO _llmtap_migrations VALUES (?, now())", [fn.__name__])


def test_migrate_is_idempotent(db: duckdb.DuckDBPyConnection) -> None:
    migrate(db)
    db.execute("INSERT INTO requests (request_id, created_at) VALUES ('r1', now())")
    stamps = db.execute("SELECT name, applied_at FROM _llmtap_migrations").fetchall()
    assert migrate(db) == []
    assert db.execute("SELECT name, applied_at FROM _llmtap_migrations").fetchall() == stamps
    assert db.execute("SELECT request_id, source FROM requests").fetchall() == [("r1", "proxy")]


def test_applied_on_a_blank_db_is_read_only(db: duckdb.DuckDBPyConnection) -> None:
    assert applied(db) == []
    assert db.execute("SELECT count(*) FROM information_schema.tables").fetchone() == (0,)


def test_numbers_are_unique_and_ascending() -> None:
    numbers = [int(re.match(r"^m(\d{3})_\w+$", fn.__name__).group(1)) for fn in MIGRATIONS]  # type: ignore[union-attr]
    assert numbers == list(range(1, len(MIGRATIONS) + 1))


@pytest.mark.parametrize(
    "name, message",
    [
        # the name must carry a three-digit number
        ("requests_v2", "migration name must look like m001_name, got 'requests_v2'"),
        ("m1_requests", "migration name must look like m001_name, got 'm1_requests'"),
        # a duplicate, a gap, or going back
        ("m001_again", "migration m001_again is out of sequence: expected m{next:03d}"),
        ("m999_skip", "migration m999_skip is out of sequence: expected m{next:03d}"),
    ],
)
def test_registration_rejects_bad_numbers(name: str, message: str) -> None:
    def fn(conn: duckdb.DuckDBPyConnection) -> None:
        raise AssertionError("never run")

    fn.__name__ = name
    before = list(MIGRATIONS)
    with pytest.raises(ValueError, match=f"^{re.escape(message.format(next=len(MIGRATIONS) + 1))}$"):
        migration(fn)
    assert MIGRATIONS == before


def test_a_failing_migration_rolls_back(
    db: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(db)

    def m999_broken(conn: duckdb.DuckDBPyConnection) -> None:
        conn.execute("ALTER TABLE requests ADD COLUMN half_done VARCHAR")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, m999_broken])
    with pytest.raises(RuntimeError, match="disk on fire"):
        migrate(db)
    assert "half_done" not in columns(db, "requests")
    assert "m999_broken" not in applied(db)
    assert pending(db) == [m999_broken]
