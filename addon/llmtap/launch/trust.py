"""The CA an intercepted app must trust: mitmproxy's, added to the roots the app trusts already.

`SSL_CERT_FILE` (and its cousins) replace a client's trust store instead of adding to it, so
pointing them at mitmproxy's CA alone breaks every other HTTPS call the app makes. llmtap writes a
combined bundle instead: the base the app trusted before (its own `SSL_CERT_FILE` when set, e.g. a
corporate bundle, else the system roots) followed by mitmproxy's CA, once, under llmtap's config
dir, rewritten only when either part changes (atomically, so a concurrent reader never sees half).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
from pathlib import Path

CA_NAME = "mitmproxy-ca-cert.pem"


class TrustError(Exception):
    """No root certificates to build on, or a CA file that cannot be read."""


def config_dir() -> Path:
    """llmtap's own config dir: $LLMTAP_HOME, else $XDG_CONFIG_HOME/llmtap, else ~/.config/llmtap."""
    if home := os.environ.get("LLMTAP_HOME"):
        return Path(home)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "llmtap"


def default_confdir() -> Path:
    """mitmproxy's confdir when none is set: where `mitmdump` keeps its CA."""
    return Path("~/.mitmproxy").expanduser()


def ca_cert(confdir: Path) -> Path:
    """mitmproxy's CA certificate in `confdir`, created the way mitmdump creates it on first start."""
    path = confdir / CA_NAME
    if not path.exists():
        from mitmproxy.certs import CertStore  # only here: creating a CA is mitmproxy's job

        CertStore.from_store(confdir, "mitmproxy", 2048)
    return path


def system_roots() -> Path:
    """The roots a client trusts without llmtap: the caller's SSL_CERT_FILE, else OpenSSL's default."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), *_system_files()):
        if candidate and Path(candidate).is_file() and not _is_ours(Path(candidate)):
            return Path(candidate)
    raise TrustError(
        "no root certificates found to add mitmproxy's CA to: set SSL_CERT_FILE to your CA bundle"
    )


def bundle(ca: Path, base: Path | None = None) -> Path:
    """The combined bundle (`base` roots + `ca`), written if missing or out of date."""
    base = base or system_roots()
    try:
        text = base.read_text().rstrip("\n") + "\n" + ca.read_text()
    except OSError as e:
        raise TrustError(f"cannot read {e.filename}: {e.strerror}") from e
    path = config_dir() / _bundle_name(base)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".bundle-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return path


def _bundle_name(base: Path) -> str:
    """One bundle per base: the system roots' is ca-bundle.pem; another base gets its own file, so
    two runs with different bases never overwrite each other's."""
    if _is_system(base):
        return "ca-bundle.pem"
    return f"ca-bundle-{hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:10]}.pem"


def _system_files() -> tuple[str, ...]:
    """OpenSSL's compiled-in bundle and Debian's (not SSL_CERT_FILE, which the caller may have set)."""
    return (ssl.get_default_verify_paths().openssl_cafile, "/etc/ssl/certs/ca-certificates.crt")


def _is_system(base: Path) -> bool:
    return any(Path(p).is_file() and Path(p).resolve() == base.resolve() for p in _system_files())


def _is_ours(path: Path) -> bool:
    """A bundle llmtap wrote (a nested `llmtap run`, or an `llmtap env` already applied)."""
    return path.resolve().parent == config_dir().resolve() and path.name.startswith("ca-bundle")
