"""Built-in reports (`llmtap report NAME`): summary, cost, cache, latency, errors, top, sessions.

Each report is one SQL statement over `requests` (and the small `feedback` / `scores` tables when
a filter or grouping asks for them), assembled from fixed fragments, validated identifiers and
bound parameters: what the user types is never pasted into SQL. Every report reads the filtered
rows once, except `cache` (its hits look up their originals' latency) and `sessions` (a second
pass reads only the sessions shown), so they stay fast on millions of rows; Python only shapes
the result rows.

Time: `--since` / `--until` take `30m`, `24h`, `7d`, `2w` (that long ago) or ISO dates and
times; a date or time without an offset is read in `--tz` (default UTC), which also decides
what `day` and `hour` mean. A date alone as `--until` includes that whole day. Days and hours
are found from 15-minute buckets (every time zone's offset is a multiple of 15 minutes), so the
time-zone arithmetic runs once per bucket, not once per row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from llmtap.reports import dialect, output
from llmtap.storage import query
from llmtap.storage.query import QueryError


class ReportError(QueryError):
    """A report asked for something that cannot be answered (shown as `llmtap: ...`)."""


REPORTS: dict[str, str] = {
    "summary": "calls, tokens, cost, errors, cache hit rate and cost saved, in one view",
    "cost": "calls, tokens and cost --by model (default), provider, day, hour, user, session, ...",
    "cache": "response-cache hits, misses, hit rate, cost and latency saved, --by model (default)",
    "latency": "p50 / p95 / p99 latency and time to first token, --by model (default)",
    "errors": "failed calls (status >= 400 or an error) by status and error: rate limited, retries",
    "top": "the most expensive calls",
    "sessions": "per session: calls, cost, duration, and its Helicone-Session-Path tree",
}
GROUPED: dict[str, tuple[str, ...]] = {  # reports that take --by, and their default grouping
    "cost": ("model",),
    "cache": ("model",),
    "latency": ("model",),
    "errors": (),
}
DEFAULT_LIMIT: dict[str, int | None] = {"top": 20, "sessions": 20}
DIMENSIONS = ("model", "provider", "day", "hour", "minute", "user", "session", "rating")
SCORE_OPS = (">=", "<=", "!=", "=", ">", "<")

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")  # property and score names
_AGO = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|[+-]\d{2}(:?\d{2})?)?$")
_SCORE = re.compile(r"^([A-Za-z0-9_.\-]+?)\s*(>=|<=|!=|==|=|>|<)\s*(-?\d+|true|false)$", re.I)
_TZ = re.compile(r"^[A-Za-z0-9_+\-/]+$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_BUCKET_US = 15 * 60 * 1_000_000
_RANGE_BUCKETS = 200_000  # ~5.7 years of buckets: past that, the rows' own are fewer
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- arguments --


@dataclass(frozen=True)
class Dimension:
    """One --by grouping: a fixed name, or property:NAME / score:NAME."""

    kind: str
    arg: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


@dataclass(frozen=True)
class When:
    """A --since / --until value: `ago` before now, or a point in time (naive: in --tz)."""

    text: str
    ago: timedelta | None = None
    at: datetime | None = None
    date_only: bool = False


@dataclass(frozen=True)
class ScoreFilter:
    name: str
    op: str
    value: int


@dataclass
class Options:
    since: When | None = None
    until: When | None = None
    provider: list[str] = field(default_factory=list)
    model: list[str] = field(default_factory=list)
    user: list[str] = field(default_factory=list)
    session: list[str] = field(default_factory=list)
    properties: list[tuple[str, str]] = field(default_factory=list)
    rating: str | None = None  # 'up' | 'down'
    scores: list[ScoreFilter] = field(default_factory=list)
    by: list[Dimension] = field(default_factory=list)  # empty: the report's default
    limit: int | None = None
    tz: str = "UTC"
    sample_pct: float | None = None  # grouped reports: read only this share of the calls


def parse_dimensions(text: str) -> list[Dimension]:
    """`model`, `day,model`, `property:feature`, `score:accuracy` ..."""
    dims = []
    for part in text.split(","):
        kind, sep, arg = part.strip().partition(":")
        kind = kind.lower()
        if not sep and kind in DIMENSIONS:
            dims.append(Dimension(kind))
        elif sep and kind in ("property", "score") and _NAME.match(arg):
            dims.append(Dimension(kind, arg.lower() if kind == "property" else arg))
        else:
            raise ValueError(
                f"cannot group by {part.strip()!r}: expected {', '.join(DIMENSIONS)}, property:NAME"
                " or score:NAME"
            )
    return dims


def parse_when(text: str) -> When:
    """`30m`, `24h`, `7d`, `2w` ago, or an ISO date / date-time (with or without an offset)."""
    t = text.strip()
    m = _AGO.match(t.lower())
    if m:
        return When(text, ago=timedelta(seconds=int(m.group(1)) * _SECONDS[m.group(2)]))
    if _ISO.match(t):
        try:
            at = datetime.fromisoformat(t.replace(" Z", "Z"))
        except ValueError:
            pass
        else:
            return When(text, at=at, date_only=len(t) == 10)
    raise ValueError(
        f"expected a duration like 30m, 24h, 7d, 2w or an ISO date / time like 2025-06-01 or"
        f" 2025-06-01T12:00, got {text!r}"
    )


def parse_property(text: str) -> tuple[str, str]:
    """`key=value`: keys are lowercased, as Helicone stores them."""
    key, sep, value = text.partition("=")
    key = key.strip().lower()
    if not sep or not _NAME.match(key):
        raise ValueError(f"expected NAME=VALUE (NAME of letters, digits, _ . -), got {text!r}")
    return key, value


def parse_score(text: str) -> ScoreFilter:
    """`accuracy>=90`, `is_safe=true`, `accuracy!=0`: the latest value of that score."""
    m = _SCORE.match(text.strip())
    if m is None:
        raise ValueError(
            f"expected NAME OP VALUE with OP one of {' '.join(SCORE_OPS)} and an integer or"
            f" true / false VALUE, like 'accuracy>=90', got {text!r}"
        )
    name, op, raw = m.groups()
    value = {"true": 1, "false": 0}.get(raw.lower())
    return ScoreFilter(name, "=" if op == "==" else op, int(raw) if value is None else value)


def parse_tz(text: str) -> str:
    if not _TZ.match(text):
        raise ValueError(f"expected a time zone name like UTC or Europe/Paris, got {text!r}")
    return text


# -- building the SQL --


@dataclass
class Report:
    name: str
    sql: str
    params: dict[str, Any]
    shape: str  # 'rows' | 'one' (summary) | 'sessions'


class _Params:
    """Collects bound values; each call returns the placeholder for one."""

    def __init__(self, sql: dialect.Dialect = dialect.DUCKDB) -> None:
        self.sql = sql  # the database's dialect (reports/dialect.py)
        self.values: dict[str, Any] = {}
        # The time window `_where` resolved: since (None: open), until, and the `now` of an open end.
        self.span: tuple[datetime | None, datetime | None, datetime] | None = None

    def __call__(self, value: Any) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"${name}"


def prepare(conn: duckdb.DuckDBPyConnection, name: str, opts: Options, now: datetime | None = None) -> Report:
    """The SQL for report `name`. Sets the connection's TimeZone to `opts.tz`."""
    if name not in REPORTS:
        raise ReportError(f"unknown report {name!r}: expected one of {', '.join(REPORTS)}")
    if opts.by and name not in GROUPED:
        raise ReportError(f"report {name} takes no --by (reports that do: {', '.join(GROUPED)})")
    if opts.limit is not None and opts.limit < 1:
        raise ReportError(f"--limit must be at least 1, got {opts.limit}")
    by = opts.by or [Dimension(k) for k in GROUPED.get(name, ())]
    seen = set()
    for d in by:
        if str(d) in seen:
            raise ReportError(f"--by {d} given twice")
        seen.add(str(d))
    now = now or datetime.now(UTC)
    _set_timezone(conn, opts.tz)
    p = _Params(dialect.of(conn))
    if p.sql.postgres:  # a fleet's log: its rollups where they answer
        from llmtap.reports import rollup, rollup_by, rollup_errors, rollup_latency  # (built on this)

        for source in (rollup, rollup_by, rollup_errors, rollup_latency):
            if (fast := source.report(conn, name, opts, now, by)) is not None:
                return fast
    where = _where(conn, opts, p, now)
    if name == "summary":
        return Report(name, _summary(where), p.values, "one")
    if name == "top":
        return Report(name, _top(where, p, opts), p.values, "rows")
    if name == "sessions":
        recent = _recent_start(conn, where, p, opts) if p.sql.postgres else None
        return Report(name, _sessions(where, p, opts, recent), p.values, "sessions")
    return Report(name, _BUILDERS[name](where, p, opts, by), p.values, "rows")


def fetch(
    conn: duckdb.DuckDBPyConnection, name: str, opts: Options, now: datetime | None = None
) -> tuple[Report, list[str], list[tuple]]:
    """Run report `name` on an open (read-only) connection."""
    report = prepare(conn, name, opts, now)
    columns, rows = query.fetch(conn, report.sql, report.params)
    return report, columns, rows


def _set_timezone(conn: duckdb.DuckDBPyConnection, tz: str) -> None:
    parse_tz(tz)  # validated: SET takes no parameter
    try:
        query.fetch(conn, f"SET TimeZone = '{tz}'")
    except QueryError as e:
        raise ReportError(f"unknown time zone {tz!r} (try UTC or a name like Europe/Paris)") from e


def _where(conn: duckdb.DuckDBPyConnection, opts: Options, p: _Params, now: datetime) -> list[str]:
    conds = []
    since = _resolve(conn, opts.since, now, end=False) if opts.since is not None else None
    until = _resolve(conn, opts.until, now, end=True) if opts.until is not None else None
    p.span = (since, until, now)
    if since is not None:
        conds.append(f"created_at >= {p(since)}")
    if until is not None:
        conds.append(f"created_at < {p(until)}")
    for column, values in (
        ("provider", opts.provider),
        ("model", opts.model),
        ("user_id", opts.user),
        ("session_id", opts.session),
    ):
        if values:
            conds.append(f"{column} IN ({', '.join(p(v) for v in values)})")
    for key, value in opts.properties:
        conds.append(f"properties->>{p(key)} = {p(value)}")
    if opts.rating is not None:
        if opts.rating not in ("up", "down"):
            raise ReportError(f"--rating must be up or down, got {opts.rating!r}")
        rated = p(opts.rating == "up")
        conds.append(f"request_id IN (SELECT request_id FROM latest_feedback WHERE rating = {rated})")
    for s in opts.scores:
        if s.op not in SCORE_OPS:
            raise ReportError(f"unknown score comparison {s.op!r}")
        conds.append(
            "request_id IN (SELECT request_id FROM latest_scores"
            f" WHERE name = {p(s.name)} AND value {s.op} {p(s.value)})"
        )
    return conds


def _resolve(conn: duckdb.DuckDBPyConnection, when: When, now: datetime, end: bool) -> datetime:
    if when.ago is not None:
        return now - when.ago
    assert when.at is not None
    at = when.at + timedelta(days=1) if when.date_only and end else when.at
    if at.tzinfo is not None:
        return at
    _, rows = query.fetch(conn, "SELECT CAST($at AS TIMESTAMPTZ)", {"at": at})  # naive: in the session's zone
    return rows[0][0]


def _rows_cte(
    where: Sequence[str], sample_pct: float | None = None, sql: dialect.Dialect = dialect.DUCKDB
) -> str:
    """`r`: the filtered rows, inlined wherever used (DuckDB then reads only the columns needed).

    `sample_pct` keeps that share of the rows, a stable sample rather than a random one
    (dialect.sampled): every read of `r` keeps the same rows (`_tb` reads it again), and so does
    the next refresh of a chart, which then does not jitter."""
    conds, table = list(where), "requests"
    if sample_pct is not None:
        if not 0 < sample_pct <= 100:
            raise ReportError(f"sample must be a percentage above 0 and at most 100, got {sample_pct}")
        table, keep = sql.sampled(table, float(sample_pct))
        conds += [keep] if keep else []
    cond = " AND ".join(conds) or "true"
    return (
        f"r AS NOT MATERIALIZED (SELECT *, epoch_us(created_at) // {_BUCKET_US} AS _qb"
        f" FROM {table} WHERE {cond})"
    )


_ident = query.quote_ident


@dataclass
class _Grouping:
    columns: list[tuple[str, str]]  # (expression, output name)
    ctes: list[str]
    joins: list[str]
    time: list[str]  # output names of day / hour columns (ordered first)


def _grouping(by: Sequence[Dimension], p: _Params, taken: Sequence[str]) -> _Grouping:
    g = _Grouping([], [], [], [])
    simple = {"model": "model", "provider": "provider", "user": "user_id", "session": "session_id"}
    used = {simple.get(d.kind, d.kind) for d in by if not d.arg} | {*taken, "status", "error"}
    for i, d in enumerate(by):
        if d.kind in simple:
            g.columns.append((f"r.{simple[d.kind]}", simple[d.kind]))
        elif d.kind == "minute":  # short ranges: the minute is the same in every time zone
            g.columns.append(("date_trunc('minute', r.created_at)", "minute"))
            g.time.append("minute")
        elif d.kind in ("day", "hour"):
            if not g.time:
                g.ctes.append(
                    "_tb AS (SELECT _qb,"
                    f" CAST(date_trunc('day', to_timestamp(_qb * {_BUCKET_US // 1_000_000})) AS DATE) AS day,"
                    f" date_trunc('hour', to_timestamp(_qb * {_BUCKET_US // 1_000_000})) AS hour"
                    f" FROM ({_buckets(p)}) AS _w)"
                )
                g.joins.append("LEFT JOIN _tb ON _tb._qb = r._qb")
            g.columns.append((f"_tb.{d.kind}", d.kind))
            g.time.append(d.kind)
        elif d.kind == "rating":
            g.columns.append(("CASE _fb.rating WHEN true THEN 'up' WHEN false THEN 'down' END", "rating"))
            g.joins.append("LEFT JOIN latest_feedback AS _fb ON _fb.request_id = r.request_id")
        elif d.kind == "property":
            g.columns.append((f"r.properties->>{p(d.arg)}", _free_name(d, used)))
        else:  # score
            alias = f"_s{i}"
            g.joins.append(
                f"LEFT JOIN (SELECT request_id, value FROM latest_scores WHERE name = {p(d.arg)}) AS {alias}"
                f" ON {alias}.request_id = r.request_id"
            )
            g.columns.append((f"{alias}.value", _free_name(d, used)))
    return g


def _buckets(p: _Params) -> str:
    """The 15-minute buckets the filtered rows can fall in (bucket_range over `r`)."""
    since, until, now = p.span or (None, None, datetime.now(UTC))
    return bucket_range(p, since, until, now, "_qb", "SELECT DISTINCT _qb FROM r")


def bucket_range(
    p: _Params, since: datetime | None, until: datetime | None, now: datetime, name: str, held: str
) -> str:
    """The 15-minute buckets (column `name`) rows of a range can fall in, without a second read of
    the rows: with a --since, every bucket of the window (a range) and, with an open end, those of
    any call after `now` (a read of the newest calls only). Without a --since, `held`: the buckets
    the rows hold (a SELECT DISTINCT over them)."""
    if since is None:
        return held
    us = timedelta(microseconds=1)
    lo = (since - _EPOCH) // us // _BUCKET_US
    hi = ((until - us if until is not None else now) - _EPOCH) // us // _BUCKET_US
    if not 0 <= hi - lo <= _RANGE_BUCKETS:
        return held
    window = f"SELECT range AS {name} FROM range({p(lo)}, {p(hi + 1)})"
    if until is not None:
        return window
    later = _EPOCH + timedelta(microseconds=(hi + 1) * _BUCKET_US)
    return (
        f"{window} UNION ALL SELECT DISTINCT epoch_us(created_at) // {_BUCKET_US} FROM requests"
        f" WHERE created_at >= {p(later)}"
    )


def _free_name(d: Dimension, used: set[str]) -> str:
    """A property or score column is named after it, unless that name is already an output column."""
    name = d.arg if d.arg not in used else f"{d.kind}_{d.arg}"
    used.add(name)
    return name


def _grouped(
    where: list[str],
    p: _Params,
    opts: Options,
    by: Sequence[Dimension],
    measures: list[tuple[str, str]],
    order: str,
    *,
    fixed: Sequence[tuple[str, str]] = (),
    outer: Sequence[tuple[str, str]] | None = None,
) -> str:
    """SELECT <groups>, <measures> FROM r ... GROUP BY <groups>, then ordered (time first) and limited.

    `outer` re-shapes the grouped row (e.g. list elements into columns); `fixed` are groups every
    row of the report has (errors: status and error).
    """
    names = [n for _, n in measures] + [n for _, n in outer or ()] + [n for _, n in fixed]
    g = _grouping(by, p, names)
    keys = g.columns + list(fixed)
    select = ",\n       ".join(f"{e} AS {_ident(n)}" for e, n in [*keys, *measures])
    group = f"GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))}" if keys else ""
    inner = f"SELECT {select}\nFROM r\n{' '.join(g.joins)}\n{group}"
    shown = [_ident(n) for _, n in keys] + (
        [f"{e} AS {_ident(n)}" for e, n in outer] if outer is not None else [_ident(n) for _, n in measures]
    )
    body = f"_g AS (\n{inner}\n)"
    ordering = [f"{_ident(t)} ASC" for t in g.time] + [order]
    ordering += [f"{_ident(n)} ASC NULLS LAST" for _, n in keys if n not in g.time]
    limit = f"\nLIMIT {p(opts.limit)}" if opts.limit else ""
    with_ = ",\n".join([_rows_cte(where, opts.sample_pct, p.sql), *g.ctes, body])
    return f"WITH {with_}\nSELECT {', '.join(shown)}\nFROM _g\nORDER BY {', '.join(ordering)}{limit}"


COST_MEASURES = [
    ("count(*)", "calls"),
    ("CAST(sum(r.input_tokens) AS BIGINT)", "input_tokens"),
    ("CAST(sum(r.output_tokens) AS BIGINT)", "output_tokens"),
    ("sum(r.cost_usd)", "cost_usd"),
    ("count(*) FILTER (WHERE r.cost_usd IS NULL)", "unpriced"),
    ("sum(r.cost_saved_usd)", "cost_saved_usd"),
]


def _cost(where: list[str], p: _Params, opts: Options, by: Sequence[Dimension]) -> str:
    return _grouped(where, p, opts, by, COST_MEASURES, "cost_usd DESC NULLS LAST, calls DESC")


def _cache(where: list[str], p: _Params, opts: Options, by: Sequence[Dimension]) -> str:
    hits = "count(*) FILTER (WHERE r.cache_status = 'HIT')"
    measures = [
        (hits, "hits"),
        ("count(*) FILTER (WHERE r.cache_status = 'MISS')", "misses"),
        (f"round(CAST(100 * {hits} AS DOUBLE PRECISION) / count(*), 1)", "hit_pct"),
        ("sum(r.cost_saved_usd)", "cost_saved_usd"),
        ("sum(r.latency_saved_ms)", "latency_saved_ms"),
    ]
    return _grouped(
        [*where, "cache_status IN ('HIT', 'MISS')"], p, opts, by, measures,
        "hits DESC, cost_saved_usd DESC NULLS LAST",
    )  # fmt: skip


LATENCY_QUANTILES = (0.5, 0.95, 0.99)
# The latency report's columns after its groups: each metric's quantiles, in this order.
LATENCY_COLUMNS = ("calls",) + tuple(
    f"{name}_p{round(100 * q)}_ms" for name in ("latency", "ttft") for q in LATENCY_QUANTILES
)


def _latency(where: list[str], p: _Params, opts: Options, by: Sequence[Dimension]) -> str:
    q = LATENCY_QUANTILES
    measures = [
        ("count(*)", "calls"),
        (p.sql.quantiles("r.latency_ms", q), "_latency"),
        (p.sql.quantiles("r.ttft_ms", q), "_ttft"),
    ]
    outer = [("calls", "calls")] + [
        (f"round({src}[{i + 1}], 1)", LATENCY_COLUMNS[1 + m * len(q) + i])
        for m, src in enumerate(("_latency", "_ttft"))
        for i in range(len(q))
    ]
    # Calls llmtap answered itself (cache hits, its own 429s) say nothing about the provider.
    own = "cache_status IS DISTINCT FROM 'HIT' AND rate_limited IS NOT TRUE"
    return _grouped([*where, own], p, opts, by, measures, "calls DESC", outer=outer)


def _errors(where: list[str], p: _Params, opts: Options, by: Sequence[Dimension]) -> str:
    measures = [
        ("count(*)", "calls"),
        ("count(*) FILTER (WHERE r.rate_limited)", "rate_limited"),
        ("CAST(coalesce(sum(r.retries), 0) AS BIGINT)", "retries"),
        ("max(r.created_at)", "last_seen"),
    ]
    failed = "(status >= 400 OR error IS NOT NULL)"
    fixed = [("r.status", "status"), ("r.error", "error")]
    return _grouped([*where, failed], p, opts, by, measures, "calls DESC", fixed=fixed)


_BUILDERS = {"cost": _cost, "cache": _cache, "latency": _latency, "errors": _errors}


def _summary(where: list[str]) -> str:
    return f"""WITH {_rows_cte(where)}
SELECT count(*) AS calls,
       CAST(sum(input_tokens) AS BIGINT) AS input_tokens,
       CAST(sum(output_tokens) AS BIGINT) AS output_tokens,
       sum(cost_usd) AS cost_usd,
       count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced,
       count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL) AS errors,
       round(CAST(100 * count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL) AS DOUBLE PRECISION)
             / nullif(count(*), 0), 1) AS error_pct,
       count(*) FILTER (WHERE cache_status = 'HIT') AS cache_hits,
       round(CAST(100 * count(*) FILTER (WHERE cache_status = 'HIT') AS DOUBLE PRECISION)
             / nullif(count(*) FILTER (WHERE cache_status IN ('HIT', 'MISS')), 0), 1) AS cache_hit_pct,
       sum(cost_saved_usd) AS cost_saved_usd
FROM r"""


TOP_COLUMNS = (
    "request_id", "created_at", "provider", "model", "user_id", "session_id", "status",
    "input_tokens", "output_tokens", "latency_ms", "cost_usd",
)  # fmt: skip


def _top(where: list[str], p: _Params, opts: Options) -> str:
    limit = opts.limit or DEFAULT_LIMIT["top"]
    return (
        f"WITH {_rows_cte([*where, 'cost_usd IS NOT NULL'])}\nSELECT {', '.join(TOP_COLUMNS)}\nFROM r\n"
        f"ORDER BY cost_usd DESC, created_at DESC, request_id\nLIMIT {p(limit)}"
    )


LOG_COLUMNS = (
    "request_id", "created_at", "provider", "model", "endpoint", "status", "streamed", "cache_status",
    "input_tokens", "output_tokens", "cost_usd", "latency_ms", "ttft_ms", "user_id", "session_id",
    "session_path", "error", "rate_limited", "retries", "source",
)  # fmt: skip


def log_page(
    conn: duckdb.DuckDBPyConnection,
    opts: Options,
    before: tuple[datetime, str] | None = None,
    limit: int | None = 50,
    search: str | None = None,
    now: datetime | None = None,
) -> Report:
    """The requests log, newest first, one page: keyset-paged (the rows before `before`, a
    (created_at, request_id) of the last page's last row), never OFFSET, so page 1,000 costs what
    page 1 does. `search` matches the bodies, case-insensitively, within the filtered rows only
    (the dashboard asks for a time window with it: a body scan is the slow part)."""
    _set_timezone(conn, opts.tz)
    p = _Params(dialect.of(conn))
    where = _where(conn, opts, p, now or datetime.now(UTC))
    if before is not None:
        where.append(f"(created_at, request_id) < ({p(before[0])}, {p(before[1])})")
    if search:
        text = p(search.lower())
        where.append(f"(contains(lower(request_body), {text}) OR contains(lower(response_body), {text}))")
    cond = " AND ".join(where) or "true"
    cap = f" LIMIT {p(limit)}" if limit is not None else ""  # None: every matching row (an export)
    sql = (f"SELECT {', '.join(LOG_COLUMNS)} FROM requests WHERE {cond}\n"
           f"ORDER BY created_at DESC, request_id DESC{cap}")  # fmt: skip
    return Report("log", sql, p.values, "rows")


SESSION_COLUMNS = (
    "session_id", "session_name", "path", "depth", "calls", "cost_usd", "duration_s", "first_seen",
    "last_seen",
)  # fmt: skip


# How far back a fleet's log is searched for the most recently active sessions, stretch by stretch.
_RECENT = tuple(timedelta(hours=h) for h in (1, 8, 64, 512, 4096, 32768))


def _recent_start(
    conn: duckdb.DuckDBPyConnection, where: list[str], p: _Params, opts: Options
) -> datetime | None:
    """The start of the shortest recent stretch (to the range's end) in which `--limit` sessions
    were active, or None. The sessions shown are then all among those: any other session's last
    call came before the stretch, so before theirs. Postgres reads a stretch through the
    created_at index where grouping every call by session takes seconds on 10M."""
    limit = opts.limit or DEFAULT_LIMIT["sessions"]
    since, until, now = p.span or (None, None, datetime.now(UTC))
    for back in _RECENT:
        start = (until or now) - back
        if since is not None and start <= since:
            return None
        cond = " AND ".join([*where, "session_id IS NOT NULL", "created_at >= $_start"])
        found = f"SELECT DISTINCT session_id FROM requests WHERE {cond} LIMIT {limit}"
        sql = f"SELECT count(*) FROM ({found}) AS s"
        if query.fetch(conn, sql, {**p.values, "_start": start})[1][0][0] >= limit:
            return start
    return None


def _sessions(where: list[str], p: _Params, opts: Options, recent: datetime | None = None) -> str:
    """One row per session (path NULL, depth 0), each followed by its tree's nodes in tree order.

    A node is a path prefix (`/a`, `/a/b`) and counts its own calls and its descendants'. The
    sessions shown are the `--limit` most recently active (picked among those active since
    `recent`, when given); only their rows are read for the tree.
    """
    limit = opts.limit or DEFAULT_LIMIT["sessions"]
    end = "epoch_ms(created_at) + coalesce(latency_ms, 0)"
    d = p.sql
    picked = ""
    if recent is not None:
        picked = (
            f" WHERE session_id IN (SELECT session_id FROM r WHERE created_at >= {p(recent)}"
            f" GROUP BY session_id ORDER BY max(created_at) DESC, session_id LIMIT {p(limit)})"
        )
    return f"""WITH {_rows_cte([*where, "session_id IS NOT NULL"])},
s AS MATERIALIZED (
    SELECT session_id, {d.arg_max("session_name", "created_at")} AS session_name, count(*) AS calls,
           sum(cost_usd) AS cost_usd, min(created_at) AS first_seen, max(created_at) AS last_seen,
           max({end}) AS _end_ms
    FROM r{picked} GROUP BY session_id
    ORDER BY last_seen DESC, session_id LIMIT {p(limit)}
),
_p AS (
    SELECT session_id, {d.path_parts("session_path")} AS _parts, count(*) AS calls,
           sum(cost_usd) AS cost_usd, min(created_at) AS first_seen, max(created_at) AS last_seen,
           max({end}) AS _end_ms
    FROM r WHERE session_id IN (SELECT session_id FROM s) AND session_path IS NOT NULL
    GROUP BY session_id, session_path
),
_n AS (
    SELECT session_id, {d.prefix("_parts", "_i")} AS _node, CAST(sum(calls) AS BIGINT) AS calls,
           sum(cost_usd) AS cost_usd, min(first_seen) AS first_seen, max(last_seen) AS last_seen,
           max(_end_ms) AS _end_ms
    FROM (SELECT *, {d.each_index("_parts")} AS _i FROM _p) AS _x
    GROUP BY session_id, _node
),
_all AS (
    SELECT session_id, session_name, NULL AS path, 0 AS depth, calls, cost_usd, first_seen, last_seen,
           _end_ms, NULL AS _node
    FROM s
    UNION ALL
    SELECT session_id, NULL, '/' || array_to_string(_node, '/'), {d.length("_node")}, calls, cost_usd,
           first_seen, last_seen, _end_ms, _node
    FROM _n
)
SELECT a.session_id, a.session_name, a.path, a.depth, a.calls, a.cost_usd,
       (a._end_ms - epoch_ms(a.first_seen)) / 1000 AS duration_s, a.first_seen, a.last_seen
FROM _all AS a JOIN s USING (session_id)
ORDER BY s.last_seen DESC, a.session_id, a._node ASC NULLS FIRST"""


# -- presenting --


def render(report: Report, columns: list[str], rows: list[tuple], fmt: str) -> str:
    """Text for table / csv / json (Parquet is written by DuckDB: query.to_parquet)."""
    if report.shape == "one" and fmt == "table":
        values = rows[0] if rows else (None,) * len(columns)
        text = output.render(["metric", "value"], list(zip(columns, values, strict=True)))
        return text.rstrip("\n").rsplit("\n", 1)[0] + "\n"  # no "(10 rows)": it is one row
    if report.shape == "one" and fmt == "json":
        return output.to_json(dict(zip(columns, rows[0], strict=True)) if rows else {})
    if report.shape == "sessions" and fmt == "table":
        return _session_table(columns, rows)
    if report.shape == "sessions" and fmt == "json":
        return output.to_json(session_tree(columns, rows))
    return output.render(columns, rows, fmt)


def session_tree(columns: list[str], rows: list[tuple]) -> list[dict[str, Any]]:
    """The flat session rows as nested sessions, each with `tree`: nodes with `children`."""
    sessions: list[dict[str, Any]] = []
    nodes: dict[str, dict[str, Any]] = {}
    for row in rows:
        r = dict(zip(columns, row, strict=True))
        depth, path = r.pop("depth"), r.pop("path")
        if depth == 0:
            r["tree"] = []
            sessions.append(r)
            nodes = {}
            continue
        node = {
            "path": path,
            **{k: r[k] for k in ("calls", "cost_usd", "duration_s", "first_seen", "last_seen")},
        }
        node["children"] = []
        nodes[path] = node
        parent = nodes.get(path.rsplit("/", 1)[0])
        (parent["children"] if parent is not None else sessions[-1]["tree"]).append(node)
    return sessions


def _session_table(columns: list[str], rows: list[tuple]) -> str:
    i = {c: n for n, c in enumerate(columns)}
    shown = ["session", "name", "calls", "cost_usd", "duration_s", "first_seen", "last_seen"]
    lines = []
    for row in rows:
        label = row[i["session_id"]] if row[i["depth"]] == 0 else "  " * row[i["depth"]] + row[i["path"]]
        lines.append((label, row[i["session_name"]], *(row[i[c]] for c in shown[2:])))
    text = output.render(shown, lines, width=None)
    n = sum(1 for row in rows if row[i["depth"]] == 0)
    footer = text.rstrip("\n").rsplit("\n", 1)[0]
    return f"{footer}\n({n} session{'s' if n != 1 else ''})\n"
