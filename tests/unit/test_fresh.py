"""The proxy's memory of responses the writer has not saved yet."""

from __future__ import annotations

import gzip

from llmtap.accounting.entry import Entry
from llmtap.proxy.fresh import FreshEntries

from . import samples

KEYS = ["c1:k/0", "c1:k/1", "c1:k/2"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def at_the_call(max_entries: int = 10, max_bytes: int = 1 << 20) -> FreshEntries:
    """Entries held one second after the sample call, as in the proxy."""
    return FreshEntries(max_entries, max_bytes, clock=lambda: samples.STARTED + 1)


def stored(request_id: str) -> Entry:
    return Entry(request_id, 200, "application/json", False, b"{}")


def test_fills_only_the_slots_the_file_lacks() -> None:
    fresh = at_the_call()
    fresh.add(KEYS[1], samples.capture(), ordinal=1, ttl=60)
    from_file = stored("in-the-file")
    got = fresh.fill(KEYS, [from_file, None, None])
    assert got[0] is from_file and got[2] is None
    assert got[1] is not None and got[1].request_id == samples.capture().meta.request_id
    assert got[1].body == samples.dumps(samples.openai_chat_json())
    assert fresh.fill(KEYS, [None, stored("saved"), None])[1].request_id == "saved", "the file wins"


def test_the_body_is_what_a_replay_sends() -> None:
    plain = samples.dumps(samples.openai_chat_json())
    fresh = at_the_call()
    fresh.add(KEYS[0], samples.capture(response_body=gzip.compress(plain), content_encoding="gzip"), 1, 60)
    stream = samples.capture(
        response_body=samples.openai_stream("final"), streamed=True, strip_usage=True,
        content_type="text/event-stream",
    )  # fmt: skip
    fresh.add(KEYS[1], stream, 2, 60)
    first, second, _ = fresh.fill(KEYS, [None, None, None])
    assert first is not None and first.body == plain
    assert second is not None and second.body == samples.openai_stream("none") and second.streamed
    assert second.content_type == "text/event-stream"


def test_settle_forgets_what_the_writer_has_converted() -> None:
    fresh = at_the_call()
    for ordinal, key in enumerate(KEYS, start=5):
        fresh.add(key, samples.capture(), ordinal, 60)
    fresh.settle(6)
    assert [e is not None for e in fresh.fill(KEYS, [None] * 3)] == [False, False, True]
    fresh.settle(100)
    assert len(fresh) == 0


def test_expired_entries_are_not_served() -> None:
    clock = Clock()
    c = samples.capture()
    clock.now = c.ended + 0.2  # the TTL counts from the response's last byte
    fresh = FreshEntries(10, 1 << 20, clock)
    fresh.add(KEYS[0], c, 1, ttl=1)
    clock.now += 0.5
    assert fresh.fill(KEYS[:1], [None]) != [None]
    clock.now += 0.4
    assert fresh.fill(KEYS[:1], [None]) == [None]


def test_bounded_by_count_and_bytes_oldest_out_first() -> None:
    c = samples.capture()
    size = len(c.response_body) + len(c.request_body)
    fresh = at_the_call(2, 10 * size)
    for ordinal, key in enumerate(KEYS):
        fresh.add(key, c, ordinal, 60)
    assert [e is not None for e in fresh.fill(KEYS, [None] * 3)] == [False, True, True]
    by_bytes = at_the_call(10, 2 * size)
    for ordinal, key in enumerate(KEYS):
        by_bytes.add(key, c, ordinal, 60)
    assert len(by_bytes) == 2
    tiny = at_the_call(10, size - 1)
    tiny.add(KEYS[0], c, 1, 60)
    assert len(tiny) == 0, "larger than the whole bound: not held"
