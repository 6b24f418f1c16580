"""The `llmtap` command: run the proxy, query the database, reports, the schema, the demo."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from llmtap import __version__
from llmtap.reports import catalog, output
from llmtap.storage import query

if TYPE_CHECKING:
    from llmtap.fleet.redisstate import SyncCache
    from llmtap.policy import rules
    from llmtap.storage.cachestore import CacheStore

# Commands import what only they need (rules: yaml; feedback: urllib; cache: sqlite3): every
# `llmtap report` starts a fresh interpreter, and imports are most of its start-up time.

DEFAULT_DB = os.environ.get("LLMTAP_DB", "llmtap.duckdb")
DEFAULT_CACHE = os.environ.get("LLMTAP_CACHE", "llmtap-cache.sqlite")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["proxy"] and argv[1:2] not in (["-h"], ["--help"]):
        return run_proxy(argv[1:])  # everything after `proxy` belongs to mitmdump, untouched
    if argv[:1] == ["run"]:
        from llmtap.launch import run

        return run.main(argv[1:])  # its own parser: options for mitmdump, then -- COMMAND
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "format", None) == "parquet" and getattr(args, "out", None) is None:
        parser.error("--format parquet writes a file: add --out FILE")
    try:
        return args.func(args)
    except query.QueryError as e:
        print(f"llmtap: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. a config dir that cannot be written
        print(f"llmtap: {e}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmtap", description="Local-first LLM observability proxy.")
    p.add_argument("--version", action="version", version=f"llmtap {__version__}")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    proxy = sub.add_parser(
        "proxy",
        help="run mitmdump with the llmtap addon (extra args go to mitmdump); --workers N first: N processes"
        " on one port (Linux; needs llmtap_redis and a Postgres llmtap_db)",
    )
    proxy.add_argument("mitmdump_args", nargs="*", help="e.g. --mode reverse:https://api.openai.com")
    proxy.set_defaults(func=cmd_proxy)

    sub.add_parser(
        "run", help="run a command with its LLM calls through llmtap, then print their cost", add_help=False
    )  # fmt: skip  (main hands `run` to llmtap.launch.run)
    env = sub.add_parser("env", help="print shell exports that send a shell's LLM calls through a proxy")
    env.add_argument("--proxy", default="http://127.0.0.1:8080", help="the proxy (default: %(default)s)")
    env.add_argument("--api", help="the proxy's local API, exported as LLMTAP_API (for llmtap.log)")
    ca = sub.add_parser("ca", help="print the paths of mitmproxy's CA and of the combined CA bundle")
    for p_ in (env, ca):
        p_.add_argument("--confdir", type=Path, help="mitmproxy's confdir (default: ~/.mitmproxy)")
    env.set_defaults(func=cmd_env)
    ca.set_defaults(func=cmd_ca)

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

    _report_parser(sub)

    schema = sub.add_parser("schema", help="print the database schema (tables, views, columns) as Markdown")
    schema.add_argument("--out", type=Path, help="write to this file (e.g. docs/schema.md) instead of stdout")
    schema.set_defaults(func=cmd_schema)

    migrate = sub.add_parser(
        "migrate",
        help="apply the database's pending migrations now (the first writer would otherwise, with its"
        " rows waiting: minutes on a large fleet log)",
    )
    migrate.add_argument("--db", default=DEFAULT_DB, help="DuckDB file or postgresql:// URL (env LLMTAP_DB)")
    migrate.set_defaults(func=cmd_migrate)

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
        p_.add_argument(
            "--redis",
            default=os.environ.get("LLMTAP_REDIS", ""),
            help="a fleet's Redis URL instead of the file (env LLMTAP_REDIS)",
        )
    stats.set_defaults(func=cmd_cache_stats)
    clear.set_defaults(func=cmd_cache_clear)

    feedback = sub.add_parser("feedback", help="rate a logged call (thumbs up or down)")
    feedback.add_argument("request_id", help="the call's Helicone-Id")
    feedback.add_argument("--rating", choices=("up", "down"), required=True)
    score = sub.add_parser(
        "score", help="attach scores to a logged call: name=value (integers or true/false)"
    )
    score.add_argument("request_id", help="the call's Helicone-Id")
    score.add_argument("scores", nargs="+", metavar="NAME=VALUE")
    prop = sub.add_parser(
        "property", help="set properties of a logged call: name=value (as Helicone-Property-* would)"
    )
    prop.add_argument("request_id", help="the call's Helicone-Id")
    prop.add_argument("properties", nargs="+", metavar="NAME=VALUE")
    for p_ in (feedback, score, prop):
        p_.add_argument("--api", default=os.environ.get("LLMTAP_API", "127.0.0.1:8788"),
                        help="the proxy's local API (default: %(default)s; env LLMTAP_API)")  # fmt: skip
        p_.add_argument("--db", default=DEFAULT_DB, help="used when no proxy answers (default: %(default)s)")
    feedback.set_defaults(func=cmd_feedback)
    score.set_defaults(func=cmd_score)
    prop.set_defaults(func=cmd_property)

    ui = sub.add_parser("ui", help="serve the dashboard over a database, read-only (no proxy needed)")
    ui.add_argument(
        "--db",
        default=DEFAULT_DB,
        help="DuckDB file or postgresql:// URL (default: %(default)s; env LLMTAP_DB)",
    )
    ui.add_argument("--port", type=int, default=8789, help="loopback port (default: %(default)s; 0: free)")
    ui.add_argument("--open", action="store_true", help="open it in the default browser")
    ui.set_defaults(func=cmd_ui)

    demo = sub.add_parser("demo", help="send real SDK calls through the proxy to a local stand-in provider")
    demo.add_argument("--db", default="llmtap-demo.duckdb", help="database to write (default: %(default)s)")
    demo.add_argument("--ui", action="store_true", help="keep the demo's proxy and dashboard up until Ctrl-C")
    demo.set_defaults(func=cmd_demo)
    return p


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB, help="DuckDB file (default: %(default)s; env LLMTAP_DB)")
    p.add_argument(
        "--format",
        choices=output.EXPORT_FORMATS,
        default="table",
        help="output format (default: table; parquet needs --out)",
    )
    p.add_argument("--out", type=Path, help="write to this file instead of stdout")


def _checked[T](parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a parser that raises ValueError: its message becomes the usage error."""

    def check(text: str) -> T:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    check.__name__ = parse.__name__
    return check


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _report_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser(
        "report",
        help=f"built-in reports: {', '.join(catalog.REPORTS)} (works while the proxy runs)",
        description="Built-in reports over the requests table. `llmtap report NAME --help` for each.",
    )
    names = report.add_subparsers(required=True, metavar="REPORT", dest="report")
    for name, text in catalog.REPORTS.items():
        p = names.add_parser(name, help=text, description=f"llmtap report {name}: {text.rstrip('., ')}.")
        if name in catalog.GROUPED:
            default = ",".join(catalog.GROUPED[name]) or "none; status and error always"
            p.add_argument(
                "--by",
                action="append",
                type=_checked(catalog.parse_dimensions),
                metavar="DIM",
                help="group by model, provider, day, hour, minute, user, session, rating, property:NAME or"
                f" score:NAME; repeat or comma-separate for several (default: {default})",
            )
        limit = catalog.DEFAULT_LIMIT.get(name)
        if name != "summary":
            p.add_argument(
                "--limit",
                type=_checked(_positive),
                default=limit,
                help=f"at most this many rows (default: {limit or 'all'})",
            )
        _filter_options(p)
        _output_options(p)
        p.set_defaults(func=cmd_report)


def _filter_options(p: argparse.ArgumentParser) -> None:
    f = p.add_argument_group("filters (every report)")
    when = _checked(catalog.parse_when)
    f.add_argument(
        "--since", type=when, help="calls from then on: 30m, 24h, 7d, 2w ago, or an ISO date / time"
    )
    f.add_argument("--until", type=when, help="calls before then (a date alone includes that day)")
    f.add_argument("--provider", action="append", default=[], help="only this provider (repeatable)")
    f.add_argument("--model", action="append", default=[], help="only this model (repeatable)")
    f.add_argument("--user", action="append", default=[], help="only this user_id (repeatable)")
    f.add_argument("--session", action="append", default=[], help="only this session_id (repeatable)")
    f.add_argument(
        "--property",
        action="append",
        default=[],
        type=_checked(catalog.parse_property),
        metavar="NAME=VALUE",
        help="only calls with this Helicone property value (repeatable, all must match)",
    )
    f.add_argument("--rating", choices=("up", "down"), help="only calls whose latest feedback is this")
    f.add_argument(
        "--score",
        action="append",
        default=[],
        type=_checked(catalog.parse_score),
        metavar="NAME<OP>N",
        help="only calls whose latest score NAME compares so: 'accuracy>=90', is_safe=true"
        " (OP: = != > >= < <=; repeatable)",
    )
    f.add_argument(
        "--tz",
        default="UTC",
        type=_checked(catalog.parse_tz),
        help="time zone of days, hours and ISO times without an offset (default: UTC)",
    )


def _emit(args: argparse.Namespace, columns: list[str], rows: list[tuple]) -> None:
    _write(args, output.render(columns, rows, args.format))


def _write(args: argparse.Namespace, text: str) -> None:
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)


def cmd_proxy(args: argparse.Namespace) -> int:
    return run_proxy(list(args.mitmdump_args))


def run_proxy(extra: list[str]) -> int:
    from llmtap import proxyproc
    from llmtap.launch import workers

    try:
        n, extra = workers.split_workers(extra)
        if not any(a in ("--listen-host",) or a.startswith("--listen-host=") for a in extra):
            extra = ["--listen-host", "127.0.0.1", *extra]
        if n > 1:
            return workers.main(["--workers", str(n), *extra])
    except workers.WorkersError as e:
        print(f"llmtap: {e}", file=sys.stderr)
        return 2
    cmd = [*proxyproc.mitmdump_command(), "-s", str(proxyproc.TAP)]
    os.execv(cmd[0], [*cmd, *extra])
    return 0  # not reached


def cmd_env(args: argparse.Namespace) -> int:
    from llmtap.launch import environment, trust

    try:
        bundle = trust.bundle(trust.ca_cert(args.confdir or trust.default_confdir()))
    except trust.TrustError as e:
        raise query.QueryError(str(e)) from e
    sys.stdout.write(environment.exports(environment.variables(args.proxy, bundle, args.api)))
    return 0


def cmd_ca(args: argparse.Namespace) -> int:
    from llmtap.launch import trust

    ca = trust.ca_cert(args.confdir or trust.default_confdir())
    try:
        bundle = trust.bundle(ca)
    except trust.TrustError as e:
        raise query.QueryError(str(e)) from e
    print(ca)
    print(bundle)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from llmtap.ui import standalone

    return standalone.serve(args.db, args.port, args.open)


def cmd_sql(args: argparse.Namespace) -> int:
    sql = sys.stdin.read() if args.query == "-" else args.query
    if args.format == "parquet":
        query.run_to_parquet(args.db, sql, dict(args.param) or None, args.out)
        return 0
    columns, rows = query.run(args.db, sql, dict(args.param) or None)
    _emit(args, columns, rows)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    opts = catalog.Options(
        since=args.since,
        until=args.until,
        provider=args.provider,
        model=args.model,
        user=args.user,
        session=args.session,
        properties=args.property,
        rating=args.rating,
        scores=args.score,
        by=[d for group in getattr(args, "by", None) or [] for d in group],
        limit=getattr(args, "limit", None),
        tz=args.tz,
    )
    conn = query.connect(args.db)
    try:
        report = catalog.prepare(conn, args.report, opts)
        if args.format == "parquet":
            query.to_parquet(conn, report.sql, report.params, args.out)
            return 0
        as_text = args.format in ("csv", "json")
        columns, rows = query.fetch(conn, report.sql, report.params, decimals_as_text=as_text)
    finally:
        conn.close()
    _write(args, catalog.render(report, columns, rows, args.format))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the pending migrations and say which, and how long they took: on a large Postgres log
    an upgrade builds indexes and rollups over every call, under the lock the writers wait on."""
    import time

    from llmtap.storage import writer

    start = time.monotonic()
    names = writer.migrate_now(args.db)
    took = time.monotonic() - start
    print(f"applied {', '.join(names)} in {took:.1f} s" if names else "nothing to apply: up to date")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from llmtap.storage import schema_doc

    _write(args, schema_doc.generate())
    return 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    from llmtap.policy import rules

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
    stats = _cache(args).stats()
    sys.stdout.write(output.render(list(stats), [tuple(stats.values())]))
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    n = _cache(args).clear(args.seed)
    print(f"deleted {n} cached responses" + (f" with seed {args.seed!r}" if args.seed else ""))
    return 0


def _cache(args: argparse.Namespace) -> CacheStore | SyncCache:
    import sqlite3

    from llmtap.storage.cachestore import CacheStore

    if args.redis:
        import redis

        from llmtap.fleet.redisstate import SyncCache
        from llmtap.policy.redact import redact_url

        cache = SyncCache(args.redis)
        try:
            cache.client.ping()
        except redis.RedisError as e:
            raise query.QueryError(f"cannot reach Redis at {redact_url(args.redis)}: {e}") from e
        return cache
    path = args.cache
    if not Path(path).exists():
        raise query.QueryError(f"no cache at {path} yet: the proxy creates it when it starts")
    try:
        return CacheStore(path)
    except sqlite3.DatabaseError as e:
        raise query.QueryError(f"cannot open the cache {path}: {e}") from e


def cmd_feedback(args: argparse.Namespace) -> int:
    from llmtap.api import annotate

    print(annotate.annotate("feedback", args.request_id, {"rating": args.rating == "up"}, args.api, args.db))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from llmtap.api import annotate

    scores = annotate.parse_scores(args.scores)
    print(annotate.annotate("score", args.request_id, {"scores": scores}, args.api, args.db))
    return 0


def cmd_property(args: argparse.Namespace) -> int:
    from llmtap.api import annotate

    properties = annotate.parse_properties(args.properties)
    print(annotate.annotate("property", args.request_id, {"properties": properties}, args.api, args.db))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from llmtap.demo import walkthrough

    return walkthrough.run(Path(args.db), ui=args.ui)


if __name__ == "__main__":
    raise SystemExit(main())
