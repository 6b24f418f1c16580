"""The Overview's cards, cost and errors over time from the 15-minute rollup (storage/rollup.py),
and on a fleet's Postgres log the `summary` and `cost` reports too.

Same columns, same values as the `summary`, `cost --by ...` and `errors --by BUCKET` reports over
the calls (tests compare them), read from ~100k rollup rows instead of 10M calls. The rollup holds
whole 15-minute buckets; the partial ones at the range's edges are read from the calls. Used only
where the rollup can answer: filters on time, provider and model, groupings by day, hour, model
and provider. Anything else, or a database without the rollup, returns None and the caller reads
the calls.

In a DuckDB file the writer keeps the rollup, and a reader first checks that its call count is the
calls' in the range (rows written by hand are not in it; the check takes ~10 ms on 10M calls). On
Postgres triggers keep it for every statement, and counting 10M calls there takes most of a second,
so the reader trusts it. The reports read it on Postgres only: over a DuckDB file the calls
themselves answer well under a second (README, Performance).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb

from llmtap.reports import catalog, dialect
from llmtap.storage import query, rollup_by
from llmtap.storage import rollup as table

STACKS = ("model", "provider")
BUCKETS = ("hour", "day")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Result = tuple[catalog.Report, list[str], list[tuple]]
Span = tuple[datetime | None, datetime | None, int | None, int]  # since, until, first whole bucket, last+1


@dataclass
class Overview:
    summary: Result
    cost: Result | None  # by (bucket, stack); None: a stack the rollup does not hold
    errors: Result  # failed calls by bucket, as `calls`
    from_rollup: bool = True


def usable(opts: catalog.Options, bucket: str) -> bool:
    """Whether the rollup can answer these filters with this bucket."""
    others = opts.user or opts.session or opts.properties or opts.rating or opts.scores
    return bucket in BUCKETS and not others


def overview(
    conn: duckdb.DuckDBPyConnection, opts: catalog.Options, now: datetime, bucket: str, stack: str
) -> Overview | None:
    """The three results (cost None for a stack other than STACKS), or None where the calls must be
    read instead."""
    if not usable(opts, bucket):
        return None
    catalog._set_timezone(conn, opts.tz)
    window = _window(conn, opts, now)
    if window is None:
        return None
    p, u, qbs = window
    by = [catalog.Dimension(bucket), catalog.Dimension(stack)]
    rows = f"u AS (\n{u}\n),\n{qbs}"
    return Overview(
        _fetch(conn, "summary", _summary(u, qbs), p.values),
        _fetch(conn, "cost", _cost(rows, by, ""), p.values) if stack in STACKS else None,
        _fetch(conn, "errors", _errors(rows, bucket), p.values),
    )


def report(
    conn: duckdb.DuckDBPyConnection,
    name: str,
    opts: catalog.Options,
    now: datetime,
    by: list[catalog.Dimension],
) -> catalog.Report | None:
    """`summary`, or `cost` grouped `by` day, hour, model and provider, from the rollup of a fleet's
    Postgres log; None where the calls must be read (the connection's TimeZone is set already)."""
    if name not in ("summary", "cost") or not dialect.of(conn).postgres:
        return None
    if not all(d.kind in (*BUCKETS, *STACKS) for d in by) or not usable(opts, "day") or opts.sample_pct:
        return None
    window = _window(conn, opts, now)
    if window is None:
        return None
    p, u, qbs = window
    if name == "summary":
        return catalog.Report(name, _summary(u, qbs), p.values, "one")
    limit = f"\nLIMIT {p(opts.limit)}" if opts.limit else ""
    return catalog.Report(name, _cost(f"u AS (\n{u}\n),\n{qbs}", by, limit), p.values, "rows")


def _window(
    conn: duckdb.DuckDBPyConnection, opts: catalog.Options, now: datetime
) -> tuple[catalog._Params, str, str] | None:
    """The parameters, the SELECT of the range's `u` rows and the `_qbs` CTE of its buckets, or
    None when the rollup cannot answer it."""
    span = whole_buckets(conn, opts, now, table.BUCKET_US)
    if span is None:
        return None
    since, until, lo, hi = span
    if not _trusted(conn, opts, lo, hi):
        return None
    p = catalog._Params()
    # `_qbs`: the buckets found without reading `u`, which is then read once (where a second reader
    # made Postgres store it first: ~40 % of a 1M-call Overview query).
    qbs = catalog.bucket_range(p, since, until, now, "qb", "SELECT DISTINCT qb FROM u")
    return p, _rows(opts, p, span), f"_qbs AS ({qbs})"


def daily_span(
    conn: duckdb.DuckDBPyConnection,
    opts: catalog.Options,
    now: datetime,
    by: list[catalog.Dimension],
    kinds: tuple[str, ...],
    name: str,
) -> Span | None:
    """For a daily rollup `name` of a fleet's Postgres log: the range's span in UTC days, or None
    where its reader cannot answer (another engine, a sample, a grouping not among `kinds`, a filter
    but time, provider and model, no whole day, a log from before the rollup)."""
    if not dialect.of(conn).postgres or opts.sample_pct:
        return None
    if not all(d.kind in kinds for d in by) or not usable(opts, "day"):
        return None
    span = whole_buckets(conn, opts, now, rollup_by.DAY_US)
    return span if span is not None and query.has_table(conn, name) else None


def whole_buckets(
    conn: duckdb.DuckDBPyConnection, opts: catalog.Options, now: datetime, size_us: int
) -> Span | None:
    """The range's since and until, its first whole bucket of `size_us` (None: from the first
    call) and the first bucket not whole (or not yet over); None when no bucket is whole."""
    since = catalog._resolve(conn, opts.since, now, end=False) if opts.since else None
    until = catalog._resolve(conn, opts.until, now, end=True) if opts.until else None
    lo = -(-_us(since) // size_us) if since else None
    hi = _us(until or now) // size_us
    if lo is not None and lo >= hi:
        return None
    return since, until, lo, hi


def _fetch(conn: duckdb.DuckDBPyConnection, name: str, sql: str, params: dict) -> Result:
    columns, rows = query.fetch(conn, sql, params)  # every statement holds all of `u`'s parameters
    return catalog.Report(name, sql, params, "one" if name == "summary" else "rows"), columns, rows


def _us(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def _at(qb: int, size_us: int = table.BUCKET_US) -> datetime:
    return _EPOCH + timedelta(microseconds=qb * size_us)


def _filters(opts: catalog.Options, p: catalog._Params) -> list[str]:
    return [
        f"{column} IN ({', '.join(p(v) for v in values)})"
        for column, values in (("provider", opts.provider), ("model", opts.model))
        if values
    ]


def _trusted(conn: duckdb.DuckDBPyConnection, opts: catalog.Options, lo: int | None, hi: int) -> bool:
    """Postgres: the rollup exists (its triggers keep it). DuckDB: the rollup's calls in its whole
    buckets equal the calls logged there (~10 ms on 10M)."""
    if dialect.of(conn).postgres:
        return query.has_table(conn, table.TABLE)
    p = catalog._Params()
    qb = [f"qb < {p(hi)}", *([f"qb >= {p(lo)}"] if lo is not None else []), *_filters(opts, p)]
    at = [f"created_at < {p(_at(hi))}", *([f"created_at >= {p(_at(lo))}"] if lo is not None else [])]
    at += _filters(opts, p)
    sql = (
        f"SELECT (SELECT coalesce(sum(calls), 0) FROM {table.TABLE} WHERE {' AND '.join(qb)}),"
        f" (SELECT count(*) FROM requests WHERE {' AND '.join(at)})"
    )
    try:
        row = conn.execute(sql, p.values).fetchone()
    except duckdb.CatalogException:  # a file from before migration m007, opened read-only
        return False
    return row is not None and row[0] == row[1]


def _rows(opts: catalog.Options, p: catalog._Params, span: Span) -> str:
    """`u`'s SELECT: rollup rows for the whole buckets, and the same rows made from the calls at the
    edges."""
    _, _, lo, hi = span
    filters = _filters(opts, p)
    whole = [*([f"qb >= {p(lo)}"] if lo is not None else []), f"qb < {p(hi)}", *filters]
    parts = [f"SELECT {', '.join(table.NAMES)} FROM {table.TABLE} WHERE {' AND '.join(whole)}"]
    for edge in edges(p, span, table.BUCKET_US):
        parts.append(table.aggregate_sql(" AND ".join([*edge, *filters])))
    return "\nUNION ALL\n".join(parts)


def edges(p: catalog._Params, span: Span, size_us: int) -> list[list[str]]:
    """The conditions on created_at of a range's partial buckets of `size_us` (whole_buckets'
    span), which a rollup does not hold: the one before its whole buckets, with a --since, and the
    one after them, to --until or open."""
    since, until, lo, hi = span
    after = [f"created_at >= {p(_at(hi, size_us))}", *([f"created_at < {p(until)}"] if until else [])]
    if since is None or lo is None:
        return [after]
    return [[f"created_at >= {p(since)}", f"created_at < {p(_at(lo, size_us))}"], after]


def _summary(u: str, qbs: str) -> str:
    """The `summary` report's columns and types (catalog._summary) from the rollup's sums. It reads
    `u` once: NOT MATERIALIZED, or Postgres would store it first for `_qbs` (unread here, but it
    holds parameters the statement must use), 0.36 s instead of 0.14 s at 10M calls."""
    return f"""WITH u AS NOT MATERIALIZED (
{u}
),
{qbs}
SELECT CAST(coalesce(sum(calls), 0) AS BIGINT) AS calls,
       CAST(sum(input_tokens) AS BIGINT) AS input_tokens,
       CAST(sum(output_tokens) AS BIGINT) AS output_tokens,
       sum(cost_usd) AS cost_usd,
       CAST(coalesce(sum(unpriced), 0) AS BIGINT) AS unpriced,
       CAST(coalesce(sum(errors), 0) AS BIGINT) AS errors,
       round(CAST(100 * sum(errors) AS DOUBLE PRECISION) / nullif(sum(calls), 0), 1) AS error_pct,
       CAST(coalesce(sum(cache_hits), 0) AS BIGINT) AS cache_hits,
       round(CAST(100 * sum(cache_hits) AS DOUBLE PRECISION) / nullif(sum(cache_lookups), 0), 1)
           AS cache_hit_pct,
       sum(cost_saved_usd) AS cost_saved_usd
FROM u"""


def _buckets() -> str:
    """Each bucket's local day and hour (the session's TimeZone), as the reports find them."""
    seconds = table.BUCKET_US // 1_000_000
    return (
        f"_tb AS (SELECT qb, CAST(date_trunc('day', to_timestamp(qb * {seconds})) AS DATE) AS day,"
        f" date_trunc('hour', to_timestamp(qb * {seconds})) AS hour FROM _qbs AS _q)"
    )


def _cost(rows: str, by: list[catalog.Dimension], limit: str) -> str:
    """`cost --by ...` (catalog._cost's columns and order) for groupings among BUCKETS and STACKS."""
    keys = [f"_tb.{d.kind}" if d.kind in BUCKETS else f"u.{d.kind}" for d in by]
    times = [d.kind for d in by if d.kind in BUCKETS]
    order = [f"{t} ASC" for t in times] + ["cost_usd DESC NULLS LAST", "calls DESC"]
    order += [f"{d.kind} ASC NULLS LAST" for d in by if d.kind not in BUCKETS]
    return f"""WITH {rows},
{_buckets()}
SELECT {", ".join(f"{k} AS {d.kind}" for k, d in zip(keys, by, strict=True))},
       CAST(sum(calls) AS BIGINT) AS calls, CAST(sum(input_tokens) AS BIGINT) AS input_tokens,
       CAST(sum(output_tokens) AS BIGINT) AS output_tokens, sum(cost_usd) AS cost_usd,
       CAST(sum(unpriced) AS BIGINT) AS unpriced, sum(cost_saved_usd) AS cost_saved_usd
FROM u JOIN _tb USING (qb)
GROUP BY {", ".join(str(i + 1) for i in range(len(by)))}
ORDER BY {", ".join(order)}{limit}"""


def _errors(rows: str, bucket: str) -> str:
    return f"""WITH {rows},
{_buckets()}
SELECT _tb.{bucket} AS {bucket}, CAST(sum(errors) AS BIGINT) AS calls
FROM u JOIN _tb USING (qb)
GROUP BY 1
HAVING sum(errors) > 0
ORDER BY 1"""
