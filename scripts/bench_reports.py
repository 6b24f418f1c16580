"""Built-in report speed at 10M rows, and the writer's ingest rate, one run.

What is measured (issue 5: every built-in report < 1 s on this machine at 10M rows; the writer's
ingest rates, for information: its target, capacity >= 3x the proxy's throughput, is checked by
bench_overhead.py, where the proxy and its writer run together):

- a temp DuckDB file is migrated and filled, inside DuckDB (`INSERT ... SELECT ... FROM range(N)`,
  values derived from `hash(i * 128 + k)`, so every run builds the same data), with N synthetic
  `requests` rows (default 10,000,000; `--rows`): 12 models of 4 providers (skewed mix, genai-prices
  style prices per MTok), ~2,000 users (log-uniform, 8 % without one), ~50,000 sessions (calls of
  a session close in time, several sessions interleaved) with nested paths like /plan/step-3/tool-1,
  properties {"feature", "env"} on 85 % of rows, created_at spread over the 90 days up to now in
  insertion order (as the writer appends), ~3 % errors (429s, a third of them answered by llmtap's
  own rate limiter, 5xx, 4xx, connection failures), ~15 % cache HITs pointing at an earlier MISS
  row (the original's model and tokens, cost 0, cost_saved_usd = the original's cost,
  latency_saved_ms = the original's latency), streams
  with time to first token, retries, DECIMAL(18,9) costs; plus feedback (with re-ratings) on ~1 %
  and scores (accuracy, is_safe) on ~1 % of calls. Bodies are NULL (no report reads them; DuckDB
  stores columns apart, so they would add file size, not report time);
- every built-in report as a user runs it, the output written as CSV to a temp file: in this
  process through `llmtap.cli.main([...])` (argument parsing, read-only connect and schema check,
  the SQL, rendering, writing), and as `python -m llmtap.cli report ...` in a subprocess, which
  adds interpreter start and imports (also timed alone: `python -m llmtap.cli --version`). Each is
  run 3 times, median and max shown; the subprocess median is the headline, PASS under 1 s. One
  untimed run warms the OS page cache first (the file was just written, so it mostly is);
- writer ingest, (a) the insert path: rows built once with `record.to_row` from realistic captures
  (OpenAI chat and stream, Responses, Anthropic message and stream, Gemini, a 429, a cache hit;
  ~4.6 KiB of request + response body per row on average, streams the largest), replicated with distinct
  request ids (100,000 rows; --quick 40,000), then written by `Store.flush` in the writer's batches
  (`batch_size` 5,000 rows per flush, each flush attaching the file to the writer's in-memory
  DuckDB, checking migrations, appending with DuckDB's appender, committing, which checkpoints the
  batch straight into the file, and detaching), into a fresh file and appended to the big file:
  rows/s; and the same rows without bodies (as Helicone-Omit-Request/-Response store
  them) into a fresh file. One flush is also taken apart step by step, and with short bodies, to
  show where the time goes; (b) end to end: a started `Store` fed captures through `submit` (20,000;
  --quick 5,000), its thread running `to_row` (body decoding and usage extraction, genai-prices
  pricing) per capture, until `close()` has written all of them: rows/s, information only, CPU-bound
  on `to_row`, which is also timed alone per capture kind, with its usage and pricing parts. In the
  proxy the same loop runs in the `llmtap-writer` child process (writerproc.py), on its own core.

Defaults take about 2.5 minutes on 2 cores (generation ~45 s), --quick about 40 s. Progress goes
to stderr, the results to stdout: targets with ratio and PASS/MISS first, then the details.
Targets print PASS/MISS; the exit code is 0 unless something crashes (a measurement, not a test).

    python scripts/bench_reports.py [--quick] [--rows N] [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE), str(HERE.parent / "addon")) if p not in sys.path]

import duckdb  # noqa: E402
from benchkit import arguments, child_env, verdict, write_json  # noqa: E402

from llmtap import cli  # noqa: E402
from llmtap.accounting import pricing, usage  # noqa: E402
from llmtap.accounting.record import COLUMNS, Capture, decoded_response, to_row  # noqa: E402
from llmtap.storage import rollup  # noqa: E402
from llmtap.storage.cachestore import Entry  # noqa: E402
from llmtap.storage.migrations import migrate  # noqa: E402
from llmtap.storage.writer import DUCKDB_CONFIG, Store, _append, _merge_setting  # noqa: E402
from llmtap.wire.helicone import CallMeta  # noqa: E402
from llmtap.wire.providers import path_model  # noqa: E402

REPORT_TARGET_S = 1.0
RUNS = 3
DAYS = 90
USERS = 2_000
SESSIONS = 50_000
SESSION_CONCURRENCY = 8  # sessions interleaved in one stretch of time
BATCH = 5_000  # Store's default batch_size


@dataclasses.dataclass(frozen=True)
class Counts:
    rows: int
    insert_rows: int  # rows written by Store.flush, per target file
    e2e_captures: int  # captures through submit -> to_row -> flush


DEFAULT = Counts(10_000_000, 100_000, 20_000)
QUICK = Counts(1_000_000, 40_000, 5_000)


# -- synthetic data, generated inside DuckDB --

# (provider, api, host, model as reported, model as requested, $/MTok in, $/MTok out, ms per output
# token, share of calls in %)
MODELS = [
    ("openai", "openai", "api.openai.com", "gpt-4o-mini-2024-07-18", "gpt-4o-mini", 0.15, 0.60, 12, 25),
    ("openai", "openai", "api.openai.com", "gpt-4o-2024-08-06", "gpt-4o", 2.50, 10.00, 18, 10),
    ("openai", "openai", "api.openai.com", "gpt-4.1-2025-04-14", "gpt-4.1", 2.00, 8.00, 16, 6),
    ("openai", "openai", "api.openai.com", "o3-mini-2025-01-31", "o3-mini", 1.10, 4.40, 9, 4),
    ("anthropic", "anthropic", "api.anthropic.com", "claude-3-5-haiku-20241022",
     "claude-3-5-haiku-20241022", 0.80, 4.00, 14, 10),
    ("anthropic", "anthropic", "api.anthropic.com", "claude-3-5-sonnet-20241022",
     "claude-3-5-sonnet-20241022", 3.00, 15.00, 20, 8),
    ("anthropic", "anthropic", "api.anthropic.com", "claude-sonnet-4-20250514",
     "claude-sonnet-4-20250514", 3.00, 15.00, 20, 8),
    ("anthropic", "anthropic", "api.anthropic.com", "claude-opus-4-20250514",
     "claude-opus-4-20250514", 15.00, 75.00, 35, 2),
    ("google", "gemini", "generativelanguage.googleapis.com", "gemini-2.0-flash", "gemini-2.0-flash",
     0.10, 0.40, 6, 12),
    ("google", "gemini", "generativelanguage.googleapis.com", "gemini-1.5-flash-002", "gemini-1.5-flash",
     0.075, 0.30, 6, 5),
    ("google", "gemini", "generativelanguage.googleapis.com", "gemini-2.5-pro", "gemini-2.5-pro",
     1.25, 10.00, 15, 4),
    ("mistral", "openai", "api.mistral.ai", "mistral-large-2411", "mistral-large-latest", 2.00, 6.00, 15, 6),
]  # fmt: skip
FEATURES = ["chat", "search", "summarize", "classify", "extract", "agent", "autocomplete", "translate"]
SESSION_NAMES = ["trip-planner", "support-chat", "code-review", "research-agent", "email-drafter", "analyst"]
PATH_ROOTS = ["plan", "research", "write", "review"]
REQUEST_HEADERS = (
    '{"content-type":"application/json","authorization":"[REDACTED]","user-agent":"OpenAI/Python"}'
)
FILTER_MODEL = MODELS[0][3]
FILTER_FEATURE = "search"
FILTER_PROVIDER = "anthropic"


def _sql_list(values: list[Any]) -> str:
    return "[" + ", ".join(_literal(v) for v in values) + "]"


def _literal(v: Any) -> str:
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return repr(v)


def _col(k: int) -> str:
    """A list literal of MODELS' k-th field, indexed by the model number m (1-based)."""
    return _sql_list([m[k] for m in MODELS])


def macros(n: int, end: datetime) -> list[str]:
    """Per-row building blocks: u(i, k) a uniform draw in [0, 1), rid(i) row i's request id
    (UUID-shaped), ts(i) its start time (rows in time order, as the writer appends them)."""
    span_s = DAYS * 86400
    t0 = end.timestamp() - span_s
    return [
        # hash(i, k) combines two hashes so that its draws for k and k + 1 correlate (r = 0.98), so one
        # integer is hashed: i * 128 + k, k < 128.
        "CREATE OR REPLACE TEMP MACRO h(i, k) AS hash(i * 128 + k)",
        "CREATE OR REPLACE TEMP MACRO u(i, k) AS CAST(h(i, k) >> 11 AS DOUBLE) / 9007199254740992.0",
        "CREATE OR REPLACE TEMP MACRO rid(i) AS printf('%08x-%04x-4%03x-%04x-%012x', h(i, 101) >> 32,"
        " (h(i, 101) >> 16) & 65535, h(i, 101) & 4095, 32768 | (h(i, 102) >> 50),"
        " h(i, 102) & 281474976710655)",
        f"CREATE OR REPLACE TEMP MACRO ts(i) AS to_timestamp({t0!r} + (i + u(i, 0)) * {span_s / n!r})",
    ]


def requests_sql(n: int) -> str:
    slots = [k + 1 for k, m in enumerate(MODELS) for _ in range(m[8])]
    assert len(slots) == 100, "model shares must add up to 100 %"
    block = max(1, n * SESSION_CONCURRENCY // SESSIONS)  # rows per stretch of time of C sessions
    features = _sql_list(
        [f for f, w in zip(FEATURES, [30, 20, 15, 10, 10, 8, 5, 2], strict=True) for _ in range(w)]
    )
    envs = _sql_list(["prod"] * 17 + ["staging"] * 2 + ["dev"])
    # Layer 1 (per row i): the cache role and the content index c (a hit repeats call c's content).
    # MISS rows are i % 20 < 3 (15 %), so a hit can point at an earlier MISS in closed form.
    # Layer 2: model, status, shape. Layer 3: tokens, cost, latency.
    return f"""
INSERT INTO requests ({", ".join(COLUMNS)})
SELECT
    rid(i), ts(i), 'proxy', {_col(0)}[m], {_col(1)}[m],
    CASE WHEN {_col(1)}[m] = 'gemini' THEN (CASE WHEN streamed THEN 'stream_generate' ELSE 'generate' END)
         WHEN {_col(1)}[m] = 'anthropic' THEN 'messages'
         WHEN m = 4 THEN 'responses' ELSE 'chat' END,
    {_col(2)}[m], 'POST',
    CASE WHEN {_col(1)}[m] = 'gemini' THEN '/v1beta/models/' || {_col(4)}[m]
              || (CASE WHEN streamed THEN ':streamGenerateContent?alt=sse' ELSE ':generateContent' END)
         WHEN {_col(1)}[m] = 'anthropic' THEN '/v1/messages'
         WHEN m = 4 THEN '/v1/responses' ELSE '/v1/chat/completions' END,
    {_col(3)}[m], {_col(4)}[m], status, streamed,
    round(CASE
        WHEN hit THEN 2 + 13 * u(i, 20)
        WHEN rate_limited THEN 0.3 + 1.5 * u(i, 20)
        WHEN status = 429 THEN 40 + 300 * u(i, 20)
        WHEN status >= 500 THEN 200 + 30000 * pow(u(i, 20), 3)
        WHEN status >= 400 THEN 80 + 200 * u(i, 20)
        WHEN status IS NULL THEN (CASE WHEN u(i, 21) < 0.5 THEN 600000 ELSE 5 + 5000 * u(i, 20) END)
        ELSE 250 + inp * 0.02 + outp * {_col(7)}[m] * (0.7 + 0.6 * u(i, 20)) END, 3),
    CASE WHEN streamed AND status = 200 THEN round(CASE WHEN hit THEN 1 + 3 * u(i, 22)
         ELSE 150 + 800 * u(i, 22) + inp * 0.01 END, 3) END,
    CASE WHEN ok THEN inp END,
    CASE WHEN ok THEN outp END,
    CASE WHEN ok AND NOT est THEN cr END,
    CASE WHEN ok AND NOT est THEN cw END,
    CASE WHEN ok AND NOT est THEN rs END,
    CASE WHEN NOT ok THEN NULL WHEN est THEN 'estimated' ELSE 'response' END,
    CASE WHEN hit THEN 0 ELSE cost END,
    CASE WHEN hit THEN 'cache hit of ' || rid(c)
         WHEN NOT ok THEN 'no usage in response'
         WHEN est THEN 'estimated: the stream ended without usage' END,
    {_literal(pricing.VERSION)},
    CASE WHEN u(i, 15) >= 0.08 THEN 'user-' || lpad(CAST(CAST(floor(exp(u(i, 16) * ln({USERS})))
         AS INTEGER) AS VARCHAR), 4, '0') END,
    CASE WHEN in_session THEN printf('sess-%012x', h(sid, 7) >> 16) END,
    CASE WHEN in_session AND u(i, 24) >= 0.1 THEN '/' || {_sql_list(PATH_ROOTS)}[1 + CAST(floor(4 * u(i, 34)) AS INTEGER)]
         || (CASE WHEN u(i, 25) >= 0.3 THEN '/step-' || CAST(1 + floor(6 * u(i, 26)) AS INTEGER) ELSE '' END)
         || (CASE WHEN u(i, 25) >= 0.75 THEN '/tool-' || CAST(1 + floor(3 * u(i, 27)) AS INTEGER) ELSE '' END)
         END,
    CASE WHEN in_session THEN {_sql_list(SESSION_NAMES)}[1 + CAST(h(sid, 9) % {len(SESSION_NAMES)} AS INTEGER)]
         END,
    CASE WHEN u(i, 28) < 0.85 THEN '{{"feature":"' || {features}[1 + CAST(floor(100 * u(i, 29)) AS INTEGER)]
         || '","env":"' || {envs}[1 + CAST(floor(20 * u(i, 30)) AS INTEGER)] || '"}}' ELSE '{{}}' END,
    {_literal(REQUEST_HEADERS)}, NULL, NULL,
    CASE WHEN status IS NULL THEN (CASE WHEN u(i, 21) < 0.5 THEN 'timed out after 600 s'
         ELSE 'upstream connection failed: connection reset by peer' END) END,
    CASE WHEN hit THEN 'HIT' WHEN miss THEN 'MISS' END,
    CASE WHEN hit THEN rid(c) END,
    CASE WHEN hit THEN cost END,
    rate_limited,
    CASE WHEN u(i, 31) < 0.2 THEN (CASE WHEN u(i, 32) < 0.85 THEN 0 WHEN u(i, 32) < 0.97 THEN 1 ELSE 2 END) END,
    NULL, NULL,
    CASE WHEN hit THEN round(250 + inp * 0.02 + outp * {_col(7)}[m] * (0.7 + 0.6 * u(c, 20)), 3) END,
    'bench:' || CAST(i % 4 AS VARCHAR), CASE WHEN rate_limited THEN 'redis' END
FROM (
    SELECT *,
        CAST(round(((inp - cr - cw) * {_col(5)}[m] + cr * {_col(5)}[m] * 0.25 + cw * {_col(5)}[m] * 1.25
                    + outp * {_col(6)}[m]) / 1e6, 9) AS DECIMAL(18, 9)) AS cost
    FROM (
        SELECT *,
            CAST(floor(150 * exp(5 * pow(u(c, 6), 1.3))) AS BIGINT) AS inp,
            CAST(floor(20 * exp(4.5 * u(c, 7))) AS BIGINT) AS outp,
            CASE WHEN m <= 8 AND u(c, 8) < 0.3
                 THEN CAST(floor(150 * exp(5 * pow(u(c, 6), 1.3)) * (0.4 + 0.5 * u(c, 9))) AS BIGINT)
                 ELSE 0 END AS cr,
            CASE WHEN m BETWEEN 5 AND 8 AND u(c, 14) < 0.1
                 THEN CAST(floor(150 * exp(5 * pow(u(c, 6), 1.3)) * 0.05) AS BIGINT) ELSE 0 END AS cw,
            CASE WHEN m IN (4, 11) THEN CAST(floor(20 * exp(4.5 * u(c, 7)) * 0.6) AS BIGINT) ELSE 0 END AS rs,
            CASE WHEN hit THEN 200 WHEN sv < 0.014 THEN 429 WHEN sv < 0.023 THEN 500 WHEN sv < 0.028 THEN 503
                 WHEN sv < 0.0315 THEN 400 WHEN sv < 0.033 THEN 401 WHEN sv < 0.035 THEN NULL ELSE 200 END
                AS status,
            hit OR sv >= 0.035 AS ok,
            NOT hit AND sv < 0.014 AND u(i, 11) < 0.35 AS rate_limited,
            u(c, 12) < 0.4 AS streamed,
            u(c, 12) < 0.4 AND u(c, 13) < 0.05 AS est
        FROM (
            SELECT *,
                {_sql_list(slots)}[1 + CAST(floor(100 * u(c, 5)) AS INTEGER)] AS m,
                CASE WHEN hit THEN 1 ELSE u(i, 10) END AS sv
            FROM (
                SELECT i, miss, hit,
                    CASE WHEN hit THEN 20 * (i // 20 - 1 - CAST(floor(250 * u(i, 3)) AS BIGINT))
                                       + CAST(floor(3 * u(i, 4)) AS BIGINT)
                         ELSE i END AS c,
                    u(i, 23) < 0.65 AS in_session,
                    (i // {block}) * {SESSION_CONCURRENCY} + CAST(floor({SESSION_CONCURRENCY} * u(i, 33)) AS BIGINT)
                        AS sid
                FROM (
                    SELECT i, i % 20 < 3 AS miss, i % 20 >= 3 AND i >= 5020 AND u(i, 2) < 0.18 AS hit
                    FROM range({n}) AS t(i)
                )
            )
        )
    )
)
"""  # noqa: E501


def annotations_sql(n: int) -> list[str]:
    """Feedback on ~1 % of calls (10 % of them re-rated later), scores on ~1 % (accuracy, and is_safe
    for half of them; 5 % re-scored). The latest row counts."""
    return [
        f"""INSERT INTO feedback
        SELECT rid(i), u(i, 41) < 0.75, ts(i) + to_seconds(60 + CAST(floor(86400 * u(i, 42)) AS BIGINT))
        FROM range({n}) AS t(i) WHERE u(i, 40) < 0.01
        UNION ALL
        SELECT rid(i), u(i, 43) < 0.5, ts(i) + to_seconds(90000 + CAST(floor(86400 * u(i, 44)) AS BIGINT))
        FROM range({n}) AS t(i) WHERE u(i, 40) < 0.001""",
        f"""INSERT INTO scores
        SELECT rid(i), 'accuracy', CAST(floor(101 * pow(u(i, 51), 0.5)) AS BIGINT),
               ts(i) + to_seconds(120 + CAST(floor(3600 * u(i, 52)) AS BIGINT))
        FROM range({n}) AS t(i) WHERE u(i, 50) < 0.01
        UNION ALL
        SELECT rid(i), 'is_safe', CAST(u(i, 53) < 0.97 AS BIGINT), ts(i) + to_seconds(130)
        FROM range({n}) AS t(i) WHERE u(i, 50) < 0.005
        UNION ALL
        SELECT rid(i), 'accuracy', CAST(floor(101 * u(i, 54)) AS BIGINT), ts(i) + to_seconds(90000)
        FROM range({n}) AS t(i) WHERE u(i, 50) < 0.0005""",
    ]


def generate(path: Path, n: int) -> dict[str, Any]:
    end = datetime.now(UTC)
    started = time.perf_counter()
    with duckdb.connect(str(path)) as conn:
        migrate(conn)
        for sql in macros(n, end):
            conn.execute(sql)
        t = time.perf_counter()
        conn.execute(requests_sql(n))
        rows_s = time.perf_counter() - t
        t = time.perf_counter()
        for sql in annotations_sql(n):
            conn.execute(sql)
        notes_s = time.perf_counter() - t
        t = time.perf_counter()
        rollup.rebuild(conn)  # what the writer keeps batch by batch, built once here
        rollup_s = time.perf_counter() - t
        t = time.perf_counter()
        conn.execute("CHECKPOINT")
        checkpoint_s = time.perf_counter() - t
        total = time.perf_counter() - started  # the sanity checks below are not part of it
        facts = _facts(conn)
    return {
        "rows": n,
        "seconds": total,
        "requests_s": rows_s,
        "annotations_s": notes_s,
        "rollup_s": rollup_s,
        "checkpoint_s": checkpoint_s,
        "bytes": _size(path),
        "end": end.isoformat(),
        **facts,
    }


def _facts(conn: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """What the data looks like, to check it is as described."""
    row = conn.execute(
        """SELECT count(*), count(DISTINCT model), count(DISTINCT provider), count(DISTINCT user_id),
                  count(DISTINCT session_id), count(DISTINCT session_path),
                  round(100 * count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL) / count(*), 2),
                  round(100 * count(*) FILTER (WHERE status = 429) / count(*), 2),
                  round(100 * count(*) FILTER (WHERE rate_limited) / count(*), 2),
                  round(100 * count(*) FILTER (WHERE cache_status = 'HIT') / count(*), 2),
                  round(100 * count(*) FILTER (WHERE cache_status = 'MISS') / count(*), 2),
                  round(100 * count(*) FILTER (WHERE streamed) / count(*), 1),
                  sum(cost_usd), sum(cost_saved_usd), min(created_at), max(created_at)
           FROM requests"""
    ).fetchone()
    assert row is not None
    keys = [
        "requests",
        "models",
        "providers",
        "users",
        "sessions",
        "session_paths",
        "error_pct",
        "status_429_pct",
        "rate_limited_pct",
        "hit_pct",
        "miss_pct",
        "streamed_pct",
        "cost_usd",
        "cost_saved_usd",
        "first",
        "last",
    ]
    facts = dict(zip(keys, row, strict=True))
    bad = conn.execute(
        """SELECT count(*) FROM requests AS h LEFT JOIN requests AS o ON o.request_id = h.cache_reference_id
           WHERE h.cache_status = 'HIT' AND (o.request_id IS NULL OR o.cache_status IS DISTINCT FROM 'MISS'
                 OR o.created_at >= h.created_at OR o.model IS DISTINCT FROM h.model
                 OR o.cost_usd IS DISTINCT FROM h.cost_saved_usd
                 OR (o.status = 200 AND o.latency_ms IS DISTINCT FROM h.latency_saved_ms))"""
    ).fetchone()
    facts["hits_not_matching_their_original"] = bad[0] if bad else None
    fb = conn.execute("SELECT count(*), count(DISTINCT request_id) FROM feedback").fetchone()
    sc = conn.execute("SELECT count(*), count(DISTINCT request_id) FROM scores").fetchone()
    assert fb is not None and sc is not None
    facts |= {
        "feedback_rows": fb[0],
        "feedback_requests": fb[1],
        "score_rows": sc[0],
        "scored_requests": sc[1],
    }
    return {k: str(v) if isinstance(v, Decimal | datetime) else v for k, v in facts.items()}


def _size(path: Path) -> int:
    wal = path.with_name(path.name + ".wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


# -- reports --


def report_cases() -> list[list[str]]:
    """Arguments after `llmtap report`: every report, every --by, a few filters."""
    cases = [["summary"], ["cost"]]
    cases += [
        ["cost", "--by", by]
        for by in (
            "provider",
            "day",
            "hour",
            "user",
            "session",
            "property:feature",
            "rating",
            "score:accuracy",
        )
    ]
    cases += [["cache"], ["latency"], ["errors"], ["top"], ["sessions"]]
    cases += [
        ["cost", "--since", "7d", "--model", FILTER_MODEL],
        ["summary", "--property", f"feature={FILTER_FEATURE}"],
        ["latency", "--by", "day", "--provider", FILTER_PROVIDER],
        ["errors", "--by", "model", "--since", "30d"],
        ["top", "--rating", "down"],
    ]
    return cases


def _run_inprocess(argv: list[str]) -> float:
    t = time.perf_counter()
    rc = cli.main(argv)
    dt = time.perf_counter() - t
    if rc != 0:
        raise RuntimeError(f"llmtap {' '.join(argv)} exited {rc}")
    return dt


def _run_subprocess(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "llmtap.cli", *argv], env=env, capture_output=True, text=True
    )
    dt = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"llmtap {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return dt


def _stats(values: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(values), "max_s": max(values), "runs_s": values}


def time_reports(db: Path, tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    env = child_env()
    out = tmp / "report.csv"
    start = [_run_subprocess(["--version"], env) for _ in range(RUNS)]
    _run_inprocess(["report", "summary", "--db", str(db), "--format", "csv", "--out", str(out)])  # warm-up
    results = []
    for case in report_cases():
        argv = ["report", *case, "--db", str(db), "--format", "csv", "--out", str(out)]
        inproc = [_run_inprocess(argv) for _ in range(RUNS)]
        lines = out.read_text().count("\n")
        sub = [_run_subprocess(argv, env) for _ in range(RUNS)]
        r = {
            "report": " ".join(case),
            "rows_out": max(0, lines - 1),
            "inprocess": _stats(inproc),
            "subprocess": _stats(sub),
        }
        r["pass"] = r["subprocess"]["median_s"] < REPORT_TARGET_S
        results.append(r)
        log(
            f"  {r['report']:<44} in-process {r['inprocess']['median_s']:.3f} s, "
            f"subprocess {r['subprocess']['median_s']:.3f} s"
        )
    return {"process_start": _stats(start), "reports": results}


# -- writer ingest --


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _sse(*events: dict[str, Any] | str, event: str | None = None, eol: bytes = b"\n") -> bytes:
    out = b""
    for ev in events:
        data = ev.encode() if isinstance(ev, str) else _dumps(ev)
        out += (b"event: " + event.encode() + eol if event else b"") + b"data: " + data + eol + eol
    return out


_ANSWER = (
    "Here is a short plan. First, check the three options against the budget; second, book the one"
    " with the best reviews; third, confirm the dates with everyone before paying. "
)
_MESSAGES = [
    {"role": "system", "content": "You are a helpful travel assistant. Answer briefly and precisely. " * 6},
    {"role": "user", "content": "We are four people travelling to Lisbon in May for five nights. " * 4},
    {"role": "assistant", "content": _ANSWER * 2},
    {"role": "user", "content": "Which neighbourhood should we stay in, and what should we book first?"},
]


def templates() -> list[tuple[str, Capture]]:
    """Realistic finished calls as the addon queues them (shapes as in tests/unit/samples.py)."""
    started = datetime.now(UTC).timestamp()
    headers = {
        "content-type": "application/json",
        "authorization": "[REDACTED]",
        "user-agent": "OpenAI/Python",
    }

    def cap(request_id: str, **values: Any) -> Capture:
        meta = CallMeta(
            request_id=request_id,
            user_id="user-0042",
            session_id="sess-7f3a",
            session_path="/plan/step-2",
            session_name="trip-planner",
            properties={"feature": "chat", "env": "prod"},
        )
        base: dict[str, Any] = dict(
            meta=meta,
            provider="openai",
            api="openai",
            price_id="openai",
            inferred=False,
            endpoint="chat",
            host="api.openai.com",
            method="POST",
            path="/v1/chat/completions",
            started=started,
            request_headers=headers,
            status=200,
            latency_ms=1840.5,
            content_type="application/json",
        )
        base.update(values)
        return Capture(**base)

    chat_req = _dumps({"model": "gpt-4o-mini", "messages": _MESSAGES, "user": "user-0042"})
    stream_req = _dumps(
        {
            "model": "gpt-4o-mini",
            "messages": _MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    openai_usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }
    chat_resp = {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _ANSWER * 4, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": openai_usage,
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035",
    }
    chunk_base = {
        "id": "chatcmpl-AzZ1",
        "object": "chat.completion.chunk",
        "created": 1739000000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_06737a9306",
        "usage": None,
    }
    words = (_ANSWER * 2).split(" ")
    chunks = [
        {
            **chunk_base,
            "choices": [{"index": 0, "delta": {"content": w + " "}, "logprobs": None, "finish_reason": None}],
        }
        for w in words
    ]
    chunks.append({**chunk_base, "choices": [], "usage": openai_usage})
    openai_stream = _sse(*chunks, "[DONE]")

    anthropic_req = _dumps(
        {
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 1024,
            "system": _MESSAGES[0]["content"],
            "messages": _MESSAGES[1:],
        }
    )
    anthropic_usage = {
        "input_tokens": 100,
        "cache_creation_input_tokens": 200,
        "cache_read_input_tokens": 900,
        "output_tokens": 310,
    }
    anthropic_json = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [{"type": "text", "text": _ANSWER * 4}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": anthropic_usage,
    }
    start = {
        "type": "message_start",
        "message": {
            **anthropic_json,
            "content": [],
            "stop_reason": None,
            "usage": {**anthropic_usage, "output_tokens": 1},
        },
    }
    a_stream = _sse(start, event="message_start")
    a_stream += _sse(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        event="content_block_start",
    )
    for w in words:
        a_stream += _sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w + " "}},
            event="content_block_delta",
        )
    a_stream += _sse({"type": "content_block_stop", "index": 0}, event="content_block_stop")
    a_stream += _sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 310},
        },
        event="message_delta",
    )
    a_stream += _sse({"type": "message_stop"}, event="message_stop")
    anthropic = dict(
        provider="anthropic",
        api="anthropic",
        price_id="anthropic",
        endpoint="messages",
        host="api.anthropic.com",
        path="/v1/messages",
        request_body=anthropic_req,
    )

    gemini_req = _dumps(
        {"contents": [{"role": "user", "parts": [{"text": m["content"]}]} for m in _MESSAGES[1:]]}
    )
    gemini_resp = {
        "candidates": [
            {
                "content": {"parts": [{"text": _ANSWER * 4}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 640, "candidatesTokenCount": 280, "totalTokenCount": 920},
        "modelVersion": "gemini-2.0-flash",
    }
    responses_req = _dumps(
        {"model": "o3-mini", "input": _MESSAGES[3]["content"], "instructions": _MESSAGES[0]["content"]}
    )
    responses_resp = {
        "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
        "object": "response",
        "created_at": 1741476542,
        "status": "completed",
        "model": "o3-mini-2025-01-31",
        "output": [
            {
                "type": "message",
                "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e6",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": _ANSWER * 3, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": 236,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 487,
            "output_tokens_details": {"reasoning_tokens": 320},
            "total_tokens": 723,
        },
    }
    rate_limited = {
        "error": {
            "message": "Rate limit reached for gpt-4o-mini in organization org-x on tokens"
            " per min (TPM): Limit 200000, Used 199500, Requested 1500.",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    original = Entry(
        request_id=str(uuid.uuid4()),
        status=200,
        content_type="application/json",
        streamed=False,
        body=_dumps(chat_resp),
        provider="openai",
        model="gpt-4o-mini-2024-07-18",
        input_tokens=1200,
        output_tokens=300,
        cache_read_tokens=1024,
        cache_write_tokens=0,
        reasoning_tokens=0,
        usage_source="response",
        cost_usd=Decimal("0.000334800"),
        latency_ms=1840.5,
    )
    return [
        ("openai chat", cap("t1", request_body=chat_req, response_body=_dumps(chat_resp))),
        (
            "openai chat stream",
            cap(
                "t2",
                request_body=stream_req,
                response_body=openai_stream,
                streamed=True,
                ttft_ms=420.0,
                content_type="text/event-stream",
            ),
        ),
        (
            "openai responses",
            cap(
                "t3",
                endpoint="responses",
                path="/v1/responses",
                request_body=responses_req,
                response_body=_dumps(responses_resp),
            ),
        ),
        ("anthropic messages", cap("t4", **anthropic, response_body=_dumps(anthropic_json))),
        (
            "anthropic stream",
            cap(
                "t5",
                **anthropic,
                response_body=a_stream,
                streamed=True,
                ttft_ms=610.0,
                content_type="text/event-stream",
            ),
        ),
        (
            "gemini generate",
            cap(
                "t6",
                provider="google",
                api="gemini",
                price_id="google",
                endpoint="generate",
                host="generativelanguage.googleapis.com",
                path="/v1beta/models/gemini-2.0-flash:generateContent",
                request_body=gemini_req,
                response_body=_dumps(gemini_resp),
            ),
        ),
        (
            "openai 429",
            cap(
                "t7",
                request_body=chat_req,
                status=429,
                response_body=_dumps(rate_limited),
                latency_ms=95.0,
                retries=1,
            ),
        ),
        (
            "cache hit",
            cap(
                "t8",
                request_body=chat_req,
                response_body=_dumps(chat_resp),
                cache_status="HIT",
                hit=original,
                latency_ms=4.2,
            ),
        ),
    ]


def _new_ids(n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(n)]


def time_to_row(kinds: list[tuple[str, Capture]], per_kind: int) -> dict[str, dict[str, Any]]:
    """Microseconds per `to_row` call, per capture kind, and of its two costly parts on their own:
    `usage.account` (decoding and scanning the body, SSE included) and `pricing.price` (genai-prices).
    Warm: the first call of each is not timed. A cache hit does neither (it copies its original)."""
    out: dict[str, dict[str, Any]] = {}
    for name, c in kinds:
        to_row(c)
        times: dict[str, Any] = {"to_row": _per_call(lambda c=c: to_row(c), per_kind)}
        ok = c.status is not None and 200 <= c.status < 300
        times |= {"streamed": c.streamed, "ok": ok and c.hit is None}
        if c.hit is None:
            response = decoded_response(c)
            tokens = usage.account(c.api, c.endpoint, c.streamed, ok, c.request_body, response)
            model = tokens.model or json.loads(c.request_body).get("model") or path_model(c.api, c.path)
            at = datetime.fromtimestamp(c.started, UTC)
            times["usage"] = _per_call(
                lambda c=c, r=response, ok=ok: usage.account(
                    c.api, c.endpoint, c.streamed, ok, c.request_body, r
                ),
                per_kind,
            )
            times["pricing"] = _per_call(
                lambda c=c, t=tokens, m=model, at=at: pricing.price(t, m, c.price_id, c.provider, at),
                per_kind,
            )
        else:
            times["usage"] = times["pricing"] = None
        out[name] = times
    return out


def _per_call(fn: Callable[[], object], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def insert_path(path: Path, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """`Store.flush` as the writer calls it under load: one flush per `batch_size` rows, each opening
    the file, checking migrations, inserting, committing and closing."""
    store = Store(str(path), queue_size=len(rows) + 1, batch_size=BATCH)
    store.flush()  # creates the file and its schema, as the writer's first flush does
    flush_ms = []
    started = time.perf_counter()
    for k in range(0, len(rows), BATCH):
        store._pending.extend(rows[k : k + BATCH])  # what the writer's loop does between flushes
        t = time.perf_counter()
        if not store.flush():
            raise RuntimeError(f"flush failed: {store.stats}")
        flush_ms.append((time.perf_counter() - t) * 1e3)
    elapsed = time.perf_counter() - started
    if store.stats.written != len(rows):
        raise RuntimeError(f"wrote {store.stats.written} of {len(rows)} rows")
    flush_ms.sort()
    return {
        "rows": len(rows),
        "seconds": elapsed,
        "rows_per_s": len(rows) / elapsed,
        "flushes": len(flush_ms),
        "flush_p50_ms": statistics.median(flush_ms),
        "flush_max_ms": flush_ms[-1],
    }


def flush_breakdown(tmp: Path, rows: list[tuple[Any, ...]], reps: int = 5) -> dict[str, float]:
    """Where one batch_size flush's time goes, in ms (medians of `reps`): Store.flush's steps one by one
    on a DuckDB configured as the writer's (ATTACH the file, migrations check, BEGIN + append, COMMIT:
    a checkpoint that writes the batch into the file, DETACH), then BEGIN + append + COMMIT again
    with bodies cut to 200 characters, to show what the bodies cost."""
    path = tmp / "breakdown.duckdb"
    batch = rows[:BATCH]
    cut = [_cut_bodies(r) for r in batch]
    with duckdb.connect(str(path)) as conn:
        migrate(conn)
    conn = duckdb.connect(":memory:", config=DUCKDB_CONFIG)
    conn.execute(_merge_setting(behind=True))  # as in a full-batch flush
    steps: dict[str, list[float]] = {
        "attach": [],
        "migrations_check": [],
        "append": [],
        "commit": [],
        "detach": [],
    }
    short: list[float] = []
    for _ in range(reps):
        for part, long in ((batch, True), (cut, False)):
            t = [time.perf_counter()]
            conn.execute(f"ATTACH '{path}' AS f")
            conn.execute("USE f")
            t.append(time.perf_counter())
            migrate(conn)
            t.append(time.perf_counter())
            conn.execute("BEGIN TRANSACTION")
            _append(conn, part, BATCH)
            t.append(time.perf_counter())
            conn.execute("COMMIT")
            t.append(time.perf_counter())
            conn.execute("USE memory")
            conn.execute("DETACH f")
            t.append(time.perf_counter())
            if long:
                for k, times in enumerate(steps.values()):
                    times.append((t[k + 1] - t[k]) * 1e3)
            else:
                short.append((t[4] - t[2]) * 1e3)
    conn.close()
    out = {f"{k}_ms": statistics.median(v) for k, v in steps.items()}
    out["append_commit_short_bodies_ms"] = statistics.median(short)
    return out


def _cut_bodies(row: tuple[Any, ...], keep: int = 200) -> tuple[Any, ...]:
    r = list(row)
    for name in ("request_body", "response_body"):
        k = COLUMNS.index(name)
        r[k] = (r[k][:keep] or None) if r[k] else r[k]
    return tuple(r)


def end_to_end(path: Path, kinds: list[tuple[str, Capture]], n: int) -> dict[str, Any]:
    """A started Store fed `n` captures through `submit`, until `close()` has written them all."""
    ids = _new_ids(n, seed=2)
    captures = [
        dataclasses.replace(c, meta=dataclasses.replace(c.meta, request_id=ids[k]))
        for k, (_, c) in zip(range(n), _cycle(kinds, n), strict=True)
    ]
    store = Store(str(path), queue_size=n + 1, batch_size=BATCH)
    started = time.perf_counter()
    store.start()
    for c in captures:
        if not store.submit(c):
            raise RuntimeError("submit dropped a capture")
    submitted = time.perf_counter() - started
    store.close(timeout=3600)
    elapsed = time.perf_counter() - started
    with duckdb.connect(str(path), read_only=True) as conn:
        row = conn.execute("SELECT count(*), count(cost_usd) FROM requests").fetchone()
    assert row is not None
    return {
        "captures": n,
        "seconds": elapsed,
        "submit_s": submitted,
        "rows_written": row[0],
        "rows_priced": row[1],
        "rows_per_s": row[0] / elapsed,
        "stats": dataclasses.asdict(store.stats),
    }


def _cycle(items: list[Any], n: int) -> list[Any]:
    return [items[k % len(items)] for k in range(n)]


def ingest(tmp: Path, big: Path, counts: Counts, log: Callable[[str], None]) -> dict[str, Any]:
    kinds = templates()
    template_rows = [to_row(c) for _, c in kinds]
    per_row = time_to_row(kinds, per_kind=300)
    ids = _new_ids(counts.insert_rows, seed=1)
    i_id, i_at = COLUMNS.index("request_id"), COLUMNS.index("created_at")
    base = datetime.now(UTC)
    rows = []
    for k, t in enumerate(_cycle(template_rows, counts.insert_rows)):
        row = list(t)
        row[i_id], row[i_at] = ids[k], base + timedelta(milliseconds=k)
        rows.append(tuple(row))
    body_bytes = statistics.mean(
        len(r[COLUMNS.index("request_body")] or "") + len(r[COLUMNS.index("response_body")] or "")
        for r in template_rows
    )
    log(f"  insert path: {len(rows):,} rows into a fresh file")
    fresh = insert_path(tmp / "ingest.duckdb", rows)
    log(f"  insert path: {len(rows):,} rows appended to the {_human_rows(_count(big))}-row file")
    appended = insert_path(big, rows)
    log(f"  insert path: {len(rows):,} rows without bodies into a fresh file")
    no_bodies = insert_path(tmp / "no_bodies.duckdb", [_cut_bodies(r, keep=0) for r in rows])
    breakdown = flush_breakdown(tmp, rows)
    log(f"  end to end: {counts.e2e_captures:,} captures through Store.submit")
    e2e = end_to_end(tmp / "e2e.duckdb", kinds, counts.e2e_captures)
    return {
        "to_row_us": per_row,
        "template_body_bytes": body_bytes,
        "batch_size": BATCH,
        "insert_fresh": fresh,
        "insert_appended": appended,
        "insert_no_bodies": no_bodies,
        "flush_breakdown_ms": breakdown,
        "end_to_end": e2e,
    }


def _count(db: Path) -> int:
    with duckdb.connect(str(db), read_only=True) as conn:
        row = conn.execute("SELECT count(*) FROM requests").fetchone()
    return row[0] if row else 0


def _human_rows(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


# -- the run --


def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = QUICK if args.quick else DEFAULT
    if args.rows:
        counts = dataclasses.replace(counts, rows=args.rows)
    tmp = Path(tempfile.mkdtemp(prefix="llmtap-bench-reports-"))

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        db = tmp / "bench.duckdb"
        log(f"generating {counts.rows:,} rows in {db} ...")
        gen = generate(db, counts.rows)
        log(f"  {gen['seconds']:.1f} s, {gen['bytes'] / 2**30:.2f} GiB")
        log(f"timing {len(report_cases())} reports, {RUNS} runs each in-process and as a subprocess ...")
        rep = time_reports(db, tmp, log)
        log("writer ingest ...")
        ing = ingest(tmp, db, counts, log)
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "counts": dataclasses.asdict(counts),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "genai_prices": pricing.VERSION,
        "generate": gen,
        **rep,
        "ingest": ing,
    }


def summary(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(what, measured, ratio to target, target, verdict) rows, targets first."""
    reps = r["reports"]
    n = len(reps)
    slow_sub = max(reps, key=lambda x: x["subprocess"]["median_s"])
    slow_in = max(reps, key=lambda x: x["inprocess"]["median_s"])
    sub_ok = sum(x["subprocess"]["median_s"] < REPORT_TARGET_S for x in reps)
    in_ok = sum(x["inprocess"]["median_s"] < REPORT_TARGET_S for x in reps)
    max_ok = sum(x["subprocess"]["max_s"] < REPORT_TARGET_S for x in reps)
    worst_max = max(x["subprocess"]["max_s"] for x in reps)
    rows_ = _human_rows(r["generate"]["rows"])
    ing = r["ingest"]
    fresh, appended, e2e = ing["insert_fresh"], ing["insert_appended"], ing["end_to_end"]
    s = REPORT_TARGET_S
    return [
        (
            f"reports < {s:g} s, subprocess median (headline)",
            f"{sub_ok}/{n}",
            "",
            "all",
            verdict(sub_ok == n),
        ),
        (
            f"  slowest: {slow_sub['report']}",
            f"{slow_sub['subprocess']['median_s']:.3f} s",
            f"{slow_sub['subprocess']['median_s'] / s:.2f}x",
            f"< {s:g} s",
            verdict(slow_sub["pass"]),
        ),
        (
            f"reports < {s:g} s, subprocess max of {RUNS}",
            f"{max_ok}/{n}",
            f"{worst_max / s:.2f}x",
            "info",
            "",
        ),
        (f"reports < {s:g} s, in-process cli.main median", f"{in_ok}/{n}", "", "all", verdict(in_ok == n)),
        (
            f"  slowest: {slow_in['report']}",
            f"{slow_in['inprocess']['median_s']:.3f} s",
            f"{slow_in['inprocess']['median_s'] / s:.2f}x",
            f"< {s:g} s",
            verdict(slow_in["inprocess"]["median_s"] < s),
        ),
        (
            "process start (llmtap --version), median",
            f"{r['process_start']['median_s']:.3f} s",
            "",
            "info",
            "",
        ),
        (
            f"writer insert path, fresh file ({BATCH:,}-row flushes)",
            f"{fresh['rows_per_s']:,.0f} rows/s",
            "",
            "info",
            "",
        ),
        (
            f"writer insert path, appended to the {rows_}-row file",
            f"{appended['rows_per_s']:,.0f} rows/s",
            "",
            "info",
            "",
        ),
        (
            "writer insert path, rows without bodies, fresh file",
            f"{ing['insert_no_bodies']['rows_per_s']:,.0f} rows/s",
            "",
            "info",
            "",
        ),
        (
            "writer end to end (submit -> to_row -> flush)",
            f"{e2e['rows_per_s']:,.0f} rows/s",
            "",
            "info",
            "CPU-bound on to_row",
        ),
    ]


def render(r: dict[str, Any]) -> str:
    g, ing = r["generate"], r["ingest"]
    out = [
        f"llmtap built-in reports at {g['rows']:,} synthetic rows, and writer ingest",
        f"{r['cores']} cores, Python {r['python']}, DuckDB {r['duckdb']}, genai-prices {r['genai_prices']}; "
        f"reports write CSV to a temp file (--format csv --out); {RUNS} runs each",
        "",
        f"{'measure':<58}{'measured':>16}{'ratio':>8}  {'target':<11}verdict",
    ]
    out += [f"{a:<58}{b:>16}{c:>8}  {d:<11}{e}" for a, b, c, d, e in summary(r)]
    e2e, fresh, bd = ing["end_to_end"], ing["insert_fresh"], ing["flush_breakdown_ms"]
    to_row_us = {k: v["to_row"] for k, v in ing["to_row_us"].items()}
    kinds = ing["to_row_us"].values()
    stream_usage = _mean_share([k for k in kinds if k["ok"] and k["streamed"]], "usage")
    json_pricing = _mean_share([k for k in kinds if k["ok"] and not k["streamed"]], "pricing")
    out += [
        "",
        f"The insert path (Store.flush of pre-built rows): {fresh['rows_per_s']:,.0f} rows/s",
        f"= {1e6 / fresh['rows_per_s']:.0f} us per row; a {BATCH:,}-row flush took "
        f"{fresh['flush_p50_ms']:.0f} ms (p50). Its steps, timed apart: ATTACH "
        f"{bd['attach_ms']:.0f} ms,",
        f"migrations check {bd['migrations_check_ms']:.0f} ms, BEGIN + append {bd['append_ms']:.0f} ms, "
        f"COMMIT (checkpoint into the file) {bd['commit_ms']:.0f} ms, DETACH {bd['detach_ms']:.0f} ms;",
        f"with bodies cut to 200 characters BEGIN + append + COMMIT takes "
        f"{bd['append_commit_short_bodies_ms']:.0f} ms.",
        f"End to end is information only: each row first costs a to_row call, {min(to_row_us.values()):.0f}-"
        f"{max(to_row_us.values()):.0f} us per capture kind",
        f"(streams: {stream_usage:.0%} of it scanning the SSE body; JSON answers: {json_pricing:.0%} "
        "genai-prices pricing), so one writer thread",
        f"peaks near {e2e['rows_per_s']:,.0f} calls/s, CPU-bound on to_row.",
        "",
    ]
    facts = [
        f"data: {g['requests']:,} requests in {g['seconds']:.1f} s (rows {g['requests_s']:.1f} s, "
        f"feedback+scores {g['annotations_s']:.1f} s, checkpoint {g['checkpoint_s']:.1f} s),",
        f"  file {g['bytes'] / 2**30:.2f} GiB ({g['bytes'] / g['requests']:.0f} B/row, bodies NULL)",
        f"  {g['models']} models / {g['providers']} providers, {g['users']:,} users, "
        f"{g['sessions']:,} sessions ({g['session_paths']} distinct paths), "
        f"{g['first'][:16]} .. {g['last'][:16]}",
        f"  errors {g['error_pct']} % (429 {g['status_429_pct']} %, llmtap rate-limited "
        f"{g['rate_limited_pct']} %), cache HIT {g['hit_pct']} % / MISS {g['miss_pct']} %, "
        f"streamed {g['streamed_pct']} %",
        f"  cost ${float(g['cost_usd']):,.2f}, saved by cache ${float(g['cost_saved_usd']):,.2f}; "
        f"hits not matching an earlier MISS original: {g['hits_not_matching_their_original']}",
        f"  feedback {g['feedback_rows']:,} rows on {g['feedback_requests']:,} calls; "
        f"scores {g['score_rows']:,} rows on {g['scored_requests']:,} calls",
    ]
    out += [
        *facts,
        "",
        f"reports (s): process start alone {r['process_start']['median_s']:.3f} median, "
        f"{r['process_start']['max_s']:.3f} max",
        f"{'llmtap report ...':<48}{'rows':>7}{'in-proc':>9}{'max':>7}{'subproc':>9}{'max':>7}  verdict",
    ]
    for x in r["reports"]:
        i, s = x["inprocess"], x["subprocess"]
        out.append(
            f"{x['report']:<48}{x['rows_out']:>7}{i['median_s']:>9.3f}{i['max_s']:>7.3f}"
            f"{s['median_s']:>9.3f}{s['max_s']:>7.3f}  {verdict(x['pass'])}"
        )
    out += [
        "",
        f"writer ingest: rows from to_row on {len(ing['to_row_us'])} capture kinds, "
        f"~{ing['template_body_bytes'] / 1024:.1f} KiB of bodies per row; {ing['batch_size']:,}-row flushes",
    ]
    for key, label in (
        ("insert_fresh", "insert path, fresh file"),
        ("insert_appended", "insert path, appended"),
        ("insert_no_bodies", "insert path, no bodies"),
    ):
        x = ing[key]
        out.append(
            f"  {label:<28}{x['rows']:>9,} rows {x['seconds']:>7.2f} s {x['rows_per_s']:>10,.0f} rows/s; "
            f"{x['flushes']} flushes, p50 {x['flush_p50_ms']:.1f} ms, max {x['flush_max_ms']:.1f} ms"
        )
    out.append(
        f"  {'end to end':<28}{e2e['captures']:>9,} caps {e2e['seconds']:>7.2f} s "
        f"{e2e['rows_per_s']:>10,.0f} rows/s; {e2e['rows_written']:,} written, {e2e['rows_priced']:,} "
        f"priced, submit loop {e2e['submit_s']:.2f} s, stats {e2e['stats']}"
    )
    out.append(f"  {'to_row per capture kind (us)':<28}{'to_row':>8}{'usage':>8}{'pricing':>8}")
    for name, v in ing["to_row_us"].items():
        parts = "".join(f"{x:>8.0f}" if x is not None else f"{'-':>8}" for x in (v["usage"], v["pricing"]))
        out.append(f"    {name:<26}{v['to_row']:>8.0f}{parts}")
    return "\n".join(out)


def _mean_share(kinds: list[dict[str, Any]], part: str) -> float:
    """The mean share of `part` in to_row over these capture kinds (NaN when there are none)."""
    shares = [k[part] / k["to_row"] for k in kinds if k[part] is not None]
    return statistics.mean(shares) if shares else float("nan")


def main() -> None:
    parser = arguments(
        __doc__, keep="the DuckDB files", quick="1M rows and fewer ingest rows, under a minute"
    )
    parser.add_argument("--rows", type=int, help="synthetic requests rows (default 10,000,000; --quick 1M)")
    args = parser.parse_args()
    if args.rows is not None and args.rows < 10_000:
        parser.error("--rows must be at least 10,000")
    result = run(args)
    print(render(result))
    write_json(args.json, result)


if __name__ == "__main__":
    main()
