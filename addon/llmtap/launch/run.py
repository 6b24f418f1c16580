"""`llmtap run -- COMMAND`: run a command with its LLM calls going through llmtap, then say what
they cost (the `time` of LLM spend).

A proxy is started on a free loopback port (or `--proxy URL` names a running one), the command runs
with the environment of environment.py, and when it exits the proxy is stopped as Ctrl-C stops it
(its writer flushes: every call is in the file) and a summary of the run's calls goes to stderr.
The exit status is the command's (128 + N when a signal N ended it).

Signals: the command runs in llmtap's process group, so a terminal's Ctrl-C (SIGINT, SIGQUIT)
reaches it directly, and llmtap does nothing with those while it waits, as `time` does; SIGTERM, SIGHUP,
SIGUSR1 and SIGUSR2 sent to llmtap are passed on to the command. The proxy runs in a session of its
own, so no signal meant for the command stops it before the command's last call is logged.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from llmtap import proxyproc
from llmtap.api.log import wait_written
from llmtap.launch import environment, summary, trust

PASSED_ON = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
IGNORED = (signal.SIGINT, signal.SIGQUIT)
_SHUTDOWN = re.compile(r"rows written, (\d+) dropped, (\d+) write errors, (\d+) hook errors")
SETTLE_TIMEOUT = 30.0


class RunError(Exception):
    """The proxy could not start, or a running one could not be reached."""


def parser(command: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmtap run",
        description="Run COMMAND with its LLM calls logged through llmtap; print what they cost.",
        epilog="Other options before -- go to mitmdump, e.g. --set llmtap_rules=rules.yaml.",
    )
    p.add_argument("--db", default=os.environ.get("LLMTAP_DB", "llmtap.duckdb"),
                   help="DuckDB file for the calls (default: %(default)s; env LLMTAP_DB)")  # fmt: skip
    p.add_argument("--proxy", metavar="URL", help="use this running proxy instead of starting one")
    p.add_argument("--api", default=os.environ.get("LLMTAP_API", "127.0.0.1:8788"),
                   help="with --proxy: its local API, to know when the run's calls are written "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--confdir", type=Path, help="mitmproxy's confdir, its CA (default ~/.mitmproxy)")
    p.add_argument("--quiet", action="store_true", help="no summary")
    p.add_argument("--format", choices=("text", "json"), default="text", help="summary format (stderr)")
    if command:  # without: words before -- that are not llmtap's (option values) go to mitmdump
        p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    return p


def main(argv: list[str]) -> int:
    if "--" in argv:
        i = argv.index("--")
        args, mitmdump_args = parser(command=False).parse_known_args(argv[:i])
        args.command = argv[i + 1 :]
    else:
        args, mitmdump_args = parser().parse_known_args(argv)
    if not args.command:
        parser().error("no command: llmtap run [OPTIONS] -- COMMAND [ARGS...]")
    try:
        return run(args, mitmdump_args)
    except (RunError, trust.TrustError) as e:
        print(f"llmtap: {e}", file=sys.stderr)
        return 125  # as env(1) and timeout(1): the tool failed, not the command


def run(args: argparse.Namespace, mitmdump_args: list[str]) -> int:
    given = proxyproc.option(mitmdump_args, "confdir")
    confdir = (args.confdir or (Path(given) if given else None) or trust.default_confdir()).expanduser()
    since = datetime.now(UTC)
    proxy = None
    if args.proxy:
        url, api = args.proxy, args.api.removeprefix("http://")
    else:
        proxy = _start(args.db, confdir, mitmdump_args)
        url, api = proxy.url, proxy.api
    try:
        bundle = trust.bundle(trust.ca_cert(confdir))
        env = os.environ | environment.variables(url, bundle, api)
        status = _run_command(args.command, env)
    finally:
        if proxy is not None:
            _stop(proxy)
    if proxy is None and api:
        wait_written(api, SETTLE_TIMEOUT)
    if not args.quiet:
        db = proxyproc.option(mitmdump_args, "llmtap_db")
        s = summary.collect(Path(db if db is not None else args.db), since)
        text = summary.to_json(s, status) if args.format == "json" else summary.render(s, status)
        print(text, file=sys.stderr)
    return status


def _start(db: str, confdir: Path, mitmdump_args: list[str]) -> proxyproc.ProxyProcess:
    given = proxyproc.option(mitmdump_args, "llmtap_db")
    settings = [] if given is not None else ["--set", f"llmtap_db={db}"]
    if proxyproc.option(mitmdump_args, "llmtap_api") is None:  # its own port: another proxy may hold 8788
        settings += ["--set", "llmtap_api=127.0.0.1:0"]
    logs = Path(tempfile.mkdtemp(prefix="llmtap-run-"))
    try:
        return proxyproc.start([*settings, *mitmdump_args], logs, confdir=confdir)
    except RuntimeError as e:
        raise RunError(f"the proxy did not start: {e}") from e


def _stop(proxy: proxyproc.ProxyProcess) -> None:
    """As Ctrl-C stops it: the writer flushes every call before the proxy exits. Its log is kept
    (and named) only when something went wrong."""
    rc = proxy.stop()
    text = proxy.output()
    counts = _SHUTDOWN.search(text)
    if rc != 0 or "Traceback" in text or counts is None or any(int(n) for n in counts.groups()):
        print(f"llmtap: the proxy exited with {rc}; its log: {proxy.log}", file=sys.stderr)
    else:
        shutil.rmtree(proxy.log.parent, ignore_errors=True)


def _run_command(command: list[str], env: dict[str, str]) -> int:
    """Run the command and wait for it, passing signals on; its exit status as a shell reports it
    (127 not found, 126 not executable, 128 + N killed by signal N).

    llmtap's own handlers are Python functions, installed before the command starts: an exec
    resets them to the default in the child, where SIG_IGN would be inherited (and a Python child
    that starts with SIGINT ignored never raises KeyboardInterrupt)."""
    started: list[subprocess.Popen[bytes]] = []

    def pass_on(sig: int, _frame: object) -> None:
        if started:
            started[0].send_signal(sig)

    previous = {sig: signal.signal(sig, lambda *_: None) for sig in IGNORED}
    previous |= {sig: signal.signal(sig, pass_on) for sig in PASSED_ON}
    try:
        try:
            started.append(subprocess.Popen(command, env=env))
        except FileNotFoundError:
            print(f"llmtap: {command[0]}: command not found", file=sys.stderr)
            return 127
        except PermissionError:
            print(f"llmtap: {command[0]}: permission denied", file=sys.stderr)
            return 126
        rc = started[0].wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - rc if rc < 0 else rc
