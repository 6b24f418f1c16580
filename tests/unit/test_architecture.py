"""The layout is the architecture: docs/architecture.md's table of what may import what, enforced.

The table is read from the page itself, so the page and the rule cannot drift apart. Every import
counts, lazy ones inside functions included.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

import llmtap
from llmtap import cli

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "addon" / "llmtap"
PAGE = REPO / "docs" / "architecture.md"
CONTROLLED = ("mitmproxy", "duckdb", "sqlite3", "genai_prices", "tiktoken", "yaml", "redis", "psycopg")


def _names(cell: str) -> set[str]:
    return set(re.findall(r"`([\w.]+)`", cell))


def rules() -> dict[str, tuple[set[str], set[str]]]:
    """{unit: (llmtap units it may import, controlled packages it may import)} from the page."""
    out = {}
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and (m := re.fullmatch(r"`(\w+)(?:/|\.py)`", cells[0])):
            out[m.group(1)] = (_names(cells[3]), _names(cells[4]))
    return out


def unit_of(path: Path) -> str:
    """The folder a module belongs to, or a top-level module's own name."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in a module; `from a import b` gives `a.b`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the module's package
                pkg = ".".join(("llmtap", *path.relative_to(PACKAGE).parts[:-1])).split(".")
                base = ".".join([*pkg[: len(pkg) - node.level + 1], *filter(None, [base])])
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def violations(path: Path, table: dict[str, tuple[set[str], set[str]]]) -> list[str]:
    unit = unit_of(path)
    inner, outer = table[unit]
    bad = []
    for line, name in imports(path):
        top, *rest = name.split(".")
        if top == "llmtap":
            target = rest[0] if rest else "llmtap"
            if target in llmtap.__all__:
                target = "llmtap"
            if target != unit and target not in inner:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name} ({unit} may not use {target})")
        elif top in CONTROLLED and not any(name == ok or name.startswith(ok + ".") for ok in outer):
            bad.append(f"{path.relative_to(REPO)}:{line} imports {name} ({unit} may not use {top})")
    return sorted(set(bad))


def test_the_page_lists_every_folder_and_top_level_module():
    units = {unit_of(p) for p in PACKAGE.rglob("*.py")}
    assert units == set(rules())


def test_no_module_imports_across_the_rule():
    table = rules()
    bad = [v for path in sorted(PACKAGE.rglob("*.py")) for v in violations(path, table)]
    assert bad == []


@pytest.mark.parametrize(
    ("unit", "source", "expected"),
    [
        ("policy", "import mitmproxy.http\n", "policy may not use mitmproxy"),
        ("policy", "def f():\n    import duckdb\n", "policy may not use duckdb"),
        ("accounting", "from mitmproxy import http\n", "accounting may not use mitmproxy"),
        ("wire", "from llmtap.policy import rules\n", "wire may not use policy"),
        ("storage", "from ..proxy import addon\n", "storage may not use proxy"),
        ("cli", "from llmtap.proxy.addon import LLMTap\n", "cli may not use proxy"),
    ],
)
def test_a_crossing_import_is_caught(tmp_path, monkeypatch, unit, source, expected):
    """The checker itself: a module placed in `unit` with `source` is reported."""
    fake = tmp_path / "llmtap"
    target = fake / unit / "x.py" if unit != "cli" else fake / "cli.py"
    target.parent.mkdir(parents=True)
    target.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (found,) = violations(target, rules())
    assert expected in found


@pytest.mark.parametrize(
    "source", ["from mitmproxy.net import encoding\n", "import mitmproxy.net.encoding\n"]
)
def test_an_allowed_submodule_passes_however_it_is_spelled(tmp_path, monkeypatch, source):
    """accounting may decode bodies with mitmproxy.net.encoding."""
    target = tmp_path / "llmtap" / "accounting" / "x.py"
    target.parent.mkdir(parents=True)
    target.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "llmtap")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert violations(target, rules()) == []


def test_public_surface():
    assert llmtap.__all__ == ["__version__", "log"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", llmtap.__version__)
    assert llmtap.log.__doc__.startswith("Log a call made without the proxy")
    commands = set(cli._parser()._subparsers._group_actions[0].choices)
    listed = llmtap.__doc__.split("the `llmtap` command")[1].split("\n- ")[0]
    assert set(re.findall(r"`(\w+)`", listed)) == commands
