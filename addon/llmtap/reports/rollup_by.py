"""`cost` and `cache` grouped by one user, session, property, model or provider dimension, and
`summary` filtered on one, from the daily rollup by dimension of a fleet's Postgres log
(storage/rollup_by.py); and grouped by rating or score, from the rated calls read by id and the
rollup's totals.

Same columns, same values as the reports over the calls (test_reports_postgres compares them):
whole UTC days come from the rollup, the partial days at the range's edges from the calls. Only
the range filters may be added (a --user filter with --by user too); anything else returns None
and the caller reads the calls. The grouping's name and the orderings are catalog's.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from llmtap.reports import catalog, dialect
from llmtap.reports import rollup as fifteen
from llmtap.storage import annotated, query
from llmtap.storage import rollup_by as table

KINDS = ("user", "session", "property", "model", "provider")
_FILTERS = ("user", "session", "provider", "model")  # Options fields, named as the dimensions


def report(
    conn: duckdb.DuckDBPyConnection,
    name: str,
    opts: catalog.Options,
    now: datetime,
    by: list[catalog.Dimension],
) -> catalog.Report | None:
    """The report from the rollup, or None where the calls must be read (TimeZone set already)."""
    if name not in ("summary", "cost", "cache") or not dialect.of(conn).postgres or opts.sample_pct:
        return None
    rated = _rated(name, opts, by)
    asked = ("provider", None) if rated else _asked(name, opts, by)
    if asked is None:
        return None
    dim, values = asked
    span = fifteen.whole_buckets(conn, opts, now, table.DAY_US)
    if span is None or not query.has_table(conn, table.TABLE):
        return None
    p = catalog._Params(dialect.POSTGRES)
    need_rest = name != "summary" and dim.startswith(table.PROPERTY)  # the calls without the property
    rows = _rows(p, span, (dim, "provider") if need_rest else (dim,), values)
    if rated:
        groups = _rated_groups(p, rated, span, query.has_table(conn, annotated.TABLE))
    else:
        groups = _groups(p, dim, values, need_rest)
    if name == "summary":
        return catalog.Report(name, f"WITH {rows},\n{groups}\n{_SUMMARY}", p.values, "one")
    label = catalog._grouping(by, catalog._Params(), _TAKEN[name]).columns[0][1]
    limit = f"\nLIMIT {p(opts.limit)}" if opts.limit else ""
    select, order = _COST if name == "cost" else _CACHE
    key = query.quote_ident(label)
    sql = (
        f"WITH {rows},\n{groups},\n_o AS (SELECT value AS {key}, {select})\n"
        f"SELECT * FROM _o\nORDER BY {order}, {key} ASC NULLS LAST{limit}"
    )
    return catalog.Report(name, sql, p.values, "rows")


def _rated(name: str, opts: catalog.Options, by: list[catalog.Dimension]) -> catalog.Dimension | None:
    """--by rating or score:NAME, with no filter but the range."""
    if name == "summary" or len(by) != 1 or by[0].kind not in ("rating", "score"):
        return None
    others = opts.provider or opts.model or opts.user or opts.session or opts.properties
    return None if others or opts.rating is not None or opts.scores else by[0]


def _asked(
    name: str, opts: catalog.Options, by: list[catalog.Dimension]
) -> tuple[str, list[str] | None] | None:
    """The one dimension asked about (grouped by, or filtered on) and the values filtered on."""
    if opts.rating is not None or opts.scores:
        return None
    filters = [(kind, getattr(opts, kind)) for kind in _FILTERS if getattr(opts, kind)]
    filters += [(table.PROPERTY + key, [value]) for key, value in opts.properties]
    if len(filters) > 1:
        return None
    if name == "summary":
        return filters[0] if filters else None
    if len(by) != 1 or by[0].kind not in KINDS:
        return None
    dim = table.PROPERTY + by[0].arg if by[0].kind == "property" else by[0].kind
    if filters and filters[0][0] != dim:
        return None
    return dim, filters[0][1] if filters else None


def _rows(
    p: catalog._Params,
    span: fifteen.Span,
    dims: tuple[str, ...],
    values: list[str] | None,
) -> str:
    """`u`: the rollup's rows of `dims` for the whole days, and the same rows from the calls at
    the range's edges."""
    _, _, lo, hi = span
    chosen = f"value IN ({', '.join(p(v) for v in values)})" if values else None
    named = [p(d) for d in dims]
    whole = [f"md5(dim) IN ({', '.join(f'md5({n})' for n in named)})", f"dim IN ({', '.join(named)})"]
    whole.append(f"day < {p(hi)}")  # md5(dim): the key's first column (storage/rollup_by.py)
    whole += [*([f"day >= {p(lo)}"] if lo is not None else []), *([chosen] if chosen else [])]
    names = ", ".join(table.NAMES)
    parts = [f"SELECT {names} FROM {table.TABLE} WHERE {' AND '.join(whole)}"]
    columns = ", ".join((*table.NAMES[:3], "proxy_id", *table.NAMES[3:]))
    for edge in fifteen.edges(p, span, table.DAY_US):
        calls = table.rows_sql("requests", " AND ".join([*edge, *(["d." + chosen] if chosen else [])]), dims)
        parts.append(f"SELECT {names} FROM ({calls}) AS e({columns})")
    return "u AS (\n" + "\nUNION ALL\n".join(parts) + "\n)"


def _groups(p: catalog._Params, dim: str, values: list[str] | None, need_rest: bool) -> str:
    """`_v`: one row per value of `dim` with its sums; with `need_rest`, the calls without the
    property as the row whose value is NULL: the totals (one provider row per call) less the rest."""
    measures = [m[0] for m in table.MEASURES]
    sums = ", ".join(f"sum({m}) AS {m}" for m in measures)
    known = " AND value IS NOT NULL" if need_rest else ""
    sql = f"SELECT value, {sums} FROM u WHERE dim = {p(dim)}{known} GROUP BY value"
    if need_rest:
        less = ", ".join(f"sum(CASE WHEN dim = 'provider' THEN {m} ELSE -{m} END) AS {m}" for m in measures)
        sql += (
            f"\nUNION ALL\nSELECT NULL, {less} FROM u WHERE dim = 'provider' OR (dim = {p(dim)}{known})"
            "\nHAVING sum(CASE WHEN dim = 'provider' THEN calls ELSE -calls END) > 0"
        )
    return f"_v AS (\n{sql}\n)"


def _rated_groups(p: catalog._Params, by: catalog.Dimension, span: fifteen.Span, copied: bool) -> str:
    """`_v` for --by rating or score:NAME: the rated (or scored) calls' sums, a few percent of the
    calls, and the others' as the row whose value is NULL: the totals (`u`'s provider rows, one per
    call) less the rated ones. `copied`: their figures are read from annotated_calls, joined whole
    (storage/annotated.py); else from the calls, through their ids."""
    since, until, _, _ = span
    within = [
        *([f"c.created_at >= {p(since)}"] if since else []),
        *([f"c.created_at < {p(until)}"] if until else []),
    ]
    if by.kind == "rating":
        key, source = "CASE f.rating WHEN true THEN 'up' WHEN false THEN 'down' END", "latest_feedback AS f"
    else:
        key, source = (
            "f.value",
            f"(SELECT request_id, value FROM latest_scores WHERE name = {p(by.arg)}) AS f",
        )
    names = [m[0] for m in table.MEASURES]
    measures = ", ".join(f"CAST({sql} AS {kind}) AS {name}" for name, sql, kind in table.MEASURES)
    call = " AND ".join(["c.request_id = f.request_id", *within])
    if copied:
        calls = f"{source} JOIN {annotated.TABLE} AS c ON {call}"
    else:  # one index probe and one heap page per rated call
        calls = f"{source} CROSS JOIN LATERAL (SELECT * FROM requests AS c WHERE {call}) AS r"
    return f"""_r AS (
SELECT {key} AS value, {measures}
FROM {calls}
GROUP BY 1
),
_v AS (
SELECT * FROM _r
UNION ALL
SELECT NULL, {", ".join(f"sum({n})" for n in names)}
FROM (SELECT {", ".join(names)} FROM u WHERE dim = 'provider'
      UNION ALL SELECT {", ".join(f"-{n}" for n in names)} FROM _r) AS d
HAVING sum(calls) > 0
)"""


# The reports' columns (catalog.COST_MEASURES, catalog._cache, catalog._summary) from the sums;
# a sum none of whose values is known is NULL, as SQL's sum over the calls gives it.
_COST = (
    "CAST(calls AS BIGINT) AS calls,"
    " CASE WHEN input_known > 0 THEN CAST(input_tokens AS BIGINT) END AS input_tokens,"
    " CASE WHEN output_known > 0 THEN CAST(output_tokens AS BIGINT) END AS output_tokens,"
    " CASE WHEN calls > unpriced THEN cost_usd END AS cost_usd, CAST(unpriced AS BIGINT) AS unpriced,"
    " CASE WHEN saved_known > 0 THEN cost_saved_usd END AS cost_saved_usd FROM _v",
    "cost_usd DESC NULLS LAST, calls DESC",
)
_CACHE = (
    "CAST(cache_hits AS BIGINT) AS hits, CAST(cache_misses AS BIGINT) AS misses,"
    " round(CAST(100 * cache_hits AS DOUBLE PRECISION) / (cache_hits + cache_misses), 1) AS hit_pct,"
    " CASE WHEN cache_saved_known > 0 THEN cache_saved_usd END AS cost_saved_usd,"
    " CASE WHEN cache_saved_ms_known > 0 THEN cache_saved_ms END AS latency_saved_ms"
    " FROM _v WHERE cache_hits + cache_misses > 0",
    "hits DESC, cost_saved_usd DESC NULLS LAST",
)
_TAKEN = {
    "cost": [n for _, n in catalog.COST_MEASURES],
    "cache": ["hits", "misses", "hit_pct", "cost_saved_usd", "latency_saved_ms"],
}
_SUMMARY = """SELECT CAST(coalesce(sum(calls), 0) AS BIGINT) AS calls,
       CASE WHEN sum(input_known) > 0 THEN CAST(sum(input_tokens) AS BIGINT) END AS input_tokens,
       CASE WHEN sum(output_known) > 0 THEN CAST(sum(output_tokens) AS BIGINT) END AS output_tokens,
       CASE WHEN sum(calls) > sum(unpriced) THEN sum(cost_usd) END AS cost_usd,
       CAST(coalesce(sum(unpriced), 0) AS BIGINT) AS unpriced,
       CAST(coalesce(sum(errors), 0) AS BIGINT) AS errors,
       round(CAST(100 * sum(errors) AS DOUBLE PRECISION) / nullif(sum(calls), 0), 1) AS error_pct,
       CAST(coalesce(sum(cache_hits), 0) AS BIGINT) AS cache_hits,
       round(CAST(100 * sum(cache_hits) AS DOUBLE PRECISION)
             / nullif(sum(cache_hits) + sum(cache_misses), 0), 1) AS cache_hit_pct,
       CASE WHEN sum(saved_known) > 0 THEN sum(cost_saved_usd) END AS cost_saved_usd
FROM _v"""
