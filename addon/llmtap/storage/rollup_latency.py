"""`latency_by_day`: how many calls' latency (and time to first token) fall in each of a fixed set
of log-spaced buckets, per UTC day, provider and model (a fleet's Postgres log only); and the
indexes that give one bucket's values back.

The `latency` report's percentiles are exact, as DuckDB's `quantile_cont` gives them: over 10M
calls in Postgres, reading and sorting every value took 7.4 s (README, Performance), and a
percentile cannot be summed like a cost. It can be found by rank instead. The buckets' counts say
which bucket holds the value of rank k and how many values come before it; the index
`requests_latency_rank` (`requests_ttft_rank`) then returns only that bucket's values, for one
provider and model and a time range, read from the index alone (an index-only scan: ~0.25 µs a
value here, where each value's heap page took ~5 µs); the value is that bucket's (k - before)-th.
Buckets are ~4 % wide (25 per unit of ln(1 + ms)), so a bucket holds a few thousand values where
the range holds millions (reports/rollup_latency.py).

The index holds the provider and the model as they are: Postgres reads a value from the index alone
only when every column the query names is in it, and an md5 of them would leave them out. A btree
entry holds at most 2,704 bytes, so calls whose provider and model are longer together than
SHORT allows are left out of the index (never a failed write); the reader then reads the calls.

Only the calls the report counts are here: not cache hits or llmtap's own 429s, which say nothing
about the provider. Calls without a latency count in bucket NULL (the report's `calls` counts
them); calls without a time to first token are not counted for it.

Triggers keep it (rollup.statement_triggers), as they keep the other rollups. Migration p009
creates the bucket function, the table and the two partial indexes, and builds it from the calls.
"""

from __future__ import annotations

from llmtap.storage import rollup, rollup_by

TABLE = "latency_by_day"
SCALE = 25  # buckets per unit of ln(1 + ms): each is e^(1/25) - 1 ~ 4 % wide
METRICS = ("latency_ms", "ttft_ms")  # `metric` in the table: the index in this tuple
INDEXES = ("requests_latency_rank", "requests_ttft_rank")
OWN = "cache_status IS DISTINCT FROM 'HIT' AND rate_limited IS NOT TRUE"  # as catalog._latency
KEY = "(day, provider, md5(model), proxy_id, metric, bucket)"  # md5: rollup_by.KEY says why
SHORT_BYTES = 2000  # a provider and model longer together are not in the rank indexes
SHORT = f"octet_length(coalesce(provider, '')) + octet_length(coalesce(model, '')) < {SHORT_BYTES}"
# The bucket, in the table, the indexes and the reader: it grows with the value (the values below
# rank k are all in lower buckets), whatever the value: negatives in -1, infinity and NaN
# (Postgres orders NaN last) in the highest.
FUNCTION = f"""
CREATE FUNCTION llmtap_rank_bucket(double precision) RETURNS integer LANGUAGE sql IMMUTABLE
    PARALLEL SAFE AS $$ SELECT CASE WHEN $1 IS NULL THEN NULL WHEN $1 < 0 THEN -1
        WHEN $1 <= 1e300 THEN floor(ln($1 + 1) * {SCALE})::integer ELSE 2147483647 END $$;
"""


def rows_sql(source: str, where: str = "true", sign: str = "") -> str:
    """The table's rows (day, provider, model, proxy_id, metric, bucket, calls) for the counted
    calls of `source` matching `where`."""
    return (
        f"SELECT epoch_us(c.created_at) // {rollup_by.DAY_US}, c.provider, c.model, c.proxy_id,"
        f" m.metric, llmtap_rank_bucket(m.value), {sign}count(*)"
        f" FROM {source} AS c CROSS JOIN LATERAL (VALUES (CAST(0 AS smallint), c.latency_ms),"
        f" (CAST(1 AS smallint), c.ttft_ms)) AS m(metric, value)"
        f" WHERE {OWN} AND (m.metric = 0 OR m.value IS NOT NULL) AND {where}"
        " GROUP BY 1, 2, 3, 4, 5, 6"
    )


def index_ddl(metric: int) -> str:
    """One metric's index: its values by provider and model, bucket and time, the value included
    so that a bucket's values are read from the index alone."""
    column = METRICS[metric]
    return (
        f"CREATE INDEX {INDEXES[metric]} ON requests (provider, model, llmtap_rank_bucket({column}),"
        f" created_at) INCLUDE ({column}) WHERE {column} IS NOT NULL AND {OWN} AND {SHORT};"
    )


def postgres_ddl() -> str:
    """The bucket function, the table built from the calls logged so far, its triggers and the indexes
    (migration p009: what it creates is fixed there)."""
    names = "day, provider, model, proxy_id, metric, bucket, calls"

    def add(source: str, sign: str) -> str:
        rows = rows_sql(source, sign=sign)
        return rollup.upsert(TABLE, names, rows, "1, 2, 3, 4, 5, 6", KEY, "calls = t.calls + excluded.calls")

    create = [
        FUNCTION,
        f"CREATE TABLE {TABLE} (day bigint NOT NULL, provider text, model text, proxy_id text,"
        " metric smallint NOT NULL, bucket integer, calls bigint NOT NULL);",
        f"CREATE UNIQUE INDEX {TABLE}_key ON {TABLE} {KEY} NULLS NOT DISTINCT;",
    ]
    triggers = rollup.statement_triggers("llmtap_latency", TABLE, add)
    return "\n".join([*create, add("requests", ""), *triggers, index_ddl(0), index_ddl(1)])
