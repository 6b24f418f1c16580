from __future__ import annotations

import math
import re
from typing import Any

import pytest

from llmtap.policy.values import (
    DEFAULT_CACHE_TTL,
    CachePolicy,
    Fallback,
    PolicyError,
    RateLimitPolicy,
    RetryPolicy,
    cache_policy,
    duration,
    expand_env,
    fallbacks_policy,
    rate_limit_policy,
    retry_policy,
)

DAY = 86400.0


def exact(message: str) -> str:
    return f"^{re.escape(message)}$"


@pytest.mark.parametrize(
    "value, seconds",
    [
        # units
        ("500ms", 0.5),
        ("60s", 60.0),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("7d", 7 * DAY),
        ("1.5h", 5400.0),
        # spaces around and between
        (" 2 m ", 120.0),
        # a bare number is seconds
        ("90", 90.0),
        (90, 90.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_duration(value: Any, seconds: float) -> None:
    assert duration(value, "x") == seconds


@pytest.mark.parametrize(
    "value",
    [
        # words and unknown units
        "soon",
        "1y",
        "1H",
        "1 hour",
        "",
        "h",
        # signs and non-finite numbers
        "-5s",
        -5,
        -0.5,
        math.inf,
        math.nan,
        # booleans are not numbers here
        True,
        False,
        # other types
        None,
        ["1h"],
        {"h": 1},
    ],
)
def test_bad_duration_names_the_field_and_the_value(value: Any) -> None:
    message = f"rules[0].cache.ttl: expected a duration like '1h', got {value!r}"
    with pytest.raises(PolicyError, match=exact(message)) as info:
        duration(value, "rules[0].cache.ttl")
    assert (info.value.field, info.value.reason) == (
        "rules[0].cache.ttl",
        f"expected a duration like '1h', got {value!r}",
    )
    assert isinstance(info.value, ValueError)


def test_duration_error_uses_the_example_given() -> None:
    with pytest.raises(PolicyError, match=exact("w: expected a duration like '60s', got 'soon'")):
        duration("soon", "w", "60s")


# -- cache --


def test_cache_defaults() -> None:
    assert cache_policy({}, "c") == CachePolicy(
        ttl=DEFAULT_CACHE_TTL, bucket_max_size=1, seed="", ignore_keys=(), read=True, save=True
    )
    assert DEFAULT_CACHE_TTL == 7 * DAY


def test_cache_every_field() -> None:
    data = {"ttl": "1h", "bucket_max_size": 20, "seed": "v1", "ignore_keys": ["user", "metadata"],
            "read": False, "save": True}  # fmt: skip
    assert cache_policy(data, "c") == CachePolicy(3600.0, 20, "v1", ("user", "metadata"), False, True)


@pytest.mark.parametrize(
    "data, expected",
    [
        # a whole-number seed is kept as text
        ({"seed": 7}, CachePolicy(seed="7")),
        # the TTL bounds
        ({"ttl": "365d"}, CachePolicy(ttl=365 * DAY)),
        ({"ttl": 1}, CachePolicy(ttl=1.0)),
        ({"bucket_max_size": 1}, CachePolicy(bucket_max_size=1)),
    ],
)
def test_cache_edge_values(data: dict[str, Any], expected: CachePolicy) -> None:
    assert cache_policy(data, "c") == expected


W = "rules[2].cache"
CACHE_KEYS = "unknown key (expected bucket_max_size, ignore_keys, read, save, seed, ttl)"


@pytest.mark.parametrize(
    "data, field, reason",
    [
        # not a mapping
        (None, W, "expected a mapping, got None"),
        ("1h", W, "expected a mapping, got '1h'"),
        # unknown keys (the first in sorted order is named)
        ({"tll": "1h"}, f"{W}.tll", CACHE_KEYS),
        ({"zz": 1, "aa": 2}, f"{W}.aa", CACHE_KEYS),
        # ttl
        ({"ttl": "soon"}, f"{W}.ttl", "expected a duration like '1h', got 'soon'"),
        ({"ttl": 0}, f"{W}.ttl", "expected a duration from 1s to 365d, got 0"),
        ({"ttl": "366d"}, f"{W}.ttl", "expected a duration from 1s to 365d, got '366d'"),
        ({"ttl": True}, f"{W}.ttl", "expected a duration like '1h', got True"),
        # bucket_max_size
        ({"bucket_max_size": 0}, f"{W}.bucket_max_size", "expected a whole number from 1 to 20, got 0"),
        ({"bucket_max_size": 21}, f"{W}.bucket_max_size", "expected a whole number from 1 to 20, got 21"),
        ({"bucket_max_size": 2.0}, f"{W}.bucket_max_size", "expected a whole number from 1 to 20, got 2.0"),
        ({"bucket_max_size": "3"}, f"{W}.bucket_max_size", "expected a whole number from 1 to 20, got '3'"),
        ({"bucket_max_size": True}, f"{W}.bucket_max_size", "expected a whole number from 1 to 20, got True"),
        # seed
        ({"seed": True}, f"{W}.seed", "expected a string, got True"),
        ({"seed": ["v1"]}, f"{W}.seed", "expected a string, got ['v1']"),
        # ignore_keys
        ({"ignore_keys": "user"}, f"{W}.ignore_keys", "expected a list of body keys, got 'user'"),
        ({"ignore_keys": [""]}, f"{W}.ignore_keys", "expected a list of body keys, got ['']"),
        ({"ignore_keys": ["user", 1]}, f"{W}.ignore_keys", "expected a list of body keys, got ['user', 1]"),
        # read / save
        ({"read": "yes"}, f"{W}.read", "expected true or false, got 'yes'"),
        ({"save": 1}, f"{W}.save", "expected true or false, got 1"),
    ],
)  # fmt: skip
def test_bad_cache_policy(data: Any, field: str, reason: str) -> None:
    with pytest.raises(PolicyError, match=exact(f"{field}: {reason}")) as info:
        cache_policy(data, W)
    assert (info.value.field, info.value.reason) == (field, reason)


# -- rate limit --


@pytest.mark.parametrize(
    "data, expected",
    [
        # the minimum: quota and window
        ({"quota": 100, "window": 60}, RateLimitPolicy(100.0, 60.0, "request", None)),
        # window bounds, written as durations
        ({"quota": 1, "window": "1m"}, RateLimitPolicy(1.0, 60.0)),
        ({"quota": 1, "window": "365d"}, RateLimitPolicy(1.0, 365 * DAY)),
        # decimal quota with a unit
        ({"quota": 0.5, "window": "1h", "unit": "cents"}, RateLimitPolicy(0.5, 3600.0, "cents")),
        ({"quota": 1000, "window": "1d", "unit": "tokens"}, RateLimitPolicy(1000.0, DAY, "tokens")),
        # segment: trimmed and lowercased
        ({"quota": 100, "window": "60s", "segment": "User"}, RateLimitPolicy(100.0, 60.0, segment="user")),
        (
            {"quota": 100, "window": "60s", "segment": " Org-Id "},
            RateLimitPolicy(100.0, 60.0, segment="org-id"),
        ),
    ],
)
def test_rate_limit_policy(data: dict[str, Any], expected: RateLimitPolicy) -> None:
    assert rate_limit_policy(data, "r") == expected


R = "rules[0].rate_limit"
UNIT = "expected request, cents or tokens"
SEGMENT = "expected 'user' or a property name"


@pytest.mark.parametrize(
    "data, field, reason",
    [
        # shape
        ([100, 60], R, "expected a mapping, got [100, 60]"),
        ({"quota": 100}, R, "needs quota and window, e.g. {quota: 100, window: 60s}"),
        ({"window": "60s"}, R, "needs quota and window, e.g. {quota: 100, window: 60s}"),
        ({"quota": 1, "window": 60, "per": "u"}, f"{R}.per",
         "unknown key (expected quota, segment, unit, window)"),
        # quota > 0, a number
        ({"quota": 0, "window": 60}, f"{R}.quota", "expected a number above 0, got 0"),
        ({"quota": -1, "window": 60}, f"{R}.quota", "expected a number above 0, got -1"),
        ({"quota": "100", "window": 60}, f"{R}.quota", "expected a number above 0, got '100'"),
        ({"quota": True, "window": 60}, f"{R}.quota", "expected a number above 0, got True"),
        # window: 60s to 365d
        ({"quota": 1, "window": "soon"}, f"{R}.window", "expected a duration like '60s', got 'soon'"),
        ({"quota": 1, "window": "59s"}, f"{R}.window", "expected a duration from 60s to 365d, got '59s'"),
        ({"quota": 1, "window": 30}, f"{R}.window", "expected a duration from 60s to 365d, got 30"),
        ({"quota": 1, "window": "366d"}, f"{R}.window", "expected a duration from 60s to 365d, got '366d'"),
        ({"quota": 1, "window": False}, f"{R}.window", "expected a duration like '60s', got False"),
        # unit
        ({"quota": 1, "window": 60, "unit": "dollars"}, f"{R}.unit", f"{UNIT}, got 'dollars'"),
        ({"quota": 1, "window": 60, "unit": "Request"}, f"{R}.unit", f"{UNIT}, got 'Request'"),
        # segment
        ({"quota": 1, "window": 60, "segment": ""}, f"{R}.segment", f"{SEGMENT}, got ''"),
        ({"quota": 1, "window": 60, "segment": "  "}, f"{R}.segment", f"{SEGMENT}, got '  '"),
        ({"quota": 1, "window": 60, "segment": 5}, f"{R}.segment", f"{SEGMENT}, got 5"),
    ],
)  # fmt: skip
def test_bad_rate_limit_policy(data: Any, field: str, reason: str) -> None:
    with pytest.raises(PolicyError, match=exact(f"{field}: {reason}")) as info:
        rate_limit_policy(data, R)
    assert (info.value.field, info.value.reason) == (field, reason)


@pytest.mark.parametrize(
    "policy, spec",
    [
        # u=request and the global segment are dropped (Helicone's buildPolicyString)
        (RateLimitPolicy(100, 60), "100;w=60"),
        (RateLimitPolicy(100, 60, "request", "user"), "100;w=60;s=user"),
        # u before s
        (RateLimitPolicy(0.5, 3600, "cents", "org"), "0.5;w=3600;u=cents;s=org"),
        (RateLimitPolicy(1000, 86400, "tokens"), "1000;w=86400;u=tokens"),
    ],
)
def test_rate_limit_spec(policy: RateLimitPolicy, spec: str) -> None:
    assert policy.spec() == spec


def test_rate_limit_spec_from_a_parsed_rule() -> None:
    parsed = rate_limit_policy({"quota": 100, "window": "1m", "segment": "USER"}, "r")
    assert parsed.spec() == "100;w=60;s=user"


@pytest.mark.parametrize(
    "policy, spec",
    [
        # the maximum window, 365d
        (RateLimitPolicy(100, 31_536_000), "100;w=31536000"),
        # a 30-day window
        (RateLimitPolicy(100, 30 * 86400), "100;w=2592000"),
        # a large quota
        (RateLimitPolicy(1_000_000, 60), "1000000;w=60"),
    ],
)
def test_rate_limit_spec_never_uses_exponents(policy: RateLimitPolicy, spec: str) -> None:
    assert policy.spec() == spec


# -- retry --


@pytest.mark.parametrize(
    "data, expected",
    [
        # Helicone's defaults: 5 attempts, factor 2, 1s..10s
        ({}, RetryPolicy(5, 2.0, 1.0, 10.0)),
        ({"num": 3, "factor": 1.5, "min_timeout": "500ms", "max_timeout": "30s"},
         RetryPolicy(3, 1.5, 0.5, 30.0)),
        # equal timeouts are fine
        ({"min_timeout": "2s", "max_timeout": 2}, RetryPolicy(min_timeout=2.0, max_timeout=2.0)),
        # bounds
        ({"num": 1, "factor": 1}, RetryPolicy(num=1, factor=1.0)),
        ({"num": 20, "factor": 10}, RetryPolicy(num=20, factor=10.0)),
    ],
)  # fmt: skip
def test_retry_policy(data: dict[str, Any], expected: RetryPolicy) -> None:
    assert retry_policy(data, "t") == expected


T = "rules[1].retry"


@pytest.mark.parametrize(
    "data, field, reason",
    [
        # shape
        ("yes", T, "expected a mapping, got 'yes'"),
        ({"tries": 3}, f"{T}.tries", "unknown key (expected factor, max_timeout, min_timeout, num)"),
        # num
        ({"num": 0}, f"{T}.num", "expected a whole number from 1 to 20, got 0"),
        ({"num": 21}, f"{T}.num", "expected a whole number from 1 to 20, got 21"),
        ({"num": True}, f"{T}.num", "expected a whole number from 1 to 20, got True"),
        # factor
        ({"factor": 0.5}, f"{T}.factor", "expected a number from 1 to 10, got 0.5"),
        ({"factor": 11}, f"{T}.factor", "expected a number from 1 to 10, got 11"),
        ({"factor": "2"}, f"{T}.factor", "expected a number from 1 to 10, got '2'"),
        # timeouts
        ({"min_timeout": "soon"}, f"{T}.min_timeout", "expected a duration like '1s', got 'soon'"),
        ({"max_timeout": -1}, f"{T}.max_timeout", "expected a duration like '10s', got -1"),
        ({"min_timeout": "5s", "max_timeout": "2s"}, f"{T}.max_timeout",
         "must not be below min_timeout, got '2s'"),
    ],
)  # fmt: skip
def test_bad_retry_policy(data: Any, field: str, reason: str) -> None:
    with pytest.raises(PolicyError, match=exact(f"{field}: {reason}")) as info:
        retry_policy(data, T)
    assert (info.value.field, info.value.reason) == (field, reason)


def test_policies_are_frozen() -> None:
    policy = cache_policy({}, "c")
    with pytest.raises(AttributeError, match="ttl"):
        policy.ttl = 1.0  # type: ignore[misc]


# -- fallbacks (Helicone-Fallbacks entries, also a rule's fallbacks:) --


@pytest.mark.parametrize(
    "data, expected",
    [
        # only the target is required; a trailing slash is dropped (the request path is appended)
        ([{"target-url": "https://api.groq.com/openai/"}], (Fallback("https://api.groq.com/openai"),)),
        ([{"target-url": "http://localhost:8000"}], (Fallback("http://localhost:8000"),)),
        # every field, Helicone's shape
        (
            [{"target-url": "https://api.lemonfox.ai", "headers": {"Authorization": "Bearer ${LEMONFOX_KEY}"},
              "onCodes": [401, {"from": 500, "to": 599}], "bodyKeyOverride": {"model": "zephyr", "n": 1}}],
            (Fallback("https://api.lemonfox.ai", (("Authorization", "Bearer ${LEMONFOX_KEY}"),),
                      ((401, 401), (500, 599)), (("model", "zephyr"), ("n", 1))),),
        ),
        # entries keep their order; empty fields are allowed
        (
            [{"target-url": "https://a.example", "headers": {}, "onCodes": [], "bodyKeyOverride": {}},
             {"target-url": "https://b.example"}],
            (Fallback("https://a.example"), Fallback("https://b.example")),
        ),
    ],
)  # fmt: skip
def test_fallbacks_policy(data: Any, expected: tuple[Fallback, ...]) -> None:
    assert fallbacks_policy(data, "f") == expected


F = "rules[0].fallbacks"
FALLBACK_KEYS = "unknown key (expected bodyKeyOverride, headers, onCodes, target-url)"
URL = "expected an http(s) URL"
CODE = "expected a status or {from, to}"


@pytest.mark.parametrize(
    "data, field, reason",
    [
        # not a non-empty list
        (None, F, "expected a non-empty list of fallback entries, got None"),
        ([], F, "expected a non-empty list of fallback entries, got []"),
        ({"target-url": "https://a"}, F,
         "expected a non-empty list of fallback entries, got {'target-url': 'https://a'}"),
        # entries are mappings with known keys
        (["https://a"], f"{F}[0]", "expected a mapping, got 'https://a'"),
        ([{"target-url": "https://a"}, {"target_url": "https://b"}], f"{F}[1].target_url", FALLBACK_KEYS),
        # target-url
        ([{}], f"{F}[0].target-url", f"{URL}, got None"),
        ([{"target-url": "api.groq.com"}], f"{F}[0].target-url", f"{URL}, got 'api.groq.com'"),
        ([{"target-url": "ftp://files.example"}], f"{F}[0].target-url", f"{URL}, got 'ftp://files.example'"),
        ([{"target-url": "https://"}], f"{F}[0].target-url", f"{URL}, got 'https://'"),
        ([{"target-url": 42}], f"{F}[0].target-url", f"{URL}, got 42"),
        # headers: names to strings
        ([{"target-url": "https://a", "headers": ["Authorization"]}], f"{F}[0].headers",
         "expected a mapping of header names to strings, got ['Authorization']"),
        ([{"target-url": "https://a", "headers": {"X-N": 1}}], f"{F}[0].headers",
         "expected a mapping of header names to strings, got {'X-N': 1}"),
        # onCodes: a status or an inclusive {from, to}
        ([{"target-url": "https://a", "onCodes": ["429"]}], f"{F}[0].onCodes[0]", f"{CODE}, got '429'"),
        ([{"target-url": "https://a", "onCodes": [429, True]}], f"{F}[0].onCodes[1]", f"{CODE}, got True"),
        ([{"target-url": "https://a", "onCodes": [{"from": 500}]}], f"{F}[0].onCodes[0]",
         f"{CODE}, got {{'from': 500}}"),
        ([{"target-url": "https://a", "onCodes": [{"from": 500, "to": "599"}]}], f"{F}[0].onCodes[0]",
         f"{CODE}, got {{'from': 500, 'to': '599'}}"),
        ([{"target-url": "https://a", "onCodes": [{"from": 5, "to": 9, "step": 1}]}], f"{F}[0].onCodes[0]",
         f"{CODE}, got {{'from': 5, 'to': 9, 'step': 1}}"),
        # bodyKeyOverride
        ([{"target-url": "https://a", "bodyKeyOverride": "zephyr"}], f"{F}[0].bodyKeyOverride",
         "expected a mapping, got 'zephyr'"),
    ],
)  # fmt: skip
def test_bad_fallbacks_policy(data: Any, field: str, reason: str) -> None:
    with pytest.raises(PolicyError, match=exact(f"{field}: {reason}")) as info:
        fallbacks_policy(data, F)
    assert (info.value.field, info.value.reason) == (field, reason)


@pytest.mark.parametrize(
    "status, on_codes, leaves",
    [
        # no response always hands over
        (None, (), True),
        (None, ((400, 400),), True),
        # without onCodes a response stands
        (503, (), False),
        # exact codes
        (429, ((429, 429),), True),
        (430, ((429, 429),), False),
        # inclusive ranges
        (500, ((500, 599),), True),
        (599, ((500, 599),), True),
        (499, ((500, 599),), False),
        (600, ((500, 599),), False),
        # any of several
        (401, ((429, 429), (400, 403)), True),
        (200, ((429, 429), (400, 403)), False),
    ],
)
def test_fallback_leaves_on(status: int | None, on_codes: tuple[tuple[int, int], ...], leaves: bool) -> None:
    assert Fallback("https://a", on_codes=on_codes).leaves_on(status) is leaves


ENV = {"GROQ_API_KEY": "gsk-1", "ORG": "acme", "EMPTY": ""}


@pytest.mark.parametrize(
    "value, expected",
    [
        # whole value, inside text, several
        ("${GROQ_API_KEY}", "gsk-1"),
        ("Bearer ${GROQ_API_KEY}", "Bearer gsk-1"),
        ("${ORG}/${GROQ_API_KEY}", "acme/gsk-1"),
        ("${EMPTY}", ""),
        # only ${NAME} is expanded
        ("$GROQ_API_KEY", "$GROQ_API_KEY"),
        ("${1ABC}", "${1ABC}"),
        ("${}", "${}"),
        ("plain", "plain"),
        ("", ""),
    ],
)
def test_expand_env(value: str, expected: str) -> None:
    assert expand_env(value, ENV) == expected


def test_expand_env_does_not_reexpand_values() -> None:
    assert expand_env("${A}", {"A": "${B}", "B": "secret"}) == "${B}"


def test_expand_env_with_a_missing_variable() -> None:
    with pytest.raises(PolicyError, match=exact("headers: environment variable NOPE is not set")) as info:
        expand_env("Bearer ${GROQ_API_KEY}-${NOPE}", ENV)
    assert (info.value.field, info.value.reason) == ("headers", "environment variable NOPE is not set")


def test_fallback_headers_are_expanded_at_use_not_when_parsed() -> None:
    [fb] = fallbacks_policy([{"target-url": "https://a", "headers": {"Authorization": "Bearer ${K}"}}], "f")
    assert fb.headers == (("Authorization", "Bearer ${K}"),), "no secret is held in the policy"
