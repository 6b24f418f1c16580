"""The README stays true: its opening commands and every CLI command are documented."""

from __future__ import annotations

import re
from pathlib import Path

from llmtap import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_opens_with_the_demo_and_the_test_commands() -> None:
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", README, re.S)
    assert "scripts/setup.sh" in blocks[0] and "llmtap demo" in blocks[0]
    assert "scripts/setup.sh" in blocks[1] and "pytest" in blocks[1]
    assert "pytest" in Path(__file__).resolve().parents[1].joinpath(".ci/run").read_text()


def test_every_cli_command_is_documented() -> None:
    parser = cli._parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name in commands:
        assert f"llmtap {name}" in README, f"`llmtap {name}` is not in the README"


def test_every_option_is_documented() -> None:
    source = (Path(cli.__file__).parent / "options.py").read_text()
    for name in re.findall(r'"(llmtap_\w+)"', source):
        assert name in README, f"option {name} is not in the README"


def test_shipped_rules_and_the_readme_example_are_valid() -> None:
    import yaml

    from llmtap import rules

    root = Path(__file__).resolve().parents[1]
    rules.load(root / "rules.yaml")
    example = re.findall(r"```yaml\n(.*?)```", README, re.S)[0]
    parsed = rules.parse(yaml.safe_load(example), "README example")
    assert parsed.rules and parsed.providers
