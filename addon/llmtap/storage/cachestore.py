"""Where cached responses live: one SQLite file, separate from the DuckDB log.

SQLite fits the job: point lookups by primary key take microseconds, WAL mode lets the proxy read
while its writer thread saves, and `llmtap cache ...` can open the file while the proxy runs
(DuckDB's single writer belongs to the log). Each thread uses its own connection.

Entries hold what a replay needs (status, content type, the body exactly as the client saw it,
streams as their SSE text) plus what the log needs for a hit (the original request id, tokens,
cost). No request data is stored: the key is a hash, and secrets never reach this file.
The size is bounded (`max_bytes`): past it, the least recently used entries go first. Expired
entries are never served and are deleted as the writer passes by. The clock is injectable.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, fields
from decimal import Decimal
from pathlib import Path

from llmtap.accounting.entry import Entry

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    seed TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    last_used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    status INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    streamed INTEGER NOT NULL,
    body BLOB NOT NULL,
    provider TEXT,
    model TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cache_read_tokens INTEGER,
    cache_write_tokens INTEGER,
    reasoning_tokens INTEGER,
    usage_source TEXT,
    cost_usd TEXT,
    latency_ms REAL
);
CREATE INDEX IF NOT EXISTS entries_last_used ON entries (last_used);
CREATE INDEX IF NOT EXISTS entries_seed ON entries (seed);
"""


_ENTRY_COLUMNS = [f.name for f in fields(Entry)]
_INSERT = (
    f"INSERT OR REPLACE INTO entries (key, expires, last_used, hits, size, {', '.join(_ENTRY_COLUMNS)}) "
    f"VALUES (?, ?, ?, 0, ?, {', '.join('?' * len(_ENTRY_COLUMNS))})"
)


class CacheStore:
    def __init__(
        self, path: str | Path, max_bytes: int = 1 << 30, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = str(path)
        self.max_bytes = max_bytes
        self.clock = clock
        self._local = threading.local()
        self._size: int | None = None
        with self._conn() as conn:
            conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=5, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def get(self, keys: list[str]) -> list[Entry | None]:
        """Live entries for the given slot keys, in order (None for an empty or expired slot)."""
        marks = ",".join("?" * len(keys))
        sql = f"SELECT key, {', '.join(_ENTRY_COLUMNS)} FROM entries WHERE key IN ({marks}) AND expires > ?"
        found = {row[0]: _entry(row[1:]) for row in self._conn().execute(sql, [*keys, self.clock()])}
        return [found.get(k) for k in keys]

    def pick(self, keys: list[str]) -> tuple[int, Entry] | None:
        return pick(self.get(keys))

    def put(
        self, keys: list[str], entry: Entry, ttl: float, prefer: int | None = None, since: float | None = None
    ) -> int | None:
        """Save into slot `prefer` if it is free, else the first free (or expired) slot; None when
        the bucket is already full. The TTL counts from `since` (when the response arrived: the
        writer saves it later), by default from now."""
        now = self.clock()
        start = min(now, since) if since is not None else now
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            taken = {r[0] for r in conn.execute(
                f"SELECT key FROM entries WHERE key IN ({','.join('?' * len(keys))}) AND expires > ?",
                [*keys, now],
            )}  # fmt: skip
            free = first_free([k in taken for k in keys], prefer)
            if free is not None:
                values = asdict(entry)
                values.update(created=start, cost_usd=None if entry.cost_usd is None else str(entry.cost_usd))
                conn.execute(
                    _INSERT,
                    [keys[free], start + ttl, now, len(entry.body), *(values[c] for c in _ENTRY_COLUMNS)],
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if free is not None:
            self._evict(len(entry.body))
        return free

    def touch(self, key: str) -> None:
        self._conn().execute(
            "UPDATE entries SET hits = hits + 1, last_used = ? WHERE key = ?", [self.clock(), key]
        )

    def _evict(self, added: int) -> None:
        conn = self._conn()
        if self._size is None:
            self._size = conn.execute("SELECT coalesce(sum(size), 0) FROM entries").fetchone()[0]
        else:
            self._size += added
        if self._size <= self.max_bytes:
            return
        conn.execute("DELETE FROM entries WHERE expires <= ?", [self.clock()])
        target = int(self.max_bytes * 0.9)
        total = conn.execute("SELECT coalesce(sum(size), 0) FROM entries").fetchone()[0]
        doomed: list[str] = []
        for key, size in conn.execute("SELECT key, size FROM entries ORDER BY last_used"):
            if total <= target:
                break
            doomed.append(key)
            total -= size
        _delete(conn, doomed)
        self._size = total

    def stats(self) -> dict[str, int | float]:
        now = self.clock()
        row = (
            self._conn()
            .execute(
                "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(hits), 0), "
                "count(*) FILTER (WHERE expires <= ?) FROM entries",
                [now],
            )
            .fetchone()
        )
        return {
            "entries": row[0],
            "bytes": row[1],
            "hits": row[2],
            "expired": row[3],
            "max_bytes": self.max_bytes,
        }

    def clear(self, seed: str | None = None) -> int:
        conn = self._conn()
        if seed is None:
            n = conn.execute("DELETE FROM entries").rowcount
        else:
            n = conn.execute("DELETE FROM entries WHERE seed = ?", [seed]).rowcount
        self._size = None
        return n


def pick(entries: list[Entry | None]) -> tuple[int, Entry] | None:
    """Helicone's bucket rule: a hit only once every slot is filled, then a random slot."""
    if not entries or any(e is None for e in entries):
        return None
    idx = random.randrange(len(entries))
    entry = entries[idx]
    assert entry is not None
    return idx, entry


def first_free(taken: list[bool], prefer: int | None = None) -> int | None:
    """The slot a new entry goes to: `prefer` if free, else the first free one."""
    if prefer is not None and 0 <= prefer < len(taken) and not taken[prefer]:
        return prefer
    return next((i for i, t in enumerate(taken) if not t), None)


def _delete(conn: sqlite3.Connection, keys: Iterable[str]) -> None:
    conn.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k in keys])


def _entry(row: tuple) -> Entry:
    values = dict(zip(_ENTRY_COLUMNS, row, strict=True))
    values["streamed"] = bool(values["streamed"])
    values["body"] = bytes(values["body"])
    if values["cost_usd"] is not None:
        values["cost_usd"] = Decimal(values["cost_usd"])
    return Entry(**values)
