"""Helicone's own loggers log into llmtap: point them at the local API and change nothing else.

The real packages, as a Helicone user has them: `helicone-helpers` (Python, from PyPI) and
`@helicone/helpers` (Node, installed here from the npm registry). Their `HeliconeManualLogger`
posts to `/oai/v1/log`, `/anthropic/v1/log` or `/custom/v1/log` with `providerRequest.url` set to
"custom-model-nopath", Helicone headers on the HTTP request, extra keys in the response JSON, and
streams as JSON lines. Each row must carry the documented response's exact tokens and the cost
genai-prices gives for them, and the user, properties and session sent as headers.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest
from genai_prices import Usage
from helicone_helpers import HeliconeManualLogger

from tests.documented import ALL, Documented
from tests.e2e.conftest import Proxy, node_app

DOCS = {d.name: d for d in ALL}
NINE = Decimal("0.000000001")
NODE_PACKAGES = ("@helicone/helpers@1.8.3",)
COLUMNS = ("provider", "model", "streamed", "status", "input_tokens", "output_tokens", "cache_read_tokens",
           "cost_usd", "user_id", "session_id", "properties", "source", "latency_ms", "ttft_ms",
           "endpoint")  # fmt: skip


def cost(d: Documented, at: datetime) -> Decimal:
    calc = genai_prices.calc_price(
        Usage(**d.usage), d.model, provider_id=d.provider, genai_request_timestamp=at
    )
    return calc.total_price.quantize(NINE)


def rows_of(proxy: Proxy, user: str, n: int = 1) -> list[dict[str, Any]]:
    sql = f"SELECT {', '.join(COLUMNS)}, created_at FROM requests WHERE user_id = ? ORDER BY created_at"
    return proxy.wait_rows(sql, n, [user])


def check(row: dict[str, Any], d: Documented, streamed: bool) -> None:
    assert (row["provider"], row["model"], row["streamed"], row["status"], row["source"]) == (
        d.provider, d.model, streamed, 200, "async"
    )  # fmt: skip
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (
        d.usage["input_tokens"], d.usage["output_tokens"], d.usage["cache_read_tokens"]
    )  # fmt: skip
    assert row["cost_usd"] == cost(d, row["created_at"])


def sse_chunks(d: Documented) -> list[dict[str, Any]]:
    """The documented stream's events as the objects an SDK yields (what the loggers record)."""
    return [json.loads(line[6:]) for line in d.body.decode().splitlines()
            if line.startswith("data: {")]  # fmt: skip


@pytest.fixture
def api(gateway: Proxy) -> Proxy:
    return gateway


def test_python_logger_openai_route(api: Proxy) -> None:
    d = DOCS["openai-chat"]
    logger = HeliconeManualLogger(api_key="sk-helicone-test", logging_endpoint=api.api)
    headers = {"Helicone-User-Id": "py-openai", "Helicone-Property-App": "support-bot",
               "Helicone-Session-Id": "sess-1"}  # fmt: skip

    def operation(recorder: Any) -> str:
        recorder.append_results(json.loads(d.body))
        return "done"

    assert logger.log_request(d.request, operation, additional_headers=headers, provider="openai") == "done"
    (row,) = rows_of(api, "py-openai")
    check(row, d, streamed=False)
    assert (row["session_id"], json.loads(row["properties"]), row["endpoint"]) == (
        "sess-1", {"app": "support-bot"}, "chat"
    )  # fmt: skip


def test_python_logger_anthropic_route(api: Proxy) -> None:
    d = DOCS["anthropic-messages"]
    logger = HeliconeManualLogger(api_key="sk-helicone-test", logging_endpoint=api.api)
    headers = {"Helicone-User-Id": "py-claude"}
    logger.log_request(d.request, lambda r: r.append_results(json.loads(d.body)), headers, "anthropic")
    (row,) = rows_of(api, "py-claude")
    check(row, d, streamed=False)


def test_python_logger_custom_route_stream_builder(api: Proxy) -> None:
    """No provider: the custom route; the model names OpenAI. The builder's chunks are JSON lines."""
    d = DOCS["openai-chat-stream"]
    logger = HeliconeManualLogger(api_key="sk-helicone-test", logging_endpoint=api.api)
    builder = logger.log_builder(d.request, {"Helicone-User-Id": "py-stream"})
    for chunk in sse_chunks(d):
        builder.add_chunk(chunk)
    asyncio.run(builder.send_log())
    (row,) = rows_of(api, "py-stream")
    check(row, d, streamed=True)
    assert row["ttft_ms"] is not None and row["ttft_ms"] >= 0


def test_python_logger_custom_model(api: Proxy) -> None:
    """A model nobody prices, through the custom route: provider `custom`, exact tokens, no cost."""
    logger = HeliconeManualLogger(api_key="sk-helicone-test", logging_endpoint=api.api)
    request = {"model": "my-local-llama", "messages": [{"role": "user", "content": "hi"}]}
    response = {"id": "x1", "object": "chat.completion", "model": "my-local-llama",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}  # fmt: skip
    logger.log_request(request, lambda r: r.append_results(response),
                       additional_headers={"Helicone-User-Id": "py-custom"})  # fmt: skip
    (row,) = rows_of(api, "py-custom")
    assert (row["provider"], row["model"], row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (
        "custom", "my-local-llama", 5, 3, None
    )  # fmt: skip


def test_logger_key_is_checked_only_when_llmtap_has_one(fake: Any, start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy("--set", "llmtap_api_key=team-secret")
    d = DOCS["openai-chat"]
    for key, user in (("wrong", "py-wrong-key"), ("team-secret", "py-right-key")):
        logger = HeliconeManualLogger(api_key=key, logging_endpoint=proxy.api)
        logger.log_request(d.request, lambda r: r.append_results(json.loads(d.body)),
                           additional_headers={"Helicone-User-Id": user}, provider="openai")  # fmt: skip
    (row,) = rows_of(proxy, "py-right-key")
    check(row, d, streamed=False)
    assert proxy.select("SELECT count(*) AS n FROM requests WHERE user_id = 'py-wrong-key'") == [{"n": 0}]


NODE_SCRIPT = """
const { HeliconeManualLogger } = require("@helicone/helpers");
const [endpoint, docs] = [process.argv[2], JSON.parse(require("fs").readFileSync(process.argv[3], "utf8"))];
const logger = new HeliconeManualLogger({ apiKey: "sk-helicone-node", loggingEndpoint: endpoint });
(async () => {
  const record = async (recorder) => { recorder.appendResults(docs.json.response); };
  await logger.logRequest(docs.json.request, record,
    { "Helicone-User-Id": "node-openai", "Helicone-Property-Team": "search" }, "OPENAI");
  await logger.logSingleRequest(docs.stream.request, docs.stream.body,
    { additionalHeaders: { "Helicone-User-Id": "node-stream" }, latencyMs: 1234 });
})();
"""


@pytest.fixture(scope="module")
def node_logger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    app = node_app(tmp_path_factory.mktemp("llmtap-helicone-node"), NODE_PACKAGES)
    (app / "log.js").write_text(NODE_SCRIPT)
    return app


def test_node_logger(api: Proxy, node_logger: Path) -> None:
    chat, stream = DOCS["openai-chat"], DOCS["anthropic-stream"]
    docs = {"json": {"request": chat.request, "response": json.loads(chat.body)},
            "stream": {"request": stream.request, "body": stream.body.decode()}}  # fmt: skip
    (node_logger / "docs.json").write_text(json.dumps(docs))
    done = subprocess.run(["node", "log.js", api.api, "docs.json"], cwd=node_logger, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    (row,) = rows_of(api, "node-openai")
    check(row, chat, streamed=False)
    assert json.loads(row["properties"]) == {"team": "search"}
    (row,) = rows_of(api, "node-stream")
    check(row, stream, streamed=True)
    assert row["latency_ms"] == pytest.approx(1234, abs=0.01)
