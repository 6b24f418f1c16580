"""Real servers for the fleet tests: redis-server and Postgres, on free ports, stopped by PID.

Nothing is mocked: a test that needs Redis gets its own `redis-server` (Debian's package, installed
by scripts/setup.sh; ~30 ms to start) with persistence off, so tests never share state, and a
fault test can kill it and start it again on the same port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """Listens on TCP and on a unix socket; with `tls`, on a TLS port too (a CA of its own)."""

    def __init__(self, workdir: Path, tls: bool = False) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing: run scripts/setup.sh (it installs Debian's redis-server)"
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.workdir / 'redis.sock'}?db=0"

    @property
    def tls_url(self) -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.workdir / 'ca.pem'}"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no",
               "--unixsocket", str(self.workdir / "redis.sock"), "--unixsocketperm", "700",
               "--loglevel", "warning"]  # fmt: skip
        if self.tls_port is not None:
            cert, key, ca = self._certificates()
            cmd += ["--tls-port", str(self.tls_port), "--tls-cert-file", str(cert), "--tls-key-file",
                    str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.ping():
            assert self.proc.poll() is None, f"redis-server exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, "redis-server did not answer PING within 10 s"
            time.sleep(0.005)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it by PID (SIGKILL for a crash); its data go with it (persistence is off)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)

    def _certificates(self) -> tuple[Path, Path, Path]:
        """A CA and a certificate for 127.0.0.1 it signed (mitmproxy's helpers: its leaf keys are
        the CA's own)."""
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from mitmproxy import certs

        cert, key, ca = (self.workdir / name for name in ("cert.pem", "key.pem", "ca.pem"))
        if not cert.exists():
            private, ca_cert = certs.create_ca("llmtap tests", "llmtap test CA", 2048)
            leaf = certs.dummy_cert(
                private, ca_cert, "127.0.0.1", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            )
            key.write_bytes(
                private.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                )
            )
            cert.write_bytes(leaf.to_pem())
            ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        return cert, key, ca


def postgres_bin(name: str) -> str:
    """Debian keeps the server binaries out of PATH, in /usr/lib/postgresql/<version>/bin."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    binary = str(found[-1]) if found else shutil.which(name)
    assert binary, f"{name} is missing: run scripts/setup.sh (it installs Debian's postgresql)"
    return binary


class PostgresServer:
    """A throwaway cluster: `initdb` (trust auth, fsync off) in a temp dir and `postgres` on a free
    port, run as the `postgres` user when the tests run as root (Postgres refuses to run as root).
    The data directory lives outside pytest's root-only temp dirs so that user can reach it."""

    def __init__(self) -> None:
        self.user = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="llmtap-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        if self.user:
            shutil.chown(self.root, self.user, self.user)
        self._run([postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                   "--no-sync", "-E", "UTF8", "--locale=C"])  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, cmd: list[str]) -> None:
        subprocess.run(cmd, check=True, capture_output=True, user=self.user, group=self.user)

    def start(self) -> PostgresServer:
        cmd = [postgres_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
               "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
               "-c", "full_page_writes=off", "-c", "max_connections=100"]  # fmt: skip
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 (the server's stderr, kept open)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, user=self.user, group=self.user)
        deadline = time.monotonic() + 20
        while not self.ready():
            assert self.proc.poll() is None, f"postgres exited with {self.proc.returncode}: {self.log()}"
            assert time.monotonic() < deadline, f"postgres did not accept connections in 20 s: {self.log()}"
            time.sleep(0.02)
        return self

    def ready(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url(), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Stop it by PID: SIGINT is Postgres' fast shutdown, SIGKILL a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
