from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from llmtap.storage.migrations import MIGRATIONS, applied, migrate
from llmtap.storage.query import QueryError, connect, run

# Holds the file read-write (DuckDB's process lock): for `seconds`, or until stdin closes.
HOLD_LOCK = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2])) if len(sys.argv) > 2 else sys.stdin.readline()
conn.close()
"""


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "llmtap.duckdb"
    with duckdb.connect(str(path)) as conn:
        migrate(conn)
        conn.execute(
            "INSERT INTO requests (request_id, created_at, model, cost_usd) VALUES"
            " ('r1', '2025-06-01 12:00:00+00', 'gpt-4o', 0.004720000),"
            " ('r2', '2025-06-01 12:01:00+00', 'claude-3-5-sonnet', NULL)"
        )
    return path


def hold_lock(path: Path, *seconds: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), *seconds],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return proc


@pytest.fixture
def held(db_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = hold_lock(db_path)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.duckdb"
    message = f"no database at {path} yet: start the proxy (or run `llmtap demo`) first"
    with pytest.raises(QueryError, match=f"^{re.escape(message)}$"):
        connect(path)
    with pytest.raises(QueryError, match="^no database at "):
        run(path, "SELECT 1")
    assert not path.exists(), "a read must not create the file"


def test_run_returns_columns_and_rows(db_path: Path) -> None:
    columns, rows = run(db_path, "SELECT request_id, model, cost_usd FROM requests ORDER BY request_id")
    assert columns == ["request_id", "model", "cost_usd"]
    assert [(r[0], r[1], str(r[2]) if r[2] is not None else None) for r in rows] == [
        ("r1", "gpt-4o", "0.004720000"),
        ("r2", "claude-3-5-sonnet", None),
    ]


def test_run_with_named_parameters(db_path: Path) -> None:
    assert run(db_path, "SELECT count(*) AS n FROM requests WHERE model = $m", {"m": "gpt-4o"}) == (
        ["n"],
        [(1,)],
    )


@pytest.mark.parametrize(
    "sql, message",
    [
        # bad SQL is a user error, not a traceback
        ("SELEC 1", "syntax error"),
        ("SELECT nope FROM requests", 'Referenced column "nope" not found'),
        # the connection is read-only
        ("DELETE FROM requests", "read-only"),
    ],
)
def test_run_errors(db_path: Path, sql: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        run(db_path, sql)


def test_connect_is_read_only(db_path: Path) -> None:
    conn = connect(db_path)
    try:
        with pytest.raises(duckdb.InvalidInputException, match="read-only"):
            conn.execute("CREATE TABLE t (i INT)")
    finally:
        conn.close()


def test_an_older_file_is_migrated_once(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    duckdb.connect(str(path)).close()  # a file from before any migration
    assert run(path, "SELECT count(*) FROM requests") == (["count_star()"], [(0,)])
    with duckdb.connect(str(path), read_only=True) as conn:
        assert applied(conn) == [fn.__name__ for fn in MIGRATIONS]


def test_run_waits_while_another_process_holds_the_file_briefly(db_path: Path) -> None:
    proc = hold_lock(db_path, "0.5")
    try:
        assert run(db_path, "SELECT count(*) AS n FROM requests") == (["n"], [(2,)])
    finally:
        assert proc.wait(10) == 0


def test_a_file_that_stays_locked_is_a_clear_error(db_path: Path, held: subprocess.Popen[str]) -> None:
    with pytest.raises(QueryError, match=f"^cannot open {re.escape(str(db_path))}: .*lock"):
        connect(db_path, wait=0.2)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.duckdb"
    path.write_text("hello, this is not a database\n" * 100)
    with pytest.raises(QueryError, match=f"^cannot open {re.escape(str(path))}: "):
        connect(path)
