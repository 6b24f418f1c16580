from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from llmtap.policy.rules import Request as RuleRequest
from llmtap.policy.rules import Rule, Rules, RulesError, load, parse
from llmtap.policy.values import CachePolicy, RateLimitPolicy, RetryPolicy
from llmtap.wire.providers import Provider

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


# -- the rules: section --

POLICIES = """\
rules:
  - name: cache-cheap-calls
    match: {provider: openai, model: "gpt-4o-mini*", path: /v1/chat/completions}
    cache: {ttl: 1h, seed: v1, ignore_keys: [user]}
  - name: per-user-limit
    match: {}
    rate_limit: {quota: 100, window: 60s, segment: User}
  - name: retry-anthropic
    match: {provider: anthropic, property.Env: prod}
    retry: {num: 3, min_timeout: 1s, max_timeout: 10s}
"""


def test_valid_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(POLICIES)
    assert load(path) == Rules(
        rules=(
            Rule(
                "cache-cheap-calls",
                match=(("provider", "openai"), ("model", "gpt-4o-mini*"), ("path", "/v1/chat/completions")),
                cache=CachePolicy(ttl=3600.0, seed="v1", ignore_keys=("user",)),
            ),
            Rule("per-user-limit", rate_limit=RateLimitPolicy(100.0, 60.0, segment="user")),
            Rule(
                "retry-anthropic",
                match=(("provider", "anthropic"), ("property.env", "prod")),
                retry=RetryPolicy(num=3),
            ),
        ),
        source=str(path),
    )


def rule(**fields: Any) -> dict[str, Any]:
    return {"name": "r", "match": {}, "cache": {}, **fields}


def rules_of(*entries: Any) -> dict[str, Any]:
    return {"rules": list(entries)}


RULE_KEYS = "cache, fallbacks, match, name, rate_limit, retry"
MATCH_KEYS = "provider, host, path, method, model, user or property.<name>"


@pytest.mark.parametrize(
    "data, field, reason",
    [
        # the section
        ({"rules": "cache-all"}, "rules", "expected a list, got 'cache-all'"),
        (rules_of("cache-all"), "rules[0]",
         "expected a mapping with name, match and a policy, got 'cache-all'"),
        (rules_of(rule(), rule(nmae="x")), "rules[1].nmae", f"unknown key (expected {RULE_KEYS})"),
        # names: required, non-empty, unique (after trimming)
        (rules_of({"match": {}, "cache": {}}), "rules[0].name", "expected a name for the rule, got None"),
        (rules_of(rule(name="  ")), "rules[0].name", "expected a name for the rule, got '  '"),
        (rules_of(rule(name=3)), "rules[0].name", "expected a name for the rule, got 3"),
        (rules_of(rule(name="a"), rule(name="b"), rule(name=" a ")), "rules[2].name",
         "duplicate rule name 'a'"),
        # a rule must set a policy
        (rules_of({"name": "r", "match": {"provider": "openai"}}), "rules[0]",
         "sets no policy: add cache, rate_limit, retry or fallbacks"),
        # match
        (rules_of(rule(match="openai")), "rules[0].match",
         "expected a mapping like {provider: openai}, got 'openai'"),
        (rules_of(rule(match={"modle": "gpt-4o"})), "rules[0].match.modle",
         f"unknown key (expected {MATCH_KEYS})"),
        (rules_of(rule(match={"property.": "x"})), "rules[0].match.property.",
         f"unknown key (expected {MATCH_KEYS})"),
        (rules_of(rule(match={"Provider": "openai"})), "rules[0].match.Provider",
         f"unknown key (expected {MATCH_KEYS})"),
        (rules_of(rule(match={"model": None})), "rules[0].match.model",
         "expected a string or glob, got None"),
        (rules_of(rule(match={"model": ["a", "b"]})), "rules[0].match.model",
         "expected a string or glob, got ['a', 'b']"),
        (rules_of(rule(match={"user": True})), "rules[0].match.user", "expected a string or glob, got True"),
        # policies: the path runs through the policy's field
        (rules_of(rule(name="a"), rule(name="b"), rule(name="c", cache={"ttl": "soon"})),
         "rules[2].cache.ttl", "expected a duration like '1h', got 'soon'"),
        (rules_of(rule(cache={"ttl": "1h", "size": 2})), "rules[0].cache.size",
         "unknown key (expected bucket_max_size, ignore_keys, read, save, seed, ttl)"),
        (rules_of(rule(cache=None)), "rules[0].cache", "expected a mapping, got None"),
        (rules_of(rule(rate_limit={"quota": 1, "window": "soon"})), "rules[0].rate_limit.window",
         "expected a duration like '60s', got 'soon'"),
        (rules_of(rule(retry={"min_timeout": 5, "max_timeout": 1})), "rules[0].retry.max_timeout",
         "must not be below min_timeout, got 1"),
    ],
)  # fmt: skip
def test_invalid_rule(data: Any, field: str, reason: str) -> None:
    message = f"rules.yaml: {field}: {reason}"
    with pytest.raises(RulesError, match=f"^{re.escape(message)}$") as info:
        parse(data)
    assert (info.value.path, info.value.field, info.value.reason) == ("rules.yaml", field, reason)


def test_readme_example_error(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: a\n    cache: {ttl: soon}\n")
    message = f"{path}: rules[0].cache.ttl: expected a duration like '1h', got 'soon'"
    with pytest.raises(RulesError, match=f"^{re.escape(message)}$"):
        load(path)


@pytest.mark.parametrize("match", [[], "", 0, False])
def test_a_falsy_match_that_is_not_a_mapping_is_rejected(match: Any) -> None:
    with pytest.raises(RulesError, match=r"^rules\.yaml: rules\[0\]\.match: expected a mapping"):
        parse(rules_of(rule(match=match)))


@pytest.mark.parametrize(
    "entry, expected",
    [
        # a missing or null match is "everything"
        ({"name": "r", "cache": {}}, ()),
        ({"name": "r", "match": None, "cache": {}}, ()),
        # property keys are lowercased (Helicone lowercases property names); values are kept
        ({"name": "r", "match": {"property.App": "Docs"}, "cache": {}}, (("property.app", "Docs"),)),
        # numbers become glob text
        ({"name": "r", "match": {"property.tier": 2}, "cache": {}}, (("property.tier", "2"),)),
    ],
)
def test_match_is_normalised(entry: dict[str, Any], expected: tuple[tuple[str, str], ...]) -> None:
    [parsed] = parse(rules_of(entry)).rules
    assert parsed.match == expected


def test_rule_name_is_trimmed() -> None:
    assert parse(rules_of(rule(name=" cache-all "))).rules[0].name == "cache-all"


# -- matching --

OPENAI = RuleRequest(
    provider="openai", host="api.openai.com", path="/v1/chat/completions", method="POST",
    model="gpt-4o-mini-2024-07-18", user="alice", properties={"app": "docs", "env": "prod"},
)  # fmt: skip


def when(**match: str) -> Rule:
    return Rule("r", match=tuple(match.items()), cache=CachePolicy())


def props(**match: str) -> Rule:
    return Rule("r", match=tuple((f"property.{k}", v) for k, v in match.items()), cache=CachePolicy())


@pytest.mark.parametrize(
    "rule_, matches",
    [
        # an empty match matches everything
        (when(), True),
        # globs
        (when(model="gpt-4o-mini*"), True),
        (when(model="gpt-4o"), False),
        (when(model="gpt-4o*"), True),
        (when(path="/v1/*"), True),
        (when(path="/v1/chat/completion?"), True),
        (when(host="*.openai.com"), True),
        (when(host="[ab]pi.openai.com"), True),
        # provider, host and method ignore case
        (when(provider="OpenAI"), True),
        (when(host="API.OpenAI.com"), True),
        (when(method="post"), True),
        # path, model and user do not
        (when(path="/V1/*"), False),
        (when(model="GPT-4o-mini*"), False),
        (when(user="Alice"), False),
        (when(user="alice"), True),
        # every key must match
        (when(provider="openai", model="gpt-4o-mini*", method="POST"), True),
        (when(provider="openai", model="claude-*"), False),
        (when(provider="anthropic", model="gpt-4o-mini*"), False),
        # properties (names lowercased at parse time, values case-sensitive)
        (props(app="docs"), True),
        (props(app="d*", env="prod"), True),
        (props(app="Docs"), False),
        (props(app="docs", env="dev"), False),
        (props(team="*"), False),
    ],
)
def test_rule_matches(rule_: Rule, matches: bool) -> None:
    assert rule_.matches(OPENAI) is matches


@pytest.mark.parametrize(
    "rule_",
    [
        # an unknown model or user never matches a pattern, not even *
        when(model="*"),
        when(user="*"),
        when(model="gpt-4o-mini*"),
    ],
)
def test_missing_model_or_user_never_matches(rule_: Rule) -> None:
    assert not rule_.matches(RuleRequest("openai", "api.openai.com", "/v1/chat/completions", "POST"))


def test_property_match_from_a_parsed_rule() -> None:
    [parsed] = parse(rules_of(rule(match={"property.App": "docs"}))).rules
    assert parsed.matches(OPENAI)
    assert not parsed.matches(RuleRequest("openai", "api.openai.com", "/", "POST"))


CACHE_1 = CachePolicy(ttl=60.0)
CACHE_2 = CachePolicy(ttl=120.0)
LIMIT_1 = RateLimitPolicy(100, 60)
LIMIT_2 = RateLimitPolicy(10, 3600, segment="user")
RETRY_1 = RetryPolicy(num=2)
RETRY_2 = RetryPolicy(num=3)

TABLE = Rules(
    rules=(
        Rule("anthropic-cache", match=(("provider", "anthropic"),), cache=CACHE_1),
        Rule("limit-only", match=(), rate_limit=LIMIT_1),
        Rule("mini-cache", match=(("model", "gpt-4o-mini*"),), cache=CACHE_1, retry=RETRY_1),
        Rule("all-cache", match=(), cache=CACHE_2, rate_limit=LIMIT_2, retry=RETRY_2),
        Rule("user-limit", match=(("user", "bob"),), rate_limit=RateLimitPolicy(1, 60)),
    )
)


def test_cache_for_is_the_first_matching_rule_that_sets_cache() -> None:
    assert TABLE.cache_for(OPENAI) == (TABLE.rules[2], CACHE_1)
    other = RuleRequest("google", "generativelanguage.googleapis.com", "/v1beta/models/x", "POST")
    assert TABLE.cache_for(other) == (TABLE.rules[3], CACHE_2)
    assert Rules().cache_for(OPENAI) is None


def test_retry_for_is_the_first_matching_rule_that_sets_retry() -> None:
    assert TABLE.retry_for(OPENAI) == (TABLE.rules[2], RETRY_1)
    anthropic = RuleRequest("anthropic", "api.anthropic.com", "/v1/messages", "POST")
    assert TABLE.retry_for(anthropic) == (TABLE.rules[3], RETRY_2)
    assert Rules(rules=(TABLE.rules[0],)).retry_for(anthropic) is None


def test_rate_limits_for_is_every_matching_rule() -> None:
    assert TABLE.rate_limits_for(OPENAI) == [(TABLE.rules[1], LIMIT_1), (TABLE.rules[3], LIMIT_2)]
    bob = RuleRequest("openai", "api.openai.com", "/", "POST", user="bob")
    assert [r.name for r, _ in TABLE.rate_limits_for(bob)] == ["limit-only", "all-cache", "user-limit"]
    assert Rules().rate_limits_for(OPENAI) == []


@pytest.mark.parametrize(
    "match, needs",
    [
        # only model and user are read from the body
        ({"model": "gpt-*"}, True),
        ({"user": "alice"}, True),
        ({"provider": "openai", "path": "/v1/*", "method": "POST", "host": "*", "property.app": "x"}, False),
        ({}, False),
    ],
)
def test_needs_body(match: dict[str, str], needs: bool) -> None:
    assert parse(rules_of(rule(match=match))).needs_body is needs
    assert Rules().needs_body is False
