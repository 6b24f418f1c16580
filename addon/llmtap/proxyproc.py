"""Run mitmdump with the llmtap addon as a child process (demo, tests, benchmarks).

The proxy is started on a port the OS picks (`-p 0`) and is ready once its log says
`listening at host:port`. `stop()` sends SIGTERM so the addon's `done` flushes the writer, and
escalates to SIGKILL only after a timeout (reference/mitmproxy.md §1, Shutdown).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TAP = Path(__file__).resolve().parent.parent / "tap.py"
_LISTENING = re.compile(r"listening at [^\s]*?:(\d+)")


def mitmdump_command() -> list[str]:
    exe = Path(sys.executable).with_name("mitmdump")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()"]


@dataclass
class ProxyProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start(
    args: list[str],
    workdir: Path,
    *,
    tap: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> ProxyProcess:
    """Start mitmdump on 127.0.0.1 with a free port and wait until it listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"mitmdump-{time.monotonic_ns()}.log"
    cmd = [*mitmdump_command(), "--listen-host", "127.0.0.1", "-p", "0"]
    cmd += ["--set", f"confdir={workdir / 'conf'}"]
    if tap:
        cmd += ["-s", str(TAP)]
    cmd += args
    child_env = dict(os.environ if env is None else env)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        child_env.pop(name, None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=child_env
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if proc.poll() is not None:
            raise RuntimeError(f"mitmdump exited with {proc.returncode}:\n{text}")
        m = _LISTENING.search(text)
        if m and ("llmtap: logging" in text or not tap):
            return ProxyProcess(proc, int(m.group(1)), log)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"mitmdump did not start within {timeout}s:\n{log.read_text(errors='replace')}")
