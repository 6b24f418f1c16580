"""Hot reload of rules.yaml: poll the file's identity, re-read it off the event loop, swap.

A change is noticed by (mtime, size, inode), so an editor's save-by-rename counts too. The new
file is parsed completely before anything is swapped; a bad edit keeps the previous rules and
says why (on hot reload a bad file must not stop a running proxy).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from llmtap.policy import rules

logger = logging.getLogger(__name__)

Stamp = tuple[int, int, int] | None


def stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def watch(path: str, seen: Stamp, swap: Callable[[rules.Rules], None], interval: float = 1.0) -> None:
    """Run until cancelled: reload `path` whenever it changes."""
    while True:
        await asyncio.sleep(interval)
        now = stamp(path)
        if now == seen:
            continue
        seen = now
        if now is None:
            logger.warning(f"llmtap: {path} is gone; keeping the previous rules")
            continue
        try:
            new = await asyncio.to_thread(rules.load, path)
        except rules.RulesError as e:
            logger.error(f"llmtap: {e}; keeping the previous rules")
            continue
        swap(new)
        logger.info(f"llmtap: reloaded {path}: {len(new.rules)} rules, {len(new.providers)} providers")
