"""The `latency` report on a fleet's Postgres log, its percentiles found by rank from the latency
buckets (storage/rollup_latency.py): grouped by model, provider and UTC day, filtered on time,
provider and model; None otherwise (the caller reads the calls).

Exact, not estimated: the same values as `percentile_cont` over the calls (test_reports_postgres
compares them). For each group and percentile, the buckets' counts give the ranks' buckets and how
many values come before them: whole UTC days from the table, the partial days at the range's edges
from the calls. Only those buckets' values are then read, through the rank indexes, and the
percentile is interpolated between its two ranks as Postgres does (percentile_cont_final_common:
lo + (hi - lo) * (h - floor(h)), h = q * (n - 1)). A pair whose names are too long for the index,
or a bucket whose values are not as many as its count (a month's partition dropped by hand: the
triggers did not see it), makes the report read the calls instead.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import duckdb

from llmtap.reports import catalog, dialect
from llmtap.reports import rollup as fifteen
from llmtap.storage import query, rollup_by
from llmtap.storage import rollup_latency as table

KINDS = ("model", "provider", "day")
_FIRST, _LAST = datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC)  # open ends
_TYPES = {"model": "text", "provider": "text", "day": "date"}
Pair = tuple[str | None, str | None]  # (provider, model)
_Step = tuple[int, float, list[tuple[int, int]]]  # metric, h = q * (n - 1), (bucket, offset) of its ranks


@dataclass
class _Group:
    """One row of the report: its calls, and per metric its values' count by bucket and pair."""

    start: datetime
    end: datetime
    calls: int = 0
    buckets: tuple[dict[int, dict[Pair, int]], ...] = field(default_factory=lambda: ({}, {}))


def report(
    conn: duckdb.DuckDBPyConnection,
    name: str,
    opts: catalog.Options,
    now: datetime,
    by: list[catalog.Dimension],
) -> catalog.Report | None:
    """The report, or None where the calls must be read (TimeZone set already)."""
    if name != "latency" or (any(d.kind == "day" for d in by) and opts.tz != "UTC"):  # UTC days here
        return None
    span = fifteen.daily_span(conn, opts, now, by, KINDS, table.TABLE)
    if span is None:
        return None
    kinds = [d.kind for d in by]
    groups = _groups(conn, opts, span, kinds)
    found = _percentiles(conn, groups)
    if found is None:
        return None
    p = catalog._Params(dialect.POSTGRES)
    return catalog.Report(name, _result(p, opts, by, groups, found), p.values, "rows")


def _groups(
    conn: duckdb.DuckDBPyConnection, opts: catalog.Options, span: fifteen.Span, kinds: list[str]
) -> dict[tuple, _Group]:
    """The report's groups with their counts: whole days from the table, edges from the calls."""
    since, until, lo, hi = span
    p = catalog._Params(dialect.POSTGRES)
    filters = fifteen._filters(opts, p)
    whole = [f"day < {p(hi)}", *([f"day >= {p(lo)}"] if lo is not None else []), *filters]
    names = "day, provider, model, metric, bucket, calls"
    parts = [f"SELECT {names} FROM {table.TABLE} WHERE {' AND '.join(whole)}"]
    for edge in fifteen.edges(p, span, rollup_by.DAY_US):
        calls = table.rows_sql("requests", " AND ".join([*edge, *filters]))
        parts.append(
            f"SELECT {names} FROM ({calls}) AS e(day, provider, model, proxy_id, metric, bucket, calls)"
        )
    keys = ("day, " if "day" in kinds else "") + "provider, model, metric, bucket"
    sql = f"SELECT {keys}, CAST(sum(calls) AS BIGINT) FROM ({' UNION ALL '.join(parts)}) AS u GROUP BY {keys}"
    _, rows = query.fetch(conn, sql, p.values)
    start, end = since or _FIRST, until or _LAST
    width = 6 if "day" in kinds else 5
    picks = [{"day": 0, "provider": width - 5, "model": width - 4}[k] for k in kinds]
    groups: dict[tuple, _Group] = {}  # keyed by the day's number: a date is made once per group
    for row in rows:
        provider, model, metric, bucket, n = row[width - 5 :]
        key = tuple([row[i] for i in picks])
        g = groups.get(key)
        if g is None:
            g = groups[key] = _Group(start, end)
            if "day" in kinds:
                midnight = datetime.combine(_day(row[0]), datetime.min.time(), UTC)
                g.start, g.end = max(start, midnight), min(end, midnight + timedelta(days=1))
        if metric == 0:
            g.calls += n
        if bucket is not None:
            pairs = g.buckets[metric].setdefault(bucket, {})
            pairs[(provider, model)] = pairs.get((provider, model), 0) + n
    if "day" not in kinds:
        return groups
    at = kinds.index("day")
    return {(*key[:at], _day(key[at]), *key[at + 1 :]): g for key, g in groups.items()}


def _percentiles(
    conn: duckdb.DuckDBPyConnection, groups: dict[tuple, _Group]
) -> dict[tuple, list[float | None]] | None:
    """Each group's percentiles (catalog.LATENCY_QUANTILES of each metric, in catalog's column
    order), or None when a bucket's values do not match its count."""
    wanted: dict[tuple, None] = {}  # (group, metric, bucket), in order
    plans: dict[tuple, list[_Step | None]] = {}  # per group, per column: None when no value
    for key, g in groups.items():
        plans[key] = []
        for metric, buckets in enumerate(g.buckets):
            ordered = sorted(buckets.items())
            n = sum(sum(pairs.values()) for _, pairs in ordered)
            for q in catalog.LATENCY_QUANTILES:
                h = q * (n - 1)
                step = (
                    (metric, h, [_locate(ordered, r) for r in (math.floor(h), math.ceil(h))]) if n else None
                )
                wanted.update({(key, metric, bucket): None for bucket, _ in step[2]} if step else {})
                plans[key].append(step)
    values = _values(conn, groups, list(wanted))
    if values is None:
        return None
    return {key: [_interpolate(values, key, step) for step in plan] for key, plan in plans.items()}


def _interpolate(values: dict[tuple, list[float]], key: tuple, step: _Step | None) -> float | None:
    """percentile_cont's value from its two ranks' (percentile_cont_final_common)."""
    if step is None:
        return None
    metric, h, ranks = step
    lo, hi = (values[(key, metric, bucket)][offset] for bucket, offset in ranks)
    return lo if math.floor(h) == math.ceil(h) else lo + (hi - lo) * (h - math.floor(h))


def _locate(ordered: list[tuple[int, dict[Pair, int]]], rank: int) -> tuple[int, int]:
    """The bucket holding the value of 0-based `rank`, and the rank's offset within it."""
    before = 0
    for bucket, pairs in ordered:
        n = sum(pairs.values())
        if rank < before + n:
            return bucket, rank - before
        before += n
    raise AssertionError(f"rank {rank} past {before} values")


def _values(
    conn: duckdb.DuckDBPyConnection, groups: dict[tuple, _Group], wanted: list[tuple]
) -> dict[tuple, list[float]] | None:
    """The sorted values of each wanted (group, metric, bucket), read through the rank indexes in one
    statement per metric; None when a pair is not in the index (names too long) or a bucket's
    values are not as many as its count."""
    out: dict[tuple, list[float]] = {}
    for metric in range(len(table.METRICS)):
        asked = [w for w in wanted if w[1] == metric]
        if not asked:
            continue
        lookups: dict[tuple[bool, bool], list[tuple]] = defaultdict(list)  # by (provider, model) NULL
        for i, (key, _, bucket) in enumerate(asked):
            g = groups[key]
            for provider, model in g.buckets[metric][bucket]:
                if len((provider or "").encode()) + len((model or "").encode()) >= table.SHORT_BYTES:
                    return None
                lookups[(provider is None, model is None)].append(
                    (i, provider, model, bucket, g.start, g.end)
                )
        p = catalog._Params(dialect.POSTGRES)
        sql = " UNION ALL ".join(_lookup(p, metric, nulls, rows) for nulls, rows in lookups.items())
        # One sorted array per lookup: ~40 % faster here than the values as rows, sorted.
        _, rows = query.fetch(
            conn, f"SELECT i, array_agg(x ORDER BY x) FROM ({sql}) AS v(i, x) GROUP BY i", p.values
        )
        found: list[list[float]] = [[] for _ in asked]
        for i, xs in rows:
            found[i] = xs
        for i, (key, _, bucket) in enumerate(asked):
            if len(found[i]) != sum(groups[key].buckets[metric][bucket].values()):
                return None
            out[asked[i]] = found[i]
    return out


def _lookup(p: catalog._Params, metric: int, nulls: tuple[bool, bool], rows: list[tuple]) -> str:
    """The values of the lookups `rows` (i, provider, model, bucket, from, to) whose provider and
    model are NULL or not as `nulls` says: an index-only scan each (the query names only the
    index's columns, and its predicate word for word)."""
    column = table.METRICS[metric]
    kinds = ("integer", "text", "text", "integer", "timestamptz", "timestamptz")
    arrays = ", ".join(f"CAST({p([r[k] for r in rows])} AS {kind}[])" for k, kind in enumerate(kinds))
    match = [
        f"r.{c} IS NULL" if null else f"r.{c} = t.{c}"
        for c, null in zip(("provider", "model"), nulls, strict=True)
    ]
    return f"""SELECT t.i, v.x
FROM unnest({arrays}) AS t(i, provider, model, bucket, lo, hi)
CROSS JOIN LATERAL (
    SELECT r.{column} AS x FROM requests AS r
    WHERE {" AND ".join(match)} AND llmtap_rank_bucket(r.{column}) = t.bucket
      AND r.created_at >= t.lo AND r.created_at < t.hi
      AND r.{column} IS NOT NULL AND {table.OWN} AND {table.SHORT}
) AS v"""


def _result(
    p: catalog._Params,
    opts: catalog.Options,
    by: list[catalog.Dimension],
    groups: dict[tuple, _Group],
    found: dict[tuple, list[float | None]],
) -> str:
    """The report's rows as catalog._latency shapes and orders them, from the values found."""
    names = [n for _, n in catalog._grouping(by, catalog._Params(), catalog.LATENCY_COLUMNS).columns]
    shown = catalog.LATENCY_COLUMNS[1:]
    kinds = [_TYPES[d.kind] for d in by] + ["bigint"] + ["double precision"] * len(shown)
    rows = [[*key, g.calls, *found[key]] for key, g in groups.items() if g.calls]
    lines = [
        "(" + ", ".join(f"CAST({p(v)} AS {k})" for v, k in zip(row, kinds, strict=True)) + ")"
        for row in rows or [[None] * len(kinds)]
    ]
    inner = [query.quote_ident(n) for n in names] + ["calls"] + [f"_{n}" for n in shown]
    select = [query.quote_ident(n) for n in names] + ["calls"]
    select += [f"round(_{n}, 1) AS {n}" for n in shown]
    times = [query.quote_ident(n) for n, d in zip(names, by, strict=True) if d.kind == "day"]
    order = [f"{t} ASC" for t in times] + ["calls DESC"]
    order += [
        f"{query.quote_ident(n)} ASC NULLS LAST" for n, d in zip(names, by, strict=True) if d.kind != "day"
    ]
    limit = f"\nLIMIT {p(opts.limit)}" if opts.limit else ""
    return (
        "-- exact percentiles by rank: storage/rollup_latency.py, reports/rollup_latency.py\n"
        f"SELECT {', '.join(select)}\nFROM (VALUES\n    "
        + ",\n    ".join(lines)
        + f"\n) AS _v({', '.join(inner)})"
        + ("" if rows else "\nWHERE false")
        + f"\nORDER BY {', '.join(order)}{limit}"
    )


def _day(number: int) -> date:
    return date(1970, 1, 1) + timedelta(days=number)
