"""Unit-test isolation: a clean environment and a private working directory for every test.

tests/conftest.py clears the same variables; this file repeats it so the unit tests stay isolated
when run on their own, and also points the llmtap db and the ./rules.yaml lookup at tmp_path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_PREFIXES = ("OPENAI_", "ANTHROPIC_", "HELICONE_", "LLMTAP_")
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def private_workdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper() in _PROXY_VARS or name.upper().startswith(_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LLMTAP_DB", str(tmp_path / "llmtap.duckdb"))
    monkeypatch.chdir(tmp_path)
