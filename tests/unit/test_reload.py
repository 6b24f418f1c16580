from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from llmtap.policy import rules
from llmtap.proxy import reload

ONE_RULE = "rules:\n  - name: cache-all\n    cache: {ttl: 1h}\n"
TWO_RULES = ONE_RULE + "  - name: limit\n    rate_limit: {quota: 10, window: 60s}\n"
BAD_TTL = "rules:\n  - name: cache-all\n    cache: {ttl: soon}\n"
INTERVAL = 0.01


Step = tuple[Callable[[], None], Callable[[list[rules.Rules]], bool]]


def run_watch(path: Path, *steps: Step) -> list[rules.Rules]:
    """Watch `path` from its current stamp; for each (edit, done) step apply the edit and poll until
    `done(swapped)` (at most 5 s); then cancel the watcher. Returns every Rules it swapped in."""
    swapped: list[rules.Rules] = []

    async def scenario() -> None:
        watcher = reload.watch(str(path), reload.stamp(str(path)), swapped.append, INTERVAL)
        task = asyncio.ensure_future(watcher)
        await asyncio.sleep(INTERVAL * 3)  # a few quiet polls first: an unchanged file is not reloaded
        assert swapped == []
        for edit, done in steps:
            edit()
            for _ in range(500):
                await asyncio.sleep(INTERVAL)
                if done(swapped):
                    break
        await asyncio.sleep(INTERVAL * 5)  # and nothing more happens afterwards
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    return swapped


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "rules.yaml"
    p.write_text(ONE_RULE)
    return p


def test_a_good_edit_swaps_the_rules(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="llmtap.proxy.reload"):
        swapped = run_watch(path, (lambda: path.write_text(TWO_RULES), bool))
    [new] = swapped
    assert [r.name for r in new.rules] == ["cache-all", "limit"]
    assert new.source == str(path)
    assert f"llmtap: reloaded {path}: 2 rules, 0 providers" in caplog.text


def test_a_bad_edit_keeps_the_previous_rules(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def logged(_: list[rules.Rules]) -> bool:
        return "keeping the previous rules" in caplog.text

    with caplog.at_level(logging.INFO, logger="llmtap.proxy.reload"):
        swapped = run_watch(path, (lambda: path.write_text(BAD_TTL), logged))
    assert swapped == []
    field = "rules[0].cache.ttl: expected a duration like '1h', got 'soon'"
    message = f"llmtap: {path}: {field}; keeping the previous rules"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [message], "logged once, not on every poll"


def test_a_fixed_file_is_loaded_after_a_bad_edit(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def logged(_: list[rules.Rules]) -> bool:
        return "keeping the previous rules" in caplog.text

    with caplog.at_level(logging.INFO, logger="llmtap.proxy.reload"):
        swapped = run_watch(
            path,
            (lambda: path.write_text(BAD_TTL), logged),
            (lambda: path.write_text(TWO_RULES), bool),
        )
    assert [len(r.rules) for r in swapped] == [2]


def test_a_deleted_file_keeps_the_rules(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def logged(_: list[rules.Rules]) -> bool:
        return "is gone" in caplog.text

    with caplog.at_level(logging.INFO, logger="llmtap.proxy.reload"):
        swapped = run_watch(path, (path.unlink, logged))
    assert swapped == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"llmtap: {path} is gone; keeping the previous rules"]


def test_a_save_by_rename_is_noticed(path: Path, tmp_path: Path) -> None:
    def edit() -> None:
        tmp = tmp_path / "rules.yaml.tmp"
        tmp.write_text(TWO_RULES)
        os.replace(tmp, path)

    swapped = run_watch(path, (edit, bool))
    assert [len(r.rules) for r in swapped] == [2]


def test_stamp(path: Path, tmp_path: Path) -> None:
    first = reload.stamp(str(path))
    assert first is not None
    assert reload.stamp(str(path)) == first, "stable while the file is untouched"

    os.utime(path, ns=(first[0] + 1_000_000, first[0] + 1_000_000))
    same_size = reload.stamp(str(path))
    assert same_size is not None and same_size != first and same_size[1] == first[1]

    path.write_text(TWO_RULES)
    assert reload.stamp(str(path)) not in (first, same_size)

    other = tmp_path / "other.yaml"
    other.write_text(TWO_RULES)
    os.utime(other, ns=(same_size[0], same_size[0]))
    before = reload.stamp(str(path))
    os.replace(other, path)
    after = reload.stamp(str(path))
    assert after is not None and before is not None and after[2] != before[2], "a new inode counts"

    assert reload.stamp(str(tmp_path / "missing.yaml")) is None


def test_a_recreated_file_is_loaded(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def logged(swapped: list[rules.Rules]) -> bool:
        assert swapped == [], "nothing is swapped while the file is gone"
        return "is gone" in caplog.text

    with caplog.at_level(logging.INFO, logger="llmtap.proxy.reload"):
        swapped = run_watch(path, (path.unlink, logged), (lambda: path.write_text(TWO_RULES), bool))
    assert [len(r.rules) for r in swapped] == [2]
