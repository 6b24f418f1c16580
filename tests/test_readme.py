"""The README stays true: its opening commands and every CLI command are documented."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from llmtap import cli
from llmtap.launch import run

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

    from llmtap.policy import rules

    root = Path(__file__).resolve().parents[1]
    rules.load(root / "rules.yaml")
    example = re.findall(r"```yaml\n(.*?)```", README, re.S)[0]
    parsed = rules.parse(yaml.safe_load(example), "README example")
    assert parsed.rules and parsed.providers


def _subparsers(
    parser: argparse.ArgumentParser, prefix: str = "llmtap"
) -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((f"{prefix} {name}", sub))
                out += _subparsers(sub, f"{prefix} {name}")
    return out


def test_every_flag_of_every_command_is_in_the_readme() -> None:
    """The README is compared with each command's --help: every long option must be explained."""
    missing = []
    commands = [*_subparsers(cli._parser()), ("llmtap run", run.parser())]  # run parses its own
    for command, sub in commands:
        assert sub.format_help(), command
        for action in sub._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help" and flag not in README:
                    missing.append(f"{command} {flag}")
    assert not missing, f"not documented in README.md: {missing}"
