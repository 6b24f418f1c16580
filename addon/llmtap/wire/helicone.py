"""Helicone-compatible request headers (reference/helicone.md §1).

Names are case-insensitive. Property keys are lowercased, as Helicone stores them. A
`Helicone-Request-Id` that is not a UUID is replaced by a new one, as Helicone does. Every
`helicone-*` header is proxy-only: the addon strips them before the request goes upstream.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

PREFIX = "helicone-"
PROPERTY_PREFIX = "helicone-property-"


class HeaderError(ValueError):
    """A malformed policy header; the proxy answers 400 with a JSON error naming it."""

    def __init__(self, header: str, reason: str) -> None:
        super().__init__(f"{header}: {reason}")
        self.header, self.reason = header, reason


@dataclass(slots=True)
class CallMeta:
    request_id: str
    user_id: str | None = None
    session_id: str | None = None
    session_path: str | None = None
    session_name: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    omit_request: bool = False
    omit_response: bool = False
    auth: str | None = None


def valid_uuid(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        return None


def parse(fields: Iterable[tuple[str, str]]) -> CallMeta:
    """Read every `helicone-*` header of a request."""
    h: dict[str, str] = {}
    props: dict[str, str] = {}
    for name, value in fields:
        lname = name.lower()
        if not lname.startswith(PREFIX):
            continue
        if lname.startswith(PROPERTY_PREFIX) and len(lname) > len(PROPERTY_PREFIX):
            props[lname[len(PROPERTY_PREFIX) :]] = value
        else:
            h[lname] = value.strip()
    return CallMeta(
        request_id=valid_uuid(h.get("helicone-request-id")) or str(uuid.uuid4()),
        user_id=h.get("helicone-user-id") or None,
        session_id=h.get("helicone-session-id") or None,
        session_path=h.get("helicone-session-path") or None,
        session_name=h.get("helicone-session-name") or None,
        properties=props,
        omit_request=h.get("helicone-omit-request", "").lower() == "true",
        omit_response=h.get("helicone-omit-response", "").lower() == "true",
        auth=h.get("helicone-auth") or None,
    )


def proxy_only(names: Iterable[str]) -> list[str]:
    """The header names that must not reach the provider."""
    return [n for n in names if n.lower().startswith(PREFIX)]
