"""`llmtap run`, `llmtap env` and `llmtap ca` as a user runs them, from a shell.

`llmtap run` is stopped as a terminal stops it (SIGINT to its process group: the command gets it,
llmtap waits for it) or as `kill` does (SIGTERM to llmtap alone, passed on to the command); either
way every call the command made is in the file and in the summary, and the exit status is the
command's. `llmtap env` is evaluated by a real shell and its curl call checked in the proxy's file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from llmtap.launch import trust
from tests.e2e.conftest import Proxy, app_env
from tests.fakeprovider import FakeProvider

CALL = """
import os, signal, sys, time
from openai import OpenAI
client = OpenAI(api_key="sk-test-run", max_retries=0)
client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
if sys.argv[1:] == ["wait"]:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
    print("ready", flush=True)
    time.sleep(60)
sys.exit(int(sys.argv[1]) if sys.argv[1:] else 0)
"""


def shell_env(tmp: Path) -> dict[str, str]:
    return app_env(tmp / "home")


def llmtap_run(tmp: Path, fake: FakeProvider, *command: str, options: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "llmtap.cli", "run", "--db", str(tmp / "run.duckdb"),
            "--confdir", str(tmp / "conf"), "--set", f"llmtap_cache={tmp / 'cache.sqlite'}",
            "--map-remote", f"|https://api.openai.com/|{fake.url}/", *options, "--", *command]  # fmt: skip


def rows(db: Path) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as conn:
        return conn.execute("SELECT model, status, input_tokens, output_tokens FROM requests").fetchall()


def test_exit_status_and_summary(tmp_path: Path, fake: FakeProvider) -> None:
    cmd = llmtap_run(tmp_path, fake, sys.executable, "-c", CALL, "3")
    done = subprocess.run(cmd, env=shell_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-2:] == [
        f"  {'model':<32}{'calls':>7}{'input':>10}{'output':>10}  cost",
        f"  {'gpt-4o-mini':<32}{1:>7}{11:>10}{6:>10}  $0.000005250",
    ]
    assert lines[-3] == (
        "llmtap: 1 calls, 11 input + 6 output tokens, $0.000005250; 0 cache hits, 0 errors; exit status 3"
    )
    assert rows(tmp_path / "run.duckdb") == [("gpt-4o-mini", 200, 11, 6)]


def test_quiet_and_a_missing_command(tmp_path: Path, fake: FakeProvider) -> None:
    cmd = llmtap_run(tmp_path, fake, sys.executable, "-c", CALL, options=("--quiet",))
    done = subprocess.run(cmd, env=shell_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "")
    missing = subprocess.run(llmtap_run(tmp_path, fake, "no-such-command-llmtap"), env=shell_env(tmp_path),
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert missing.returncode == 127
    assert "llmtap: no-such-command-llmtap: command not found" in missing.stderr


@pytest.mark.parametrize(("how", "status"), [("ctrl-c", 130), ("sigterm", 7)])
def test_stopped_while_the_command_runs_loses_nothing(
    tmp_path: Path, fake: FakeProvider, how: str, status: int
) -> None:
    """Ctrl-C: SIGINT to the whole group (the command dies of it: 128 + 2). SIGTERM to llmtap's pid
    only: passed on; the command's handler exits 7."""
    cmd = llmtap_run(tmp_path, fake, sys.executable, "-c", CALL, "wait", options=("--format", "json"))
    proc = subprocess.Popen(cmd, env=shell_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    s = json.loads(err.strip().splitlines()[-1])
    assert (s["calls"], s["input_tokens"], s["output_tokens"], s["cost_usd"], s["exit_status"]) == (
        1, 11, 6, "0.000005250", status
    )  # fmt: skip
    assert rows(tmp_path / "run.duckdb") == [("gpt-4o-mini", 200, 11, 6)]


def test_run_through_a_running_proxy(
    tmp_path: Path, fake: FakeProvider, start_proxy: Callable[..., Proxy]
) -> None:
    """`--proxy URL`: the summary waits until that proxy's writer has the calls in its file."""
    proxy = start_proxy("--map-remote", f"|https://api.openai.com/|{fake.url}/", flush_ms=1000)
    cmd = [sys.executable, "-m", "llmtap.cli", "run", "--proxy", proxy.url, "--api", proxy.api,
           "--db", str(proxy.db), "--confdir", str(proxy.confdir), "--format", "json", "--",
           sys.executable, "-c", CALL]  # fmt: skip
    done = subprocess.run(cmd, env=shell_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stderr.strip().splitlines()[-1])
    assert (s["calls"], s["input_tokens"], s["output_tokens"], s["cost_usd"]) == (1, 11, 6, "0.000005250")


def test_env_in_a_shell_and_ca(tmp_path: Path, fake: FakeProvider, start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy("--map-remote", f"|https://api.openai.com/|{fake.url}/")
    env = shell_env(tmp_path)
    ca = subprocess.run([sys.executable, "-m", "llmtap.cli", "ca", "--confdir", str(proxy.confdir)],
                        env=env, capture_output=True, text=True, check=True)  # fmt: skip
    bundle = tmp_path / "home" / "ca-bundle.pem"
    assert ca.stdout.splitlines() == [str(proxy.confdir / "mitmproxy-ca-cert.pem"), str(bundle)]
    system = trust.system_roots().read_text()
    assert bundle.read_text() == system.rstrip("\n") + "\n" + proxy.ca.read_text()
    script = f"""
    eval "$({sys.executable} -m llmtap.cli env --proxy {proxy.url} --confdir {proxy.confdir})"
    echo "$HTTPS_PROXY $https_proxy $SSL_CERT_FILE $NODE_USE_ENV_PROXY"
    echo "$NO_PROXY"
    curl -sS --fail https://api.openai.com/v1/chat/completions -H 'authorization: Bearer sk-test-env' \\
      -H 'content-type: application/json' -o /dev/null -w '%{{http_code}}\\n' \\
      -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}]}}'
    """
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{proxy.url} {proxy.url} {bundle} 1",
        "localhost,127.0.0.1,::1",
        "200",
    ]
    (row,) = proxy.wait_rows("SELECT model, input_tokens, output_tokens FROM requests", 1)
    assert (row["model"], row["input_tokens"], row["output_tokens"]) == ("gpt-4o-mini", 11, 6)


def test_a_caller_bundle_is_kept_under_its_own_name(tmp_path: Path) -> None:
    """A corporate SSL_CERT_FILE stays the base (its own bundle file); a nested run never nests ours."""
    base = tmp_path / "corp.pem"
    base.write_text(trust.system_roots().read_text())
    env = shell_env(tmp_path) | {"SSL_CERT_FILE": str(base)}
    out = subprocess.run([sys.executable, "-m", "llmtap.cli", "ca", "--confdir", str(tmp_path / "conf")],
                         env=env, capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
    assert Path(out[1]).name.startswith("ca-bundle-") and Path(out[1]).parent == tmp_path / "home"
    again = subprocess.run([sys.executable, "-m", "llmtap.cli", "ca", "--confdir", str(tmp_path / "conf")],
                           env=env | {"SSL_CERT_FILE": out[1]}, capture_output=True, text=True,
                           check=True).stdout.splitlines()  # fmt: skip
    assert Path(again[1]).name == "ca-bundle.pem"  # llmtap's own bundle is never a base
