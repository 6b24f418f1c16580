"""Postgres as the fleet's log: `llmtap_db=postgresql://...` instead of a DuckDB file.

Every proxy's writer process COPYs its batches into one `requests` table, partitioned by month
of `created_at` (a BRIN index on it; the writer creates a month's partition the first time a row
needs it, under an advisory lock, so there is no pg_cron). Schema changes are numbered
migrations applied in one transaction under an advisory lock: many writers starting together
apply each once, the others wait for it and find it done.

A batch is one transaction. If a retry finds some of its rows already there (the COMMIT went
through but its answer was lost), it goes through a staging table with `ON CONFLICT DO NOTHING`,
so a call is stored exactly once. Postgres refuses NUL characters in text and in JSON strings,
which model output can carry: they become U+FFFD rather than losing the row.

Readers (`llmtap sql`, the local API's "unknown id" check) get a read-only connection with a
statement timeout; JSON columns come back as text, as DuckDB returns them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from llmtap.accounting.record import COLUMNS, TYPES, Annotation, annotation_rows
from llmtap.storage import annotated, rollup, rollup_by, rollup_errors, rollup_latency

SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT = 3  # seconds: a down server must not hold a flush (or a shutdown) for long
_LOCK_MIGRATE = 0x6C6D7401  # pg_advisory_xact_lock keys ("lmt" + n): migrations, partitions
_LOCK_PARTITION = 0x6C6D7402
_JSON = [k for k, kind in enumerate(TYPES) if kind == "JSON"]
_TEXT = [k for k, kind in enumerate(TYPES) if kind == "VARCHAR"]
_COPY = f"COPY {{table}} ({', '.join(COLUMNS)}) FROM STDIN"


def is_url(target: object) -> bool:
    """A Postgres URL rather than a DuckDB file path."""
    return isinstance(target, str) and target.startswith(SCHEMES)


def connect(url: str, read_only: bool = False, timeout_ms: int | None = None) -> Any:
    """A psycopg connection (JSON as text). Raises psycopg.OperationalError when unreachable.

    A reader (`read_only`) runs reports: JIT compilation off (it cost ~0.4 s of a 1M-row report
    and saves nothing on these plans) and room to group and sort in memory."""
    import psycopg
    from psycopg.types.string import TextLoader

    settings = {"jit": "off", "work_mem": "64MB"} if read_only else {}
    if timeout_ms:
        settings["statement_timeout"] = str(timeout_ms)
    options = " ".join(f"-c {k}={v}" for k, v in settings.items())
    conn = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, options=options or None)
    for name in ("json", "jsonb"):
        conn.adapters.register_loader(name, TextLoader)
    if read_only:
        conn.read_only = True
    return conn


# -- migrations --

MIGRATIONS: list[tuple[str, str]] = [
    (
        "p001_requests",
        """
        CREATE TABLE requests (
            request_id text NOT NULL,
            created_at timestamptz NOT NULL,
            source text NOT NULL DEFAULT 'proxy',
            provider text, api text, endpoint text, host text, method text, path text,
            model text, requested_model text,
            status integer, streamed boolean, latency_ms double precision, ttft_ms double precision,
            input_tokens bigint, output_tokens bigint, cache_read_tokens bigint,
            cache_write_tokens bigint, reasoning_tokens bigint, usage_source text,
            cost_usd numeric(18, 9), cost_note text, prices_version text,
            user_id text, session_id text, session_path text, session_name text,
            properties jsonb, request_headers jsonb, request_body text, response_body text, error text,
            cache_status text, cache_reference_id text, cost_saved_usd numeric(18, 9),
            rate_limited boolean, retries integer, attempts jsonb, fallback_index integer,
            latency_saved_ms double precision,
            proxy_id text, rate_limit_store text,
            PRIMARY KEY (request_id, created_at)
        ) PARTITION BY RANGE (created_at);
        CREATE INDEX requests_created_at ON requests USING brin (created_at);
        CREATE TABLE feedback (
            request_id text NOT NULL, rating boolean NOT NULL, created_at timestamptz NOT NULL
        );
        CREATE INDEX feedback_request_id ON feedback (request_id);
        CREATE TABLE scores (
            request_id text NOT NULL, name text NOT NULL, value bigint NOT NULL,
            created_at timestamptz NOT NULL
        );
        CREATE INDEX scores_request_id ON scores (request_id);
        """,
    ),
    (
        # The DuckDB functions the reports use, so that one report definition runs on both
        # (reports/dialect.py holds the few differences that a function cannot hide), and the
        # views the reports' rating and score filters read.
        "p002_report_support",
        """
        CREATE FUNCTION epoch_us(timestamptz) RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE
            AS $$ SELECT (extract(epoch FROM $1) * 1000000)::bigint $$;
        CREATE FUNCTION epoch_ms(timestamptz) RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE
            AS $$ SELECT (extract(epoch FROM $1) * 1000)::bigint $$;
        CREATE FUNCTION llmtap_idiv(bigint, bigint) RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE
            AS $$ SELECT $1 / $2 $$;
        CREATE OPERATOR // (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = llmtap_idiv);
        CREATE FUNCTION range(bigint, bigint) RETURNS TABLE (range bigint) LANGUAGE sql IMMUTABLE
            AS $$ SELECT generate_series($1, $2 - 1) $$;
        CREATE FUNCTION round(double precision, integer) RETURNS double precision LANGUAGE sql
            IMMUTABLE PARALLEL SAFE AS $$ SELECT round($1::numeric, $2)::double precision $$;
        CREATE FUNCTION contains(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
            AS $$ SELECT strpos($1, $2) > 0 $$;
        CREATE VIEW latest_feedback AS
            SELECT DISTINCT ON (request_id) request_id, rating, created_at
            FROM feedback ORDER BY request_id, created_at DESC;
        CREATE VIEW latest_scores AS
            SELECT DISTINCT ON (request_id, name) request_id, name, value, created_at
            FROM scores ORDER BY request_id, name, created_at DESC;
        """,
    ),
    (
        # The DuckDB file's other views (migrations.py: m005, and cache_savings as m006 redefined
        # it), with the same names, columns and values, so `llmtap sql` reads them on either log.
        # Days are UTC dates; integer sums are cast back to bigint (Postgres sums them as numeric);
        # hit_pct divides as double precision, as DuckDB's `/` does; session_name is DuckDB's
        # arg_max, as reports/dialect.py writes it. The one difference: request_scores.scores is a
        # jsonb object, `(scores->>'accuracy')::bigint`, where DuckDB has a MAP, `scores['accuracy']`
        # (jsonb orders its keys its own way; DuckDB's map is ordered by name).
        "p003_views",
        """
        CREATE VIEW daily_cost_by_model AS
            SELECT (created_at AT TIME ZONE 'UTC')::date AS day, provider, model,
                   count(*) AS calls,
                   sum(input_tokens)::bigint AS input_tokens,
                   sum(output_tokens)::bigint AS output_tokens,
                   sum(cost_usd) AS cost_usd,
                   count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced,
                   sum(cost_saved_usd) AS cost_saved_usd,
                   count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL) AS errors
            FROM requests
            GROUP BY 1, 2, 3;
        CREATE VIEW cost_by_user AS
            SELECT user_id,
                   count(*) AS calls,
                   sum(input_tokens)::bigint AS input_tokens,
                   sum(output_tokens)::bigint AS output_tokens,
                   sum(cost_usd) AS cost_usd,
                   count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced,
                   sum(cost_saved_usd) AS cost_saved_usd,
                   min(created_at) AS first_seen,
                   max(created_at) AS last_seen
            FROM requests
            GROUP BY user_id;
        CREATE VIEW cache_savings AS
            SELECT (created_at AT TIME ZONE 'UTC')::date AS day, provider, model,
                   count(*) AS lookups,
                   count(*) FILTER (WHERE cache_status = 'HIT') AS hits,
                   count(*) FILTER (WHERE cache_status = 'MISS') AS misses,
                   round(100 * count(*) FILTER (WHERE cache_status = 'HIT') / count(*)::double precision, 1)
                       AS hit_pct,
                   sum(cost_saved_usd) AS cost_saved_usd,
                   sum(latency_saved_ms) AS latency_saved_ms
            FROM requests
            WHERE cache_status IS NOT NULL
            GROUP BY 1, 2, 3;
        CREATE VIEW session_summary AS
            SELECT session_id,
                   (array_agg(session_name ORDER BY created_at DESC)
                       FILTER (WHERE session_name IS NOT NULL AND created_at IS NOT NULL))[1] AS session_name,
                   count(*) AS calls,
                   count(DISTINCT session_path) AS paths,
                   sum(input_tokens)::bigint AS input_tokens,
                   sum(output_tokens)::bigint AS output_tokens,
                   sum(cost_usd) AS cost_usd,
                   count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL) AS errors,
                   min(created_at) AS first_seen,
                   max(created_at) AS last_seen,
                   (max(epoch_ms(created_at) + coalesce(latency_ms, 0))
                       - min(epoch_ms(created_at)))::double precision / 1000 AS duration_s
            FROM requests
            WHERE session_id IS NOT NULL
            GROUP BY session_id;
        -- scores: a jsonb object name -> value, (scores->>'accuracy')::bigint; a MAP in DuckDB.
        CREATE VIEW request_scores AS
            SELECT r.request_id, r.created_at, r.provider, r.model, r.user_id, r.session_id,
                   r.session_path, r.properties, r.status, r.cost_usd, f.rating, s.scores
            FROM requests AS r
            LEFT JOIN latest_feedback AS f ON f.request_id = r.request_id
            LEFT JOIN (
                SELECT request_id, jsonb_object_agg(name, value) AS scores
                FROM latest_scores
                GROUP BY request_id
            ) AS s ON s.request_id = r.request_id;
        COMMENT ON VIEW latest_feedback IS
            'The rating that counts for each rated call: its latest feedback.';
        COMMENT ON VIEW latest_scores IS
            'The value that counts for each (call, score name): its latest score.';
        COMMENT ON VIEW daily_cost_by_model IS 'Calls, tokens and cost per UTC day, provider and model.';
        COMMENT ON VIEW cost_by_user IS
            'Calls, tokens and cost per user (user_id NULL: calls without a user).';
        COMMENT ON VIEW cache_savings IS
            'Response-cache lookups per UTC day, provider and model: hits, misses and what the hits'
            ' saved (the originals'' cost and latency).';
        COMMENT ON VIEW session_summary IS 'One row per session: calls, tokens, cost, errors and timing.';
        COMMENT ON VIEW request_scores IS
            'Every call with its latest rating and its latest scores (a jsonb object name -> value,'
            ' e.g. (scores->>''accuracy'')::bigint; a map in a DuckDB file).';
        COMMENT ON COLUMN request_scores.scores IS
            'The latest value of each score name (NULL: not scored), e.g. (scores->>''accuracy'')::bigint.';
        """,
    ),
    # The 15-minute rollup the reports and the dashboard read on long ranges, kept by triggers
    # (storage/rollup.py says why and how); built here from the calls already logged. Needs
    # Postgres 15 (UNIQUE NULLS NOT DISTINCT).
    ("p004_rollup", rollup.postgres_ddl()),
    # A model name longer than a btree entry allows (2,704 bytes) failed its batch: the key holds
    # its md5 (storage/rollup.py).
    ("p005_rollup_key", rollup.postgres_key()),
    (
        # What readers walk rather than read every call: the Requests log newest first, a page
        # after a (created_at, request_id) cursor (ui/, reports/catalog.log_page; BRIN gives no
        # order, so each page of a 90-day range sorted 10M rows, ~5 s); `top` the costliest calls
        # first; `sessions` the calls of the sessions it shows (reports/catalog.py). A hash index
        # takes a session id of any length, where a btree entry holds at most 2,704 bytes.
        "p006_read_indexes",
        """
        CREATE INDEX requests_newest ON requests (created_at, request_id);
        CREATE INDEX requests_cost ON requests (cost_usd DESC, created_at DESC, request_id)
            WHERE cost_usd IS NOT NULL;
        CREATE INDEX requests_session ON requests USING hash (session_id) WHERE session_id IS NOT NULL;
        """,
    ),
    # The daily rollup by user, session, property, model and provider (storage/rollup_by.py).
    ("p007_rollup_by_day", rollup_by.postgres_ddl()),
    # The daily rollup of failed calls the `errors` report reads (storage/rollup_errors.py).
    ("p008_errors_by_day", rollup_errors.postgres_ddl()),
    # The latency buckets and indexes the `latency` report finds exact percentiles by rank with
    # (storage/rollup_latency.py).
    ("p009_latency_by_day", rollup_latency.postgres_ddl()),
    # The figures of the rated and scored calls, which `--by rating` and `--by score:NAME` add up
    # (storage/annotated.py).
    ("p010_annotated_calls", annotated.postgres_ddl()),
]


def has_table(conn: Any, name: str) -> bool:
    """Whether a table (or view) of that name exists: a migration's, on a log not yet migrated."""
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()[0]


def applied(conn: Any) -> list[str]:
    if not has_table(conn, "_llmtap_migrations"):
        return []
    return [r[0] for r in conn.execute("SELECT name FROM _llmtap_migrations ORDER BY name")]


def pending(conn: Any) -> list[str]:
    done = set(applied(conn))
    return [name for name, _ in MIGRATIONS if name not in done]


def migrate(conn: Any) -> list[str]:
    """Apply the pending migrations in one transaction, serialised across writers by an advisory
    lock (a writer that waited finds them applied). Returns the names this call applied."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_MIGRATE])
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _llmtap_migrations"
            " (name text PRIMARY KEY, applied_at timestamptz NOT NULL)"
        )
        done = set(applied(conn))
        names = []
        for name, ddl in MIGRATIONS:
            if name in done:
                continue
            conn.execute(ddl)
            conn.execute("INSERT INTO _llmtap_migrations VALUES (%s, now())", [name])
            names.append(name)
    return names


# -- the writer's sink --


class PostgresSink:
    """What the writer thread calls for each flush when llmtap_db is a Postgres URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Any = None
        self._months: set[tuple[int, int]] = set()  # partitions known to exist

    def write(self, rows: Sequence[tuple[Any, ...]], notes: Sequence[Annotation]) -> None:
        """Rows and annotations in one transaction; raises (and reconnects next time) on failure."""
        import psycopg

        conn = self._connection()
        try:
            rows = [_clean(row) for row in rows]
            try:
                self._write(conn, rows, notes, "requests")
            except psycopg.errors.UniqueViolation:  # a retried batch that was committed before
                self._write(conn, rows, notes, "staging")
        except Exception:
            if conn.closed or conn.broken:
                self.close()
            raise

    def _write(self, conn: Any, rows: list[tuple[Any, ...]], notes: Sequence[Annotation], via: str) -> None:
        with conn.transaction():
            made = self._partitions(conn, rows)
            if via == "staging":
                conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS staging (LIKE requests INCLUDING DEFAULTS)"
                    " ON COMMIT DELETE ROWS"
                )
            with conn.cursor() as cur, cur.copy(_COPY.format(table=via)) as copy:
                for row in rows:
                    copy.write_row(row)
            if via == "staging":
                conn.execute("INSERT INTO requests SELECT * FROM staging ON CONFLICT DO NOTHING")
            write_annotations(conn, notes)
        self._months |= made  # committed: a rolled-back CREATE TABLE must be made again next time

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            conn = connect(self.url)
            try:
                conn.autocommit = True  # transactions are explicit (conn.transaction())
                migrate(conn)
                # Bodies compress ~2x faster with lz4 than the default pglz; a server built
                # without it keeps pglz.
                conn.execute(
                    "SELECT set_config('default_toast_compression', 'lz4', false)"
                    " WHERE 'lz4' = ANY (SELECT unnest(enumvals) FROM pg_settings"
                    " WHERE name = 'default_toast_compression')"
                )
            except Exception:
                conn.close()
                raise
            self._conn = conn
            self._months = set()
        return self._conn

    def _partitions(self, conn: Any, rows: Iterable[tuple[Any, ...]]) -> set[tuple[int, int]]:
        """Create the monthly partitions these rows need (and the next month's, ahead of time), in
        the caller's transaction; the months created, which exist once it commits."""
        months = {(t.year, t.month) for r in rows if (t := r[1].astimezone(UTC))}
        if not months and not self._months:
            now = datetime.now(UTC)
            months = {(now.year, now.month)}
        months |= {_next(m) for m in months}
        todo = months - self._months
        if not todo:
            return todo
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_PARTITION])
        for year, month in sorted(todo):
            start, end = _month_start(year, month), _month_start(*_next((year, month)))
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS requests_y{year:04d}m{month:02d} PARTITION OF requests"
                f" FOR VALUES FROM ('{start}') TO ('{end}')"
            )
        return todo

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def _next(month: tuple[int, int]) -> tuple[int, int]:
    year, m = month
    return (year + 1, 1) if m == 12 else (year, m + 1)


def _month_start(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}-01 00:00:00+00"


def _clean(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """NUL is the one character Postgres text and JSON refuse: U+FFFD instead (rare: a check per
    text column, no copy of the row when there is none)."""
    bad = [k for k in _TEXT if isinstance(row[k], str) and "\x00" in row[k]]
    bad += [k for k in _JSON if isinstance(row[k], str) and "\\u0000" in row[k]]
    if not bad:
        return row
    values = list(row)
    for k in bad:
        values[k] = values[k].replace("\x00", "\ufffd").replace("\\u0000", "\\ufffd")
    return tuple(values)


def write_annotations(conn: Any, notes: Sequence[Annotation]) -> None:
    """Feedback, scores and late properties, as writer.write_annotations does for DuckDB."""
    feedback, scores, patches = annotation_rows(notes)
    with conn.cursor() as cur:
        if feedback:
            cur.executemany("INSERT INTO feedback VALUES (%s, %s, %s)", feedback)
        if scores:
            cur.executemany("INSERT INTO scores VALUES (%s, %s, %s, %s)", scores)
        for patch in patches:
            cur.execute(
                "UPDATE requests SET properties = coalesce(properties, '{}'::jsonb) || %s::jsonb"
                " WHERE request_id = %s",
                list(patch),
            )


# -- readers --

_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def execute(conn: Any, sql: str, params: dict[str, Any] | None = None) -> Any:
    """The cursor of one statement; `$name` parameters, as DuckDB writes them."""
    if params:
        sql = _PARAM.sub(lambda m: f"%({m.group(1)})s", sql.replace("%", "%%"))
    return conn.execute(sql, params or None)


def fetch(conn: Any, sql: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
    """Columns and rows of one statement."""
    cur = execute(conn, sql, params)
    if cur.description is None:  # SET and the like
        return [], []
    return [d.name for d in cur.description], cur.fetchall()


def is_connection(conn: object) -> bool:
    return type(conn).__module__.startswith("psycopg")


def touches_files(conn: Any) -> str | None:
    """The session's role when it may reach the server's files or programs: a superuser, or a
    member of a superuser role or of pg_read_server_files and its kin; else None. Such a role can
    switch to those from inside a query (`set_config('role', ...)`): no wrapper confines its SQL."""
    row = conn.execute(
        "SELECT session_user FROM pg_roles AS r WHERE (r.rolsuper OR r.rolname IN"
        " ('pg_read_server_files', 'pg_write_server_files', 'pg_execute_server_program'))"
        " AND pg_has_role(session_user, r.oid, 'MEMBER') LIMIT 1"
    ).fetchone()
    return row[0] if row is not None else None


def has_request(conn: Any, request_id: str) -> bool:
    return conn.execute("SELECT 1 FROM requests WHERE request_id = %s", [request_id]).fetchone() is not None
