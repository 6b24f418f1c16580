"""The README's first command: `llmtap demo` must show real captured calls, tokens and cost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[2]


def test_demo_captures_every_call_with_tokens_and_cost(tmp_path: Path) -> None:
    db = tmp_path / "demo.duckdb"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "addon")}
    out = subprocess.run(
        [sys.executable, "-m", "llmtap.cli", "demo", "--db", str(db)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "demo stand-in" in out.stdout
    assert "captured rows:" in out.stdout and "cost by model:" in out.stdout
    with duckdb.connect(str(db), read_only=True) as conn:
        rows = conn.execute(
            "SELECT provider, streamed, input_tokens, output_tokens, cost_usd FROM requests"
        ).fetchall()
    assert len(rows) == 7
    assert {r[0] for r in rows} == {"openai", "anthropic"}
    assert {r[1] for r in rows} == {True, False}
    assert all(r[2] > 0 and r[4] is not None and r[4] > 0 for r in rows)
    assert f"({len(rows)} rows)" in out.stdout
