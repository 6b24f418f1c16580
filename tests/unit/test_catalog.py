"""`llmtap report`: every report, filter and format against hand-computed figures on a known data set.

The data set (twelve calls over four models, three users, three sessions, hits and misses, errors,
ratings and scores) is small enough that every expected number below is worked out by hand from
the table in DATA; the comments say how.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import duckdb
import pytest

from llmtap.cli import main
from llmtap.reports import catalog
from llmtap.storage import query
from llmtap.storage.migrations import MIGRATIONS, migrate

Out = pytest.CaptureFixture[str]

# id, created_at (UTC), provider, model, user, session, path, name, properties, status, error,
# latency, ttft, in, out, cost, cache_status, reference, saved, rate_limited, retries
S, C = '{"feature": "search"}', '{"feature": "chat"}'
DATA = [
    ("r01", "2025-06-01 10:00:00", "openai", "gpt-4o", "alice", "s1", "/plan", "Trip",
     '{"feature": "search", "env": "prod"}', 200, None, 1000, 200, 100, 50, "0.001", "MISS",
     None, None, None, None),
    ("r02", "2025-06-01 10:00:05", "openai", "gpt-4o", "alice", "s1", "/plan/step", "Trip",
     S, 200, None, 2000, None, 200, 100, "0.002", None, None, None, None, None),
    ("r03", "2025-06-01 10:00:10", "openai", "gpt-4o", "alice", "s1", "/plan/step", "Trip",
     S, 200, None, 500, None, 100, 50, "0", "HIT", "r01", "0.001", None, None),
    ("r04", "2025-06-01 11:00:00", "anthropic", "claude-3-5-sonnet", "bob", "s2", "/draft", "Essay",
     C, 200, None, 3000, 300, 1000, 500, "0.0105", None, None, None, None, None),
    ("r05", "2025-06-01 11:00:30", "anthropic", "claude-3-5-sonnet", "bob", "s2", "/draft/review", "Essay",
     C, 429, "rate limited by llmtap", 1, None, None, None, None, None, None, None, True,
     None),
    ("r06", "2025-06-02 09:00:00", "openai", "gpt-4o-mini", "carol", None, None, None,
     "{}", 200, None, 400, 100, 50, 20, "0.0000195", "MISS", None, None, None, None),
    ("r07", "2025-06-02 09:30:00", "openai", "gpt-4o-mini", "carol", None, None, None,
     S, 500, "upstream 500", 700, None, None, None, None, None, None, None, None, 2),
    ("r08", "2025-06-02 23:30:00", "openai", "gpt-4o-mini", None, None, None, None,
     "{}", 200, None, 100, None, 50, 20, "0", "HIT", "r06", "0.0000195", None, None),
    ("r09", "2025-06-03 08:00:00", "google", "gemini-1.5-pro", "alice", "s3", "/", "Chat",
     C, 200, None, 1500, 250, 300, 100, "0.000875", None, None, None, None, None),
    ("r10", "2025-06-03 08:00:10", "google", "gemini-1.5-pro", "alice", "s3", "/x", "Chat",
     "{}", None, "client disconnected", 900, 150, 300, 10, "0.000425", None, None, None, None, None),
    ("r11", "2025-06-03 12:00:00", "openai", "gpt-4o", "bob", None, None, None,
     C, 200, None, 800, None, 150, 60, "0.000975", None, None, None, None, 1),
    ("r12", "2025-06-03 12:30:00", "openai", "gpt-4o", "alice", "s1", "/plan/other", "Trip",
     S, 200, None, 1200, None, 100, 40, "0.00065", "MISS", None, None, None, None),
]  # fmt: skip
COLUMNS = (
    "request_id, created_at, provider, model, user_id, session_id, session_path, session_name, properties,"
    " status, error, latency_ms, ttft_ms, input_tokens, output_tokens, cost_usd, cache_status,"
    " cache_reference_id, cost_saved_usd, rate_limited, retries"
)
# r01 was rated up, then down (the latest counts); r01's accuracy went 90 -> 70 (the latest counts).
FEEDBACK = [("r01", True, "2025-06-04 00:00"), ("r01", False, "2025-06-04 01:00"),
            ("r04", True, "2025-06-04 00:00"), ("r09", True, "2025-06-04 00:00"),
            ("r11", False, "2025-06-04 00:00")]  # fmt: skip
SCORES = [("r01", "accuracy", 90, "2025-06-04 00:00"), ("r01", "accuracy", 70, "2025-06-04 01:00"),
          ("r04", "accuracy", 95, "2025-06-04 00:00"), ("r09", "accuracy", 80, "2025-06-04 00:00"),
          ("r04", "is_safe", 1, "2025-06-04 00:00"), ("r11", "is_safe", 0, "2025-06-04 00:00")]  # fmt: skip


def load(conn: Any, latency_saved: bool = True, mark: str = "?") -> None:
    """DATA, FEEDBACK and SCORES into a DuckDB connection (or, with mark="%s", a Postgres one)."""
    marks = ", ".join([mark] * len(DATA[0]))
    for row in DATA:
        values = list(row)
        values[1] = datetime.fromisoformat(values[1]).replace(tzinfo=UTC)
        conn.execute(f"INSERT INTO requests ({COLUMNS}) VALUES ({marks})", values)
    # As the writer records it: a hit carries its original's latency (record._hit).
    if latency_saved:
        conn.execute(
            "UPDATE requests AS h SET latency_saved_ms = o.latency_ms FROM requests AS o"
            " WHERE h.cache_status = 'HIT' AND o.request_id = h.cache_reference_id"
        )
    for rid, rating, at in FEEDBACK:
        conn.execute(f"INSERT INTO feedback VALUES ({mark}, {mark}, {mark})", [rid, rating, f"{at}+00"])
    for rid, name, value, at in SCORES:
        conn.execute(
            f"INSERT INTO scores VALUES ({mark}, {mark}, {mark}, {mark})", [rid, name, value, f"{at}+00"]
        )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "tap.duckdb"
    with duckdb.connect(str(path)) as conn:
        migrate(conn)
        load(conn)
    return path


def T(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def rows(db: Path, name: str, now: datetime | None = None, **opts: Any) -> list[dict[str, Any]]:
    conn = query.connect(db)
    try:
        _, columns, result = catalog.fetch(conn, name, catalog.Options(**opts), now)
    finally:
        conn.close()
    return [dict(zip(columns, r, strict=True)) for r in result]


def by(*names: str) -> list[catalog.Dimension]:
    return [d for n in names for d in catalog.parse_dimensions(n)]


def run(capsys: Out, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- summary --

SUMMARY = {
    "calls": 12,
    "input_tokens": 2350,  # r05 and r07 have no tokens
    "output_tokens": 950,
    "cost_usd": D("0.0164445"),  # every known cost; r03 and r08 (hits) cost 0
    "unpriced": 2,  # r05, r07
    "errors": 3,  # r05 (429), r07 (500), r10 (no status, an error)
    "error_pct": 25.0,
    "cache_hits": 2,  # r03, r08
    "cache_hit_pct": 40.0,  # 2 hits of 5 lookups (r01, r06, r12 missed)
    "cost_saved_usd": D("0.0010195"),  # 0.001 + 0.0000195
}


def test_summary(db: Path) -> None:
    assert rows(db, "summary") == [SUMMARY]


def test_summary_of_nothing(db: Path) -> None:
    assert rows(db, "summary", model=["nope"]) == [
        {"calls": 0, "input_tokens": None, "output_tokens": None, "cost_usd": None, "unpriced": 0,
         "errors": 0, "error_pct": None, "cache_hits": 0, "cache_hit_pct": None, "cost_saved_usd": None}
    ]  # fmt: skip


def test_summary_cli_table_and_json(capsys: Out, db: Path) -> None:
    code, out, err = run(capsys, "report", "summary", "--db", str(db))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert dict(line.split() for line in lines[2:]) == {
        "calls": "12", "input_tokens": "2350", "output_tokens": "950", "cost_usd": "0.0164445",
        "unpriced": "2", "errors": "3", "error_pct": "25.0", "cache_hits": "2", "cache_hit_pct": "40.0",
        "cost_saved_usd": "0.0010195",
    }  # fmt: skip
    code, out, _ = run(capsys, "report", "summary", "--db", str(db), "--format", "json")
    assert code == 0
    got = json.loads(out)
    assert (got["cost_usd"], got["cost_saved_usd"]) == ("0.016444500", "0.001019500")  # exact, as strings
    assert {k: D(v) if k in ("cost_usd", "cost_saved_usd") else v for k, v in got.items()} == SUMMARY


# -- cost --

COST_BY_MODEL = [
    # claude: r04 0.0105 (r05 unpriced); gpt-4o: r01 + r02 + r03 (hit, 0) + r11 + r12; ...
    {"model": "claude-3-5-sonnet", "calls": 2, "input_tokens": 1000, "output_tokens": 500,
     "cost_usd": D("0.0105"), "unpriced": 1, "cost_saved_usd": None},
    {"model": "gpt-4o", "calls": 5, "input_tokens": 650, "output_tokens": 300,
     "cost_usd": D("0.004625"), "unpriced": 0, "cost_saved_usd": D("0.001")},
    {"model": "gemini-1.5-pro", "calls": 2, "input_tokens": 600, "output_tokens": 110,
     "cost_usd": D("0.0013"), "unpriced": 0, "cost_saved_usd": None},
    {"model": "gpt-4o-mini", "calls": 3, "input_tokens": 100, "output_tokens": 40,
     "cost_usd": D("0.0000195"), "unpriced": 1, "cost_saved_usd": D("0.0000195")},
]  # fmt: skip


def pick(result: list[dict[str, Any]], *keys: str) -> list[tuple[Any, ...]]:
    return [tuple(r[k] for k in keys) for r in result]


def test_cost_by_model_is_the_default(db: Path) -> None:
    assert rows(db, "cost") == COST_BY_MODEL
    assert rows(db, "cost", by=by("model")) == COST_BY_MODEL


def test_cost_by_provider(db: Path) -> None:
    assert pick(rows(db, "cost", by=by("provider")), "provider", "calls", "cost_usd", "unpriced") == [
        ("anthropic", 2, D("0.0105"), 1),
        ("openai", 8, D("0.0046445"), 1),  # 0.004625 + 0.0000195
        ("google", 2, D("0.0013"), 0),
    ]


def test_cost_by_day_is_chronological(db: Path) -> None:
    assert pick(rows(db, "cost", by=by("day")), "day", "calls", "cost_usd") == [
        (datetime(2025, 6, 1).date(), 5, D("0.0135")),  # r01-r05
        (datetime(2025, 6, 2).date(), 3, D("0.0000195")),  # r06-r08
        (datetime(2025, 6, 3).date(), 4, D("0.002925")),  # r09-r12
    ]


def test_cost_by_day_in_another_time_zone(db: Path) -> None:
    # r08 (2025-06-02 23:30 UTC) is 2025-06-03 01:30 in Paris (UTC+2 in June).
    result = rows(db, "cost", by=by("day"), tz="Europe/Paris")
    assert pick(result, "day", "calls") == [
        (datetime(2025, 6, 1).date(), 5),
        (datetime(2025, 6, 2).date(), 2),
        (datetime(2025, 6, 3).date(), 5),
    ]


def test_cost_by_hour(db: Path) -> None:
    result = rows(db, "cost", by=by("hour"), limit=3)
    assert pick(result, "hour", "calls", "cost_usd") == [
        (T("2025-06-01 10:00"), 3, D("0.003")),
        (T("2025-06-01 11:00"), 2, D("0.0105")),
        (T("2025-06-02 09:00"), 2, D("0.0000195")),
    ]


def test_cost_by_user(db: Path) -> None:
    assert pick(rows(db, "cost", by=by("user")), "user_id", "calls", "cost_usd") == [
        ("bob", 3, D("0.011475")),  # r04 0.0105 + r11 0.000975 (r05 unpriced)
        ("alice", 6, D("0.00495")),  # r01 r02 r03 r09 r10 r12
        ("carol", 2, D("0.0000195")),
        (None, 1, D("0")),  # r08, a hit
    ]


def test_cost_by_session(db: Path) -> None:
    assert pick(rows(db, "cost", by=by("session")), "session_id", "calls", "cost_usd") == [
        ("s2", 2, D("0.0105")),
        ("s1", 4, D("0.00365")),
        ("s3", 2, D("0.0013")),
        (None, 4, D("0.0009945")),  # r06 r07 r08 r11
    ]


def test_cost_by_property(db: Path) -> None:
    assert pick(rows(db, "cost", by=by("property:Feature")), "feature", "calls", "cost_usd", "unpriced") == [
        ("chat", 4, D("0.01235"), 1),  # r04 r05 r09 r11
        ("search", 5, D("0.00365"), 1),  # r01 r02 r03 r07 r12
        (None, 3, D("0.0004445"), 0),  # r06 r08 r10
    ]


def test_cost_by_rating(db: Path) -> None:
    # latest ratings: r01 down (it was up first), r04 up, r09 up, r11 down
    assert pick(rows(db, "cost", by=by("rating")), "rating", "calls", "cost_usd") == [
        ("up", 2, D("0.011375")),
        (None, 8, D("0.0030945")),
        ("down", 2, D("0.001975")),
    ]


def test_cost_by_score(db: Path) -> None:
    # latest accuracy: r01 70 (was 90), r04 95, r09 80
    assert pick(rows(db, "cost", by=by("score:accuracy")), "accuracy", "calls", "cost_usd") == [
        (95, 1, D("0.0105")),
        (None, 9, D("0.0040695")),
        (70, 1, D("0.001")),
        (80, 1, D("0.000875")),
    ]


def test_cost_by_two_dimensions(db: Path) -> None:
    result = rows(db, "cost", by=by("day,provider"))
    assert pick(result, "day", "provider", "calls") == [
        (datetime(2025, 6, 1).date(), "anthropic", 2),
        (datetime(2025, 6, 1).date(), "openai", 3),
        (datetime(2025, 6, 2).date(), "openai", 3),
        (datetime(2025, 6, 3).date(), "openai", 2),  # 0.001625 before google's 0.0013
        (datetime(2025, 6, 3).date(), "google", 2),
    ]


def test_a_property_named_like_a_measure_gets_a_prefix(db: Path) -> None:
    assert list(rows(db, "cost", by=by("property:calls"))[0])[:2] == ["property_calls", "calls"]
    assert list(rows(db, "cost", by=by("property:accuracy,score:accuracy"))[0])[:3] == [
        "accuracy", "score_accuracy", "calls"
    ]  # fmt: skip


# -- cache --


def test_cache(db: Path) -> None:
    # latency saved: r03 is a hit of r01 (1000 ms), r08 a hit of r06 (400 ms)
    assert rows(db, "cache") == [
        {"model": "gpt-4o", "hits": 1, "misses": 2, "hit_pct": 33.3, "cost_saved_usd": D("0.001"),
         "latency_saved_ms": 1000.0},
        {"model": "gpt-4o-mini", "hits": 1, "misses": 1, "hit_pct": 50.0, "cost_saved_usd": D("0.0000195"),
         "latency_saved_ms": 400.0},
    ]  # fmt: skip


def test_cache_finds_originals_outside_the_window(db: Path) -> None:
    since = catalog.parse_when("2025-06-01T10:00:08")  # r03 (the hit) in, r01 (its original) out
    result = rows(db, "cache", since=since, until=catalog.parse_when("2025-06-01T10:00:11Z"))
    assert result == [{"model": "gpt-4o", "hits": 1, "misses": 0, "hit_pct": 100.0,
                       "cost_saved_usd": D("0.001"), "latency_saved_ms": 1000.0}]  # fmt: skip


def test_cache_by_day(db: Path) -> None:
    assert pick(rows(db, "cache", by=by("day")), "day", "hits", "misses", "latency_saved_ms") == [
        (datetime(2025, 6, 1).date(), 1, 1, 1000.0),
        (datetime(2025, 6, 2).date(), 1, 1, 400.0),
        (datetime(2025, 6, 3).date(), 0, 1, None),
    ]


# -- latency --


def test_latency(db: Path) -> None:
    # Cache hits (r03, r08) and llmtap's own 429 (r05) are left out. quantile_cont interpolates:
    # gpt-4o latencies 800 1000 1200 2000: p50 = 1100, p95 at 2.85 -> 1200 + 0.85 * 800 = 1880
    # (rounded to 0.1 ms).
    assert rows(db, "latency") == [
        {"model": "gpt-4o", "calls": 4, "latency_p50_ms": 1100.0, "latency_p95_ms": 1880.0,
         "latency_p99_ms": 1976.0, "ttft_p50_ms": 200.0, "ttft_p95_ms": 200.0, "ttft_p99_ms": 200.0},
        {"model": "gemini-1.5-pro", "calls": 2, "latency_p50_ms": 1200.0, "latency_p95_ms": 1470.0,
         "latency_p99_ms": 1494.0, "ttft_p50_ms": 200.0, "ttft_p95_ms": 245.0, "ttft_p99_ms": 249.0},
        {"model": "gpt-4o-mini", "calls": 2, "latency_p50_ms": 550.0, "latency_p95_ms": 685.0,
         "latency_p99_ms": 697.0, "ttft_p50_ms": 100.0, "ttft_p95_ms": 100.0, "ttft_p99_ms": 100.0},
        {"model": "claude-3-5-sonnet", "calls": 1, "latency_p50_ms": 3000.0, "latency_p95_ms": 3000.0,
         "latency_p99_ms": 3000.0, "ttft_p50_ms": 300.0, "ttft_p95_ms": 300.0, "ttft_p99_ms": 300.0},
    ]  # fmt: skip


def test_latency_by_provider(db: Path) -> None:
    # openai: 800 1000 1200 2000 400 700 -> sorted 400 700 800 1000 1200 2000, p50 = 900
    result = rows(db, "latency", by=by("provider"))
    assert pick(result, "provider", "calls", "latency_p50_ms") == [
        ("openai", 6, 900.0),
        ("google", 2, 1200.0),
        ("anthropic", 1, 3000.0),
    ]


# -- errors --


def test_errors(db: Path) -> None:
    assert rows(db, "errors") == [
        {"status": 429, "error": "rate limited by llmtap", "calls": 1, "rate_limited": 1, "retries": 0,
         "last_seen": T("2025-06-01 11:00:30")},
        {"status": 500, "error": "upstream 500", "calls": 1, "rate_limited": 0, "retries": 2,
         "last_seen": T("2025-06-02 09:30:00")},
        {"status": None, "error": "client disconnected", "calls": 1, "rate_limited": 0, "retries": 0,
         "last_seen": T("2025-06-03 08:00:10")},
    ]  # fmt: skip


def test_errors_by_provider(db: Path) -> None:
    result = rows(db, "errors", by=by("provider"))
    assert pick(result, "provider", "status", "calls") == [
        ("anthropic", 429, 1),
        ("google", None, 1),
        ("openai", 500, 1),
    ]


# -- top --


def test_top(db: Path) -> None:
    result = rows(db, "top", limit=3)
    assert pick(result, "request_id", "cost_usd") == [
        ("r04", D("0.0105")),
        ("r02", D("0.002")),
        ("r01", D("0.001")),
    ]
    assert list(result[0]) == list(catalog.TOP_COLUMNS)


def test_top_leaves_out_unknown_costs_and_defaults_to_20(db: Path) -> None:
    result = rows(db, "top")
    assert len(result) == 10 and {"r05", "r07"}.isdisjoint(r["request_id"] for r in result)
    # ties (the two hits cost 0) go latest first
    assert [r["request_id"] for r in result[-2:]] == ["r08", "r03"]


# -- sessions --

SESSIONS = [
    # s1: r01 /plan, r02 r03 /plan/step, r12 /plan/other; ends 2025-06-03 12:30:01.2
    ("s1", "Trip", None, 0, 4, D("0.00365"), 181801.2, T("2025-06-01 10:00:00"), T("2025-06-03 12:30:00")),
    ("s1", None, "/plan", 1, 4, D("0.00365"), 181801.2, T("2025-06-01 10:00:00"), T("2025-06-03 12:30:00")),
    ("s1", None, "/plan/other", 2, 1, D("0.00065"), 1.2, T("2025-06-03 12:30:00"), T("2025-06-03 12:30:00")),
    ("s1", None, "/plan/step", 2, 2, D("0.002"), 5.5, T("2025-06-01 10:00:05"), T("2025-06-01 10:00:10")),
    # s3: r09 at / (the session itself), r10 at /x
    ("s3", "Chat", None, 0, 2, D("0.0013"), 10.9, T("2025-06-03 08:00:00"), T("2025-06-03 08:00:10")),
    ("s3", None, "/x", 1, 1, D("0.000425"), 0.9, T("2025-06-03 08:00:10"), T("2025-06-03 08:00:10")),
    # s2: r04 /draft, r05 /draft/review (no cost: NULL, not 0)
    ("s2", "Essay", None, 0, 2, D("0.0105"), 30.001, T("2025-06-01 11:00:00"), T("2025-06-01 11:00:30")),
    ("s2", None, "/draft", 1, 2, D("0.0105"), 30.001, T("2025-06-01 11:00:00"), T("2025-06-01 11:00:30")),
    ("s2", None, "/draft/review", 2, 1, None, 0.001, T("2025-06-01 11:00:30"), T("2025-06-01 11:00:30")),
]


def test_sessions_rows(db: Path) -> None:
    result = rows(db, "sessions")
    assert list(result[0]) == list(catalog.SESSION_COLUMNS)
    got = [tuple(r.values()) for r in result]
    assert [g[:6] + g[7:] for g in got] == [s[:6] + s[7:] for s in SESSIONS]
    assert [g[6] for g in got] == pytest.approx([s[6] for s in SESSIONS])


def test_sessions_limit_keeps_the_most_recent(db: Path) -> None:
    assert {r["session_id"] for r in rows(db, "sessions", limit=1)} == {"s1"}
    assert [r["path"] for r in rows(db, "sessions", session=["s2"])] == [None, "/draft", "/draft/review"]


def test_sessions_table_shows_the_tree(capsys: Out, db: Path) -> None:
    code, out, _ = run(capsys, "report", "sessions", "--db", str(db))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "session",
        "name",
        "calls",
        "cost_usd",
        "duration_s",
        "first_seen",
        "last_seen",
    ]
    labels = [line[: len("    /draft/review")].rstrip() for line in lines[2:-1]]
    assert labels == ["s1", "  /plan", "    /plan/other", "    /plan/step", "s3", "  /x", "s2", "  /draft",
                      "    /draft/review"]  # fmt: skip
    assert lines[2].split()[:5] == ["s1", "Trip", "4", "0.00365", "181801.2"]
    assert lines[-1] == "(3 sessions)"


def test_sessions_json_is_nested(capsys: Out, db: Path) -> None:
    code, out, _ = run(capsys, "report", "sessions", "--db", str(db), "--format", "json", "--limit", "2")
    assert code == 0
    data = json.loads(out)
    assert [s["session_id"] for s in data] == ["s1", "s3"]
    s1 = data[0]
    assert {k: s1[k] for k in ("session_name", "calls", "cost_usd")} == {
        "session_name": "Trip", "calls": 4, "cost_usd": "0.003650000"
    }  # fmt: skip
    assert s1["first_seen"] == "2025-06-01T10:00:00+00:00"
    [plan] = s1["tree"]
    assert (plan["path"], plan["calls"]) == ("/plan", 4)
    assert [(c["path"], c["calls"], c["cost_usd"], c["children"]) for c in plan["children"]] == [
        ("/plan/other", 1, "0.000650000", []),
        ("/plan/step", 2, "0.002000000", []),
    ]
    assert [n["path"] for n in data[1]["tree"]] == ["/x"]


# -- filters --


@pytest.mark.parametrize(
    "opts, ids",
    [
        ({"provider": ["google"]}, {"r09", "r10"}),
        ({"provider": ["google", "anthropic"]}, {"r04", "r05", "r09", "r10"}),
        ({"model": ["gpt-4o-mini"]}, {"r06", "r07", "r08"}),
        ({"user": ["bob"]}, {"r04", "r05", "r11"}),
        ({"session": ["s3"]}, {"r09", "r10"}),
        ({"properties": [("feature", "chat")]}, {"r04", "r05", "r09", "r11"}),
        ({"properties": [("feature", "search"), ("env", "prod")]}, {"r01"}),
        ({"properties": [("feature", "' OR 1=1 --")]}, set()),  # bound, never pasted
        ({"rating": "up"}, {"r04", "r09"}),
        ({"rating": "down"}, {"r01", "r11"}),  # r01's latest rating is down
        ({"scores": [catalog.parse_score("accuracy>=80")]}, {"r04", "r09"}),  # r01's latest is 70
        ({"scores": [catalog.parse_score("accuracy=70")]}, {"r01"}),
        ({"scores": [catalog.parse_score("accuracy != 95")]}, {"r01", "r09"}),
        ({"scores": [catalog.parse_score("accuracy<80")]}, {"r01"}),
        ({"scores": [catalog.parse_score("is_safe=true")]}, {"r04"}),
        ({"scores": [catalog.parse_score("is_safe==false")]}, {"r11"}),
        ({"scores": [catalog.parse_score("accuracy>0"), catalog.parse_score("is_safe=1")]}, {"r04"}),
        ({"user": ["alice"], "model": ["gpt-4o"], "rating": "down"}, {"r01"}),
        ({"since": catalog.parse_when("2025-06-03")}, {"r09", "r10", "r11", "r12"}),
        ({"until": catalog.parse_when("2025-06-01")}, {"r01", "r02", "r03", "r04", "r05"}),  # the whole day
        ({"since": catalog.parse_when("2025-06-02"), "until": catalog.parse_when("2025-06-02")},
         {"r06", "r07", "r08"}),
        ({"until": catalog.parse_when("2025-06-01T10:00:05")}, {"r01"}),  # a time is exclusive
        ({"since": catalog.parse_when("2025-06-02T11:15:00+02:00")},  # 09:15 UTC
         {"r07", "r08", "r09", "r10", "r11", "r12"}),
        ({"since": catalog.parse_when("2025-06-03 02:00"), "tz": "America/New_York"},  # 06:00 UTC
         {"r09", "r10", "r11", "r12"}),
    ],
)  # fmt: skip
def test_filters(db: Path, opts: dict[str, Any], ids: set[str]) -> None:
    top = rows(db, "top", limit=100, **opts)
    summary = rows(db, "summary", **opts)[0]
    priced = {r[0] for r in DATA if r[15] is not None}
    assert {r["request_id"] for r in top} == ids & priced
    assert summary["calls"] == len(ids)


@pytest.mark.parametrize(
    "since, ids",
    [
        ("30m", {"r12"}),  # now = 2025-06-03 12:40
        ("1h", {"r11", "r12"}),
        ("5h", {"r09", "r10", "r11", "r12"}),
        ("2d", {"r06", "r07", "r08", "r09", "r10", "r11", "r12"}),  # from 2025-06-01 12:40
        ("1w", {r[0] for r in DATA}),
        ("3000s", {"r11", "r12"}),
    ],
)
def test_relative_since(db: Path, since: str, ids: set[str]) -> None:
    now = T("2025-06-03 12:40")
    result = rows(db, "summary", now=now, since=catalog.parse_when(since))
    assert result[0]["calls"] == len(ids)


def test_relative_until(db: Path) -> None:
    now = T("2025-06-03 12:40")
    assert rows(db, "summary", now=now, until=catalog.parse_when("1d"))[0]["calls"] == 7  # before 06-02 12:40


def test_every_report_takes_every_filter(db: Path) -> None:
    opts = dict(
        since=catalog.parse_when("2025-06-01"), until=catalog.parse_when("2025-06-03"), provider=["openai"],
        model=["gpt-4o"], user=["alice"], session=["s1"], properties=[("feature", "search")], rating="down",
        scores=[catalog.parse_score("accuracy>=70")],
    )  # fmt: skip
    for name in catalog.REPORTS:
        result = rows(db, name, **opts)  # r01 only
        if name in ("summary", "cost", "top"):
            assert [r["calls" if name != "top" else "cost_usd"] for r in result] == [
                1 if name != "top" else D("0.001")
            ]


# -- formats --


def test_cost_csv(capsys: Out, db: Path) -> None:
    code, out, _ = run(capsys, "report", "cost", "--db", str(db), "--format", "csv", "--by", "provider")
    assert code == 0
    assert out.splitlines() == [
        "provider,calls,input_tokens,output_tokens,cost_usd,unpriced,cost_saved_usd",
        "anthropic,2,1000,500,0.010500000,1,",
        "openai,8,750,340,0.004644500,1,0.001019500",
        "google,2,600,110,0.001300000,0,",
    ]


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_exports_print_zero_and_tiny_costs_in_fixed_notation(capsys: Out, db: Path, fmt: str) -> None:
    """DuckDB hands these over as Decimal("0E-9") and Decimal("1.95E-7"); exports show decimals."""
    with duckdb.connect(str(db)) as conn:
        conn.execute("UPDATE requests SET cost_usd = 0.000000195 WHERE request_id = 'r06'")
    code, out, _ = run(capsys, "report", "top", "--db", str(db), "--format", fmt, "--model", "gpt-4o-mini")
    assert code == 0
    if fmt == "csv":
        costs = [line.split(",")[list(csv_header(out)).index("cost_usd")] for line in out.splitlines()[1:]]
    else:
        costs = [r["cost_usd"] for r in json.loads(out)]
    assert costs == ["0.000000195", "0.000000000"], "r06, then r08 (a cache hit: 0); r07 has no cost"


def csv_header(out: str) -> list[str]:
    return out.splitlines()[0].split(",")


def test_cost_table(capsys: Out, db: Path) -> None:
    code, out, _ = run(capsys, "report", "cost", "--db", str(db))
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["model", "calls", "input_tokens", "output_tokens", "cost_usd", "unpriced",
                                "cost_saved_usd"]  # fmt: skip
    assert lines[2].split() == ["claude-3-5-sonnet", "2", "1000", "500", "0.0105", "1"]
    assert lines[3].split() == ["gpt-4o", "5", "650", "300", "0.004625", "0", "0.001"]
    assert lines[-1] == "(4 rows)"


def test_cost_json(capsys: Out, db: Path) -> None:
    code, out, _ = run(capsys, "report", "cost", "--db", str(db), "--format", "json", "--by", "day")
    assert code == 0
    assert json.loads(out)[0] == {
        "day": "2025-06-01", "calls": 5, "input_tokens": 1400, "output_tokens": 700,
        "cost_usd": "0.013500000", "unpriced": 1, "cost_saved_usd": "0.001000000",
    }  # fmt: skip


@pytest.mark.parametrize("name", list(catalog.REPORTS))
def test_parquet_round_trip(capsys: Out, db: Path, tmp_path: Path, name: str) -> None:
    target = tmp_path / f"{name}.parquet"
    code, out, err = run(capsys, "report", name, "--db", str(db), "--format", "parquet", "--out", str(target))
    assert (code, out, err) == (0, "", "")
    conn = query.connect(db)
    try:
        report, columns, expected = catalog.fetch(conn, name, catalog.Options())
    finally:
        conn.close()
    with duckdb.connect() as mem:
        mem.execute("SET TimeZone = 'UTC'")
        cur = mem.execute("SELECT * FROM read_parquet(?)", [str(target)])
        assert [d[0] for d in cur.description] == columns
        assert cur.fetchall() == expected


def test_parquet_keeps_exact_types(capsys: Out, db: Path, tmp_path: Path) -> None:
    target = tmp_path / "cost.parquet"
    assert run(capsys, "report", "cost", "--by", "day", "--db", str(db), "--format", "parquet", "--out",
               str(target))[0] == 0  # fmt: skip
    with duckdb.connect() as mem:
        described = mem.sql(f"DESCRIBE SELECT * FROM read_parquet('{target}')").fetchall()
    types = {r[0]: r[1] for r in described}
    assert (
        types["day"] == "DATE"
        and types["cost_usd"].startswith("DECIMAL(38,9)")
        and types["calls"] == "BIGINT"
    )


def test_parquet_needs_out(capsys: Out, db: Path) -> None:
    with pytest.raises(SystemExit, match="^2$"):
        main(["report", "cost", "--db", str(db), "--format", "parquet"])
    assert "--format parquet writes a file: add --out FILE" in capsys.readouterr().err


def test_out_writes_the_text(capsys: Out, db: Path, tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    argv = ["report", "summary", "--db", str(db), "--format", "json", "--out", str(target)]
    assert run(capsys, *argv) == (0, "", "")
    assert json.loads(target.read_text())["calls"] == 12


def test_sql_parquet(capsys: Out, db: Path, tmp_path: Path) -> None:
    target = tmp_path / "q.parquet"
    sql = "SELECT request_id, created_at, cost_usd, properties FROM requests WHERE user_id = $u ORDER BY 1;"
    code, out, err = run(capsys, "sql", sql, "-p", "u", "bob", "--db", str(db), "--format", "parquet",
                         "--out", str(target))  # fmt: skip
    assert (code, out, err) == (0, "", "")
    with duckdb.connect() as mem:
        got = mem.execute(
            "SELECT request_id, created_at, cost_usd FROM read_parquet(?)", [str(target)]
        ).fetchall()
    assert got == [("r04", T("2025-06-01 11:00"), D("0.0105")), ("r05", T("2025-06-01 11:00:30"), None),
                   ("r11", T("2025-06-03 12:00"), D("0.000975"))]  # fmt: skip


def test_sql_parquet_of_bad_sql(capsys: Out, db: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, "sql", "SELECT nope FROM requests", "--db", str(db), "--format", "parquet",
                         "--out", str(tmp_path / "x.parquet"))  # fmt: skip
    assert (code, out) == (1, "") and err.startswith("llmtap: cannot write") and "nope" in err


# -- the CLI: arguments and errors --


def test_cli_filters_reach_the_report(capsys: Out, db: Path) -> None:
    code, out, _ = run(
        capsys, "report", "cost", "--db", str(db), "--format", "csv", "--by", "user", "--since", "2025-06-01",
        "--until", "2025-06-02T23:00", "--provider", "openai", "--property", "Feature=search", "--score",
        "accuracy<=100", "--model", "gpt-4o", "--model", "gpt-4o-mini", "--session", "s1", "--rating", "down",
        "--tz", "UTC", "--limit", "5",
    )  # fmt: skip
    assert code == 0
    assert out.splitlines()[1:] == ["alice,1,100,50,0.001000000,0,"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["report", "nope"], "invalid choice: 'nope'"),
        (["report"], "the following arguments are required: REPORT"),
        (["report", "cost", "--by", "colour"], "cannot group by 'colour': expected model, provider, day"),
        (["report", "cost", "--by", "property:"], "cannot group by 'property:'"),
        (
            ["report", "cost", "--since", "yesterday"],
            "argument --since: expected a duration like 30m, 24h, 7d",
        ),
        (["report", "cost", "--until", "2025-13-01"], "argument --until: expected a duration"),
        (["report", "cost", "--score", "accuracy>=high"], "argument --score: expected NAME OP VALUE"),
        (["report", "cost", "--score", "accuracy>=9.5"], "argument --score: expected NAME OP VALUE"),
        (["report", "cost", "--property", "feature"], "argument --property: expected NAME=VALUE"),
        (["report", "cost", "--rating", "meh"], "argument --rating: invalid choice: 'meh'"),
        (["report", "cost", "--limit", "0"], "argument --limit: expected a whole number of at least 1"),
        (["report", "cost", "--tz", "Europe/Paris'; DROP"], "argument --tz: expected a time zone name"),
        (["report", "cost", "--format", "xlsx"], "invalid choice: 'xlsx'"),
        (["report", "summary", "--by", "model"], "unrecognized arguments: --by model"),
        (["report", "top", "--by", "model"], "unrecognized arguments: --by model"),
    ],
)
def test_usage_errors(capsys: Out, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match="^2$"):
        main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tz", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
        (["--by", "model", "--by", "model"], "--by model given twice"),
    ],
)
def test_report_errors(capsys: Out, db: Path, argv: list[str], message: str) -> None:
    code, out, err = run(capsys, "report", "cost", "--db", str(db), *argv)
    assert (code, out) == (1, "")
    assert err.startswith("llmtap: ") and message in err


def test_unknown_report_from_python(db: Path) -> None:
    with pytest.raises(catalog.ReportError, match="unknown report 'nope': expected one of summary, cost"):
        rows(db, "nope")
    with pytest.raises(catalog.ReportError, match="report top takes no --by"):
        rows(db, "top", by=by("model"))


def test_report_on_a_missing_db(capsys: Out, tmp_path: Path) -> None:
    path = tmp_path / "nope.duckdb"
    code, out, err = run(capsys, "report", "summary", "--db", str(path))
    assert (code, out) == (1, "")
    assert err == f"llmtap: no database at {path} yet: start the proxy (or run `llmtap demo`) first\n"


def test_report_on_an_older_file_brings_it_up_to_date(capsys: Out, tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute(
            "CREATE TABLE _llmtap_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
        )
        for fn in MIGRATIONS[:4]:
            fn(conn)
            conn.execute("INSERT INTO _llmtap_migrations VALUES (?, now())", [fn.__name__])
        load(conn, latency_saved=False)  # m004 had no latency_saved_ms column
    code, out, _ = run(capsys, "report", "summary", "--db", str(path), "--format", "json")
    assert code == 0 and json.loads(out)["calls"] == 12
    code, out, _ = run(capsys, "report", "cache", "--db", str(path), "--format", "json")
    assert code == 0
    saved = {r["model"]: r["latency_saved_ms"] for r in json.loads(out)}
    assert saved == {"gpt-4o": 1000.0, "gpt-4o-mini": 400.0}, "m006 backfilled the hits from their originals"


@pytest.mark.parametrize("name", list(catalog.REPORTS))
def test_every_report_has_help(capsys: Out, name: str) -> None:
    with pytest.raises(SystemExit, match="^0$"):
        main(["report", name, "--help"])
    out = capsys.readouterr().out
    assert out.startswith(f"usage: llmtap report {name}")
    for option in ("--since", "--until", "--provider", "--model", "--user", "--property", "--session",
                   "--rating", "--score", "--tz", "--format", "--out", "--db"):  # fmt: skip
        assert option in out
    assert ("--by" in out) == (name in catalog.GROUPED)
    assert ("--limit" in out) == (name != "summary")


def test_report_help_lists_the_reports(capsys: Out) -> None:
    with pytest.raises(SystemExit, match="^0$"):
        main(["report", "--help"])
    out = capsys.readouterr().out
    for name in catalog.REPORTS:
        assert name in out


# -- views (m005) --


def view(db: Path, sql: str) -> list[tuple[Any, ...]]:
    return query.run(db, sql)[1]


def test_view_daily_cost_by_model(db: Path) -> None:
    got = view(db, "SELECT * FROM daily_cost_by_model ORDER BY day, model")
    assert got[:2] == [
        (
            datetime(2025, 6, 1).date(),
            "anthropic",
            "claude-3-5-sonnet",
            2,
            1000,
            500,
            D("0.0105"),
            1,
            None,
            1,
        ),
        (datetime(2025, 6, 1).date(), "openai", "gpt-4o", 3, 400, 200, D("0.003"), 0, D("0.001"), 0),
    ]
    assert len(got) == 5 and sum(r[3] for r in got) == 12


def test_view_cost_by_user(db: Path) -> None:
    got = view(db, "SELECT user_id, calls, cost_usd, unpriced, first_seen FROM cost_by_user ORDER BY user_id")
    assert got == [
        ("alice", 6, D("0.00495"), 0, T("2025-06-01 10:00")),
        ("bob", 3, D("0.011475"), 1, T("2025-06-01 11:00")),
        ("carol", 2, D("0.0000195"), 1, T("2025-06-02 09:00")),
        (None, 1, D("0"), 0, T("2025-06-02 23:30")),
    ]


def test_view_cache_savings(db: Path) -> None:
    got = view(db, "SELECT * FROM cache_savings ORDER BY day")
    assert got == [
        (datetime(2025, 6, 1).date(), "openai", "gpt-4o", 2, 1, 1, 50.0, D("0.001"), 1000.0),
        (datetime(2025, 6, 2).date(), "openai", "gpt-4o-mini", 2, 1, 1, 50.0, D("0.0000195"), 400.0),
        (datetime(2025, 6, 3).date(), "openai", "gpt-4o", 1, 0, 1, 0.0, None, None),
    ]


def test_view_session_summary(db: Path) -> None:
    got = view(db, "SELECT session_id, session_name, calls, paths, cost_usd, errors, duration_s"
                   " FROM session_summary ORDER BY session_id")  # fmt: skip
    assert got == [
        ("s1", "Trip", 4, 3, D("0.00365"), 0, pytest.approx(181801.2)),
        ("s2", "Essay", 2, 2, D("0.0105"), 1, pytest.approx(30.001)),
        ("s3", "Chat", 2, 2, D("0.0013"), 1, pytest.approx(10.9)),
    ]


def test_view_request_scores(db: Path) -> None:
    got = view(db, "SELECT request_id, rating, scores FROM request_scores WHERE rating IS NOT NULL"
                   " OR scores IS NOT NULL ORDER BY request_id")  # fmt: skip
    assert got == [
        ("r01", False, {"accuracy": 70}),
        ("r04", True, {"accuracy": 95, "is_safe": 1}),
        ("r09", True, {"accuracy": 80}),
        ("r11", False, {"is_safe": 0}),
    ]
    assert view(db, "SELECT count(*) FROM request_scores")[0][0] == 12
    assert view(db, "SELECT request_id FROM request_scores WHERE scores['accuracy'] >= 80 ORDER BY 1") == [
        ("r04",),
        ("r09",),
    ]


def test_views_keep_working_after_a_new_column() -> None:
    """Views name their columns, so a later migration's ALTER TABLE ADD COLUMN cannot break them."""
    with duckdb.connect() as conn:
        migrate(conn)
        load(conn)
        conn.execute("ALTER TABLE requests ADD COLUMN later VARCHAR")
        views = [
            r[0] for r in conn.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
        ]
        for name in views:
            conn.execute(f"SELECT * FROM {name}").fetchall()
        assert len(views) == 7


def test_relative_times_default_to_now(db: Path) -> None:
    assert rows(db, "summary", since=catalog.parse_when("1d"))[0]["calls"] == 0
    recent = datetime.now(UTC) - timedelta(minutes=5)
    with duckdb.connect(str(db)) as conn:
        conn.execute("INSERT INTO requests (request_id, created_at, cost_usd) VALUES ('new', ?, 1)", [recent])
    assert rows(db, "summary", since=catalog.parse_when("30m"))[0]["calls"] == 1


def test_cost_by_minute(db: Path) -> None:
    result = rows(db, "cost", by=by("minute"), since=catalog.parse_when("2025-06-01T10:00"),
                  until=catalog.parse_when("2025-06-01T10:01"))  # fmt: skip
    assert pick(result, "minute", "calls", "cost_usd") == [(T("2025-06-01 10:00"), 3, D("0.003"))]  # r01-r03
