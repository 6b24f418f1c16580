"""The `errors` report on a fleet's Postgres log from the daily rollup of failed calls
(storage/rollup_errors.py), grouped by status and error, and by model or provider when asked,
filtered on time, provider and model; None otherwise (the caller reads the calls).

Same columns, order and values as catalog._errors over the calls (test_reports_postgres compares
them): whole UTC days come from the rollup, the partial days at the range's edges from the calls.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from llmtap.reports import catalog, dialect
from llmtap.reports import rollup as fifteen
from llmtap.storage import query, rollup_by
from llmtap.storage import rollup_errors as table

KINDS = ("model", "provider")


def report(
    conn: duckdb.DuckDBPyConnection,
    name: str,
    opts: catalog.Options,
    now: datetime,
    by: list[catalog.Dimension],
) -> catalog.Report | None:
    """The report from the rollup, or None where the calls must be read (TimeZone set already)."""
    span = fifteen.daily_span(conn, opts, now, by, KINDS, table.TABLE) if name == "errors" else None
    if span is None:
        return None
    p = catalog._Params(dialect.POSTGRES)
    keys = [d.kind for d in by] + ["status", "error"]
    shown = ", ".join(query.quote_ident(k) for k in keys)
    limit = f"\nLIMIT {p(opts.limit)}" if opts.limit else ""
    sql = f"""WITH {_rows(p, opts, span)}
SELECT {shown}, CAST(sum(calls) AS BIGINT) AS calls, CAST(sum(rate_limited) AS BIGINT) AS rate_limited,
       CAST(sum(retries) AS BIGINT) AS retries, max(last_seen) AS last_seen
FROM u
GROUP BY {shown}
ORDER BY calls DESC, {", ".join(f"{query.quote_ident(k)} ASC NULLS LAST" for k in keys)}{limit}"""
    return catalog.Report(name, sql, p.values, "rows")


def _rows(p: catalog._Params, opts: catalog.Options, span: fifteen.Span) -> str:
    """`u`: the rollup's rows for the whole days, and the same rows from the calls at the edges."""
    _, _, lo, hi = span
    filters = fifteen._filters(opts, p)
    whole = [f"day < {p(hi)}", *([f"day >= {p(lo)}"] if lo is not None else []), *filters]
    names = ", ".join(table.NAMES)
    parts = [f"SELECT {names} FROM {table.TABLE} WHERE {' AND '.join(whole)}"]
    for edge in fifteen.edges(p, span, rollup_by.DAY_US):
        parts.append(
            f"SELECT * FROM ({table.rows_sql('requests', ' AND '.join([*edge, *filters]))}) AS e({names})"
        )
    return "u AS (\n" + "\nUNION ALL\n".join(parts) + "\n)"
