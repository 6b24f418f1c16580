"""The README's first command: `llmtap demo` must show real captured calls, tokens and cost."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import genai_prices
from genai_prices import Usage

ROOT = Path(__file__).resolve().parents[2]
# (provider, endpoint, model, streamed, input, cached, cache_write, output, reasoning, user), in order:
# the unmodified app under `llmtap run`, then the gateway calls. Tokens are the fake provider's
# (10 + request bytes // 50 in, words + 1 out, or the x-fake-usage the demo sets).
EXPECTED = [
    ("openai", "chat", "gpt-4o-mini", False, 11, 0, 0, 6, 0, None),
    ("openai", "chat", "gpt-4o-mini", True, 12, 0, 0, 6, 0, None),
    ("anthropic", "messages", "claude-haiku-4-5", False, 11, 0, 0, 6, 0, None),
    ("openai", "chat", "gpt-4o-mini", False, 11, 0, 0, 6, 0, "alice"),
    ("openai", "chat", "gpt-4o", True, 12, 0, 0, 6, 0, None),
    ("openai", "chat", "o3-mini", False, 900, 512, 0, 120, 64, "alice"),
    ("openai", "responses", "gpt-4.1-mini", False, 10, 0, 0, 6, 0, "bob"),
    ("openai", "embeddings", "text-embedding-3-small", False, 11, 0, 0, 0, 0, None),
    ("anthropic", "messages", "claude-sonnet-4-5", False, 2400, 2000, 300, 6, 0, None),
    ("anthropic", "messages", "claude-haiku-4-5", True, 12, 0, 0, 6, 0, "alice"),
]


def test_demo_captures_every_call_with_tokens_and_cost(tmp_path: Path) -> None:
    db = tmp_path / "demo.duckdb"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "addon")}
    out = subprocess.run(
        [sys.executable, "-m", "llmtap.cli", "demo", "--db", str(db)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "demo stand-in" in out.stdout
    assert "1. transparent: llmtap run -- python app.py" in out.stdout
    assert "app: anthropic message -> 'Hello from the fake provider!'" in out.stdout
    summary = "llmtap: 3 calls, 34 input + 18 output tokens, $0.000051650; 0 cache hits, 0 errors"
    assert f"{summary}; exit status 0" in out.stdout
    assert "captured rows:" in out.stdout and "cost by model:" in out.stdout and "(10 rows)" in out.stdout
    with duckdb.connect(str(db), read_only=True) as conn:
        rows = conn.execute(
            "SELECT provider, endpoint, model, streamed, input_tokens, cache_read_tokens,"
            " cache_write_tokens, output_tokens, reasoning_tokens, user_id, cost_usd, created_at"
            " FROM requests ORDER BY created_at"
        ).fetchall()
    assert [r[:10] for r in rows] == EXPECTED
    for provider, _, model, _, i, cached, write, o, reasoning, _, cost, at in rows:
        usage = Usage(input_tokens=i, cache_read_tokens=cached, cache_write_tokens=write, output_tokens=o,
                      output_reasoning_tokens=reasoning)  # fmt: skip
        calc = genai_prices.calc_price(usage, model, provider_id=provider, genai_request_timestamp=at)
        assert cost == calc.total_price.quantize(Decimal("0.000000001")), model


def test_demo_ui_keeps_the_dashboard_up_until_ctrl_c(tmp_path: Path) -> None:
    import json
    import signal
    import urllib.request

    db = tmp_path / "demo.duckdb"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "addon")}
    cmd = [sys.executable, "-m", "llmtap.cli", "demo", "--ui", "--db", str(db)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("dashboard: http://"):
                break
        url = line.split()[1]
        assert url.endswith("/ui/overview?since=24h")
        api = url.split("/ui/")[0]
        with urllib.request.urlopen(f"{api}/api/ui/overview?since=24h&tz=UTC", timeout=30) as reply:
            cards = json.load(reply)["cards"]
        assert cards["calls"] == len(EXPECTED)
        with urllib.request.urlopen(url, timeout=30) as reply:
            assert b'src="/static/app.js"' in reply.read()
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
