"""Run mitmdump with the llmtap addon as a child process (demo, tests, benchmarks).

The proxy is started on a port the OS picks (`-p 0`) and is ready once its log says
`listening at host:port`. It runs in a session of its own, and `stop()` stops it as a terminal's
Ctrl-C does: SIGINT to its whole process group, the llmtap-writer child included (systemd's stop
is the same with SIGTERM). The addon's `done` flushes the writer; SIGKILL follows only after a
timeout (reference/mitmproxy.md §1, Shutdown).
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
_API = re.compile(r"llmtap: local API at http://(\S+)")


def mitmdump_command() -> list[str]:
    exe = Path(sys.executable).with_name("mitmdump")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()"]


def option(args: list[str], name: str) -> str | None:
    """The last `--set name=value` among mitmdump arguments, or None when none sets it."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    return values[-1] if values else None


def _api_settled(log: str, args: list[str], env: dict[str, str]) -> bool:
    """The local API has started (or failed to), unless it is turned off (`llmtap_api=`)."""
    value = option(args, "llmtap_api")
    if value is None:
        value = env.get("LLMTAP_API", "127.0.0.1:8788")
    return not value or "llmtap: local API" in log


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

    @property
    def api(self) -> str | None:
        """host:port of its local API, as its log says (`start` waits for that line), or None."""
        m = _API.search(self.output())
        return m.group(1) if m else None

    def stop(self, sig: int = signal.SIGINT, group: bool = True, timeout: float = 20.0) -> int:
        """Signal the process group (or mitmdump alone) and wait for mitmdump to exit."""
        if self.proc.poll() is None:
            self.signal(sig, group)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL, group=True)
                self.proc.wait(5)
        return self.proc.returncode

    def signal(self, sig: int, group: bool = True) -> None:
        try:
            if group:
                os.killpg(self.proc.pid, sig)  # the group's id is mitmdump's pid (its own session)
            else:
                self.proc.send_signal(sig)
        except ProcessLookupError:
            pass


def start(
    args: list[str],
    workdir: Path,
    *,
    tap: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    command: list[str] | None = None,
    confdir: Path | None = None,
) -> ProxyProcess:
    """Start mitmdump on 127.0.0.1 with a free port and wait until it listens (and, when it serves
    one, its local API). `command` replaces `mitmdump -s addon/tap.py` (e.g. `llmtap proxy`, which
    adds the script itself); `confdir` (its CA) defaults to one of its own in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"mitmdump-{time.monotonic_ns()}.log"
    cmd = command or [*mitmdump_command(), *(["-s", str(TAP)] if tap else [])]
    conf = confdir or workdir / "conf"
    cmd = [*cmd, "--listen-host", "127.0.0.1", "-p", "0", "--set", f"confdir={conf}", *args]
    child_env = dict(os.environ if env is None else env)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        child_env.pop(name, None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,  # its own process group, as a shell job or a systemd unit
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if proc.poll() is not None:
            raise RuntimeError(f"mitmdump exited with {proc.returncode}:\n{text}")
        m = _LISTENING.search(text)
        if m and (not tap or ("llmtap: logging" in text and _api_settled(text, args, child_env))):
            return ProxyProcess(proc, int(m.group(1)), log)
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"mitmdump did not start within {timeout}s:\n{log.read_text(errors='replace')}")
