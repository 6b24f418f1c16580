"""Every built-in report gives the same answer from a fleet's Postgres log as from a DuckDB file.

The data set is test_catalog's (whose figures are worked out by hand there), loaded into both; each
report runs with every grouping, several time zones and every kind of filter, and the results are
compared value for value, and as the CLI prints them (table, CSV, JSON).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from llmtap.reports import catalog
from llmtap.storage import postgres, query
from llmtap.storage.migrations import migrate

from .test_catalog import Out, load, run


@pytest.fixture(scope="module")
def both(postgres_cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """The data set in a DuckDB file and in a Postgres database."""
    path = tmp_path_factory.mktemp("reports") / "tap.duckdb"
    with duckdb.connect(str(path)) as conn:
        migrate(conn)
        load(conn)
    url = postgres_cluster.create_database("reports_equal")
    with postgres.connect(url) as conn:
        conn.autocommit = True
        postgres.migrate(conn)
        with conn.transaction():
            conn.execute("CREATE TABLE requests_all PARTITION OF requests DEFAULT")
            load(conn, mark="%s")
    return str(path), url


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


def test_parquet_over_postgres_says_why_not(capsys: Out, both: tuple[str, str], tmp_path: Path) -> None:
    code, _, err = run(
        capsys, "report", "cost", "--db", both[1], "--format", "parquet", "--out", str(tmp_path / "x")
    )
    assert code == 1
    assert "Parquet export reads DuckDB files only" in err
