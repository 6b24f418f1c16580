from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from llmtap.storage import writerproc
from llmtap.wire.helicone import CallMeta

from . import samples


def test_a_writer_started_after_its_parent_died_writes_and_stops(tmp_path: Path) -> None:
    """mitmdump killed (-9) right after it spawned the writer: the child starts with the rows already
    in the pipe and init as its parent. It must write them and stop, not wait for a stop forever."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    context = mp.get_context("spawn")
    queue, shared = context.Queue(), context.Array("q", writerproc.SHARED_SLOTS)
    queue.put([samples.capture()])
    db = tmp_path / "llmtap.duckdb"
    args = (queue, context.Queue(), shared, gone.pid, str(db), 100, 0.1, None, 1 << 20)
    child = context.Process(target=writerproc._child, args=args)
    child.start()
    child.join(30)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "the writer kept waiting for a parent that is gone"
    assert child.exitcode == 0
    with duckdb.connect(str(db), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone() == (1,)


def test_the_writer_ignores_the_groups_stop_signals_and_flushes_on_close(tmp_path: Path) -> None:
    """Ctrl-C and systemd signal every process of the group: the writer must outlive them and stop
    only on its parent's close(), after writing every row it was handed."""
    db = tmp_path / "llmtap.duckdb"
    writer = writerproc.WriterProcess(str(db), flush_interval=3600)  # no periodic flush: only the last one
    writer.start()
    for n in range(5):
        assert writer.submit(samples.capture(meta=CallMeta(request_id=f"req-{n}")))
    assert writer.handoff()
    pid = writer._proc.pid
    assert pid is not None
    for sig in (signal.SIGINT, signal.SIGTERM):  # also while it is still starting up
        os.kill(pid, sig)
    wait_for(lambda: writer._shared[writerproc._RECEIVED] == 5, "the writer to take the batch")
    for sig in (signal.SIGINT, signal.SIGTERM):
        os.kill(pid, sig)
    assert writer._proc.is_alive()
    writer.close()
    assert writer._proc.exitcode == 0
    with duckdb.connect(str(db), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone() == (5,)


def test_settled_follows_what_the_writer_has_converted(tmp_path: Path) -> None:
    writer = writerproc.WriterProcess(str(tmp_path / "llmtap.duckdb"), queue_size=4, flush_interval=0.05)
    assert writer.settled() == 0
    writer.start()
    try:
        for n in range(3):
            writer.submit(samples.capture(meta=CallMeta(request_id=f"req-{n}")))
        assert writer.queued == 3 and writer.handoff()
        for n in range(3, 8):  # past the queue bound: dropped, and settled at once in their turn
            writer.submit(samples.capture(meta=CallMeta(request_id=f"req-{n}")))
        assert not writer.handoff()
        wait_for(lambda: writer.settled() == 8, "the writer to convert the first three")
    finally:
        writer.close()


def test_tokens_and_cost_come_back_only_while_watched(tmp_path: Path) -> None:
    """The Live page's tokens and cost: sent back for the calls converted while `watch` is on,
    as the writer accounted them (samples.openai_cost: genai-prices on the documented usage)."""
    writer = writerproc.WriterProcess(str(tmp_path / "llmtap.duckdb"), flush_interval=0.05)
    writer.start()
    try:
        writer.submit(samples.capture(meta=CallMeta(request_id="unwatched")))
        writer.handoff()
        wait_for(lambda: writer.settled() == 1, "the writer to convert the first call")
        writer.watch(True)
        writer.submit(samples.capture(meta=CallMeta(request_id="watched")))
        writer.handoff()
        got: list[dict] = []
        wait_for(lambda: bool(got.extend(writer.accounted()) or got), "tokens and cost")
        assert got == [{"request_id": "watched", "model": "gpt-4o-2024-08-06", "input_tokens": 1200,
                        "output_tokens": 300, "cost_usd": str(samples.openai_cost())}]  # fmt: skip
    finally:
        writer.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
