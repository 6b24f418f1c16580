"""The dashboard over a fleet's Postgres log answers as it does over a DuckDB file.

The reports' data set (tests/unit/test_catalog.py, every figure worked out by hand there) is loaded
into a DuckDB file and into a real Postgres database; `llmtap ui` serves each, and every view (the
Overview over several ranges, stacks, filters and zones, the Requests log page by page, a call's
drawer and its bodies, each report, the exports, the pickers) must give the same JSON, value for
value. Only the statements shown by "View SQL" differ (the dialects). The SQL page over Postgres
runs only for a role that cannot reach the server's files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal as D
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import pytest

from llmtap.reports import catalog
from llmtap.storage import postgres, query
from llmtap.ui import views
from tests.e2e.conftest import Proxy
from tests.e2e.test_dashboard import (  # noqa: F401
    PAINTED,
    RANGE,
    browser,
    db,
    get,
    llmtap_ui,
    open_page,
    serve,
    ui,
)  # fmt: skip
from tests.servers import PostgresServer
from tests.unit.test_catalog import SUMMARY
from tests.unit.test_reports_postgres import load_postgres

READER = "llmtap_dashboard_reader"  # a role with SELECT only, as the README advises for the SQL page


@pytest.fixture(scope="module")
def pg(postgres_cluster: PostgresServer) -> str:
    """The data set in a Postgres database (as superuser: the URL a proxy's writer might use)."""
    url = postgres_cluster.create_database("dashboard_equal")
    load_postgres(url)
    with postgres.connect(url) as conn:
        conn.autocommit = True
        conn.execute(f"DO $$ BEGIN CREATE ROLE {READER} LOGIN; EXCEPTION WHEN duplicate_object THEN END $$")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER}")
    return url


def reader(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://{READER}@")


@pytest.fixture(scope="module")
def pg_ui(pg: str) -> Iterator[str]:
    yield from serve(pg)


@pytest.fixture(scope="module")
def reader_ui(pg: str) -> Iterator[str]:
    yield from serve(reader(pg))


def shown(value: Any) -> Any:
    """A view's JSON without what may differ: the SQL behind it. JSON text (properties, headers,
    attempts) compares parsed: jsonb prints it with its own spacing."""
    if isinstance(value, dict):
        return {k: shown(v) for k, v in value.items() if k != "sql"}
    if isinstance(value, list):
        return [shown(v) for v in value]
    if isinstance(value, str) and value[:1] in "{[" and value[-1:] in "}]":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def same(duck: str, pgsql: str, path: str) -> Any:
    """The view at `path` from both servers: the same status and the same JSON; returns it."""
    a, b = get(duck, path), get(pgsql, path)
    assert (a[0], a[1]["content-type"]) == (b[0], b[1]["content-type"]), (path, a[2][:300], b[2][:300])
    if a[1]["content-type"] != "application/json":
        assert a[2] == b[2], path
        return a[2]
    assert shown(json.loads(a[2])) == shown(json.loads(b[2])), path
    return json.loads(b[2])


OVERVIEWS = [
    f"{RANGE}&tz=UTC",
    f"{RANGE}&tz=Asia/Tokyo",
    f"{RANGE}&tz=America/New_York&stack=provider",
    f"{RANGE}&tz=UTC&stack=user",
    f"{RANGE}&tz=UTC&stack=property:feature",
    f"{RANGE}&tz=UTC&stack=score:accuracy",
    f"{RANGE}&tz=UTC&model=gpt-4o&model=gpt-4o-mini",
    f"{RANGE}&tz=UTC&user=alice&rating=down",
    f"{RANGE}&tz=UTC&property=feature=search&score=accuracy>=80",
    "since=2025-06-02&until=2025-06-02&tz=Europe/Paris",  # hours
    "since=2025-06-01T09:00&until=2025-06-01T10:00&tz=UTC",  # minutes
    "tz=UTC",  # all time, in days
]


@pytest.mark.parametrize("q", OVERVIEWS)
def test_the_overview_is_the_same(ui: str, pg_ui: str, q: str) -> None:  # noqa: F811
    path = "/api/ui/overview?" + quote(q, safe="=&:")
    v = same(ui, pg_ui, path)
    assert set(v["sql"]) == {"cards", "cost_stacked", "calls", "errors", "latency"}
    assert v["rollup"] == same_json(ui, path)["rollup"]  # both read their rollup for the same parts


def test_the_cards_are_the_summary_report(pg_ui: str) -> None:
    cards = same_json(pg_ui, f"/api/ui/overview?{RANGE}&tz=UTC")["cards"]
    counts = ("calls", "input_tokens", "output_tokens", "unpriced", "errors", "cache_hits")
    assert {k: cards[k] for k in counts} == {k: SUMMARY[k] for k in counts}
    assert D(cards["cost_usd"]) == SUMMARY["cost_usd"]
    assert D(cards["cost_saved_usd"]) == SUMMARY["cost_saved_usd"]


def same_json(where: str, path: str) -> Any:
    status, _, body = get(where, path)
    assert status == 200, body
    return json.loads(body)


def test_sampled_latency_runs_on_postgres(pg_ui: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past LATENCY_ROWS_POSTGRES calls the percentiles come from a stable sample: of the calls
    whose created_at hashes low (Postgres' own hash: other calls than DuckDB's, the same share), or
    up to 10 % of whole pages (TABLESAMPLE SYSTEM, repeatable)."""
    for budget, sampled in ((5, "% 1000000 < 416667"), (1, "TABLESAMPLE SYSTEM (8.333333) REPEATABLE (0)")):
        monkeypatch.setattr(views, "LATENCY_ROWS_POSTGRES", budget)
        first = same_json(pg_ui, f"/api/ui/overview?{RANGE}&tz=UTC")
        assert first["latency_sample_pct"] == round(100 * budget / 12, 2)
        assert sampled in first["sql"]["latency"]
        assert same_json(pg_ui, f"/api/ui/overview?{RANGE}&tz=UTC")["latency"] == first["latency"]  # stable


def test_the_requests_log_pages_alike(ui: str, pg_ui: str) -> None:  # noqa: F811
    path = f"/api/ui/requests?{RANGE}&tz=UTC&limit=5"
    seen = []
    while True:
        page = same(ui, pg_ui, path)
        seen += [r[0] for r in page["rows"]]
        if page["next"] is None:
            break
        path = f"/api/ui/requests?{RANGE}&tz=UTC&limit=5&before={quote(page['next'])}"
    assert seen == [f"r{n:02d}" for n in range(12, 0, -1)]  # newest first, each once
    for q in ("model=gpt-4o", "user=alice&session=s1", "rating=down", "q=REFUND", "property=feature=search"):
        same(ui, pg_ui, f"/api/ui/requests?{RANGE}&tz=UTC&{q}")


def test_a_calls_drawer_and_bodies_alike(ui: str, pg_ui: str) -> None:  # noqa: F811
    for n in range(1, 13):
        drawer = same(ui, pg_ui, f"/api/ui/request/r{n:02d}")
        at = quote(drawer["request"]["created_at"])
        same(ui, pg_ui, f"/api/ui/request/r{n:02d}?at={at}")
        for which in ("request", "response"):
            same(ui, pg_ui, f"/api/ui/request/r{n:02d}/body/{which}")
    assert get(pg_ui, "/api/ui/request/nope")[0] == 404


@pytest.mark.parametrize("name", list(catalog.REPORTS))
def test_every_report_view_is_the_same(ui: str, pg_ui: str, name: str) -> None:  # noqa: F811
    v = same(ui, pg_ui, f"/api/ui/report/{name}?tz=UTC")
    assert v["rows"], name
    if name in catalog.GROUPED:
        for by in ("user", "day,model", "property:feature"):
            same(ui, pg_ui, f"/api/ui/report/{name}?tz=Asia/Tokyo&by={quote(by)}")


def test_pickers_are_the_same(ui: str, pg_ui: str) -> None:  # noqa: F811
    assert same(ui, pg_ui, "/api/ui/property-keys") == ["env", "feature"]
    assert same(ui, pg_ui, "/api/ui/score-names") == ["accuracy", "is_safe"]


@pytest.mark.parametrize("fmt", ["csv", "json"])
@pytest.mark.parametrize("view", ["requests", *[f"report/{n}" for n in catalog.REPORTS]])
def test_exports_are_the_same(ui: str, pg_ui: str, view: str, fmt: str) -> None:  # noqa: F811
    same(ui, pg_ui, f"/api/ui/export/{view}.{fmt}?{RANGE}&tz=UTC")


@pytest.mark.parametrize("view", ["requests", *[f"report/{n}" for n in catalog.REPORTS]])
def test_parquet_exports_have_the_same_rows_and_types(
    ui: str,  # noqa: F811
    pg_ui: str,
    view: str,
    tmp_path: Path,
) -> None:
    files = []
    for where, name in ((ui, "duck"), (pg_ui, "pg")):
        status, _, body = get(where, f"/api/ui/export/{view}.parquet?{RANGE}&tz=UTC")
        assert status == 200 and body[:4] == b"PAR1", body[:300]
        (tmp_path / f"{name}.parquet").write_bytes(body)
        files.append(tmp_path / f"{name}.parquet")
    with duckdb.connect() as conn:
        conn.execute("SET TimeZone = 'UTC'")
        kinds = [conn.execute(f"DESCRIBE SELECT * FROM '{f}'").fetchall() for f in files]
        rows = [conn.execute(f"SELECT * FROM '{f}'").fetchall() for f in files]
    assert [(c[0], c[1]) for c in kinds[1]] == [(c[0], c[1]) for c in kinds[0]]
    assert shown(rows[1]) == shown(rows[0])
    if view == "requests":
        assert len(rows[1]) == 12


def test_the_sql_page_runs_for_a_role_with_select_only(ui: str, reader_ui: str) -> None:  # noqa: F811
    text = "SELECT count(*) AS n, sum(cost_usd) AS c FROM requests;"
    v = same(ui, reader_ui, "/api/ui/sql?sql=" + quote(text))
    assert (v["columns"], v["rows"], v["total"]) == (["n", "c"], [[12, "0.016444500"]], 1)
    text = "SELECT request_id FROM requests ORDER BY 1 LIMIT 2 -- a comment to the end"
    assert get(reader_ui, "/api/ui/sql.csv?sql=" + quote(text))[2].decode() == "request_id\nr01\nr02\n"
    refused = {
        "COPY requests TO '/tmp/llmtap-leak.csv'": "syntax error",
        "SELECT pg_read_file('/etc/passwd')": "permission denied for function pg_read_file",
        "SELECT * FROM pg_ls_dir('/')": "permission denied for function pg_ls_dir",
        "DELETE FROM requests": "syntax error",
        "SELECT 1; DELETE FROM requests": "syntax error",
        "SELECT set_config('role', 'postgres', true)": "permission denied to set role",
    }
    for text, message in refused.items():
        status, _, body = get(reader_ui, "/api/ui/sql?sql=" + quote(text))
        assert (status, message in json.loads(body)["error"]["message"]) == (400, True), (text, body)
    assert not Path("/tmp/llmtap-leak.csv").exists()
    after = same_json(reader_ui, "/api/ui/sql?sql=" + quote("SELECT count(*) AS n FROM requests"))
    assert after["rows"] == [[12]]  # nothing was deleted


def test_a_slow_query_is_cancelled_on_the_server_and_the_view_says_so(pg: str) -> None:
    started = time.monotonic()
    with pytest.raises(views.ViewError, match=r"took longer than 0.5 s and was stopped") as e:
        views.run(pg, lambda conn: query.fetch(conn, "SELECT pg_sleep(30)"), seconds=0.5)
    assert e.value.status == 503 and time.monotonic() - started < 5
    with postgres.connect(pg) as conn:  # nothing left running on the server
        active = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'")
        assert active.fetchone() == (0,)


def test_the_sql_page_refuses_a_role_that_reaches_the_servers_files(pg_ui: str) -> None:
    """A superuser can switch its role back from inside a query: nothing typed runs for it."""
    for path in ("/api/ui/sql?sql=", "/api/ui/sql.csv?sql="):
        status, _, body = get(pg_ui, path + quote("SELECT 1 AS one"))
        assert status == 403, body
        message = json.loads(body)["error"]["message"]
        assert message.startswith("sql: the role 'postgres' may read the database server's files"), message


def test_llmtap_ui_over_postgres(pg: str) -> None:
    with llmtap_ui(pg) as where:
        assert same_json(where, f"/api/ui/overview?{RANGE}&tz=UTC")["cards"]["calls"] == 12


def test_a_proxy_logging_to_postgres_serves_its_dashboard(pg: str, start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy("--set", f"llmtap_db={pg}")
    where = proxy.api.removeprefix("http://")
    assert same_json(where, f"/api/ui/overview?{RANGE}&tz=UTC")["cards"]["calls"] == 12
    assert get(where, "/ui/overview")[0] == 200


def test_every_page_paints_over_postgres(open_page: Callable[..., Any], pg_ui: str) -> None:  # noqa: F811
    page = open_page(f"{RANGE}&tz=UTC", at=pg_ui)
    assert page.locator('[data-card="Calls"]').inner_text() == "12"
    assert page.locator('[data-card="Cost"]').inner_text() == f"${SUMMARY['cost_usd'].quantize(D('1e-9'))}"
    painted = page.evaluate(PAINTED)
    assert len(painted) == 4 and all(n > 500 for n in painted), painted
    for name in ("requests", "sessions", "users", "properties", "cache"):
        page = open_page(f"{RANGE}&tz=UTC", path=name, at=pg_ui)
        assert page.locator("#status").get_attribute("class") != "error", page.locator("#status").inner_text()
