from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

import pytest

from llmtap.policy import cache_keys
from llmtap.policy.cache_keys import Lookup, lookup_for, policy_for
from llmtap.policy.values import DEFAULT_CACHE_TTL, MAX_CACHE_TTL, CachePolicy
from llmtap.wire.helicone import HeaderError

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"user":"alice"}'
SAME_BODY_REORDERED = (
    b'{ "user": "alice", "messages": [{"content": "Say hello", "role": "user"}], "model": "gpt-4o-mini" }'
)
HEADERS = {"authorization": "Bearer sk-test", "content-type": "application/json"}
PATH = "/v1/chat/completions"
RULE = CachePolicy(ttl=3600.0, bucket_max_size=3, seed="rule-seed", ignore_keys=("user",))
DEFAULT = CachePolicy()


def on(**headers: str) -> dict[str, str]:
    """Request headers as the addon passes them: names lowercased."""
    return {name.replace("_", "-").lower(): value for name, value in headers.items()}


# -- policy_for --


@pytest.mark.parametrize(
    "headers, rule, expected",
    [
        # neither a header nor a rule: no caching
        ({}, None, None),
        (on(helicone_user_id="alice"), None, None),
        # headers alone
        (on(helicone_cache_enabled="true"), None, CachePolicy()),
        (on(helicone_cache_enabled="TRUE "), None, CachePolicy()),
        (on(helicone_cache_save="true"), None, CachePolicy(read=False, save=True)),
        (on(helicone_cache_read="true"), None, CachePolicy(read=True, save=False)),
        (on(helicone_cache_save="true", helicone_cache_read="true"), None, CachePolicy()),
        (on(helicone_cache_enabled="true", helicone_cache_save="false"), None, CachePolicy(save=False)),
        (on(helicone_cache_enabled="true", helicone_cache_read="false"), None, CachePolicy(read=False)),
        # a header that turns nothing on is not caching
        (on(helicone_cache_enabled="false"), None, None),
        (on(helicone_cache_save="false"), None, None),
        (on(helicone_cache_seed="s1"), None, None),
        # a rule alone
        ({}, RULE, RULE),
        # an explicit false overrides the rule
        (on(helicone_cache_enabled="false"), RULE, None),
        (on(helicone_cache_enabled="false", helicone_cache_save="true"), RULE, None),
        (on(helicone_cache_save="false"), RULE, dataclasses.replace(RULE, save=False)),
        (on(helicone_cache_read="false"), RULE, dataclasses.replace(RULE, read=False)),
        (on(helicone_cache_read="false", helicone_cache_save="false"), RULE, None),
        # enabled turns both back on for a read-only / save-only rule
        (on(helicone_cache_enabled="true"), CachePolicy(read=False), CachePolicy()),
        (on(helicone_cache_enabled="true"), CachePolicy(save=False), CachePolicy()),
        # header values override the rule's
        (on(helicone_cache_seed="s2", helicone_cache_bucket_max_size="5", helicone_cache_ignore_keys="meta"),
         RULE, CachePolicy(3600.0, 5, "s2", ("meta",))),
        (on(helicone_cache_seed=""), RULE, CachePolicy(3600.0, 3, "", ("user",))),
        (on(helicone_cache_ignore_keys=""), RULE, CachePolicy(3600.0, 3, "rule-seed", ())),
    ],
)  # fmt: skip
def test_policy_for(headers: dict[str, str], rule: CachePolicy | None, expected: CachePolicy | None) -> None:
    assert policy_for(headers, rule) == expected


@pytest.mark.parametrize(
    "value, size",
    [
        # the bounds
        ("1", 1),
        ("20", 20),
        # spaces around the number
        (" 7 ", 7),
    ],
)
def test_bucket_header(value: str, size: int) -> None:
    policy = policy_for(on(helicone_cache_enabled="true", helicone_cache_bucket_max_size=value), None)
    assert policy is not None and policy.bucket_max_size == size


@pytest.mark.parametrize(
    "value",
    [
        # out of range
        "0",
        "21",
        "-1",
        # not a whole number
        "x",
        "2.5",
        "",
    ],
)
def test_bad_bucket_header_names_the_header(value: str) -> None:
    reason = f"expected a whole number from 1 to 20, got {value!r}"
    message = f"Helicone-Cache-Bucket-Max-Size: {reason}"
    headers = on(helicone_cache_enabled="true", helicone_cache_bucket_max_size=value)
    with pytest.raises(HeaderError, match=f"^{re.escape(message)}$") as info:
        policy_for(headers, None)
    assert (info.value.header, info.value.reason) == ("Helicone-Cache-Bucket-Max-Size", reason)
    with pytest.raises(HeaderError, match="Helicone-Cache-Bucket-Max-Size"):
        policy_for(on(helicone_cache_bucket_max_size=value), RULE)


@pytest.mark.parametrize(
    "value, keys",
    [
        # Helicone's documented form
        ("user,metadata", ("user", "metadata")),
        (" user , metadata ", ("user", "metadata")),
        # the form Helicone's code parses: JSON strings
        ('"user","metadata"', ("user", "metadata")),
        ('"user", "metadata"', ("user", "metadata")),
        # one key, empty parts dropped
        ("user", ("user",)),
        ("user,,", ("user",)),
        ("", ()),
    ],
)
def test_ignore_keys_header(value: str, keys: tuple[str, ...]) -> None:
    policy = policy_for(on(helicone_cache_enabled="true", helicone_cache_ignore_keys=value), None)
    assert policy is not None and policy.ignore_keys == keys


def test_ignore_keys_that_are_not_names_are_rejected() -> None:
    message = "Helicone-Cache-Ignore-Keys: expected body key names like a,b, got '1,2'"
    with pytest.raises(HeaderError, match=f"^{re.escape(message)}$"):
        policy_for(on(helicone_cache_enabled="true", helicone_cache_ignore_keys="1,2"), None)


DAY = 86400.0


@pytest.mark.parametrize(
    "cache_control, rule, ttl",
    [
        # no Cache-Control: the rule's TTL, else 7 days
        (None, None, DEFAULT_CACHE_TTL),
        (None, CachePolicy(ttl=3600.0), 3600.0),
        ("no-cache", None, DEFAULT_CACHE_TTL),
        ("no-cache", CachePolicy(ttl=3600.0), 3600.0),
        # max-age, s-maxage (which wins in either order)
        ("max-age=60", None, 60.0),
        ("public, max-age=120", CachePolicy(ttl=3600.0), 120.0),
        ("max-age=60, s-maxage=30", None, 30.0),
        ("s-maxage=30,max-age=60", None, 30.0),
        ("S-MaxAge=45", None, 45.0),
        ('max-age="90"', None, 90.0),
        # capped at 365 days
        ("max-age=99999999999", None, MAX_CACHE_TTL),
        ("s-maxage=31536001", None, 365 * DAY),
        # a directive that only ends in max-age is not max-age
        ("x-max-age=60", None, DEFAULT_CACHE_TTL),
    ],
)
def test_ttl_from_cache_control(cache_control: str | None, rule: CachePolicy | None, ttl: float) -> None:
    headers = on(helicone_cache_enabled="true")
    if cache_control is not None:
        headers["cache-control"] = cache_control
    policy = policy_for(headers, rule)
    assert policy is not None and policy.ttl == ttl


# -- lookup_for: the key --


def key(
    policy: CachePolicy = DEFAULT,
    method: str = "POST",
    host: str = "api.openai.com",
    path: str = PATH,
    body: bytes = BODY,
    headers: dict[str, str] | None = None,
) -> str:
    return lookup_for(policy, method, host, path, body, HEADERS if headers is None else headers).base


def test_key_is_versioned_sha256() -> None:
    assert re.fullmatch(r"c1:[0-9a-f]{64}", key())


def test_golden_key() -> None:
    """Pinned: if this changes, every saved entry is orphaned. Bump KEY_VERSION with the recipe."""
    lookup = lookup_for(
        CachePolicy(seed="v1", bucket_max_size=2, ignore_keys=("user",)),
        "POST",
        "api.openai.com",
        "/v1/chat/completions?b=2&a=1",
        BODY,
        {"authorization": "Bearer sk-test", "cache-control": "max-age=60", "helicone-user-id": "alice"},
    )
    base = "c1:4230ef960023ccb1ebd3eae50631aeb602235933f2f76db730547263102e21d9"
    assert lookup.base == base
    assert lookup.keys() == [f"{base}/0", f"{base}/1"]


def test_key_follows_the_documented_recipe() -> None:
    """The docstring's recipe, computed independently of cache_keys.py's helpers."""
    material = {
        "seed": "v1",
        "method": "POST",
        "host": "api.openai.com",
        "path": PATH,
        "query": [["a", "1"], ["b", ""]],
        "body": json.dumps(json.loads(BODY), sort_keys=True, separators=(",", ":")),
        "auth": hashlib.sha256(b"Bearer sk-test").hexdigest(),
        "cache_control": "",
        "bucket": 1,
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert key(CachePolicy(seed="v1"), "post", "API.OpenAI.com", PATH + "?b=&a=1") == f"c1:{digest}"


@pytest.mark.parametrize(
    "other",
    [
        # JSON bodies that differ only in key order or spacing
        dict(body=SAME_BODY_REORDERED),
        # method and host case
        dict(method="post"),
        dict(host="API.OPENAI.COM"),
        # query order
        dict(path=PATH + "?a=1&b=2"),
        # headers that are not part of the key
        dict(
            headers={**HEADERS, "helicone-user-id": "bob", "helicone-property-app": "x", "user-agent": "curl"}
        ),
        dict(headers={"authorization": "Bearer sk-test"}),
        # the flags and the TTL are not part of the key (a save-only warm-up fills the readers' entries)
        dict(policy=CachePolicy(read=False, save=True)),
        dict(policy=CachePolicy(read=True, save=False)),
        dict(policy=CachePolicy(ttl=60.0)),
    ],
)
def test_key_is_the_same(other: dict[str, Any]) -> None:
    base = dict(path=PATH + "?b=2&a=1")
    assert key(**{**base, **other}) == key(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "other",
    [
        # the seed namespaces
        dict(policy=CachePolicy(seed="v2")),
        # method, host, path, query
        dict(method="GET"),
        dict(host="api.openai.com:8443"),
        dict(host="openrouter.ai"),
        dict(path="/v1/completions"),
        dict(path=PATH + "/"),
        dict(path=PATH + "?a=1"),
        dict(path=PATH + "?a=2"),
        # the body
        dict(body=BODY.replace(b"hello", b"Hello")),
        dict(body=BODY.replace(b'"user":"alice"', b'"user":"bob"')),
        dict(body=b""),
        # the API key, whichever header carries it
        dict(headers={**HEADERS, "authorization": "Bearer sk-other"}),
        dict(headers={"content-type": "application/json"}),
        dict(headers={"x-api-key": "sk-test"}),
        dict(headers={"x-goog-api-key": "sk-test"}),
        dict(headers={"api-key": "sk-test"}),
        # Cache-Control and the bucket size
        dict(headers={**HEADERS, "cache-control": "max-age=60"}),
        dict(policy=CachePolicy(bucket_max_size=2)),
    ],
)
def test_key_differs(other: dict[str, Any]) -> None:
    assert key(**other) != key()


@pytest.mark.parametrize(
    "name",
    [
        # Anthropic, Gemini, Azure OpenAI
        "x-api-key",
        "x-goog-api-key",
        "api-key",
    ],
)
def test_each_api_key_header_separates_callers(name: str) -> None:
    assert key(headers={name: "k1"}) != key(headers={name: "k2"})
    assert key(headers={name: "k1"}) == key(headers={name: "k1", "user-agent": "sdk"})


def test_authorization_wins_over_other_key_headers() -> None:
    both = {"authorization": "Bearer sk-test", "x-api-key": "other"}
    assert key(headers=both) == key(headers={"authorization": "Bearer sk-test"})


def test_ignore_keys_drop_top_level_keys_only() -> None:
    ignoring = CachePolicy(ignore_keys=("user", "metadata"))
    bob = BODY.replace(b'"user":"alice"', b'"user":"bob"')
    assert key(ignoring, body=BODY) == key(ignoring, body=bob)
    assert key(ignoring, body=BODY) == key(ignoring, body=BODY.replace(b',"user":"alice"', b""))
    assert key(ignoring, body=BODY) != key(ignoring, body=BODY.replace(b"hello", b"bye"))

    nested = b'{"model":"m","messages":[{"role":"user","content":"hi","user":"%s"}]}'
    assert key(ignoring, body=nested % b"alice") != key(ignoring, body=nested % b"bob"), "not recursive"


@pytest.mark.parametrize(
    "body, canonical",
    [
        # canonical JSON: sorted keys, compact, UTF-8 kept
        (b'{"b": 1, "a": [1, 2]}', '{"a":[1,2],"b":1}'),
        ('{"text": "héllo"}'.encode(), '{"text":"héllo"}'),
        # no body, JSON that is not an object
        (b"", "null"),
        (b"[3, 1]", "[3,1]"),
        # not JSON: a hash of the bytes
        (b"\xff\xfenot json", "sha256:" + hashlib.sha256(b"\xff\xfenot json").hexdigest()),
        (b"a=1&b=2", "sha256:" + hashlib.sha256(b"a=1&b=2").hexdigest()),
    ],
)
def test_canonical_body(body: bytes, canonical: str) -> None:
    assert cache_keys.canonical_body(body, ()) == canonical


def test_non_json_bodies_are_keyed_by_their_bytes() -> None:
    assert key(body=b"a=1&b=2") != key(body=b"b=2&a=1")
    assert key(body=b"a=1&b=2") == key(body=b"a=1&b=2")
    assert key(CachePolicy(ignore_keys=("a",)), body=b"a=1") == key(body=b"a=1")


def test_ignore_keys_do_not_touch_a_json_list() -> None:
    assert cache_keys.canonical_body(b'["user"]', ("user",)) == '["user"]'


@pytest.mark.parametrize("size", [1, 2, 20])
def test_lookup_keys_are_one_per_bucket_slot(size: int) -> None:
    lookup = lookup_for(CachePolicy(bucket_max_size=size), "POST", "api.openai.com", PATH, BODY, HEADERS)
    assert lookup == Lookup(lookup.base, CachePolicy(bucket_max_size=size))
    assert lookup.keys() == [f"{lookup.base}/{i}" for i in range(size)]
    assert len(set(lookup.keys())) == size
