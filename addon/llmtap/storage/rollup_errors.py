"""`errors_by_day`: the failed calls (status >= 400 or an error) per UTC day, provider, model,
status and error text, with how many llmtap rate-limited, their retries and the last one's time
(a fleet's Postgres log only).

The `errors` report groups the failed calls by status and error (and model or provider): ~3 % of
the calls, but finding them reads every call, 1.2 s over 10M in Postgres (README, Performance).
Here they are a few thousand rows. Whole days come from here and the partial days at a range's
edges from the calls (reports/rollup_errors.py).

Triggers keep it (rollup.statement_triggers). A sum can be taken away when calls are deleted or
updated, a latest time cannot: then the groups the statement touched get theirs again from the
calls of their day.
"""

from __future__ import annotations

from llmtap.storage import rollup, rollup_by

TABLE = "errors_by_day"
FAILED = "(status >= 400 OR error IS NOT NULL)"
GROUPS = ("provider", "model", "status", "error")
MEASURES: tuple[tuple[str, str, str], ...] = (
    ("calls", "count(*)", "bigint"),
    ("rate_limited", "count(*) FILTER (WHERE rate_limited)", "bigint"),
    ("retries", "coalesce(sum(retries), 0)", "bigint"),
    ("last_seen", "max(created_at)", "timestamptz"),
)
NAMES = ("day", *GROUPS, "proxy_id", *(m[0] for m in MEASURES))
# md5s, not the text: a btree entry holds at most 2,704 bytes (rollup_by.KEY).
KEY = "(day, provider, md5(model), status, md5(error), proxy_id)"


def rows_sql(source: str, where: str = "true", sign: str = "") -> str:
    """The table's rows for the failed calls of `source` matching `where` (last_seen unsigned)."""
    measures = ", ".join(
        f"{'' if name == 'last_seen' else sign}CAST({sql} AS {kind})" for name, sql, kind in MEASURES
    )
    return (
        f"SELECT epoch_us(created_at) // {rollup_by.DAY_US}, {', '.join(GROUPS)}, proxy_id, {measures}"
        f" FROM {source} WHERE {FAILED} AND {where} GROUP BY {', '.join(str(k) for k in range(1, 7))}"
    )


def postgres_ddl() -> str:
    """The table, built from the calls logged so far, and its triggers (migration p008)."""
    update = ", ".join(
        f"{name} = greatest(t.{name}, excluded.{name})" if name == "last_seen"
        else f"{name} = t.{name} + excluded.{name}"
        for name, _, _ in MEASURES
    )  # fmt: skip

    def add(source: str, sign: str) -> str:
        rows = rows_sql(source, sign=sign)
        upsert = rollup.upsert(TABLE, ", ".join(NAMES), rows, "1, 2, 3, 4, 5, 6", KEY, update)
        return upsert + (_last_seen_again(source) if sign else "")

    columns = ", ".join(
        f"{name} {kind}{' NOT NULL' if kind == 'bigint' else ''}" for name, _, kind in MEASURES
    )
    create = [
        f"CREATE TABLE {TABLE} (day bigint NOT NULL, provider text, model text, status integer, error text,"
        f" proxy_id text, {columns});",
        f"CREATE UNIQUE INDEX {TABLE}_key ON {TABLE} {KEY} NULLS NOT DISTINCT;",
    ]
    return "\n".join([*create, add("requests", ""), *rollup.statement_triggers("llmtap_errors", TABLE, add)])


def _last_seen_again(source: str) -> str:
    """The latest failed call of each group that lost calls, read again from the calls of its day
    (a trigger runs after its statement, so the calls deleted are gone)."""
    day = rollup_by.DAY_US // 1_000_000
    touched = (
        f"SELECT DISTINCT epoch_us(created_at) // {rollup_by.DAY_US} AS day, {', '.join(GROUPS)}, proxy_id"
    )
    return (
        f" UPDATE {TABLE} AS t SET last_seen = (SELECT max(r.created_at) FROM requests AS r"
        f" WHERE r.created_at >= to_timestamp(t.day * {day})"
        f" AND r.created_at < to_timestamp((t.day + 1) * {day})"
        f" AND (r.status >= 400 OR r.error IS NOT NULL) AND {_same('r', 't')})"
        f" FROM ({touched} FROM {source} WHERE {FAILED}) AS k WHERE t.day = k.day AND {_same('t', 'k')};"
    )


def _same(a: str, b: str) -> str:
    """Rows `a` and `b` are of one group (NULLs alike)."""
    return " AND ".join(f"{a}.{c} IS NOT DISTINCT FROM {b}.{c}" for c in (*GROUPS, "proxy_id"))
