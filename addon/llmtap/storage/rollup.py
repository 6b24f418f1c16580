"""`requests_15m`: calls, tokens, cost, errors and cache lookups per 15 minutes, provider and model.

The dashboard's Overview reads it for long ranges: 90 days of 10M calls are ~100k rollup rows,
read in tens of milliseconds where the calls themselves take most of a second
(`scripts/bench_ui.py`). The writer adds each batch to it inside the batch's own transaction
(`add`), so the two never disagree about what was committed; migration m007 builds it from the
calls already logged (`rebuild`). Rows written by anything else (an `INSERT` by hand) are not in
it: the reader compares its call count with the calls' and reads the calls when they differ
(reports/rollup.py).

15 minutes because every time zone's offset is a multiple of it: a bucket falls in one local hour
and one local day in every zone, as in the reports' own day / hour grouping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb

from llmtap.accounting.record import COLUMNS

TABLE = "requests_15m"
BUCKET_US = 15 * 60 * 1_000_000
KEYS = ("qb", "provider", "model")
# Each measure: its name, its SQL over a group of calls, its type, what it means.
MEASURES: tuple[tuple[str, str, str, str], ...] = (
    ("calls", "count(*)", "BIGINT NOT NULL", "Calls in the bucket."),
    ("input_tokens", "sum(input_tokens)", "HUGEINT", "Sum of input_tokens (NULL: none known)."),
    ("output_tokens", "sum(output_tokens)", "HUGEINT", "Sum of output_tokens (NULL: none known)."),
    ("cost_usd", "sum(cost_usd)", "DECIMAL(38, 9)", "Sum of cost_usd over the priced calls (NULL: none)."),
    ("unpriced", "count(*) FILTER (WHERE cost_usd IS NULL)", "BIGINT NOT NULL", "Calls without a cost_usd."),
    ("cost_saved_usd", "sum(cost_saved_usd)", "DECIMAL(38, 9)", "Sum of cost_saved_usd (cache hits)."),
    ("errors", "count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL)", "BIGINT NOT NULL",
     "Calls with a status >= 400 or an error."),
    ("cache_hits", "count(*) FILTER (WHERE cache_status = 'HIT')", "BIGINT NOT NULL",
     "Calls answered from the cache."),
    ("cache_lookups", "count(*) FILTER (WHERE cache_status IN ('HIT', 'MISS'))", "BIGINT NOT NULL",
     "Calls the cache was asked about: hits and misses."),
)  # fmt: skip
NAMES = KEYS + tuple(m[0] for m in MEASURES)
_TYPES = ("BIGINT", "VARCHAR", "VARCHAR", *(m[2].removesuffix(" NOT NULL") for m in MEASURES))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_AT = {name: COLUMNS.index(name) for name in (
    "created_at", "provider", "model", "input_tokens", "output_tokens", "cost_usd", "cost_saved_usd",
    "status", "error", "cache_status",
)}  # fmt: skip


def aggregate_sql(where: str) -> str:
    """The rollup's rows for the calls matching `where`: used to build it and, by the reader, for
    the partial buckets at a range's edges."""
    measures = ", ".join(f"{sql} AS {name}" for name, sql, _, _ in MEASURES)
    return (
        f"SELECT epoch_us(created_at) // {BUCKET_US} AS qb, provider, model, {measures}"
        f" FROM requests WHERE {where} GROUP BY 1, 2, 3"
    )


def postgres_ddl() -> str:
    """The rollup in a fleet's Postgres log (migration p004; what it creates is fixed there: a new
    measure is a new migration). Keyed by proxy too, so two writers never update one row.

    Triggers keep it, not the writers: every statement that inserts, deletes or updates calls, in
    the statement's own transaction, adds (or takes away) its rows' sums, read from its transition
    tables. COPY, a retried batch's `ON CONFLICT DO NOTHING` (only the rows it inserted count), an
    `INSERT` or a `DELETE` by hand: all are counted, so a reader needs no count of the calls to
    trust it (a count of 10M rows takes most of a second in Postgres). `TRUNCATE requests` empties
    it. Statements on one month's partition rather than on `requests` (a DROP, DETACH, TRUNCATE or
    DELETE there) fire no trigger of the parent's: README, Fleet mode, says what to do then."""
    columns = ", ".join(f"{n} {_PG_TYPES[k]}" for n, _, k, _ in MEASURES)
    statements = [
        f"CREATE TABLE {TABLE} (qb bigint NOT NULL, provider text, model text, proxy_id text, {columns},"
        f" UNIQUE NULLS NOT DISTINCT {_P004_KEY});",
        _upsert(_P004_KEY)("requests", ""),
    ]
    return "\n".join(statements + statement_triggers("llmtap_rollup", TABLE, _upsert(_P004_KEY)))


def postgres_key() -> str:
    """Migration p005: the key held the model name as sent, and a btree entry holds at most 2,704
    bytes, so one call naming a longer model failed its writer's every try of its batch. The key
    holds the name's md5 instead, and the triggers' functions use it."""
    return "\n".join([
        f"ALTER TABLE {TABLE} DROP CONSTRAINT requests_15m_qb_provider_model_proxy_id_key;",
        f"CREATE UNIQUE INDEX requests_15m_key ON {TABLE} {KEY} NULLS NOT DISTINCT;",
        *statement_triggers("llmtap_rollup", TABLE, _upsert(KEY), functions_only=True),
    ])  # fmt: skip


_P004_KEY = "(qb, provider, model, proxy_id)"
KEY = "(qb, provider, md5(model), proxy_id)"  # since p005
_PG_TYPES = {"HUGEINT": "bigint", "BIGINT NOT NULL": "bigint NOT NULL", "DECIMAL(38, 9)": "numeric(38, 9)"}


def _upsert(key: str) -> Callable[[str, str], str]:
    """The statement adding (sign '') or taking away (sign '-') the sums of the calls in a source."""
    names = ", ".join(NAMES[:3] + ("proxy_id",) + NAMES[3:])
    update = ", ".join(
        f"{n} = t.{n} + excluded.{n}" if "NOT NULL" in k
        else f"{n} = coalesce(t.{n} + excluded.{n}, t.{n}, excluded.{n})"  # NULL: nothing known yet
        for n, _, k, _ in MEASURES
    )  # fmt: skip

    def rows(source: str, sign: str) -> str:
        measures = ", ".join(f"{sign}CAST({sql} AS {_PG_TYPES[k].removesuffix(' NOT NULL')})"
                             for _, sql, k, _ in MEASURES)  # fmt: skip
        selected = (
            f"SELECT epoch_us(created_at) // {BUCKET_US}, provider, model, proxy_id, {measures}"
            f" FROM {source} GROUP BY 1, 2, 3, 4"
        )
        return upsert(TABLE, names, selected, "1, 2, 3, 4", key, update)

    return rows


def upsert(table: str, names: str, rows: str, order: str, key: str, update: str) -> str:
    """A rollup's statement adding `rows` (a SELECT of `names`) to `table`, summed into the rows of
    the same `key` by `update`. Sorted by `order` so that every writer takes the rows' locks in one
    order: no deadlock between writers."""
    return (
        f"INSERT INTO {table} AS t ({names}) {rows} ORDER BY {order}"
        f" ON CONFLICT {key} DO UPDATE SET {update};"
    )


def statement_triggers(
    prefix: str, table: str, rows: Callable[[str, str], str], functions_only: bool = False
) -> list[str]:
    """The four statement-level triggers on `requests` that keep a rollup `table`: `rows(source,
    sign)` is the statement adding (sign '') or taking away (sign '-') the sums of the calls in
    `source`, a transition table; a row whose calls reach 0 is deleted. `functions_only`: replace
    the functions of triggers that exist."""
    emptied = f"DELETE FROM {table} WHERE calls = 0;"
    bodies = {
        "insert": ("INSERT", "NEW TABLE AS new_rows", rows("new_rows", "")),
        "delete": ("DELETE", "OLD TABLE AS old_rows", rows("old_rows", "-") + emptied),
        "update": ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows",
                   rows("old_rows", "-") + rows("new_rows", "") + emptied),
        "truncate": ("TRUNCATE", None, f"DELETE FROM {table};"),
    }  # fmt: skip
    statements = []
    for what, (event, tables, body) in bodies.items():
        made = statement_trigger(f"{prefix}_{what}", "requests", event, tables, body, functions_only)
        statements += made[:1] if functions_only else made
    return statements


def statement_trigger(
    name: str, table: str, event: str, tables: str | None, body: str, replace: bool = False
) -> list[str]:
    """A statement-level AFTER `event` trigger on `table` and its function `name` running `body`,
    with the statement's transition `tables` (`NEW TABLE AS new_rows`, ...); `replace` the function
    of a trigger that exists."""
    return [
        f"CREATE {'OR REPLACE ' if replace else ''}FUNCTION {name}() RETURNS trigger"
        f" LANGUAGE plpgsql AS $$ BEGIN {body} RETURN NULL; END $$;",
        f"CREATE TRIGGER {name} AFTER {event} ON {table}"
        f" {f'REFERENCING {tables} ' if tables else ''}FOR EACH STATEMENT EXECUTE FUNCTION {name}();",
    ]


def rebuild(conn: duckdb.DuckDBPyConnection) -> None:
    """The rollup from every call in the file (in the caller's transaction)."""
    conn.execute(f"DELETE FROM {TABLE}")
    conn.execute(f"INSERT INTO {TABLE} ({', '.join(NAMES)}) {aggregate_sql('true')}")


def add(conn: duckdb.DuckDBPyConnection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Add a batch of request rows (as the writer appends them) to the rollup, in one MERGE."""
    groups = summarize(rows)
    if not groups:
        return
    row = "(" + ", ".join(f"?::{t}" for t in _TYPES) + ")"
    values = ", ".join([row] * len(groups))
    same = " AND ".join(f"t.{k} IS NOT DISTINCT FROM b.{k}" for k in KEYS)
    update = ", ".join(
        f"{name} = t.{name} + b.{name}" if "NOT NULL" in kind
        else f"{name} = coalesce(t.{name} + b.{name}, t.{name}, b.{name})"  # NULL: nothing known yet
        for name, _, kind, _ in MEASURES
    )  # fmt: skip
    conn.execute(
        f"MERGE INTO {TABLE} AS t USING (SELECT * FROM (VALUES {values}) AS v({', '.join(NAMES)})) AS b"
        f" ON {same} WHEN MATCHED THEN UPDATE SET {update}"
        f" WHEN NOT MATCHED THEN INSERT ({', '.join(NAMES)}) VALUES ({', '.join('b.' + n for n in NAMES)})",
        [v for g in groups for v in g],
    )


def summarize(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """The batch's rollup rows, computed as MEASURES' SQL computes them (tests compare the two)."""
    at = _AT
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for r in rows:
        key = (_bucket(r[at["created_at"]]), r[at["provider"]], r[at["model"]])
        g = groups.get(key)
        if g is None:
            g = groups[key] = [*key, 0, None, None, None, 0, None, 0, 0, 0]
        status, cost, cache = r[at["status"]], r[at["cost_usd"]], r[at["cache_status"]]
        g[3] += 1
        g[4] = _plus(g[4], r[at["input_tokens"]])
        g[5] = _plus(g[5], r[at["output_tokens"]])
        g[6] = _plus(g[6], None if cost is None else Decimal(cost))
        g[7] += cost is None
        saved = r[at["cost_saved_usd"]]
        g[8] = _plus(g[8], None if saved is None else Decimal(saved))
        g[9] += (status is not None and status >= 400) or r[at["error"]] is not None
        g[10] += cache == "HIT"
        g[11] += cache in ("HIT", "MISS")
    return [[*g[:6], None if g[6] is None else str(g[6]), g[7], None if g[8] is None else str(g[8]), *g[9:]]
            for g in groups.values()]  # fmt: skip


def _bucket(at: datetime) -> int:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - _EPOCH) // timedelta(microseconds=1) // BUCKET_US


def _plus(total: Any, value: Any) -> Any:
    if value is None:
        return total
    return value if total is None else total + value
