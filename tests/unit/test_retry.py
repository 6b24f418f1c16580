from __future__ import annotations

import re
from collections.abc import Callable
from email.utils import formatdate

import pytest

from llmtap.policy.retry import (
    MAX_PROVIDER_WAIT,
    MAX_TOTAL_WAIT,
    backoff,
    policy_for,
    provider_wait,
    retryable,
    wait_before_next,
)
from llmtap.policy.values import RetryPolicy
from llmtap.wire.helicone import HeaderError

NOW = 1_750_000_000.0  # an injected "now" for HTTP dates
DEFAULT = RetryPolicy()


def exact(message: str) -> str:
    return f"^{re.escape(message)}$"


def rng(value: float) -> Callable[[], float]:
    """An injected random source that always returns `value`."""
    return lambda: value


@pytest.mark.parametrize(
    "status, expected",
    [
        # no response: connection errors and timeouts
        (None, True),
        # rate limited and server errors
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (529, True),
        (599, True),
        # success and every other 4xx are final
        (200, False),
        (201, False),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (408, False),
        (409, False),
        (422, False),
        (499, False),
    ],
)
def test_retryable(status: int | None, expected: bool) -> None:
    assert retryable(status) is expected


# -- backoff: min((1 + r) * min_timeout * factor**k, max_timeout) --


@pytest.mark.parametrize(
    "policy, attempt, r, seconds",
    [
        # Helicone's defaults: 1-2 s, 2-4 s, 4-8 s, then capped at 10 s
        (DEFAULT, 0, 0.0, 1.0),
        (DEFAULT, 0, 0.5, 1.5),
        (DEFAULT, 0, 0.999, 1.999),
        (DEFAULT, 1, 0.0, 2.0),
        (DEFAULT, 1, 0.75, 3.5),
        (DEFAULT, 2, 0.99, 7.96),
        (DEFAULT, 3, 0.0, 8.0),
        (DEFAULT, 3, 0.5, 10.0),
        (DEFAULT, 10, 0.0, 10.0),
        # other factors and timeouts
        (RetryPolicy(factor=1.0, min_timeout=0.5, max_timeout=30), 4, 0.2, 0.6),
        (RetryPolicy(factor=3.0, min_timeout=0.25, max_timeout=30), 2, 0.0, 2.25),
        (RetryPolicy(factor=10.0, min_timeout=2, max_timeout=2), 0, 0.9, 2.0),
        # a zero min timeout is 1 ms, as node-retry's max(minTimeout, 1)
        (RetryPolicy(min_timeout=0.0, max_timeout=10), 0, 0.0, 0.001),
        (RetryPolicy(min_timeout=0.0, max_timeout=10), 3, 0.5, 0.012),
    ],
)
def test_backoff(policy: RetryPolicy, attempt: int, r: float, seconds: float) -> None:
    assert backoff(policy, attempt, rng(r)) == pytest.approx(seconds)


def test_backoff_is_jittered_by_default() -> None:
    waits = {backoff(DEFAULT, 1) for _ in range(50)}
    assert all(2.0 <= w < 4.0 for w in waits)
    assert len(waits) > 1


# -- provider_wait --


def http_date(offset: float) -> str:
    return formatdate(NOW + offset, usegmt=True)


@pytest.mark.parametrize(
    "headers, seconds",
    [
        # retry-after-ms (OpenAI, Anthropic)
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After-Ms": "250"}, 0.25),
        # Retry-After in seconds
        ({"retry-after": "7"}, 7.0),
        ({"Retry-After": " 2.5 "}, 2.5),
        ({"retry-after": "0"}, 0.0),
        # Retry-After as an HTTP date
        ({"retry-after": http_date(30)}, 30.0),
        ({"Retry-After": http_date(0)}, 0.0),
        # the millisecond header wins; a bad one falls back to Retry-After
        ({"retry-after-ms": "250", "retry-after": "7"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "7"}, 7.0),
        # up to 60 s is honoured
        ({"retry-after": "60"}, 60.0),
        ({"retry-after-ms": "60000"}, 60.0),
        ({"retry-after": http_date(60)}, 60.0),
    ],
)
def test_provider_wait(headers: dict[str, str], seconds: float) -> None:
    assert provider_wait(headers, now=lambda: NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "headers",
    [
        # none given
        {},
        {"x-ratelimit-reset-requests": "1s"},
        # longer than 60 s
        {"retry-after": "61"},
        {"retry-after": "3600"},
        {"retry-after-ms": "60001"},
        {"retry-after": http_date(61)},
        # in the past or negative
        {"retry-after": http_date(-30)},
        {"retry-after": "-5"},
        {"retry-after-ms": "-1"},
        # garbage
        {"retry-after": "soon"},
        {"retry-after": ""},
        {"retry-after": "Tue, 99 Foo 2025"},
        {"retry-after": "inf"},
        {"retry-after-ms": "x"},
        # not a number: nan would pass both bounds, and asyncio.sleep(nan) returns at once
        {"retry-after": "nan"},
        {"retry-after-ms": "NaN"},
    ],
)
def test_provider_wait_ignored(headers: dict[str, str]) -> None:
    assert provider_wait(headers, now=lambda: NOW) is None


def test_max_provider_wait_is_a_minute() -> None:
    assert MAX_PROVIDER_WAIT == 60.0


# -- wait_before_next --


def test_backoff_when_the_provider_says_nothing() -> None:
    assert wait_before_next(DEFAULT, 0, 500, {}, 0.0, rng(0.5)) == pytest.approx(1.5)
    assert wait_before_next(DEFAULT, 2, 429, {}, 0.0, rng(0.0)) == pytest.approx(4.0)


@pytest.mark.parametrize("status", [None, 429, 500, 503])
def test_retryable_outcomes_wait(status: int | None) -> None:
    assert wait_before_next(DEFAULT, 0, status, {}, 0.0, rng(0.0)) == 1.0


@pytest.mark.parametrize("status", [200, 400, 401, 404, 422])
def test_final_outcomes_do_not_wait(status: int) -> None:
    assert wait_before_next(DEFAULT, 0, status, {"retry-after": "1"}, 0.0, rng(0.0)) is None


def test_a_nan_retry_after_falls_back_to_the_backoff() -> None:
    assert wait_before_next(DEFAULT, 0, 429, {"retry-after": "nan"}, 0.0, rng(0.0)) == 1.0


def test_the_provider_wait_takes_precedence() -> None:
    assert wait_before_next(DEFAULT, 0, 429, {"retry-after": "3"}, 0.0, rng(0.0)) == 3.0
    assert wait_before_next(DEFAULT, 0, 503, {"retry-after-ms": "20"}, 0.0, rng(0.9)) == pytest.approx(0.02)
    assert wait_before_next(DEFAULT, 0, 429, {"retry-after": "120"}, 0.0, rng(0.0)) == 1.0, (
        "past 60 s the backoff applies"
    )


@pytest.mark.parametrize(
    "num, last_retried",
    [
        # num counts every attempt: num=3 is attempts 0, 1, 2, so waits after 0 and 1
        (3, 1),
        (5, 3),
        (2, 0),
    ],
)
def test_num_is_the_attempt_budget_in_all(num: int, last_retried: int) -> None:
    policy = RetryPolicy(num=num)
    waits = [wait_before_next(policy, k, 500, {}, 0.0, rng(0.0)) for k in range(num + 2)]
    assert [w is not None for w in waits] == [k <= last_retried for k in range(num + 2)]


def test_one_attempt_never_retries() -> None:
    assert wait_before_next(RetryPolicy(num=1), 0, 500, {}, 0.0, rng(0.0)) is None


def test_the_total_wait_is_capped() -> None:
    policy = RetryPolicy(num=20)
    assert wait_before_next(policy, 0, 500, {}, MAX_TOTAL_WAIT - 1.0, rng(0.0)) == 1.0, "exactly at the cap"
    assert wait_before_next(policy, 0, 500, {}, MAX_TOTAL_WAIT - 0.5, rng(0.0)) is None
    assert wait_before_next(policy, 0, 429, {"retry-after": "30"}, MAX_TOTAL_WAIT - 29, rng(0.0)) is None
    assert wait_before_next(policy, 0, 429, {"retry-after": "30"}, MAX_TOTAL_WAIT - 30, rng(0.0)) == 30.0


def test_max_total_wait_is_two_minutes() -> None:
    assert MAX_TOTAL_WAIT == 120.0


# -- policy_for: Helicone-Retry-* headers and a rule's retry --

ON = {"helicone-retry-enabled": "true"}
RULE = RetryPolicy(num=3, factor=1.5, min_timeout=0.5, max_timeout=30.0)


@pytest.mark.parametrize(
    "headers, rule, expected",
    [
        # neither
        ({}, None, None),
        # the header alone: Helicone's defaults
        (ON, None, RetryPolicy(5, 2.0, 1.0, 10.0)),
        ({"helicone-retry-enabled": " TRUE "}, None, DEFAULT),
        # a rule alone
        ({}, RULE, RULE),
        (ON, RULE, RULE),
        # false turns a rule off
        ({"helicone-retry-enabled": "false"}, RULE, None),
        ({"helicone-retry-enabled": "False"}, RULE, None),
        # the tuning headers need Enabled or a rule
        ({"helicone-retry-num": "3"}, None, None),
        ({"helicone-retry-enabled": "false", "helicone-retry-num": "3"}, None, None),
        # every tuning header, timeouts in ms
        ({**ON, "helicone-retry-num": "2", "helicone-retry-factor": "3",
          "helicone-retry-min-timeout": "250", "helicone-retry-max-timeout": "4000"},
         None, RetryPolicy(2, 3.0, 0.25, 4.0)),
        ({**ON, "helicone-retry-factor": "1.5", "helicone-retry-min-timeout": "0"},
         None, RetryPolicy(5, 1.5, 0.0, 10.0)),
        # headers override the rule field by field
        ({"helicone-retry-num": "7"}, RULE, RetryPolicy(7, 1.5, 0.5, 30.0)),
        ({**ON, "helicone-retry-max-timeout": "2000"}, RULE, RetryPolicy(3, 1.5, 0.5, 2.0)),
        # bounds; Num 0 is Helicone's "no retries", one attempt like 1
        ({**ON, "helicone-retry-num": "1"}, None, RetryPolicy(num=1)),
        ({**ON, "helicone-retry-num": "0"}, None, RetryPolicy(num=1)),
        ({"helicone-retry-num": "0"}, RULE, RetryPolicy(1, 1.5, 0.5, 30.0)),
        ({**ON, "helicone-retry-num": "20", "helicone-retry-factor": "10"}, None,
         RetryPolicy(num=20, factor=10.0)),
        ({**ON, "helicone-retry-min-timeout": "600000", "helicone-retry-max-timeout": "600000"}, None,
         RetryPolicy(min_timeout=600.0, max_timeout=600.0)),
    ],
)  # fmt: skip
def test_policy_for(headers: dict[str, str], rule: RetryPolicy | None, expected: RetryPolicy | None) -> None:
    assert policy_for(headers, rule) == expected


NUM = "expected a whole number from 0 to 20"
FACTOR = "expected a number from 1 to 10"
TIMEOUT = "expected a number from 0 to 600000"


@pytest.mark.parametrize(
    "name, value, header, reason",
    [
        # Num: whole attempts, 0 to 20
        ("helicone-retry-num", "21", "Helicone-Retry-Num", f"{NUM}, got '21'"),
        ("helicone-retry-num", "-1", "Helicone-Retry-Num", f"{NUM}, got '-1'"),
        ("helicone-retry-num", "2.5", "Helicone-Retry-Num", f"{NUM}, got '2.5'"),
        ("helicone-retry-num", "three", "Helicone-Retry-Num", f"{NUM}, got 'three'"),
        ("helicone-retry-num", "", "Helicone-Retry-Num", f"{NUM}, got ''"),
        # Factor: 1 to 10
        ("helicone-retry-factor", "0.5", "Helicone-Retry-Factor", f"{FACTOR}, got '0.5'"),
        ("helicone-retry-factor", "11", "Helicone-Retry-Factor", f"{FACTOR}, got '11'"),
        ("helicone-retry-factor", "nan", "Helicone-Retry-Factor", f"{FACTOR}, got 'nan'"),
        ("helicone-retry-factor", "inf", "Helicone-Retry-Factor", f"{FACTOR}, got 'inf'"),
        # timeouts: ms, 0 to 600000
        ("helicone-retry-min-timeout", "-1", "Helicone-Retry-Min-Timeout", f"{TIMEOUT}, got '-1'"),
        ("helicone-retry-min-timeout", "1s", "Helicone-Retry-Min-Timeout", f"{TIMEOUT}, got '1s'"),
        ("helicone-retry-max-timeout", "600001", "Helicone-Retry-Max-Timeout", f"{TIMEOUT}, got '600001'"),
        ("helicone-retry-max-timeout", "soon", "Helicone-Retry-Max-Timeout", f"{TIMEOUT}, got 'soon'"),
    ],
)  # fmt: skip
def test_bad_retry_header_names_the_header(name: str, value: str, header: str, reason: str) -> None:
    with pytest.raises(HeaderError, match=exact(f"{header}: {reason}")) as info:
        policy_for({**ON, name: value}, None)
    assert (info.value.header, info.value.reason) == (header, reason)


def test_a_bad_header_is_an_error_with_a_rule_too() -> None:
    with pytest.raises(HeaderError, match=exact(f"Helicone-Retry-Num: {NUM}, got '0.5'")):
        policy_for({"helicone-retry-num": "0.5"}, RULE)


@pytest.mark.parametrize(
    "headers, rule, low",
    [
        ({**ON, "helicone-retry-min-timeout": "5000", "helicone-retry-max-timeout": "1000"}, None, "5000"),
        # the rule's max (30 s) against a header's min
        ({"helicone-retry-min-timeout": "45000"}, RULE, "45000"),
        # the header's max against the rule's min (500 ms)
        ({"helicone-retry-max-timeout": "100"}, RULE, "500"),
    ],
)
def test_max_timeout_below_min_timeout(headers: dict[str, str], rule: RetryPolicy | None, low: str) -> None:
    reason = f"must not be below the min timeout ({low} ms)"
    with pytest.raises(HeaderError, match=exact(f"Helicone-Retry-Max-Timeout: {reason}")) as info:
        policy_for(headers, rule)
    assert info.value.header == "Helicone-Retry-Max-Timeout"
