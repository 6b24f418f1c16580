"""Response cache speed: a cache hit through `mitmdump -s addon/tap.py` vs a bare mitmdump round trip,
and CacheStore lookups at 100k entries, one run.

What is measured (loopback HTTP/1.1 keep-alive, reverse mode, quiet mitmdump, the fast
upstream of scripts/benchkit.py in its own process):

- bare mitmdump pass-through: N sequential `POST /v1/chat/completions` on one connection, p50/p99;
- cache hits through the tap: the same request with `Helicone-Cache-Enabled: true` is sent once (a
  MISS), the script polls the SQLite cache file until the writer process has saved the entry, then
  N sequential identical requests must all come back `helicone-cache: HIT` (any that do not are
  counted and reported); p50/p99. Target: hit p50 / bare p50 <= 1.0 (a hit is no slower than a
  bare pass-through);
- back-to-back hits: each request (a new `Helicone-Cache-Seed` each) is sent twice on one
  connection, the second the moment the first returned, as a script's next call comes; the second
  must be a HIT although the writer has not saved the first yet (the proxy holds it in memory);
  only the second calls are timed (p50/p99); CPU per request counts both;
- for context, the tap's MISS path: cache enabled with a new `Helicone-Cache-Seed` per request, so
  every request goes upstream and is saved (the script waits for the saves after each batch, so
  the writer's work does not spill into the next measurement), and hits on a bucket of 5
  (`Helicone-Cache-Bucket-Max-Size: 5`, the 5 slots filled first);
- CacheStore at 100k entries, in this process on a temp file: 100,000 `put`s of ~1 KB bodies with
  keys from `llmtap.policy.cache_keys.lookup_for` (one `put` at a time, each its own transaction, as the
  writer does: fast enough that no batching is needed), then `pick([key])` for 10,000 random
  existing and 10,000 missing keys, in microseconds; the fill time and the file size.

Bare, hit and miss batches are interleaved over rounds (orders rotate); the latency figures are the
median of the rounds' percentiles, as in bench_overhead.py. CPU per request comes from
/proc/PID/stat for mitmdump, its llmtap-writer child and the upstream. The tap always gets
`llmtap_db` and `llmtap_cache` in the temp dir, so nothing is written into the repo. Targets print
PASS/MISS; the exit code is 0 unless something crashes (a measurement, not a test).

    python scripts/bench_cache.py [--quick] [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE), str(HERE.parent / "addon")) if p not in sys.path]

import benchkit as bk  # noqa: E402
from benchkit import SENT, Phase, Proc, Samples, call, make_request, percentile  # noqa: E402

from llmtap.policy import cache_keys  # noqa: E402
from llmtap.storage.cachestore import CacheStore, Entry  # noqa: E402

TARGET_HIT_RATIO = 1.0
BUCKET = 5
HIT_HEADERS = {"Helicone-Cache-Enabled": "true"}
BUCKET_HEADERS = {**HIT_HEADERS, "Helicone-Cache-Bucket-Max-Size": str(BUCKET), "Helicone-Cache-Seed": "b5"}
SAVE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Counts:
    rounds: int
    seq_requests: int  # per round and variant (bare, hit, miss)
    warmup: int
    bucket_requests: int
    lookup_entries: int
    lookup_samples: int  # existing keys, and as many missing ones


DEFAULT = Counts(7, 1500, 300, 2000, 100_000, 10_000)
QUICK = Counts(2, 300, 200, 300, 100_000, 10_000)


# --- client ---------------------------------------------------------------------------------------


@dataclass
class Seen:
    """Tallies of the response headers a batch got back."""

    cache: dict[str, int] = field(default_factory=dict)  # helicone-cache value, "-" when absent
    bucket_idx: dict[str, int] = field(default_factory=dict)

    def add(self, headers: dict[str, str]) -> None:
        value = headers.get("helicone-cache", "-")
        self.cache[value] = self.cache.get(value, 0) + 1
        if (idx := headers.get("helicone-cache-bucket-idx")) is not None:
            self.bucket_idx[idx] = self.bucket_idx.get(idx, 0) + 1

    def merge(self, other: Seen) -> None:
        for mine, theirs in ((self.cache, other.cache), (self.bucket_idx, other.bucket_idx)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v


async def sequential(port: int, requests: list[bytes], seen: Seen, twice: bool = False) -> Samples:
    """The requests one after the other on one keep-alive connection. With `twice`, each is sent
    again the moment it returned, and only that second call is timed and tallied."""
    out = Samples()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    try:
        for request in requests:
            if twice:
                await call(reader, writer, request)
                SENT[port] += 1
            status, headers, latency = await call(reader, writer, request)
            out.latencies.append(latency)
            out.errors += status != 200
            seen.add(headers)
            SENT[port] += 1
    finally:
        writer.close()
    out.elapsed = time.perf_counter() - start
    return out


# --- processes ------------------------------------------------------------------------------------


def cache_entries(path: Path) -> int:
    with closing(sqlite3.connect(path, timeout=5)) as conn:
        return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])


async def wait_entries(path: Path, target: int, timeout: float = SAVE_TIMEOUT) -> tuple[int, float]:
    """Poll the cache file until it holds `target` entries: (entries seen, seconds waited)."""
    start = time.perf_counter()
    while (n := cache_entries(path)) < target and time.perf_counter() - start < timeout:
        await asyncio.sleep(0.002)
    return n, time.perf_counter() - start


# --- the proxy phases -----------------------------------------------------------------------------


@dataclass
class Variant:
    label: str
    rounds: list[Phase] = field(default_factory=list)
    writer_us: list[float] = field(default_factory=list)  # llmtap-writer CPU per request
    seen: Seen = field(default_factory=Seen)

    @property
    def median(self) -> Phase:
        return bk.median_phase(self.rounds)

    @property
    def writer_us_per_request(self) -> float:
        values = sorted(v for v in self.writer_us if v == v)
        return values[len(values) // 2] if values else float("nan")

    def hits(self) -> int:
        return self.seen.cache.get("HIT", 0)


@dataclass
class Env:
    upstream: Proc
    bare: Proc
    tap: Proc
    writer: int | None
    cache_file: Path


async def measure_into(
    variant: Variant,
    env: Env,
    proxy: Proc | None,
    port: int,
    requests: list[bytes],
    saves: int = 0,
    twice: bool = False,
) -> int:
    """One batch into `variant`. After a batch on the tap: wait for `saves` new cache entries, then
    for the writer to go idle; its CPU per request includes that drain. Returns the entries saved."""
    seen = Seen()
    before = cache_entries(env.cache_file)
    w0 = bk.cpu(env.writer)
    phase = await bk.measure(sequential(port, requests, seen, twice), proxy, env.upstream)
    saved = 0
    if proxy is env.tap:
        if saves:
            saved = (await wait_entries(env.cache_file, before + saves))[0] - before
        await bk.writer_quiet(env.writer)
        variant.writer_us.append(1e6 * (bk.cpu(env.writer) - w0) / max(phase.requests, 1))
    variant.rounds.append(phase)
    variant.seen.merge(seen)
    return saved


async def proxy_phases(env: Env, counts: Counts, log: Callable[[str], None]) -> dict[str, Any]:
    bare_req = make_request(env.bare.port)
    plain_tap_req = make_request(env.tap.port)
    hit_req = make_request(env.tap.port, HIT_HEADERS)
    n = counts.seq_requests

    log("warm-up (imports, first DuckDB flush)")
    for port, request in ((env.bare.port, bare_req), (env.tap.port, plain_tap_req)):
        await sequential(port, [request] * counts.warmup, Seen())

    log("fill: one MISS, then wait for the writer to save it")
    before = cache_entries(env.cache_file)
    first = Seen()
    await sequential(env.tap.port, [hit_req], first)
    entries, waited = await wait_entries(env.cache_file, before + 1)
    await sequential(env.tap.port, [hit_req] * counts.warmup, Seen())  # warm the hit path
    await bk.writer_quiet(env.writer)
    fill = {"first_reply": first.cache, "saved": entries - before, "save_wait_ms": 1000 * waited}

    direct = Variant("direct to upstream (reference)")
    log("direct to upstream (reference)")
    await measure_into(direct, env, None, env.upstream.port, [make_request(env.upstream.port)] * n)

    variants = {
        "bare": Variant("bare mitmdump pass-through"),
        "hit": Variant("tap, cache HIT"),
        "miss": Variant("tap, cache MISS (new seed each)"),
        "b2b": Variant("tap, HIT right after its MISS"),
    }
    misses_saved = misses_sent = 0
    for r in range(counts.rounds):
        names = list(variants)
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            log(f"round {r + 1}/{counts.rounds}: {name}")
            v = variants[name]
            if name == "bare":
                await measure_into(v, env, env.bare, env.bare.port, [bare_req] * n)
            elif name == "hit":
                await measure_into(v, env, env.tap, env.tap.port, [hit_req] * n)
            else:
                seeds = [{**HIT_HEADERS, "Helicone-Cache-Seed": f"{name}-{r}-{i}"} for i in range(n)]
                requests = [make_request(env.tap.port, s) for s in seeds]
                twice = name == "b2b"
                misses_saved += await measure_into(v, env, env.tap, env.tap.port, requests, n, twice)
                misses_sent += n

    log(f"bucket of {BUCKET}: fill {BUCKET} slots, then hits")
    bucket_req = make_request(env.tap.port, BUCKET_HEADERS)
    before = cache_entries(env.cache_file)
    bucket_fill = Seen()
    await sequential(env.tap.port, [bucket_req] * BUCKET, bucket_fill)
    entries, _ = await wait_entries(env.cache_file, before + BUCKET)
    bucket = Variant(f"tap, cache HIT, bucket of {BUCKET}")
    await sequential(env.tap.port, [bucket_req] * counts.warmup, Seen())
    await bk.writer_quiet(env.writer)
    await measure_into(bucket, env, env.tap, env.tap.port, [bucket_req] * counts.bucket_requests)

    return {
        "fill": fill,
        "variants": {"direct": direct, **variants, "bucket": bucket},
        "misses_sent": misses_sent,
        "misses_saved": misses_saved,
        "bucket_fill": {"replies": bucket_fill.cache, "saved": entries - before},
    }


# --- CacheStore at 100k entries ---------------------------------------------------------------------


def _reply_body(words: int = 75) -> str:
    """A ~1 KB chat completion whose id is a placeholder (replaced per entry)."""
    rng = random.Random(7)
    vocab = "the a cache proxy model token reply answer request latency bucket seed entry store".split()
    content = " ".join(rng.choice(vocab) for _ in range(words))
    message = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    doc = {
        **bk.BASE,
        "id": "chatcmpl-@ID@",
        "object": "chat.completion",
        "choices": [choice],
        "usage": bk.USAGE,
    }
    return json.dumps(doc, separators=(",", ":"))


def _timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t) / 1000)
    return out


@dataclass
class Timing:
    samples: int
    p50_us: float
    p99_us: float
    found: int

    @classmethod
    def of(cls, values_us: list[float], found: int) -> Timing:
        return cls(len(values_us), percentile(values_us, 0.5), percentile(values_us, 0.99), found)


def time_picks(store: CacheStore, keys: list[str]) -> Timing:
    values, found = [], 0
    for key in keys:
        t = time.perf_counter_ns()
        picked = store.pick([key])
        values.append((time.perf_counter_ns() - t) / 1000)
        found += picked is not None
    return Timing.of(values, found)


def lookups(tmp: Path, counts: Counts, log: Callable[[str], None]) -> dict[str, Any]:
    n, samples = counts.lookup_entries, counts.lookup_samples
    policy = cache_keys.policy_for({"helicone-cache-enabled": "true"}, None)
    assert policy is not None
    headers = {"authorization": "Bearer sk-bench", "content-type": "application/json"}

    def key(i: int) -> str:
        body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"question %d"}]}' % i
        return cache_keys.lookup_for(
            policy, "POST", "api.openai.com", "/v1/chat/completions", body, headers
        ).keys()[0]

    log(f"lookups: deriving {n + samples:,} keys with llmtap.policy.cache_keys.lookup_for")
    keys = [key(i) for i in range(n + samples)]
    present, absent = keys[:n], keys[n:]
    lowered = {k.lower(): v for k, v in {"authorization": "Bearer sk-bench", **HIT_HEADERS}.items()}

    def hot_path_key() -> None:  # what the addon does per request before the SQLite lookup
        p = cache_keys.policy_for(lowered, None)
        assert p is not None
        cache_keys.lookup_for(p, "POST", "127.0.0.1:1234", "/v1/chat/completions", bk.BODY, lowered)

    key_us = Timing.of(_timed(hot_path_key, samples), samples)

    path = tmp / "lookup.sqlite"
    store = CacheStore(path)
    template = _reply_body()
    ttl = 7 * 86400.0
    log(f"lookups: {n:,} put()s, one transaction each")
    start = time.perf_counter()
    for i, k in enumerate(present):
        body = template.replace("@ID@", f"{i:024d}").encode()
        entry = Entry(f"00000000-0000-4000-8000-{i:012d}", 200, "application/json", False, body,
                      provider="openai", model="gpt-4o-mini-2024-07-18", input_tokens=9, output_tokens=130,
                      usage_source="response", cost_usd=Decimal("0.000079350"), latency_ms=812.0)  # fmt: skip
        if store.put([k], entry, ttl) != 0:
            raise RuntimeError(f"put {i} did not land in slot 0")
        if (i + 1) % 25_000 == 0:
            log(f"lookups: {i + 1:,} entries")
    fill_s = time.perf_counter() - start
    stats = store.stats()
    sizes = {"db_bytes": path.stat().st_size, "wal_bytes": _size(path.with_name(path.name + "-wal"))}

    log(f"lookups: {samples:,} existing and {samples:,} missing keys")
    rng = random.Random(11)
    result = {
        "entries": stats["entries"],
        "body_bytes": len(template.replace("@ID@", "0" * 24)),
        "fill_s": fill_s,
        "put_us": 1e6 * fill_s / n,
        "how": "put() one at a time, each its own BEGIN IMMEDIATE transaction (as the writer saves)",
        **sizes,
        "key_derivation": key_us,
        "existing": time_picks(store, rng.sample(present, samples)),
        "missing": time_picks(store, absent),
    }
    store.close()
    small = CacheStore(tmp / "lookup-1.sqlite")
    small.put([present[0]], Entry("x", 200, "application/json", False, b"{}"), ttl)
    result["existing_1_entry"] = time_picks(small, [present[0]] * samples)
    small.close()
    return result


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


# --- run ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = QUICK if args.quick else DEFAULT
    result: dict[str, Any] = {}
    with bk.workspace("bench-cache", args.keep) as ws:
        tmp, log, started = ws.tmp, ws.log, ws.started
        log(f"starting upstream and 2 mitmdumps (bare, tap) in {tmp}")
        upstream = bk.start_upstream("fast", tmp)
        started.append(upstream)
        bare = bk.start_proxy("bare", upstream.port, tmp, [])
        started.append(bare)
        tap = bk.start_tap("tap", upstream.port, tmp, started)
        bk.wait_ready(bare)
        env = Env(upstream, bare, tap, bk.writer_pid(tap.pid), tmp / "tap-cache.sqlite")
        result["proxies"] = asyncio.run(proxy_phases(env, counts, log))
        result["cache_entries_at_end"] = cache_entries(env.cache_file)
        result["log_errors"] = {p.name: bk.log_lines(p)[:5] for p in (bare, tap)}
        result["tap_rc"] = bk.stop(tap)  # SIGTERM flushes the writer queue
        result["tap_rows"] = bk.count_rows(tmp / "tap.duckdb")
        result["tap_sent"] = SENT[tap.port]
        ws.stop_all()
        result["lookups"] = lookups(tmp, counts, log)
    result["counts"] = asdict(counts)
    result["cores"] = os.cpu_count()
    return result


# --- report ---------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    shown: str
    target: str
    verdict: str  # PASS / MISS, or "" for information


def summary(r: dict[str, Any]) -> list[Row]:
    v, lk = r["proxies"]["variants"], r["lookups"]
    bare, hit, miss, bucket, b2b = (v[k].median for k in ("bare", "hit", "miss", "bucket", "b2b"))
    ratio = hit.p50_ms / bare.p50_ms
    sent = sum(p.requests for p in v["hit"].rounds)
    hits = v["hit"].hits()
    b_sent, b_hits = bucket.requests, v["bucket"].hits()
    b2b_sent, b2b_hits = b2b.requests, v["b2b"].hits()
    entries = f"{lk['entries'] // 1000}k" if lk["entries"] % 1000 == 0 else f"{lk['entries']:,}"
    return [
        Row("cache hit p50 / bare p50", f"{ratio:.3f}x", f"<= {TARGET_HIT_RATIO}x",
            bk.verdict(ratio <= TARGET_HIT_RATIO)),
        Row("cache hit p99 / bare p99", f"{hit.p99_ms / bare.p99_ms:.3f}x", "info", ""),
        Row("back-to-back hit p50 / bare p50", f"{b2b.p50_ms / bare.p50_ms:.3f}x", f"<= {TARGET_HIT_RATIO}x",
            bk.verdict(b2b.p50_ms / bare.p50_ms <= TARGET_HIT_RATIO)),
        Row("back-to-back requests answered HIT", f"{b2b_hits}/{b2b_sent}", "all",
            bk.verdict(b2b_hits == b2b_sent)),
        Row("tap miss p50 / bare p50", f"{miss.p50_ms / bare.p50_ms:.3f}x", "info", ""),
        Row(f"bucket-of-{BUCKET} hit p50 / bare p50", f"{bucket.p50_ms / bare.p50_ms:.3f}x", "info", ""),
        Row("hit requests answered HIT", f"{hits}/{sent}", "all", bk.verdict(hits == sent)),
        Row(f"bucket-of-{BUCKET} requests answered HIT", f"{b_hits}/{b_sent}", "all",
            bk.verdict(b_hits == b_sent)),
        Row(f"pick() at {entries} entries, existing p50", f"{lk['existing'].p50_us:.1f} us", "info", ""),
        Row(f"pick() at {entries} entries, missing p50", f"{lk['missing'].p50_us:.1f} us", "info", ""),
    ]  # fmt: skip


def _fmt_counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "-"


def report(r: dict[str, Any]) -> str:
    c, p, lk = r["counts"], r["proxies"], r["lookups"]
    v = p["variants"]
    out = [
        "llmtap response cache: hit through mitmdump -s addon/tap.py vs bare mitmdump "
        "(reverse mode, loopback, HTTP/1.1)",
        f"upstream: benchkit's asyncio server (own process); {r['cores']} cores; "
        f"{c['rounds']} interleaved rounds x {c['seq_requests']} sequential requests per path on one "
        "keep-alive connection; medians of the rounds' percentiles",
        "",
        f"{'target':<42}{'measured':>14}  {'target':<10}",
    ]
    out += [f"{row.name:<42}{row.shown:>14}  {row.target:<10}{row.verdict}" for row in summary(r)]
    out += [
        "",
        "round trips, 1 client, sequential; CPU time per request (us) of mitmdump, its llmtap-writer child",
        "(including its drain after the batch, waited for), of the upstream and of this client",
        f"{'path':<36}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}{'proxy':>7}{'writer':>7}"
        f"{'upstr':>7}{'client':>7}  helicone-cache",
    ]
    for key in ("direct", "bare", "hit", "b2b", "miss", "bucket"):
        var = v[key]
        m = var.median
        per = [m.proxy_us_per_request, var.writer_us_per_request]
        per += [
            1e4 * pct / m.rps if m.rps else float("nan") for pct in (m.upstream_cpu_pct, m.client_cpu_pct)
        ]
        cpus = "".join(f"{u:>7.0f}" if u == u else f"{'-':>7}" for u in per)
        out.append(
            f"{var.label:<36}{m.requests:>9}{m.p50_ms:>9.3f}{m.p99_ms:>9.3f}{m.errors:>7}{cpus}"
            f"  {_fmt_counts(var.seen.cache)}"
        )
    for key in ("bare", "hit", "b2b", "miss"):
        out.append(f"  rounds {key:<5} p50 ms: " + " ".join(f"{ph.p50_ms:.3f}" for ph in v[key].rounds))
    f, bf = p["fill"], p["bucket_fill"]
    out += [
        f"  fill: first request answered {_fmt_counts(f['first_reply'])}; entry saved and visible "
        f"{f['save_wait_ms']:.0f} ms after the response ({f['saved']} saved)",
        f"  misses saved by the writer: {p['misses_saved']}/{p['misses_sent']}; bucket fill answered "
        f"{_fmt_counts(bf['replies'])}, {bf['saved']}/{BUCKET} saved; bucket idx served: "
        f"{_fmt_counts(v['bucket'].seen.bucket_idx)}",
        f"  tap DuckDB rows after SIGTERM: {r['tap_rows']} (exit code {r['tap_rc']}); cache entries at the "
        f"end: {r['cache_entries_at_end']}; requests sent to the tap (warm-ups and fills included): "
        f"{r['tap_sent']}",
    ]
    for name, lines in r["log_errors"].items():
        if lines:
            out.append(f"  ! {name} log has error lines, first: {lines[0][:150]}")
    mib = 1024 * 1024
    out += [
        "",
        f"CacheStore lookups, in this process, on a temp file (OS page cache warm): "
        f"{lk['entries']:,} entries, {lk['body_bytes']:,} B bodies",
        f"  fill: {lk['fill_s']:.1f} s, {lk['put_us']:.0f} us per put(); {lk['how']}",
        f"  file: {lk['db_bytes'] / mib:.1f} MiB (+ {lk['wal_bytes'] / mib:.1f} MiB WAL)",
        f"{'  operation':<48}{'samples':>8}{'p50 us':>9}{'p99 us':>9}{'found':>8}",
    ]
    timings = {
        "existing": f"pick([key]), existing key, {lk['entries'] // 1000}k file",
        "missing": f"pick([key]), missing key, {lk['entries'] // 1000}k file",
        "existing_1_entry": "pick([key]), existing key, 1-entry file",
        "key_derivation": "policy_for + lookup_for (hot path, no SQLite)",
    }
    for key, label in timings.items():
        t = lk[key]
        out.append(f"  {label:<46}{t.samples:>8}{t.p50_us:>9.1f}{t.p99_us:>9.1f}{t.found:>8}")
    return "\n".join(out)


def to_plain(obj: Any) -> Any:
    if isinstance(obj, Variant):
        return {"label": obj.label, "median": obj.median, "rounds": obj.rounds,
                "writer_us_per_request": obj.writer_us_per_request, "seen": asdict(obj.seen)}  # fmt: skip
    if isinstance(obj, Timing | Row):
        return asdict(obj)
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    return obj


def main() -> None:
    args = bk.arguments(__doc__, keep="logs, DuckDB and SQLite files").parse_args()
    result = run(args)
    print(report(result))
    bk.write_json(args.json, to_plain({"summary": summary(result)} | result))


if __name__ == "__main__":
    main()
