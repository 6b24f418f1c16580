"""The writer runs in a child process, so the proxy's event loop keeps its core and its GIL.

Measured (scripts/bench_overhead.py): with the writer as a thread in mitmdump, parsing, pricing
and DuckDB inserts competed with the event loop for the GIL and cost ~30 % of mitmdump's
throughput; the hooks alone cost ~9 %. So `submit` only appends the `Capture` to a list; every
`HANDOFF_SECONDS` (or once `HANDOFF_BATCH` are waiting) the list goes, as one item, into a bounded
inter-process queue (`put_nowait`: a full queue drops and counts, it never waits), which wakes
the queue's feeder thread once per batch instead of once per call. A `llmtap-writer` process
runs writer.Store's loop on the other side.

The child is started with the `spawn` method (mitmdump has threads; forking it is unsafe). It stops
only on the sentinel that `close()` sends, after a last flush; if mitmdump dies without one
(kill -9), the child notices its parent is gone within a flush interval, writes what it holds and
exits. It ignores SIGINT and SIGTERM: a terminal's Ctrl-C and systemd's stop signal the whole
process group, and a child that died with them lost every row it held (`start` explains how).
Counters live in shared memory, so `stats` reads them without a round trip.

While a Live page is open (`watch`), the child sends back each batch's tokens and cost on a second,
bounded queue (`accounted`); otherwise it sends nothing, and the proxy unpickles nothing.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from collections import deque
from typing import Any

from llmtap.accounting.record import COLUMNS, Capture
from llmtap.storage.writer import Stats

logger = logging.getLogger(__name__)

_FIELDS = ("written", "write_errors", "row_errors", "dropped", "annotations")
_RECEIVED = len(_FIELDS)  # two more shared slots: records the child has taken off the queue,
_CONVERTED = _RECEIVED + 1  # and records it has converted (their cache entries saved)
_WATCHING = _CONVERTED + 1  # 1 while a Live page wants tokens and cost back
SHARED_SLOTS = _WATCHING + 1
ACCOUNTED_BATCHES = 1000  # batches of tokens and cost not yet taken by the proxy: past it, dropped
ACCOUNTED = ("request_id", "model", "input_tokens", "output_tokens", "cost_usd")
HANDOFF_SECONDS = 0.05
HANDOFF_BATCH = 256
# What a terminal's Ctrl-C, `kill -- -PGID` and systemd send to every process of the group.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class WriterProcess:
    def __init__(
        self,
        path: str,
        queue_size: int = 10_000,
        flush_interval: float = 1.0,
        cache_path: str | None = None,
        cache_max_bytes: int = 1 << 30,
    ) -> None:
        self.path = path
        context = mp.get_context("spawn")
        # The bound is in records, not batches: sent minus received must stay under queue_size.
        self._queue: Any = context.Queue()
        self._accounted: Any = context.Queue(ACCOUNTED_BATCHES)
        self.queue_size = queue_size
        self.sent = 0
        self._batch: list[Capture] = []
        self._batch_started = 0.0
        self._shared: Any = context.Array("q", SHARED_SLOTS)
        # (records sent once a batch was handed off, the last ordinal in it): see settled()
        self._marks: deque[tuple[int, int]] = deque()
        self._settled = 0
        self._proc = context.Process(
            target=_child,
            args=(
                self._queue,
                self._accounted,
                self._shared,
                os.getpid(),
                path,
                queue_size,
                flush_interval,
                cache_path,
                cache_max_bytes,
            ),
            name="llmtap-writer",
            daemon=True,
        )
        self.queued = 0
        self.dropped = 0

    def start(self) -> None:
        """Spawn the child with the stop signals blocked: it inherits the mask, so a Ctrl-C that
        arrives while it boots stays pending until it ignores them (no KeyboardInterrupt in its
        start-up). The stdlib starts its resource tracker the same way; it is started first here,
        because starting it unblocks the signals. The parent's own mask is restored at once, and a
        signal that came meanwhile is delivered to it then."""
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self._proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def submit(self, capture: Capture) -> bool:
        """Queue a capture for the writer; never waits. False when its batch had to be dropped."""
        if not self._batch:
            self._batch_started = time.monotonic()
        self._batch.append(capture)
        self.queued += 1
        if len(self._batch) >= HANDOFF_BATCH or time.monotonic() - self._batch_started >= HANDOFF_SECONDS:
            return self.handoff()
        return True

    def handoff(self) -> bool:
        """Send what is waiting (call it periodically too, so a quiet proxy does not hold rows)."""
        if not self._batch:
            return True
        batch, self._batch = self._batch, []
        in_flight = self.sent - self._shared[_RECEIVED]
        sent = in_flight + len(batch) <= self.queue_size
        if sent:
            self._queue.put_nowait(batch)
            self.sent += len(batch)
        self._marks.append((self.sent, self.queued))
        if len(self._marks) > self.queue_size:  # a writer that is gone converts nothing: stay bounded
            self._settled = self._marks.popleft()[1]
        if not sent:
            self.dropped += len(batch)
            state = "is not running" if not self._proc.is_alive() else "is behind"
            logger.error(f"llmtap: the writer process {state}; {self.dropped} records dropped so far")
        return sent

    def settled(self) -> int:
        """The ordinal (`queued` after its submit) up to which every record has been converted by
        the writer, or dropped: what the proxy holds for the writer up to there may be let go."""
        converted = self._shared[_CONVERTED]
        while self._marks and self._marks[0][0] <= converted:
            self._settled = self._marks.popleft()[1]
        return self._settled

    def watch(self, on: bool) -> None:
        """Whether the child sends tokens and cost back (a Live page is open)."""
        self._shared[_WATCHING] = int(on)

    def accounted(self) -> list[dict[str, Any]]:
        """The tokens and cost of the calls written since the last ask (never waits)."""
        out: list[dict[str, Any]] = []
        while True:
            try:
                batch = self._accounted.get_nowait()
            except (queue.Empty, OSError, ValueError):  # empty, or closed at a stop
                return out
            out.extend(dict(zip(ACCOUNTED, values, strict=True)) for values in batch)

    def close(self, timeout: float = 30.0) -> None:
        """Ask the writer to flush everything and stop; wait for it."""
        if self._proc.pid is None:
            return
        self.handoff()
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            logger.error("llmtap: the writer did not drain its queue in time")
        self._proc.join(timeout)
        if self._proc.is_alive():  # it ignores SIGTERM (see start)
            logger.error("llmtap: the writer process did not stop in time; killing it")
            self._proc.kill()
            self._proc.join(5)
        self._queue.close()
        self._queue.join_thread()
        self._accounted.close()
        self._accounted.cancel_join_thread()  # what the proxy did not take is not needed now

    @property
    def stats(self) -> Stats:
        values = dict(zip(_FIELDS, self._shared[: len(_FIELDS)], strict=True))
        values["dropped"] += self.dropped
        return Stats(queued=self.queued, **values)


def _child(
    source: Any, accounted: Any, shared: Any, parent: int, path: str, queue_size: int, flush_interval: float,
    cache_path: str | None, cache_max_bytes: int,
) -> None:  # fmt: skip
    for sig in STOP_SIGNALS:  # stop on the parent's sentinel only, after the last flush
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    from llmtap.storage.cachestore import CacheStore
    from llmtap.storage.writer import Store

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="[%(asctime)s.%(msecs)03d] %(message)s",
        datefmt="%H:%M:%S",
    )
    # `parent` comes from the parent: a child that starts after a kill -9 of mitmdump (its rows
    # still in the pipe) would otherwise take init for its parent, and never stop.
    try:
        os.nice(10)  # background work: on a busy machine the proxy's event loop comes first
    except OSError:
        pass

    def publish(stats: Stats) -> None:
        shared[: len(_FIELDS)] = [getattr(stats, name) for name in _FIELDS]

    cache = None
    if cache_path:
        try:
            cache = CacheStore(cache_path, cache_max_bytes)
        except Exception as e:
            logger.warning(
                f"llmtap: writer cannot open the cache {cache_path} ({e}); responses are not saved"
            )

    def converted(n: int) -> None:
        with shared.get_lock():
            shared[_CONVERTED] += n

    at = [COLUMNS.index(name) for name in ACCOUNTED]

    def rows(made: list[tuple[Any, ...]]) -> None:
        if not shared[_WATCHING]:
            return
        batch = [tuple(str(row[k]) if name == "cost_usd" and row[k] is not None else row[k]
                       for name, k in zip(ACCOUNTED, at, strict=True)) for row in made]  # fmt: skip
        try:
            accounted.put_nowait(batch)
        except queue.Full:  # the proxy is not taking them: the Live page goes without
            pass

    store = Store(
        path, queue_size, flush_interval, cache=cache, source=_Counting(source, shared), on_flush=publish,
        keep_going=lambda: os.getppid() == parent, on_converted=converted, on_rows=rows,
    )  # fmt: skip
    store.run()
    publish(store.stats)


class _Counting:
    """The child's view of the queue: counts the records it takes, for the parent's bound."""

    def __init__(self, source: Any, shared: Any) -> None:
        self.source, self.shared = source, shared

    def _count(self, item: Any) -> Any:
        if isinstance(item, list):
            with self.shared.get_lock():
                self.shared[_RECEIVED] += len(item)
        return item

    def get(self, timeout: float | None = None) -> Any:
        return self._count(self.source.get(timeout=timeout))

    def get_nowait(self) -> Any:
        return self._count(self.source.get_nowait())
