from __future__ import annotations

import multiprocessing as mp
import subprocess
from pathlib import Path

import duckdb

from llmtap import writerproc

from . import samples


def test_a_writer_started_after_its_parent_died_writes_and_stops(tmp_path: Path) -> None:
    """mitmdump killed (-9) right after it spawned the writer: the child starts with the rows already
    in the pipe and init as its parent. It must write them and stop, not wait for a stop forever."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    context = mp.get_context("spawn")
    queue, shared = context.Queue(), context.Array("q", len(writerproc._FIELDS) + 1)
    queue.put([samples.capture()])
    db = tmp_path / "llmtap.duckdb"
    args = (queue, shared, gone.pid, str(db), 100, 0.1, None, 1 << 20)
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
