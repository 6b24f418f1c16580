from __future__ import annotations

import itertools
import logging
from types import SimpleNamespace

import pytest

from llmtap.proxy import stream as tee_module
from llmtap.proxy.stream import TAIL_BYTES, StreamTee

from . import samples

# What upstream sends after llmtap injected include_usage, and what the client asked for.
INJECTED = samples.openai_stream(usage="final")
AS_ASKED = samples.openai_stream(usage="none")


def run(t: StreamTee, chunks: list[bytes]) -> bytes:
    """Feed chunks like mitmproxy does (then the final b""); return what the client received."""
    received = b""
    for chunk in chunks:
        out = t(chunk)
        assert out != b"", "a non-empty chunk must never map to b'' (that ends the body)"
        parts = [out] if isinstance(out, bytes) else out
        assert all(isinstance(p, bytes) and p for p in parts), parts
        received += b"".join(parts)
    last = t(b"")
    received += last if isinstance(last, bytes) else b"".join(last)
    assert t.ended
    return received


def test_fixture_streams_differ_only_by_usage() -> None:
    assert b'"usage":null' in INJECTED and b'"choices":[]' in INJECTED
    assert b"usage" not in AS_ASKED
    assert AS_ASKED.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("strip", [False, True])
def test_whole_stream(strip: bool) -> None:
    t = StreamTee(1_000_000, strip_usage_chunk=strip)
    assert run(t, [INJECTED]) == (AS_ASKED if strip else INJECTED)
    assert t.body() == INJECTED
    assert not t.truncated


def test_passthrough_at_every_split_offset() -> None:
    for offset in range(1, len(INJECTED)):
        t = StreamTee(1_000_000)
        assert run(t, [INJECTED[:offset], INJECTED[offset:]]) == INJECTED, f"split at {offset}"
        assert t.body() == INJECTED


def test_passthrough_returns_each_chunk_unchanged() -> None:
    t = StreamTee(1_000_000)
    for chunk in (b"data: {", b'"a":1}\n\n'):
        assert t(chunk) == chunk
    assert t(b"") == b""


def test_strip_usage_at_every_split_offset() -> None:
    for offset in range(1, len(INJECTED)):
        t = StreamTee(1_000_000, strip_usage_chunk=True)
        received = run(t, [INJECTED[:offset], INJECTED[offset:]])
        assert received == AS_ASKED, f"split at {offset}"
        assert t.body() == INJECTED, "the tee keeps what upstream sent, usage chunk included"


@pytest.mark.parametrize("strip", [False, True])
def test_one_byte_chunks(strip: bool) -> None:
    t = StreamTee(1_000_000, strip_usage_chunk=strip)
    received = run(t, [INJECTED[i : i + 1] for i in range(len(INJECTED))])
    assert received == (AS_ASKED if strip else INJECTED)
    assert t.body() == INJECTED
    assert t.total == len(INJECTED)


def test_strip_flushes_an_unterminated_last_event_at_the_end() -> None:
    t = StreamTee(1_000_000, strip_usage_chunk=True)
    assert run(t, [b'data: {"a":1}\n\ndata: [DONE]']) == b'data: {"a":1}\n\ndata: [DONE]'


@pytest.mark.parametrize(
    "event",
    [
        # Azure sends a prompt-filter chunk with no choices and no usage: it is not the usage chunk
        b'data: {"choices":[],"prompt_filter_results":[{"prompt_index":0}]}\n\n',
        # a reply whose text mentions usage keeps it (the quotes are escaped in JSON strings)
        b'data: {"choices":[{"delta":{"content":"{\\"choices\\":[],\\"usage\\":{}}"}}]}\n\n',
    ],
)
def test_strip_keeps_events_that_only_look_like_usage(event: bytes) -> None:
    t = StreamTee(1_000_000, strip_usage_chunk=True)
    assert run(t, [event]) == event


def test_long_stream_keeps_head_and_the_last_event() -> None:
    chunks = samples.openai_chunks("final")
    filler = chunks[1]
    many = [chunks[0], *[filler] * 1500, *chunks[1:]]
    events = [samples.sse(c) for c in many] + [b"data: [DONE]\n\n"]
    stream = b"".join(events)
    assert len(stream) > 100 + TAIL_BYTES

    t = StreamTee(100, strip_usage_chunk=True)
    received = run(t, events)

    assert t.total == len(stream)
    assert t.truncated
    body = t.body()
    assert body == stream[:100] + b"\n\n" + stream[-TAIL_BYTES:]
    assert body.endswith(samples.sse(chunks[-1]) + b"data: [DONE]\n\n")
    assert b'"choices":[]' not in received and len(received) < len(stream)


def test_body_at_the_cap_is_not_truncated() -> None:
    t = StreamTee(10)
    run(t, [b"0123456789", b"abc"])
    assert t.body() == b"0123456789abc"
    assert not t.truncated


def fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count(1000)
    monkeypatch.setattr(tee_module, "time", SimpleNamespace(time=lambda: float(next(ticks))))


@pytest.mark.parametrize(
    "events, first_token_call",
    [
        # OpenAI: the role-only chunk (content "") is not a token
        ([samples.sse(c) for c in samples.openai_chunks("null")], 1),
        # Anthropic: message_start, content_block_start (text ""), ping, then the first text delta
        ([e + b"\n\n" for e in samples.anthropic_stream().split(b"\n\n") if e], 3),
        # Gemini: the first chunk already carries text
        ([e + b"\r\n\r\n" for e in samples.gemini_sse().split(b"\r\n\r\n") if e], 0),
        # Responses API: response.created, then output_text.delta
        ([e + b"\n\n" for e in samples.responses_stream().split(b"\n\n") if e], 1),
    ],
)
def test_first_token_at_is_the_first_content_delta(
    monkeypatch: pytest.MonkeyPatch, events: list[bytes], first_token_call: int
) -> None:
    fake_clock(monkeypatch)
    t = StreamTee(1_000_000)
    run(t, events)
    assert t.first_byte_at == 1000.0
    assert t.first_token_at == 1000.0 + first_token_call


def test_no_first_token_for_a_stream_without_content(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_clock(monkeypatch)
    t = StreamTee(1_000_000)
    run(t, [samples.sse(samples.openai_chunks("none")[0]), b"data: [DONE]\n\n"])
    assert t.first_token_at is None


def test_first_token_split_inside_the_content_field() -> None:
    event = samples.sse({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})
    cut = event.index(b'"Hi"') + 1  # between the opening quote and H
    t = StreamTee(1_000_000)
    run(t, [event[:cut], event[cut:], b"data: [DONE]\n\n"])
    assert t.first_token_at is not None


@pytest.mark.parametrize("strip", [False, True])
def test_an_internal_error_passes_data_through(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, strip: bool
) -> None:
    def boom(self: StreamTee, data: bytes) -> None:
        raise RuntimeError("tee bug")

    monkeypatch.setattr(StreamTee, "_keep", boom)
    t = StreamTee(1_000_000, strip_usage_chunk=strip)
    with caplog.at_level(logging.ERROR, logger="llmtap.proxy.stream"):
        received = run(t, [INJECTED[:50], INJECTED[50:]])
    assert received == INJECTED
    assert t.failed == "stream tee error: RuntimeError('tee bug')"
    assert "passing the rest through unchanged" in caplog.text


def test_an_error_while_stripping_stops_stripping(monkeypatch: pytest.MonkeyPatch) -> None:
    t = StreamTee(1_000_000, strip_usage_chunk=True)
    first = samples.sse(samples.openai_chunks("final")[0])
    rest = INJECTED[len(first) :]
    assert t(first) == [samples.sse(samples.openai_chunks("none")[0])]
    monkeypatch.setattr(tee_module, "client_view", lambda raw: 1 / 0)
    assert b"".join(t(rest)) == rest
    assert t(b"") == b""
    assert t.failed is not None and "ZeroDivisionError" in t.failed


def test_an_error_while_stripping_loses_no_buffered_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    t = StreamTee(1_000_000, strip_usage_chunk=True)
    first_upstream = samples.sse(samples.openai_chunks("final")[0])
    first_client = samples.sse(samples.openai_chunks("none")[0])
    cut = len(first_upstream) + 20  # one whole event plus the start of the next
    received = b"".join(t(INJECTED[:cut]))
    assert received == first_client
    monkeypatch.setattr(tee_module, "client_view", lambda raw: 1 / 0)
    received += b"".join(t(INJECTED[cut:]))
    received += t(b"")
    assert received == first_client + INJECTED[len(first_upstream) :]
