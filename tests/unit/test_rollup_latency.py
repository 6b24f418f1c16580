"""The latency buckets of a fleet's Postgres log (storage/rollup_latency.py) and the `latency`
report's percentiles found by rank from them (reports/rollup_latency.py): kept by triggers through
every kind of write, read where they answer, and giving the exact values of `percentile_cont` over
the calls and of DuckDB's `quantile_cont`, NULLs included."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pytest

from llmtap.accounting.record import COLUMNS, as_row
from llmtap.reports import catalog
from llmtap.reports import rollup_latency as reader
from llmtap.storage import postgres, query, rollup_latency
from llmtap.storage.migrations import migrate
from tests.unit.test_rollup import write_as_two_proxies, writer_rows

NOW = datetime(2025, 6, 4, 9, 30, tzinfo=UTC)
PAIRS = [
    (None, "llama-3.1-8b"),
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-sonnet"),
    ("openai", None),
]


def calls(n: int = 4_000, seed: int = 7) -> list[tuple[Any, ...]]:
    """`n` calls from 2025-06-01 00:00 to 2025-06-04 09:00, as the writer's rows: latencies spread
    over five orders of magnitude with ties, NULLs, cache hits, llmtap's own 429s, streams with a
    time to first token, three proxies."""
    rng = random.Random(seed)
    start = datetime(2025, 6, 1, tzinfo=UTC)
    rows = []
    for i in range(n):
        provider, model = PAIRS[rng.choice([1, 1, 1, 2, 2, 3, 3, 4, 0])]
        latency = round(rng.lognormvariate(7, 1.2), 3) if rng.random() > 0.03 else None
        if rng.random() < 0.05:
            latency = rng.choice([1000.0, 250.5, 0.0])  # ties
        streamed = rng.random() < 0.4
        rows.append(as_row(
            request_id=f"c{i:05d}", created_at=start + timedelta(seconds=i * (81 * 3600 / n)), source="proxy",
            provider=provider, model=model, status=200, streamed=streamed, latency_ms=latency,
            ttft_ms=round(rng.uniform(50, 2000), 3) if streamed and latency is not None else None,
            cache_status=rng.choice([None, None, "MISS", "HIT"]), rate_limited=rng.random() < 0.03 or None,
            proxy_id=f"proxy-{i % 3}",
        ))  # fmt: skip
    return rows


def counted(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The calls the report counts: not cache hits, not llmtap's own 429s."""
    return [
        r for r in rows if r[COLUMNS.index("cache_status")] != "HIT" and not r[COLUMNS.index("rate_limited")]
    ]


def write(url: str, rows: list[tuple[Any, ...]]) -> None:
    sink = postgres.PostgresSink(url)
    sink.write(rows, [])
    sink.close()


def kept_and_built(url: str) -> list[tuple[Any, ...]]:
    """The table summed over proxies, checked against the same rows built from the calls."""
    built = rollup_latency.rows_sql("requests")
    names = "day, provider, model, proxy_id, metric, bucket, calls"
    grouped = (
        "SELECT day, provider, model, metric, bucket, sum(calls) FROM {}"
        " GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"
    )
    with postgres.connect(url, read_only=True) as conn:
        kept = conn.execute(grouped.format(rollup_latency.TABLE)).fetchall()
        again = conn.execute(grouped.format(f"({built}) AS b({names})")).fetchall()
    assert kept == again
    return kept


def from_calls(url: str, monkeypatch: pytest.MonkeyPatch, **opts: Any) -> tuple[list[str], list[tuple]]:
    with monkeypatch.context() as m:
        m.setattr(reader, "report", lambda *a: None)
        return fetch(url, **opts)


def fetch(target: str, **opts: Any) -> tuple[list[str], list[tuple]]:
    conn = query.connect(target)
    try:
        _, columns, rows = catalog.fetch(conn, "latency", catalog.Options(**opts), NOW)
    finally:
        conn.close()
    return columns, rows


def sql(url: str, **opts: Any) -> str:
    conn = query.connect(url)
    try:
        return catalog.prepare(conn, "latency", catalog.Options(**opts), NOW).sql
    finally:
        conn.close()


@pytest.fixture(scope="module")
def fleet(postgres_cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """The calls in a Postgres log (written as the writers COPY them) and in a DuckDB file."""
    url = postgres_cluster.create_database("latency_by_rank")
    rows = calls()
    write(url, rows)
    path = tmp_path_factory.mktemp("latency") / "tap.duckdb"
    with duckdb.connect(str(path)) as conn:
        migrate(conn)
        conn.executemany(
            f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows
        )
    return url, str(path)


by = catalog.parse_dimensions
CASES: list[dict[str, Any]] = [
    {},
    {"by": by("provider")},
    {"by": by("day")},
    {"by": by("day,model")},
    {"by": by("provider,model")},
    {"by": by("day"), "provider": ["anthropic"]},
    {"model": ["gpt-4o", "gpt-4o-mini"], "since": catalog.parse_when("2025-06-01 13:20")},
    {
        "by": by("day"),
        "since": catalog.parse_when("2025-06-01 13:20"),
        "until": catalog.parse_when("2025-06-03 02:00"),
    },
    {"since": catalog.parse_when("2d")},
    {"by": by("model"), "tz": "Asia/Kolkata"},
    {"limit": 2},
    {"until": catalog.parse_when("2025-06-01 20:00")},  # no whole day: all from the edge's calls
]


@pytest.mark.parametrize("opts", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "none")
def test_percentiles_by_rank_are_the_calls_and_duckdbs(
    fleet: tuple[str, str], monkeypatch: pytest.MonkeyPatch, opts: dict[str, Any]
) -> None:
    url, file = fleet
    got = fetch(url, **opts)
    assert got == from_calls(url, monkeypatch, **opts) == fetch(file, **opts)
    assert len(got[1]) >= (1 if "limit" not in opts else 2)
    assert "exact percentiles by rank" in sql(url, **opts)


@pytest.mark.parametrize("opts", [
    {"by": by("hour")}, {"by": by("day"), "tz": "America/New_York"}, {"by": by("user")},
    {"user": ["alice"]}, {"properties": [("feature", "search")]}, {"rating": "up"}, {"sample_pct": 50.0},
], ids=str)  # fmt: skip
def test_what_the_buckets_do_not_hold_reads_the_calls(fleet: tuple[str, str], opts: dict[str, Any]) -> None:
    url, _ = fleet
    assert "exact percentiles by rank" not in sql(url, **opts)


def test_the_figures_of_one_group_by_hand(fleet: tuple[str, str]) -> None:
    """gpt-4o-mini's percentiles, from its values sorted here in Python."""
    url, _ = fleet
    own = [r for r in counted(calls()) if r[COLUMNS.index("model")] == "gpt-4o-mini"]
    values = sorted(r[COLUMNS.index("latency_ms")] for r in own if r[COLUMNS.index("latency_ms")] is not None)

    def cont(q: float) -> float:
        h = q * (len(values) - 1)
        lo, hi = values[int(h)], values[min(int(h) + 1, len(values) - 1)]
        return round(lo + (hi - lo) * (h - int(h)), 1)

    columns, rows = fetch(url, model=["gpt-4o-mini"])
    row = dict(zip(columns, rows[0], strict=True))
    assert row["calls"] == len(own)
    assert [row["latency_p50_ms"], row["latency_p95_ms"], row["latency_p99_ms"]] == [
        pytest.approx(cont(q), abs=0.05001) for q in (0.5, 0.95, 0.99)
    ]


def test_no_values_give_null_percentiles(postgres_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group whose calls have no latency, and none with a time to first token: NULLs, as over the
    calls; a group of cache hits only has no row."""
    given = [("a", None, None), ("a", None, None), ("b", 12.5, None), ("c", 3.0, "HIT")]
    rows = [
        as_row(request_id=f"n{i}", created_at=datetime(2025, 6, 1, 3, tzinfo=UTC) + timedelta(days=i),
               source="proxy", provider="openai", model=model, status=200, latency_ms=latency,
               cache_status=cache, proxy_id="p")
        for i, (model, latency, cache) in enumerate(given)
    ]  # fmt: skip
    write(postgres_db, rows)
    got = fetch(postgres_db)
    assert got == from_calls(postgres_db, monkeypatch)
    assert got[1] == [
        ("a", 2, None, None, None, None, None, None),
        ("b", 1, 12.5, 12.5, 12.5, None, None, None),
    ]


def test_triggers_keep_the_buckets_through_every_kind_of_write(postgres_db: str) -> None:
    """The writers' COPY (two proxies, a retried batch), a DELETE, an UPDATE that makes calls
    cache hits or gives them a latency, and a TRUNCATE by hand: after each, the table is what the
    calls add up to."""
    write_as_two_proxies(postgres_db, writer_rows())
    kept = kept_and_built(postgres_db)
    # 12 calls: 2 cache hits and r05, rate limited by llmtap, are not counted; 5 have a ttft.
    assert [sum(r[5] for r in kept if r[3] == metric) for metric in (0, 1)] == [9, 5]
    with postgres.connect(postgres_db) as conn:
        conn.autocommit = True
        conn.execute("DELETE FROM requests WHERE request_id IN ('r01', 'r06')")
        kept_and_built(postgres_db)
        conn.execute("UPDATE requests SET cache_status = 'HIT' WHERE request_id = 'r02'")
        conn.execute("UPDATE requests SET latency_ms = 7.25, ttft_ms = 3 WHERE request_id = 'r04'")
        kept = kept_and_built(postgres_db)
        assert [sum(r[5] for r in kept if r[3] == metric) for metric in (0, 1)] == [6, 3]
        june_1st = (datetime(2025, 6, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).days
        r04 = [(r[3], r[4]) for r in kept if r[:3] == (june_1st, "anthropic", "claude-3-5-sonnet")]
        # r04 is alone in its buckets now: 7.25 ms and 3 ms, ln(1 + ms) * 25 rounded down.
        assert (0, math.floor(math.log(8.25) * 25)) in r04 and (1, math.floor(math.log(4) * 25)) in r04
        conn.execute("TRUNCATE requests")
        assert kept_and_built(postgres_db) == []


def test_calls_the_triggers_did_not_see_send_it_to_the_calls(
    postgres_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A day's calls deleted from its month's partition directly (the parent's triggers do not
    fire): the buckets read hold fewer values than their counts, and the report reads the calls."""
    write(postgres_db, calls(600))
    with postgres.connect(postgres_db) as conn:
        conn.autocommit = True
        conn.execute("DELETE FROM requests_y2025m06 WHERE created_at < '2025-06-02'")
    assert "exact percentiles by rank" not in sql(postgres_db)
    assert fetch(postgres_db) == from_calls(postgres_db, monkeypatch)


def test_a_model_name_of_any_length_is_written(postgres_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model name too long for a btree entry: its calls are written, counted in the buckets and
    left out of the rank index, so a report that needs their values reads the calls; the others
    still read by rank."""
    long = "m" * 6_000
    rows = [
        as_row(request_id=f"l{len(model)}-{i}", created_at=datetime(2025, 6, 1 + i, 5, tzinfo=UTC),
               source="proxy", provider="openai", model=model, status=200, latency_ms=100.0 + i,
               ttft_ms=10.0 * i, proxy_id="p")
        for model in (long, "gpt-4o") for i in range(3)
    ]  # fmt: skip
    write(postgres_db, rows)
    assert sum(r[5] for r in kept_and_built(postgres_db) if r[3] == 0) == 6
    assert "exact percentiles by rank" not in sql(postgres_db)
    assert "exact percentiles by rank" in sql(postgres_db, model=["gpt-4o"])
    assert fetch(postgres_db)[1] == [
        ("gpt-4o", 3, 101.0, 101.9, 102.0, 10.0, 19.0, 19.8),
        (long, 3, 101.0, 101.9, 102.0, 10.0, 19.0, 19.8),
    ]
    assert fetch(postgres_db, model=["gpt-4o"]) == from_calls(postgres_db, monkeypatch, model=["gpt-4o"])


def test_llmtap_migrate_builds_it_for_a_log_at_the_last_releases_schema(
    postgres_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log at p001-p008 with calls in it: `llmtap migrate` builds the buckets and the indexes
    from them; the writers' next batch is counted once; the report then reads by rank."""
    from llmtap.cli import main

    rows = calls(900)
    with monkeypatch.context() as m:
        m.setattr(postgres, "MIGRATIONS", postgres.MIGRATIONS[:8])
        write(postgres_db, rows[:500])
    assert main(["migrate", "--db", postgres_db]) == 0
    assert capsys.readouterr().out.startswith("applied p009_latency_by_day, p010_annotated_calls in ")
    assert sum(r[5] for r in kept_and_built(postgres_db) if r[3] == 0) == len(counted(rows[:500]))
    write(postgres_db, rows[500:])
    assert sum(r[5] for r in kept_and_built(postgres_db) if r[3] == 0) == len(counted(rows))
    assert "exact percentiles by rank" in sql(postgres_db, by=by("day"))
    assert fetch(postgres_db, by=by("day")) == from_calls(postgres_db, monkeypatch, by=by("day"))
