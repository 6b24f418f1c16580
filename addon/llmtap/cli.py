"""The `llmtap` command: run the proxy, query the database, run the demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__, output, proxyproc, query

DEFAULT_DB = os.environ.get("LLMTAP_DB", "llmtap.duckdb")


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


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run(Path(args.db))


if __name__ == "__main__":
    raise SystemExit(main())
