"""Every llmtap option, in one place.

Set them with mitmproxy's `--set name=value`; the defaults also read environment variables
(`LLMTAP_DB`, `LLMTAP_RULES`, `LLMTAP_REDIS`, ...) so `llmtap proxy` and `mitmdump -s` agree.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

STORE_OPTIONS = (
    "llmtap_db",
    "llmtap_queue_size",
    "llmtap_flush_ms",
    "llmtap_cache",
    "llmtap_cache_max_mb",
    "llmtap_redis",
)


def _default_rules() -> str:
    if "LLMTAP_RULES" in os.environ:
        return os.environ["LLMTAP_RULES"]
    return "rules.yaml" if Path("rules.yaml").is_file() else ""


def default_proxy_id() -> str:
    """host:worker (`llmtap proxy --workers N` numbers its workers in LLMTAP_WORKER)."""
    return f"{socket.gethostname()}:{os.environ.get('LLMTAP_WORKER', '0')}"


def register(loader: Any) -> None:
    loader.add_option(
        "llmtap_db",
        str,
        os.environ.get("LLMTAP_DB", "llmtap.duckdb"),
        "DuckDB file that receives one row per LLM call, or a postgresql:// URL: the fleet's log"
        " (env LLMTAP_DB).",
    )
    loader.add_option(
        "llmtap_rules",
        str,
        _default_rules(),
        """
        rules.yaml with extra provider hosts and policies (env LLMTAP_RULES; default ./rules.yaml
        when it exists). An invalid file refuses to start.
        """,
    )
    loader.add_option(
        "llmtap_access_key",
        str,
        os.environ.get("LLMTAP_ACCESS_KEY", ""),
        """
        When set, LLM calls must carry `Helicone-Auth: Bearer <key>` or get a 401 from the proxy
        (env LLMTAP_ACCESS_KEY). Off by default.
        """,
    )
    loader.add_option(
        "llmtap_max_body",
        int,
        1_000_000,
        "Bytes of each request/response body stored; longer stream bodies keep head and tail.",
    )
    loader.add_option(
        "llmtap_stream_usage",
        bool,
        True,
        """
        Add stream_options.include_usage to OpenAI-style streams that lack it, so tokens are
        exact, and hide the extra usage chunk from the client.
        """,
    )
    loader.add_option(
        "llmtap_cache",
        str,
        os.environ.get("LLMTAP_CACHE", "llmtap-cache.sqlite"),
        "SQLite file of the response cache (env LLMTAP_CACHE). Kept across restarts.",
    )
    loader.add_option(
        "llmtap_cache_max_mb",
        int,
        1024,
        "Size bound of the response cache; past it the least recently used entries are evicted.",
    )
    loader.add_option(
        "llmtap_api",
        str,
        os.environ.get("LLMTAP_API", "127.0.0.1:8788"),
        """
        host:port of the local API (feedback, scores, properties, async logging), served by the
        proxy process; empty turns it off (env LLMTAP_API). Off loopback it needs llmtap_api_key.
        """,
    )
    loader.add_option(
        "llmtap_api_key",
        str,
        os.environ.get("LLMTAP_API_KEY", ""),
        "Bearer key the local API requires (env LLMTAP_API_KEY); required when not on loopback.",
    )
    loader.add_option(
        "llmtap_queue_size",
        int,
        10_000,
        "Records held in memory for the writer; beyond this new records are dropped and counted.",
    )
    loader.add_option(
        "llmtap_flush_ms",
        int,
        1000,
        "Milliseconds between database writes; a kill -9 loses at most this much.",
    )
    loader.add_option(
        "llmtap_redis",
        str,
        os.environ.get("LLMTAP_REDIS", ""),
        """
        Redis (or Valkey) URL, redis:// rediss:// or unix:// (env LLMTAP_REDIS): rate-limit buckets
        and the response cache live there, shared by every proxy that names it. Empty: in-process
        buckets and the SQLite cache file.
        """,
    )
    loader.add_option(
        "llmtap_proxy_id",
        str,
        os.environ.get("LLMTAP_PROXY_ID", "") or default_proxy_id(),
        "Stamped on every row as proxy_id (env LLMTAP_PROXY_ID; default host:worker).",
    )
