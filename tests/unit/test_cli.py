from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from llmtap.accounting.entry import Entry
from llmtap.cli import main
from llmtap.storage.cachestore import CacheStore
from llmtap.storage.migrations import migrate

RULES = """\
providers:
  - {host: "127.0.0.1:11434", api: openai, name: ollama}
rules:
  - name: cache-cheap-calls
    match: {provider: openai, model: "gpt-4o-mini*"}
    cache: {ttl: 1h, seed: v1, ignore_keys: [user]}
  - name: per-user-limit
    rate_limit: {quota: 100, window: 60s, segment: user}
"""

Out = pytest.CaptureFixture[str]


def run(capsys: Out, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- rules check --


def test_rules_check_prints_the_effective_rules(capsys: Out, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    code, out, err = run(capsys, "rules", "check", str(path))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"{path}: OK, 1 providers, 2 rules"
    assert lines[2].split() == ["host", "api", "name", "price_as", "stream_usage"]
    assert lines[4].split() == ["127.0.0.1:11434", "openai", "ollama", "True"]
    [cheap] = [line for line in lines if line.startswith("cache-cheap-calls")]
    assert "provider=openai, model=gpt-4o-mini*" in cheap
    assert "ttl=3600.0, bucket_max_size=1, seed='v1', ignore_keys=('user',), read=True, save=True" in cheap
    [limit] = [line for line in lines if line.startswith("per-user-limit")]
    assert "(everything)" in limit
    assert "quota=100.0, window=60.0, unit='request', segment='user'" in limit
    assert lines[-1] == "(2 rows)"


def test_rules_check_of_an_empty_file(capsys: Out, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("# nothing yet\n")
    assert run(capsys, "rules", "check", str(path)) == (0, f"{path}: OK, 0 providers, 0 rules\n\n", "")


def test_rules_check_defaults_to_rules_yaml_in_the_working_directory(capsys: Out, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)  # conftest chdirs to tmp_path
    code, out, _ = run(capsys, "rules", "check")
    assert code == 0 and out.startswith("rules.yaml: OK, 1 providers, 2 rules")


@pytest.mark.parametrize(
    "text, message",
    [
        # a field error names the file, the field and the value
        ("rules:\n  - name: a\n    cache: {ttl: soon}\n",
         "rules[0].cache.ttl: expected a duration like '1h', got 'soon'"),
        ("rules:\n  - name: a\n    match: {modle: x}\n    cache: {}\n",
         "rules[0].match.modle: unknown key (expected provider, host, path, method, model, user or"),
        ("rules:\n  - {name: a, cache: {}}\n  - {name: a, retry: {}}\n",
         "rules[1].name: duplicate rule name 'a'"),
        # YAML errors
        ("rules: [\n", "not valid YAML"),
    ],
)  # fmt: skip
def test_rules_check_of_an_invalid_file(capsys: Out, tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    code, out, err = run(capsys, "rules", "check", str(path))
    assert (code, out) == (1, "")
    assert err.startswith(f"llmtap: {path}: {message}")


def test_rules_check_of_a_missing_file(capsys: Out, tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    code, out, err = run(capsys, "rules", "check", str(path))
    assert (code, out) == (1, "")
    assert err == f"llmtap: {path}: cannot read the file: No such file or directory\n"


# -- cache stats / clear --


@pytest.fixture
def cache_file(tmp_path: Path) -> Path:
    path = tmp_path / "cache.sqlite"
    store = CacheStore(path)
    for n, seed in enumerate(["v1", "v2", "v2"]):
        store.put(
            [f"c1:{n}/0"], Entry(f"req-{n}", 200, "application/json", False, b"x" * 10, seed=seed), 3600
        )
    store.touch("c1:0/0")
    store.close()
    return path


def test_cache_stats(capsys: Out, cache_file: Path) -> None:
    code, out, err = run(capsys, "cache", "stats", "--cache", str(cache_file))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["entries", "bytes", "hits", "expired", "max_bytes"]
    assert lines[2].split() == ["3", "30", "1", "0", str(1 << 30)]


def test_cache_clear_by_seed_then_all(capsys: Out, cache_file: Path) -> None:
    assert run(capsys, "cache", "clear", "--seed", "v2", "--cache", str(cache_file)) == (
        0,
        "deleted 2 cached responses with seed 'v2'\n",
        "",
    )
    assert CacheStore(cache_file).stats()["entries"] == 1
    assert run(capsys, "cache", "clear", "--cache", str(cache_file)) == (
        0,
        "deleted 1 cached responses\n",
        "",
    )
    assert CacheStore(cache_file).stats()["entries"] == 0


@pytest.mark.parametrize("action", [["stats"], ["clear"], ["clear", "--seed", "v1"]])
def test_cache_commands_on_a_missing_file(capsys: Out, tmp_path: Path, action: list[str]) -> None:
    path = tmp_path / "nope.sqlite"
    code, out, err = run(capsys, "cache", *action, "--cache", str(path))
    assert (code, out) == (1, "")
    assert err == f"llmtap: no cache at {path} yet: the proxy creates it when it starts\n"
    assert not path.exists(), "a look must not create the file"


def test_cache_stats_on_a_file_that_is_not_a_cache(capsys: Out, tmp_path: Path) -> None:
    path = tmp_path / "llmtap.duckdb"
    path.write_text("this is not an SQLite file, e.g. the DuckDB log passed by mistake\n")
    code, out, err = run(capsys, "cache", "stats", "--cache", str(path))
    assert (code, out) == (1, "")
    assert err.startswith("llmtap: ") and str(path) in err


# -- sql --


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "tap.duckdb"
    with duckdb.connect(str(path)) as conn:
        migrate(conn)
        conn.execute(
            "INSERT INTO requests (request_id, created_at, model, user_id, cost_usd) VALUES"
            " ('r1', '2025-06-01 12:00:00+00', 'gpt-4o', 'alice', 0.004720000),"
            " ('r2', '2025-06-01 12:01:00+00', 'claude-3-5-sonnet', 'bob', NULL)"
        )
    return path


QUERY = "SELECT request_id, model, cost_usd FROM requests ORDER BY request_id"


def test_sql_table(capsys: Out, db: Path) -> None:
    code, out, err = run(capsys, "sql", QUERY, "--db", str(db))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["request_id", "model", "cost_usd"]
    assert lines[2].split() == ["r1", "gpt-4o", "0.00472"]
    assert lines[3].split() == ["r2", "claude-3-5-sonnet"]
    assert lines[4] == "(2 rows)"
    assert run(capsys, "sql", QUERY, "--db", str(db), "--format", "table")[1] == out


def test_sql_csv(capsys: Out, db: Path) -> None:
    assert run(capsys, "sql", QUERY, "--db", str(db), "--format", "csv") == (
        0,
        "request_id,model,cost_usd\nr1,gpt-4o,0.004720000\nr2,claude-3-5-sonnet,\n",
        "",
    )


def test_sql_json(capsys: Out, db: Path) -> None:
    code, out, _ = run(capsys, "sql", QUERY, "--db", str(db), "--format", "json")
    assert code == 0
    assert json.loads(out) == [
        {"request_id": "r1", "model": "gpt-4o", "cost_usd": "0.004720000"},
        {"request_id": "r2", "model": "claude-3-5-sonnet", "cost_usd": None},
    ]


def test_sql_params_bind_dollar_names(capsys: Out, db: Path) -> None:
    sql = "SELECT request_id, cost_usd FROM requests WHERE user_id = $user AND model LIKE $model"
    code, out, _ = run(capsys, "sql", sql, "-p", "user", "alice", "--param", "model", "gpt%", "--db", str(db),
                       "--format", "json")  # fmt: skip
    assert code == 0
    assert json.loads(out) == [{"request_id": "r1", "cost_usd": "0.004720000"}]


def test_sql_out_writes_a_file(capsys: Out, db: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    assert run(capsys, "sql", QUERY, "--db", str(db), "--format", "csv", "--out", str(target)) == (0, "", "")
    assert target.read_text().splitlines() == ["request_id,model,cost_usd", "r1,gpt-4o,0.004720000",
                                               "r2,claude-3-5-sonnet,"]  # fmt: skip


def test_sql_from_stdin(capsys: Out, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("SELECT count(*) AS n FROM requests"))
    assert run(capsys, "sql", "-", "--db", str(db), "--format", "csv") == (0, "n\n2\n", "")


def test_sql_on_a_missing_db(capsys: Out, tmp_path: Path) -> None:
    path = tmp_path / "nope.duckdb"
    code, out, err = run(capsys, "sql", QUERY, "--db", str(path))
    assert (code, out) == (1, "")
    assert err == f"llmtap: no database at {path} yet: start the proxy (or run `llmtap demo`) first\n"
    assert not path.exists()


def test_sql_with_bad_sql(capsys: Out, db: Path) -> None:
    code, out, err = run(capsys, "sql", "SELECT nope FROM requests", "--db", str(db))
    assert (code, out) == (1, "")
    assert err.startswith("llmtap: ") and "nope" in err


def test_sql_with_a_missing_param(capsys: Out, db: Path) -> None:
    code, _, err = run(capsys, "sql", "SELECT * FROM requests WHERE user_id = $user", "--db", str(db))
    assert code == 1 and err.startswith("llmtap: ") and "user" in err


def test_sql_numbers_stay_exact(capsys: Out, db: Path) -> None:
    code, out, _ = run(capsys, "sql", "SELECT sum(cost_usd) AS total FROM requests", "--db", str(db),
                       "--format", "json")  # fmt: skip
    assert code == 0 and Decimal(json.loads(out)[0]["total"]) == Decimal("0.004720000")


@pytest.mark.parametrize(
    "argv, message",
    [
        # argparse errors exit 2 with usage
        (["sql", QUERY, "--format", "xml"], "invalid choice: 'xml'"),
        (["sql", QUERY, "-p", "user"], "expected 2 arguments"),
        (["cache"], "the following arguments are required: ACTION"),
        (["nope"], "invalid choice: 'nope'"),
    ],
)
def test_usage_errors(capsys: Out, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match="^2$"):
        main(argv)
    assert message in capsys.readouterr().err
