"""llmtap run / env / ca, piece by piece: the environment, the CA bundle, the summary, the arguments."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from llmtap.launch import environment, run, summary, trust
from llmtap.storage.migrations import migrate

PEM_A = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
PEM_B = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMTAP_HOME", str(tmp_path / "home"))
    for name in ("NO_PROXY", "no_proxy", "NODE_OPTIONS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def test_variables_cover_every_stack(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "corp.internal,localhost")
    monkeypatch.setenv("NODE_OPTIONS", "--max-old-space-size=4096")
    env = environment.variables("http://127.0.0.1:9999", tmp_path / "b.pem", "127.0.0.1:8788")
    preload = home / environment.PRELOAD_NAME
    assert env == {
        "HTTPS_PROXY": "http://127.0.0.1:9999", "HTTP_PROXY": "http://127.0.0.1:9999",
        "https_proxy": "http://127.0.0.1:9999", "http_proxy": "http://127.0.0.1:9999",
        "NO_PROXY": "corp.internal,localhost,127.0.0.1,::1",
        "no_proxy": "corp.internal,localhost,127.0.0.1,::1",
        **{name: str(tmp_path / "b.pem") for name in environment.CA_VARIABLES},
        "NODE_USE_ENV_PROXY": "1",
        "NODE_OPTIONS": f"--max-old-space-size=4096 --require {preload}",
        "LLMTAP_API": "127.0.0.1:8788",
    }  # fmt: skip
    assert preload.read_text() == environment.PRELOAD
    monkeypatch.setenv("NODE_OPTIONS", env["NODE_OPTIONS"])  # a nested run adds no second preload
    assert environment.variables("http://x:1", tmp_path / "b.pem")["NODE_OPTIONS"] == env["NODE_OPTIONS"]


def test_exports_survive_a_shell(tmp_path: Path) -> None:
    odd = {"SSL_CERT_FILE": str(tmp_path / "it's a dir" / "b.pem"), "HTTPS_PROXY": "http://h:1"}
    script = environment.exports(odd) + 'printf "%s|%s" "$SSL_CERT_FILE" "$HTTPS_PROXY"'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == f"{odd['SSL_CERT_FILE']}|http://h:1"


def test_bundle_is_base_then_ca_and_rewritten_only_on_change(tmp_path: Path, home: Path) -> None:
    base, ca = tmp_path / "corp.pem", tmp_path / "ca.pem"
    base.write_text(PEM_A.rstrip("\n"))
    ca.write_text(PEM_B)
    path = trust.bundle(ca, base)
    assert path.parent == home and path.name.startswith("ca-bundle-")
    assert path.read_text() == PEM_A + PEM_B
    inode = path.stat().st_ino
    assert trust.bundle(ca, base) == path and path.stat().st_ino == inode  # unchanged: not rewritten
    ca.write_text(PEM_A)
    assert trust.bundle(ca, base).read_text() == PEM_A + PEM_A and path.stat().st_ino != inode


def test_system_roots_skip_llmtaps_own_bundle(tmp_path: Path, home: Path, monkeypatch) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM_B)
    system = trust.system_roots()
    ours = trust.bundle(ca, system)
    assert ours == home / "ca-bundle.pem"
    monkeypatch.setenv("SSL_CERT_FILE", str(ours))
    assert trust.system_roots().resolve() == system.resolve()
    missing = tmp_path / "nope.pem"
    with pytest.raises(trust.TrustError, match="cannot read .*nope.pem"):
        trust.bundle(ca, missing)


def test_ca_is_created_as_mitmdump_would(tmp_path: Path) -> None:
    path = trust.ca_cert(tmp_path / "conf")
    assert path == tmp_path / "conf" / "mitmproxy-ca-cert.pem"
    assert path.read_text().startswith("-----BEGIN CERTIFICATE-----")


def _db(tmp_path: Path, rows: list[tuple]) -> Path:
    path = tmp_path / "s.duckdb"
    with duckdb.connect(str(path)) as conn:
        migrate(conn)
        for i, (at, model, status, inp, out, cost, cache, saved) in enumerate(rows):
            conn.execute(
                "INSERT INTO requests (request_id, created_at, source, provider, api, host, method, path,"
                " model, status, input_tokens, output_tokens, cost_usd, cache_status, cost_saved_usd)"
                " VALUES (?, ?, 'proxy', 'openai', 'openai', 'api.openai.com', 'POST',"
                " '/v1/chat/completions', ?, ?, ?, ?, ?, ?, ?)",
                [f"id-{i}", at, model, status, inp, out, cost, cache, saved],
            )
    return path


def test_summary_counts_only_the_run(tmp_path: Path) -> None:
    since = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    before, during = since - timedelta(seconds=1), since + timedelta(seconds=1)
    db = _db(tmp_path, [
        (before, "gpt-4o", 200, 1000, 1000, Decimal("1"), None, None),  # an earlier run
        (during, "gpt-4o", 200, 100, 20, Decimal("0.000450000"), None, None),
        (during, "gpt-4o", 200, 100, 20, Decimal("0"), "HIT", Decimal("0.000450000")),
        (during, "mystery", 500, None, None, None, None, None),
    ])  # fmt: skip
    s = summary.collect(db, since)
    assert {k: v for k, v in s.items() if k != "models"} == {
        "calls": 3, "input_tokens": 200, "output_tokens": 40, "cost_usd": "0.000450000", "unpriced": 1,
        "cache_hits": 1, "cost_saved_usd": "0.000450000", "errors": 1,
    }  # fmt: skip
    assert [(m["model"], m["calls"], m["cost_usd"]) for m in s["models"]] == [
        ("gpt-4o", 2, "0.000450000"), ("mystery", 1, None)
    ]  # fmt: skip
    assert summary.render(s, 0).splitlines() == [
        "llmtap: 3 calls, 200 input + 40 output tokens, $0.000450000 (unpriced: 1 calls); "
        "1 cache hits (saved $0.000450000), 1 errors; exit status 0",
        f"  {'model':<32}{'calls':>7}{'input':>10}{'output':>10}  cost",
        f"  {'gpt-4o':<32}{2:>7}{200:>10}{40:>10}  $0.000450000",
        f"  {'mystery':<32}{1:>7}{0:>10}{0:>10}  unpriced",
    ]


def test_summary_of_a_run_without_a_file(tmp_path: Path) -> None:
    s = summary.collect(tmp_path / "none.duckdb", datetime.now(UTC))
    assert (
        summary.render(s, 2)
        == "llmtap: 0 calls, 0 input + 0 output tokens, no known cost; 0 cache hits, 0 errors; exit status 2"
    )


def test_arguments_before_the_command_go_to_mitmdump(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    monkeypatch.setattr(run, "run", lambda args, extra: seen.update(args=args, extra=extra) or 0)
    argv = ["--db", "x.duckdb", "--set", "llmtap_rules=r.yaml", "-M", "|a|b", "--", "python", "--db", "y"]
    assert run.main(argv) == 0
    assert (seen["args"].db, seen["args"].command, seen["extra"]) == (
        "x.duckdb", ["python", "--db", "y"], ["--set", "llmtap_rules=r.yaml", "-M", "|a|b"]
    )  # fmt: skip
    assert run.main(["--quiet", "echo", "hi"]) == 0 and seen["args"].command == ["echo", "hi"]
    with pytest.raises(SystemExit) as e:
        run.main(["--quiet"])
    assert e.value.code == 2


def test_node_preload(tmp_path: Path, home: Path) -> None:
    """On this machine's Node (< 22.21): without undici the preload says what to do; without a
    proxy variable, or when told to be quiet, it says nothing."""
    if shutil.which("node") is None:
        pytest.fail("node is needed (scripts/setup.sh installs it)")
    preload = environment.node_preload()
    base = {k: v for k, v in os.environ.items() if k not in ("HTTPS_PROXY", "https_proxy")}
    cmd = ["node", "--require", str(preload), "-e", "console.log('ran')"]
    major, minor = (int(x) for x in subprocess.check_output(["node", "-p", "process.versions.node"],
                                                             text=True).split(".")[:2])  # fmt: skip
    quiet = subprocess.run(cmd, env=base, capture_output=True, text=True, cwd=tmp_path)
    assert (quiet.stdout, quiet.stderr) == ("ran\n", "")
    told = subprocess.run(cmd, env=base | {"HTTPS_PROXY": "http://127.0.0.1:9"}, capture_output=True,
                          text=True, cwd=tmp_path)  # fmt: skip
    if major >= 24 or (major == 22 and minor >= 21):
        assert told.stderr == ""
    else:
        assert "ignores HTTPS_PROXY for fetch; install undici" in told.stderr
    hushed = subprocess.run(cmd, env=base | {"HTTPS_PROXY": "http://127.0.0.1:9", "LLMTAP_NODE_QUIET": "1"},
                            capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert hushed.stderr == ""
