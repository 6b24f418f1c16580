from __future__ import annotations

import pytest

from llmtap.wire.sse import Event, EventSplitter, iter_events, parse_event

from . import samples

# Each entry is one raw event exactly as EventSplitter must return it (terminator included).
RAW_EVENTS: list[bytes] = [
    # OpenAI chat stream (LF)
    *[e + b"\n\n" for e in samples.openai_stream().split(b"\n\n") if e],
    # comments / keep-alives
    b": ping\n\n",
    b": OPENROUTER PROCESSING\r\n\r\n",
    # Anthropic stream with event: lines (LF)
    *[e + b"\n\n" for e in samples.anthropic_stream().split(b"\n\n") if e],
    # Gemini alt=sse stream (CRLF)
    *[e + b"\r\n\r\n" for e in samples.gemini_sse().split(b"\r\n\r\n") if e],
    # multi-line data, no space after the colon, an id field
    b"event:update\ndata:first line\ndata: second line\nid: 7\n\n",
    # CR-only line endings
    b'data: {"cr":1}\r\r',
    b"event: cr\rdata: a\rdata: b\r\r",
    # mixed terminators inside one event
    b"data: mixed\r\ndata: more\n\r\n",
    b"data: lf-then-cr\n\r",
    # a CR-terminated event last, so the stream ends on a lone CR
    b"data: last\r\r",
]
STREAM = b"".join(RAW_EVENTS)


def split(chunks: list[bytes]) -> list[bytes]:
    splitter = EventSplitter()
    out: list[bytes] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    rest = splitter.flush()
    assert splitter.pending == 0
    return out + ([rest] if rest else [])


def test_whole_stream_splits_into_the_raw_events() -> None:
    assert split([STREAM]) == RAW_EVENTS


def test_split_at_every_offset_yields_the_same_events() -> None:
    for offset in range(1, len(STREAM)):
        events = split([STREAM[:offset], STREAM[offset:]])
        assert events == RAW_EVENTS, f"split at byte {offset}"
        assert b"".join(events) == STREAM


def test_one_byte_chunks_yield_the_same_events() -> None:
    events = split([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert events == RAW_EVENTS


@pytest.mark.parametrize(
    "chunks, pending",
    [
        # a CR may be the first half of a CRLF still in flight: hold the event back
        ([b"data: x\r\n\r"], len(b"data: x\r\n\r")),
        ([b"data: x\n\r"], len(b"data: x\n\r")),
        # one line terminator is not an event boundary
        ([b"data: x\r\n"], len(b"data: x\r\n")),
        ([b"data: x\r"], len(b"data: x\r")),
        # a completed event followed by a partial one
        ([b"data: a\n\ndata: b"], len(b"data: b")),
    ],
)
def test_pending_holds_the_unfinished_tail(chunks: list[bytes], pending: int) -> None:
    splitter = EventSplitter()
    for chunk in chunks:
        splitter.feed(chunk)
    assert splitter.pending == pending


def test_cr_then_lf_in_the_next_chunk_is_one_crlf() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: x\r\n\r") == []
    assert splitter.feed(b"\ndata: y\n\n") == [b"data: x\r\n\r\n", b"data: y\n\n"]


@pytest.mark.parametrize(
    "raw, expected",
    [
        # OpenAI
        (b'data: {"a":1}\n\n', Event("message", '{"a":1}')),
        (b"data: [DONE]\n\n", Event("message", "[DONE]")),
        # Anthropic: the event type comes from the event: line
        (b'event: message_delta\ndata: {"b":2}\n\n', Event("message_delta", '{"b":2}')),
        # Gemini CRLF
        (b'data: {"c":3}\r\n\r\n', Event("message", '{"c":3}')),
        # CR-only
        (b"event: x\rdata: y\r\r", Event("x", "y")),
        # several data lines join with newlines; only one leading space is removed
        (b"data: one\ndata:two\ndata:  three\n\n", Event("message", "one\ntwo\n three")),
        # a data line without a colon is an empty data line (spec)
        (b"data\ndata: x\n\n", Event("message", "\nx")),
        # comments and unknown fields are ignored
        (b": ping\n\n", Event("message", "")),
        (b": c\nid: 4\nretry: 100\ndata: z\n\n", Event("message", "z")),
        # invalid UTF-8 is replaced, not raised
        (b"data: \xff\n\n", Event("message", "\ufffd")),
    ],
)
def test_parse_event(raw: bytes, expected: Event) -> None:
    assert parse_event(raw) == expected


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85"])
def test_parse_event_keeps_unicode_line_separators_inside_data(sep: str) -> None:
    data = '{"candidates":[{"content":{"parts":[{"text":"a' + sep + 'b"}]}}]}'
    assert parse_event(f"data: {data}\n\n".encode()) == Event("message", data)


def test_iter_events_parses_a_trailing_partial_event() -> None:
    body = b'data: {"n":1}\n\nevent: cut\ndata: {"n":2'
    assert list(iter_events(body)) == [Event("message", '{"n":1}'), Event("cut", '{"n":2')]


def test_iter_events_ignores_trailing_whitespace() -> None:
    assert list(iter_events(b'data: {"n":1}\n\n\n')) == [Event("message", '{"n":1}')]


def test_iter_events_of_the_mixed_stream() -> None:
    events = list(iter_events(STREAM))
    assert len(events) == len(RAW_EVENTS)
    assert events[0].data.startswith('{"id":"chatcmpl-AzZ1"')
    assert [e.event for e in events if e.event.startswith("message_")] == [
        "message_start",
        "message_delta",
        "message_stop",
    ]
    assert Event("update", "first line\nsecond line") in events
    assert Event("cr", "a\nb") in events
    assert events[-1] == Event("message", "last")
