"""`requests_by_day`: per UTC day, the calls' sums for each value of one dimension at a time: the
user, the session, each property, the model and the provider (a fleet's Postgres log only).

The 15-minute rollup (rollup.py) answers the reports grouped by time, model and provider. `cost
--by user`, `--by session`, `--by property:NAME`, `summary --property NAME=VALUE` and `cache` would
read every call instead: over 10M calls in Postgres that is 1.5-2.5 s (~0.25 s per million rows
here, README Performance). Here a call is counted once per dimension, in its UTC day: ~250k rows
for 90 days of 10M calls over 2,000 users and 50,000 sessions. Whole days come from here and the
partial days at a range's edges from the calls (reports/rollup_by.py).

A call without a property has no row for it: the reader finds the calls without it as the day's
totals (the provider rows, one per call) less the rows of those with it. So that such a difference
is exact, every sum is stored with the count of the values it adds (a sum with no value is NULL in
the reports, as SQL's `sum` gives it), and sums are kept NOT NULL (0 when none is known).

Triggers keep it as they keep the 15-minute rollup (rollup.statement_triggers): every statement
on `requests`, in its own transaction. Migration p007 creates it and builds it from the calls.
"""

from __future__ import annotations

from llmtap.storage import rollup

TABLE = "requests_by_day"
DAY_US = 86_400_000_000
# The dimensions every call has a row for (the value may be NULL): name -> column.
COLUMNS = {"provider": "provider", "model": "model", "user": "user_id", "session": "session_id"}
PROPERTY = "property:"  # + the property's name: one row per property a call has
LOOKUP = "cache_status IN ('HIT', 'MISS')"
# (name, SQL over a group of calls, type); a `_known` count follows each sum that can be NULL.
MEASURES: tuple[tuple[str, str, str], ...] = (
    ("calls", "count(*)", "bigint"),
    ("input_tokens", "coalesce(sum(input_tokens), 0)", "bigint"),
    ("input_known", "count(input_tokens)", "bigint"),
    ("output_tokens", "coalesce(sum(output_tokens), 0)", "bigint"),
    ("output_known", "count(output_tokens)", "bigint"),
    ("cost_usd", "coalesce(sum(cost_usd), 0)", "numeric(38, 9)"),
    ("unpriced", "count(*) FILTER (WHERE cost_usd IS NULL)", "bigint"),
    ("cost_saved_usd", "coalesce(sum(cost_saved_usd), 0)", "numeric(38, 9)"),
    ("saved_known", "count(cost_saved_usd)", "bigint"),
    ("errors", "count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL)", "bigint"),
    ("cache_hits", "count(*) FILTER (WHERE cache_status = 'HIT')", "bigint"),
    ("cache_misses", "count(*) FILTER (WHERE cache_status = 'MISS')", "bigint"),
    # The cache report's own sums: over the calls the cache was asked about.
    ("cache_saved_usd", f"coalesce(sum(cost_saved_usd) FILTER (WHERE {LOOKUP}), 0)", "numeric(38, 9)"),
    ("cache_saved_known", f"count(cost_saved_usd) FILTER (WHERE {LOOKUP})", "bigint"),
    ("cache_saved_ms", f"coalesce(sum(latency_saved_ms) FILTER (WHERE {LOOKUP}), 0)", "double precision"),
    ("cache_saved_ms_known", f"count(latency_saved_ms) FILTER (WHERE {LOOKUP})", "bigint"),
)
NAMES = ("day", "dim", "value", *(m[0] for m in MEASURES))
# md5s, not the text: a btree entry holds at most 2,704 bytes, and a user id, a session id, a
# property's name or value can be longer (an entry too long fails the writer's whole batch).
KEY = "(md5(dim), day, md5(value), proxy_id)"


def rows_sql(source: str, where: str = "true", dims: tuple[str, ...] | None = None, sign: str = "") -> str:
    """The table's rows (with proxy_id after value) for the calls of `source` matching `where`, for
    `dims` (None: every dimension, properties included; a name starting PROPERTY: that property)."""
    wanted = list(COLUMNS) if dims is None else [d for d in dims if d in COLUMNS]
    parts = [f"SELECT '{d}', c.{COLUMNS[d]}" for d in wanted]
    names = None if dims is None else [d.removeprefix(PROPERTY) for d in dims if d.startswith(PROPERTY)]
    if names is None or names:
        keep = "" if names is None else " WHERE key IN (" + ", ".join(_literal(n) for n in names) + ")"
        parts.append(
            f"SELECT '{PROPERTY}' || key, value FROM jsonb_each_text(CASE WHEN"
            f" jsonb_typeof(c.properties) = 'object' THEN c.properties END){keep}"
        )  # a property that is not an object has no keys, as `properties->>NAME` finds none
    measures = ", ".join(f"{sign}CAST({sql} AS {kind})" for _, sql, kind in MEASURES)
    return (
        f"SELECT epoch_us(c.created_at) // {DAY_US}, d.dim, d.value, c.proxy_id, {measures}"
        f" FROM {source} AS c CROSS JOIN LATERAL ({' UNION ALL '.join(parts)}) AS d(dim, value)"
        f" WHERE {where} GROUP BY 1, 2, 3, 4"
    )


def postgres_ddl() -> str:
    """The table, built from the calls logged so far, and its triggers (migration p007: what it
    creates is fixed there)."""
    names = ", ".join(("day", "dim", "value", "proxy_id", *(m[0] for m in MEASURES)))
    columns = ", ".join(f"{name} {kind} NOT NULL" for name, _, kind in MEASURES)
    update = ", ".join(f"{name} = t.{name} + excluded.{name}" for name, _, _ in MEASURES)

    def add(source: str, sign: str) -> str:
        return rollup.upsert(TABLE, names, rows_sql(source, sign=sign), "2, 1, 3, 4", KEY, update)

    create = [
        f"CREATE TABLE {TABLE} (day bigint NOT NULL, dim text NOT NULL, value text, proxy_id text,"
        f" {columns});",
        f"CREATE UNIQUE INDEX {TABLE}_key ON {TABLE} {KEY} NULLS NOT DISTINCT;",  # read by dim and days
    ]
    return "\n".join([*create, add("requests", ""), *rollup.statement_triggers("llmtap_by_day", TABLE, add)])


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
