from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import genai_prices
import pytest
from genai_prices import Usage

from llmtap.accounting.pricing import VERSION, Cost, price
from llmtap.accounting.usage import Tokens

AT = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
NINE = Decimal("0.000000001")


def reported(**usage: int) -> Tokens:
    return Tokens(usage=Usage(**usage), source="response")


@pytest.mark.parametrize(
    "usage, model, price_id",
    [
        # OpenAI with cached and reasoning tokens
        (
            dict(input_tokens=1200, cache_read_tokens=1024, output_tokens=300, output_reasoning_tokens=128),
            "gpt-4o-2024-08-06", "openai",
        ),
        (dict(input_tokens=19, output_tokens=3), "gpt-4o-mini", "openai"),
        # Anthropic with cache reads and writes
        (
            dict(input_tokens=600, cache_read_tokens=300, cache_write_tokens=200, output_tokens=50),
            "claude-3-5-sonnet-20241022", "anthropic",
        ),
        # Gemini
        (dict(input_tokens=8, output_tokens=12), "gemini-1.5-flash-002", "google"),
    ],
)  # fmt: skip
def test_known_model_is_priced_by_genai_prices(usage: dict[str, int], model: str, price_id: str) -> None:
    expected = genai_prices.calc_price(
        Usage(**usage), model, provider_id=price_id, genai_request_timestamp=AT
    ).total_price
    cost = price(reported(**usage), model, price_id, price_id, AT)
    assert cost == Cost(expected.quantize(NINE), None)
    assert cost.usd is not None and cost.usd.as_tuple().exponent == -9


def test_gpt_4o_price_by_hand() -> None:
    """Independent of genai-prices' arithmetic: $2.50/M input, $1.25/M cached, $10/M output."""
    tokens = reported(input_tokens=1200, cache_read_tokens=1024, output_tokens=300)
    expected = (176 * Decimal("2.50") + 1024 * Decimal("1.25") + 300 * Decimal("10")) / 1_000_000
    assert price(tokens, "gpt-4o-2024-08-06", "openai", "openai", AT).usd == expected


def test_unknown_model_has_no_cost_and_names_the_model() -> None:
    cost = price(reported(input_tokens=10, output_tokens=5), "my-finetune-v9", "openai", "openai", AT)
    assert cost == Cost(None, f"model 'my-finetune-v9' of provider 'openai' not in genai-prices {VERSION}")


@pytest.mark.parametrize(
    "provider_cost, expected",
    [
        (Decimal("0.000213"), Decimal("0.000213000")),
        # quantized to DECIMAL(18, 9), half-even
        (Decimal("0.0000000123456"), Decimal("0.000000012")),
        (Decimal("0.0000000125"), Decimal("0.000000012")),
        (Decimal("0"), Decimal("0E-9")),
    ],
)
def test_provider_cost_wins(provider_cost: Decimal, expected: Decimal) -> None:
    tokens = Tokens(
        usage=Usage(input_tokens=14, output_tokens=163), source="response", provider_cost=provider_cost
    )
    cost = price(tokens, "openai/gpt-4o", "openrouter", "openrouter", AT)
    assert cost == Cost(expected, "reported by openrouter")
    assert cost.usd is not None and cost.usd.as_tuple().exponent == -9


def test_provider_cost_wins_even_for_an_unknown_model() -> None:
    tokens = Tokens(usage=None, provider_cost=Decimal("0.5"))
    assert price(tokens, None, None, "my-gateway", AT) == Cost(
        Decimal("0.500000000"), "reported by my-gateway"
    )


@pytest.mark.parametrize(
    "tokens, model, price_id, note",
    [
        # no price source: a self-hosted provider from rules.yaml
        (reported(input_tokens=10, output_tokens=5), "llama3", None, "no price source for provider 'vllm'"),
        # no model anywhere
        (reported(input_tokens=10, output_tokens=5), None, "openai", "no model named in request or response"),
        (reported(input_tokens=10, output_tokens=5), "", "openai", "no model named in request or response"),
        # no usage: the accounting note is kept
        (Tokens(note="no usage in response (boom)"), "gpt-4o", "openai", "no usage in response (boom)"),
        (Tokens(), "gpt-4o", "openai", "no usage in response"),
    ],
)
def test_cost_unknown_is_null_with_a_reason(
    tokens: Tokens, model: str | None, price_id: str | None, note: str
) -> None:
    assert price(tokens, model, price_id, "vllm", AT) == Cost(None, note)


def test_estimated_usage_is_priced_and_says_so() -> None:
    note = "tokens estimated (chars/4 heuristic): the response reported no final usage"
    tokens = Tokens(usage=Usage(input_tokens=5, output_tokens=3), source="estimated", note=note)
    cost = price(tokens, "gpt-4o-mini", "openai", "openai", AT)
    expected = genai_prices.calc_price(
        Usage(input_tokens=5, output_tokens=3), "gpt-4o-mini", provider_id="openai"
    )
    assert cost == Cost(expected.total_price.quantize(NINE), note)


def test_pricing_failure_is_a_note_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("Missing usage for cache_read_tokens")

    monkeypatch.setattr(genai_prices, "calc_price", broken)
    cost = price(reported(input_tokens=1), "gpt-4o", "openai", "openai", AT)
    assert cost == Cost(None, "pricing failed: Missing usage for cache_read_tokens")


def test_version_is_the_installed_genai_prices() -> None:
    assert VERSION == genai_prices.__version__


TIERED_AT = datetime(2026, 11, 1, tzinfo=UTC)  # genai-prices' tier prices start on 2026-10-12


@pytest.mark.parametrize(
    "model, tier",
    [("gpt-4o-mini", "priority"), ("gpt-5-mini", "flex")],
)
def test_a_service_tier_is_priced_at_its_own_price(model: str, tier: str) -> None:
    usage = Usage(input_tokens=10_000, cache_read_tokens=2_000, output_tokens=1_000)
    tokens = Tokens(usage=usage, source="response", service_tier=tier)
    standard = genai_prices.calc_price(usage, model, provider_id="openai", genai_request_timestamp=TIERED_AT)
    tiered = genai_prices.calc_price(
        usage,
        model,
        provider_id="openai",
        genai_request_timestamp=TIERED_AT,
        price_context={"service_tier": tier},
    )
    assert tiered.total_price != standard.total_price, "the fixture must tell the two apart"
    assert price(tokens, model, "openai", "openai", TIERED_AT) == Cost(
        tiered.total_price.quantize(NINE), None
    )


def test_a_tier_genai_prices_has_no_price_for_is_priced_at_the_default_and_says_so() -> None:
    usage = Usage(input_tokens=10_000, output_tokens=1_000)
    tokens = Tokens(usage=usage, source="response", service_tier="flex")
    standard = genai_prices.calc_price(
        usage, "gpt-4o-mini", provider_id="openai", genai_request_timestamp=TIERED_AT
    )
    assert price(tokens, "gpt-4o-mini", "openai", "openai", TIERED_AT) == Cost(
        standard.total_price.quantize(NINE),
        f"priced at the default tier: genai-prices {VERSION} has no 'flex' price for gpt-4o-mini",
    )
