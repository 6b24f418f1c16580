"""The dashboard's JSON views, built from the same reports as the CLI (reports/catalog.py).

A view's filters are the CLI's flags as query-string parameters (`since`, `until`, `provider`,
`model`, `user`, `session`, `property=k=v`, `rating`, `score`, `tz`), parsed by the same functions,
so a dashboard URL and an `llmtap report` command answer the same question the same way. Every
query runs on a short-lived read-only connection with external access off and a time limit
(`QUERY_SECONDS`): past it the query is interrupted (or, on Postgres, cancelled) and the view says so.

`db` is a DuckDB file or a fleet's Postgres URL: the reports are one definition for both
(reports/dialect.py), so every view answers alike from either.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb

from llmtap.reports import catalog, dialect, output, rollup
from llmtap.storage import postgres, query, rollup_by

Target = str | Path  # a DuckDB file, or a Postgres URL (a fleet's log)

QUERY_SECONDS = 10.0
FILTERS = ("since", "until", "provider", "model", "user", "session", "property", "rating", "score", "tz")
PAGING = ("before", "limit", "q", "by", "sql", "key", "stack")  # the pages' own parameters
SQL_ROWS = 1000  # rows the SQL page shows (an export has them all)
EXPORTS = {"csv": "text/csv; charset=utf-8", "json": "application/json",
           "parquet": "application/vnd.apache.parquet"}  # fmt: skip
PAGE_SIZE = 50
# Past this many calls in range, the Overview's latency percentiles come from a sample of about
# this many (catalog's sample_pct). Exact ones took 320 ms over 10M calls, the sample 110 ms; its
# daily p50 / p95 / p99 were off by a median of 1-2% (README, Performance).
LATENCY_ROWS = 1_000_000
# On a fleet's Postgres log the sample is whole pages (dialect.sampled), read at ~0.25 s per
# million rows: 200k keep the Overview's latency near 0.2 s over 10M calls.
LATENCY_ROWS_POSTGRES = 200_000
BODY_PREVIEW = 64 * 1024  # a body larger than this is sent as its size, head and tail


class ViewError(Exception):
    """A bad parameter (400, naming it) or a query that could not finish (503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def options(params: dict[str, list[str]]) -> catalog.Options:
    """The CLI's filters from a query string; a bad value is a 400 naming the parameter."""
    unknown = sorted(set(params) - set(FILTERS) - set(PAGING))
    if unknown:
        raise ViewError(400, f"unknown parameter {unknown[0]!r}: expected one of {', '.join(FILTERS)}")
    opts = catalog.Options()
    parsers: dict[str, tuple[Callable[[str], Any], str]] = {
        "since": (catalog.parse_when, "since"), "until": (catalog.parse_when, "until"),
        "provider": (str, "provider"), "model": (str, "model"), "user": (str, "user"),
        "session": (str, "session"), "property": (catalog.parse_property, "properties"),
        "score": (catalog.parse_score, "scores"), "rating": (_rating, "rating"),
        "tz": (catalog.parse_tz, "tz"),
    }  # fmt: skip
    for name, values in params.items():
        if name not in parsers:
            continue
        parse, field = parsers[name]
        try:
            parsed = [parse(v) for v in values]
        except ValueError as e:
            raise ViewError(400, f"{name}: {e}") from None
        current = getattr(opts, field)
        setattr(opts, field, current + parsed if isinstance(current, list) else parsed[-1])
    return opts


def _rating(text: str) -> str:
    if text not in ("up", "down"):
        raise ValueError(f"expected up or down, got {text!r}")
    return text


def bucket_for(opts: catalog.Options, now: datetime) -> str:
    """`minute` for ranges up to 2 hours, `hour` up to 3 days, else `day`: at most ~120 points."""
    start = _point(opts.since, opts.tz, now, end=False)
    end = _point(opts.until, opts.tz, now, end=True) or now
    if start is None:
        return "day"
    if end - start <= timedelta(hours=2):
        return "minute"
    return "hour" if end - start <= timedelta(days=3) else "day"


def _point(when: catalog.When | None, tz: str, now: datetime, end: bool) -> datetime | None:
    """A --since / --until value as a point in time (as the reports resolve it; None: open)."""
    if when is None:
        return None
    if when.ago is not None:
        return now - when.ago
    assert when.at is not None
    at = when.at + timedelta(days=1) if when.date_only and end else when.at
    return at if at.tzinfo else at.replace(tzinfo=_zone(tz))


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ViewError(400, f"tz: unknown time zone {tz!r} (try UTC or a name like Europe/Paris)") from None


def epoch(value: date | datetime, tz: str) -> int:
    """A bucket's start as Unix seconds: an hour is a point in time, a day starts at midnight in `tz`."""
    if isinstance(value, datetime):
        return int(value.timestamp())
    return int(datetime.combine(value, time(), _zone(tz)).timestamp())


def axis(bucket: str, tz: str, start: datetime, end: datetime) -> list[int]:
    """Every bucket from the one holding `start` to the one holding `end`, so a chart shows an empty
    bucket as a gap, not as a line drawn across it."""
    zone = _zone(tz)
    local = start.astimezone(zone)
    out = []
    if bucket in ("hour", "minute"):
        step = timedelta(hours=1) if bucket == "hour" else timedelta(minutes=1)
        t = local.replace(second=0, microsecond=0)
        if bucket == "hour":
            t = t.replace(minute=0)
        while t <= end:
            out.append(int(t.timestamp()))
            t = (t.astimezone(UTC) + step).astimezone(zone)
    else:
        day, last = local.date(), end.astimezone(zone).date()
        while day <= last:
            out.append(epoch(day, tz))
            day += timedelta(days=1)
    return out


def run(
    db: Target,
    work: Callable[[duckdb.DuckDBPyConnection], Any],
    seconds: float = QUERY_SECONDS,
    external_access: bool = False,
) -> Any:
    """`work` on a fresh read-only connection, external access off, interrupted after `seconds`
    (a Postgres query is cancelled by the server's protocol, which stops it there too)."""
    if not postgres.is_url(db) and not Path(db).exists():
        raise ViewError(503, f"no calls logged yet: {db} is written with the first one")
    try:
        conn = query.connect(db, external_access=external_access)
    except query.QueryError as e:
        raise ViewError(503, str(e)) from None
    timer = threading.Timer(seconds, conn.cancel if postgres.is_connection(conn) else conn.interrupt)
    timer.start()
    try:
        return work(conn)
    except query.QueryError as e:
        if any(word in str(e).lower() for word in ("interrupt", "canceling statement")):
            raise ViewError(503, f"the query took longer than {seconds:g} s and was stopped") from None
        raise ViewError(400, str(e)) from None
    finally:
        timer.cancel()
        conn.close()


def overview(
    db: Target, opts: catalog.Options, now: datetime | None = None, stack: str = "model"
) -> dict[str, Any]:
    """Cards (the `summary` report) and, per time bucket, cost stacked by `stack` (model, provider,
    user, property:NAME or score:NAME), calls and errors, and latency percentiles: each with the SQL
    behind it."""
    try:
        (dim,) = catalog.parse_dimensions(stack)
    except ValueError as e:
        raise ViewError(400, f"stack: {e}") from None
    if dim.kind in ("day", "hour", "session", "rating"):
        expected = "model, provider, user, property:NAME or score:NAME"
        raise ViewError(400, f"stack: expected {expected}, got {stack!r}")
    stack = str(dim)
    now = now or datetime.now(UTC)
    bucket = bucket_for(opts, now)
    _zone(opts.tz)

    def work(conn: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        by_time = _grouped(opts, bucket)
        parts = rollup.overview(conn, opts, now, bucket, stack) or _from_calls(conn, opts, now, bucket, stack)
        summary, columns, rows = parts.summary
        cost, cost_cols, cost_rows = parts.cost or catalog.fetch(
            conn, "cost", _grouped(opts, bucket, stack), now
        )
        errors, err_cols, err_rows = parts.errors
        calls_cols, calls_rows = _per_bucket(cost_cols, cost_rows)  # one scan less than a query
        total = rows[0][columns.index("calls")] if rows else 0
        budget = LATENCY_ROWS_POSTGRES if dialect.of(conn).postgres else LATENCY_ROWS
        sample = 100 * budget / total if total > budget else None
        by_time.sample_pct = sample
        latency, lat_cols, lat_rows = catalog.fetch(conn, "latency", by_time, now)
        named = (("cards", parts.summary), ("cost_stacked", parts.cost), ("errors", parts.errors))
        rolled = [name for name, part in named if parts.from_rollup and part is not None]
        failed: dict[Any, int] = {}
        for row in err_rows:
            key = row[err_cols.index(bucket)]
            failed[key] = failed.get(key, 0) + row[err_cols.index("calls")]
        seen = [epoch(r[0], opts.tz) for r in calls_rows]
        start = _point(opts.since, opts.tz, now, end=False)
        if start is None and seen:
            start = datetime.fromtimestamp(min(seen), UTC)
        until = _point(opts.until, opts.tz, now, end=True)
        end = until - timedelta(microseconds=1) if until else now
        return {
            "bucket": bucket,
            "tz": opts.tz,
            "axis": axis(bucket, opts.tz, start, end) if start is not None else [],
            "cards": dict(zip(columns, rows[0], strict=True)) if rows else {},
            "stack": {"by": stack, "column": cost_cols[1]},
            "cost_stacked": _table(cost_cols, cost_rows, opts.tz),
            "calls": _table(
                [*calls_cols, "errors"], [(*r, failed.get(r[0], 0)) for r in calls_rows], opts.tz
            ),  # fmt: skip
            "latency": _table(lat_cols, lat_rows, opts.tz),
            "latency_sample_pct": None if sample is None else round(sample, 2),
            "rollup": rolled,  # what came from the 15-minute rollup rather than from the calls
            "sql": {
                "cards": summary.sql,
                "cost_stacked": cost.sql,
                "calls": "-- the cost_stacked rows summed per bucket",
                "errors": errors.sql,
                "latency": latency.sql,
            },  # fmt: skip
        }

    return run(db, work)


def _from_calls(
    conn: duckdb.DuckDBPyConnection, opts: catalog.Options, now: datetime, bucket: str, stack: str
) -> rollup.Overview:
    """The Overview's reports over the calls themselves, where the rollup cannot answer."""
    return rollup.Overview(
        catalog.fetch(conn, "summary", opts, now),
        catalog.fetch(conn, "cost", _grouped(opts, bucket, stack), now),
        catalog.fetch(conn, "errors", _grouped(opts, bucket), now),
        from_rollup=False,
    )


def _per_bucket(columns: list[str], rows: list[tuple]) -> tuple[list[str], list[tuple]]:
    """`cost --by BUCKET` from the rows of `cost --by BUCKET,model`: the same sums (exact Decimals),
    without scanning the calls again."""
    keep = [columns[0], *columns[2:]]  # without the stacked dimension
    at = {c: columns.index(c) for c in keep}
    sums: dict[Any, list[Any]] = {}
    for row in rows:
        acc = sums.setdefault(row[0], [row[0]] + [None] * (len(keep) - 1))
        for i, c in enumerate(keep[1:], 1):
            value = row[at[c]]
            if value is not None:
                acc[i] = value if acc[i] is None else acc[i] + value
    return keep, [tuple(v) for _, v in sorted(sums.items())]


def _grouped(opts: catalog.Options, *by: str) -> catalog.Options:
    return catalog.Options(**{**vars(opts), "by": [d for text in by for d in catalog.parse_dimensions(text)]})


def _table(columns: list[str], rows: list[tuple], tz: str) -> dict[str, Any]:
    """Rows with their bucket's start as `t` (Unix seconds) first, for the charts."""
    return {"columns": ["t", *columns], "rows": [[epoch(r[0], tz), *r] for r in rows]}


def requests(
    db: Target, opts: catalog.Options, params: dict[str, list[str]], now: datetime | None = None
) -> dict[str, Any]:
    """One page of the log, newest first, and the cursor of the next (`before`), if any."""
    now = now or datetime.now(UTC)
    before = _cursor(params.get("before", [""])[-1])
    limit = _limit(params.get("limit", [str(PAGE_SIZE)])[-1])
    search = params.get("q", [""])[-1].strip() or None
    if search and opts.since is None:
        raise ViewError(400, "q: a text search needs a time window (since)")

    def work(conn: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        page = catalog.log_page(conn, opts, before, limit + 1, search, now)
        columns, rows = query.fetch(conn, page.sql, page.params)
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = f"{rows[-1][1].astimezone(UTC).isoformat()}|{rows[-1][0]}" if more else None
        return {"columns": columns, "rows": [list(r) for r in rows], "next": cursor, "sql": page.sql}

    return run(db, work)


def request(db: Target, request_id: str, at: str | None = None) -> dict[str, Any]:
    """Everything about one call: its row (a large body as size, head and tail), feedback, scores.
    `at`, the row's created_at as the log showed it, lets DuckDB skip every other row group."""
    when = _cursor(f"{at}|{request_id}")[0] if at else None

    def work(conn: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        sql = "SELECT * FROM requests WHERE request_id = $id" + (" AND created_at = $at" if when else "")
        columns, rows = query.fetch(conn, sql, {"id": request_id, **({"at": when} if when else {})})
        if not rows:
            raise ViewError(404, f"no request with id {request_id!r}")
        row = dict(zip(columns, rows[0], strict=True))
        for name in ("request_body", "response_body"):
            row[name] = _preview(row[name])
        _, feedback = query.fetch(conn, "SELECT rating, created_at FROM feedback WHERE request_id = $id"
                                  " ORDER BY created_at", {"id": request_id})  # fmt: skip
        _, scores = query.fetch(conn, "SELECT name, value, created_at FROM scores WHERE request_id = $id"
                                " ORDER BY created_at", {"id": request_id})  # fmt: skip
        return {"request": row, "feedback": [list(f) for f in feedback], "scores": [list(x) for x in scores]}

    return run(db, work)


def body(db: Target, request_id: str, which: str) -> bytes:
    """A whole body, for download."""
    if which not in ("request", "response"):
        raise ViewError(404, f"no body {which!r}: request or response")

    def work(conn: duckdb.DuckDBPyConnection) -> bytes:
        sql = f"SELECT {which}_body FROM requests WHERE request_id = $id"  # which: one of two names
        _, rows = query.fetch(conn, sql, {"id": request_id})
        if not rows:
            raise ViewError(404, f"no request with id {request_id!r}")
        return (rows[0][0] or "").encode()

    return run(db, work)


def _preview(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    if len(text) <= BODY_PREVIEW:
        return {"size": len(text), "text": text}
    half = BODY_PREVIEW // 2
    return {"size": len(text), "head": text[:half], "tail": text[-half:]}


def _cursor(text: str) -> tuple[datetime, str] | None:
    if not text:
        return None
    at, sep, request_id = text.partition("|")
    try:
        return datetime.fromisoformat(at), request_id
    except ValueError:
        raise ViewError(400, f"before: expected the cursor a page returned, got {text!r}") from None


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 500:
        raise ViewError(400, f"limit: expected a whole number from 1 to 500, got {text!r}")
    return int(text)


def report(db: Target, name: str, opts: catalog.Options, params: dict[str, list[str]]) -> dict[str, Any]:
    """A built-in report, as `llmtap report NAME` runs it (`by` and `limit` as its flags)."""
    opts = _report_options(name, opts, params)

    def work(conn: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        try:
            r, columns, rows = catalog.fetch(conn, name, opts)
        except catalog.ReportError as e:
            raise ViewError(400, str(e)) from None
        return {"report": name, "columns": columns, "rows": [list(x) for x in rows], "sql": r.sql}

    return run(db, work)


def export(db: Target, view: str, fmt: str, opts: catalog.Options, params: dict[str, list[str]]) -> bytes:
    """Every matching row of a view (the requests log, or a report without its limit) as CSV, JSON
    or Parquet, written by the CLI's code: `catalog.render` and `query.to_parquet`."""
    if fmt not in EXPORTS:
        raise ViewError(404, f"no export format {fmt!r}: csv, json or parquet")
    search = params.get("q", [""])[-1].strip() or None

    def work(conn: duckdb.DuckDBPyConnection) -> bytes:
        if view == "requests":
            r = catalog.log_page(conn, opts, None, None, search)
        elif view.startswith("report/") and view[7:] in catalog.REPORTS:
            try:
                r = catalog.prepare(conn, view[7:], _report_options(view[7:], opts, params))
            except catalog.ReportError as e:
                raise ViewError(400, str(e)) from None
        else:
            raise ViewError(404, f"no view {view!r} to export")
        if fmt == "parquet":
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "export.parquet"
                query.to_parquet(conn, r.sql, r.params, out)
                return out.read_bytes()
        columns, rows = query.fetch(conn, r.sql, r.params, decimals_as_text=True)
        return catalog.render(r, columns, rows, fmt).encode()

    # The statement is one of llmtap's own (no user SQL), so this one connection may write the
    # Parquet file DuckDB makes.
    return run(db, work, external_access=fmt == "parquet")


def _report_options(name: str, opts: catalog.Options, params: dict[str, list[str]]) -> catalog.Options:
    if name not in catalog.REPORTS:
        raise ViewError(404, f"no report {name!r}: expected one of {', '.join(catalog.REPORTS)}")
    try:
        by = [d for text in params.get("by", []) if text for d in catalog.parse_dimensions(text)]
    except ValueError as e:
        raise ViewError(400, f"by: {e}") from None
    limit = _limit(params["limit"][-1]) if params.get("limit") else None
    return catalog.Options(**{**vars(opts), "by": by, "limit": limit})


def sql(db: Target, text: str) -> dict[str, Any]:
    """A read-only query typed in the SQL page: external access off (no other file can be read or
    written: `COPY ... TO`, `read_csv('/etc/passwd')`, `ATTACH` are refused), the time limit on."""
    if not text.strip():
        raise ViewError(400, "sql: empty query")

    def work(conn: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        columns, rows = _typed(conn, text)
        return {"columns": columns, "rows": [list(r) for r in rows[:SQL_ROWS]], "total": len(rows),
                "truncated": len(rows) > SQL_ROWS}  # fmt: skip

    return run(db, work)


def sql_export(db: Target, text: str, fmt: str) -> bytes:
    """The SQL page's result as `llmtap sql --format csv|json` writes it."""
    if fmt not in ("csv", "json"):
        raise ViewError(404, f"no export format {fmt!r} for SQL: csv or json")

    def work(conn: duckdb.DuckDBPyConnection) -> bytes:
        columns, rows = _typed(conn, text)
        return output.render(columns, rows, fmt).encode()

    return run(db, work)


def _typed(conn: duckdb.DuckDBPyConnection, text: str) -> tuple[list[str], list[tuple]]:
    """A statement typed on the SQL page. DuckDB's connection has external access off. On a fleet's
    Postgres it runs as one SELECT (a subquery: `COPY`, `SET` or a second statement are refused) in
    the read-only transaction, and only for a role that cannot reach the server's files."""
    if not postgres.is_connection(conn):
        return query.fetch(conn, text)
    role = postgres.touches_files(conn)
    if role is not None:
        raise ViewError(403, f"sql: the role {role!r} may read the database server's files (a superuser or"
                        " a member of pg_read_server_files), so the SQL page will not run what is typed"
                        " in it; give the dashboard a URL with a role that has only SELECT (README,"
                        " Fleet mode)")  # fmt: skip
    body = text.strip().rstrip(";").strip()
    return query.fetch(conn, f"SELECT * FROM (\n{body}\n) AS typed")


def property_keys(db: Target) -> list[str]:
    """The property names in use, for the Properties page's picker."""

    def work(conn: duckdb.DuckDBPyConnection) -> list[str]:
        sql = dialect.of(conn)
        if sql.postgres and query.has_table(conn, rollup_by.TABLE):
            # A fleet's log: from its daily rollup, which holds every property name once a day,
            # where reading every call's properties took ~3 s over 10M (and kept the Overview's
            # stack picker, so its charts, waiting).
            named = f"dim LIKE '{rollup_by.PROPERTY}%'"
            from_rollup = (
                f"SELECT DISTINCT substr(dim, {len(rollup_by.PROPERTY) + 1}) AS k FROM {rollup_by.TABLE}"
            )
            return [r[0] for r in query.fetch(conn, f"{from_rollup} WHERE {named} ORDER BY k")[1]]
        keys = sql.object_keys("properties")
        _, rows = query.fetch(conn, f"SELECT DISTINCT {keys} AS k FROM requests"
                              " WHERE properties IS NOT NULL ORDER BY k")  # fmt: skip
        return [r[0] for r in rows]

    return run(db, work)


def score_names(db: Target) -> list[str]:
    """The score names in use, for the Overview's stacking choices."""

    def work(conn: duckdb.DuckDBPyConnection) -> list[str]:
        return [r[0] for r in query.fetch(conn, "SELECT DISTINCT name FROM scores ORDER BY name")[1]]

    return run(db, work)
