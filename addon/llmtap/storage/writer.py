"""The only DuckDB writer: a bounded queue in front of one background thread.

(With `llmtap_db=postgresql://...` the same loop writes each batch to Postgres instead, through
storage/postgres.py; the file-specific parts below do not apply there.)

Hooks call `submit`, which never blocks: when the queue is full the capture is dropped, counted
and logged. The writer thread turns captures into rows (parsing, usage, pricing happen here, off
the event loop) and inserts them in batches, one transaction per batch.

DuckDB lets one process hold a database file read-write, and while it does no other process can
even read it. So the writer opens the file only for the moment of a flush (every
`flush_interval` seconds, option `llmtap_flush_ms`, or sooner when a batch fills) and closes it
again; `llmtap sql` and reports open it read-only in between. If the file is locked (a long
query), unwritable or the disk is full, rows stay in memory (at most `queue_size` of them, oldest
dropped first and counted) and the flush is retried; traffic never waits for the database.

What a crash can lose: on SIGTERM/SIGINT `close()` flushes everything. A `kill -9` loses the rows
still in memory: at most `flush_interval` seconds of calls (plus any backlog while the file was
unavailable) and the calls in flight at that moment.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from llmtap.accounting.record import (
    COLUMNS,
    TYPES,
    Annotation,
    Capture,
    annotation_rows,
    as_row,
    entry_for,
    identity,
    to_row,
)
from llmtap.policy.redact import redact_url
from llmtap.storage import postgres, rollup
from llmtap.storage.cachestore import CacheStore
from llmtap.storage.migrations import migrate
from llmtap.storage.query import QueryError

logger = logging.getLogger(__name__)

_WARN_EVERY = 30.0
_DECIMALS = [k for k, kind in enumerate(TYPES) if kind.startswith("DECIMAL")]
_FILE = "llmtap_file"  # the database file's catalog name while attached
# The writer's in-memory DuckDB (see Store._attached): one thread, every COMMIT a checkpoint.
DUCKDB_CONFIG = {"threads": 1, "checkpoint_threshold": "0b"}


@dataclass(slots=True)
class Stats:
    queued: int = 0
    written: int = 0
    dropped: int = 0
    write_errors: int = 0
    row_errors: int = 0
    annotations: int = 0  # feedback, scores and property updates written


class Store:
    def __init__(
        self,
        path: str,
        queue_size: int = 10_000,
        flush_interval: float = 1.0,
        batch_size: int = 5_000,
        cache: CacheStore | None = None,
        source: Any = None,
        on_flush: Callable[[Stats], None] | None = None,
        keep_going: Callable[[], bool] = lambda: True,
        on_converted: Callable[[int], None] | None = None,
        on_rows: Callable[[list[tuple[Any, ...]]], None] | None = None,
    ) -> None:
        """`source` replaces the internal queue (the writer process passes its inter-process queue);
        `on_flush` sees the stats after every write; `keep_going` False ends the loop as a stop would;
        `on_converted` learns how many records were converted (their cache entries saved); `on_rows`
        sees the rows made from each batch (the Live page's tokens and cost)."""
        self.path = path
        self._postgres = postgres.PostgresSink(path) if postgres.is_url(path) else None
        self.cache = cache
        self.on_flush = on_flush
        self.on_converted = on_converted
        self.on_rows = on_rows
        self.keep_going = keep_going
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_pending = queue_size
        self.stats = Stats()
        self._queue: Any = source if source is not None else queue.Queue(maxsize=queue_size)
        self._pending: deque[tuple[Any, ...]] = deque()
        self._annotations: list[Annotation] = []  # feedback, scores, properties: applied after the rows
        self._thread: threading.Thread | None = None
        self._migrated = False
        self._duck: duckdb.DuckDBPyConnection | None = None  # see _attached
        self._locked = False  # the last write failed on another process's lock (worth waiting for)
        self._last_warning: dict[str, float] = {}
        self._started = time.monotonic()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="llmtap-writer", daemon=True)
        self._thread.start()

    def submit(self, capture: Capture) -> bool:
        """Queue a capture without ever waiting; False (counted, logged) when the queue is full."""
        try:
            self._queue.put_nowait(capture)
        except queue.Full:
            self.stats.dropped += 1
            self._warn("queue", f"llmtap: write queue full, dropped a record ({self.stats.dropped} so far)")
            return False
        self.stats.queued += 1
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Flush everything queued, then stop the thread (shutdown)."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            logger.error("llmtap: writer did not drain its queue in time; unflushed rows are lost")
        self._thread.join(timeout)
        self._thread = None

    def run(self) -> None:
        """The writer loop, until a stop (None) arrives; normally on its own thread (`start`)."""
        self.flush()  # creates the file and its schema, so readers find a table from the start
        last_flush = time.monotonic()
        stopping = False
        while not stopping:
            timeout = max(0.0, self.flush_interval - (time.monotonic() - last_flush))
            batch, stopping = self._take(timeout)
            stopping = stopping or not self.keep_going()
            rows = [row for capture in batch if (row := self._convert(capture)) is not None]
            if batch and self.on_converted is not None:
                self.on_converted(len(batch))
            if rows and self.on_rows is not None:
                self.on_rows(rows)
            due = time.monotonic() - last_flush >= self.flush_interval
            if self._waiting and (due or stopping or len(self._pending) >= self.batch_size):
                self.flush()
            if due or stopping:
                last_flush = time.monotonic()
        self._final_flush()
        if self._duck is not None:
            self._duck.close()
            self._duck = None
        if self._postgres is not None:
            self._postgres.close()

    @property
    def _waiting(self) -> bool:
        """Rows or annotations to write: feedback sent to a quiet proxy must not wait for a call."""
        return bool(self._pending or self._annotations)

    def _final_flush(self, patience: float = 5.0) -> None:
        """At shutdown a reader may hold the file for a moment: keep trying, then say what is lost."""
        deadline = time.monotonic() + patience
        while self._waiting and not self.flush():
            if not self._locked or time.monotonic() > deadline:
                self.stats.dropped += len(self._pending)
                logger.error(
                    f"llmtap: {len(self._pending)} rows and {len(self._annotations)} feedback, score or"
                    " property updates could not be written before shutdown"
                )
                return
            time.sleep(0.2)

    def _take(self, timeout: float) -> tuple[list[Capture], bool]:
        """Wait up to `timeout` for the first item, then take whatever else is already there."""
        items: list[Capture] = []
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return items, False
        while True:
            if item is None:
                return items, True
            if isinstance(item, list):  # the writer process receives batches
                items.extend(item)
            else:
                items.append(item)
            if len(items) >= self.batch_size:
                return items, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items, False

    def _convert(self, capture: Capture | Annotation) -> tuple[Any, ...] | None:
        """Queue a capture's row (returned) or an annotation (None) for the next flush."""
        if not isinstance(capture, Capture):
            self._annotations.append(capture)
            return None
        if capture.hit_fresh and capture.hit_key and self.cache is not None:
            self._saved_original(capture)
        try:
            row = to_row(capture)
        except Exception as e:
            self.stats.row_errors += 1
            logger.exception(f"llmtap: could not account for request {capture.meta.request_id}")
            row = _bare_row(capture, f"llmtap accounting failed: {e!r}")
        self._pending.append(row)
        if self.cache is not None and (capture.hit_key or capture.cache_save):
            try:
                self._update_cache(capture, row)
            except Exception:
                logger.exception(f"llmtap: could not update the cache for {capture.meta.request_id}")
        while len(self._pending) > self.max_pending:
            self._pending.popleft()
            self.stats.dropped += 1
        return row

    def _saved_original(self, c: Capture) -> None:
        """A hit the proxy answered from its memory carries no tokens: they are in the entry this
        writer saved from the original, which it converted before this hit (one queue, in order)."""
        assert self.cache is not None and c.hit is not None and c.hit_key is not None
        try:
            [saved] = self.cache.get([c.hit_key])
        except Exception:
            logger.exception(f"llmtap: could not read the cache entry of hit {c.meta.request_id}")
            return
        if saved is not None and saved.request_id == c.hit.request_id:
            c.hit = saved

    def _update_cache(self, c: Capture, row: tuple[Any, ...]) -> None:
        """Count a hit, or save a complete 2xx response the client asked to cache."""
        assert self.cache is not None
        if c.hit_key:
            self.cache.touch(c.hit_key)
            return
        save = c.cache_save
        if save is None or not c.cacheable:
            return
        entry = entry_for(c, row)
        self.cache.put(save.keys(), entry, save.policy.ttl, prefer=c.cache_slot, since=c.ended)

    def flush(self) -> bool:
        """Write every pending row in one transaction; on failure keep them for the next try."""
        rows = list(self._pending)
        notes = list(self._annotations)
        if not rows and not notes and self._migrated:
            return True
        try:
            if self._postgres is not None:
                self._postgres.write(rows, notes)
            else:
                self._write_file(rows, notes)
            self._migrated = True
        except Exception as e:
            self._locked = _worth_waiting(e)
            self.stats.write_errors += 1
            if self.on_flush is not None:
                self.on_flush(self.stats)
            self._warn(
                "write",
                f"llmtap: cannot write to {redact_url(self.path)} ({e}); {len(rows)} rows kept in memory, "
                "retrying. Traffic is not affected.",
            )
            return False
        for _ in rows:
            self._pending.popleft()
        del self._annotations[: len(notes)]
        self.stats.written += len(rows)
        self.stats.annotations += len(notes)
        if self.on_flush is not None:
            self.on_flush(self.stats)
        return True

    def _write_file(self, rows: list[tuple[Any, ...]], notes: list[Annotation]) -> None:
        with self._attached() as conn:
            migrate(conn)  # every open: the file may have been replaced while we run
            conn.execute(_merge_setting(behind=len(rows) >= self.batch_size))
            conn.execute("BEGIN TRANSACTION")
            _append(conn, rows, self.batch_size)
            rollup.add(conn, rows)
            write_annotations(conn, notes)
            conn.execute("COMMIT")

    @contextmanager
    def _attached(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The database file, attached for one flush to a long-lived in-memory DuckDB.

        Attaching takes ~2 ms where a fresh `duckdb.connect` takes ~15 ms (a new DuckDB instance
        each time). Detaching releases the file lock as closing would. On any failure the instance
        is closed, which releases the file whatever state the transaction was in, and a new one is
        made at the next flush.

        `checkpoint_threshold` 0 makes every COMMIT a checkpoint, and DuckDB then writes a large
        batch straight into the file without a WAL: the bodies are written once, not to the WAL and
        again at DETACH (ingest ~2x, `scripts/bench_reports.py`). The header is written last: a
        crash during a checkpoint leaves the file as it was before that batch. `_merge_setting`
        says when the checkpoint also merges row groups."""
        if self._duck is None:
            # One DuckDB thread: a batch insert needs no more, and the proxy needs the other cores.
            self._duck = duckdb.connect(":memory:", config=DUCKDB_CONFIG)
        conn = self._duck
        quoted = "'" + self.path.replace("'", "''") + "'"
        try:
            conn.execute(f"ATTACH {quoted} AS {_FILE}")
            conn.execute(f"USE {_FILE}")
            yield conn
            conn.execute("USE memory")
            conn.execute(f"DETACH {_FILE}")
        except BaseException:
            self._duck = None
            conn.close()
            raise

    def _warn(self, key: str, message: str) -> None:
        """Loud but not flooding; WARNING during startup, where an ERROR would stop mitmdump."""
        now = time.monotonic()
        if now - self._last_warning.get(key, -_WARN_EVERY) < _WARN_EVERY:
            return
        self._last_warning[key] = now
        level = logging.ERROR if now - self._started > 5 else logging.WARNING
        logger.log(level, message)


def _worth_waiting(e: Exception) -> bool:
    """A failure that may clear in seconds (another process's lock on the file, a Postgres that
    is restarting): at shutdown the writer keeps trying for a while before it gives up."""
    if isinstance(e, duckdb.IOException):
        return "lock" in str(e).lower()
    return type(e).__name__ == "OperationalError"


def _merge_setting(behind: bool) -> str:
    """The SQL that says whether this flush's checkpoint merges row groups. Each flush makes a row
    group; merging them into full ones (~120k rows) rewrites the rows merged so far again and
    again, which made 5,000-row flushes ~1.4x slower. A full batch means the writer is behind (a
    burst, or catching up after a lock): it skips merging. Any other flush runs one merge task:
    at most ~120k rows, 1-2 s with realistic bodies, until the groups are merged."""
    return f"SET max_vacuum_tasks = {0 if behind else 1}"


def _append(conn: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]], batch_size: int) -> None:
    """Insert rows with DuckDB's appender: it converts each Python value straight into a column
    vector, 2-3x faster than binding one list parameter per column (`scripts/bench_reports.py`)."""
    appender = conn.appender("requests", columns=list(COLUMNS))
    for start in range(0, len(rows), batch_size):
        appender.append_rows(map(_db_values, rows[start : start + batch_size]))
        appender.flush()


def _db_values(row: tuple[Any, ...]) -> list[Any]:
    """Costs go in as their exact decimal text, which DuckDB converts ~1 us faster than a Decimal."""
    values = list(row)
    for k in _DECIMALS:
        if values[k] is not None:
            values[k] = str(values[k])
    return values


def annotate_file(path: str, request_id: str, notes: list[Annotation], what: str = "annotation") -> None:
    """Write annotations of one logged call straight into the file (`llmtap feedback` and friends
    when no proxy answers); a QueryError says why not (no file, held by a proxy, unknown id)."""
    if postgres.is_url(path):
        return _annotate_postgres(path, request_id, notes)
    if not Path(path).exists():
        raise QueryError(f"no database at {path}, and no proxy answered to take the {what}")
    try:
        conn = duckdb.connect(path)
    except duckdb.IOException as e:
        raise QueryError(f"{path} is held by a running proxy whose local API is off (llmtap_api): {e}") from e
    with conn:
        migrate(conn)
        if conn.execute("SELECT 1 FROM requests WHERE request_id = ?", [request_id]).fetchone() is None:
            raise QueryError(f"no request with id {request_id!r} in {path}")
        write_annotations(conn, notes)


def migrate_now(target: str | Path) -> list[str]:
    """Apply a DuckDB file's or a Postgres log's pending migrations (`llmtap migrate`); the names
    applied. A QueryError says why not."""
    if postgres.is_url(target):
        import psycopg

        try:
            with postgres.connect(str(target)) as conn:
                conn.autocommit = True
                return postgres.migrate(conn)
        except psycopg.Error as e:
            raise QueryError(f"cannot migrate {redact_url(str(target))}: {str(e).strip()}") from e
    try:
        with duckdb.connect(str(target)) as conn:
            return migrate(conn)
    except duckdb.Error as e:
        raise QueryError(f"cannot migrate {target}: {e}") from e


def _annotate_postgres(url: str, request_id: str, notes: list[Annotation]) -> None:
    import psycopg

    try:
        with postgres.connect(url) as conn:
            postgres.migrate(conn)
            if not postgres.has_request(conn, request_id):
                raise QueryError(f"no request with id {request_id!r} in {redact_url(url)}")
            postgres.write_annotations(conn, notes)
    except psycopg.Error as e:
        raise QueryError(f"cannot write to {redact_url(url)}: {str(e).strip()}") from e


def write_annotations(conn: duckdb.DuckDBPyConnection, notes: list[Annotation]) -> None:
    """Feedback, scores and late properties (in a flush: in its transaction, after the rows)."""
    feedback, scores, patches = annotation_rows(notes)
    if feedback:
        conn.executemany("INSERT INTO feedback VALUES (?, ?, ?)", feedback)
    if scores:
        conn.executemany("INSERT INTO scores VALUES (?, ?, ?, ?)", scores)
    for patch in patches:
        conn.execute(
            "UPDATE requests SET properties = json_merge_patch(coalesce(properties, '{}'), ?::JSON)"
            " WHERE request_id = ?",
            list(patch),
        )


def _bare_row(c: Capture, error: str) -> tuple[Any, ...]:
    """A row with only what needs no parsing, so a bug in accounting loses no call."""
    return as_row(
        **identity(c), error=error, cost_note="accounting failed", properties="{}", request_headers="{}"
    )
