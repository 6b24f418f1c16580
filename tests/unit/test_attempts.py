"""Retries and fallbacks against real local servers (two fake providers and dead ports)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from llmtap.policy.values import Fallback, RetryPolicy, fallbacks_policy
from llmtap.proxy import attempts, upstream
from llmtap.proxy.attempts import Outcome, Target, fallbacks_for
from llmtap.proxy.upstream import Reply
from llmtap.wire.helicone import HeaderError
from tests.fakeprovider import FakeProvider

from . import samples

TLS = upstream.tls_context(False, None)
CHAT = samples.dumps(samples.CHAT_REQUEST)
PATH = "/v1/chat/completions"
FAST = RetryPolicy(num=3, factor=1.0, min_timeout=0.01, max_timeout=0.02)
ATTEMPT_KEYS = {"target", "attempt", "host", "status", "latency_ms", "error"}


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[FakeProvider, FakeProvider]]:
    with FakeProvider() as primary, FakeProvider() as backup:
        yield primary, backup


@pytest.fixture
def primary(servers: tuple[FakeProvider, FakeProvider]) -> FakeProvider:
    servers[0].clear()
    return servers[0]


@pytest.fixture
def backup(servers: tuple[FakeProvider, FakeProvider]) -> FakeProvider:
    servers[1].clear()
    return servers[1]


@pytest.fixture
def key() -> str:
    """An x-fake-key of this test's own: the fake counts scripted outcomes per key."""
    return uuid.uuid4().hex


@pytest.fixture
def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every backoff wait instead of sleeping it."""
    waited: list[float] = []
    real = asyncio.sleep

    async def record(delay: float, result: Any = None) -> Any:
        waited.append(delay)
        await real(0)
        return result

    monkeypatch.setattr(asyncio, "sleep", record)
    return waited


def target(url: str, *extra: tuple[str, str], body: bytes = CHAT, path: str = PATH) -> Target:
    headers = [("Content-Type", "application/json"), ("Authorization", "Bearer sk-primary"), *extra]
    return Target("POST", url + path, headers, body)


def script(key: str, outcomes: str) -> tuple[tuple[str, str], ...]:
    return (("x-fake-fail", outcomes), ("x-fake-key", key))


def deliver(
    t: Target,
    policy: RetryPolicy | None = FAST,
    fallbacks: tuple[Fallback, ...] = (),
    first: Reply | None = None,
    env: dict[str, str] | None = None,
) -> Outcome:
    return asyncio.run(attempts.deliver(t, policy, fallbacks, TLS, 5.0, first=first, env=env or {}))


def entries(*data: dict[str, Any]) -> tuple[Fallback, ...]:
    return fallbacks_policy(list(data), "test")


def statuses(out: Outcome) -> list[tuple[str, int | None]]:
    return [(a["target"], a["status"]) for a in out.attempts]


def host(fp: FakeProvider) -> str:
    return f"127.0.0.1:{fp.port}"


# -- retries --


def test_retries_until_success(primary: FakeProvider, key: str) -> None:
    out = deliver(target(primary.url, *script(key, "500,429,reset")), RetryPolicy(5, 1.0, 0.01, 0.02))
    assert out.reply.status == 200
    assert json.loads(out.reply.body)["object"] == "chat.completion"
    assert out.retries == 3
    assert [(a["target"], a["attempt"], a["status"]) for a in out.attempts] == [
        ("primary", 0, 500),
        ("primary", 1, 429),
        ("primary", 2, None),
        ("primary", 3, 200),
    ]
    assert all(set(a) == ATTEMPT_KEYS for a in out.attempts)
    assert all(a["host"] == host(primary) for a in out.attempts)
    assert all(isinstance(a["latency_ms"], float) and a["latency_ms"] >= 0 for a in out.attempts)
    errors = [a["error"] for a in out.attempts]
    assert errors[0] is None and errors[1] is None and errors[3] is None
    assert re.match(r"(ConnectionResetError|RemoteDisconnected): ", errors[2]), errors[2]
    assert out.fallback_index is None
    assert len(primary.received) == 4
    assert all(r.body == CHAT for r in primary.received), "every attempt sends the same body"


def test_gives_up_after_num_attempts_and_returns_the_last_response(primary: FakeProvider, key: str) -> None:
    out = deliver(target(primary.url, *script(key, "500,503,502,200")))
    assert (out.reply.status, out.retries) == (502, 2)
    assert json.loads(out.reply.body)["error"]["message"].startswith("fake error 502")
    assert [a["status"] for a in out.attempts] == [500, 503, 502]
    assert len(primary.received) == 3


def test_connection_errors_are_retried(dead_url: str) -> None:
    out = deliver(target(dead_url))
    assert (out.reply.status, out.retries) == (None, 2)
    assert out.reply.error is not None and out.reply.error.startswith("ConnectionRefusedError")
    assert [a["status"] for a in out.attempts] == [None, None, None]
    assert all(a["error"].startswith("ConnectionRefusedError") for a in out.attempts)


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_no_retry_on_other_4xx(primary: FakeProvider, status: int) -> None:
    out = deliver(target(primary.url, ("x-fake-status", str(status))))
    assert (out.reply.status, out.retries, len(out.attempts)) == (status, 0, 1)
    assert len(primary.received) == 1


def test_without_a_retry_policy_there_is_one_attempt(primary: FakeProvider) -> None:
    out = deliver(target(primary.url, ("x-fake-status", "500")), policy=None)
    assert (out.reply.status, out.retries, statuses(out)) == (500, 0, [("primary", 500)])


def test_backoff_waits_between_attempts(primary: FakeProvider, key: str, sleeps: list[float]) -> None:
    out = deliver(target(primary.url, *script(key, "500,500")))
    assert out.reply.status == 200
    assert len(sleeps) == out.retries == 2
    assert all(0.01 <= s <= 0.02 for s in sleeps), sleeps


@pytest.mark.parametrize(
    "retry_after, waits",
    [
        # honoured up to 60 s
        ("2", [2.0]),
        ("0", [0.0]),
        ("60", [60.0]),
        # longer: the backoff applies
        ("90", None),
        ("soon", None),
    ],
)
def test_retry_after_is_honoured(
    primary: FakeProvider, key: str, sleeps: list[float], retry_after: str, waits: list[float] | None
) -> None:
    out = deliver(target(primary.url, *script(key, "429"), ("x-fake-retry-after", retry_after)))
    assert [a["status"] for a in out.attempts] == [429, 200]
    if waits is not None:
        assert sleeps == waits
    else:
        assert len(sleeps) == 1 and 0.01 <= sleeps[0] <= 0.02


def test_waits_stop_at_the_total_cap(primary: FakeProvider, key: str, sleeps: list[float]) -> None:
    headers = (*script(key, "429,429,429,429,429"), ("x-fake-retry-after", "50"))
    out = deliver(target(primary.url, *headers), RetryPolicy(5, 1.0, 0.01, 0.02))
    assert sleeps == [50.0, 50.0], "a third 50 s wait would pass 120 s"
    assert (out.reply.status, out.retries, len(out.attempts)) == (429, 2, 3)


def test_first_counts_as_attempt_zero(primary: FakeProvider) -> None:
    first = Reply(502, [("content-type", "application/json")], b'{"error":{}}', latency_ms=12.34)
    out = deliver(target(primary.url), RetryPolicy(2, 1.0, 0.01, 0.02), first=first)
    assert (out.reply.status, out.retries) == (200, 1)
    assert [(a["attempt"], a["status"]) for a in out.attempts] == [(0, 502), (1, 200)]
    assert out.attempts[0]["latency_ms"] == 12.3
    assert len(primary.received) == 1, "mitmproxy already made the first attempt"


@pytest.mark.parametrize(
    "first, policy",
    [
        # a final outcome
        (Reply(200, body=b"{}"), FAST),
        (Reply(400, body=b"{}"), FAST),
        # no retries left
        (Reply(503, body=b"{}"), RetryPolicy(num=1)),
        (Reply(503, body=b"{}"), None),
    ],
)
def test_first_alone_makes_no_request(
    primary: FakeProvider, first: Reply, policy: RetryPolicy | None
) -> None:
    out = deliver(target(primary.url), policy, first=first)
    assert out.reply is first
    assert (out.retries, statuses(out)) == (0, [("primary", first.status)])
    assert primary.received == []


# -- fallbacks --


def test_a_fallback_answers_once_retries_are_spent(primary: FakeProvider, backup: FakeProvider) -> None:
    fbs = entries({"target-url": backup.url, "headers": {"x-fake-status": "0"}})
    out = deliver(target(primary.url, ("x-fake-status", "503")), RetryPolicy(2, 1.0, 0.01, 0.02), fbs)
    assert out.reply.status == 200
    assert json.loads(out.reply.body)["object"] == "chat.completion"
    assert (out.retries, out.fallback_index) == (1, 0)
    assert statuses(out) == [("primary", 503), ("primary", 503), ("fallback 0", 200)]
    assert out.attempts[-1]["attempt"] == 0 and out.attempts[-1]["host"] == host(backup)
    assert set(out.attempts[-1]) == ATTEMPT_KEYS
    assert (len(primary.received), len(backup.received)) == (2, 1)


def test_a_refused_primary_falls_back(dead_url: str, backup: FakeProvider) -> None:
    out = deliver(target(dead_url), FAST, entries({"target-url": backup.url}))
    assert (out.reply.status, out.fallback_index) == (200, 0)
    assert statuses(out) == [("primary", None)] * 3 + [("fallback 0", 200)]


@pytest.mark.parametrize(
    "outcomes",
    [
        # success, after a retry
        "500",
        # final outcomes are not retried, nor handed to a fallback
        "400",
        "404",
    ],
)
def test_fallbacks_only_after_a_retryable_final_outcome(
    primary: FakeProvider, backup: FakeProvider, key: str, outcomes: str
) -> None:
    out = deliver(target(primary.url, *script(key, outcomes)), FAST, entries({"target-url": backup.url}))
    assert out.fallback_index is None
    assert backup.received == []
    assert out.reply.status == (200 if outcomes == "500" else int(outcomes))


def test_fallbacks_without_a_retry_policy(primary: FakeProvider, backup: FakeProvider) -> None:
    fbs = entries({"target-url": backup.url, "headers": {"x-fake-status": "0"}})
    out = deliver(target(primary.url, ("x-fake-status", "500")), None, fbs)
    assert statuses(out) == [("primary", 500), ("fallback 0", 200)]
    assert out.retries == 0


def test_fallbacks_after_mitmproxys_first_attempt(primary: FakeProvider, backup: FakeProvider) -> None:
    out = deliver(target(primary.url), None, entries({"target-url": backup.url}), first=Reply(529))
    assert statuses(out) == [("primary", 529), ("fallback 0", 200)]
    assert (len(primary.received), len(backup.received)) == (0, 1)


def test_entry_headers_replace_the_api_key_headers(primary: FakeProvider, backup: FakeProvider) -> None:
    t = target(
        primary.url,
        ("x-api-key", "sk-ant-primary"),
        ("api-key", "azure-primary"),
        ("X-Goog-Api-Key", "AIza-primary"),
        ("X-Title", "docs"),
        ("X-Fake-Status", "503"),
    )
    fbs = entries(
        {
            "target-url": backup.url,
            "headers": {"Authorization": "Bearer ${GROQ_API_KEY}", "x-fake-status": "0"},
        }
    )
    out = deliver(t, None, fbs, env={"GROQ_API_KEY": "gsk-live"})
    assert out.reply.status == 200
    [got] = backup.received
    assert got.headers["authorization"] == "Bearer gsk-live", "replaced, not joined with the primary's"
    assert got.headers["x-fake-status"] == "0", "an entry header replaces the same header, whatever its case"
    assert "x-api-key" not in got.headers and "api-key" not in got.headers
    assert "x-goog-api-key" not in got.headers
    assert (got.headers["x-title"], got.headers["content-type"]) == ("docs", "application/json")
    assert "sk-" not in json.dumps(got.headers).replace("gsk-live", ""), "no primary key reaches the fallback"
    assert primary.received[0].headers["authorization"] == "Bearer sk-primary"


def test_an_entry_without_headers_sends_no_key(primary: FakeProvider, backup: FakeProvider) -> None:
    t = target(primary.url, ("x-api-key", "sk-ant-primary"), ("x-fake-status", "503"))
    deliver(t, None, entries({"target-url": backup.url, "headers": {}, "onCodes": [503]}))
    [got] = backup.received
    assert "authorization" not in got.headers and "x-api-key" not in got.headers


def test_a_missing_environment_variable_skips_that_entry(
    primary: FakeProvider, backup: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "from-os-environ")
    fbs = entries(
        {"target-url": backup.url, "headers": {"Authorization": "Bearer ${GROQ_API_KEY}"}},
        {"target-url": backup.url, "headers": {"Authorization": "Bearer ${OTHER_KEY}", "x-fake-status": "0"}},
    )
    out = deliver(target(primary.url, ("x-fake-status", "500")), None, fbs, env={"OTHER_KEY": "k2"})
    assert out.attempts[1] == {
        "target": "fallback 0",
        "status": None,
        "error": "headers: environment variable GROQ_API_KEY is not set",
    }, "expanded from the env given, not os.environ"
    assert statuses(out) == [("primary", 500), ("fallback 0", None), ("fallback 1", 200)]
    assert (out.reply.status, out.fallback_index) == (200, 1)
    [got] = backup.received
    assert got.headers["authorization"] == "Bearer k2"


def test_when_every_entry_is_skipped_the_primary_response_stands(primary: FakeProvider) -> None:
    fbs = entries({"target-url": "http://127.0.0.1:9", "headers": {"Authorization": "${NOPE}"}})
    out = deliver(target(primary.url, ("x-fake-status", "503")), None, fbs)
    assert (out.reply.status, out.fallback_index) == (503, None)
    assert statuses(out) == [("primary", 503), ("fallback 0", None)]


def test_body_key_override_is_merged(primary: FakeProvider, backup: FakeProvider) -> None:
    override = {"model": "llama-3.1-8b-instant", "temperature": 0}
    fbs = entries({"target-url": backup.url, "bodyKeyOverride": override})
    deliver(target(primary.url, ("x-fake-status", "503")), None, fbs)
    [got] = backup.received
    assert json.loads(got.body) == {**samples.CHAT_REQUEST, **override}
    assert got.headers["content-length"] == str(len(got.body))
    assert primary.received[0].body == CHAT, "the primary got the client's body"


@pytest.mark.parametrize("body", [b"not json", b'["a list"]', b""])
def test_body_key_override_leaves_a_non_object_body_alone(
    primary: FakeProvider, backup: FakeProvider, body: bytes
) -> None:
    fbs = entries({"target-url": backup.url, "bodyKeyOverride": {"model": "x"}})
    deliver(target(primary.url, ("x-fake-status", "503"), body=body), None, fbs)
    assert backup.received[0].body == body


@pytest.mark.parametrize(
    "prefix, path",
    [
        ("", "/v1/chat/completions?api-version=2024-10-21"),
        ("/openai/", "/openai/v1/chat/completions?api-version=2024-10-21"),
    ],
)
def test_a_fallback_keeps_the_path_and_query(
    primary: FakeProvider, backup: FakeProvider, prefix: str, path: str
) -> None:
    t = target(primary.url, ("x-fake-status", "503"), path=f"{PATH}?api-version=2024-10-21")
    out = deliver(t, None, entries({"target-url": backup.url + prefix, "headers": {"x-fake-status": "0"}}))
    assert out.reply.status == 200
    assert backup.received[0].path == path


def which(fp: FakeProvider) -> list[str]:
    return [r.headers.get("x-which", "") for r in fp.received]


@pytest.mark.parametrize(
    "status, on_codes, moves_on",
    [
        # exact codes and inclusive ranges
        ("429", [429], True),
        ("503", [{"from": 500, "to": 599}], True),
        ("500", [{"from": 500, "to": 599}], True),
        ("599", [{"from": 500, "to": 599}], True),
        ("400", [400, 401], True),
        # not listed: this entry's response stands
        ("503", [{"from": 400, "to": 499}], False),
        ("503", [429], False),
        ("503", [], False),
        ("0", [{"from": 400, "to": 599}], False),
    ],
)
def test_on_codes_decide_whether_to_move_on(
    primary: FakeProvider, backup: FakeProvider, status: str, on_codes: list[Any], moves_on: bool
) -> None:
    fbs = entries(
        {"target-url": backup.url, "headers": {"x-fake-status": status, "x-which": "a"}, "onCodes": on_codes},
        {"target-url": backup.url, "headers": {"x-fake-status": "0", "x-which": "b"}},
    )
    out = deliver(target(primary.url, ("x-fake-status", "500")), None, fbs)
    if moves_on:
        assert (out.reply.status, out.fallback_index, which(backup)) == (200, 1, ["a", "b"])
    else:
        assert (out.reply.status, out.fallback_index, which(backup)) == (int(status) or 200, 0, ["a"])


def test_no_response_from_a_fallback_moves_on(
    primary: FakeProvider, backup: FakeProvider, dead_url: str
) -> None:
    fbs = entries({"target-url": dead_url}, {"target-url": backup.url, "headers": {"x-fake-status": "0"}})
    out = deliver(target(primary.url, ("x-fake-status", "500")), None, fbs)
    assert statuses(out) == [("primary", 500), ("fallback 0", None), ("fallback 1", 200)]
    assert out.attempts[1]["error"].startswith("ConnectionRefusedError")
    assert out.fallback_index == 1


def test_the_last_entrys_response_stands(primary: FakeProvider, backup: FakeProvider) -> None:
    fbs = entries(
        {"target-url": backup.url, "headers": {"x-fake-status": "429"}, "onCodes": [429]},
        {"target-url": backup.url, "headers": {"x-fake-status": "429"}, "onCodes": [429]},
    )
    out = deliver(target(primary.url, ("x-fake-status", "500")), FAST, fbs)
    assert (out.reply.status, out.fallback_index) == (429, 1)
    assert json.loads(out.reply.body)["error"]["code"] == "rate_limit_exceeded"
    assert statuses(out)[-2:] == [("fallback 0", 429), ("fallback 1", 429)]
    assert len(backup.received) == 2, "each entry once: fallbacks are not retried"


def test_a_dead_last_entry_leaves_no_response(primary: FakeProvider, dead_url: str) -> None:
    out = deliver(target(primary.url, ("x-fake-status", "500")), None, entries({"target-url": dead_url}))
    assert (out.reply.status, out.fallback_index) == (None, 0)
    assert out.reply.error is not None


# -- fallbacks_for: the Helicone-Fallbacks header or a rule's fallbacks --

RULE = (Fallback("https://api.groq.com/openai"),)
DOCS_EXAMPLE = [
    {"target-url": "https://api.openai.com", "headers": {"Authorization": "Bearer sk-1"},
     "onCodes": [{"from": 400, "to": 500}]},
    {"target-url": "https://api.lemonfox.ai/", "headers": {"Authorization": "Bearer lf-1"},
     "onCodes": [401, 403], "bodyKeyOverride": {"model": "zephyr-chat"}},
]  # fmt: skip


def test_no_header_keeps_the_rule() -> None:
    assert fallbacks_for({}, RULE) is RULE
    assert fallbacks_for({"helicone-cache-enabled": "true"}, ()) == ()


def test_the_header_wins_over_the_rule() -> None:
    assert fallbacks_for({"helicone-fallbacks": json.dumps(DOCS_EXAMPLE)}, RULE) == (
        Fallback("https://api.openai.com", (("Authorization", "Bearer sk-1"),), ((400, 500),)),
        Fallback(
            "https://api.lemonfox.ai",
            (("Authorization", "Bearer lf-1"),),
            ((401, 401), (403, 403)),
            (("model", "zephyr-chat"),),
        ),
    )


H = "Helicone-Fallbacks"


@pytest.mark.parametrize(
    "raw, reason",
    [
        # not JSON
        ("", "not valid JSON: "),
        ("[{target-url: x}]", "not valid JSON: "),
        # not a non-empty list of entries
        ("{}", "expected a non-empty list of fallback entries, got {}"),
        ("[]", "expected a non-empty list of fallback entries, got []"),
        ('"https://api.groq.com"', "expected a non-empty list of fallback entries, got 'https://api.groq.com'"),
        ("[1]", "[0]: expected a mapping, got 1"),
        # bad entries, by field
        ('[{"target-url": "https://a"}, {"url": "https://b"}]', "[1].url: unknown key"),
        ('[{"headers": {}}]', "[0].target-url: expected an http(s) URL, got None"),
        ('[{"target-url": "api.groq.com"}]', "[0].target-url: expected an http(s) URL, got 'api.groq"),
        ('[{"target-url": "https://a", "headers": {"x": 1}}]', "[0].headers: expected a mapping"),
        ('[{"target-url": "https://a", "onCodes": ["429"]}]',
         "[0].onCodes[0]: expected a status or {from, to}, got '429'"),
        ('[{"target-url": "https://a", "onCodes": [{"from": 5}]}]', "[0].onCodes[0]: expected a status"),
        ('[{"target-url": "https://a", "bodyKeyOverride": []}]',
         "[0].bodyKeyOverride: expected a mapping, got []"),
    ],
)  # fmt: skip
def test_a_bad_fallbacks_header_names_it(raw: str, reason: str) -> None:
    with pytest.raises(HeaderError, match=f"^{re.escape(f'{H}: {reason}')}") as info:
        fallbacks_for({"helicone-fallbacks": raw}, RULE)
    assert info.value.header == H


@pytest.mark.parametrize("on_codes", ["500", "null", "true"])
def test_on_codes_that_are_not_a_list_name_the_header(on_codes: str) -> None:
    raw = f'[{{"target-url": "https://a", "onCodes": {on_codes}}}]'
    with pytest.raises(HeaderError, match=f"^{H}: \\[0\\]\\.onCodes: expected a list"):
        fallbacks_for({"helicone-fallbacks": raw}, ())
