"""The response cache's policy and keys (Helicone-compatible headers, reference/helicone.md §3).

Turned on by `Helicone-Cache-Enabled: true` or a matching rule; `Helicone-Cache-Save` /
`-Read: true` ask for save-only / read-only, and an explicit `false` in any of them overrides a
rule. `Helicone-Cache-Seed`, `-Bucket-Max-Size` (1 to 20) and `-Ignore-Keys` (`a,b` or `"a","b"`)
override the rule's values; the TTL comes from `Cache-Control` (`s-maxage` wins over `max-age`),
else the rule, else 7 days, and is capped at 365 days.

The key is versioned (`c1:`) and is SHA-256 over the canonical JSON of: seed, method, host, path,
sorted query, the canonical JSON body without the ignored top-level keys (or the hash of a body
that is not JSON), a hash of the auth header, `Cache-Control` and the bucket size. Unlike
Helicone the host is in the key and two API keys never share an entry; unlike Helicone the
enable/save/read flags are not, so a save-only warm-up fills the entries that readers use.
Changing this recipe changes every key: bump the version when you do.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl

from llmtap.policy.values import MAX_BUCKET, MAX_CACHE_TTL, CachePolicy
from llmtap.wire.helicone import HeaderError

KEY_VERSION = "c1"
AUTH_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")
_MAX_AGE = re.compile(r"(?:^|,)\s*(s-maxage|max-age)\s*=\s*\"?(\d+)\"?", re.I)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the addon needs to read and save one request's cache entries."""

    base: str  # slot keys are f"{base}/{i}"
    policy: CachePolicy

    def keys(self) -> list[str]:
        return [f"{self.base}/{i}" for i in range(self.policy.bucket_max_size)]


def _flag(headers: Mapping[str, str], name: str) -> bool | None:
    """`true` or `false` (any case); other values are ignored, as Helicone turns on only on "true"."""
    value = (headers.get(name) or "").strip().lower()
    return {"true": True, "false": False}.get(value)


def policy_for(headers: Mapping[str, str], rule: CachePolicy | None) -> CachePolicy | None:
    """The cache policy of a request (headers lowercased), or None when caching is off."""
    if rule is None and not any(name.startswith("helicone-cache") for name in headers):
        return None  # the common case, on every request: nothing asked for
    enabled, save, read = (_flag(headers, f"helicone-cache-{n}") for n in ("enabled", "save", "read"))
    if enabled is False:
        return None
    if rule is None:
        if not (enabled or save or read):
            return None
        rule = CachePolicy(read=bool(enabled or read), save=bool(enabled or save))
    elif enabled:
        rule = replace(rule, read=True, save=True)
    if save is not None:
        rule = replace(rule, save=save)
    if read is not None:
        rule = replace(rule, read=read)
    if not (rule.read or rule.save):
        return None
    return replace(
        rule,
        seed=headers.get("helicone-cache-seed", rule.seed),
        bucket_max_size=_bucket(headers.get("helicone-cache-bucket-max-size"), rule.bucket_max_size),
        ignore_keys=_ignore_keys(headers.get("helicone-cache-ignore-keys"), rule.ignore_keys),
        ttl=_ttl(headers.get("cache-control"), rule.ttl),
    )


def _bucket(value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        size = int(value.strip())
    except ValueError:
        size = -1
    if not 1 <= size <= MAX_BUCKET:
        raise HeaderError(
            "Helicone-Cache-Bucket-Max-Size", f"expected a whole number from 1 to 20, got {value!r}"
        )
    return size


def _ignore_keys(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """Both Helicone's documented `a,b` and its code's `"a","b"` forms."""
    if value is None:
        return default
    try:
        keys = json.loads(f"[{value}]")
    except ValueError:
        keys = [k.strip().strip("\"'") for k in value.split(",")]
    if not all(isinstance(k, str) for k in keys):
        raise HeaderError("Helicone-Cache-Ignore-Keys", f"expected body key names like a,b, got {value!r}")
    return tuple(k for k in keys if k)


def _ttl(cache_control: str | None, default: float) -> float:
    if cache_control:
        found = dict((k.lower(), int(v)) for k, v in _MAX_AGE.findall(cache_control))
        seconds = found.get("s-maxage", found.get("max-age"))
        if seconds is not None:
            return float(min(seconds, MAX_CACHE_TTL))
    return default


def lookup_for(
    policy: CachePolicy, method: str, host: str, path: str, body: bytes, headers: Mapping[str, str]
) -> Lookup:
    """The cache slots of a request. `path` is the original one (query included), `headers` lowercased."""
    route, _, query = path.partition("?")
    auth = next((headers[h] for h in AUTH_HEADERS if h in headers), None)
    material = {
        "seed": policy.seed,
        "method": method.upper(),
        "host": host.lower(),
        "path": route,
        "query": sorted(parse_qsl(query, keep_blank_values=True)),
        "body": canonical_body(body, policy.ignore_keys),
        "auth": hashlib.sha256(auth.encode()).hexdigest() if auth else None,
        "cache_control": headers.get("cache-control", ""),
        "bucket": policy.bucket_max_size,
    }
    return Lookup(f"{KEY_VERSION}:{hashlib.sha256(canonical_json(material).encode()).hexdigest()}", policy)


def canonical_json(value: Any) -> str:
    """Sorted keys, compact, UTF-8: part of the key contract (changing it changes every key)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_body(body: bytes, ignore_keys: tuple[str, ...]) -> str:
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        return "sha256:" + hashlib.sha256(body).hexdigest()
    if isinstance(doc, dict) and ignore_keys:
        doc = {k: v for k, v in doc.items() if k not in ignore_keys}
    return canonical_json(doc)
