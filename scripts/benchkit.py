"""What the benchmarks here share: the upstream they measure against, their child processes, a raw
HTTP/1.1 client, the measuring of a phase, and the plumbing of a run (temp dir, log, JSON).

One module, so that bench_overhead, bench_cache, bench_ratelimit and bench_reports start, stop and
time their processes the same way and a fix to one (e.g. how the writer's CPU is read) is a fix to
all. `python scripts/benchkit.py --serve-upstream PORT` runs the upstream alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ADDON_DIR = REPO / "addon"
TAP_SCRIPT = ADDON_DIR / "tap.py"

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
STREAM_BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}'
WORDS = ("Hello", " from", " the", " bench", "!")
EVENT_DELAY_MS = 20
CLIENTS = 10
COUNT_QUERY = b'{"llmtap_bench":"count"}'  # asks the upstream how many calls it has answered


# --- the upstream: a fixed OpenAI chat reply, JSON or paced SSE ---------------------------------


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: dict[str, Any] | str) -> bytes:
    payload = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return _chunk(f"data: {payload}\n\n".encode())


USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": 6,
    "total_tokens": 15,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
BASE = {
    "id": "chatcmpl-bench0000000000000000",
    "created": 1735689600,
    "model": "gpt-4o-mini-2024-07-18",
    "service_tier": "default",
    "system_fingerprint": "fp_bench",
}


def _json_reply() -> bytes:
    message = {"role": "assistant", "content": "".join(WORDS), "refusal": None, "annotations": []}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    body = json.dumps(
        {**BASE, "object": "chat.completion", "choices": [choice], "usage": USAGE}, separators=(",", ":")
    ).encode()
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _delta(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _event({**BASE, "object": "chat.completion.chunk", "choices": [choice]})


JSON_REPLY = _json_reply()
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
) + _delta({"role": "assistant", "content": ""})
STREAM_WORDS = [_delta({"content": w}) for w in WORDS]
STREAM_END = _delta({}, "stop")
STREAM_USAGE = _event({**BASE, "object": "chat.completion.chunk", "choices": [], "usage": USAGE})
STREAM_DONE = _event("[DONE]") + b"0\r\n\r\n"
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")
WANTS_STREAM = re.compile(rb'"stream"\s*:\s*true')
WANTS_USAGE = re.compile(rb'"include_usage"\s*:\s*true')


class Upstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive, requests with content-length, one at a time (no pipelining). It counts
    the calls it answers, and tells the count to a COUNT_QUERY."""

    served = 0

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            match = CONTENT_LENGTH.search(bytes(self.buf[:end]).lower())
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buf) < total:
                return
            body = bytes(self.buf[end + 4 : total])
            del self.buf[:total]
            self.reply(body)

    def reply(self, body: bytes) -> None:
        if body == COUNT_QUERY:  # sent straight to the upstream by a benchmark, never through a proxy
            text = str(Upstream.served).encode()
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n" % len(text)
            self.write(head + text)
            return
        Upstream.served += 1
        if not WANTS_STREAM.search(body):
            self.write(JSON_REPLY)
            return
        self.write(STREAM_HEAD)
        tail = STREAM_END + (STREAM_USAGE if WANTS_USAGE.search(body) else b"") + STREAM_DONE
        loop = asyncio.get_running_loop()
        for i, word in enumerate(STREAM_WORDS, 1):
            data = word + tail if i == len(STREAM_WORDS) else word
            loop.call_later(i * EVENT_DELAY_MS / 1000, self.write, data)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


def serve_upstream(port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=512)
        async with server:
            await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(main())


# --- child processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """No proxies, no llmtap settings from the caller's shell (an access key would 401 everything)."""
    drop = {"http_proxy", "https_proxy", "no_proxy", "all_proxy"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in drop and not k.startswith("LLMTAP_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ADDON_DIR), env.get("PYTHONPATH")]))
    return env


def spawn(name: str, cmd: list[str], port: int, tmp: Path) -> Proc:
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=tmp
        )
    return Proc(name, popen, port, log)


def log_tail(proc: Proc, lines: int = 15) -> str:
    text = proc.log.read_text(errors="replace") if proc.log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(proc: Proc, timeout: float = 60.0, settle: float = 1.0) -> None:
    """TCP connect works and the process is still alive `settle` s later (startup errors exit late)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", proc.port), timeout=0.5).close()
        except OSError:
            time.sleep(0.1)
            continue
        time.sleep(settle)
        if proc.popen.poll() is None:
            return
        break
    rc = proc.popen.poll()
    raise RuntimeError(f"{proc.name} not ready (rc={rc}); log tail:\n{log_tail(proc)}")


def stop(proc: Proc, timeout: float = 30.0) -> int:
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(10)
    return proc.popen.returncode


def mitmdump_cmd(port: int, upstream: int, conf: Path, extra: list[str]) -> list[str]:
    exe = Path(sys.executable).with_name("mitmdump")
    quiet_lazy = "flow_detail=0 termlog_verbosity=warn connection_strategy=lazy".split()
    options = [arg for option in [*quiet_lazy, f"confdir={conf}"] for arg in ("--set", option)]
    return [str(exe) if exe.exists() else "mitmdump", "--listen-host", "127.0.0.1", "-p", str(port),
            "--mode", f"reverse:http://127.0.0.1:{upstream}", *options, *extra]  # fmt: skip


def start_proxy(name: str, upstream: int, tmp: Path, extra: list[str]) -> Proc:
    port = free_port()
    return spawn(name, mitmdump_cmd(port, upstream, tmp / f"conf-{name}", extra), port, tmp)


def tap_args(name: str, tmp: Path) -> list[str]:
    return [
        "-s",
        str(TAP_SCRIPT),
        "--set",
        f"llmtap_db={tmp / f'{name}.duckdb'}",
        "--set",
        f"llmtap_cache={tmp / f'{name}-cache.sqlite'}",
        "--set",
        "llmtap_api=",  # several proxies at once: no local API port to fight over
    ]


def start_tap(
    name: str, upstream: int, tmp: Path, started: list[Proc], extra: list[str] | None = None
) -> Proc:
    """`mitmdump -s addon/tap.py` with its DuckDB and cache files in `tmp`, ready to measure."""
    proc = start_proxy(name, upstream, tmp, [*tap_args(name, tmp), *(extra or [])])
    started.append(proc)
    wait_ready(proc)
    return proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of all threads."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def writer_pid(parent: int) -> int | None:
    """The llmtap-writer child (multiprocessing spawn) of the tap mitmdump."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            return int(entry.name)
    return None


def cpu(pid: int | None) -> float:
    try:
        return cpu_seconds(pid) if pid is not None else float("nan")
    except OSError:
        return float("nan")


async def writer_quiet(pid: int | None, quiet: float = 1.3, step: float = 0.1, limit: float = 10.0) -> None:
    """Wait until the llmtap-writer has used no CPU for `quiet` s: longer than its flush interval
    (llmtap_flush_ms, 1 s by default), so its DuckDB flush of a batch's rows has happened too and
    cannot land in the next measurement."""
    if pid is None:
        return
    start = last_busy = time.perf_counter()
    used = cpu(pid)
    while (now := time.perf_counter()) - last_busy < quiet and now - start < limit:
        await asyncio.sleep(step)
        if (current := cpu(pid)) != used:
            used, last_busy = current, time.perf_counter()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def count_rows(db: Path) -> int | None:
    import duckdb

    if not db.exists():
        return None
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute("SELECT count(*) FROM requests").fetchone()
    return int(row[0]) if row else None


def log_lines(proc: Proc, pattern: str = r"error|Traceback|crashed") -> list[str]:
    """The lines of a process's log that match `pattern` (case-insensitive): its errors by default."""
    text = proc.log.read_text(errors="replace") if proc.log.exists() else ""
    return [line for line in text.splitlines() if re.search(pattern, line, re.I)]


def start_upstream(kind: str, tmp: Path) -> Proc:
    """`fast`: this module's Upstream in its own process; `fake`: llmtap.demo.fakeprovider."""
    port = free_port()
    if kind == "fake":
        cmd = [sys.executable, "-m", "llmtap.demo.fakeprovider", "--port", str(port)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-upstream", str(port)]
    proc = spawn(f"upstream-{kind}", cmd, port, tmp)
    wait_ready(proc, settle=0.2)
    return proc


# --- the client -----------------------------------------------------------------------------------


def http_request(port: int, body: bytes, stream: bool = False) -> bytes:
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        f"host: 127.0.0.1:{port}",
        "authorization: Bearer sk-bench",
        "content-type: application/json",
        f"content-length: {len(body)}",
    ]
    if stream:  # only llmtap.demo.fakeprovider reads these
        lines += [f"x-fake-delay-ms: {EVENT_DELAY_MS}", f"x-fake-reply: {''.join(WORDS)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def make_request(port: int, extra: dict[str, str] | None = None) -> bytes:
    """The non-streamed chat completion request with extra headers."""
    head, _, body = http_request(port, BODY).partition(b"\r\n\r\n")
    lines = "".join(f"\r\n{name}: {value}" for name, value in (extra or {}).items())
    return head + lines.encode() + b"\r\n\r\n" + body


async def call(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, dict[str, str], float]:
    """Send one request on a keep-alive connection: (status, headers, seconds to the body's end)."""
    start = time.perf_counter()
    writer.write(request)
    status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
    if "chunked" in headers.get("transfer-encoding", "").lower():
        async for _ in chunks(reader):
            pass
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, time.perf_counter() - start


async def upstream_count(port: int) -> int:
    """How many calls the upstream has answered so far."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(http_request(port, COUNT_QUERY))
        _, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
        return int(await reader.readexactly(int(headers["content-length"])))
    finally:
        writer.close()


async def chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Chunked transfer decoding; consumes the terminating chunk and any trailers."""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return
        yield (await reader.readexactly(size + 2))[:-2]


async def read_response(reader: asyncio.StreamReader) -> AsyncIterator[tuple[int, bytes]]:
    """(status, body piece) as the pieces arrive: chunk by chunk, or one content-length body."""
    status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
    if "chunked" in headers.get("transfer-encoding", "").lower():
        async for piece in chunks(reader):
            yield status, piece
    else:
        yield status, await reader.readexactly(int(headers.get("content-length", "0")))


def has_content(event: bytes) -> bool:
    for line in event.splitlines():
        if line.startswith(b"data: {"):
            try:
                choices = json.loads(line[6:]).get("choices") or [{}]
                return bool(choices[0].get("delta", {}).get("content"))
            except (ValueError, AttributeError, IndexError):
                return False
    return False


SENT: Counter[int] = Counter()  # requests answered, by target port (to check the DuckDB row count)


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)  # seconds
    errors: int = 0
    elapsed: float = 0.0


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.json_request = http_request(port, BODY)
        self.stream_request = http_request(port, STREAM_BODY, stream=True)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def call(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, float]:
        start = time.perf_counter()
        writer.write(self.json_request)
        status = 0
        async for piece_status, _ in read_response(reader):
            status = piece_status
        SENT[self.port] += 1
        return status, time.perf_counter() - start

    async def ttft(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float | None:
        start = time.perf_counter()
        writer.write(self.stream_request)
        first, buf = None, b""
        async for status, piece in read_response(reader):
            now = time.perf_counter()
            if first is None and status == 200:
                *events, buf = (buf + piece).split(b"\n\n")
                if any(has_content(e) for e in events):
                    first = now - start
        SENT[self.port] += 1
        return first

    async def load(self, clients: int, seconds: float | None = None, count: int | None = None) -> Samples:
        """`clients` connections; stop after `seconds` or after `count` requests in total."""
        out = Samples()
        left = [count if count is not None else -1]
        start = time.perf_counter()
        deadline = start + (seconds if seconds is not None else 1e9)

        async def worker() -> None:
            reader, writer = await self.open()
            try:
                while left[0] != 0 and time.perf_counter() < deadline:
                    left[0] -= 1
                    status, latency = await self.call(reader, writer)
                    out.latencies.append(latency)
                    out.errors += status != 200
            finally:
                writer.close()

        await asyncio.gather(*(worker() for _ in range(clients)))
        out.elapsed = time.perf_counter() - start
        return out

    async def ttft_samples(self, n: int) -> Samples:
        out = Samples()
        reader, writer = await self.open()
        try:
            for _ in range(n):
                first = await self.ttft(reader, writer)
                if first is None:
                    out.errors += 1
                else:
                    out.latencies.append(first)
        finally:
            writer.close()
        return out


# --- measuring ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


@dataclass
class Phase:
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    proxy_cpu_pct: float
    upstream_cpu_pct: float
    client_cpu_pct: float
    proxy_us_per_request: float
    writer_us_per_request: float = math.nan  # the tap's llmtap-writer child, drain included


async def measure(work: Awaitable[Samples], proxy: Proc | None, upstream: Proc) -> Phase:
    """Run `work` and put CPU seconds of the proxy, the upstream and this process next to it."""
    pids = [p.pid for p in (proxy, upstream) if p is not None]
    before = [cpu_seconds(pid) for pid in pids] + [time.process_time()]
    s = await work
    after = [cpu_seconds(pid) for pid in pids] + [time.process_time()]
    used = [b - a for a, b in zip(before, after, strict=True)]
    if proxy is None:
        used.insert(0, float("nan"))
    n = len(s.latencies)
    pct = [100 * u / s.elapsed for u in used]
    return Phase(
        n,
        s.errors,
        n / s.elapsed,
        1000 * percentile(s.latencies, 0.5),
        1000 * percentile(s.latencies, 0.99),
        *pct,
        1e6 * used[0] / max(n, 1),
    )


def median_phase(phases: list[Phase]) -> Phase:
    values = [statistics.median(getattr(p, f.name) for p in phases) for f in fields(Phase)]
    merged = Phase(*values)
    merged.requests = sum(p.requests for p in phases)
    merged.errors = sum(p.errors for p in phases)
    return merged


# --- a run ----------------------------------------------------------------------------------------


@dataclass
class Workspace:
    """A run's temp dir, the processes it started (stopped last first at the end) and its log."""

    tmp: Path
    started: list[Proc] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def log(self, message: str) -> None:
        print(f"  [{time.monotonic() - self.t0:6.1f} s] {message}", file=sys.stderr, flush=True)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            stop(proc)


@contextmanager
def workspace(name: str, keep: bool) -> Iterator[Workspace]:
    ws = Workspace(Path(tempfile.mkdtemp(prefix=f"llmtap-{name}-")))
    try:
        yield ws
    finally:
        ws.stop_all()
        if keep:
            print(f"kept {ws.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(ws.tmp, ignore_errors=True)
    ws.log("done")


def arguments(
    doc: str | None, keep: str = "logs, DuckDB files", quick: str = "small counts, under a minute"
) -> argparse.ArgumentParser:
    """The flags every benchmark takes; a benchmark adds its own to the parser returned."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true", help=f"keep the temp dir ({keep})")
    return parser


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def to_json(obj: Any) -> Any:
    """Plain JSON values: dataclasses as dicts, NaN as null."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return to_json(asdict(obj))
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    return obj


def write_json(path: str | None, payload: Any) -> None:
    if path:
        Path(path).write_text(json.dumps(to_json(payload), indent=2, default=str) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the benchmarks' upstream, alone")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", required=True)
    serve_upstream(parser.parse_args().serve_upstream)
