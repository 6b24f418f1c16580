"""The 15-minute rollup: the writer's batches add up to what a rebuild from the calls gives, and the
Overview read from it is the Overview read from the calls, value for value, or it is not used."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import duckdb
import pytest

from llmtap.accounting.record import COLUMNS as ROW_COLUMNS
from llmtap.accounting.record import as_row
from llmtap.reports import catalog
from llmtap.reports import rollup as reader
from llmtap.storage import postgres, query, rollup
from llmtap.storage.migrations import migrate
from llmtap.storage.writer import Store
from llmtap.ui import views
from tests.unit.test_catalog import COLUMNS, DATA, FEEDBACK, SCORES, SUMMARY, load

NOW = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
COLUMNS_AT = {name: k for k, name in enumerate(ROW_COLUMNS)}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """The reports' data set, with the rollup as the writer would have kept it."""
    path = tmp_path / "tap.duckdb"
    with duckdb.connect(str(path)) as conn:
        migrate(conn)
        load(conn)
        rollup.rebuild(conn)
    return path


def writer_rows() -> list[tuple[Any, ...]]:
    """DATA as the writer's rows (COLUMNS order, tz-aware times, decimal costs as text)."""
    names = [c.strip() for c in COLUMNS.split(",")]
    out = []
    for row in DATA:
        values = dict(zip(names, row, strict=True))
        values["created_at"] = datetime.fromisoformat(values["created_at"]).replace(tzinfo=UTC)
        out.append(as_row(source="proxy", **values))
    return out


def test_batches_add_up_to_a_rebuild(tmp_path: Path) -> None:
    """Three flushes of the real writer (one splitting a bucket in two) equal the rollup built from
    all the calls at once: the writer's Python sums and the SQL agree to the last digit."""
    path = tmp_path / "tap.duckdb"
    store = Store(str(path))
    rows = writer_rows()
    for batch in (rows[:2], rows[2:7], rows[7:]):
        store._pending.extend(batch)
        assert store.flush()
    with duckdb.connect(str(path), read_only=True) as conn:
        merged = conn.execute(f"SELECT * FROM {rollup.TABLE} ORDER BY ALL").fetchall()
        built = conn.execute(f"{rollup.aggregate_sql('true')} ORDER BY ALL").fetchall()
    assert merged == built
    # r01-r03 (10:00:00-10:00:10, gpt-4o) are one bucket's row, merged across the first two flushes;
    # r04-r05 and r09-r10 share theirs too: 8 rows for 12 calls.
    assert len(merged) == 8 and sum(r[3] for r in merged) == 12
    qb = int(datetime(2025, 6, 1, 10, tzinfo=UTC).timestamp()) // 900
    assert merged[0] == (qb, "openai", "gpt-4o", 3, 400, 200, D("0.003"), 0, D("0.001"), 0, 1, 2)


CASES = [
    ({"since": ["2025-06-01"], "until": ["2025-06-04"]}, "UTC"),  # whole days: no edge
    ({"since": ["2025-06-01T10:07"], "until": ["2025-06-03T12:10"]}, "Asia/Kathmandu"),  # +05:45
    ({"since": ["2025-06-01T10:00:05"], "until": ["2025-06-03T12:00"]}, "America/St_Johns"),
    ({"since": ["2025-05-20"], "provider": ["openai"]}, "Europe/Paris"),  # open end, 'now' edge
    ({"since": ["2025-06-01"], "model": ["gpt-4o", "gpt-4o-mini"]}, "UTC"),
    ({"since": ["9d"]}, "UTC"),
]


@pytest.mark.parametrize(("params", "tz"), CASES)
@pytest.mark.parametrize("stack", ["model", "provider"])
def test_the_overview_from_the_rollup_is_the_one_from_the_calls(
    db: Path, params: dict[str, list[str]], tz: str, stack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = views.options({**params, "tz": [tz]})
    fast = views.overview(db, opts, NOW, stack)
    monkeypatch.setattr(reader, "overview", lambda *a: None)
    slow = views.overview(db, opts, NOW, stack)
    assert (fast["rollup"], slow["rollup"]) == (["cards", "cost_stacked", "errors"], [])
    assert {k: v for k, v in fast.items() if k not in ("sql", "rollup")} == {
        k: v for k, v in slow.items() if k not in ("sql", "rollup")
    }
    assert "requests_15m" in fast["sql"]["cards"] and "requests_15m" not in slow["sql"]["cards"]


def test_a_whole_range_has_known_figures(db: Path) -> None:
    """The reports' hand-computed totals (tests/unit/test_catalog.py SUMMARY), from the rollup."""
    v = views.overview(db, views.options({"since": ["2025-06-01"], "until": ["2025-06-04"]}), NOW)
    assert v["rollup"] == ["cards", "cost_stacked", "errors"]
    assert v["cards"] == SUMMARY


@pytest.mark.parametrize(
    "params",
    [{"user": ["alice"]}, {"property": ["feature=search"]}, {"rating": ["up"]}, {"session": ["s1"]}],
)
def test_filters_the_rollup_does_not_hold_read_the_calls(db: Path, params: dict[str, list[str]]) -> None:
    v = views.overview(db, views.options({"since": ["2025-06-01"], **params}), NOW)
    assert v["rollup"] == []


@pytest.mark.parametrize("stack", ["user", "property:feature", "score:accuracy"])
def test_other_stacks_read_their_cost_from_the_calls(
    db: Path, stack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cards and errors still come from the rollup; the stacked cost is the calls' report."""
    opts = views.options({"since": ["2025-06-01T10:07"], "until": ["2025-06-03T12:10"], "tz": ["Asia/Tokyo"]})
    fast = views.overview(db, opts, NOW, stack)
    monkeypatch.setattr(reader, "overview", lambda *a: None)
    slow = views.overview(db, opts, NOW, stack)
    assert (fast["rollup"], slow["rollup"]) == (["cards", "errors"], [])
    assert {k: v for k, v in fast.items() if k not in ("sql", "rollup")} == {
        k: v for k, v in slow.items() if k not in ("sql", "rollup")
    }


def test_short_ranges_read_the_calls(db: Path) -> None:
    short = views.options({"since": ["2025-06-01T10:00"], "until": ["2025-06-01T11:00"]})  # minutes
    assert views.overview(db, short, NOW)["rollup"] == []


def test_rows_written_by_hand_send_the_reader_to_the_calls(db: Path) -> None:
    """An INSERT that bypassed the writer: the counts differ, and the cards count the new row."""
    with duckdb.connect(str(db)) as conn:
        conn.execute(
            "INSERT INTO requests (request_id, created_at, provider, model, status)"
            " VALUES ('by-hand', '2025-06-02 12:00:00+00', 'openai', 'gpt-4o', 200)"
        )
    v = views.overview(db, views.options({"since": ["2025-06-01"], "until": ["2025-06-04"]}), NOW)
    assert (v["rollup"], v["cards"]["calls"]) == ([], 13)


def test_a_file_without_the_rollup_reads_the_calls(db: Path) -> None:
    """A file from before m007, opened read-only (as `llmtap ui` may): no table, no rollup."""
    with duckdb.connect(str(db)) as conn:
        conn.execute(f"DROP TABLE {rollup.TABLE}")
        opts = views.options({"since": ["2025-06-01"]})
        assert reader.overview(conn, opts, NOW, "day", "model") is None


def test_latency_over_many_calls_comes_from_a_stable_sample(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past LATENCY_ROWS calls, the percentiles are those of the calls a hash of created_at keeps:
    the same ones on every refresh, and the page says which share it read."""
    monkeypatch.setattr(views, "LATENCY_ROWS", 5)
    opts = views.options({"since": ["2025-06-01"], "until": ["2025-06-04"]})
    v = views.overview(db, opts, NOW)
    assert v["latency_sample_pct"] == round(100 * 5 / 12, 2)
    assert "hash(epoch_us(created_at)) % 1000000 < 416667" in v["sql"]["latency"]
    with duckdb.connect(str(db), read_only=True) as conn:
        kept = conn.execute(
            "SELECT count(*) FROM requests WHERE hash(epoch_us(created_at)) % 1000000 < 416667"
            " AND cache_status IS DISTINCT FROM 'HIT' AND rate_limited IS NOT TRUE"
        ).fetchone()
    sampled = v["latency"]["rows"]
    assert sum(r[v["latency"]["columns"].index("calls")] for r in sampled) == kept[0]
    assert views.overview(db, opts, NOW)["latency"] == v["latency"]
    monkeypatch.setattr(views, "LATENCY_ROWS", 12)
    assert views.overview(db, opts, NOW)["latency_sample_pct"] is None


# -- on a fleet's Postgres log: kept by triggers, read by the reports too --


def pg_rollup(url: str) -> list[tuple[Any, ...]]:
    """The rollup's rows summed over proxies, checked against the same rows built from the calls."""
    sums = ", ".join(f"sum({n})" for n in rollup.NAMES[3:])
    with postgres.connect(url, read_only=True) as conn:
        kept = conn.execute(
            f"SELECT qb, provider, model, {sums} FROM {rollup.TABLE} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
        built = conn.execute(
            f"SELECT qb, provider, model, {sums} FROM ({rollup.aggregate_sql('true')}) AS b"
            " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
    assert kept == built
    return kept


def write_as_two_proxies(url: str, rows: list[tuple[Any, ...]]) -> None:
    """The first 7 rows through proxy-0's sink, as a batch retried after its first two rows were
    committed, then the rest through proxy-1's."""
    at = COLUMNS_AT["proxy_id"]
    mine, theirs = (
        [r[:at] + (proxy,) + r[at + 1 :] for r in part]
        for proxy, part in (("proxy-0", rows[:7]), ("proxy-1", rows[7:]))
    )
    sink = postgres.PostgresSink(url)
    sink.write(mine[:2], [])
    sink.write(mine, [])  # the retry of a batch whose first two rows were committed
    sink.write(theirs, [])
    sink.close()


def test_postgres_triggers_keep_the_rollup_through_every_kind_of_write(postgres_db: str) -> None:
    """The writers' COPY (two proxies, so two rollup rows for one bucket), a retried batch whose
    commit had gone through (only the rows it inserted count), a DELETE, an UPDATE and a TRUNCATE by
    hand: after each, the rollup is what the calls add up to."""
    write_as_two_proxies(postgres_db, writer_rows())
    kept = pg_rollup(postgres_db)
    assert len(kept) == 8 and sum(r[3] for r in kept) == 12
    assert kept[0][:4] == (
        int(datetime(2025, 6, 1, 10, tzinfo=UTC).timestamp()) // 900,
        "openai",
        "gpt-4o",
        3,
    )
    with postgres.connect(postgres_db) as conn:
        conn.autocommit = True
        [(proxies,)] = conn.execute(f"SELECT count(DISTINCT proxy_id) FROM {rollup.TABLE}").fetchall()
        assert proxies == 2
        conn.execute("DELETE FROM requests WHERE request_id IN ('r01', 'r06')")
        pg_rollup(postgres_db)
        conn.execute("UPDATE requests SET model = 'gpt-4.1', cost_usd = 0.5 WHERE request_id = 'r02'")
        conn.execute("UPDATE requests SET properties = '{\"reviewed\": \"yes\"}' WHERE request_id = 'r03'")
        assert sum(r[3] for r in pg_rollup(postgres_db)) == 10
        conn.execute("TRUNCATE requests")
        assert pg_rollup(postgres_db) == []


def test_postgres_reports_read_the_rollup_where_it_answers(postgres_db: str) -> None:
    """`summary` and `cost` grouped by day, hour, model and provider come from the rollup (the
    comparison with DuckDB's answers is test_reports_postgres'); other groupings and filters read
    the calls."""
    from tests.unit.test_reports_postgres import load_postgres

    load_postgres(postgres_db)
    conn = query.connect(postgres_db)
    try:
        for name, opts in [
            ("summary", {}),
            ("cost", {}),
            ("cost", {"by": catalog.parse_dimensions("day,provider"), "since": catalog.parse_when("2d")}),
            ("cost", {"by": catalog.parse_dimensions("hour"), "model": ["gpt-4o"], "tz": "Asia/Kolkata"}),
        ]:
            assert rollup.TABLE in catalog.prepare(conn, name, catalog.Options(**opts), NOW).sql, (name, opts)
        for name, opts in [
            ("summary", {"user": ["alice"]}),
            ("cost", {"by": catalog.parse_dimensions("user")}),
            ("cost", {"by": catalog.parse_dimensions("minute")}),
            ("cache", {}),
            ("latency", {}),
        ]:
            assert rollup.TABLE not in catalog.prepare(conn, name, catalog.Options(**opts), NOW).sql, (
                name,
                opts,
            )
        _, columns, rows = catalog.fetch(conn, "summary", catalog.Options(), NOW)
        assert dict(zip(columns, rows[0], strict=True)) == SUMMARY
        twice = catalog.Options(by=catalog.parse_dimensions("model,model"))
        with pytest.raises(catalog.ReportError, match="--by model given twice"):  # as over the calls
            catalog.prepare(conn, "cost", twice, NOW)
    finally:
        conn.close()


def test_a_detached_month_is_fixed_as_the_readme_says(postgres_db: str) -> None:
    """Detaching (or dropping) a partition fires no trigger of the parent's; the README's statements
    then take the month out of every rollup (they are read from the README, so they stay true)."""
    from tests.unit.test_reports_postgres import load_postgres
    from tests.unit.test_rollup_by import errors_kept_and_built, kept_and_built
    from tests.unit.test_rollup_latency import kept_and_built as latency_kept_and_built

    readme = " ".join((Path(__file__).parents[2] / "README.md").read_text().split())
    fix = readme.split("e.g. `DELETE FROM requests_15m", 1)[1].split("`", 1)[0]
    fix_by_day = readme.split("`DELETE FROM requests_by_day", 1)[1].split("`", 1)[0]
    fix_annotated = readme.split("`DELETE FROM annotated_calls", 1)[1].split("`", 1)[0]
    load_postgres(postgres_db)  # June 2025, in one partition
    with postgres.connect(postgres_db) as conn:
        conn.autocommit = True
        conn.execute("ALTER TABLE requests DETACH PARTITION requests_all")
        [(left,)] = conn.execute(f"SELECT sum(calls) FROM {rollup.TABLE}").fetchall()
        assert left == 12  # what the trigger could not see
        [(by_day,)] = conn.execute("SELECT sum(calls) FROM requests_by_day WHERE dim = 'provider'").fetchall()
        assert by_day == 12
        [(failed,)] = conn.execute("SELECT sum(calls) FROM errors_by_day").fetchall()
        assert failed == 3
        [(timed,)] = conn.execute("SELECT sum(calls) FROM latency_by_day WHERE metric = 0").fetchall()
        assert timed == 9  # not the 2 cache hits and the call llmtap rate-limited
        conn.execute(f"DELETE FROM requests_15m {fix}")
        conn.execute(f"DELETE FROM requests_by_day {fix_by_day}")
        for other in ("errors_by_day", "latency_by_day"):  # "the same condition"
            conn.execute(f"DELETE FROM {other} {fix_by_day}")
        [(rated,)] = conn.execute("SELECT count(*) FROM annotated_calls").fetchall()
        assert rated == len({f[0] for f in FEEDBACK} | {s[0] for s in SCORES})  # each is a call's
        conn.execute(f"DELETE FROM annotated_calls {fix_annotated}")
    assert pg_rollup(postgres_db) == []
    assert kept_and_built(postgres_db) == []
    assert errors_kept_and_built(postgres_db) == []
    assert latency_kept_and_built(postgres_db) == []
    with postgres.connect(postgres_db, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM annotated_calls").fetchall() == [(0,)]
