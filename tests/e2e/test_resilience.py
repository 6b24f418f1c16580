"""llmtap must never be the reason a request fails, must lose nothing and must store no secret."""

from __future__ import annotations

import http.client
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import duckdb
from openai import OpenAI

from llmtap.storage.migrations import MIGRATIONS
from tests.e2e.conftest import Proxy, free_port
from tests.fakeprovider import FakeProvider

MSGS = [{"role": "user", "content": "Say hello"}]
REPLY = "Hello from the fake provider!"


def chat(proxy: Proxy, **kw) -> str:
    client = OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test", max_retries=0)
    return client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, **kw).choices[0].message.content


def test_non_llm_traffic_passes_byte_for_byte_and_is_not_logged(gateway: Proxy, fake: FakeProvider) -> None:
    body = bytes(range(256)) * 40
    req = urllib.request.Request(
        f"{gateway.url}/echo",
        data=body,
        method="POST",
        headers={
            "Helicone-User-Id": "kept",
            "Authorization": "Bearer stays",
            "Content-Type": "application/x-bin",
        },
    )
    with urllib.request.urlopen(req) as resp:
        echoed = json.loads(resp.read())
        assert "helicone-id" not in resp.headers
    assert echoed["headers"]["helicone-user-id"] == "kept"
    assert fake.received[-1].body == body
    with urllib.request.urlopen(f"{gateway.url}/bytes/100000") as resp:
        direct = urllib.request.urlopen(f"{fake.url}/bytes/100000").read()
        assert resp.read() == direct
    assert gateway.rows() == []


def test_secrets_never_reach_the_database(gateway: Proxy, fake: FakeProvider) -> None:
    secrets = [
        "sk-SECRET-openai-1234",
        "sk-ant-SECRET-5678",
        "helicone-SECRET-9",
        "AIzaSECRETgoog",
        "cookieSECRET",
    ]
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=secrets[0], max_retries=0)
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MSGS,
        extra_headers={
            "x-api-key": secrets[1],
            "Helicone-Auth": f"Bearer {secrets[2]}",
            "Cookie": f"s={secrets[4]}",
        },
    )
    req = urllib.request.Request(
        f"{gateway.url}/v1beta/models/gemini-2.0-flash:generateContent?key={secrets[3]}",
        data=b'{"contents":[{"parts":[{"text":"hi"}]}]}',
        headers={"content-type": "application/json"},
    )
    urllib.request.urlopen(req).read()
    assert fake.received[0].headers["authorization"] == f"Bearer {secrets[0]}"  # upstream still gets it
    rows = gateway.rows()
    assert len(rows) == 2
    everything = json.dumps(rows, default=str)
    assert "[REDACTED]" in everything
    for secret in secrets:
        assert secret not in everything
    raw = b"".join(p.read_bytes() for p in gateway.db.parent.glob(gateway.db.name + "*"))
    for secret in secrets:
        assert secret.encode() not in raw


def test_client_abort_mid_stream_still_gets_a_row(gateway: Proxy) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port)
    body = json.dumps({"model": "gpt-4o-mini", "messages": MSGS, "stream": True})
    reply = " ".join(f"word{i}" for i in range(40))
    conn.request(
        "POST",
        "/v1/chat/completions",
        body,
        {"content-type": "application/json", "x-fake-delay-ms": "50", "x-fake-reply": reply},
    )
    resp = conn.getresponse()
    assert resp.status == 200
    seen = resp.read1(4096) + resp.read1(4096)
    assert b"data:" in seen
    conn.sock.close()
    conn.close()
    gateway.wait_rows("SELECT 1 FROM requests", 1)  # the abort reached the error hook
    [row] = gateway.rows()
    assert row["streamed"] is True and row["status"] == 200
    assert "disconnect" in row["error"].lower()
    # What the proxy saw before the abort, estimated as the README says (chars / 4, offline).
    seen_text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in row["response_body"].splitlines()
        if line.startswith("data: {")
    )
    prompt = "Say hello"  # the request's only text
    assert row["usage_source"] == "estimated"
    assert (row["input_tokens"], row["output_tokens"]) == (
        math.ceil(len(prompt) / 4), math.ceil(len(seen_text) / 4),
    )  # fmt: skip
    assert 0 < len(seen_text) < len(reply), "cut mid-stream"
    assert row["cost_note"] == (
        "tokens estimated (chars/4 heuristic): the response reported no final usage; priced as openai: host"
        f" {row['host']} is not a known provider"
    )


def test_traffic_flows_when_the_database_is_unwritable(
    fake: FakeProvider, start_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    proxy = start_proxy("--mode", f"reverse:{fake.url}", db=blocker / "llmtap.duckdb")
    for _ in range(3):
        assert chat(proxy) == REPLY
    assert chat(proxy, stream=False) == REPLY
    assert proxy.stop() == 0
    assert "cannot write" in proxy.log()


def test_locked_database_delays_rows_but_loses_none(
    fake: FakeProvider, start_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    db = tmp_path / "locked.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb,sys; c=duckdb.connect({str(db)!r}); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        proxy = start_proxy("--mode", f"reverse:{fake.url}", db=db)
        started = time.monotonic()
        for _ in range(5):
            assert chat(proxy) == REPLY
        assert time.monotonic() - started < 5, "a locked database must not delay traffic"
        deadline = time.monotonic() + 10  # the writer process takes ~1 s to start
        while "cannot write" not in proxy.log():  # a flush attempt has hit the lock
            assert time.monotonic() < deadline, proxy.log()
            time.sleep(0.1)
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert len(proxy.rows()) == 5


def test_llmtap_sql_works_while_the_proxy_runs_and_after(gateway: Proxy) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "addon")}
    sql = [sys.executable, "-m", "llmtap.cli", "sql", "--db", str(gateway.db), "--format", "json"]
    chat(gateway)
    deadline = time.monotonic() + 10
    while True:  # rows arrive within llmtap_flush_ms of the call
        out = subprocess.run(
            [*sql, "SELECT count(*) AS n FROM requests"], capture_output=True, text=True, env=env
        )
        if out.returncode == 0 and json.loads(out.stdout) == [{"n": 1}] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"n": 1}]
    chat(gateway)  # the proxy still writes after a reader came and went
    gateway.stop()
    out = subprocess.run(
        [*sql, "SELECT model, status FROM requests"], capture_output=True, text=True, env=env
    )
    assert json.loads(out.stdout) == [{"model": "gpt-4o-mini", "status": 200}] * 2


def test_several_providers_on_separate_ports(
    fake: FakeProvider, start_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(f'providers:\n  - {{host: "127.0.0.1:{fake.port}", api: openai, name: vllm}}\n')
    with FakeProvider() as other:
        p1, p2 = free_port(), free_port()
        proxy = start_proxy(
            "--mode",
            f"reverse:{fake.url}@{p1}",
            "--mode",
            f"reverse:{other.url}@{p2}",
            "--set",
            f"llmtap_rules={rules}",
        )
        for port in (p1, p2):
            client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x", max_retries=0)
            assert (
                client.chat.completions.create(model="gpt-4o-mini", messages=MSGS).choices[0].message.content
            )
        rows = proxy.rows()
    assert sorted((r["provider"], r["host"]) for r in rows) == sorted(
        [("vllm", f"127.0.0.1:{fake.port}"), ("openai", f"127.0.0.1:{other.port}")]
    )
    vllm = next(r for r in rows if r["provider"] == "vllm")
    assert vllm["cost_usd"] is None and "no price source" in vllm["cost_note"]
    sent = b'{"messages":[{"role":"user","content":"Say hello"}],"model":"gpt-4o-mini"}'
    assert (vllm["input_tokens"], vllm["output_tokens"], vllm["usage_source"]) == (
        10 + len(sent) // 50, len(REPLY.split()) + 1, "response",
    )  # fmt: skip


def test_invalid_rules_file_refuses_to_start(fake: FakeProvider, start_proxy, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("providers:\n  - {host: 'x:1', api: grpc}\n")
    try:
        start_proxy("--mode", f"reverse:{fake.url}", "--set", f"llmtap_rules={rules}")
    except RuntimeError as e:
        assert "providers[0].api: expected one of openai, anthropic, gemini, got 'grpc'" in str(e)
    else:
        raise AssertionError("the proxy started with an invalid rules file")


def test_access_key_when_configured(fake: FakeProvider, start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy("--mode", f"reverse:{fake.url}", "--set", "llmtap_access_key=let-me-in")
    client = OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-x", max_retries=0)
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    except Exception as e:
        assert "401" in str(e) or "Helicone-Auth" in str(e)
    else:
        raise AssertionError("a call without the access key was let through")
    ok = client.chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, extra_headers={"Helicone-Auth": "Bearer let-me-in"}
    )
    assert ok.choices[0].message.content == REPLY
    assert len(fake.received) == 1
    assert [r["status"] for r in proxy.rows()] == [401, 200]


def test_db_file_is_a_valid_duckdb_after_shutdown(gateway: Proxy) -> None:
    chat(gateway)
    gateway.stop()
    with duckdb.connect(str(gateway.db), read_only=True) as conn:
        names = conn.execute("SELECT name FROM _llmtap_migrations ORDER BY name").fetchall()
    assert names == [(fn.__name__,) for fn in MIGRATIONS]


def test_llmtap_proxy_command_runs_mitmdump_with_the_addon(fake: FakeProvider, tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "cli.duckdb"
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "addon"),
        "LLMTAP_DB": str(db),
        "LLMTAP_CACHE": str(tmp_path / "cache.sqlite"),
    }
    cmd = [
        sys.executable,
        "-m",
        "llmtap.cli",
        "proxy",
        "--mode",
        f"reverse:{fake.url}",
        "-p",
        str(port),
        "--set",
        f"confdir={tmp_path / 'conf'}",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x", max_retries=0)
                assert client.chat.completions.create(model="gpt-4o-mini", messages=MSGS).choices
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode()
    assert "listening at 127.0.0.1" in out
    with duckdb.connect(str(db), read_only=True) as conn:
        assert conn.execute("SELECT count(*), min(provider) FROM requests").fetchone() == (1, "openai")


def test_kill_9_of_mitmdump_loses_no_handed_over_row(gateway: Proxy) -> None:
    for _ in range(5):
        chat(gateway)
    time.sleep(0.3)  # longer than the 50 ms hand-off to the writer process
    writers = children(gateway.proc.proc.pid)
    assert len(writers) == 1, writers
    gateway.proc.proc.kill()
    gateway.proc.proc.wait(10)
    deadline = time.monotonic() + 15  # the orphaned writer flushes within llmtap_flush_ms and exits
    while True:
        try:
            with duckdb.connect(str(gateway.db), read_only=True) as conn:
                n = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
            if n == 5:
                break
        except duckdb.IOException:
            pass  # the writer still holds the file
        assert time.monotonic() < deadline, "rows lost after kill -9"
        time.sleep(0.1)
    while Path(f"/proc/{writers[0]}").exists() and "Z" not in proc_state(writers[0]):
        assert time.monotonic() < deadline, "the orphaned writer process did not exit"
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    """Child processes of `pid` (the llmtap-writer, spawned by mitmdump), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid and b"spawn_main" in cmdline:
                found.append(int(entry.name))
    return found


def proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
