"""`llmtap demo`: real SDK calls through a real proxy to a local stand-in provider.

Nothing leaves the machine and no API key is needed: the upstream is llmtap's fake provider (a
local demo stand-in that speaks the OpenAI and Anthropic wire formats, not a real model). First the
transparent path: an unmodified app (demo/app.py) under `llmtap run`, whose `--map-remote` options
send api.openai.com and api.anthropic.com to the stand-in (a real run leaves them out); then the
gateway path, `mitmdump --mode reverse:... -s addon/tap.py`, with Helicone headers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from llmtap import proxyproc
from llmtap.api.log import wait_written
from llmtap.demo.fakeprovider import FakeProvider
from llmtap.reports import output
from llmtap.storage import query

SUMMARY = """
SELECT provider, endpoint, model, streamed, status, input_tokens AS "in", cache_read_tokens AS cached,
       cache_write_tokens AS cache_write, output_tokens AS "out", reasoning_tokens AS reasoning,
       round(ttft_ms, 1) AS ttft_ms, cost_usd, user_id
FROM requests ORDER BY created_at
"""
BY_MODEL = """
SELECT model, count(*) AS calls, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cost_usd) AS cost_usd
FROM requests GROUP BY model ORDER BY cost_usd DESC NULLS LAST
"""


def run(db: Path, say: Callable[[str], None] = print, ui: bool = False) -> int:
    """The demo; with `ui`, its proxy keeps running afterwards, serving the dashboard, until Ctrl-C."""
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    for suffix in ("", ".wal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp, FakeProvider() as fake:
        say(f"fake provider (a local demo stand-in, not a real model) at {fake.url}\n")
        say("1. transparent: llmtap run -- python app.py (an app with no llmtap in it)")
        _transparent(fake.url, db, Path(tmp), say)
        say("\n2. gateway: the SDKs' base_url pointed at the proxy, Helicone headers on the calls")
        proxy = proxyproc.start(
            [
                "--mode",
                f"reverse:{fake.url}",
                "--set",
                f"llmtap_db={db}",
                "--set",
                "flow_detail=0",
                "--set",
                f"llmtap_cache={Path(tmp) / 'cache.sqlite'}",
                "--set",
                "llmtap_api=127.0.0.1:0",
            ],
            Path(tmp),
        )
        say(f"llmtap proxy (mitmdump -s addon/tap.py, gateway mode) at {proxy.url}")
        try:
            _calls(proxy.url, say)
            if ui:
                api = proxy.api
                assert api is not None, "the demo's proxy always serves its API"
                wait_written(api)
                _show(db, say)
                url = f"http://{api}/ui/overview?since=24h"
                say(f"dashboard: {url} (the demo's proxy serves it; Live shows calls sent to {proxy.url})")
                say("Ctrl-C stops the proxy and the dashboard")
                _wait_for_ctrl_c()
        finally:
            proxy.stop()
    if not ui:
        _show(db, say)
        say(f"dashboard: llmtap ui --db {db} --open   (or llmtap demo --ui: the proxy stays up for it)")
    return 0


def _show(db: Path, say: Callable[[str], None]) -> None:
    say("\ncaptured rows:")
    say(output.render(*query.run(db, SUMMARY)))
    say("cost by model:")
    say(output.render(*query.run(db, BY_MODEL)))
    say(f"explore: llmtap report summary --db {db}")
    say(f"         llmtap report cost --by user --db {db}")
    say(f'         llmtap sql --db {db} "SELECT * FROM requests"')


def _wait_for_ctrl_c() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _transparent(fake: str, db: Path, tmp: Path, say: Callable[[str], None]) -> None:
    """The app under `llmtap run`, with its own CA dir and config dir (the user's stay untouched)."""
    maps = [
        a
        for host in ("api.openai.com", "api.anthropic.com")
        for a in ("--map-remote", f"|https://{host}/|{fake}/")
    ]
    cmd = [sys.executable, "-m", "llmtap.cli", "run", "--db", str(db), "--confdir", str(tmp / "conf"),
           "--set", f"llmtap_cache={tmp / 'run-cache.sqlite'}", *maps, "--",
           sys.executable, str(Path(__file__).with_name("app.py"))]  # fmt: skip
    env = os.environ | {"LLMTAP_HOME": str(tmp / "home"), "OPENAI_API_KEY": "sk-demo-not-a-real-key",
                        "ANTHROPIC_API_KEY": "sk-ant-demo-not-a-real-key"}  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    say(done.stdout.rstrip("\n"))
    say(done.stderr.rstrip("\n"))
    if done.returncode != 0:
        raise RuntimeError(f"llmtap run exited with {done.returncode}")


def _calls(base: str, say: Callable[[str], None]) -> None:
    from anthropic import Anthropic
    from openai import OpenAI

    tags = {"Helicone-User-Id": "alice", "Helicone-Property-Feature": "demo"}
    oai = OpenAI(base_url=f"{base}/v1", api_key="sk-demo-not-a-real-key", max_retries=0)
    ant = Anthropic(base_url=base, api_key="sk-ant-demo-not-a-real-key", max_retries=0)
    msgs = [{"role": "user", "content": "Say hello."}]

    r = oai.chat.completions.create(model="gpt-4o-mini", messages=msgs, extra_headers=tags)
    say(f"openai chat          -> {r.choices[0].message.content!r}")
    text = "".join(
        c.choices[0].delta.content or ""
        for c in oai.chat.completions.create(model="gpt-4o", messages=msgs, stream=True)
        if c.choices
    )
    say(f"openai chat, stream  -> {text!r}")
    usage = {"x-fake-usage": json.dumps({"input": 900, "cached": 512, "reasoning": 64, "output": 120})}
    r = oai.chat.completions.create(model="o3-mini", messages=msgs, extra_headers={**usage, **tags})
    say(f"openai o3-mini       -> {r.usage.completion_tokens} completion tokens, 64 of them reasoning")
    resp = oai.responses.create(
        model="gpt-4.1-mini", input="Say hello.", extra_headers={"Helicone-User-Id": "bob"}
    )
    say(f"openai responses     -> {resp.output_text!r}")
    emb = oai.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
    say(f"openai embeddings    -> {len(emb.data)} vectors")
    cache = {"x-fake-usage": json.dumps({"input": 2400, "cached": 2000, "cache_write": 300})}
    m = ant.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=msgs, extra_headers=cache)
    say(f"anthropic messages   -> {m.content[0].text!r}")
    with ant.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=msgs, extra_headers=tags) as s:
        final = s.get_final_message()
    say(f"anthropic, stream    -> {final.content[0].text!r}")
