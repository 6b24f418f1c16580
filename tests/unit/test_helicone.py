from __future__ import annotations

import uuid

import pytest

from llmtap.wire.helicone import CallMeta, parse, proxy_only, valid_uuid

REQUEST_ID = "0b9e5f2a-8d63-4c1e-9f0a-5a3c7d2e1b44"


def test_parse_every_helicone_header() -> None:
    meta = parse([
        ("Content-Type", "application/json"),
        ("Helicone-Request-Id", REQUEST_ID),
        ("Helicone-User-Id", " alice "),
        ("Helicone-Session-Id", "sess-1"),
        ("Helicone-Session-Path", "/trip/flights"),
        ("Helicone-Session-Name", "Trip planner"),
        ("Helicone-Property-App", "docs"),
        ("HELICONE-PROPERTY-Env", "Prod"),
        ("Helicone-Omit-Request", "true"),
        ("Helicone-Omit-Response", "TRUE"),
        ("Helicone-Auth", "Bearer k1"),
    ])  # fmt: skip
    assert meta == CallMeta(
        request_id=REQUEST_ID, user_id="alice", session_id="sess-1", session_path="/trip/flights",
        session_name="Trip planner", properties={"app": "docs", "env": "Prod"},
        omit_request=True, omit_response=True, auth="Bearer k1",
    )  # fmt: skip


def test_no_helicone_headers() -> None:
    meta = parse([("Authorization", "Bearer sk-1"), ("User-Agent", "OpenAI/Python 1.40.0")])
    assert uuid.UUID(meta.request_id).version == 4
    assert meta == CallMeta(request_id=meta.request_id)


@pytest.mark.parametrize(
    "value, kept",
    [
        # a UUID is kept (normalised)
        (REQUEST_ID, REQUEST_ID),
        (REQUEST_ID.upper(), REQUEST_ID),
        (f"  {REQUEST_ID} ", REQUEST_ID),
        (REQUEST_ID.replace("-", ""), REQUEST_ID),
        # anything else gets a new id, as Helicone does
        ("req-123", None),
        ("", None),
        (REQUEST_ID[:-1], None),
    ],
)
def test_request_id_is_kept_only_when_a_uuid(value: str, kept: str | None) -> None:
    assert valid_uuid(value) == kept
    request_id = parse([("Helicone-Request-Id", value)]).request_id
    if kept is None:
        assert request_id != value
        assert uuid.UUID(request_id).version == 4
    else:
        assert request_id == kept


def test_new_request_ids_are_unique() -> None:
    assert len({parse([]).request_id for _ in range(50)}) == 50


@pytest.mark.parametrize(
    "value, omitted",
    [
        ("true", True),
        ("True", True),
        (" true ", True),
        ("false", False),
        ("1", False),
        ("yes", False),
        ("", False),
    ],
)
def test_omit_flags(value: str, omitted: bool) -> None:
    meta = parse([("Helicone-Omit-Request", value), ("Helicone-Omit-Response", value)])
    assert (meta.omit_request, meta.omit_response) == (omitted, omitted)


@pytest.mark.parametrize(
    "fields, expected",
    [
        # keys are lowercased, values kept as sent
        ([("Helicone-Property-Feature", "Search ")], {"feature": "Search "}),
        # the last of a repeated property wins
        ([("helicone-property-a", "1"), ("Helicone-Property-A", "2")], {"a": "2"}),
        # a property with no name is not a property
        ([("Helicone-Property-", "x")], {}),
    ],
)
def test_properties(fields: list[tuple[str, str]], expected: dict[str, str]) -> None:
    assert parse(fields).properties == expected


def test_empty_values_are_none() -> None:
    meta = parse([("Helicone-User-Id", "  "), ("Helicone-Session-Id", ""), ("Helicone-Auth", "")])
    assert (meta.user_id, meta.session_id, meta.auth) == (None, None, None)


def test_proxy_only_lists_every_helicone_header_and_nothing_else() -> None:
    names = [
        "Helicone-Auth", "helicone-user-id", "HELICONE-PROPERTY-X", "Helicone-Cache-Enabled",
        "Authorization", "Content-Type", "X-Helicone-Like", "heliconeish",
    ]  # fmt: skip
    assert proxy_only(names) == [
        "Helicone-Auth",
        "helicone-user-id",
        "HELICONE-PROPERTY-X",
        "Helicone-Cache-Enabled",
    ]
