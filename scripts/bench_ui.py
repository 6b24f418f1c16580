"""Dashboard speed on bench_reports' 10M-row file: every endpoint, the Overview's paint, asset size.

What is measured (issue 14: every dashboard endpoint < 300 ms median on the 10M-row file; the
Overview painted, all charts, < 1.5 s in headless Chromium; the page's own assets < 150 KB gzipped):

- the file: bench_reports.generate (the same synthetic data set: 90 days up to now, 12 models,
  ~2,000 users, ~50,000 sessions; bodies NULL);
- endpoints: `llmtap ui`'s server (the same handler as the proxy's local API) on loopback, each JSON
  view fetched over HTTP like the page does, 5 times after one untimed warm-up, median and max:
  Overview at 24h / 7d / 30d / 90d, the Requests log's first page and a page 200 pages deep (keyset),
  a request's drawer, a text search over 24h, each report page (Sessions, Users, Properties, Cache),
  and a SQL query;
- paint: Debian's Chromium driven by Playwright opens /ui/overview?since=30d and waits for the page's
  charts mark, set once every chart has been drawn (navigation start to then, 3 runs, median; the
  top lists below the charts come after it);
- assets: gzip -9 of what the page loads (index.html, app.js, style.css, uPlot's JS and CSS).

With `--postgres` the same data set is copied into a throwaway Postgres cluster (bench_fleet.py's
copy: the rollups' triggers build them as the rows arrive, then VACUUM ANALYZE) and the dashboard
reads that fleet log instead, as a role that may only SELECT (the SQL page refuses any other).

Targets print PASS/MISS; the exit code is 0 unless something crashes (a measurement, not a test).

    python scripts/bench_ui.py [--quick] [--rows N] [--postgres] [--json FILE] [--keep]
"""

from __future__ import annotations

import gzip
import http.client
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE), str(HERE.parent / "addon")) if p not in sys.path]

import bench_reports  # noqa: E402
from benchkit import arguments, verdict, workspace, write_json  # noqa: E402

from llmtap.ui import server, standalone  # noqa: E402

ENDPOINT_TARGET_MS = 300.0
PAINT_TARGET_MS = 1500.0
ASSETS_TARGET_KB = 150.0
RUNS = 5


def endpoints(deep_cursor: str, request_id: str, request_at: str) -> dict[str, str]:
    sql = "SELECT model, count(*) AS calls, sum(cost_usd) AS cost_usd FROM requests GROUP BY model"
    return {
        "overview 24h": "/api/ui/overview?since=24h&tz=UTC",
        "overview 7d": "/api/ui/overview?since=7d&tz=UTC",
        "overview 30d": "/api/ui/overview?since=30d&tz=UTC",
        "overview 90d": "/api/ui/overview?since=90d&tz=UTC",
        "requests, page 1": "/api/ui/requests?since=90d&tz=UTC",
        "requests, page 200 (keyset)": f"/api/ui/requests?since=90d&tz=UTC&before={quote(deep_cursor)}",
        "request drawer": f"/api/ui/request/{request_id}?at={quote(request_at)}",
        "requests, text search 24h": "/api/ui/requests?since=24h&tz=UTC&q=needle",
        "sessions": "/api/ui/report/sessions?since=7d&tz=UTC",
        "users": "/api/ui/report/cost?since=30d&tz=UTC&by=user",
        "properties": "/api/ui/report/cost?since=30d&tz=UTC&by=property:feature",
        "cache": "/api/ui/report/cache?since=30d&tz=UTC&by=day,model",
        "sql": f"/api/ui/sql?sql={quote(sql)}",
    }


def fetch(where: str, path: str) -> tuple[float, int, bytes]:
    conn = http.client.HTTPConnection(where, timeout=120)
    start = time.perf_counter()
    conn.request("GET", path, headers={"Host": where})
    reply = conn.getresponse()
    body = reply.read()
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed * 1000, reply.status, body


def deep_page(where: str, pages: int) -> tuple[str, str, str]:
    """Walk the log `pages` pages deep (as "Load more" does): the cursor there, and the first row's
    request id and created_at (what the drawer is opened with)."""
    import json

    cursor, first, first_at = "", "", ""
    for _ in range(pages):
        path = "/api/ui/requests?since=90d&tz=UTC" + (f"&before={quote(cursor)}" if cursor else "")
        _, status, body = fetch(where, path)
        page = json.loads(body)
        first, first_at = first or page["rows"][0][0], first_at or page["rows"][0][1]
        cursor = page["next"]
    return cursor, first, first_at


def time_endpoints(where: str, log: Any) -> dict[str, dict[str, Any]]:
    log("walking the log 200 pages deep for the keyset cursor")
    cursor, request_id, request_at = deep_page(where, 200)
    out = {}
    for name, path in endpoints(cursor, request_id, request_at).items():
        fetch(where, path)  # warm-up
        runs = []
        for _ in range(RUNS):
            ms, status, body = fetch(where, path)
            if status != 200:
                raise RuntimeError(f"{name}: {status} {body[:200]!r}")
            runs.append(ms)
        out[name] = {"median_ms": statistics.median(runs), "max_ms": max(runs), "bytes": len(body)}
        log(f"  {name:<30} {out[name]['median_ms']:8.1f} ms")
    return out


def time_paint(where: str, log: Any) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        return {"error": "chromium not installed"}
    runs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        for i in range(RUNS - 1):
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"http://{where}/ui/overview?since=30d&tz=UTC")
            page.wait_for_selector("body[data-charts]", timeout=60_000)
            ms = page.evaluate("performance.now()")  # since navigation start: every chart drawn
            if i:  # the first load warms the browser's caches
                runs.append(ms)
            page.close()
        browser.close()
    log(f"  overview painted: {statistics.median(runs):.0f} ms (median of {len(runs)})")
    return {"median_ms": statistics.median(runs), "runs_ms": runs}


def asset_sizes() -> dict[str, int]:
    own = [server.STATIC / n for n in ("index.html", "app.js", "style.css")]
    files = own + list(server.VENDORED.values())
    return {f.name: len(gzip.compress(f.read_bytes(), 9)) for f in files}


def run(args: Any) -> dict[str, Any]:
    rows = args.rows or (1_000_000 if args.quick else 10_000_000)
    result: dict[str, Any] = {"rows": rows, "postgres": args.postgres}
    with workspace("bench-ui", args.keep) as ws:
        db = ws.tmp / "bench.duckdb"
        ws.log(f"generating {rows:,} rows in {db} ...")
        result["generate"] = bench_reports.generate(db, rows)
        pg = None
        target: str | Path = db
        if args.postgres:
            pg, target = postgres_copy(ws, db)
        httpd = standalone._Server(0, target)
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        where = f"127.0.0.1:{httpd.server_address[1]}"
        try:
            result["endpoints"] = time_endpoints(where, ws.log)
            result["paint"] = time_paint(where, ws.log)
        finally:
            httpd.shutdown()
            httpd.server_close()
            if pg is not None:
                pg.remove()
    result["assets_gzip_bytes"] = asset_sizes()
    return result


def postgres_copy(ws: Any, file: Path) -> tuple[Any, str]:
    """The file's rows in a new Postgres cluster; the server and a SELECT-only role's URL."""
    import bench_fleet

    from llmtap.storage import postgres
    from tests.servers import PostgresServer

    pg = PostgresServer().start()
    url = pg.create_database("ui")
    ws.log(f"copied into Postgres in {bench_fleet.copy_to_postgres(file, url, ws.tmp):.0f} s")
    with postgres.connect(url) as conn:
        conn.autocommit = True
        conn.execute("CREATE ROLE llmtap_ui LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO llmtap_ui")
    return pg, url.replace("postgres@", "llmtap_ui@", 1)


def report(r: dict[str, Any]) -> str:
    slowest = max(r["endpoints"].items(), key=lambda kv: kv[1]["median_ms"])
    ok = sum(v["median_ms"] < ENDPOINT_TARGET_MS for v in r["endpoints"].values())
    paint = r["paint"].get("median_ms", float("nan"))
    assets = sum(r["assets_gzip_bytes"].values()) / 1024
    out = [
        f"llmtap dashboard on {r['rows']:,} synthetic rows (bench_reports' data set)"
        f"{' in Postgres' if r.get('postgres') else ''}, one run",
        "",
        f"{'target':<46}{'measured':>16}  {'target':<10}",
        f"{'endpoints < 300 ms (median of 5)':<46}{f'{ok}/{len(r["endpoints"])}':>16}  {'all':<10}"
        f"{verdict(ok == len(r['endpoints']))}",
        f"{'  slowest: ' + slowest[0]:<46}{slowest[1]['median_ms']:>13.1f} ms  {'< 300 ms':<10}"
        f"{verdict(slowest[1]['median_ms'] < ENDPOINT_TARGET_MS)}",
        f"{'overview painted, all charts (Chromium)':<46}{paint:>13.0f} ms  {'< 1500 ms':<10}"
        f"{verdict(paint < PAINT_TARGET_MS)}",
        f"{'page assets, gzip -9':<46}{assets:>13.1f} KB  {'< 150 KB':<10}"
        f"{verdict(assets < ASSETS_TARGET_KB)}",
        "",
        f"{'endpoint':<34}{'median ms':>10}{'max ms':>10}{'bytes':>10}",
    ]
    for name, v in r["endpoints"].items():
        out.append(f"{name:<34}{v['median_ms']:>10.1f}{v['max_ms']:>10.1f}{v['bytes']:>10,}")
    sizes = ", ".join(f"{k} {v:,}" for k, v in r["assets_gzip_bytes"].items())
    out.append(f"assets (gzip -9 bytes): {sizes}")
    return "\n".join(out)


def main() -> None:
    parser = arguments(__doc__, keep="the DuckDB file", quick="1M rows, about a minute")
    parser.add_argument("--rows", type=int, help="synthetic requests rows (default 10,000,000; --quick 1M)")
    parser.add_argument("--postgres", action="store_true", help="read the data set from a Postgres log")
    args = parser.parse_args()
    result = run(args)
    print(report(result))
    write_json(args.json, result)


if __name__ == "__main__":
    main()
