"""The response cache as the hooks use it: answer hits, and hold what is to be saved.

The proxy only reads the cache file (a SQLite point lookup, microseconds); the writer process
saves into it. Between a response's delivery and its save the proxy holds it in `fresh`
(fresh.py), so the very next identical call is a hit. `answer` decides a request's caching
(cache_keys.py: its headers and rule) and answers a hit; `claim` / `hold` keep a delivered response
under the slot the writer will save it in. An unreadable cache is a miss, never a failed request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from mitmproxy import http

from llmtap.accounting.entry import Entry
from llmtap.accounting.record import Capture
from llmtap.policy import cache_keys
from llmtap.policy.cache_keys import Lookup
from llmtap.policy.values import CachePolicy
from llmtap.proxy import replies
from llmtap.proxy.fresh import FreshEntries
from llmtap.storage import cachestore
from llmtap.storage.writerproc import HANDOFF_BATCH

logger = logging.getLogger(__name__)


class ResponseCache:
    def __init__(self) -> None:
        self.file: cachestore.CacheStore | None = None
        self.fresh = FreshEntries(0, 0)  # sized by open()

    def open(self, path: str, max_mb: int, queue_size: int) -> bool:
        """Open the cache file (False, with a warning, when it cannot be: caching is off)."""
        try:
            self.file = cachestore.CacheStore(path, max_mb * 1024 * 1024)
        except Exception as e:  # a warning: an ERROR during startup would make mitmdump exit
            logger.warning(f"llmtap: response cache unavailable ({path}: {e}); caching is off")
            self.file = None
        # At most every record not yet converted by the writer: its queue and the batch it holds.
        self.fresh = FreshEntries(2 * queue_size + HANDOFF_BATCH, min(max_mb, 256) * 1024 * 1024)
        return self.file is not None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def answer(
        self, flow: http.HTTPFlow, c: Capture, rule: CachePolicy | None, headers: Mapping[str, str]
    ) -> bool:
        """Set up caching for this call (headers lowercased); True when a hit answered it."""
        lookup = self.plan(flow, c, rule, headers)
        if lookup is None:
            return False
        keys = lookup.keys()
        slots = self._slots(keys)
        picked = cachestore.pick(slots[1]) if slots is not None else None
        if slots is None or picked is None:
            return False
        idx, entry = picked
        self.serve(flow, c, idx, entry, keys[idx], fresh=slots[0][idx] is None)
        return True

    @staticmethod
    def plan(
        flow: http.HTTPFlow, c: Capture, rule: CachePolicy | None, headers: Mapping[str, str]
    ) -> Lookup | None:
        """Decide this call's caching: what it saves (c.cache_save), and the lookup to read, if any
        (then it is a MISS until a hit is served). Raises HeaderError for a bad cache header."""
        policy = cache_keys.policy_for(headers, rule)
        if policy is None or c.endpoint is None:
            return None
        req = flow.request
        lookup = cache_keys.lookup_for(policy, req.method, c.host, req.path, c.request_body, headers)
        if policy.save:
            c.cache_save = lookup
        if not policy.read:
            return None
        c.cache_status = "MISS"
        return lookup

    @staticmethod
    def serve(flow: http.HTTPFlow, c: Capture, idx: int, entry: Entry, key: str, fresh: bool = False) -> None:
        """Answer the call from a cached entry (slot `idx`, stored under `key`)."""
        c.cache_status, c.hit, c.hit_key, c.cache_save = "HIT", entry, key, None
        c.hit_fresh = fresh
        c.streamed = entry.streamed
        flow.response = replies.cache_hit(entry, idx, c.meta.request_id)

    def claim(self, c: Capture) -> str | None:
        """The slot a response to be saved will take (c.cache_slot), so that the next identical
        call finds it in memory until the writer has saved it; None when the bucket is full."""
        if not c.cacheable:
            return None
        assert c.cache_save is not None
        keys = c.cache_save.keys()
        slots = self._slots(keys)
        if slots is None:
            return None
        c.cache_slot = cachestore.first_free([e is not None for e in slots[1]])
        return keys[c.cache_slot] if c.cache_slot is not None else None

    def hold(self, key: str, c: Capture, ordinal: int) -> None:
        """Keep the response handed to the writer as record `ordinal` until it is saved."""
        assert c.cache_save is not None
        self.fresh.add(key, c, ordinal, c.cache_save.policy.ttl)

    def settle(self, ordinal: int) -> None:
        self.fresh.settle(ordinal)

    def _slots(self, keys: list[str]) -> tuple[list[Entry | None], list[Entry | None]] | None:
        """A bucket's entries in the file, and the same with the slots the writer has not saved yet
        filled from memory; None when there is no cache or it cannot be read (a miss)."""
        if self.file is None:
            return None
        try:
            stored = self.file.get(keys)
        except Exception:  # an unreadable cache is a miss, never a failed request
            logger.exception("llmtap: cache lookup failed; treating it as a miss")
            return None
        return stored, self.fresh.fill(keys, stored)
