"""The `llmtap` command: run the proxy, query the database, run the demo."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

from . import __version__, output, proxyproc, query, rules
from .cachestore import CacheStore

DEFAULT_DB = os.environ.get("LLMTAP_DB", "llmtap.duckdb")
DEFAULT_CACHE = os.environ.get("LLMTAP_CACHE", "llmtap-cache.sqlite")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["proxy"] and argv[1:2] not in (["-h"], ["--help"]):
        return run_proxy(argv[1:])  # everything after `proxy` belongs to mitmdump, untouched
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except query.QueryError as e:
        print(f"llmtap: {e}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmtap", description="Local-first LLM observability proxy.")
    p.add_argument("--version", action="version", version=f"llmtap {__version__}")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    proxy = sub.add_parser("proxy", help="run mitmdump with the llmtap addon (extra args go to mitmdump)")
    proxy.add_argument("mitmdump_args", nargs="*", help="e.g. --mode reverse:https://api.openai.com")
    proxy.set_defaults(func=cmd_proxy)

    sql = sub.add_parser("sql", help="run a SQL query on the database (works while the proxy runs)")
    sql.add_argument("query", help="the SQL, or - to read it from stdin")
    sql.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        default=[],
        help="bind $NAME in the query to VALUE (repeatable)",
    )
    _output_options(sql)
    sql.set_defaults(func=cmd_sql)

    rules_cmd = sub.add_parser("rules", help="check a rules file")
    rules_sub = rules_cmd.add_subparsers(required=True, metavar="ACTION")
    check = rules_sub.add_parser("check", help="validate a rules file and print the effective rules")
    check.add_argument("file", nargs="?", default=os.environ.get("LLMTAP_RULES", "rules.yaml"))
    check.set_defaults(func=cmd_rules_check)

    cache_cmd = sub.add_parser("cache", help="inspect or clear the response cache")
    cache_sub = cache_cmd.add_subparsers(required=True, metavar="ACTION")
    stats = cache_sub.add_parser("stats", help="entries, size and hits of the response cache")
    clear = cache_sub.add_parser("clear", help="delete cached responses (all, or one seed's)")
    clear.add_argument("--seed", help="only the entries saved under this Helicone-Cache-Seed / rule seed")
    for p_ in (stats, clear):
        p_.add_argument(
            "--cache", default=DEFAULT_CACHE, help="cache file (default: %(default)s; env LLMTAP_CACHE)"
        )
    stats.set_defaults(func=cmd_cache_stats)
    clear.set_defaults(func=cmd_cache_clear)

    demo = sub.add_parser("demo", help="send real SDK calls through the proxy to a local stand-in provider")
    demo.add_argument("--db", default="llmtap-demo.duckdb", help="database to write (default: %(default)s)")
    demo.set_defaults(func=cmd_demo)
    return p


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB, help="DuckDB file (default: %(default)s; env LLMTAP_DB)")
    p.add_argument("--format", choices=output.FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--out", type=Path, help="write to this file instead of stdout")


def _emit(args: argparse.Namespace, columns: list[str], rows: list[tuple]) -> None:
    text = output.render(columns, rows, args.format)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)


def cmd_proxy(args: argparse.Namespace) -> int:
    return run_proxy(list(args.mitmdump_args))


def run_proxy(extra: list[str]) -> int:
    cmd = [*proxyproc.mitmdump_command(), "-s", str(proxyproc.TAP)]
    if not any(a in ("--listen-host",) or a.startswith("--listen-host=") for a in extra):
        cmd += ["--listen-host", "127.0.0.1"]
    os.execv(cmd[0], [*cmd, *extra])
    return 0  # not reached


def cmd_sql(args: argparse.Namespace) -> int:
    sql = sys.stdin.read() if args.query == "-" else args.query
    columns, rows = query.run(args.db, sql, dict(args.param) or None)
    _emit(args, columns, rows)
    return 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    try:
        loaded = rules.load(args.file)
    except rules.RulesError as e:
        print(f"llmtap: {e}", file=sys.stderr)
        return 1
    print(f"{args.file}: OK, {len(loaded.providers)} providers, {len(loaded.rules)} rules\n")
    if loaded.providers:
        rows = [(h, p.api, p.name, p.price_id, p.stream_usage) for h, p in loaded.providers.items()]
        sys.stdout.write(output.render(["host", "api", "name", "price_as", "stream_usage"], rows))
    if loaded.rules:
        rows = [(r.name, _describe_match(r), _describe(r.cache), _describe(r.rate_limit), _describe(r.retry))
                for r in loaded.rules]  # fmt: skip
        sys.stdout.write(output.render(["rule", "match", "cache", "rate_limit", "retry"], rows, width=None))
    return 0


def _describe_match(rule: rules.Rule) -> str:
    return ", ".join(f"{k}={v}" for k, v in rule.match) or "(everything)"


def _describe(policy: object) -> str:
    if policy is None:
        return ""
    return ", ".join(f"{f}={getattr(policy, f)!r}" for f in policy.__dataclass_fields__)  # type: ignore[attr-defined]


def cmd_cache_stats(args: argparse.Namespace) -> int:
    stats = _cache(args.cache).stats()
    sys.stdout.write(output.render(list(stats), [tuple(stats.values())]))
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    n = _cache(args.cache).clear(args.seed)
    print(f"deleted {n} cached responses" + (f" with seed {args.seed!r}" if args.seed else ""))
    return 0


def _cache(path: str) -> CacheStore:
    if not Path(path).exists():
        raise query.QueryError(f"no cache at {path} yet: the proxy creates it when it starts")
    try:
        return CacheStore(path)
    except sqlite3.DatabaseError as e:
        raise query.QueryError(f"cannot open the cache {path}: {e}") from e


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run(Path(args.db))


if __name__ == "__main__":
    raise SystemExit(main())
