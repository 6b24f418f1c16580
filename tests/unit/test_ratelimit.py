from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from llmtap.policy.ratelimit import (
    HEADER,
    Limit,
    MemoryBuckets,
    State,
    admit,
    charge,
    headers_for,
    limits_for,
    parse_header,
)
from llmtap.policy.values import RateLimitPolicy
from llmtap.wire.helicone import HeaderError

DAY = 86400


def exact(message: str) -> str:
    return f"^{re.escape(message)}$"


class Clock:
    """A hand-driven clock for MemoryBuckets."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def buckets(clock: Clock) -> MemoryBuckets:
    return MemoryBuckets(clock)


def limit(spec: str, key: str | None = None) -> Limit:
    """A header limit of its own bucket (keyed by the spec unless told)."""
    return Limit(key or spec, parse_header(spec), HEADER)


# -- parse_header --


@pytest.mark.parametrize(
    "value, expected",
    [
        # the examples of Helicone's policyParser.ts
        ("1000;w=3600", RateLimitPolicy(1000, 3600)),
        ("5000;w=86400;u=cents", RateLimitPolicy(5000, DAY, "cents")),
        ("100;w=60;s=user", RateLimitPolicy(100, 60, "request", "user")),
        ("10000;w=3600;s=organization", RateLimitPolicy(10000, 3600, "request", "organization")),
        # decimal quota (the docs' cents example)
        ("0.5;w=60;u=cents", RateLimitPolicy(0.5, 60, "cents")),
        # every part
        ("10;w=60;u=request;s=org-id", RateLimitPolicy(10, 60, "request", "org-id")),
        # llmtap's addition: tokens
        ("20000;w=3600;u=tokens;s=user", RateLimitPolicy(20000, 3600, "tokens", "user")),
        # window bounds
        ("1;w=60", RateLimitPolicy(1, 60)),
        ("1;w=31536000", RateLimitPolicy(1, 31_536_000)),
        # surrounding whitespace is trimmed, as Helicone trims the header
        ("  100;w=60  ", RateLimitPolicy(100, 60)),
        # a segment is lowercased (property names are stored lowercased)
        ("100;w=60;s=User", RateLimitPolicy(100, 60, "request", "user")),
        ("100;w=60;s=Org", RateLimitPolicy(100, 60, "request", "org")),
    ],
)
def test_parse_header(value: str, expected: RateLimitPolicy) -> None:
    policy = parse_header(value)
    assert policy == expected
    assert isinstance(policy.window, int | float) and policy.window == expected.window


FORM = "expected quota;w=seconds[;u=unit][;s=segment]"
WINDOW = "w must be whole seconds from 60 to 31536000"
PARTS = "(expected w=, u=, s=)"


@pytest.mark.parametrize(
    "value, reason",
    [
        # no quota first
        ("", f"{FORM}, got ''"),
        ("abc;w=60", f"{FORM}, got 'abc;w=60'"),
        ("w=60", f"{FORM}, got 'w=60'"),
        (";w=60", f"{FORM}, got ';w=60'"),
        # no window
        ("100", "missing w=<seconds> in '100'"),
        ("100;u=cents", "missing w=<seconds> in '100;u=cents'"),
        # window: whole seconds, 60 to 31536000
        ("100;w=59", f"{WINDOW}, got '59'"),
        ("100;w=0", f"{WINDOW}, got '0'"),
        ("100;w=31536001", f"{WINDOW}, got '31536001'"),
        ("100;w=60.5", f"{WINDOW}, got '60.5'"),
        ("100;w=1m", f"{WINDOW}, got '1m'"),
        ("100;w=-60", f"{WINDOW}, got '-60'"),
        ("100;w=", f"{WINDOW}, got ''"),
        # unknown, repeated, bare or empty parts
        ("100;x=1;w=60", "unexpected part 'x=1' in '100;x=1;w=60' (expected w=, u=, s=)"),
        ("100;w=60;w=120", "unexpected part 'w=120' in '100;w=60;w=120' (expected w=, u=, s=)"),
        ("1;w=60;u=cents;u=cents", f"unexpected part 'u=cents' in '1;w=60;u=cents;u=cents' {PARTS}"),
        ("100;60", "unexpected part '60' in '100;60' (expected w=, u=, s=)"),
        ("100;w=60;", "unexpected part '' in '100;w=60;' (expected w=, u=, s=)"),
        ("100;window=60", "unexpected part 'window=60' in '100;window=60' (expected w=, u=, s=)"),
        # unit
        ("100;w=60;u=dollars", "expected request, cents or tokens, got 'dollars' (in '100;w=60;u=dollars')"),
        ("100;w=60;u=", "expected request, cents or tokens, got '' (in '100;w=60;u=')"),
        # segment
        ("100;w=60;s=", "s must be user or a property name ([A-Za-z0-9_-]), got ''"),
    ],
)  # fmt: skip
def test_malformed_header_names_the_header_and_the_problem(value: str, reason: str) -> None:
    with pytest.raises(HeaderError, match=exact(f"{HEADER}: {reason}")) as info:
        parse_header(value)
    assert (info.value.header, info.value.reason) == ("Helicone-RateLimit-Policy", reason)


@pytest.mark.parametrize(
    "value, problem",
    [
        ("0;w=60", "expected a number above 0, got 0.0 (in '0;w=60')"),
        # not digits in Helicone's grammar: the whole header is quoted back
        ("-5;w=60", "expected quota;w=seconds[;u=unit][;s=segment], got '-5;w=60'"),
        ("nan;w=60", "expected quota;w=seconds[;u=unit][;s=segment], got 'nan;w=60'"),
        ("inf;w=60", "expected quota;w=seconds[;u=unit][;s=segment], got 'inf;w=60'"),
    ],
)
def test_quota_must_be_a_positive_number(value: str, problem: str) -> None:
    with pytest.raises(HeaderError, match=re.escape(problem)) as info:
        parse_header(value)
    assert info.value.header == HEADER
    assert str(info.value).startswith(f"{HEADER}: ")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("100;W=60", RateLimitPolicy(100, 60)),
        ("1;w=60;u=CENTS", RateLimitPolicy(1, 60, "cents")),
        ("100;w=60;U=Request;S=user", RateLimitPolicy(100, 60, "request", "user")),
    ],
)
def test_header_grammar_is_case_insensitive_like_helicone(value: str, expected: RateLimitPolicy) -> None:
    assert parse_header(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        # Helicone's quota is \d+(\.\d+)?
        "1e3;w=60",
        "+5;w=60",
        ".5;w=60",
        "5.;w=60",
        "1_000;w=60",
        # Helicone's segment is [\w-]+
        "100;w=60;s=org id",
    ],
)
def test_forms_outside_helicones_grammar_are_rejected(value: str) -> None:
    with pytest.raises(HeaderError, match=f"^{HEADER}: "):
        parse_header(value)


# -- limits_for --

PER_USER = RateLimitPolicy(100, 60, segment="user")
PER_ORG = RateLimitPolicy(10, 60, segment="org")
GLOBAL = RateLimitPolicy(1000, 3600)


def test_no_rules_and_no_header_no_limits() -> None:
    assert limits_for([], None, "alice", {"org": "acme"}) == []


def test_every_rule_and_the_header_apply_in_order() -> None:
    got = limits_for([("global", GLOBAL), ("per-user", PER_USER)], "5;w=60;u=cents", "alice", {})
    assert [(lim.source, lim.policy) for lim in got] == [
        ("rule global", GLOBAL),
        ("rule per-user", PER_USER),
        ("Helicone-RateLimit-Policy", RateLimitPolicy(5, 60, "cents")),
    ]
    assert len({lim.key for lim in got}) == 3


def key_of(rules: list[tuple[str, RateLimitPolicy]], header: str | None, user: str | None,
           props: dict[str, str] | None = None) -> str:  # fmt: skip
    [lim] = limits_for(rules, header, user, props or {})
    return lim.key


def test_user_segment_keys_a_bucket_per_user() -> None:
    alice = key_of([], "100;w=60;s=user", "alice")
    assert alice == key_of([], "100;w=60;s=user", "alice")
    assert alice != key_of([], "100;w=60;s=user", "bob")


def test_property_segment_keys_a_bucket_per_value() -> None:
    acme = key_of([], "10;w=60;s=Org", None, {"org": "acme"})
    assert acme == key_of([], "10;w=60;s=org", "alice", {"org": "acme"}), "the user does not matter"
    assert acme != key_of([], "10;w=60;s=org", None, {"org": "globex"})


def test_a_global_policy_ignores_user_and_properties() -> None:
    assert key_of([], "100;w=60", "alice", {"org": "a"}) == key_of([], "100;w=60", None, {})


def test_each_policy_is_its_own_bucket() -> None:
    assert key_of([], "1;w=60", None) != key_of([], "2;w=60", None)
    assert key_of([], "1;w=60", None) != key_of([], "1;w=120", None)
    assert key_of([], "1;w=60", None) != key_of([], "1;w=60;u=cents", None)
    # the same policy written two ways is one bucket (the key uses the normalised form)
    assert key_of([], "1;w=60", None) == key_of([], "1;w=60;u=request", None)


def test_a_rule_and_the_header_never_share_a_bucket() -> None:
    policy = parse_header("100;w=60;s=user")
    assert policy == PER_USER
    rule, header = limits_for([("r", PER_USER)], "100;w=60;s=user", "alice", {})
    assert rule.key != header.key
    assert key_of([("a", GLOBAL)], None, None) != key_of([("b", GLOBAL)], None, None), "nor two rules"


@pytest.mark.parametrize(
    "header, user, props, needs",
    [
        ("100;w=60;s=user", None, {"org": "acme"}, "Helicone-User-Id"),
        ("10;w=60;s=org", "alice", {}, "Helicone-Property-org"),
        ("10;w=60;s=org", "alice", {"team": "x"}, "Helicone-Property-org"),
    ],
)
def test_a_header_segmented_by_a_missing_value_is_an_error(
    header: str, user: str | None, props: dict[str, str], needs: str
) -> None:
    segment = header.rsplit("=", 1)[1]
    reason = f"segment s={segment} needs a {needs} header on the request"
    with pytest.raises(HeaderError, match=exact(f"{HEADER}: {reason}")) as info:
        limits_for([], header, user, props)
    assert (info.value.header, info.value.reason) == (HEADER, reason)


def test_a_rule_segmented_by_a_missing_value_is_one_shared_bucket() -> None:
    rules = [("per-user", PER_USER), ("per-org", PER_ORG)]
    nobody = limits_for(rules, None, None, {})
    assert [lim.source for lim in nobody] == ["rule per-user", "rule per-org"]
    assert all(lim.key.endswith("|(none)") for lim in nobody)
    assert limits_for(rules, None, None, {"team": "x"}) == nobody, "every request without it shares"
    alice = limits_for(rules, None, "alice", {"org": "acme"})
    assert {lim.key for lim in alice}.isdisjoint(lim.key for lim in nobody)


def test_a_bad_header_is_an_error_even_with_rules() -> None:
    with pytest.raises(HeaderError, match=f"^{HEADER}: {re.escape(WINDOW)}, got '30'$"):
        limits_for([("global", GLOBAL)], "100;w=30", "alice", {})


# -- MemoryBuckets --


def test_a_new_bucket_is_full(buckets: MemoryBuckets) -> None:
    assert buckets.level("k", RateLimitPolicy(100, 60)) == 100
    assert buckets.level("k", RateLimitPolicy(0.5, 60, "cents")) == 0.5


def test_a_bucket_refills_at_quota_per_window_and_is_capped(buckets: MemoryBuckets, clock: Clock) -> None:
    policy = RateLimitPolicy(60, 60)  # one token a second
    buckets.take("k", policy, 60)
    assert buckets.level("k", policy) == 0
    clock.advance(10)
    assert buckets.level("k", policy) == pytest.approx(10)
    clock.advance(45)
    assert buckets.level("k", policy) == pytest.approx(55)
    clock.advance(3600)
    assert buckets.level("k", policy) == 60, "never above the quota"


def test_refill_rate_scales_with_the_window(buckets: MemoryBuckets, clock: Clock) -> None:
    policy = RateLimitPolicy(10, 3600)
    buckets.take("k", policy, 10)
    clock.advance(360)
    assert buckets.level("k", policy) == pytest.approx(1)


def test_a_bucket_may_go_negative_and_refills_from_there(buckets: MemoryBuckets, clock: Clock) -> None:
    policy = RateLimitPolicy(60, 60, "tokens")
    buckets.take("k", policy, 100)
    assert buckets.level("k", policy) == -40
    clock.advance(30)
    assert buckets.level("k", policy) == pytest.approx(-10)


def test_buckets_are_independent_by_key(buckets: MemoryBuckets) -> None:
    policy = RateLimitPolicy(5, 60)
    buckets.take("a", policy, 5)
    assert (buckets.level("a", policy), buckets.level("b", policy)) == (0, 5)


def test_takes_accumulate(buckets: MemoryBuckets, clock: Clock) -> None:
    policy = RateLimitPolicy(60, 60)
    buckets.take("k", policy, 10)
    clock.advance(5)
    buckets.take("k", policy, 10)
    assert buckets.level("k", policy) == pytest.approx(45)


# -- admit and charge --


def test_request_unit_deducts_one_per_admitted_call(buckets: MemoryBuckets, clock: Clock) -> None:
    limits = [limit("2;w=60")]
    results = [admit(buckets, limits) for _ in range(3)]
    assert [ok for ok, _ in results] == [True, True, False]
    assert [s.remaining for _, [s] in results] == [1, 0, 0]
    clock.advance(30)  # one token back
    ok, [state] = admit(buckets, limits)
    assert ok and state.remaining == pytest.approx(0)


def test_a_call_is_admitted_only_if_every_policy_admits_it(buckets: MemoryBuckets) -> None:
    wide, narrow = limit("5;w=60"), limit("1;w=60;s=user", "narrow")
    assert admit(buckets, [wide, narrow])[0]
    ok, states = admit(buckets, [wide, narrow])
    assert not ok
    assert [s.remaining for s in states] == [4, 0]
    assert buckets.level(wide.key, wide.policy) == 4, "the denied call took nothing from the others"
    assert admit(buckets, [wide])[0], "on its own, the wide policy still admits"


def test_a_denied_call_consumes_nothing(buckets: MemoryBuckets) -> None:
    req, cents = limit("3;w=60"), limit("10;w=60;u=cents")
    buckets.take(cents.key, cents.policy, 10)  # spent
    for _ in range(5):
        ok, _ = admit(buckets, [req, cents])
        assert not ok
    assert buckets.level(req.key, req.policy) == 3
    assert buckets.level(cents.key, cents.policy) == 0


@pytest.mark.parametrize("unit", ["cents", "tokens"])
def test_cents_and_tokens_admit_while_above_zero_and_take_nothing(buckets: MemoryBuckets, unit: str) -> None:
    lim = limit(f"10;w=60;u={unit}")
    ok, [state] = admit(buckets, [lim])
    assert ok and state.remaining == 10, "charged after the call, not when admitted"
    buckets.take(lim.key, lim.policy, 9.5)
    assert admit(buckets, [lim])[0], "0.5 left is enough"
    buckets.take(lim.key, lim.policy, 0.5)
    assert not admit(buckets, [lim])[0], "exactly zero is not"
    buckets.take(lim.key, lim.policy, 3)
    ok, [state] = admit(buckets, [lim])
    assert not ok and state.remaining == -3


def test_no_limits_admit(buckets: MemoryBuckets) -> None:
    assert admit(buckets, []) == (True, [])


def test_admit_states_report_reset_and_retry_after(buckets: MemoryBuckets) -> None:
    lim = limit("60;w=60")  # one token a second
    buckets.take(lim.key, lim.policy, 59.5)
    ok, [state] = admit(buckets, [lim])
    assert not ok and state.limit == lim
    assert (state.remaining, state.reset, state.retry_after) == pytest.approx((0.5, 59.5, 0.5))


def test_charge_takes_cents_and_tokens_from_their_buckets(buckets: MemoryBuckets) -> None:
    req, cents, tokens = limit("5;w=60"), limit("10;w=60;u=cents"), limit("1000;w=60;u=tokens")
    charge(buckets, [req, cents, tokens], cents=2.5, tokens=1500)
    assert buckets.level(req.key, req.policy) == 5, "request buckets are never post-charged"
    assert buckets.level(cents.key, cents.policy) == 7.5
    assert buckets.level(tokens.key, tokens.policy) == -500, "may go negative"
    assert not admit(buckets, [tokens])[0]


@pytest.mark.parametrize("cents, tokens", [(None, None), (0, 0), (0.0, None)])
def test_charge_without_a_cost_takes_nothing(
    buckets: MemoryBuckets, cents: float | None, tokens: int | None
) -> None:
    lims = [limit("10;w=60;u=cents"), limit("1000;w=60;u=tokens")]
    charge(buckets, lims, cents, tokens)
    assert [buckets.level(lim.key, lim.policy) for lim in lims] == [10, 1000]


def test_charge_accumulates(buckets: MemoryBuckets) -> None:
    lim = limit("10;w=3600;u=cents")
    for _ in range(4):
        charge(buckets, [lim], 1.25, None)
    assert buckets.level(lim.key, lim.policy) == pytest.approx(5)


# -- headers_for --


def states_after(buckets: MemoryBuckets, *limits: Limit) -> tuple[bool, list[State]]:
    return admit(buckets, list(limits))


def test_no_states_no_headers() -> None:
    assert headers_for([], limited=False) == {}


def test_headers_of_an_allowed_call(buckets: MemoryBuckets) -> None:
    ok, states = states_after(buckets, limit("10;w=60"))
    assert ok
    assert headers_for(states, limited=False) == {
        "Helicone-RateLimit-Limit": "10",
        "Helicone-RateLimit-Remaining": "9",
        "Helicone-RateLimit-Policy": "10;w=60",
        "Helicone-RateLimit-Reset": "6",  # one token at 10 per 60 s
    }


def test_headers_of_a_limited_call(buckets: MemoryBuckets, clock: Clock) -> None:
    lim = limit("1;w=60;s=user", "alice")
    states_after(buckets, lim)
    clock.advance(15)
    ok, states = states_after(buckets, lim)
    assert not ok
    assert headers_for(states, limited=True) == {
        "Helicone-RateLimit-Limit": "1",
        "Helicone-RateLimit-Remaining": "0",
        "Helicone-RateLimit-Policy": "1;w=60;s=user",
        "Helicone-RateLimit-Reset": "45",
        "Retry-After": "45",
        "X-Helicone-Error": "rate_limited",
    }


@pytest.mark.parametrize(
    "header, policy",
    [
        # u=request is dropped, as Helicone's buildPolicyString does
        ("100;w=60;u=request", "100;w=60"),
        ("100;w=60;u=request;s=User", "100;w=60;s=user"),
        ("0.5;w=3600;u=cents", "0.5;w=3600;u=cents"),
        ("1000;w=86400;u=tokens;s=org", "1000;w=86400;u=tokens;s=org"),
    ],
)
def test_policy_header_is_normalised(buckets: MemoryBuckets, header: str, policy: str) -> None:
    _, states = states_after(buckets, limit(header))
    assert headers_for(states, limited=False)["Helicone-RateLimit-Policy"] == policy


def test_decimal_quota_in_the_limit_header(buckets: MemoryBuckets) -> None:
    _, states = states_after(buckets, limit("0.5;w=60;u=cents"))
    out = headers_for(states, limited=False)
    assert (out["Helicone-RateLimit-Limit"], out["Helicone-RateLimit-Remaining"]) == ("0.5", "0")


@pytest.mark.parametrize(
    "spent, remaining",
    [
        # floored
        (2.5, "7"),
        (9.99, "0"),
        # never negative
        (12, "0"),
        (0.001, "9"),
    ],
)
def test_remaining_is_the_floor_of_what_is_left(buckets: MemoryBuckets, spent: float, remaining: str) -> None:
    lim = limit("10;w=3600;u=cents")
    charge(buckets, [lim], spent, None)
    ok, states = states_after(buckets, lim)
    assert headers_for(states, limited=not ok)["Helicone-RateLimit-Remaining"] == remaining


def test_reset_only_when_the_bucket_is_not_full(buckets: MemoryBuckets) -> None:
    lim = limit("10;w=60;u=cents")
    _, states = states_after(buckets, lim)
    out = headers_for(states, limited=False)
    assert "Helicone-RateLimit-Reset" not in out, "an uncharged cents bucket is full"
    charge(buckets, [lim], 1, None)
    _, states = states_after(buckets, lim)
    assert headers_for(states, limited=False)["Helicone-RateLimit-Reset"] == "6"


def test_retry_after_is_at_least_one_second(buckets: MemoryBuckets) -> None:
    lim = limit("10;w=60;u=cents")
    charge(buckets, [lim], 10, None)  # exactly empty: admitted again a moment later
    ok, states = states_after(buckets, lim)
    assert not ok
    assert headers_for(states, limited=True)["Retry-After"] == "1"


def test_the_tightest_bucket_is_reported(buckets: MemoryBuckets) -> None:
    loose, tight = limit("100;w=60"), limit("10;w=3600")
    _, states = states_after(buckets, loose, tight)  # 99/100 left vs 9/10 left
    assert headers_for(states, limited=False)["Helicone-RateLimit-Policy"] == "10;w=3600"
    _, states = states_after(buckets, tight, loose)
    assert headers_for(states, limited=False)["Helicone-RateLimit-Policy"] == "10;w=3600", "in any order"


def test_a_limited_call_reports_the_bucket_that_frees_up_last(buckets: MemoryBuckets) -> None:
    minute, hour, roomy = limit("1;w=60"), limit("1;w=3600"), limit("1000;w=60")
    states_after(buckets, minute, hour)
    ok, states = states_after(buckets, roomy, minute, hour)
    assert not ok
    out = headers_for(states, limited=True)
    assert (out["Helicone-RateLimit-Policy"], out["Retry-After"]) == ("1;w=3600", "3600")


# -- thread safety: charges arrive from a worker thread while the event loop admits --


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads as often as possible, so an unlocked read-modify-write would lose updates."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def in_threads(n: int, work: Callable[[], None]) -> None:
    start = threading.Barrier(n)

    def run() -> None:
        start.wait()
        work()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_concurrent_admits_never_admit_more_than_the_quota(
    busy_switching: None, buckets: MemoryBuckets
) -> None:
    lim = limit("1000;w=3600")
    admitted: list[bool] = []

    def work() -> None:
        got = [admit(buckets, [lim])[0] for _ in range(250)]
        admitted.extend(got)

    in_threads(8, work)
    assert (admitted.count(True), admitted.count(False)) == (1000, 1000)
    assert buckets.level(lim.key, lim.policy) == 0


def test_concurrent_charges_are_all_counted(busy_switching: None, buckets: MemoryBuckets) -> None:
    cents, tokens = limit("1000000;w=3600;u=cents"), limit("1000000;w=3600;u=tokens")

    def work() -> None:
        for _ in range(500):
            charge(buckets, [cents, tokens], 1.0, 2)
            admit(buckets, [cents, tokens])

    in_threads(8, work)
    assert buckets.level(cents.key, cents.policy) == 1_000_000 - 4000
    assert buckets.level(tokens.key, tokens.policy) == 1_000_000 - 8000
