"""The dashboard: its JSON over HTTP against the reports' known data set, and its page in Chromium.

The data set is the reports' (tests/unit/test_catalog.py: twelve calls over three days, every
figure worked out by hand there), served by `llmtap ui` over the file and by a running proxy on
its local API port. The browser tests drive Debian's Chromium with Playwright (offline: no
downloaded browser), as a user would: the page loads with no console error, every chart paints,
a click on a model filters the page and changes the URL, a time-zone switch moves day buckets.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from decimal import Decimal as D
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import genai_prices
import pytest
from genai_prices import Usage

from llmtap.storage import rollup
from llmtap.storage.migrations import migrate
from llmtap.ui import standalone, views
from tests.e2e.conftest import Proxy
from tests.unit.test_catalog import SUMMARY, load

RANGE = "since=2025-06-01&until=2025-06-04"  # four whole days, UTC unless tz says otherwise


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dashboard") / "tap.duckdb"
    with duckdb.connect(str(path)) as conn:
        migrate(conn)
        load(conn)
        rollup.rebuild(conn)  # as the writer keeps it: the Overview's long ranges read it
    return path


@pytest.fixture(scope="module")
def ui(db: Path) -> Iterator[str]:
    """`llmtap ui` over the file, in this process: host:port."""
    yield from serve(db)


def serve(target: str | Path) -> Iterator[str]:
    """`llmtap ui`'s server over `target` (a file or a Postgres URL) in a thread: host:port."""
    server = standalone._Server(0, target)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def get(where: str, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(where, timeout=30)
    conn.request("GET", path, headers={"Host": host or where})
    reply = conn.getresponse()
    body = reply.read()
    conn.close()
    return reply.status, {k.lower(): v for k, v in reply.getheaders()}, body


def overview(where: str, query: str) -> dict[str, Any]:
    status, headers, body = get(where, f"/api/ui/overview?{query}")
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def midnight(day: str, tz: str) -> int:
    return int(datetime.combine(date.fromisoformat(day), time(), ZoneInfo(tz)).timestamp())


def test_cards_are_the_summary_report(ui: str) -> None:
    v = overview(ui, f"{RANGE}&tz=UTC")
    cards = v["cards"]
    counts = ("calls", "input_tokens", "output_tokens", "unpriced", "errors", "cache_hits")
    assert {k: cards[k] for k in counts} == {k: SUMMARY[k] for k in counts}
    assert D(cards["cost_usd"]) == SUMMARY["cost_usd"]
    assert D(cards["cost_saved_usd"]) == SUMMARY["cost_saved_usd"]
    assert isinstance(cards["cost_usd"], str)  # money as exact decimal strings, never floats


def test_cost_by_model_per_day_with_gaps(ui: str) -> None:
    v = overview(ui, f"{RANGE}&tz=UTC")
    assert v["bucket"] == "day"
    assert v["axis"] == [midnight(d, "UTC") for d in ("2025-06-01", "2025-06-02", "2025-06-03", "2025-06-04")]
    assert v["stack"] == {"by": "model", "column": "model"}
    t = v["cost_stacked"]
    col = {c: i for i, c in enumerate(t["columns"])}
    got = [(r[col["day"]], r[col["model"]], r[col["calls"]], r[col["cost_usd"]] and D(r[col["cost_usd"]]))
           for r in t["rows"]]  # fmt: skip
    assert got == [
        ("2025-06-01", "claude-3-5-sonnet", 2, D("0.0105")),  # r04 (r05: a 429, unpriced)
        ("2025-06-01", "gpt-4o", 3, D("0.003")),  # r01 + r02 + r03 (a hit: 0)
        ("2025-06-02", "gpt-4o-mini", 3, D("0.0000195")),  # r06 (r07 failed, r08 a hit)
        ("2025-06-03", "gpt-4o", 2, D("0.001625")),  # r11 + r12
        ("2025-06-03", "gemini-1.5-pro", 2, D("0.0013")),  # r09 + r10
    ]  # 2025-06-04 has no calls: on the axis, in no row (a gap, not a zero)
    calls = v["calls"]
    ccol = {c: i for i, c in enumerate(calls["columns"])}
    assert [(r[ccol["day"]], r[ccol["calls"]], r[ccol["errors"]]) for r in calls["rows"]] == [
        ("2025-06-01", 5, 1), ("2025-06-02", 3, 1), ("2025-06-03", 4, 1),  # r05 429, r07 500, r10 dropped
    ]  # fmt: skip
    assert set(v["sql"]) == {"cards", "cost_stacked", "calls", "errors", "latency"}


def test_time_zone_moves_day_buckets(ui: str) -> None:
    """r08 (2025-06-02 23:30 UTC) is 2025-06-03 08:30 in Tokyo; the axis starts at Tokyo's midnight."""
    v = overview(ui, f"{RANGE}&tz=Asia/Tokyo")
    calls = v["calls"]
    col = {c: i for i, c in enumerate(calls["columns"])}
    assert [(r[col["day"]], r[col["calls"]]) for r in calls["rows"]] == [
        ("2025-06-01", 5), ("2025-06-02", 2), ("2025-06-03", 5)
    ]  # fmt: skip
    assert v["axis"][0] == midnight("2025-06-01", "Asia/Tokyo")
    days = ("2025-06-01", "2025-06-02", "2025-06-03")
    assert [r[0] for r in calls["rows"]] == [midnight(d, "Asia/Tokyo") for d in days]


def test_filters_are_the_cli_flags(ui: str) -> None:
    v = overview(ui, f"{RANGE}&tz=UTC&model=gpt-4o&property=feature=search")
    assert v["cards"]["calls"] == 4  # r01 (feature=search, env=prod), r02, r03, r12; not r11 (chat)
    v = overview(ui, f"{RANGE}&tz=UTC&model=gpt-4o")
    assert v["cards"]["calls"] == 5 and D(v["cards"]["cost_usd"]) == D("0.004625")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("since=yesterday", "since: expected a duration like 30m"),
        ("tz=Mars/Olympus", "tz: unknown time zone 'Mars/Olympus'"),
        ("colour=red", "unknown parameter 'colour'"),
        ("rating=meh", "rating: expected up or down, got 'meh'"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(ui: str, query: str, message: str) -> None:
    status, _, body = get(ui, f"/api/ui/overview?{query}")
    assert status == 400
    assert json.loads(body)["error"]["message"].startswith(message)


def test_page_headers_and_host_check(ui: str) -> None:
    status, headers, body = get(ui, "/ui/overview")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b'<script type="module" src="/static/app.js">' in body
    assert headers["content-security-policy"].startswith("default-src 'none'; script-src 'self';")
    assert headers["x-frame-options"] == "DENY" and "access-control-allow-origin" not in headers
    assert get(ui, "/")[0:2][0] == 302
    status, _, body = get(ui, "/ui/overview", host="evil.example:80")  # a DNS-rebinding page
    assert status == 421 and b"loopback Host" in body
    assert get(ui, "/static/uPlot.iife.min.js")[0] == 200
    assert get(ui, "/static/../views.py")[0] == 404


def test_served_by_a_running_proxy(db: Path, tmp_path: Path, start_proxy: Callable[..., Proxy]) -> None:
    """The proxy's local API port serves the same dashboard over its own file."""
    copy = tmp_path / "proxy.duckdb"
    shutil.copy(db, copy)
    proxy = start_proxy(db=copy)
    where = proxy.api.removeprefix("http://")
    v = overview(where, f"{RANGE}&tz=UTC")
    assert v["cards"]["calls"] == 12 and D(v["cards"]["cost_usd"]) == SUMMARY["cost_usd"]
    assert get(where, "/ui/overview")[0] == 200


def test_llmtap_ui_command(db: Path) -> None:
    with llmtap_ui(str(db)) as where:
        assert overview(where, f"{RANGE}&tz=UTC")["cards"]["calls"] == 12


@contextmanager
def llmtap_ui(db: str) -> Iterator[str]:
    """`llmtap ui --db DB --port 0` as a user starts it: host:port from the line it prints."""
    proc = subprocess.Popen([sys.executable, "-m", "llmtap.cli", "ui", "--db", db, "--port", "0"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("llmtap dashboard at http://127.0.0.1:") and f"read-only over {db}" in line
        yield line.split("http://", 1)[1].split("/", 1)[0]
    finally:
        proc.terminate()
        proc.wait(10)


# --- in the browser ---------------------------------------------------------------------------------

PAINTED = """() => [...document.querySelectorAll('[data-chart] canvas')].map(c => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is needed (scripts/setup.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium)
        yield b
        b.close()


@pytest.fixture
def open_page(browser: Any, ui: str) -> Iterator[Callable[..., Any]]:
    contexts, errors = [], []

    def open_(query: str, tz: str = "UTC", path: str = "overview", at: str | None = None) -> Any:
        """A page of the dashboard at `at` (host:port; default: `llmtap ui` over the data set)."""
        ctx = browser.new_context(viewport={"width": 1200, "height": 900}, timezone_id=tz)
        contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"http://{at or ui}/ui/{path}?{query}")
        page.wait_for_selector("body[data-ready]")
        return page

    open_.errors = errors  # type: ignore[attr-defined]
    yield open_
    for ctx in contexts:
        ctx.close()
    assert errors == []


def test_overview_page_paints_every_chart(open_page: Callable[..., Any], tmp_path: Path) -> None:
    page = open_page(f"{RANGE}&tz=UTC")
    assert page.locator('[data-card="Calls"]').inner_text() == "12"
    assert page.locator('[data-card="Cost"]').inner_text() == f"${SUMMARY['cost_usd'].quantize(D('1e-9'))}"
    painted = page.evaluate(PAINTED)
    assert len(painted) == 4 and all(n > 500 for n in painted), painted
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)


def test_sampled_latency_says_so(open_page: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Past views.LATENCY_ROWS calls the latency chart is an estimate, and its caption says from
    which share of the calls (here 5 of 12 called "many", in this process's `llmtap ui`)."""
    caption = '[data-chart="latency"] .approx'
    assert open_page(f"{RANGE}&tz=UTC").locator(caption).is_hidden()
    monkeypatch.setattr(views, "LATENCY_ROWS", 5)
    page = open_page(f"{RANGE}&tz=UTC")
    assert page.locator(caption).inner_text() == "approximate: from 41.67% of the calls"
    assert len(page.evaluate(PAINTED)) == 4


def test_a_click_on_a_model_filters_and_changes_the_url(open_page: Callable[..., Any]) -> None:
    page = open_page(f"{RANGE}&tz=UTC")
    page.locator('[data-top="models"] button[data-value="gpt-4o"]').click()
    from playwright.sync_api import expect

    expect(page.locator('[data-card="Calls"]')).to_have_text("5")  # no string eval: the CSP forbids it
    assert "model=gpt-4o" in page.url
    assert page.locator('[data-card="Cost"]').inner_text() == "$0.004625000"


def test_the_browser_zone_is_the_default(open_page: Callable[..., Any]) -> None:
    """No tz in the URL: the browser's zone decides the day buckets (Tokyo: r08 moves to 06-03)."""
    page = open_page(RANGE, tz="Asia/Tokyo")
    assert page.locator("#status").inner_text() == "4 day buckets, Asia/Tokyo"
    assert page.evaluate("new URLSearchParams(location.search).get('tz')") is None


# --- the requests log and its drawer ------------------------------------------------------------------


def test_requests_log_is_keyset_paged_newest_first(ui: str) -> None:
    seen, cursor, pages = [], "", 0
    while True:
        after = f"&before={cursor}" if cursor else ""
        v = overview_like(ui, f"/api/ui/requests?{RANGE}&tz=UTC&limit=5{after}")
        assert "OFFSET" not in v["sql"].upper()
        seen += [r[v["columns"].index("request_id")] for r in v["rows"]]
        pages += 1
        if not v["next"]:
            break
        cursor = v["next"].replace("+", "%2B")
    assert pages == 3
    assert seen == [f"r{i:02d}" for i in range(12, 0, -1)]


def test_requests_log_filters_and_search(ui: str, bodies: str) -> None:
    v = overview_like(ui, f"/api/ui/requests?{RANGE}&tz=UTC&model=gpt-4o-mini")
    assert [r[0] for r in v["rows"]] == ["r08", "r07", "r06"]
    status, _, body = get(ui, "/api/ui/requests?q=hello")
    assert status == 400 and b"q: a text search needs a time window" in body
    v = overview_like(bodies, "/api/ui/requests?since=2025-06-01&q=NEEDLE")
    assert [r[0] for r in v["rows"]] == ["big"]


def overview_like(where: str, path: str) -> dict[str, Any]:
    status, _, body = get(where, path)
    assert status == 200, body
    return json.loads(body)


BIG = "x" * (5 * 1024 * 1024)


@pytest.fixture(scope="module")
def bodies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A file with one call whose response is 5 MB, and one whose stream is a few events."""
    path = tmp_path_factory.mktemp("bodies") / "tap.duckdb"
    stream = "".join(f'data: {{"i": {i}}}\n\n' for i in range(7)) + "data: [DONE]\n\n"
    with duckdb.connect(str(path)) as conn:
        migrate(conn)
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
        chat_req = json.dumps({"model": "gpt-4o", "messages": messages})
        answer = {"index": 0, "message": {"role": "assistant", "content": "Hello!"}}
        chat_resp = json.dumps({"choices": [answer]})
        for rid, req, resp, streamed in (("big", '{"q": "needle"}', BIG, False), ("sse", "{}", stream, True),
                                         ("chat", chat_req, chat_resp, False)):  # fmt: skip
            conn.execute(
                "INSERT INTO requests (request_id, created_at, source, provider, api, host, method, path,"
                " model, status, streamed, request_body, response_body, request_headers)"
                " VALUES (?, TIMESTAMPTZ '2025-06-02 10:00:00+00', 'proxy', 'openai', 'openai',"
                " 'api.openai.com', 'POST', '/v1/chat/completions', 'gpt-4o', 200, ?, ?, ?, ?)",
                [rid, streamed, req, resp, '{"authorization": "[REDACTED]"}'],
            )
    server = standalone._Server(0, path)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_request_detail_and_a_large_body(bodies: str) -> None:
    v = overview_like(bodies, "/api/ui/request/big")
    resp = v["request"]["response_body"]
    assert resp["size"] == len(BIG) and "text" not in resp
    assert len(resp["head"]) == len(resp["tail"]) == 32 * 1024
    assert v["request"]["request_body"] == {"size": 15, "text": '{"q": "needle"}'}
    status, headers, body = get(bodies, "/api/ui/request/big/body/response")
    assert status == 200 and body == BIG.encode() and headers["content-disposition"].startswith("attachment;")
    assert get(bodies, "/api/ui/request/nope")[0] == 404


def test_requests_page_and_drawer(open_page: Callable[..., Any]) -> None:
    from playwright.sync_api import expect

    page = open_page(f"{RANGE}&tz=UTC&limit=50", path="requests")
    expect(page.locator("#log tbody tr")).to_have_count(12)
    page.locator('#log tbody tr[data-id="r04"]').click()
    drawer = page.locator("#drawer")
    expect(drawer.locator("h2")).to_have_text("anthropic / claude-3-5-sonnet")
    expect(drawer.locator("dl")).to_contain_text("$0.010500000")


def test_a_5_mb_body_opens_without_hanging(open_page: Callable[..., Any], bodies: str) -> None:
    from playwright.sync_api import expect

    page = open_page("since=2025-06-01", path="requests", at=bodies)
    page.locator('#log tbody tr[data-id="big"]').click()
    expect(page.locator('[data-body="response"]')).to_contain_text("5,242,880 characters", timeout=5000)
    page.keyboard.press("Escape")  # the drawer covers the log, as it would a user's
    expect(page.locator("#drawer")).to_be_hidden()
    page.locator('#log tbody tr[data-id="sse"]').click()
    expect(page.locator('[data-body="response"] .events li')).to_have_count(8, timeout=5000)


# --- report pages, exports, SQL -----------------------------------------------------------------------


def test_report_view_is_the_cli_report(ui: str) -> None:
    v = overview_like(ui, "/api/ui/report/cost?tz=UTC&by=user")
    col = v["columns"]
    got = [(r[col.index("user_id")], r[col.index("calls")], D(r[col.index("cost_usd")])) for r in v["rows"]]
    assert got == [("bob", 3, D("0.011475")), ("alice", 6, D("0.00495")), ("carol", 2, D("0.0000195")),
                   (None, 1, D("0"))]  # fmt: skip
    status, _, body = get(ui, "/api/ui/report/cost?by=colour")
    assert status == 400 and b"by: cannot group by 'colour'" in body
    assert overview_like(ui, "/api/ui/property-keys") == ["env", "feature"]


def test_exports_are_written_by_the_cli_code(ui: str, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llmtap.cli import main

    status, headers, body = get(ui, "/api/ui/export/report/cost.csv?tz=UTC&by=user")
    assert status == 200 and headers["content-type"] == "text/csv; charset=utf-8"
    assert main(["report", "cost", "--by", "user", "--format", "csv", "--db", str(db)]) == 0
    assert body.decode() == capsys.readouterr().out
    status, _, body = get(ui, f"/api/ui/export/requests.json?{RANGE}&tz=UTC&model=gpt-4o")
    assert [r["request_id"] for r in json.loads(body)] == ["r12", "r11", "r03", "r02", "r01"]
    status, headers, body = get(ui, f"/api/ui/export/requests.parquet?{RANGE}&tz=UTC")
    assert status == 200 and body[:4] == b"PAR1"
    tmp = db.parent / "export.parquet"
    tmp.write_bytes(body)
    with duckdb.connect() as conn:
        exported = conn.execute(f"SELECT count(*), sum(cost_usd) FROM '{tmp}'").fetchone()
    assert exported == (12, SUMMARY["cost_usd"])


def test_sql_box_is_read_only_and_refuses_other_files(ui: str) -> None:
    from urllib.parse import quote

    text = "SELECT count(*) AS n, sum(cost_usd) AS c FROM requests"
    v = overview_like(ui, "/api/ui/sql?sql=" + quote(text))
    assert (v["columns"], v["rows"], v["total"]) == (["n", "c"], [[12, "0.016444500"]], 1)
    for text in ("COPY requests TO '/tmp/llmtap-leak.csv'", "SELECT * FROM read_csv('/etc/passwd')",
                 "ATTACH '/tmp/other.duckdb'", "DELETE FROM requests"):  # fmt: skip
        status, _, body = get(ui, "/api/ui/sql?sql=" + quote(text))
        assert status == 400, text
        message = json.loads(body)["error"]["message"]
        assert "file system operations are disabled" in message or "read-only" in message, message
    assert not Path("/tmp/llmtap-leak.csv").exists()
    text = "SELECT request_id FROM requests ORDER BY 1 LIMIT 2"
    status, _, body = get(ui, "/api/ui/sql.csv?sql=" + quote(text))
    assert body.decode() == "request_id\nr01\nr02\n"


def test_cross_site_writes_are_refused(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy()
    where = proxy.api.removeprefix("http://")
    conn = http.client.HTTPConnection(where, timeout=30)
    headers = {"Host": where, "Origin": "https://evil.example", "Content-Type": "application/json"}
    conn.request("POST", "/v1/request/r01/feedback", body=b'{"rating": true}', headers=headers)
    reply = conn.getresponse()
    assert reply.status == 403 and b"cross-site POST refused" in reply.read()
    conn.close()


@pytest.mark.parametrize("name", ["overview", "requests", "sessions", "users", "properties", "cache", "sql"])
def test_every_page_loads_without_a_console_error(open_page: Callable[..., Any], name: str) -> None:
    page = open_page(f"{RANGE}&tz=UTC", path=name)
    assert page.locator("#status").get_attribute("class") != "error", page.locator("#status").inner_text()


def test_sql_page_refuses_copy(open_page: Callable[..., Any]) -> None:
    from playwright.sync_api import expect

    page = open_page("", path="sql")
    page.locator("#sqlform textarea").fill("COPY requests TO '/tmp/llmtap-leak.csv'")
    page.locator("#sqlform button").click()
    expect(page.locator("#status")).to_contain_text("file system operations are disabled")
    refused = "Failed to load resource: the server responded with a status of 400 (Bad Request)"
    open_page.errors.remove(refused)  # the refusal itself: the one console line it may cause
    page.locator("#sqlform textarea").fill("SELECT count(*) AS n FROM requests")
    page.locator("#sqlform button").click()
    expect(page.locator("#sql-result td")).to_have_text("12")


# --- live ----------------------------------------------------------------------------------------------


def test_live_page_shows_calls_while_open(open_page: Callable[..., Any], gateway: Proxy) -> None:
    """Calls made while the page is open appear, pushed from the proxy's memory: a stream first as
    'streaming', then replaced by its finished row."""
    import requests
    from playwright.sync_api import expect

    where = gateway.api.removeprefix("http://")
    page = open_page("", path="live", at=where)
    expect(page.locator("#status")).to_contain_text("connected")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    reply = requests.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30)
    row = page.locator(f'#live tr[data-id="{reply.headers["helicone-id"]}"]')
    expect(row).to_have_attribute("data-state", "done")
    expect(row).to_contain_text("200")
    # Then the writer's tokens and cost, sent back to the proxy while the page listens: the
    # reply's own usage, priced here by genai-prices.
    usage, model = reply.json()["usage"], reply.json()["model"]
    price = genai_prices.calc_price(
        Usage(input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"]), model,
        provider_id="openai", genai_request_timestamp=datetime.now(UTC),
    ).total_price.quantize(D("1e-9"))  # fmt: skip
    expect(row.locator('[data-field="tokens"]')).to_have_text(
        f"{usage['prompt_tokens']} / {usage['completion_tokens']}"
    )
    expect(row.locator('[data-field="cost"]')).to_have_text(f"${price}")
    expect(row).to_contain_text(model)
    slow = {"x-fake-delay-ms": "400", "x-fake-reply": "one two three four five"}
    with requests.post(f"{gateway.url}/v1/chat/completions", json={**body, "stream": True}, headers=slow,
                       stream=True, timeout=30) as stream:  # fmt: skip
        rid = stream.headers["helicone-id"]
        streaming = page.locator(f'#live tr[data-id="{rid}"]')
        expect(streaming).to_have_attribute("data-state", "streaming")
        for _ in stream.iter_content(None):
            pass
    expect(streaming).to_have_attribute("data-state", "done")
    [written] = gateway.wait_rows("SELECT input_tokens, output_tokens, cost_usd FROM requests"
                                  " WHERE request_id = ?", 1, [rid])  # fmt: skip
    tokens = f"{written['input_tokens']} / {written['output_tokens']}"
    expect(streaming.locator('[data-field="tokens"]')).to_have_text(tokens)  # the stream's, as written
    expect(streaming.locator('[data-field="cost"]')).to_have_text(f"${written['cost_usd']}")
    assert page.locator("#live tbody tr").count() == 2


def test_live_needs_a_proxy(ui: str) -> None:
    status, _, body = get(ui, "/api/ui/live")
    assert status == 404 and b"needs a running proxy" in body


def test_a_session_has_a_timeline(open_page: Callable[..., Any]) -> None:
    """One session picked: its calls on one time axis, oldest first, labelled by path and model."""
    from playwright.sync_api import expect

    page = open_page(f"{RANGE}&tz=UTC&session=s1", path="sessions")
    rows = page.locator(".gantt-row")
    expect(rows).to_have_count(4)
    assert [rows.nth(i).get_attribute("data-id") for i in range(4)] == ["r01", "r02", "r03", "r12"]
    assert rows.nth(1).inner_text() == "/plan/step · gpt-4o"
    expect(page.locator("figcaption").last).to_contain_text("Timeline of 4 calls over")


def test_rate_score_and_tag_from_the_drawer(open_page: Callable[..., Any], gateway: Proxy) -> None:
    """Served by a proxy, the drawer's thumbs, score and property go through the local API and land
    in the file, as `llmtap feedback / score / property` would put them there."""
    import requests
    from playwright.sync_api import expect

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    rid = requests.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30).headers["helicone-id"]
    gateway.wait_rows("SELECT request_id FROM requests WHERE request_id = ?", 1, [rid])
    where = gateway.api.removeprefix("http://")
    page = open_page("since=1h", path="requests", at=where)
    page.locator(f'#log tbody tr[data-id="{rid}"]').click()
    expect(page.locator("#drawer h2")).to_have_text("openai / gpt-4o-mini")
    page.locator('#annotate [data-rating="false"]').click()
    expect(page.locator("#annotate-status")).to_have_text("saved: in the file within a second")
    page.locator("#annotate input[name=score]").fill("accuracy=87")
    page.locator("#annotate input[name=property]").fill("reviewed=yes")
    page.locator("#annotate button[type=submit]").click()
    expect(page.locator("#annotate-status")).to_have_text("saved: in the file within a second")
    (fb,) = gateway.wait_rows("SELECT rating FROM feedback WHERE request_id = ?", 1, [rid])
    (score,) = gateway.wait_rows("SELECT name, value FROM scores WHERE request_id = ?", 1, [rid])
    assert (fb["rating"], score["name"], score["value"]) == (False, "accuracy", 87)
    sql = "SELECT properties->>'reviewed' AS reviewed FROM requests WHERE request_id = ? AND reviewed = 'yes'"
    (row,) = gateway.wait_rows(sql, 1, [rid])
    assert row["reviewed"] == "yes"


def test_overview_stacks_by_user_or_property(ui: str) -> None:
    v = overview_like(ui, f"/api/ui/overview?{RANGE}&tz=UTC&stack=user")
    assert v["stack"] == {"by": "user", "column": "user_id"}
    col = v["cost_stacked"]["columns"]
    per_user: dict[Any, D] = {}
    for r in v["cost_stacked"]["rows"]:
        user, cost = r[col.index("user_id")], D(r[col.index("cost_usd")] or 0)
        per_user[user] = per_user.get(user, D(0)) + cost
    assert per_user == {"bob": D("0.011475"), "alice": D("0.00495"), "carol": D("0.0000195"), None: D("0")}
    v = overview_like(ui, f"/api/ui/overview?{RANGE}&tz=UTC&stack=property:feature")
    assert v["stack"] == {"by": "property:feature", "column": "feature"}
    calls = v["calls"]  # the per-bucket sums do not depend on the stacking
    assert [r[calls["columns"].index("calls")] for r in calls["rows"]] == [5, 3, 4]
    v = overview_like(ui, f"/api/ui/overview?{RANGE}&tz=UTC&stack=score:accuracy")
    col = v["cost_stacked"]["columns"]
    values = {r[col.index("accuracy")] for r in v["cost_stacked"]["rows"]}
    assert values == {70, 80, 95, None}  # r01's latest accuracy is 70; most calls have no score
    assert overview_like(ui, "/api/ui/score-names") == ["accuracy", "is_safe"]
    status, _, body = get(ui, f"/api/ui/overview?{RANGE}&stack=day")
    assert status == 400 and b"stack: expected model, provider, user" in body


def test_stacking_switch_in_the_page(open_page: Callable[..., Any]) -> None:
    from playwright.sync_api import expect

    page = open_page(f"{RANGE}&tz=UTC")
    page.locator("#stack").select_option("user")
    expect(page.locator('[data-top="models"] figcaption')).to_have_text("Top user by cost")
    assert "stack=user" in page.url
    page.locator('[data-top="models"] button[data-value="bob"]').click()
    expect(page.locator('[data-card="Calls"]')).to_have_text("3")
    assert "user=bob" in page.url


def test_the_last_hour_in_minutes(ui: str) -> None:
    v = overview_like(ui, "/api/ui/overview?since=1h&tz=UTC")
    assert v["bucket"] == "minute" and len(v["axis"]) in (60, 61)  # the hour may straddle 61 minutes
    assert {b - a for a, b in zip(v["axis"], v["axis"][1:], strict=False)} == {60}
    assert v["cost_stacked"]["rows"] == []  # the data set is from 2025: every minute a gap


def test_cache_page_charts_and_users_link_to_the_overview(open_page: Callable[..., Any]) -> None:
    from playwright.sync_api import expect

    page = open_page(f"{RANGE}&tz=UTC", path="cache")
    expect(page.locator('[data-chart="report"] canvas')).to_have_count(1)
    painted = page.evaluate("""() => { const c = document.querySelector('[data-chart="report"] canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }""")
    assert painted > 500
    page = open_page(f"{RANGE}&tz=UTC", path="users")
    page.locator("text=over time, on the Overview").click()
    expect(page.locator('[data-top="models"] figcaption')).to_have_text("Top user by cost")
    assert "/ui/overview?" in page.url and "stack=user" in page.url


def test_a_chat_body_reads_as_a_conversation(open_page: Callable[..., Any], bodies: str) -> None:
    from playwright.sync_api import expect

    page = open_page("since=2025-06-01", path="requests", at=bodies)
    page.locator('#log tbody tr[data-id="chat"]').click()
    request = page.locator('[data-body="request"] .turn')
    expect(request).to_have_count(2)
    assert request.all_inner_texts() == ["system\nBe brief.", "user\nSay hello"]
    answer = page.locator('[data-body="response"] .turn')
    expect(answer).to_have_count(1)
    assert answer.inner_text() == "assistant\nHello!"
    page.locator('[data-body="request"] button[data-view="json"]').click()
    expect(page.locator('[data-body="request"] pre')).to_contain_text('"role": "system"')


def test_behind_a_key_the_dashboard_logs_in_once(
    open_page: Callable[..., Any], start_proxy: Callable[..., Proxy]
) -> None:
    """With llmtap_api_key, /ui/overview?key=K sets an HttpOnly cookie and drops the key from the URL;
    without it every page and view is a 401. A client cannot claim to be authorized by a header."""
    from playwright.sync_api import expect

    proxy = start_proxy("--set", "llmtap_api_key=team-secret")
    where = proxy.api.removeprefix("http://")
    assert get(where, "/ui/overview")[0] == 401
    assert get(where, "/ui/overview?key=wrong")[0] == 401
    status, headers, _ = get(where, "/ui/overview?since=24h&key=team-secret")
    assert status == 302 and headers["location"] == "/ui/overview?since=24h"
    assert headers["set-cookie"] == "llmtap_key=team-secret; HttpOnly; SameSite=Strict; Path=/"
    conn = http.client.HTTPConnection(where, timeout=30)
    spoofed = {"Host": "evil.example", "X-Llmtap-Authorized": "1"}
    conn.request("GET", "/api/ui/overview?since=24h", headers=spoofed)
    assert conn.getresponse().status == 401
    conn.close()
    page = open_page("key=team-secret", at=where)
    assert "key=" not in page.url
    expect(page.locator("#status")).to_contain_text("no calls logged yet")  # past the key: no 401
    refused = "Failed to load resource: the server responded with a status of 503 (Service Unavailable)"
    while refused in open_page.errors:  # the empty file's answer, once per view the page asked for
        open_page.errors.remove(refused)


def test_a_client_header_cannot_skip_the_host_check(ui: str, start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy()
    where = proxy.api.removeprefix("http://")
    conn = http.client.HTTPConnection(where, timeout=30)
    conn.request("GET", "/api/ui/overview", headers={"Host": "evil.example", "X-Llmtap-Authorized": "1"})
    reply = conn.getresponse()
    assert reply.status == 421 and b"loopback Host" in reply.read()
    conn.close()


def test_top_users_and_property_values_filter_on_click(open_page: Callable[..., Any]) -> None:
    from playwright.sync_api import expect

    page = open_page(f"{RANGE}&tz=UTC")
    users = page.locator('[data-top="users"] button')
    assert users.all_inner_texts() == ["bob", "alice", "carol", "(none)"]  # cost --by user, by cost
    values = page.locator('[data-top="property"] button')
    caption = page.locator('[data-top="property"] figcaption')
    expect(caption).to_have_text("Top values of property env by cost")  # the first key, by name
    assert values.all_inner_texts() == ["(none)", "prod"]  # only r01 has env=prod ($0.001)
    users.first.click()
    expect(page.locator('[data-card="Calls"]')).to_have_text("3")
    assert "user=bob" in page.url
