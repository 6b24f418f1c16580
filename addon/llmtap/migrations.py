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

Migration = Callable[[duckdb.DuckDBPyConnection], None]
MIGRATIONS: list[Migration] = []
_NAME = re.compile(r"^m(\d{3})_\w+$")


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
    """Names already applied (read-only)."""
    exists = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = '_llmtap_migrations'"
    ).fetchone()
    if not exists or not exists[0]:
        return []
    return [r[0] for r in conn.execute("SELECT name FROM _llmtap_migrations ORDER BY name").fetchall()]


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
