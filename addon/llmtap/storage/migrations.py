"""Numbered schema migrations, applied in order on every open.

A migration is a function registered with `@migration`; its name (`m001_...`) is its identity,
recorded in `_llmtap_migrations` with the time it ran, inside the same transaction as its DDL.
Migrations are additive and never edited once released: a new column is a new migration.
Registration rejects a duplicate or out-of-order number, so the sequence stays honest.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import duckdb

from llmtap.storage import rollup

Migration = Callable[[duckdb.DuckDBPyConnection], None]
MIGRATIONS: list[Migration] = []
_NAME = re.compile(r"^m(\d{3})_\w+$")
# A UTC date from created_at with integer arithmetic, so the views that group by day stay cheap.
_DAY = "DATE '1970-01-01' + CAST(epoch_us(created_at) // 86400000000 AS INTEGER)"


def migration(fn: Migration) -> Migration:
    m = _NAME.match(fn.__name__)
    if m is None:
        raise ValueError(f"migration name must look like m001_name, got {fn.__name__!r}")
    number = int(m.group(1))
    if number != len(MIGRATIONS) + 1:
        raise ValueError(f"migration {fn.__name__} is out of sequence: expected m{len(MIGRATIONS) + 1:03d}")
    MIGRATIONS.append(fn)
    return fn


def applied(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Names already applied (read-only). Asked directly, not via information_schema, because the
    writer asks on every flush and binding that view costs ~10 ms."""
    try:
        rows = conn.execute("SELECT name FROM _llmtap_migrations ORDER BY name").fetchall()
    except duckdb.CatalogException:  # a new file
        return []
    return [r[0] for r in rows]


def pending(conn: duckdb.DuckDBPyConnection) -> list[Migration]:
    done = set(applied(conn))
    return [m for m in MIGRATIONS if m.__name__ not in done]


def migrate(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply every pending migration, each in its own transaction; return the names applied."""
    todo = pending(conn)
    if not todo:
        return []
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _llmtap_migrations"
        " (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
    )
    names = []
    for fn in todo:
        conn.execute("BEGIN TRANSACTION")
        try:
            fn(conn)
            conn.execute("INSERT INTO _llmtap_migrations VALUES (?, now())", [fn.__name__])
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
        names.append(fn.__name__)
    return names


@migration
def m001_requests(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(
        """
        CREATE TABLE requests (
            request_id VARCHAR NOT NULL,        -- the Helicone-Id returned to the client
            created_at TIMESTAMPTZ NOT NULL,    -- when the client started sending the request
            source VARCHAR NOT NULL DEFAULT 'proxy',
            provider VARCHAR,                   -- openai, anthropic, google, ... or a rules.yaml name
            api VARCHAR,                        -- wire format: openai | anthropic | gemini
            endpoint VARCHAR,                   -- chat, responses, embeddings, messages, generate...
            host VARCHAR,
            method VARCHAR,
            path VARCHAR,                       -- query parameters that look like keys are redacted
            model VARCHAR,                      -- as the provider reported it, else as requested
            requested_model VARCHAR,
            status INTEGER,                     -- NULL when no response arrived
            streamed BOOLEAN,
            latency_ms DOUBLE,                  -- request start to last byte (or to the failure)
            ttft_ms DOUBLE,                     -- request start to first generated token (streams)
            input_tokens BIGINT,                -- all prompt-side tokens, cached and cache-write included
            output_tokens BIGINT,               -- all completion tokens, reasoning included
            cache_read_tokens BIGINT,           -- part of input_tokens
            cache_write_tokens BIGINT,          -- part of input_tokens
            reasoning_tokens BIGINT,            -- part of output_tokens
            usage_source VARCHAR,               -- 'response' | 'estimated' | NULL
            cost_usd DECIMAL(18, 9),            -- NULL when unknown, never 0 for unknown
            cost_note VARCHAR,                  -- why cost is NULL, estimated or provider-reported
            prices_version VARCHAR,             -- genai-prices version that priced the row
            user_id VARCHAR,
            session_id VARCHAR,
            session_path VARCHAR,
            session_name VARCHAR,
            properties JSON,                    -- Helicone-Property-* (keys lowercased)
            request_headers JSON,               -- secrets redacted
            request_body VARCHAR,               -- NULL when omitted (Helicone-Omit-Request)
            response_body VARCHAR,              -- NULL when omitted; streams as their SSE text
            error VARCHAR
        )
        """
    )


@migration
def m002_cache_columns(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("ALTER TABLE requests ADD COLUMN cache_status VARCHAR")  # 'HIT' | 'MISS' | NULL (not read)
    conn.execute("ALTER TABLE requests ADD COLUMN cache_reference_id VARCHAR")  # the original call of a hit
    conn.execute("ALTER TABLE requests ADD COLUMN cost_saved_usd DECIMAL(18, 9)")  # a hit's original cost


@migration
def m003_delivery_columns(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("ALTER TABLE requests ADD COLUMN rate_limited BOOLEAN")  # answered 429 by llmtap
    conn.execute("ALTER TABLE requests ADD COLUMN retries INTEGER")  # extra attempts on the primary
    conn.execute("ALTER TABLE requests ADD COLUMN attempts JSON")  # each attempt's target, status, latency
    conn.execute("ALTER TABLE requests ADD COLUMN fallback_index INTEGER")  # which fallback answered


@migration
def m004_feedback_and_scores(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(
        """
        CREATE TABLE feedback (
            request_id VARCHAR NOT NULL,        -- requests.request_id
            rating BOOLEAN NOT NULL,            -- true: thumbs up
            created_at TIMESTAMPTZ NOT NULL
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE scores (
            request_id VARCHAR NOT NULL,        -- requests.request_id
            name VARCHAR NOT NULL,              -- e.g. accuracy, is_safe
            value BIGINT NOT NULL,              -- integers; booleans are stored as 1 / 0 (Helicone)
            created_at TIMESTAMPTZ NOT NULL
        )
        """
    )


@migration
def m005_views_and_comments(conn: duckdb.DuckDBPyConnection) -> None:
    """Views for common questions, and a comment on every table, view and column.

    docs/schema.md is generated from these comments (`llmtap schema`); a column added by a later
    migration gets its `COMMENT ON COLUMN` there too (a test checks that none is missing).
    Days in the views are UTC dates, computed with integer arithmetic so the views stay cheap.
    """
    day = _DAY
    conn.execute(
        """
        CREATE VIEW latest_feedback AS
        SELECT request_id, arg_max(rating, created_at) AS rating, max(created_at) AS created_at
        FROM feedback
        GROUP BY request_id
        """
    )
    conn.execute(
        """
        CREATE VIEW latest_scores AS
        SELECT request_id, name, arg_max(value, created_at) AS value, max(created_at) AS created_at
        FROM scores
        GROUP BY request_id, name
        """
    )
    conn.execute(
        f"""
        CREATE VIEW daily_cost_by_model AS
        SELECT {day} AS day, provider, model,
               count(*) AS calls,
               sum(input_tokens) AS input_tokens,
               sum(output_tokens) AS output_tokens,
               sum(cost_usd) AS cost_usd,
               count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced,
               sum(cost_saved_usd) AS cost_saved_usd,
               count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL) AS errors
        FROM requests
        GROUP BY 1, 2, 3
        """
    )
    conn.execute(
        """
        CREATE VIEW cost_by_user AS
        SELECT user_id,
               count(*) AS calls,
               sum(input_tokens) AS input_tokens,
               sum(output_tokens) AS output_tokens,
               sum(cost_usd) AS cost_usd,
               count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced,
               sum(cost_saved_usd) AS cost_saved_usd,
               min(created_at) AS first_seen,
               max(created_at) AS last_seen
        FROM requests
        GROUP BY user_id
        """
    )
    conn.execute(
        f"""
        CREATE VIEW cache_savings AS
        WITH originals AS (
            SELECT request_id, any_value(latency_ms) AS latency_ms
            FROM requests
            WHERE request_id IN (SELECT cache_reference_id FROM requests WHERE cache_status = 'HIT')
            GROUP BY request_id
        )
        SELECT {day} AS day, r.provider, r.model,
               count(*) AS lookups,
               count(*) FILTER (WHERE r.cache_status = 'HIT') AS hits,
               count(*) FILTER (WHERE r.cache_status = 'MISS') AS misses,
               round(100 * count(*) FILTER (WHERE r.cache_status = 'HIT') / count(*), 1) AS hit_pct,
               sum(r.cost_saved_usd) AS cost_saved_usd,
               sum(o.latency_ms) AS latency_saved_ms
        FROM requests AS r
        LEFT JOIN originals AS o ON o.request_id = r.cache_reference_id
        WHERE r.cache_status IS NOT NULL
        GROUP BY 1, 2, 3
        """
    )
    conn.execute(
        """
        CREATE VIEW session_summary AS
        SELECT session_id,
               arg_max(session_name, created_at) AS session_name,
               count(*) AS calls,
               count(DISTINCT session_path) AS paths,
               sum(input_tokens) AS input_tokens,
               sum(output_tokens) AS output_tokens,
               sum(cost_usd) AS cost_usd,
               count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL) AS errors,
               min(created_at) AS first_seen,
               max(created_at) AS last_seen,
               (max(epoch_ms(created_at) + coalesce(latency_ms, 0)) - min(epoch_ms(created_at))) / 1000
                   AS duration_s
        FROM requests
        WHERE session_id IS NOT NULL
        GROUP BY session_id
        """
    )
    conn.execute(
        """
        CREATE VIEW request_scores AS
        SELECT r.request_id, r.created_at, r.provider, r.model, r.user_id, r.session_id, r.session_path,
               r.properties, r.status, r.cost_usd, f.rating, s.scores
        FROM requests AS r
        LEFT JOIN latest_feedback AS f ON f.request_id = r.request_id
        LEFT JOIN (
            SELECT request_id, map(list(name ORDER BY name), list(value ORDER BY name)) AS scores
            FROM latest_scores
            GROUP BY request_id
        ) AS s ON s.request_id = r.request_id
        """
    )

    tables = {
        "requests": "One row per LLM call seen by the proxy (or logged through the local API).",
        "feedback": "Thumbs up / down given to a call; the latest row per request counts.",
        "scores": "Named integer scores given to a call; the latest row per (request, name) counts.",
        "_llmtap_migrations": "The schema migrations applied to this file, in order.",
    }
    views = {
        "latest_feedback": "The rating that counts for each rated call: its latest feedback.",
        "latest_scores": "The value that counts for each (call, score name): its latest score.",
        "daily_cost_by_model": "Calls, tokens and cost per UTC day, provider and model.",
        "cost_by_user": "Calls, tokens and cost per user (user_id NULL: calls without a user).",
        "cache_savings": (
            "Response-cache lookups per UTC day, provider and model: hits, misses and what the hits"
            " saved (the originals' cost and latency)."
        ),
        "session_summary": "One row per session: calls, tokens, cost, errors and timing.",
        "request_scores": "Every call with its latest rating and its latest scores (a map name -> value).",
    }
    columns = {
        "requests": {
            "request_id": (
                "The Helicone-Id returned to the client (its Helicone-Request-Id when that is a UUID)."
            ),
            "created_at": "When the client started sending the request.",
            "source": "How the row arrived: 'proxy' (seen by the proxy) or 'async' (POST /custom/v1/log).",
            "provider": "openai, anthropic, google, ... or a provider name from rules.yaml.",
            "api": "Wire format: openai | anthropic | gemini.",
            "endpoint": "chat, responses, completions, embeddings, messages, generate, ...",
            "host": "The original destination host.",
            "method": "HTTP method.",
            "path": "The original path; query parameters that look like keys are redacted.",
            "model": "The model as the provider reported it, else as the request named it.",
            "requested_model": "The model the request named.",
            "status": "HTTP status of the answer; NULL when no response arrived.",
            "streamed": "True for streamed (SSE) responses.",
            "latency_ms": "Milliseconds from request start to the last byte (or to the failure).",
            "ttft_ms": "Milliseconds from request start to the first generated token (streams).",
            "input_tokens": "All prompt-side tokens, cached and cache-write included.",
            "output_tokens": "All completion tokens, reasoning included.",
            "cache_read_tokens": (
                "Prompt tokens read from the provider's prompt cache (part of input_tokens)."
            ),
            "cache_write_tokens": (
                "Prompt tokens written to the provider's prompt cache (part of input_tokens)."
            ),
            "reasoning_tokens": "Reasoning tokens (part of output_tokens).",
            "usage_source": "'response' (reported by the provider), 'estimated', or NULL.",
            "cost_usd": (
                "Cost in USD from genai-prices; NULL when unknown (never 0 for unknown); 0 for cache hits."
            ),
            "cost_note": "Why the cost is NULL, estimated, reported by the provider, or guessed.",
            "prices_version": "The genai-prices version that priced the row.",
            "user_id": "Helicone-User-Id (fallback: the request body's user).",
            "session_id": "Helicone-Session-Id.",
            "session_path": (
                "Helicone-Session-Path, e.g. /parent/child (the call's place in the session tree)."
            ),
            "session_name": "Helicone-Session-Name.",
            "properties": (
                "JSON object of Helicone-Property-* values (keys lowercased), plus properties set later."
            ),
            "request_headers": "Request headers as JSON, secrets redacted.",
            "request_body": "Request body; NULL when omitted (Helicone-Omit-Request).",
            "response_body": (
                "Response body (streams as their SSE text); NULL when omitted (Helicone-Omit-Response)."
            ),
            "error": "What went wrong (connection error, client disconnect, ...); NULL when nothing did.",
            "cache_status": "'HIT' or 'MISS' when the call asked to read the response cache; NULL otherwise.",
            "cache_reference_id": (
                "For a cache hit: the request_id of the original call it was answered from."
            ),
            "cost_saved_usd": "For a cache hit: the original call's cost.",
            "rate_limited": "True when llmtap's rate limits answered the call with a 429.",
            "retries": "Extra attempts llmtap made on the primary target; NULL when it made none itself.",
            "attempts": "JSON list of every attempt: target, status, latency, error.",
            "fallback_index": "Which fallback answered (Helicone-Fallback-Index); NULL: the primary.",
        },
        "feedback": {
            "request_id": "The call rated (requests.request_id).",
            "rating": "true: thumbs up; false: thumbs down.",
            "created_at": "When the feedback was given.",
        },
        "scores": {
            "request_id": "The call scored (requests.request_id).",
            "name": "Score name, e.g. accuracy, is_safe.",
            "value": "The score: an integer; booleans are stored as 1 / 0 (as in Helicone).",
            "created_at": "When the score was given.",
        },
        "_llmtap_migrations": {
            "name": "Migration name, mNNN_what.",
            "applied_at": "When it was applied to this file.",
        },
        "latest_feedback": {
            "request_id": "The call rated.",
            "rating": "Its latest rating (true: thumbs up).",
            "created_at": "When that rating was given.",
        },
        "latest_scores": {
            "request_id": "The call scored.",
            "name": "Score name.",
            "value": "Its latest value for that name.",
            "created_at": "When that value was given.",
        },
        "daily_cost_by_model": {
            "day": "UTC date of created_at.",
            "provider": "requests.provider.",
            "model": "requests.model.",
            "calls": "Number of calls.",
            "input_tokens": "Sum of input_tokens.",
            "output_tokens": "Sum of output_tokens.",
            "cost_usd": "Sum of the known costs (NULL when none is known).",
            "unpriced": "Calls whose cost is unknown (not in cost_usd).",
            "cost_saved_usd": "Sum of cost_saved_usd: what cache hits saved.",
            "errors": "Calls with status >= 400 or an error.",
        },
        "cost_by_user": {
            "user_id": "requests.user_id (NULL: calls without a user).",
            "calls": "Number of calls.",
            "input_tokens": "Sum of input_tokens.",
            "output_tokens": "Sum of output_tokens.",
            "cost_usd": "Sum of the known costs (NULL when none is known).",
            "unpriced": "Calls whose cost is unknown (not in cost_usd).",
            "cost_saved_usd": "Sum of cost_saved_usd: what cache hits saved.",
            "first_seen": "The user's first call.",
            "last_seen": "The user's last call.",
        },
        "cache_savings": {
            "day": "UTC date of created_at.",
            "provider": "requests.provider.",
            "model": "requests.model.",
            "lookups": "Calls that asked to read the response cache (cache_status HIT or MISS).",
            "hits": "Calls answered from the cache.",
            "misses": "Calls that asked to read the cache and went to the provider.",
            "hit_pct": "100 * hits / lookups, rounded to 0.1.",
            "cost_saved_usd": "What the hits would have cost: the originals' cost.",
            "latency_saved_ms": (
                "What the hits would have waited: the originals' latency_ms (via cache_reference_id)."
            ),
        },
        "session_summary": {
            "session_id": "requests.session_id.",
            "session_name": "The latest session_name seen in the session.",
            "calls": "Number of calls.",
            "paths": "Distinct session_path values (nodes of the session tree with calls).",
            "input_tokens": "Sum of input_tokens.",
            "output_tokens": "Sum of output_tokens.",
            "cost_usd": "Sum of the known costs (NULL when none is known).",
            "errors": "Calls with status >= 400 or an error.",
            "first_seen": "Start of the first call.",
            "last_seen": "Start of the last call.",
            "duration_s": "Seconds from the start of the first call to the end of the last one.",
        },
        "request_scores": {
            "request_id": "requests.request_id.",
            "created_at": "requests.created_at.",
            "provider": "requests.provider.",
            "model": "requests.model.",
            "user_id": "requests.user_id.",
            "session_id": "requests.session_id.",
            "session_path": "requests.session_path.",
            "properties": "requests.properties.",
            "status": "requests.status.",
            "cost_usd": "requests.cost_usd.",
            "rating": "The latest rating (true: thumbs up; NULL: not rated).",
            "scores": "The latest value of each score name (NULL: not scored), e.g. scores['accuracy'].",
        },
    }
    for name, text in tables.items():
        conn.execute(f"COMMENT ON TABLE {name} IS {_quote(text)}")
    for name, text in views.items():
        conn.execute(f"COMMENT ON VIEW {name} IS {_quote(text)}")
    for relation, texts in columns.items():
        for column, text in texts.items():
            conn.execute(f"COMMENT ON COLUMN {relation}.{column} IS {_quote(text)}")


@migration
def m006_latency_saved(conn: duckdb.DuckDBPyConnection) -> None:
    """A hit's saved latency on its own row, so cache reports need no join to the originals.

    The join by cache_reference_id cost ~0.8 s at 1.5M hits in 10M rows (scripts/bench_reports.py).
    Hits written before this migration get it from their originals; cache_savings is redefined
    on the column, keeping its comments."""
    conn.execute("ALTER TABLE requests ADD COLUMN latency_saved_ms DOUBLE")
    conn.execute(
        """
        UPDATE requests AS h SET latency_saved_ms = o.latency_ms
        FROM (SELECT request_id, any_value(latency_ms) AS latency_ms FROM requests
              WHERE cache_status IS DISTINCT FROM 'HIT' GROUP BY request_id) AS o
        WHERE h.cache_status = 'HIT' AND o.request_id = h.cache_reference_id
        """
    )
    view = conn.execute("SELECT comment FROM duckdb_views() WHERE view_name = 'cache_savings'").fetchone()
    columns = conn.execute(
        "SELECT column_name, comment FROM duckdb_columns() WHERE table_name = 'cache_savings'"
    ).fetchall()
    conn.execute(
        f"""
        CREATE OR REPLACE VIEW cache_savings AS
        SELECT {_DAY} AS day, provider, model,
               count(*) AS lookups,
               count(*) FILTER (WHERE cache_status = 'HIT') AS hits,
               count(*) FILTER (WHERE cache_status = 'MISS') AS misses,
               round(100 * count(*) FILTER (WHERE cache_status = 'HIT') / count(*), 1) AS hit_pct,
               sum(cost_saved_usd) AS cost_saved_usd,
               sum(latency_saved_ms) AS latency_saved_ms
        FROM requests
        WHERE cache_status IS NOT NULL
        GROUP BY 1, 2, 3
        """
    )
    if view is not None and view[0]:
        conn.execute(f"COMMENT ON VIEW cache_savings IS {_quote(view[0])}")
    for column, text in columns:
        if column == "latency_saved_ms":
            text = "Sum of latency_saved_ms: what the hits would have waited."
        if text:
            conn.execute(f"COMMENT ON COLUMN cache_savings.{column} IS {_quote(text)}")
    conn.execute(
        "COMMENT ON COLUMN requests.latency_saved_ms IS "
        + _quote("For a cache hit: the original call's latency_ms, what the hit did not wait.")
    )


@migration
def m007_rollup(conn: duckdb.DuckDBPyConnection) -> None:
    """`requests_15m`, the 15-minute rollup the dashboard reads on long ranges (storage/rollup.py),
    built from the calls already logged: ~5 s for 10M calls, once."""
    keys = [("qb", "BIGINT NOT NULL", f"The 15-minute bucket: epoch_us(created_at) // {rollup.BUCKET_US}."),
            ("provider", "VARCHAR", "As in requests."), ("model", "VARCHAR", "As in requests.")]  # fmt: skip
    columns = keys + [(name, kind, text) for name, _, kind, text in rollup.MEASURES]
    conn.execute(f"CREATE TABLE {rollup.TABLE} ({', '.join(f'{n} {k}' for n, k, _ in columns)})")
    rollup.rebuild(conn)
    conn.execute(
        f"COMMENT ON TABLE {rollup.TABLE} IS "
        + _quote(
            "Calls, tokens, cost, errors and cache lookups per 15 minutes (qb), provider and model,"
            " kept by the writer in each batch's transaction. For the dashboard's long ranges;"
            " query requests for anything else."
        )
    )
    for name, _, text in columns:
        conn.execute(f"COMMENT ON COLUMN {rollup.TABLE}.{name} IS {_quote(text)}")


@migration
def m008_fleet_columns(conn: duckdb.DuckDBPyConnection) -> None:
    """Which proxy logged a call, and where its rate limits were kept (fleet mode, fleet/)."""
    conn.execute("ALTER TABLE requests ADD COLUMN proxy_id VARCHAR")
    conn.execute("ALTER TABLE requests ADD COLUMN rate_limit_store VARCHAR")
    texts = {
        "proxy_id": "The proxy that logged the call (option llmtap_proxy_id, default host:worker).",
        "rate_limit_store": "Where the call's rate limits were checked: 'redis' (shared by the fleet),"
        " 'local' (this process only: Redis was unreachable, or none is set); NULL: no limit applied.",
    }
    for column, text in texts.items():
        conn.execute(f"COMMENT ON COLUMN requests.{column} IS {_quote(text)}")


def _quote(text: str) -> str:
    """A SQL string literal (COMMENT ON takes no parameters)."""
    return "'" + text.replace("'", "''") + "'"
