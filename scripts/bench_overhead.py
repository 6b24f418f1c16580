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
  The writer's capacity is 1 / its CPU per request: the target is >= 3x the tap's throughput at 10
  clients (TARGET_WRITER_CAPACITY), i.e. one writer keeps up with three such proxies' worth of calls.

How: the upstream is benchkit's minimal asyncio server in its own process (`--upstream fake` uses
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
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import (  # noqa: E402
    CLIENTS,
    EVENT_DELAY_MS,
    SENT,
    Client,
    Phase,
    Proc,
    Samples,
    arguments,
    count_rows,
    cpu,
    log_lines,
    measure,
    median_phase,
    percentile,
    rss_mib,
    start_proxy,
    start_tap,
    start_upstream,
    stop,
    verdict,
    wait_ready,
    workspace,
    write_json,
    writer_pid,
    writer_quiet,
)

TARGET_THROUGHPUT = 0.85
TARGET_ADDED_MS = 1.0
TARGET_RSS_GROWTH_MIB = 5.0
TARGET_WRITER_CAPACITY = 3.0  # the writer keeps up with 3x what the proxy carries
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


# --- measuring ------------------------------------------------------------------------------------


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
    with workspace("bench", args.keep) as ws:
        tmp, log = ws.tmp, ws.log
        log(f"starting upstream ({args.upstream}) and 4 mitmdumps in {tmp}")
        procs = start_all(args.upstream, tmp, ws.started)
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
        result["log_errors"] = {p.name: log_lines(p)[:5] for p in proxies}
    result["counts"] = asdict(counts)
    result["upstream"] = args.upstream
    result["cores"] = os.cpu_count()
    return result


# --- report ---------------------------------------------------------------------------------------


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


def writer_capacity(phase: Phase) -> float:
    """Requests per second one llmtap-writer core could take (its CPU per request, drain included)
    over what the proxy carried: how far the writer is from becoming the bottleneck."""
    return 1e6 / phase.writer_us_per_request / phase.rps


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
        check(
            f"writer capacity / tap throughput, {CLIENTS} clients",
            writer_capacity(tap["c10"]),
            TARGET_WRITER_CAPACITY,
            "x",
        ),
        Check("DuckDB rows / requests sent", rows, f"{rows}/{sent}", "all", rows == sent),
    ]


def report(r: dict[str, Any]) -> str:
    c = r["counts"]
    out = [
        "llmtap overhead: bare mitmdump vs mitmdump -s addon/tap.py (reverse mode, loopback, HTTP/1.1)",
        f"upstream: {"benchkit's asyncio server" if r['upstream'] == 'fast' else 'llmtap.demo.fakeprovider'}"
        f" (own process); {r['cores']} cores; {c['rounds']} interleaved rounds; throughput: median of"
        " the rounds' tap/bare ratios; the rest: medians of rounds",
        "",
        f"{'target':<46}{'measured':>14}  {'target':<12}",
    ]
    out += [f"{c.name:<46}{c.shown:>14}  {c.target:<12}{verdict(c.ok)}" for c in summary(r)]
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


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument(
        "--upstream",
        choices=("fast", "fake"),
        default="fast",
        help="fast: benchkit's asyncio server (default); fake: llmtap.demo.fakeprovider, which takes "
        "~44 ms per keep-alive request here, so it, not the proxy, is what gets measured",
    )
    args = parser.parse_args()
    result = run(args)
    print(report(result))
    write_json(args.json, {"summary": summary(result)} | result)


if __name__ == "__main__":
    main()
