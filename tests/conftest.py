"""Shared fixtures: a clean environment for every test, the fake provider, mitmdump runners."""

from __future__ import annotations

import os
from collections.abc import Iterator

import duckdb
import genai_prices
import mitmproxy.version
import pytest

CLEARED_PREFIXES = ("OPENAI_", "ANTHROPIC_", "HELICONE_", "LLMTAP_")
CLEARED = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def pytest_report_header() -> list[str]:
    return [
        f"duckdb {duckdb.__version__}, mitmproxy {mitmproxy.version.VERSION}, "
        f"genai-prices {genai_prices.__version__}"
    ]


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test may see the machine's proxy, SDK or llmtap settings (these machines preset some)."""
    for name in list(os.environ):
        if name.upper() in CLEARED or name.upper().startswith(CLEARED_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    yield
