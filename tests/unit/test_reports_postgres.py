"""Every built-in report gives the same answer from a fleet's Postgres log as from a DuckDB file.

The data set is test_catalog's (whose figures are worked out by hand there), loaded into both; each
report runs with every grouping, several time zones and every kind of filter, and the results are
compared value for value, and as the CLI prints them (table, CSV, JSON). The views (`llmtap sql`)
are compared the same way.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import duckdb
import pytest

from llmtap.reports import catalog
from llmtap.storage import postgres, query
from llmtap.storage.migrations import migrate

from .test_catalog import Out, T, load, run


@pytest.fixture(scope="module")
def both(
    postgres_cluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """The data set in a DuckDB file and in a Postgres database (one per module that uses it)."""
    path = tmp_path_factory.mktemp("reports") / "tap.duckdb"
    with duckdb.connect(str(path)) as conn:
        migrate(conn)
        load(conn)
    url = postgres_cluster.create_database(f"reports_equal_{request.module.__name__.rsplit('.', 1)[-1]}")
    load_postgres(url)
    return str(path), url


def load_postgres(url: str) -> None:
    """The data set into a new Postgres database, in one partition for all its months."""
    with postgres.connect(url) as conn:
        conn.autocommit = True
        postgres.migrate(conn)
        with conn.transaction():
            conn.execute("CREATE TABLE requests_all PARTITION OF requests DEFAULT")
            load(conn, mark="%s")


def fetch(target: str, name: str, now: datetime, **opts: Any) -> tuple[list[str], list[tuple]]:
    conn = query.connect(target)
    try:
        _, columns, rows = catalog.fetch(conn, name, catalog.Options(**opts), now)
    finally:
        conn.close()
    return columns, rows


NOW = datetime(2025, 6, 3, 12, 40, tzinfo=UTC)
DIMENSIONS = ["model", "provider", "day", "hour", "minute", "user", "session", "rating",
              "property:feature", "score:accuracy", "day,model", "user,property:feature"]  # fmt: skip
FILTERS: list[dict[str, Any]] = [
    {},
    {"provider": ["openai"], "model": ["gpt-4o", "gpt-4o-mini"]},
    {"user": ["alice"], "session": ["s1"]},
    {"properties": [("feature", "search")]},
    {"rating": "down"},
    {"scores": [catalog.parse_score("accuracy>=80")]},
    {"since": catalog.parse_when("2025-06-02"), "until": catalog.parse_when("2025-06-02")},
    {"since": catalog.parse_when("2d")},
    {"since": catalog.parse_when("2025-06-03 02:00"), "tz": "America/New_York"},
    {"tz": "Asia/Kolkata"},
    {"limit": 2},
]


@pytest.mark.parametrize("name", list(catalog.REPORTS))
def test_every_report_with_every_filter_is_the_same(both: tuple[str, str], name: str) -> None:
    file, url = both
    for opts in FILTERS:
        if name == "summary" and "limit" in opts:
            continue
        assert fetch(url, name, NOW, **opts) == fetch(file, name, NOW, **opts), (name, opts)


@pytest.mark.parametrize("name", list(catalog.GROUPED))
@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_every_grouping_in_every_time_zone_is_the_same(both: tuple[str, str], name: str, tz: str) -> None:
    file, url = both
    for dims in DIMENSIONS:
        by = catalog.parse_dimensions(dims)
        expected = fetch(file, name, NOW, by=by, tz=tz)
        assert fetch(url, name, NOW, by=by, tz=tz) == expected, (name, dims, tz)
        assert expected[1], (name, dims)  # something to compare


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
@pytest.mark.parametrize("name", list(catalog.REPORTS))
def test_the_cli_prints_the_same(capsys: Out, both: tuple[str, str], name: str, fmt: str) -> None:
    file, url = both
    outs = []
    for target in (file, url):
        code, out, err = run(capsys, "report", name, "--db", target, "--format", fmt, "--until", "2025-06-04")
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1]
    if fmt == "json":
        assert json.loads(outs[1])


@pytest.mark.parametrize("name", list(catalog.REPORTS))
def test_parquet_from_postgres_has_duckdbs_rows_and_types(
    capsys: Out, both: tuple[str, str], tmp_path: Path, name: str
) -> None:
    """`--format parquet` over Postgres: the rows go through DuckDB, which writes the file, with the
    column types a DuckDB file's report has (money as DECIMAL, counts as BIGINT)."""
    outs = []
    for target, out in zip(both, ("duck.parquet", "pg.parquet"), strict=True):
        argv = ["report", name, "--db", target, "--format", "parquet", "--out", str(tmp_path / out)]
        code, _, err = run(capsys, *argv, "--until", "2025-06-04", "--tz", "UTC")
        assert code == 0, err
        outs.append(tmp_path / out)
    sql = tmp_path / "sql.parquet"
    text = "SELECT request_id, cost_usd, properties FROM requests ORDER BY request_id"
    code, _, err = run(capsys, "sql", "--db", both[1], "--format", "parquet", "--out", str(sql), text)
    assert code == 0, err
    with duckdb.connect() as conn:
        conn.execute("SET TimeZone = 'UTC'")
        described = [conn.execute(f"DESCRIBE SELECT * FROM '{f}'").fetchall() for f in outs]
        rows = [conn.execute(f"SELECT * FROM '{f}'").fetchall() for f in outs]
        typed = conn.execute(
            f"SELECT typeof(cost_usd), typeof(properties), count(*) FROM '{sql}' GROUP BY ALL"
        ).fetchall()
    assert [c[:2] for c in described[1]] == [c[:2] for c in described[0]]
    assert rows[1] == rows[0] and rows[0], name
    assert typed == [("DECIMAL(18,9)", "JSON", 12)]


# -- views (DuckDB: m005, m006; Postgres: p003) --

# Each view's rows in a key order (the keys are unique), so both sides list them alike.
VIEWS = {
    "latest_feedback": "request_id",
    "latest_scores": "request_id, name",
    "daily_cost_by_model": "day, provider, model",
    "cost_by_user": "user_id",
    "cache_savings": "day, provider, model",
    "session_summary": "session_id",
    "request_scores": "request_id",
}


def view(target: str, sql: str) -> tuple[list[str], list[tuple]]:
    conn = query.connect(target)
    try:
        return query.fetch(conn, sql)
    finally:
        conn.close()


def comparable(columns: list[str], rows: list[tuple]) -> list[tuple]:
    """Each value with its Python type. JSON is parsed: jsonb prints it its own way, and
    request_scores.scores is a MAP (a dict) in DuckDB, a jsonb object (text) in Postgres."""

    def value(column: str, v: Any) -> Any:
        if column in ("properties", "scores") and isinstance(v, str):
            v = json.loads(v)
        return type(v).__name__, v

    return [tuple(value(c, v) for c, v in zip(columns, row, strict=True)) for row in rows]


@pytest.mark.parametrize("name", list(VIEWS))
def test_every_view_is_the_same(both: tuple[str, str], name: str) -> None:
    file, url = both
    sql = f"SELECT * FROM {name} ORDER BY {VIEWS[name]}"
    columns, rows = view(file, sql)
    assert rows, name  # something to compare
    got_columns, got = view(url, sql)
    assert got_columns == columns
    assert comparable(got_columns, got) == comparable(columns, rows)


def test_the_views_and_their_comments_are_duckdbs(both: tuple[str, str]) -> None:
    file, url = both
    _, duckdb_views = view(file, "SELECT view_name, comment FROM duckdb_views() WHERE NOT internal")
    _, postgres_views = view(
        url,
        "SELECT relname, obj_description(oid, 'pg_class') FROM pg_class"
        " WHERE relkind = 'v' AND relnamespace = 'public'::regnamespace",
    )
    expected, got = dict(duckdb_views), dict(postgres_views)
    assert sorted(got) == sorted(expected) == sorted(VIEWS)
    # request_scores says its scores are a jsonb object rather than a map.
    assert "(scores->>'accuracy')::bigint" in got.pop("request_scores")
    del expected["request_scores"]
    assert got == expected


def test_the_views_figures_on_postgres(both: tuple[str, str]) -> None:
    url = both[1]
    rows = view(url, "SELECT * FROM daily_cost_by_model WHERE day = '2025-06-02'")[1]
    # r06 (a miss), r07 (500, no tokens, no cost), r08 (a hit of r06: cost 0, saved r06's cost)
    assert rows == [(date(2025, 6, 2), "openai", "gpt-4o-mini", 3, 100, 40, D("0.0000195"), 1,
                     D("0.0000195"), 1)]  # fmt: skip
    rows = view(url, "SELECT * FROM cost_by_user WHERE user_id = 'bob'")[1]
    # r04 (0.0105), r05 (429: no tokens, unpriced), r11 (0.000975)
    assert rows == [("bob", 3, 1150, 560, D("0.011475"), 1, None, T("2025-06-01 11:00"),
                     T("2025-06-03 12:00"))]  # fmt: skip
    rows = view(url, "SELECT day, hits, misses, hit_pct, cost_saved_usd, latency_saved_ms FROM cache_savings"
                     " WHERE model = 'gpt-4o' ORDER BY day")[1]  # fmt: skip
    # r01 missed and r03 hit it (its 1000 ms, 0.001 saved); r12 missed
    assert rows == [
        (date(2025, 6, 1), 1, 1, 50.0, D("0.001"), 1000.0),
        (date(2025, 6, 3), 0, 1, 0.0, None, None),
    ]
    rows = view(url, "SELECT session_id, session_name, calls, paths, input_tokens, errors, duration_s"
                     " FROM session_summary ORDER BY session_id")[1]  # fmt: skip
    # s1: 06-01 10:00 to r12's end, 06-03 12:30 + 1.2 s; s2: r05 at 11:00:30 ends 1 ms later
    assert rows == [("s1", "Trip", 4, 3, 500, 0, 181801.2), ("s2", "Essay", 2, 2, 1000, 1, 30.001),
                    ("s3", "Chat", 2, 2, 600, 1, 10.9)]  # fmt: skip
    rows = view(url, "SELECT request_id, rating, scores FROM request_scores"
                     " WHERE (scores->>'accuracy')::bigint >= 80 ORDER BY 1")[1]  # fmt: skip
    assert [(r[0], r[1], json.loads(r[2])) for r in rows] == [
        ("r04", True, {"accuracy": 95, "is_safe": 1}),
        ("r09", True, {"accuracy": 80}),
    ]


def test_llmtap_sql_reads_a_view_on_postgres(capsys: Out, both: tuple[str, str]) -> None:
    sql = "SELECT day, calls, cost_usd FROM daily_cost_by_model WHERE model = $m ORDER BY day"
    outs = []
    for target in both:
        code, out, err = run(capsys, "sql", sql, "-p", "m", "gpt-4o", "--db", target, "--format", "csv")
        assert code == 0, err
        outs.append(out)
    assert outs[1] == outs[0]
    assert outs[1] == "day,calls,cost_usd\n2025-06-01,3,0.003000000\n2025-06-03,2,0.001625000\n"
