"""Fake LLM provider: a local stand-in for demos and tests, not a real model.

It speaks the exact OpenAI, Anthropic and Gemini wire formats (JSON and SSE), so the real
SDKs and a proxy in between see what the real services would send, with no network, keys
or cost. Request headers script each reply (they pass through a proxy unchanged):

- ``x-fake-reply``: assistant text (streams send one delta per word).
- ``x-fake-usage``: JSON overriding ``input``, ``output``, ``cached``, ``cache_write``,
  ``reasoning`` (neutral names; each wire format maps them to its own fields).
- ``x-fake-status``: an error status (>= 400) answered in the provider's error shape.
- ``x-fake-delay-ms``: sleep before each streamed event (time-to-first-token, aborts).
- ``x-fake-model``: the model named in the reply (default: the requested one).
- ``x-fake-fail`` with ``x-fake-key``: a script such as ``500,429,reset`` for successive calls
  with that key (a status, or ``reset`` to drop the connection); later calls succeed.
- ``x-fake-retry-after``: a ``Retry-After`` header on error replies.
- ``x-fake-encoding``: ``gzip``, ``br``, ``zstd`` or ``identity`` for JSON replies, used when the
  request's ``accept-encoding`` allows it.
- ``x-fake-replay``: answer with one of the bodies given as ``FakeProvider(replies=...)`` (a
  recorded or documented response: JSON, or SSE sent event by event).
- ``x-fake-cost``: the charge a host that reports it (OpenRouter) puts in ``usage.cost``.
- a path under ``/_host/<hostname>/`` answers in that OpenAI-compatible host's dialect (fakehosts).

Like the real APIs, JSON replies (errors included) are gzip-compressed whenever the request's
``accept-encoding`` allows it (the SDKs send ``gzip, deflate, br...``), and every streamed event
goes out split across two transport chunks, so a proxy must reassemble events and decode bodies.

Every request is recorded in ``FakeProvider.received`` so tests can check what arrived.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, Self
from urllib.parse import parse_qs, urlsplit

from mitmproxy.net import encoding as net_encoding

from llmtap.demo import fakehosts

JSON = dict[str, Any]
# A reply is a JSON object (200), or (content type, bytes) for a plain body, or
# (content type, iterator of chunks) for a body streamed with chunked encoding.
Reply = JSON | tuple[str, bytes] | tuple[str, Iterator[bytes]]

DEFAULT_REPLY = "Hello from the fake provider!"
SSE_TYPE = "text/event-stream"
USAGE_KEYS = ("input", "output", "cached", "cache_write", "reasoning")
GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass
class Received:
    """One request as it reached the fake, for asserting what a proxy forwarded."""

    method: str
    path: str  # including the query string
    headers: dict[str, str]  # names lowercased
    body: bytes


@dataclass
class Call:
    """A parsed request plus the reply its x-fake-* headers scripted."""

    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw: bytes
    body: JSON
    model: str
    text: str
    usage: dict[str, int]
    dialect: fakehosts.Dialect = fakehosts.OPENAI  # the OpenAI-compatible host it answers as
    cost: float | None = None  # x-fake-cost: what a host that reports its charge says it charged

    @property
    def words(self) -> list[str]:
        """Deltas of one word plus its trailing whitespace, so they join back to the text."""
        return re.findall(r"\s*\S+\s*", self.text)

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def include_usage(self) -> bool:
        """OpenAI sends a usage chunk only when the client asks for it."""
        options = self.body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True


def dumps(obj: Any) -> str:
    """Compact JSON, as the real APIs send it, so proxies see realistic bytes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse(data: JSON | str, event: str | None = None, eol: str = "\n") -> bytes:
    """One server-sent event; Gemini terminates lines with CRLF, the others with LF."""
    payload = data if isinstance(data, str) else dumps(data)
    head = f"event: {event}{eol}" if event else ""
    return f"{head}data: {payload}{eol}{eol}".encode()


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def default_usage(raw: bytes, text: str) -> dict[str, int]:
    """Deterministic token counts, so tests can predict them without a tokenizer."""
    return {
        "input": 10 + len(raw) // 50,
        "output": len(text.split()) + 1,
        "cached": 0,
        "cache_write": 0,
        "reasoning": 0,
    }


def wire_usage(fmt: str, u: dict[str, int]) -> JSON:
    """Map the neutral usage numbers onto one provider's usage object."""
    i, o, c, w, r = (u[k] for k in USAGE_KEYS)
    if fmt == "openai":
        return fakehosts.usage(fakehosts.OPENAI, u, None)
    if fmt == "embeddings":
        return {"prompt_tokens": i, "total_tokens": i}
    if fmt == "responses":
        details = {"cached_tokens": c, "cache_write_tokens": w}
        return {
            "input_tokens": i,
            "input_tokens_details": details,
            "output_tokens": o,
            "output_tokens_details": {"reasoning_tokens": r},
            "total_tokens": i + o,
        }
    if fmt == "anthropic":  # Anthropic's input_tokens excludes cache reads and writes
        return {
            "input_tokens": max(i - c - w, 0),
            "cache_creation_input_tokens": w,
            "cache_read_input_tokens": c,
            "output_tokens": o,
        }
    meta = {"promptTokenCount": i, "candidatesTokenCount": o - r, "totalTokenCount": i + o}
    if c:
        meta["cachedContentTokenCount"] = c
    if r:
        meta["thoughtsTokenCount"] = r
    return meta


def error_body(fmt: str, status: int, message: str) -> JSON:
    """The error JSON each provider sends, so SDKs raise their own exception types."""
    if fmt == "anthropic":
        kind = (
            "rate_limit_error" if status == 429 else "api_error" if status >= 500 else "invalid_request_error"
        )
        return {"type": "error", "error": {"type": kind, "message": message}}
    if fmt == "gemini":
        name = GEMINI_STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
        return {"error": {"code": status, "message": message, "status": name}}
    kind, code = (
        ("requests", "rate_limit_exceeded")
        if status == 429
        else ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# --- OpenAI wire format ---------------------------------------------------------------


def openai_stream(call: Call, base: JSON, choices: list[list[JSON]]) -> Reply:
    """Chunks shared by chat and legacy completions, with the usage where the host puts it
    (OpenAI: a last `choices: []` chunk, only when include_usage is set; see fakehosts)."""
    d = call.dialect
    usage = fakehosts.usage(d, call.usage, call.cost)
    nulls: JSON = {"usage": None} if call.include_usage and d.null_usage else {}

    def events() -> Iterator[bytes]:
        if d.comment:
            yield d.comment
        if (first := fakehosts.first_chunk(d)) is not None:
            yield sse({**first, **nulls})
        for k, chunk_choices in enumerate(choices):
            extra = dict(nulls)
            if k == len(choices) - 1 and d.stream_usage == "finish":
                extra["usage"] = usage
            elif k == len(choices) - 1 and d.stream_usage == "x_groq":
                extra["x_groq"] = {"id": "req_01jadadp0femyae9kav1gpkhe8", "usage": usage}
            yield sse({**base, "choices": chunk_choices, **extra})
        if d.stream_usage == "final" or (call.include_usage and d.stream_usage in ("asked", "x_groq")):
            yield sse({**base, "choices": [], "usage": usage})
        yield sse("[DONE]")

    return SSE_TYPE, events()


def openai_chat(call: Call) -> Reply:
    kind = "chat.completion.chunk" if call.stream else "chat.completion"
    base = {
        "id": new_id("chatcmpl-"),
        "object": kind,
        "created": int(time.time()),
        "model": call.model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    if not call.stream:
        message = {"role": "assistant", "content": call.text, "refusal": None, "annotations": []}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        usage = fakehosts.usage(call.dialect, call.usage, call.cost)
        return {**base, "choices": [choice], "usage": usage, **fakehosts.extra_fields(call.dialect)}
    deltas = [{"role": "assistant", "content": "", "refusal": None}]
    deltas += [{"content": word} for word in call.words]
    choices = [[{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}] for d in deltas]
    choices.append([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
    return openai_stream(call, base, choices)


def openai_completion(call: Call) -> Reply:
    base = {
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": call.model,
        "system_fingerprint": "fp_fake",
    }

    def choice(text: str, finish: str | None) -> list[JSON]:
        return [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]

    if not call.stream:
        usage = wire_usage("openai", call.usage)
        return {**base, "choices": choice(call.text, "stop"), "usage": usage}
    return openai_stream(call, base, [choice(w, None) for w in call.words] + [choice("", "stop")])


def embedding(item: Any, as_base64: bool) -> list[float] | str:
    """Eight floats derived from the input; base64 float32 is what the SDK asks for by default."""
    digest = hashlib.sha256(dumps(item).encode()).digest()
    floats = [round(b / 127.5 - 1, 6) for b in digest[:8]]
    return base64.b64encode(struct.pack("<8f", *floats)).decode() if as_base64 else floats


def openai_embeddings(call: Call) -> Reply:
    raw = call.body.get("input", "")
    single = not isinstance(raw, list) or all(isinstance(x, int) for x in raw)
    as_base64 = call.body.get("encoding_format") == "base64"
    data = [
        {"object": "embedding", "index": i, "embedding": embedding(x, as_base64)}
        for i, x in enumerate([raw] if single else raw)
    ]
    return {
        "object": "list",
        "data": data,
        "model": call.model,
        "usage": wire_usage("embeddings", call.usage),
    }


def openai_responses(call: Call) -> Reply:
    created, rid, mid = int(time.time()), new_id("resp_"), new_id("msg_")
    part = {"type": "output_text", "text": call.text, "annotations": []}
    item = {"type": "message", "id": mid, "status": "completed", "role": "assistant", "content": [part]}

    def response(status: str, output: list[JSON], usage: JSON | None) -> JSON:
        return {
            "id": rid,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": call.body.get("instructions"),
            "max_output_tokens": call.body.get("max_output_tokens"),
            "model": call.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": {},
        }

    final = response("completed", [item], wire_usage("responses", call.usage))
    if not call.stream:
        return final
    return SSE_TYPE, responses_events(call, response("in_progress", [], None), final)


def responses_events(call: Call, pending: JSON, final: JSON) -> Iterator[bytes]:
    """The Responses API event sequence for one text message; usage only at the end."""
    seq = itertools.count()
    item = final["output"][0]
    part = item["content"][0]
    at = {"item_id": item["id"], "output_index": 0, "content_index": 0}

    def ev(kind: str, **fields: Any) -> bytes:
        return sse({"type": kind, "sequence_number": next(seq), **fields}, event=kind)

    yield ev("response.created", response=pending)
    yield ev("response.in_progress", response=pending)
    yield ev(
        "response.output_item.added", output_index=0, item={**item, "status": "in_progress", "content": []}
    )
    yield ev("response.content_part.added", **at, part={**part, "text": ""})
    for word in call.words:
        yield ev("response.output_text.delta", **at, delta=word, logprobs=[])
    yield ev("response.output_text.done", **at, text=call.text, logprobs=[])
    yield ev("response.content_part.done", **at, part=part)
    yield ev("response.output_item.done", output_index=0, item=item)
    yield ev("response.completed", response=final)


# --- Anthropic and Gemini wire formats --------------------------------------------------


def anthropic_messages(call: Call) -> Reply:
    usage = wire_usage("anthropic", call.usage)
    message = {"id": new_id("msg_"), "type": "message", "role": "assistant", "model": call.model}
    if not call.stream:
        return {
            **message,
            "content": [{"type": "text", "text": call.text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    return SSE_TYPE, anthropic_events(call, start, usage["output_tokens"])


def anthropic_events(call: Call, start: JSON, output_tokens: int) -> Iterator[bytes]:
    def ev(kind: str, **fields: Any) -> bytes:
        return sse({"type": kind, **fields}, event=kind)

    yield ev("message_start", message=start)
    yield ev("content_block_start", index=0, content_block={"type": "text", "text": ""})
    yield ev("ping")
    for word in call.words:
        yield ev("content_block_delta", index=0, delta={"type": "text_delta", "text": word})
    yield ev("content_block_stop", index=0)
    yield ev(
        "message_delta",
        delta={"stop_reason": "end_turn", "stop_sequence": None},
        usage={"output_tokens": output_tokens},
    )
    yield ev("message_stop")


def gemini_chunk(call: Call, text: str, last: bool, response_id: str) -> JSON:
    """A GenerateContentResponse; streams carry full usage only on the last chunk."""
    meta = wire_usage("gemini", call.usage)
    candidate: JSON = {"content": {"parts": [{"text": text}], "role": "model"}}
    if last:
        candidate["finishReason"] = "STOP"
    candidate["index"] = 0
    return {
        "candidates": [candidate],
        "usageMetadata": meta if last else {"promptTokenCount": meta["promptTokenCount"]},
        "modelVersion": call.model,
        "responseId": response_id,
    }


def gemini_generate(call: Call) -> Reply:
    return gemini_chunk(call, call.text, True, new_id(""))


def gemini_stream(call: Call) -> Reply:
    """SSE with alt=sse (CRLF framed), otherwise a JSON array streamed element by element."""
    words, rid = call.words or [""], new_id("")
    chunks = [gemini_chunk(call, w, i == len(words) - 1, rid) for i, w in enumerate(words)]
    if "sse" in call.query.get("alt", []):
        return SSE_TYPE, (sse(c, eol="\r\n") for c in chunks)
    last = len(chunks) - 1
    return "application/json", (
        (("[" if i == 0 else ",\r\n") + dumps(c) + ("]" if i == last else "")).encode()
        for i, c in enumerate(chunks)
    )


# --- Non-LLM endpoints and routing --------------------------------------------------------


def plain(call: Call) -> Reply:
    return "text/plain", b"plain body"


def echo(call: Call) -> Reply:
    return {
        "method": call.method,
        "path": call.path,
        "headers": call.headers,
        "body": call.raw.decode("utf-8", "replace"),
    }


def some_bytes(call: Call) -> Reply:
    """Deterministic binary data, for checking that non-LLM traffic passes untouched."""
    n = int(call.path.rsplit("/", 1)[1])
    return "application/octet-stream", (bytes(range(256)) * (n // 256 + 1))[:n]


class Route(NamedTuple):
    endpoint: Callable[[Call], Reply]
    fmt: str  # which provider's error shape to use
    model: str | None = None  # model named by the path (Azure deployment, Gemini)


OPENAI_PREFIXES = ("/v1", "", "/openai/v1", "/api/v1", "/inference/v1")
OPENAI_ENDPOINTS = {
    "/chat/completions": openai_chat,
    "/completions": openai_completion,
    "/embeddings": openai_embeddings,
    "/responses": openai_responses,
}
AZURE_PATH = re.compile(r"/openai/deployments/([^/]+)(/chat/completions|/completions|/embeddings)")
GEMINI_PATH = re.compile(r"/v1(?:beta)?/models/([^/:]+):(generateContent|streamGenerateContent)")
BYTES_PATH = re.compile(r"/bytes/\d+")


def route(method: str, path: str) -> Route | None:
    """Exact path matching, so unexpected paths show up as 404s in tests."""
    if method == "GET" and path == "/plain":
        return Route(plain, "openai")
    if method == "GET" and BYTES_PATH.fullmatch(path):
        return Route(some_bytes, "openai")
    if path == "/echo" and method in ("GET", "POST"):
        return Route(echo, "openai")
    if method != "POST":
        return None
    if path == "/v1/messages":
        return Route(anthropic_messages, "anthropic")
    if m := GEMINI_PATH.fullmatch(path):
        endpoint = gemini_generate if m[2] == "generateContent" else gemini_stream
        return Route(endpoint, "gemini", m[1])
    if m := AZURE_PATH.fullmatch(path):
        return Route(OPENAI_ENDPOINTS[m[2]], "openai", m[1])
    for prefix in OPENAI_PREFIXES:
        if path.startswith(prefix) and (endpoint := OPENAI_ENDPOINTS.get(path[len(prefix) :])):
            return Route(endpoint, "openai")
    return None


# --- HTTP plumbing ----------------------------------------------------------------------------


def negotiate(accept: str, wanted: str | None) -> str:
    """The content-encoding of a JSON reply: `wanted` (x-fake-encoding) if the client accepts it,
    else gzip if accepted (what the real APIs send the SDKs), else none."""
    accepted = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    for coding in (wanted, "gzip"):
        if coding and (coding == "identity" or coding in accepted):
            return coding
    return "identity"


def header_int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


def parse_json(raw: bytes) -> JSON:
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class Handler(BaseHTTPRequestHandler):
    """Serves one connection: HTTP/1.1 keep-alive, Content-Length or chunked bodies."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out separately: no 40 ms Nagle stall
    server: _Server
    asked: dict[str, str]  # the current request's headers, lowercased

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log; tests and demos have their own output."""

    def dispatch(self) -> None:
        raw = self.read_body()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.server.provider.record(Received(self.command, self.path, headers, raw))
        self.asked = headers
        try:
            self.respond(raw, headers)
        except ConnectionError:  # client went away, e.g. aborted a stream
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = dispatch

    def read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() != "chunked":
            return self.rfile.read(header_int(self.headers.get("content-length")))
        out = bytearray()  # a chunked request body; trailers are skipped
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            out += self.rfile.read(size + 2)[:size]
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        return bytes(out)

    def respond(self, raw: bytes, headers: dict[str, str]) -> None:
        url = urlsplit(self.path)
        dialect, path = fakehosts.split(url.path)
        found = route(self.command, path)
        if found is None:
            message = f"fake provider has no route for {self.command} {url.path}"
            return self.send_json(404, error_body("openai", 404, message))
        scripted = self.server.provider.scripted_outcome(headers)
        if scripted == "reset":
            return self.reset()
        status = header_int(scripted or headers.get("x-fake-status"))
        if status >= 400:
            message = f"fake error {status} requested by x-fake-status / x-fake-fail"
            extra = {"retry-after": headers["x-fake-retry-after"]} if "x-fake-retry-after" in headers else {}
            return self.send_json(status, error_body(found.fmt, status, message), extra)
        if (name := headers.get("x-fake-replay")) is not None:
            return self.replay(name)
        call = self.make_call(path, url.query, headers, raw, found.model)
        call.dialect = dialect
        if dialect.refuses_stream_options and "stream_options" in call.body:
            return self.send_json(422, fakehosts.refusal())
        reply = found.endpoint(call)
        if isinstance(reply, dict):
            return self.send_json(200, reply)
        content_type, payload = reply
        if isinstance(payload, bytes):
            return self.send_body(200, content_type, payload)
        self.send_stream(content_type, payload, header_int(headers.get("x-fake-delay-ms")) / 1000)

    def make_call(
        self, path: str, query: str, headers: dict[str, str], raw: bytes, path_model: str | None
    ) -> Call:
        """Apply the x-fake-* headers to the defaults."""
        body = parse_json(raw)
        reply = headers.get("x-fake-reply", DEFAULT_REPLY)
        text = reply.encode("latin-1").decode("utf-8", "replace")  # http.server decoded latin-1
        usage = default_usage(raw, text)
        overrides = parse_json(headers.get("x-fake-usage", "").encode())
        usage.update(
            {k: int(v) for k, v in overrides.items() if k in USAGE_KEYS and isinstance(v, int | float)}
        )
        model = headers.get("x-fake-model") or body.get("model") or path_model or "fake-model"
        call = Call(self.command, path, parse_qs(query), headers, raw, body, str(model), text, usage)
        if "x-fake-cost" in headers:
            call.cost = float(headers["x-fake-cost"])
        return call

    def reset(self) -> None:
        """Drop the connection with a TCP reset and no response (x-fake-fail: reset)."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def replay(self, name: str) -> None:
        content_type, body = self.server.provider.replies[name]
        if content_type != SSE_TYPE:
            return self.send_json_bytes(200, body)
        events = re.findall(rb".*?(?:\r\n\r\n|\n\n)|.+$", body, re.S)
        self.send_stream(content_type, iter(events), 0.0)

    def send_json(self, status: int, doc: JSON, extra: dict[str, str] | None = None) -> None:
        self.send_json_bytes(status, dumps(doc).encode(), extra)

    def send_json_bytes(self, status: int, data: bytes, extra: dict[str, str] | None = None) -> None:
        coding = negotiate(self.asked.get("accept-encoding", ""), self.asked.get("x-fake-encoding"))
        if coding != "identity":
            data = net_encoding.encode(data, coding)
            extra = {**(extra or {}), "content-encoding": coding, "vary": "Accept-Encoding"}
        self.send_body(status, "application/json", data, extra)

    def send_body(
        self, status: int, content_type: str, data: bytes, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_stream(self, content_type: str, chunks: Iterator[bytes], delay: float) -> None:
        """One HTTP chunk per event, flushed, so a proxy in between sees them arrive over time."""
        self.send_response(200)
        self.send_header("content-type", content_type)
        if content_type == SSE_TYPE:
            self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for chunk in chunks:
            if delay > 0:
                time.sleep(delay)
            half = len(chunk) // 2  # mid-event: inside the JSON of `data:` lines
            for piece in (chunk[:half], chunk[half:]) if half else (chunk,):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], provider: FakeProvider) -> None:
        self.provider = provider
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up (aborted streams, pooled connections) is normal, not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class FakeProvider:
    """The fake provider server; ``with FakeProvider() as fp:`` serves on a free port."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, replies: dict[str, tuple[str, bytes]] | None = None
    ) -> None:
        self.host = host
        self.port = port  # the real port once started, if 0 was asked for
        self.replies = replies or {}  # x-fake-replay name -> (content type, body)
        self.received: list[Received] = []
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Bind and serve in a daemon thread, so a forgotten stop() never blocks exit."""
        if self._server is None:
            self._server = _Server((self.host, self.port), self)
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name=f"fakeprovider-{self.port}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def record(self, request: Received) -> None:
        with self._lock:
            self.received.append(request)

    def scripted_outcome(self, headers: dict[str, str]) -> str | None:
        """`x-fake-fail: 500,429,reset` with `x-fake-key: K`: the n-th call with key K gets the n-th
        outcome (a status, or `reset` for a dropped connection); later calls succeed."""
        script = headers.get("x-fake-fail")
        if not script:
            return None
        key = headers.get("x-fake-key", "")
        with self._lock:
            n = self._attempts.get(key, 0)
            self._attempts[key] = n + 1
        outcomes = [o.strip() for o in script.split(",") if o.strip()]
        return outcomes[n] if n < len(outcomes) else None

    def clear(self) -> None:
        with self._lock:
            self.received.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main() -> None:
    """Run in the foreground, e.g. as the upstream for a demo of the proxy."""
    parser = argparse.ArgumentParser(
        prog="python -m llmtap.demo.fakeprovider", description="Fake LLM provider (a stand-in, not a model)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    with FakeProvider(args.host, args.port) as fp:
        print(f"fake provider listening at {fp.url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
