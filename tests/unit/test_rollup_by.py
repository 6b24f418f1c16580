"""The daily rollups of a fleet's Postgres log, by dimension (storage/rollup_by.py) and of failed
calls (storage/rollup_errors.py), and the recent stretch the `sessions` report picks its sessions
from: kept by triggers through every kind of write, read where they answer, and giving DuckDB's
answers (value for value, NULLs included; the whole matrix of reports and filters is
test_reports_postgres')."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import duckdb
import pytest

from llmtap.reports import catalog
from llmtap.storage import annotated, postgres, query, rollup_by, rollup_errors
from llmtap.storage.migrations import migrate
from tests.unit.test_catalog import COLUMNS
from tests.unit.test_reports_postgres import NOW, both, fetch, load_postgres  # noqa: F401 (a fixture)
from tests.unit.test_rollup import COLUMNS_AT, write_as_two_proxies, writer_rows


def kept_and_built(url: str) -> list[tuple[Any, ...]]:
    """The table's rows summed over proxies, checked against the same rows built from the calls."""
    sums = ", ".join(f"sum({m[0]})" for m in rollup_by.MEASURES)
    built = rollup_by.rows_sql("requests")
    columns = ", ".join(("day", "dim", "value", "proxy_id", *(m[0] for m in rollup_by.MEASURES)))
    with postgres.connect(url, read_only=True) as conn:
        kept = conn.execute(
            f"SELECT day, dim, value, {sums} FROM {rollup_by.TABLE} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
        again = conn.execute(
            f"SELECT day, dim, value, {sums} FROM ({built}) AS b({columns}) GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
    assert kept == again
    return kept


def test_triggers_keep_it_through_every_kind_of_write(postgres_db: str) -> None:
    """The writers' COPY (two proxies), a retried batch, properties that are not an object (no
    property rows, and the batch is written), a DELETE, an UPDATE and a TRUNCATE by hand: after
    each, the table is what the calls add up to."""
    rows = writer_rows()
    at = COLUMNS_AT["properties"]
    odd = [rows[5][:at] + ('["a", "b"]',) + rows[5][at + 1 :], rows[7][:at] + ('"text"',) + rows[7][at + 1 :]]
    write_as_two_proxies(postgres_db, [*rows[:5], odd[0], rows[6], odd[1], *rows[8:]])
    kept = kept_and_built(postgres_db)
    day = int(datetime(2025, 6, 1, tzinfo=UTC).timestamp()) // 86400
    first = {(r[1], r[2]): r[3:] for r in kept if r[0] == day}
    assert set(first) == {
        ("provider", "openai"), ("provider", "anthropic"),
        ("model", "gpt-4o"), ("model", "claude-3-5-sonnet"),
        ("user", "alice"), ("user", "bob"), ("session", "s1"), ("session", "s2"),
        ("property:feature", "search"), ("property:feature", "chat"), ("property:env", "prod"),
    }  # fmt: skip
    # alice on June 1st: r01-r03, 3 calls, 400 / 200 tokens, $0.003 ($0 for the hit), $0.001 saved.
    alice = dict(zip((m[0] for m in rollup_by.MEASURES), first[("user", "alice")], strict=True))
    assert alice == {
        "calls": 3, "input_tokens": 400, "input_known": 3, "output_tokens": 200, "output_known": 3,
        "cost_usd": D("0.003"), "unpriced": 0, "cost_saved_usd": D("0.001"), "saved_known": 1, "errors": 0,
        "cache_hits": 1, "cache_misses": 1, "cache_saved_usd": D("0.001"), "cache_saved_known": 1,
        "cache_saved_ms": 0.0, "cache_saved_ms_known": 0,
    }  # fmt: skip
    assert sum(r[3] for r in kept if r[1] == "provider") == 12
    # June 2nd: r06 (an array), r07 (feature: search), r08 (a string): only r07 has a property.
    assert [r[1:4] for r in kept if r[0] == day + 1 and r[1].startswith("property:")] == [
        ("property:feature", "search", 1)
    ]
    with postgres.connect(postgres_db) as conn:
        conn.autocommit = True
        conn.execute("DELETE FROM requests WHERE request_id IN ('r01', 'r06')")
        kept_and_built(postgres_db)
        conn.execute("UPDATE requests SET user_id = 'dave', cost_usd = 0.5 WHERE request_id = 'r02'")
        conn.execute("UPDATE requests SET properties = '{\"reviewed\": \"yes\"}' WHERE request_id = 'r03'")
        kept = kept_and_built(postgres_db)
        assert [r[3] for r in kept if r[1:3] == ("user", "dave")] == [1]
        assert [r[3] for r in kept if r[1:3] == ("property:reviewed", "yes")] == [1]
        conn.execute("TRUNCATE requests")
        assert kept_and_built(postgres_db) == []


def test_reports_read_it_where_it_answers(postgres_db: str) -> None:
    load_postgres(postgres_db)
    by = catalog.parse_dimensions
    conn = query.connect(postgres_db)
    try:
        for name, opts in [
            ("cost", {"by": by("user")}),
            ("cost", {"by": by("session"), "since": catalog.parse_when("2d")}),
            ("cost", {"by": by("property:feature"), "tz": "Asia/Kolkata"}),
            ("cost", {"by": by("user"), "user": ["alice", "bob"]}),
            ("cache", {}),
            ("cache", {"by": by("property:env"), "until": catalog.parse_when("2025-06-02")}),
            ("summary", {"properties": [("feature", "search")]}),
            ("summary", {"session": ["s1"]}),
            ("cost", {"by": by("rating"), "since": catalog.parse_when("2d")}),
            ("cache", {"by": by("score:accuracy")}),
        ]:
            assert rollup_by.TABLE in catalog.prepare(conn, name, catalog.Options(**opts), NOW).sql, (
                name,
                opts,
            )
        for name, opts in [
            ("cost", {"by": by("user,model")}),
            ("cost", {"by": by("user"), "model": ["gpt-4o"]}),
            ("cost", {"by": by("user"), "session": ["s1"]}),
            ("cost", {"by": by("rating"), "user": ["alice"]}),
            ("cost", {"by": by("score:accuracy"), "rating": "up"}),
            ("cache", {"by": by("day")}),
            ("cache", {"sample_pct": 50.0}),
            ("summary", {"user": ["alice"], "properties": [("feature", "search")]}),
            ("summary", {"properties": [("feature", "search"), ("env", "prod")]}),
            ("summary", {"rating": "up"}),
            ("latency", {"by": by("user")}),
        ]:
            assert rollup_by.TABLE not in catalog.prepare(conn, name, catalog.Options(**opts), NOW).sql, (
                name,
                opts,
            )
    finally:
        conn.close()


# Calls with and without a property, where those without it know no tokens, cost or savings: the
# reports' sums over them are NULL, which the rollup must give too (not the 0 a difference gives).
SPARSE = [
    ("a1", "2025-06-01 10:00:00", "openai", "gpt-4o", "u1", None, None, None, '{"team": "x"}', 200, None,
     100, None, 10, 5, "0.001", "MISS", None, None, None, None),
    ("a2", "2025-06-01 10:05:00", "openai", "gpt-4o", "u1", None, None, None, '{"team": "x"}', 200, None,
     50, None, 10, 5, "0", "HIT", "a1", "0.001", None, None),
    ("a3", "2025-06-02 11:00:00", "openai", "gpt-4o", "u2", None, None, None, "{}", None, "upstream reset",
     30, None, None, None, None, "MISS", None, None, None, None),
    ("a4", "2025-06-02 12:00:00", "openai", "gpt-4o", None, None, None, None, '{"team": null}', 500,
     "upstream 500", 20, None, None, None, None, None, None, None, None, None),
]  # fmt: skip


@pytest.fixture
def sparse(postgres_db: str, tmp_path: Path) -> tuple[str, str]:
    marks = {"?": ", ".join("?" * len(SPARSE[0])), "%s": ", ".join(["%s"] * len(SPARSE[0]))}
    path = tmp_path / "sparse.duckdb"
    rows = [[r[0], datetime.fromisoformat(r[1]).replace(tzinfo=UTC), *r[2:]] for r in SPARSE]
    with duckdb.connect(str(path)) as conn:
        migrate(conn)
        conn.executemany(f"INSERT INTO requests ({COLUMNS}) VALUES ({marks['?']})", rows)
        conn.executemany("INSERT INTO feedback VALUES (?, ?, ?)", SPARSE_FEEDBACK)
        conn.executemany("INSERT INTO scores VALUES (?, ?, ?, ?)", SPARSE_SCORES)
    with postgres.connect(postgres_db) as conn:
        conn.autocommit = True
        postgres.migrate(conn)
        conn.execute("CREATE TABLE requests_all PARTITION OF requests DEFAULT")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO requests ({COLUMNS}) VALUES ({marks['%s']})", rows)
            cur.executemany("INSERT INTO feedback VALUES (%s, %s, %s)", SPARSE_FEEDBACK)
            cur.executemany("INSERT INTO scores VALUES (%s, %s, %s, %s)", SPARSE_SCORES)
    return str(path), postgres_db


AT = datetime(2025, 6, 3, 9, 0, tzinfo=UTC)
# a1 up then down then up again; a3 down; an id no call has.
SPARSE_FEEDBACK = [("a1", True, AT), ("a1", False, AT.replace(minute=1)), ("a1", True, AT.replace(minute=2)),
                   ("a3", False, AT), ("nope", True, AT)]  # fmt: skip
SPARSE_SCORES = [
    ("a2", "q", 5, AT),
    ("a4", "q", 7, AT),
    ("a4", "q", 9, AT.replace(minute=1)),
    ("a1", "r", 1, AT),
]


def test_groups_whose_sums_know_no_value_are_null(sparse: tuple[str, str]) -> None:
    file, url = sparse
    now = datetime(2025, 6, 3, 9, 0, tzinfo=UTC)
    team = catalog.parse_dimensions("property:team")
    cost = fetch(url, "cost", now, by=team)
    assert cost == fetch(file, "cost", now, by=team)
    # x: a1 and a2; NULL: a3 (no property) and a4 (a JSON null), neither with tokens or a cost.
    assert cost[1] == [
        ("x", 2, 20, 10, D("0.001"), 0, D("0.001")),
        (None, 2, None, None, None, 2, None),
    ]
    cache = fetch(url, "cache", now, by=team)
    assert cache == fetch(file, "cache", now, by=team)
    assert cache[1] == [("x", 1, 1, 50.0, D("0.001"), None), (None, 0, 1, 0.0, None, None)]
    for opts in ({"user": ["u2"]}, {"properties": [("team", "x")]}, {"properties": [("team", "y")]}):
        summary = fetch(url, "summary", now, **opts)
        assert summary == fetch(file, "summary", now, **opts), opts
    assert fetch(url, "summary", now, user=["u2"])[1] == [(1, None, None, None, 1, 1, 100.0, 0, 0.0, None)]
    # The rated calls are read by id, the others are the totals less them.
    rating, q = catalog.parse_dimensions("rating"), catalog.parse_dimensions("score:q")
    since = catalog.parse_when("2025-06-02")
    for opts in ({"by": rating}, {"by": q}, {"by": rating, "since": since}, {"by": q, "since": since}):
        assert fetch(url, "cost", now, **opts) == fetch(file, "cost", now, **opts), opts
        assert fetch(url, "cache", now, **opts) == fetch(file, "cache", now, **opts), opts
    assert fetch(url, "cost", now, by=rating)[1] == [
        ("up", 1, 10, 5, D("0.001"), 0, None),
        (None, 2, 10, 5, D("0"), 1, D("0.001")),
        ("down", 1, None, None, None, 1, None),
    ]
    assert fetch(url, "cost", now, by=rating, since=since)[1] == [
        ("down", 1, None, None, None, 1, None),
        (None, 1, None, None, None, 1, None),
    ]
    assert fetch(url, "cost", now, by=q)[1] == [  # q: a2 5, a4 9 (its latest); a1 and a3 none
        (None, 2, 10, 5, D("0.001"), 1, None),
        (5, 1, 10, 5, D("0"), 0, D("0.001")),
        (9, 1, None, None, None, 1, None),
    ]
    assert fetch(url, "summary", now, properties=[("team", "y")])[1] == [
        (0, None, None, None, 0, 0, None, 0, None, None)
    ]


def annotated_kept_and_built(url: str) -> list[tuple[Any, ...]]:
    """annotated_calls, checked against the calls that have feedback or scores."""
    names = ", ".join(annotated.COLUMNS)
    rated = "SELECT request_id FROM feedback UNION SELECT request_id FROM scores"
    with postgres.connect(url, read_only=True) as conn:
        kept = conn.execute(f"SELECT {names} FROM {annotated.TABLE} ORDER BY 1").fetchall()
        built = conn.execute(
            f"SELECT {names} FROM requests WHERE request_id IN ({rated}) ORDER BY 1"
        ).fetchall()
    assert kept == built
    return kept


def test_the_rated_calls_figures_are_kept_through_every_kind_of_write(
    postgres_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Feedback and scores written by the writer in a call's own batch and in later ones, feedback
    written by hand before its call, a property update (an UPDATE of the call), a cost changed and
    a call deleted by hand, TRUNCATE: after each, annotated_calls holds exactly the rated and scored
    calls' figures, and `cost --by rating` reads it and gives the calls' answer."""
    from llmtap.accounting.record import Feedback, PropertyUpdate, Score

    rows = writer_rows()
    sink = postgres.PostgresSink(postgres_db)
    sink.write(rows[:6], [Feedback("r01", True, NOW), Score("r02", "accuracy", 90, NOW)])
    sink.write(
        rows[6:9],
        [
            Feedback("r03", False, NOW),
            Feedback("r01", False, NOW.replace(minute=59)),
            Score("r08", "q", 1, NOW),
        ],
    )
    sink.write([], [PropertyUpdate("r03", "team", "x")])
    with postgres.connect(postgres_db) as conn:
        conn.autocommit = True
        conn.execute("INSERT INTO feedback VALUES ('r10', true, %s)", [NOW])  # before its call
        sink.write(rows[9:], [])
        assert [r[0] for r in annotated_kept_and_built(postgres_db)] == ["r01", "r02", "r03", "r08", "r10"]
        conn.execute("UPDATE requests SET cost_usd = 0.25 WHERE request_id = 'r01'")
        conn.execute("DELETE FROM requests WHERE request_id = 'r08'")
        kept = annotated_kept_and_built(postgres_db)
        assert [(r[0], r[4]) for r in kept if r[0] in ("r01", "r08")] == [("r01", D("0.25"))]
        rating = catalog.parse_dimensions("rating")
        read = query.connect(postgres_db)
        try:
            assert annotated.TABLE in catalog.prepare(read, "cost", catalog.Options(by=rating), NOW).sql
        finally:
            read.close()
        copied = fetch(postgres_db, "cost", NOW, by=rating)
        with monkeypatch.context() as m:  # as on a log without the table: the calls read by id
            m.setattr(annotated, "TABLE", "no_such_table")
            assert fetch(postgres_db, "cost", NOW, by=rating) == copied
        # 11 calls left: r01 (down since its second feedback) and r03 down, r10 up, 8 unrated.
        assert {row[0]: row[1] for row in copied[1]} == {None: 8, "up": 1, "down": 2}
        conn.execute("TRUNCATE requests")
        assert annotated_kept_and_built(postgres_db) == []
    sink.close()


@pytest.mark.parametrize("until", [None, "2025-06-02", "2025-06-01 10:30", "2025-06-03 08:00:05"])
def test_the_most_recent_sessions_come_from_a_recent_stretch(
    both: tuple[str, str],  # noqa: F811 (the fixture)
    until: str | None,
) -> None:
    """Postgres picks the sessions among those active in the shortest recent stretch holding
    --limit of them; the answer is the one from grouping every call (DuckDB's)."""
    file, url = both
    opts: dict[str, Any] = {"until": catalog.parse_when(until)} if until else {}
    for limit in (1, 2, 3, 4):
        assert fetch(url, "sessions", NOW, limit=limit, **opts) == fetch(
            file, "sessions", NOW, limit=limit, **opts
        )
    conn = query.connect(url)
    try:
        sql = catalog.prepare(conn, "sessions", catalog.Options(limit=1), NOW).sql
    finally:
        conn.close()
    assert "WHERE session_id IN (SELECT session_id FROM r WHERE created_at >=" in sql


def test_a_model_user_session_or_property_of_any_length_is_written(postgres_db: str) -> None:
    """A btree entry holds at most 2,704 bytes: the rollups' keys hold md5s and the session index
    is a hash, so a call naming a 6,000-character model (or user, session, property) is written
    with its batch, and counted under its own name."""
    rows = writer_rows()
    long = "".join(chr(0x4E00 + (k * 7919) % 20000) for k in range(6000))  # incompressible
    at = COLUMNS_AT
    row = list(rows[0])
    row[at["model"]], row[at["user_id"]], row[at["session_id"]] = long, long + "u", long + "s"
    row[at["properties"]] = f'{{"{long}": "{long}"}}'
    sink = postgres.PostgresSink(postgres_db)
    sink.write([tuple(row), *rows[1:]], [])
    sink.close()
    kept = kept_and_built(postgres_db)
    assert sum(r[3] for r in kept if r[1] == "provider") == 12
    assert [(r[1], r[2], r[3]) for r in kept if r[2] is not None and len(r[2]) >= 6000] == [
        ("model", long, 1),
        (f"property:{long}", long, 1),
        ("session", long + "s", 1),
        ("user", long + "u", 1),
    ]
    from tests.unit.test_rollup import pg_rollup

    assert [r[2] for r in pg_rollup(postgres_db) if len(r[2] or "") >= 6000] == [long]


def errors_kept_and_built(url: str) -> list[tuple[Any, ...]]:
    """errors_by_day summed over proxies, checked against the same rows built from the calls."""
    groups = ", ".join(rollup_errors.GROUPS)
    sums = "sum(calls), sum(rate_limited), sum(retries), max(last_seen)"
    built = rollup_errors.rows_sql("requests")
    with postgres.connect(url, read_only=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        order = "GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"
        kept = conn.execute(f"SELECT day, {groups}, {sums} FROM {rollup_errors.TABLE} {order}").fetchall()
        again = conn.execute(
            f"SELECT day, {groups}, {sums} FROM ({built}) AS b({', '.join(rollup_errors.NAMES)}) {order}"
        ).fetchall()
    assert kept == again
    return kept


def test_failed_calls_are_kept_through_every_kind_of_write(postgres_db: str) -> None:
    """Two proxies' COPYs, then a later failure of the same kind (the group's last_seen moves on),
    its DELETE (last_seen goes back, read again from the calls), an UPDATE that mends a failure
    and a TRUNCATE: after each, the table is what the failed calls add up to."""
    rows = writer_rows()
    at = COLUMNS_AT["proxy_id"]
    sink = postgres.PostgresSink(postgres_db)
    sink.write([r[:at] + ("proxy-0",) + r[at + 1 :] for r in rows[:7]], [])
    sink.write([r[:at] + ("proxy-1",) + r[at + 1 :] for r in rows[7:]], [])
    sink.close()
    day = int(datetime(2025, 6, 1, tzinfo=UTC).timestamp()) // 86400
    # r05: llmtap's own 429; r07: an upstream 500 retried twice; r10: a disconnect, no status.
    assert errors_kept_and_built(postgres_db) == [
        (day, "anthropic", "claude-3-5-sonnet", 429, "rate limited by llmtap", 1, 1, 0,
         datetime(2025, 6, 1, 11, 0, 30, tzinfo=UTC)),
        (day + 1, "openai", "gpt-4o-mini", 500, "upstream 500", 1, 0, 2,
         datetime(2025, 6, 2, 9, 30, tzinfo=UTC)),
        (day + 2, "google", "gemini-1.5-pro", None, "client disconnected", 1, 0, 0,
         datetime(2025, 6, 3, 8, 0, 10, tzinfo=UTC)),
    ]  # fmt: skip
    with postgres.connect(postgres_db) as conn:
        conn.autocommit = True
        conn.execute(
            "INSERT INTO requests (request_id, created_at, provider, model, status, error, retries,"
            " proxy_id) VALUES ('r13', '2025-06-02 10:00+00', 'openai', 'gpt-4o-mini', 500, 'upstream 500',"
            " 1, 'proxy-0')"
        )
        assert errors_kept_and_built(postgres_db)[1][5:] == (2, 0, 3, datetime(2025, 6, 2, 10, tzinfo=UTC))
        conn.execute("DELETE FROM requests WHERE request_id = 'r13'")
        assert errors_kept_and_built(postgres_db)[1][5:] == (1, 0, 2, datetime(2025, 6, 2, 9, 30, tzinfo=UTC))
        conn.execute("UPDATE requests SET status = 200, error = NULL WHERE request_id = 'r07'")
        assert [r[3] for r in errors_kept_and_built(postgres_db)] == [429, None]
        conn.execute("TRUNCATE requests")
        assert errors_kept_and_built(postgres_db) == []


def test_errors_read_the_failed_calls_rollup_where_it_answers(postgres_db: str) -> None:
    load_postgres(postgres_db)
    by = catalog.parse_dimensions
    conn = query.connect(postgres_db)
    try:
        for opts in [
            {},
            {"by": by("model"), "since": catalog.parse_when("2d")},
            {"by": by("provider,model"), "provider": ["openai"], "tz": "Asia/Kolkata"},
            {"until": catalog.parse_when("2025-06-02"), "limit": 1},
        ]:
            assert rollup_errors.TABLE in catalog.prepare(conn, "errors", catalog.Options(**opts), NOW).sql, (
                opts
            )
        for opts in [{"by": by("day")}, {"by": by("user")}, {"user": ["alice"]}, {"rating": "down"}]:
            assert (
                rollup_errors.TABLE not in catalog.prepare(conn, "errors", catalog.Options(**opts), NOW).sql
            ), opts
    finally:
        conn.close()


def test_llmtap_migrate_upgrades_a_log_from_the_15_minute_rollup_alone(
    postgres_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log at the last release's schema (p001-p004) with calls in it: `llmtap migrate` re-keys
    the 15-minute rollup and builds the new ones from the calls logged; the writers' next batch is
    counted once in each; a second run has nothing to do."""
    from llmtap.cli import main
    from tests.unit.test_rollup import pg_rollup

    rows = writer_rows()
    with monkeypatch.context() as m:
        m.setattr(postgres, "MIGRATIONS", postgres.MIGRATIONS[:4])
        sink = postgres.PostgresSink(postgres_db)
        sink.write(rows[:8], [])
        sink.close()
    assert main(["migrate", "--db", postgres_db]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "applied p005_rollup_key, p006_read_indexes, p007_rollup_by_day, p008_errors_by_day,"
        " p009_latency_by_day, p010_annotated_calls in "
    )
    assert sum(r[3] for r in kept_and_built(postgres_db) if r[1] == "provider") == 8
    assert sum(r[5] for r in errors_kept_and_built(postgres_db)) == 2  # r05 and r07
    sink = postgres.PostgresSink(postgres_db)
    sink.write(rows[8:], [])
    sink.close()
    assert sum(r[3] for r in pg_rollup(postgres_db)) == 12
    assert sum(r[3] for r in kept_and_built(postgres_db) if r[1] == "provider") == 12
    assert sum(r[5] for r in errors_kept_and_built(postgres_db)) == 3
    assert main(["migrate", "--db", postgres_db]) == 0
    assert capsys.readouterr().out == "nothing to apply: up to date\n"


def test_llmtap_migrate_a_duckdb_file_and_an_unreachable_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmtap.cli import main
    from llmtap.storage.migrations import MIGRATIONS

    file = tmp_path / "tap.duckdb"
    assert main(["migrate", "--db", str(file)]) == 0
    assert capsys.readouterr().out.startswith(f"applied {', '.join(fn.__name__ for fn in MIGRATIONS)} in ")
    assert main(["migrate", "--db", str(file)]) == 0
    assert capsys.readouterr().out == "nothing to apply: up to date\n"
    from tests.servers import free_port

    url = f"postgresql://llmtap:secret@127.0.0.1:{free_port()}/x"
    assert main(["migrate", "--db", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"llmtap: cannot migrate postgresql://llmtap:***@127.0.0.1:{url.split(':')[3]}")
    assert "secret" not in err


def test_calls_logged_after_now_count_in_the_rollups_answers(both: tuple[str, str]) -> None:  # noqa: F811
    """A clock ahead of the reader's: with `now` before the last calls, a --since range read from
    the rollups (its buckets found without reading the rows) still counts them, as the calls do."""
    file, url = both
    early = datetime(2025, 6, 3, 7, 0, tzinfo=UTC)  # r09-r12 come after it
    since = catalog.parse_when("2d")
    for name, by in [
        ("summary", ""),
        ("cost", "day"),
        ("cost", "hour,model"),
        ("cost", "user"),
        ("errors", ""),
    ]:
        opts: dict[str, Any] = {"since": since, "tz": "America/New_York"}
        if by:
            opts["by"] = catalog.parse_dimensions(by)
        assert fetch(url, name, early, **opts) == fetch(file, name, early, **opts), (name, by)
    assert fetch(url, "summary", early, since=since)[1][0][0] == 12  # r01-r08 before it, r09-r12 after
