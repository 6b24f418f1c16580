"""`llmtap proxy --workers N`: N mitmdump processes serving one port, for a machine's cores.

mitmproxy binds with a plain `asyncio.start_server`, so a second mitmdump on a port fails with
EADDRINUSE, and an addon loads too late to change that. Each worker therefore starts through
`serve()`, which gives `asyncio.start_server` `reuse_port=True` before mitmproxy runs: Linux then
spreads new connections over the workers (SO_REUSEPORT), and drops a dead worker's socket from the
group, so the others keep serving. The same goes for the local API: its port is shared too, and
any worker answers it.

Workers share state only through servers, so the launcher refuses to start without both a Redis
(`llmtap_redis`: in-process buckets would admit N times a limit) and a Postgres `llmtap_db` (a
DuckDB file takes one writer process). It creates the CA before the workers start (two workers
creating one at once could each make a different one), numbers them in LLMTAP_WORKER (the
default `llmtap_proxy_id` is host:worker), forwards Ctrl-C / SIGTERM to each worker once, and
restarts a worker that dies while the others serve.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from llmtap import proxyproc
from llmtap.storage import postgres

RESTART_AFTER = 1.0  # seconds before a dead worker is started again (doubled per quick death)
HEALTHY_AFTER = 5.0  # a death sooner than this after a start is a quick one...
QUICK_DEATHS = 3  # ...and a worker that dies quickly this many times in a row is left dead
STOP_TIMEOUT = 30.0


class WorkersError(Exception):
    """A launch that must not go ahead (shown as `llmtap: ...`, exit status 2)."""


def split_workers(argv: list[str]) -> tuple[int, list[str]]:
    """`--workers N` (or `--workers=N`) first among `llmtap proxy`'s arguments; the rest is mitmdump's."""
    if argv[:1] == ["--workers"] and len(argv) > 1:
        raw, rest = argv[1], argv[2:]
    elif argv[:1] and argv[0].startswith("--workers="):
        raw, rest = argv[0].split("=", 1)[1], argv[1:]
    else:
        return 1, argv
    if not raw.isdigit() or int(raw) < 1:
        raise WorkersError(f"--workers takes a number of processes (1 or more), got {raw!r}")
    return int(raw), rest


def check(workers: int, args: list[str], env: dict[str, str]) -> None:
    """Refuse a fleet of workers without the shared servers it needs, naming each one missing."""
    redis = proxyproc.option(args, "llmtap_redis") or env.get("LLMTAP_REDIS", "")
    db = proxyproc.option(args, "llmtap_db") or env.get("LLMTAP_DB", "llmtap.duckdb")
    missing = []
    if not redis:
        missing.append(
            f"llmtap_redis (rate limits and the cache must be shared, or each of the {workers} workers"
            " admits a whole limit): --set llmtap_redis=redis://HOST:6379/0 or env LLMTAP_REDIS"
        )
    if not postgres.is_url(db):
        missing.append(
            f"a Postgres llmtap_db (it is {db!r}; a DuckDB file takes one writer process):"
            " --set llmtap_db=postgresql://USER@HOST/DB or env LLMTAP_DB"
        )
    if missing:
        raise WorkersError(f"--workers {workers} needs " + "; and ".join(missing))
    if not hasattr(socket, "SO_REUSEPORT") or not sys.platform.startswith("linux"):
        raise WorkersError(
            "--workers needs Linux (SO_REUSEPORT); elsewhere run one proxy per port behind a TCP balancer"
        )


def main(argv: list[str]) -> int:
    """Start the workers, keep them running, stop them all on Ctrl-C / SIGTERM."""
    workers, args = split_workers(argv)
    env = dict(os.environ)
    check(workers, args, env)
    args = _concrete_port(args)
    _make_ca(args)
    fleet = Fleet(workers, args, env)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, fleet.stop)
    return fleet.run()


class Fleet:
    def __init__(self, n: int, args: list[str], env: dict[str, str]) -> None:
        self.n, self.args, self.env = n, args, env
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self.started: list[float] = [0.0] * n
        self.quick: list[int] = [0] * n  # quick deaths in a row
        self.stopping: int | None = None  # the signal we were stopped with

    def run(self) -> int:
        for i in range(self.n):
            self._start(i)
        while self.stopping is None:
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None and self.stopping is None:
                    self._died(i, proc.returncode)
            if all(p is None for p in self.procs):
                _say("every worker has exited; stopping")
                return 1
            time.sleep(0.1)
        return self._wait()

    def stop(self, sig: int, _frame: object = None) -> None:
        """Ctrl-C or SIGTERM: once to each worker's process group (writer included), as a terminal would."""
        if self.stopping is not None:
            return
        self.stopping = sig
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                _signal_group(proc, sig)

    def _start(self, i: int) -> None:
        cmd = [
            sys.executable,
            "-c",
            "from llmtap.launch.workers import serve; serve()",
            "-s",
            str(proxyproc.TAP),
        ]
        env = {**self.env, "LLMTAP_WORKER": str(i)}
        self.procs[i] = subprocess.Popen(
            [*cmd, *self.args], env=env, start_new_session=True, preexec_fn=_die_with_parent
        )
        self.started[i] = time.monotonic()
        _say(f"worker {i} started (pid {self.procs[i].pid})")  # type: ignore[union-attr]

    def _died(self, i: int, code: int) -> None:
        """Restart a dead worker, unless it keeps dying at start (a bad option, a taken port)."""
        quick = time.monotonic() - self.started[i] < HEALTHY_AFTER
        self.quick[i] = self.quick[i] + 1 if quick else 0
        if self.quick[i] >= QUICK_DEATHS:
            _say(f"worker {i} exited with status {code} {QUICK_DEATHS} times in a row at start; left stopped")
            self.procs[i] = None
            return
        _say(f"worker {i} exited with status {code}; the others keep serving; restarting it")
        time.sleep(RESTART_AFTER * 2 ** self.quick[i])
        if self.stopping is None:
            self._start(i)

    def _wait(self) -> int:
        deadline = time.monotonic() + STOP_TIMEOUT
        codes = []
        for proc in self.procs:
            if proc is None:
                continue
            try:
                codes.append(proc.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                codes.append(proc.wait(5))
        return 0 if all(c == 0 for c in codes) else 1


def serve() -> None:
    """A worker: mitmdump, with every asyncio server it starts sharing its port (SO_REUSEPORT)."""
    import asyncio

    original = asyncio.start_server

    async def start_server(*args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("reuse_port", True)
        return await original(*args, **kwargs)

    asyncio.start_server = start_server  # type: ignore[assignment]
    from mitmproxy.tools.main import mitmdump

    mitmdump()


def _concrete_port(args: list[str]) -> list[str]:
    """`-p 0` would give each worker a port of its own: pick one free port for all of them."""
    out = list(args)
    for k, arg in enumerate(out):
        if arg in ("-p", "--listen-port") and k + 1 < len(out) and out[k + 1] == "0":
            out[k + 1] = str(_free_port())
        elif arg == "--listen-port=0":
            out[k] = f"--listen-port={_free_port()}"
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_ca(args: list[str]) -> None:
    from llmtap.launch import trust

    confdir = proxyproc.option(args, "confdir")
    trust.ca_cert(Path(confdir).expanduser() if confdir else trust.default_confdir())


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM when the launcher dies (even by SIGKILL), so no worker
    outlives it and holds the port (prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _say(text: str) -> None:
    print(f"llmtap: {text}", file=sys.stderr, flush=True)
