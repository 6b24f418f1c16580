"""Rate-limit overhead: an allowed rate-limited call vs no policy through `mitmdump -s addon/tap.py`,
and the cost of a denied (local 429) call, one run.

What is measured (loopback HTTP/1.1 keep-alive, reverse mode, quiet mitmdump, benchkit.py's
fast upstream in its own process, with the request counter that this script reads over a direct
connection):

- proxy A, `mitmdump -s addon/tap.py` with no rules file (`--set llmtap_rules=`):
  - no policy: the baseline;
  - header policy `Helicone-RateLimit-Policy: 1000000;w=60` (a quota so large it never limits);
  - per-user header policy `1000000;w=60;s=user` with `Helicone-User-Id` rotating over 100 users;
  - denied: `1;w=31536000`, whose one request was spent before the rounds (a year's window, so it
    does not refill during the run): every call is a local 429 that never reaches the upstream;
- proxy B, the same plus `--set llmtap_rules=<tmp>/rules.yaml`, one rule matching every request
  with `rate_limit: {quota: 1000000, window: 60s}`:
  - rule only (no header), and rule + the `1000000;w=60` header: two policies at once.
  B has no no-policy baseline of its own (its rule matches everything), so its rows are compared
  with A's baseline, across two processes; "rule + header vs rule only" is within B.

Each row is measured sequentially (N requests on one keep-alive connection) and at 10 concurrent
connections (fixed duration). Rows are interleaved over many short rounds, the order rotated and
every other round reversed; req/s and latency percentiles are the medians of the rounds, as in
bench_overhead.py, and a row's added p50 and throughput ratio against the baseline are the medians of
its within-round differences and ratios, so drift and bursts of other load between rounds cancel.
Every response is checked: 200 (429 for the denied row) and, for every row with a policy, a
`helicone-ratelimit-remaining` header (none for the baseline); the upstream's request count is read
before and after every batch, so allowed batches must add exactly their requests and denied batches
nothing. CPU per request is from /proc/PID/stat: the mitmdump process (median of the rounds) and its
llmtap-writer child (total over the rounds, no drain wait). The CPU that other processes on the
machine used during the rounds is printed, since it is what makes the figures scatter. For scale,
the rate-limit path alone (policies, admit, response headers) is also timed in this process. Each
tap gets `llmtap_db` and `llmtap_cache` in the temp dir and the local API off (both would bind its
default port). The verdict prints PASS when an allowed header-policy call adds at most 0.1 ms to the
sequential p50, INFO otherwise; the exit code is 0 unless something crashes (a measurement, not a
test).

    python scripts/bench_ratelimit.py [--quick] [--json FILE] [--keep] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE), str(HERE.parent / "addon")) if p not in sys.path]

import benchkit as bk  # noqa: E402
from benchkit import SENT, Phase, Proc, Samples, call, make_request, percentile, upstream_count  # noqa: E402

from llmtap.policy import ratelimit, rules  # noqa: E402

CLIENTS = bk.CLIENTS
TARGET_ADDED_MS = 0.1
BIG = "1000000;w=60"
USERS = 100
DENY = "1;w=31536000"
RULE_NAME = "bench-limit"
RULES_YAML = f"""\
rules:
  - name: {RULE_NAME}
    match: {{}}
    rate_limit: {{quota: 1000000, window: 60s}}
"""
REMAINING = "helicone-ratelimit-remaining"
POLICY = "Helicone-RateLimit-Policy"


@dataclass(frozen=True)
class Counts:
    rounds: int
    seq_requests: int  # per round and row
    conc_seconds: float  # per round and row
    warmup: int  # per row, at 10 clients, before the rounds
    inprocess: int  # timed calls per case of the in-process rate-limit path


DEFAULT = Counts(15, 300, 0.6, 300, 20_000)
QUICK = Counts(4, 150, 0.3, 150, 5_000)


# --- proxies --------------------------------------------------------------------------------------


def log_notes(proc: Proc) -> tuple[int, list[str]]:
    """Error lines and the addon's own lines (e.g. "the writer process is behind; N records dropped")
    of a proxy's log: how many, and the last 5."""
    lines = bk.log_lines(proc, r"error|Traceback|crashed|llmtap:")
    return len(lines), lines[-5:]


# --- the rows -------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the responses of a row looked like."""

    status: Counter[int] = field(default_factory=Counter)
    remaining: int = 0  # responses carrying helicone-ratelimit-remaining
    upstream_expected: int = 0  # requests the upstream should have seen for this row's batches
    upstream_seen: int = 0  # what its counter grew by over them

    def add(self, status: int, headers: dict[str, str]) -> None:
        self.status[status] += 1
        self.remaining += REMAINING in headers

    @property
    def total(self) -> int:
        return sum(self.status.values())


@dataclass
class Row:
    key: str
    label: str
    proxy: str  # "A" or "B"
    headers: list[dict[str, str]]  # cycled over the requests
    expect: int  # status every response must have
    limited: bool  # every response must carry helicone-ratelimit-remaining (else none may)
    c1: list[Phase] = field(default_factory=list)
    c10: list[Phase] = field(default_factory=list)
    writer_cpu: dict[str, list[float]] = field(default_factory=lambda: {"c1": [], "c10": []})  # s/batch
    tally: Tally = field(default_factory=Tally)

    def median(self, clients: str) -> Phase:
        return bk.median_phase(getattr(self, clients))

    def writer_us(self, clients: str) -> float:
        """The llmtap-writer's CPU per request over all the rounds (one batch's flush may land in the
        next batch, so per-batch figures scatter; the total does not)."""
        used = [v for v in self.writer_cpu[clients] if v == v]
        return 1e6 * sum(used) / max(sum(p.requests for p in getattr(self, clients)), 1)

    def checks_ok(self) -> bool:
        t = self.tally
        want_remaining = t.total if self.limited else 0
        return t.status[self.expect] == t.total and t.remaining == want_remaining


def make_rows() -> list[Row]:
    users = [{POLICY: f"{BIG};s=user", "Helicone-User-Id": f"bench-user-{i:03d}"}
             for i in range(USERS)]  # fmt: skip
    return [
        Row("none", "no policy (baseline)", "A", [{}], 200, False),
        Row("header", f"header {BIG}", "A", [{POLICY: BIG}], 200, True),
        Row("user", f"header {BIG};s=user, {USERS} users", "A", users, 200, True),
        Row("rule", "rule only (quota 1000000, 60s)", "B", [{}], 200, True),
        Row("two", f"rule + header {BIG} (two policies)", "B", [{POLICY: BIG}], 200, True),
        Row("denied", f"denied: {DENY}, spent (local 429)", "A", [{POLICY: DENY}], 429, True),
    ]


async def load(port: int, requests: list[bytes], clients: int, tally: Tally, expect: int,
               count: int | None = None, seconds: float | None = None) -> Samples:  # fmt: skip
    """`clients` keep-alive connections cycling over `requests`; stop after `count` requests in all
    or after `seconds`. An error is a status other than `expect`."""
    out = Samples()
    left, nxt = [count if count is not None else -1], [0]
    start = time.perf_counter()
    deadline = start + (seconds if seconds is not None else 1e9)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left[0] != 0 and time.perf_counter() < deadline:
                left[0] -= 1
                request = requests[nxt[0] % len(requests)]
                nxt[0] += 1
                status, headers, latency = await call(reader, writer, request)
                out.latencies.append(latency)
                out.errors += status != expect
                tally.add(status, headers)
                SENT[port] += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    out.elapsed = time.perf_counter() - start
    return out


@dataclass
class Env:
    upstream: Proc
    proxies: dict[str, Proc]  # "A", "B"
    writers: dict[str, int | None]


async def batch(row: Row, env: Env, requests: list[bytes], clients: int, counts: Counts) -> None:
    proxy, writer = env.proxies[row.proxy], env.writers[row.proxy]
    key = "c1" if clients == 1 else "c10"
    up0, w0 = await upstream_count(env.upstream.port), bk.cpu(writer)
    if clients == 1:
        work = load(proxy.port, requests, 1, row.tally, row.expect, count=counts.seq_requests)
    else:
        work = load(proxy.port, requests, clients, row.tally, row.expect, seconds=counts.conc_seconds)
    phase = await bk.measure(work, proxy, env.upstream)
    w1, up1 = bk.cpu(writer), await upstream_count(env.upstream.port)
    getattr(row, key).append(phase)
    row.writer_cpu[key].append(w1 - w0)
    row.tally.upstream_expected += phase.requests if row.expect == 200 else 0
    row.tally.upstream_seen += up1 - up0


async def spend(env: Env) -> dict[str, Any]:
    """Use up the denied row's quota of 1: the first call passes (200), the next is a 429."""
    port = env.proxies["A"].port
    request = make_request(port, {POLICY: DENY})
    seen = Tally()
    up0 = await upstream_count(env.upstream.port)
    await load(port, [request], 1, seen, 200, count=2)
    up1 = await upstream_count(env.upstream.port)
    return {"statuses": [s for s, n in sorted(seen.status.items()) for _ in range(n)], "upstream": up1 - up0}


async def phases(env: Env, rows: list[Row], counts: Counts, log: Callable[[str], None]) -> dict[str, Any]:
    requests = {row.key: [make_request(env.proxies[row.proxy].port, h) for h in row.headers] for row in rows}
    log("spending the denied row's quota")
    spent = await spend(env)
    log(f"warm-up: {counts.warmup} requests per row at {CLIENTS} clients")
    for row in rows:
        await load(env.proxies[row.proxy].port, requests[row.key], CLIENTS, Tally(), row.expect,
                   count=counts.warmup)  # fmt: skip
    for r in range(counts.rounds):
        order = rows[r % len(rows) :] + rows[: r % len(rows)]
        order = order[::-1] if r % 2 else order
        log(f"round {r + 1}/{counts.rounds}: " + ", ".join(row.key for row in order))
        for row in order:
            await batch(row, env, requests[row.key], 1, counts)
            await batch(row, env, requests[row.key], CLIENTS, counts)
    return {"spent": spent, "upstream_total": await upstream_count(env.upstream.port)}


# --- the machine: CPU used by processes other than this benchmark's ---------------------------------


def machine_busy() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat, idle and iowait excluded)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu(pids: list[int | None]) -> float:
    return sum(v for v in (bk.cpu(pid) for pid in pids) if v == v) + time.process_time()


# --- the rate-limit path in this process ----------------------------------------------------------


def inprocess(tmp: Path, n: int, log: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """What the addon does per call for its rate limits, timed alone: the policies (`limits_for`,
    header parsed), `admit` and `headers_for` on fresh in-memory buckets, and putting the headers on a
    response. Not included: the rules' matching and the Helicone header parsing the tap does anyway."""
    from mitmproxy.http import Headers

    rule_file = tmp / "rules-inprocess.yaml"
    rule_file.write_text(RULES_YAML)
    found = [(r.name, r.rate_limit) for r in rules.load(rule_file).rules if r.rate_limit is not None]
    users = [f"bench-user-{i:03d}" for i in range(USERS)]
    cases: dict[str, tuple[list[tuple[str, Any]], str | None, bool]] = {
        "header": ([], BIG, False),
        "user": ([], f"{BIG};s=user", True),
        "rule": (found, None, False),
        "two": (found, BIG, False),
        "denied": ([], DENY, False),
    }
    log(f"in-process rate-limit path: {n:,} calls per case")
    out = {}
    for key, (policies, header, per_user) in cases.items():
        buckets = ratelimit.MemoryBuckets()
        if key == "denied":  # spend its quota of 1
            ratelimit.admit(buckets, ratelimit.limits_for([], header, None, {}))
        response = Headers(content_type="application/json", content_length="563")
        values = []
        for i in range(n):
            user = users[i % USERS] if per_user else None
            start = time.perf_counter_ns()
            limits = ratelimit.limits_for(policies, header, user, {})
            ok, states = ratelimit.admit(buckets, limits)
            response.update(ratelimit.headers_for(states, limited=not ok))
            values.append((time.perf_counter_ns() - start) / 1000)
        out[key] = {"calls": n, "p50_us": percentile(values, 0.5), "p99_us": percentile(values, 0.99)}
    return out


# --- run ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = QUICK if args.quick else DEFAULT
    if args.rounds:
        counts = replace(counts, rounds=args.rounds)
    rows = make_rows()
    result: dict[str, Any] = {}
    with bk.workspace("bench-ratelimit", args.keep) as ws:
        tmp, log, started = ws.tmp, ws.log, ws.started
        log(f"starting upstream and 2 tap mitmdumps (A: no rules, B: rules.yaml) in {tmp}")
        rules_file = tmp / "rules.yaml"
        rules_file.write_text(RULES_YAML)
        upstream = bk.start_upstream("fast", tmp)
        started.append(upstream)
        # cwd is tmp, where A would pick ./rules.yaml up by default: name none explicitly
        a = bk.start_tap("tap-A", upstream.port, tmp, started, ["--set", "llmtap_rules="])
        b = bk.start_tap("tap-B", upstream.port, tmp, started, ["--set", f"llmtap_rules={rules_file}"])
        proxies = {"A": a, "B": b}
        env = Env(upstream, proxies, {k: bk.writer_pid(p.pid) for k, p in proxies.items()})
        pids = [upstream.pid, a.pid, b.pid, *env.writers.values()]
        busy0, own0, wall0 = machine_busy(), own_cpu(pids), time.monotonic()
        result["run"] = asyncio.run(phases(env, rows, counts, log))
        wall = time.monotonic() - wall0
        result["others_cores"] = (machine_busy() - busy0 - (own_cpu(pids) - own0)) / wall
        result["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
        result["log_notes"] = {p.name: log_notes(p) for p in proxies.values()}
        for key, proc in proxies.items():
            result[f"rc_{key}"] = bk.stop(proc)  # SIGTERM flushes the writer queue
            result[f"rows_{key}"] = bk.count_rows(tmp / f"{proc.name}.duckdb")
            result[f"sent_{key}"] = SENT[proc.port]
        ws.stop_all()
        result["inprocess"] = inprocess(tmp, counts.inprocess, log)
    result["rows"] = rows
    result["counts"] = asdict(counts)
    result["cores"] = os.cpu_count()
    return result


# --- report ---------------------------------------------------------------------------------------


def added(row: Row, base: Row, clients: str) -> tuple[float, float, float]:
    """(added p50 ms, throughput ratio, added proxy CPU us per request) of `row` against `base`: medians
    over the rounds of the differences and ratios within each round, so drift and other load between
    rounds cancel."""
    pairs = list(zip(getattr(row, clients), getattr(base, clients), strict=True))
    return (
        statistics.median(m.p50_ms - b.p50_ms for m, b in pairs),
        statistics.median(m.rps / b.rps for m, b in pairs),
        statistics.median(m.proxy_us_per_request - b.proxy_us_per_request for m, b in pairs),
    )


def verdict(r: dict[str, Any]) -> dict[str, Any]:
    rows = {row.key: row for row in r["rows"]}
    add, ratio, _ = added(rows["header"], rows["none"], "c1")
    add10, ratio10, _ = added(rows["header"], rows["none"], "c10")
    checks = rows["header"].checks_ok()
    ok = add <= TARGET_ADDED_MS and checks
    return {"added_p50_ms": add, "ratio": ratio, "added_p50_ms_c10": add10, "ratio_c10": ratio10,
            "checks_ok": checks, "verdict": "PASS" if ok else "INFO"}  # fmt: skip


def report(r: dict[str, Any]) -> str:
    c, run_ = r["counts"], r["run"]
    rows = {row.key: row for row in r["rows"]}
    base = rows["none"]
    v = verdict(r)
    out = [
        "llmtap rate limits: allowed and denied rate-limited calls vs no policy, through "
        "mitmdump -s addon/tap.py (reverse mode, loopback, HTTP/1.1 keep-alive)",
        f"upstream: benchkit's asyncio server, which counts the calls it answers (own process); "
        f"{r['cores']} cores; {c['rounds']} interleaved rounds, each row per round: {c['seq_requests']} "
        f"sequential requests on one connection, then {c['conc_seconds']:g} s at {CLIENTS} connections; "
        "medians of the rounds; +p50, ratio and +us (proxy CPU) are medians of the within-round differences "
        "and ratios against the baseline",
        "proxies: A = tap, no rules file (--set llmtap_rules=); B = tap with --set llmtap_rules=rules.yaml "
        f"(rule {RULE_NAME}: match {{}}, rate_limit {{quota: 1000000, window: 60s}}); B's rows are compared "
        "with A's baseline (two processes)",
        f"machine: other processes used {r['others_cores']:.2f} cores on average during the rounds (load "
        f"average at the end {' '.join(r['loadavg'])}); the added p50 is only as steady as that",
        "",
        f"verdict: allowed call under header policy {BIG} (proxy A), 1 client: added p50 "
        f"{v['added_p50_ms']:+.3f} ms, "
        f"throughput {v['ratio']:.3f}x vs no policy ({CLIENTS} clients: {v['added_p50_ms_c10']:+.3f} ms, "
        f"{v['ratio_c10']:.3f}x); target added p50 <= {TARGET_ADDED_MS} ms next to mitmdump's own "
        f"~1.5 ms per request -> {v['verdict']}"
        + ("" if v["checks_ok"] else " (its responses failed the checks)"),
    ]
    for clients, title in (("c1", "1 client, sequential on one keep-alive connection"),
                           ("c10", f"{CLIENTS} concurrent keep-alive connections")):  # fmt: skip
        out += [
            "",
            title,
            f"{'row':<42}{'proxy':>6}{'requests':>9}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'+p50 ms':>9}"
            f"{'ratio':>7}{'proxy us/req':>13}{'+us':>6}{'writer us/req':>14}{'errors':>7}",
        ]
        for row in rows.values():
            m = row.median(clients)
            add, ratio, cpu = added(row, base, clients)
            shown = f"{add:>+9.3f}{ratio:>7.3f}" if row is not base else f"{'-':>9}{'-':>7}"
            cpu_shown = f"{cpu:>+6.0f}" if row is not base else f"{'-':>6}"
            out.append(
                f"{row.label:<42}{row.proxy:>6}{m.requests:>9}{m.rps:>7.0f}{m.p50_ms:>8.3f}{m.p99_ms:>8.3f}"
                f"{shown}{m.proxy_us_per_request:>13.0f}{cpu_shown}{row.writer_us(clients):>14.0f}{m.errors:>7}"
            )
    within = [added(rows["two"], rows["rule"], k) for k in ("c1", "c10")]
    out += [
        "",
        f"within B, rule + header vs rule only: 1 client {within[0][0]:+.3f} ms, {within[0][1]:.3f}x; "
        f"{CLIENTS} clients {within[1][0]:+.3f} ms, {within[1][1]:.3f}x",
        "rounds, 1 client p50 ms:",
    ]
    for row in rows.values():
        out.append(f"  {row.key:<7}" + " ".join(f"{p.p50_ms:.3f}" for p in row.c1))
    out += [
        "",
        "in-process rate-limit path (this process, no proxy, a hot loop: inside the proxy the same code "
        "runs between other work and costs more): limits_for (header parsed) + admit + headers_for + the "
        "headers put on a response",
        f"{'case':<42}{'calls':>8}{'p50 us':>9}{'p99 us':>9}",
    ]
    for key, t in r["inprocess"].items():
        out.append(f"{rows[key].label:<42}{t['calls']:>8}{t['p50_us']:>9.1f}{t['p99_us']:>9.1f}")
    out += ["", "checks (every measured response; warm-ups not counted):"]
    for row in rows.values():
        t = row.tally
        want = f"all {t.total}" if row.limited else "none"
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(t.status.items()))
        up = f"upstream got {t.upstream_seen} (expected {t.upstream_expected})"
        ok = row.checks_ok() and t.upstream_seen == t.upstream_expected
        out.append(
            f"  {'ok' if ok else 'BAD':<4}{row.key:<7} status {statuses}; with {REMAINING}: {t.remaining} "
            f"(want {want}); {up}"
        )
    denied = rows["denied"]
    sp = run_["spent"]
    out += [
        f"  denied row: p50 {denied.median('c1').p50_ms:.3f} ms (1 client), the upstream's request count "
        f"grew by {denied.tally.upstream_seen} over its {denied.tally.total} calls; quota spent beforehand: "
        f"statuses {sp['statuses']}, upstream +{sp['upstream']} (want [200, 429], +1)",
        "  DuckDB rows after SIGTERM: "
        + ", ".join(
            f"{k} {r[f'rows_{k}']} for {r[f'sent_{k}']} requests"
            + ("" if r[f"rows_{k}"] == r[f"sent_{k}"] else " (MISSING ROWS)")
            + f" (exit code {r[f'rc_{k}']})"
            for k in ("A", "B")
        )
        + f"; upstream answered {run_['upstream_total']} in all",
    ]
    for name, (count, lines) in r["log_notes"].items():
        if count:
            out.append(f"  ! {name} log has {count} error / llmtap lines, last: {lines[-1][:150]}")
    return "\n".join(out)


def to_plain(obj: Any) -> Any:
    if isinstance(obj, Row):
        return {"key": obj.key, "label": obj.label, "proxy": obj.proxy, "expect": obj.expect,
                "c1": obj.median("c1"), "c10": obj.median("c10"), "rounds_c1": obj.c1, "rounds_c10": obj.c10,
                "writer_us_c1": obj.writer_us("c1"), "writer_us_c10": obj.writer_us("c10"),
                "tally": {**asdict(obj.tally), "status": dict(obj.tally.status)},
                "checks_ok": obj.checks_ok()}  # fmt: skip
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    return obj


def main() -> None:
    parser = bk.arguments(__doc__)
    parser.add_argument("--rounds", type=int, metavar="N", help="override the number of rounds")
    args = parser.parse_args()
    result = run(args)
    print(report(result))
    bk.write_json(args.json, to_plain({"verdict": verdict(result)} | result))


if __name__ == "__main__":
    main()
