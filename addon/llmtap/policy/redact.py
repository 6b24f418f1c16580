"""Secrets are removed before a record is queued, so they never reach the database or a log.

Header names and query parameter names are matched by what they look like rather than by a fixed
list alone, so a provider's new `x-foo-api-key` is covered too. Values are replaced outright;
no prefix or suffix of a key is kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "[REDACTED]"

SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "helicone-auth",
        "cookie",
        "set-cookie",
    }
)
_SECRET_NAME = re.compile(r"api[-_]?key|token|secret|password|auth|cookie|signature|credential", re.I)
_SECRET_PARAM = re.compile(r"^(?:key|sig|code)$|api[-_]?key|token|secret|password|auth|signature", re.I)


def is_secret_header(name: str) -> bool:
    name = name.lower()
    return name in SECRET_HEADERS or _SECRET_NAME.search(name) is not None


def redact_headers(fields: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers as a dict (names lowercased, repeats joined) with secret values replaced."""
    out: dict[str, str] = {}
    for name, value in fields:
        name = name.lower()
        value = REDACTED if is_secret_header(name) else value
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def redact_url(url: str) -> str:
    """A server URL (Redis, Postgres) to show in logs and errors: its password replaced by ***.
    Anything without one (a file path, `unix:///...`) comes back as it is."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def redact_path(path: str) -> str:
    """The path with the values of key-looking query parameters (Gemini `?key=`) replaced."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(_SECRET_PARAM.search(k) for k, _ in pairs):
        return path
    safe = [(k, REDACTED if _SECRET_PARAM.search(k) else v) for k, v in pairs]
    return f"{base}?{urlencode(safe, safe='[]')}"
