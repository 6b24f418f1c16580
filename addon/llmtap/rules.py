"""rules.yaml: extra provider hosts (and, later, cache / rate-limit / retry policies).

Parsing is pure and strict: an unknown key or a bad value raises `RulesError` naming the file,
the field path and the value, e.g. `rules.yaml: providers[0].api: expected one of openai,
anthropic, gemini, got 'grpc'`. The addon turns that into a refusal to start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .providers import APIS, Provider

_PROVIDER_KEYS = {"host", "api", "name", "price_as", "stream_usage"}


class RulesError(ValueError):
    def __init__(self, path: str, field: str, reason: str) -> None:
        super().__init__(f"{path}: {field}: {reason}" if field else f"{path}: {reason}")
        self.path, self.field, self.reason = path, field, reason


@dataclass(frozen=True, slots=True)
class Rules:
    providers: dict[str, Provider] = field(default_factory=dict)
    source: str | None = None


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
    unknown = set(data) - {"providers"}
    if unknown:
        raise RulesError(name, sorted(unknown)[0], "unknown key (expected providers)")
    providers = data.get("providers") or []
    if not isinstance(providers, list):
        raise RulesError(name, "providers", f"expected a list, got {providers!r}")
    table: dict[str, Provider] = {}
    for i, entry in enumerate(providers):
        host, provider = _provider(entry, name, f"providers[{i}]")
        table[host] = provider
    return Rules(providers=table, source=name)


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
