"""Overhead of llmtap: bare `mitmdump` vs `mitmdump -s addon/tap.py`, same upstream, one run.

What is measured (all over loopback HTTP/1.1 keep-alive, reverse mode, quiet mitmdump):

- throughput and latency at 1 client (N sequential requests on one connection) and at 10 concurrent
  clients (one connection each, fixed duration), non-streamed `POST /v1/chat/completions`;
- stream TTFT: request sent -> first SSE event carrying content, upstream pacing 5 events 20 ms apart.
  Bare mitmdump buffers SSE (it only streams when an addon sets `flow.response.stream`), so the
  TTFT baseline is a third mitmdump whose only addon is a one-line `stream = True` pass-through; the
  buffered bare figure is printed for information;
- memory: VmRSS of a fresh tap mitmdump over 20k requests at 10 clients, from after a 500-request
  warm-up ("flat" = at most 5 MiB growth, TARGET_RSS_GROWTH_MIB), and the DuckDB row count once it
  has been stopped with SIGTERM (which flushes);
- CPU seconds of the proxy, the upstream and this client per phase (/proc/PID/stat), so a reader can
  see that the proxy, not the upstream or the client, is the saturated process; and the tap's
  `llmtap-writer` child per request. After each tap phase the run waits for the writer to go idle
  (its last flush included), so that work is counted for the tap and cannot slow the next phase.

How: the upstream is a minimal asyncio server in its own process (`--upstream fake` uses
llmtap.demo.fakeprovider instead, for a cross-check only: it is far slower than mitmdump). Every proxy is
its own process and is measured alone while the others sit idle. Rounds are interleaved (bare, tap,
tap, bare...) to spread drift. The throughput ratio is the median of the per-round tap/bare ratios
(each pair ran back to back, so drift of this shared machine cancels out of it; the ratio of the
medians is printed too); req/s and latency percentiles are the median of the rounds, TTFT
percentiles are over the pooled samples. The client is a raw asyncio HTTP/1.1 client in this
process. Targets print PASS/MISS; the exit code is 0 unless something crashes (this is a
measurement, not a test).

    python scripts/bench_overhead.py [--quick] [--json FILE] [--upstream fast|fake]
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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
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
TARGET_THROUGHPUT = 0.85
TARGET_ADDED_MS = 1.0
TARGET_RSS_GROWTH_MIB = 5.0
PASSTHROUGH_ADDON = """\
def responseheaders(flow):
    if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
        flow.response.stream = True
"""


@dataclass(frozen=True)
class Counts:
    rounds: int
    seq_requests: int  # per round and variant
    conc_seconds: float  # per round and variant
    ttft_samples: int  # per variant, spread over the rounds
    ttft_reference_samples: int  # direct and buffered bare, once
    memory_requests: int
    memory_warmup: int


DEFAULT = Counts(10, 1000, 3.0, 100, 20, 20_000, 500)
QUICK = Counts(3, 300, 1.5, 21, 5, 3_000, 200)


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
    """HTTP/1.1 keep-alive, requests with content-length, one at a time (no pipelining)."""

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


@dataclass
class Ttft:
    samples: int
    errors: int
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, parts: list[Samples]) -> Ttft:
        values = [v for s in parts for v in s.latencies]
        errors = sum(s.errors for s in parts)
        return cls(len(values), errors, 1000 * percentile(values, 0.5), 1000 * percentile(values, 0.99))


@dataclass
class Procs:
    upstream: Proc
    bare: Proc
    passthrough: Proc
    tap: Proc
    memory: Proc

    def proxies(self) -> list[Proc]:
        return [self.bare, self.passthrough, self.tap, self.memory]


async def throughput(procs: Procs, counts: Counts, log: Callable[[str], None]) -> dict[str, Any]:
    variants = {"bare": procs.bare, "tap": procs.tap}
    for proc in (*variants.values(), procs.passthrough):  # imports, first DuckDB flush, CA cert
        await Client(proc.port).load(CLIENTS, count=300)
    up = procs.upstream
    direct = Client(up.port)
    log("direct to upstream (reference)")
    result: dict[str, Any] = {
        "direct": {
            "c1": await measure(direct.load(1, count=counts.seq_requests), None, up),
            "c10": await measure(direct.load(CLIENTS, seconds=counts.conc_seconds), None, up),
        },
    }
    writer = writer_pid(procs.tap.pid)
    rounds: dict[str, dict[str, list[Phase]]] = {v: {"c1": [], "c10": []} for v in variants}
    for r in range(counts.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            log(f"round {r + 1}/{counts.rounds}: {name}")
            proxy, client = variants[name], Client(variants[name].port)
            for key, clients, count, seconds in (
                ("c1", 1, counts.seq_requests, None),
                ("c10", CLIENTS, None, counts.conc_seconds),
            ):
                w0 = cpu(writer)
                phase = await measure(client.load(clients, seconds, count), proxy, up)
                if proxy is procs.tap:
                    # The writer's last rows of this phase (parse, price, flush) are this phase's
                    # cost: wait for them, so they neither slow the next phase nor go uncounted.
                    await writer_quiet(writer)
                    phase.writer_us_per_request = 1e6 * (cpu(writer) - w0) / max(phase.requests, 1)
                rounds[name][key].append(phase)
    for name, phases in rounds.items():
        result[name] = {c: median_phase(p) for c, p in phases.items()}
        result[name]["rounds"] = phases
    return result


async def ttft(procs: Procs, counts: Counts, log: Callable[[str], None]) -> dict[str, Ttft]:
    log("stream TTFT")
    n_ref = counts.ttft_reference_samples
    result = {
        "direct": Ttft.of([await Client(procs.upstream.port).ttft_samples(n_ref)]),
        "bare_buffered": Ttft.of([await Client(procs.bare.port).ttft_samples(n_ref)]),
    }
    per_round = max(1, counts.ttft_samples // counts.rounds)
    parts: dict[str, list[Samples]] = {"passthrough": [], "tap": []}
    for r in range(counts.rounds):
        order = list(parts) if r % 2 == 0 else list(reversed(parts))
        for name in order:
            parts[name].append(await Client(getattr(procs, name).port).ttft_samples(per_round))
    return result | {name: Ttft.of(p) for name, p in parts.items()}


async def memory(proc: Proc, counts: Counts, log: Callable[[str], None]) -> dict[str, Any]:
    """RSS after each quarter of the requests; the pause lets the writer flush its queue first."""
    client = Client(proc.port)
    cold = rss_mib(proc.pid)
    errors = (await client.load(CLIENTS, count=counts.memory_warmup)).errors
    await asyncio.sleep(1.5)
    marks, rss = [0], [rss_mib(proc.pid)]
    step = counts.memory_requests // 4
    for i in range(1, 5):
        errors += (await client.load(CLIENTS, count=step)).errors
        await asyncio.sleep(1.5)
        marks.append(i * step)
        rss.append(rss_mib(proc.pid))
        log(f"memory: {i * step} requests, RSS {rss[-1]:.1f} MiB")
    growth = rss[-1] - rss[0]
    return {"cold_mib": cold, "marks": marks, "rss_mib": rss, "growth_mib": growth, "sent": SENT[proc.port],
            "errors": errors}  # fmt: skip


def count_rows(db: Path) -> int | None:
    import duckdb

    if not db.exists():
        return None
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute("SELECT count(*) FROM requests").fetchone()
    return int(row[0]) if row else None


def count_log_errors(proc: Proc) -> list[str]:
    text = proc.log.read_text(errors="replace") if proc.log.exists() else ""
    return [line for line in text.splitlines() if re.search(r"error|Traceback|crashed", line, re.I)]


def start_upstream(kind: str, tmp: Path) -> Proc:
    port = free_port()
    if kind == "fake":
        cmd = [sys.executable, "-m", "llmtap.demo.fakeprovider", "--port", str(port)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-upstream", str(port)]
    proc = spawn(f"upstream-{kind}", cmd, port, tmp)
    wait_ready(proc, settle=0.2)
    return proc


def start_all(kind: str, tmp: Path, started: list[Proc]) -> Procs:
    """Upstream, then the four proxies in parallel; `started` collects them for the cleanup."""
    upstream = start_upstream(kind, tmp)
    started.append(upstream)
    (tmp / "passthrough.py").write_text(PASSTHROUGH_ADDON)
    plain = {"bare": [], "passthrough": ["-s", str(tmp / "passthrough.py")]}
    proxies = {name: start_proxy(name, upstream.port, tmp, extra) for name, extra in plain.items()}
    started.extend(proxies.values())
    for proc in proxies.values():
        wait_ready(proc)
    for name in ("tap", "memory"):
        proxies[name] = start_tap(name, upstream.port, tmp, started)
    return Procs(upstream, **proxies)


def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = QUICK if args.quick else DEFAULT
    tmp = Path(tempfile.mkdtemp(prefix="llmtap-bench-"))
    t0 = time.monotonic()

    def log(message: str) -> None:
        print(f"  [{time.monotonic() - t0:6.1f} s] {message}", file=sys.stderr, flush=True)

    started: list[Proc] = []
    try:
        log(f"starting upstream ({args.upstream}) and 4 mitmdumps in {tmp}")
        procs = start_all(args.upstream, tmp, started)
        proxies = procs.proxies()
        rss_start = {p.name: rss_mib(p.pid) for p in proxies}
        result: dict[str, Any] = {"throughput": asyncio.run(throughput(procs, counts, log))}
        result["ttft"] = asyncio.run(ttft(procs, counts, log))
        result["rss_after_rounds_mib"] = {p.name: rss_mib(p.pid) for p in proxies}
        result["rss_start_mib"] = rss_start
        result["memory"] = asyncio.run(memory(procs.memory, counts, log))
        for proc in (procs.memory, procs.tap):  # SIGTERM flushes the writer queue
            result[f"{proc.name}_rc"] = stop(proc)
        result["memory"]["rows"] = count_rows(tmp / "memory.duckdb")
        result["tap_rows"] = count_rows(tmp / "tap.duckdb")
        result["tap_sent"] = SENT[procs.tap.port]
        result["log_errors"] = {p.name: count_log_errors(p)[:5] for p in proxies}
    finally:
        for proc in reversed(started):
            stop(proc)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log("done")
    result["counts"] = asdict(counts)
    result["upstream"] = args.upstream
    result["cores"] = os.cpu_count()
    return result


# --- report ---------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


@dataclass
class Check:
    name: str
    value: float
    shown: str
    target: str
    ok: bool


def check(name: str, value: float, limit: float, unit: str) -> Check:
    """A ratio ("x") must reach `limit`; an added cost (ms, MiB) must stay at or under it."""
    if unit == "x":
        return Check(name, value, f"{value:.3f}x", f">= {limit}x", value >= limit)
    return Check(name, value, f"{value:+.2f} {unit}", f"<= {limit} {unit}", value <= limit)


def paired_ratios(r: dict[str, Any], key: str) -> list[float]:
    """tap/bare req/s of each round: the two ran back to back, so slow drift of the shared machine
    cancels out of each ratio (the headline is their median)."""
    tap, bare = r["throughput"]["tap"]["rounds"][key], r["throughput"]["bare"]["rounds"][key]
    return sorted(t.rps / b.rps for t, b in zip(tap, bare, strict=True))


def summary(r: dict[str, Any]) -> list[Check]:
    tap, bare, ttft, m = r["throughput"]["tap"], r["throughput"]["bare"], r["ttft"], r["memory"]
    rows, sent = m["rows"] or 0, m["sent"]
    return [
        check(
            "throughput tap/bare, 1 client",
            statistics.median(paired_ratios(r, "c1")),
            TARGET_THROUGHPUT,
            "x",
        ),
        check(
            f"throughput tap/bare, {CLIENTS} clients",
            statistics.median(paired_ratios(r, "c10")),
            TARGET_THROUGHPUT,
            "x",
        ),
        check("added p50 latency, 1 client", tap["c1"].p50_ms - bare["c1"].p50_ms, TARGET_ADDED_MS, "ms"),
        check(
            "added stream TTFT p50", ttft["tap"].p50_ms - ttft["passthrough"].p50_ms, TARGET_ADDED_MS, "ms"
        ),
        check(f"RSS growth over {m['marks'][-1]:,} requests", m["growth_mib"], TARGET_RSS_GROWTH_MIB, "MiB"),
        Check("DuckDB rows / requests sent", rows, f"{rows}/{sent}", "all", rows == sent),
    ]


def report(r: dict[str, Any]) -> str:
    c = r["counts"]
    out = [
        "llmtap overhead: bare mitmdump vs mitmdump -s addon/tap.py (reverse mode, loopback, HTTP/1.1)",
        f"upstream: {'in-script asyncio server' if r['upstream'] == 'fast' else 'llmtap.demo.fakeprovider'}"
        f" (own process); {r['cores']} cores; {c['rounds']} interleaved rounds; throughput: median of"
        " the rounds' tap/bare ratios; the rest: medians of rounds",
        "",
        f"{'target':<38}{'measured':>14}  {'target':<12}",
    ]
    out += [f"{c.name:<38}{c.shown:>14}  {c.target:<12}{verdict(c.ok)}" for c in summary(r)]
    out += [
        "",
        f"non-streamed chat completion, {c['seq_requests']} sequential requests (1 client) and "
        f"{c['conc_seconds']:g} s at {CLIENTS} clients, per round",
        f"{'variant':<9}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'proxy cpu%':>12}{'upstr cpu%':>12}{'client cpu%':>13}{'proxy us/req':>14}{'writer us/req':>15}",
    ]
    for name in ("direct", "bare", "tap"):
        for key, clients in (("c1", 1), ("c10", CLIENTS)):
            p = r["throughput"][name][key]
            out.append(
                f"{name:<9}{clients:>8}{p.rps:>9.0f}{p.p50_ms:>9.3f}{p.p99_ms:>9.3f}{p.errors:>8}"
                f"{p.proxy_cpu_pct:>12.0f}{p.upstream_cpu_pct:>12.0f}{p.client_cpu_pct:>13.0f}"
                f"{p.proxy_us_per_request:>14.0f}{p.writer_us_per_request:>15.0f}"
            )
    for name in ("bare", "tap"):
        for key in ("c1", "c10"):
            rates = " ".join(f"{p.rps:.0f}" for p in r["throughput"][name]["rounds"][key])
            out.append(f"  rounds {name} {key}: req/s {rates}")
    for key in ("c1", "c10"):
        ratios = paired_ratios(r, key)
        of_medians = r["throughput"]["tap"][key].rps / r["throughput"]["bare"][key].rps
        out.append(
            f"  tap/bare {key} per round, sorted: {' '.join(f'{x:.3f}' for x in ratios)}"
            f" (ratio of the medians: {of_medians:.3f})"
        )
    out += [
        "",
        f"stream TTFT (5 SSE events {EVENT_DELAY_MS} ms apart; request sent -> first content event)",
        f"{'path':<44}{'samples':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}",
    ]
    labels = {
        "direct": "direct",
        "bare_buffered": "bare mitmdump (buffers the stream)",
        "passthrough": "mitmdump + stream=True addon (base)",
        "tap": "mitmdump -s tap.py",
    }
    for name, label in labels.items():
        t = r["ttft"][name]
        out.append(f"{label:<44}{t.samples:>8}{t.p50_ms:>9.3f}{t.p99_ms:>9.3f}{t.errors:>8}")
    m = r["memory"]
    out += [
        "",
        f"memory: fresh tap mitmdump, {CLIENTS} clients, after a {c['memory_warmup']}-request warm-up "
        f"(RSS cold {m['cold_mib']:.1f} MiB)",
        "  requests " + " ".join(f"{k:>8,}" for k in m["marks"]),
        "  RSS MiB  " + " ".join(f"{v:>8.1f}" for v in m["rss_mib"]),
        f"  sent {m['sent']:,} (errors {m['errors']}), rows in DuckDB after SIGTERM: {m['rows']} "
        f"(exit code {r['memory_rc']}); the rounds' tap: {r['tap_rows']} rows for {r['tap_sent']} "
        f"requests (exit code {r['tap_rc']})",
        "  RSS MiB at start / after the rounds: "
        + ", ".join(
            f"{k} {r['rss_start_mib'][k]:.1f}/{r['rss_after_rounds_mib'][k]:.1f}"
            for k in ("bare", "passthrough", "tap")
        ),
    ]
    for name, lines in r["log_errors"].items():
        if lines:
            out.append(f"  ! {name} log has error lines, first: {lines[0][:150]}")
    return "\n".join(out)


def to_json(obj: Any) -> Any:
    if isinstance(obj, Phase | Ttft | Check):
        return to_json(asdict(obj))
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    return obj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, under a minute")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--upstream",
        choices=("fast", "fake"),
        default="fast",
        help="fast: asyncio server in this script (default); fake: llmtap.demo.fakeprovider, which takes "
        "~44 ms per keep-alive request here, so it, not the proxy, is what gets measured",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, DuckDB files)")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    result = run(args)
    print(report(result))
    if args.json:
        payload = to_json({"summary": summary(result)} | result)
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
