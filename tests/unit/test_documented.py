"""Every documented provider response (tests/documented.py) becomes a row with the exact tokens it
reports and the exact cost genai-prices gives for them, computed here independently."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import genai_prices
import pytest
from genai_prices import Usage

from llmtap.accounting.record import COLUMNS, Capture, to_row
from llmtap.wire import providers
from llmtap.wire.helicone import CallMeta
from tests.documented import ALL, Documented, dumps

NINE = Decimal("0.000000001")


def capture_of(d: Documented, started: float) -> Capture:
    path = d.path
    found = providers.detect(d.host, 443, path, {}, reverse=False)
    assert found is not None, d.host
    return Capture(
        meta=CallMeta(request_id="6f1c1d2e-1111-4222-8333-444455556666"), provider=found.name, api=found.api,
        price_id=found.price_id, inferred=False, endpoint=providers.endpoint(found.api, path), host=d.host,
        method="POST", path=path, started=started, request_headers={}, request_body=dumps(d.request),
        streamed=d.streamed, status=200, response_body=d.body, content_type=d.content_type, latency_ms=120.0,
    )  # fmt: skip


def expected_cost(d: Documented, at: datetime) -> Decimal | None:
    if d.reported_cost is not None:
        return d.reported_cost.quantize(NINE)
    if not d.priced:
        return None
    context = {"service_tier": d.service_tier} if d.service_tier else None
    calc = genai_prices.calc_price(
        Usage(**d.usage), d.model, provider_id=d.provider, genai_request_timestamp=at, price_context=context
    )
    return calc.total_price.quantize(NINE)


@pytest.mark.parametrize("d", ALL, ids=[d.name for d in ALL])
def test_exact_tokens_and_cost(d: Documented) -> None:
    started = time.time() - 60
    row = dict(zip(COLUMNS, to_row(capture_of(d, started)), strict=True))
    u = d.usage
    assert (row["provider"], row["model"], row["usage_source"]) == (d.provider, d.model, "response")
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"],
            row["reasoning_tokens"]) == (u["input_tokens"], u["output_tokens"], u["cache_read_tokens"],
                                         u["cache_write_tokens"], u["output_reasoning_tokens"])  # fmt: skip
    assert row["cost_usd"] == expected_cost(d, datetime.fromtimestamp(started, UTC)), row["cost_note"]
    if not d.priced:
        assert row["cost_note"] == f"model {d.model!r} of provider {d.provider!r} not in genai-prices " + (
            genai_prices.__version__
        )
