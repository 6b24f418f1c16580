"""rules.yaml: extra provider hosts, and policies (cache, rate limit, retry) chosen by matching.

Parsing is pure and strict: an unknown key or a bad value raises `RulesError` naming the file,
the field path and the value, e.g. `rules.yaml: rules[2].cache.ttl: expected a duration like '1h',
got 'soon'`. At startup the addon turns that into a refusal to start; on hot reload it keeps the
previous rules and logs why.

Matching: every key of a rule's `match` must match the request (an empty match matches all).
`provider`, `host`, `path`, `method`, `model`, `user` and `property.<name>` take shell-style globs
(`gpt-4o-mini*`). For cache and retry the first matching rule that sets them applies (request
headers override it); every matching rate limit applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from llmtap.policy.values import (
    CachePolicy,
    Fallback,
    PolicyError,
    RateLimitPolicy,
    RetryPolicy,
    cache_policy,
    fallbacks_policy,
    rate_limit_policy,
    retry_policy,
)
from llmtap.wire.providers import APIS, Provider

_PROVIDER_KEYS = {"host", "api", "name", "price_as", "stream_usage"}


class RulesError(ValueError):
    def __init__(self, path: str, field: str, reason: str) -> None:
        super().__init__(f"{path}: {field}: {reason}" if field else f"{path}: {reason}")
        self.path, self.field, self.reason = path, field, reason


_MATCH_KEYS = ("provider", "host", "path", "method", "model", "user")
_RULE_KEYS = {"name", "match", "cache", "rate_limit", "retry", "fallbacks"}


@dataclass(frozen=True, slots=True)
class Request:
    """What rules can match on, read from one request."""

    provider: str
    host: str
    path: str
    method: str
    model: str | None = None
    user: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    match: tuple[tuple[str, str], ...] = ()  # (key, glob); key is a _MATCH_KEYS name or property.<name>
    cache: CachePolicy | None = None
    rate_limit: RateLimitPolicy | None = None
    retry: RetryPolicy | None = None
    fallbacks: tuple[Fallback, ...] = ()

    def matches(self, req: Request) -> bool:
        for key, pattern in self.match:
            if key.startswith("property."):
                value = req.properties.get(key[len("property.") :])
            else:
                value = getattr(req, key)
                if key in ("provider", "host", "method") and value is not None:
                    value, pattern = value.lower(), pattern.lower()
            if value is None or not fnmatchcase(value, pattern):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Rules:
    providers: dict[str, Provider] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    source: str | None = None

    def cache_for(self, req: Request) -> tuple[Rule, CachePolicy] | None:
        for rule in self.rules:
            if rule.cache is not None and rule.matches(req):
                return rule, rule.cache
        return None

    def retry_for(self, req: Request) -> tuple[Rule, RetryPolicy] | None:
        for rule in self.rules:
            if rule.retry is not None and rule.matches(req):
                return rule, rule.retry
        return None

    def fallbacks_for(self, req: Request) -> tuple[Fallback, ...]:
        for rule in self.rules:
            if rule.fallbacks and rule.matches(req):
                return rule.fallbacks
        return ()

    def rate_limits_for(self, req: Request) -> list[tuple[Rule, RateLimitPolicy]]:
        return [(r, r.rate_limit) for r in self.rules if r.rate_limit is not None and r.matches(req)]

    @property
    def needs_body(self) -> bool:
        """Whether matching reads the request body (model, or user from the body)."""
        return any(key in ("model", "user") for rule in self.rules for key, _ in rule.match)


def load(path: str | Path) -> Rules:
    name = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise RulesError(name, "", f"cannot read the file: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RulesError(name, "", f"not valid YAML: {e}") from e
    return parse(data, name)


def parse(data: Any, name: str = "rules.yaml") -> Rules:
    if data is None:
        return Rules(source=name)
    if not isinstance(data, dict):
        raise RulesError(name, "", f"expected a mapping at the top level, got {type(data).__name__}")
    unknown = set(data) - {"providers", "rules"}
    if unknown:
        raise RulesError(name, sorted(unknown)[0], "unknown key (expected providers, rules)")
    providers = data.get("providers") or []
    if not isinstance(providers, list):
        raise RulesError(name, "providers", f"expected a list, got {providers!r}")
    table: dict[str, Provider] = {}
    for i, entry in enumerate(providers):
        host, provider = _provider(entry, name, f"providers[{i}]")
        table[host] = provider
    entries = data.get("rules") or []
    if not isinstance(entries, list):
        raise RulesError(name, "rules", f"expected a list, got {entries!r}")
    parsed: list[Rule] = []
    for i, entry in enumerate(entries):
        try:
            rule = _rule(entry, f"rules[{i}]")
        except PolicyError as e:
            raise RulesError(name, e.field, e.reason) from e
        if any(r.name == rule.name for r in parsed):
            raise RulesError(name, f"rules[{i}].name", f"duplicate rule name {rule.name!r}")
        parsed.append(rule)
    return Rules(providers=table, rules=tuple(parsed), source=name)


def _rule(entry: Any, where: str) -> Rule:
    if not isinstance(entry, dict):
        raise PolicyError(where, f"expected a mapping with name, match and a policy, got {entry!r}")
    unknown = set(entry) - _RULE_KEYS
    if unknown:
        expected = ", ".join(sorted(_RULE_KEYS))
        raise PolicyError(f"{where}.{sorted(unknown)[0]}", f"unknown key (expected {expected})")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PolicyError(f"{where}.name", f"expected a name for the rule, got {name!r}")
    if not any(k in entry for k in ("cache", "rate_limit", "retry", "fallbacks")):
        raise PolicyError(where, "sets no policy: add cache, rate_limit, retry or fallbacks")
    return Rule(
        name=name.strip(),
        match=_match({} if entry.get("match") is None else entry["match"], f"{where}.match"),
        cache=cache_policy(entry["cache"], f"{where}.cache") if "cache" in entry else None,
        rate_limit=rate_limit_policy(entry["rate_limit"], f"{where}.rate_limit")
        if "rate_limit" in entry
        else None,
        retry=retry_policy(entry["retry"], f"{where}.retry") if "retry" in entry else None,
        fallbacks=fallbacks_policy(entry["fallbacks"], f"{where}.fallbacks") if "fallbacks" in entry else (),
    )


def _match(data: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(data, dict):
        raise PolicyError(where, f"expected a mapping like {{provider: openai}}, got {data!r}")
    out = []
    for key, pattern in data.items():
        if key not in _MATCH_KEYS and not (
            isinstance(key, str) and key.startswith("property.") and len(key) > 9
        ):
            raise PolicyError(
                f"{where}.{key}", f"unknown key (expected {', '.join(_MATCH_KEYS)} or property.<name>)"
            )
        if not isinstance(pattern, str | int) or isinstance(pattern, bool):
            raise PolicyError(f"{where}.{key}", f"expected a string or glob, got {pattern!r}")
        out.append((key.lower() if key.startswith("property.") else key, str(pattern)))
    return tuple(out)


def _provider(entry: Any, name: str, where: str) -> tuple[str, Provider]:
    if not isinstance(entry, dict):
        raise RulesError(name, where, f"expected a mapping like {{host: ..., api: openai}}, got {entry!r}")
    unknown = set(entry) - _PROVIDER_KEYS
    if unknown:
        expected = ", ".join(sorted(_PROVIDER_KEYS))
        raise RulesError(name, f"{where}.{sorted(unknown)[0]}", f"unknown key (expected {expected})")
    host = entry.get("host")
    if not isinstance(host, str) or not host or "/" in host:
        raise RulesError(name, f"{where}.host", f"expected a host or host:port, got {host!r}")
    api = entry.get("api")
    if api not in APIS:
        raise RulesError(name, f"{where}.api", f"expected one of {', '.join(APIS)}, got {api!r}")
    label = entry.get("name", host)
    if not isinstance(label, str) or not label:
        raise RulesError(name, f"{where}.name", f"expected a string, got {label!r}")
    price_as = entry.get("price_as")
    if price_as is not None and not isinstance(price_as, str):
        raise RulesError(name, f"{where}.price_as", f"expected a genai-prices provider id, got {price_as!r}")
    stream_usage = entry.get("stream_usage", True)
    if not isinstance(stream_usage, bool):
        raise RulesError(name, f"{where}.stream_usage", f"expected true or false, got {stream_usage!r}")
    return host.lower(), Provider(label, api, price_as, stream_usage=stream_usage)
