from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from llmtap.providers import Provider
from llmtap.rules import Rules, RulesError, load, parse

VALID = """\
# extra OpenAI-compatible hosts
providers:
  - host: localhost:8000
    api: openai
    name: vllm
    stream_usage: false
  - host: LLM.Corp.Example
    api: anthropic
    price_as: anthropic
  - host: gemini-proxy.internal
    api: gemini
    name: gemini-gw
    price_as: google
"""


def test_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(VALID)
    assert load(path) == Rules(
        providers={
            "localhost:8000": Provider("vllm", "openai", None, stream_usage=False),
            "llm.corp.example": Provider("LLM.Corp.Example", "anthropic", "anthropic"),
            "gemini-proxy.internal": Provider("gemini-gw", "gemini", "google"),
        },
        source=str(path),
    )


@pytest.mark.parametrize(
    "data",
    [
        None,  # an empty file
        {},
        {"providers": None},
        {"providers": []},
    ],
)
def test_empty_rules(data: Any) -> None:
    assert parse(data) == Rules(source="rules.yaml")


def entry(**fields: Any) -> dict[str, Any]:
    return {"providers": [{"host": "localhost:8000", "api": "openai", **fields}]}


API = "expected one of openai, anthropic, gemini"
HOST = "expected a host or host:port"
KEYS = "api, host, name, price_as, stream_usage"


@pytest.mark.parametrize(
    "data, field, reason",
    [
        # top level
        ([1, 2], "", "expected a mapping at the top level, got list"),
        ("providers", "", "expected a mapping at the top level, got str"),
        ({"provider": []}, "provider", "unknown key (expected providers, rules)"),
        # providers[i] is a mapping with known keys
        ({"providers": ["localhost:8000"]}, "providers[0]",
         "expected a mapping like {host: ..., api: openai}, got 'localhost:8000'"),
        (entry(hots="x"), "providers[0].hots", f"unknown key (expected {KEYS})"),
        # host
        ({"providers": [{"api": "openai"}]}, "providers[0].host", f"{HOST}, got None"),
        (entry(host=""), "providers[0].host", f"{HOST}, got ''"),
        (entry(host="http://localhost:8000/v1"), "providers[0].host", f"{HOST}, got 'http://localhost:8000/v1'"),
        (entry(host=8000), "providers[0].host", f"{HOST}, got 8000"),
        # api
        (entry(api="grpc"), "providers[0].api", f"{API}, got 'grpc'"),
        (entry(api=None), "providers[0].api", f"{API}, got None"),
        # name, price_as, stream_usage
        (entry(name=""), "providers[0].name", "expected a string, got ''"),
        (entry(name=["a"]), "providers[0].name", "expected a string, got ['a']"),
        (entry(price_as=1), "providers[0].price_as", "expected a genai-prices provider id, got 1"),
        (entry(stream_usage="yes"), "providers[0].stream_usage", "expected true or false, got 'yes'"),
        # the index of the bad entry
        ({"providers": [{"host": "a", "api": "openai"}, {"host": "b", "api": "soap"}]}, "providers[1].api",
         f"{API}, got 'soap'"),
    ],
)  # fmt: skip
def test_invalid_field(data: Any, field: str, reason: str) -> None:
    message = f"rules.yaml: {field}: {reason}" if field else f"rules.yaml: {reason}"
    with pytest.raises(RulesError, match=f"^{re.escape(message)}$") as info:
        parse(data)
    assert (info.value.field, info.value.reason) == (field, reason)


def test_error_keeps_its_context() -> None:
    with pytest.raises(RulesError) as info:
        parse(entry(api="grpc"), "/etc/llmtap/rules.yaml")
    e = info.value
    assert (e.path, e.field, e.reason) == (
        "/etc/llmtap/rules.yaml",
        "providers[0].api",
        "expected one of openai, anthropic, gemini, got 'grpc'",
    )
    assert isinstance(e, ValueError)


def test_providers_not_a_list_names_the_value() -> None:
    with pytest.raises(RulesError, match=r"^rules\.yaml: providers: expected a list, got 'localhost:8000'$"):
        parse({"providers": "localhost:8000"})


def test_load_names_the_file_in_field_errors(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("providers:\n  - host: localhost:8000\n    api: grpc\n")
    message = f"{path}: providers[0].api: expected one of openai, anthropic, gemini, got 'grpc'"
    with pytest.raises(RulesError, match=f"^{re.escape(message)}$"):
        load(path)


def test_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("providers:\n  - host: [localhost\n")
    with pytest.raises(RulesError, match=f"^{re.escape(str(path))}: not valid YAML: ") as info:
        load(path)
    assert "line 3" in str(info.value)


def test_yaml_tags_are_not_executed(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("providers: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(RulesError, match="not valid YAML: could not determine a constructor"):
        load(path)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda tmp: tmp / "missing.yaml", "No such file or directory"),
        (lambda tmp: tmp, "Is a directory"),
    ],
)
def test_unreadable_file(tmp_path: Path, make: Any, reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(RulesError, match=f"^{re.escape(str(path))}: cannot read the file: {reason}$"):
        load(path)
