"""Cost in USD, exact to the Decimal, from the genai-prices bundled snapshot.

Policy: a cost the provider reported (OpenRouter `usage.cost`) wins; otherwise genai-prices prices
the usage at the request's own timestamp (prices change over time). A row whose price cannot be
known gets `cost_usd = NULL` and the reason in `cost_note`, never 0. The bundled snapshot is used
as is: llmtap never starts genai-prices' network auto-update.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import genai_prices
import genai_prices.types

from llmtap.accounting.usage import Tokens

VERSION = genai_prices.__version__
_QUANTUM = Decimal("0.000000001")  # DECIMAL(18, 9)


@dataclass(frozen=True, slots=True)
class Cost:
    usd: Decimal | None
    note: str | None


def price(tokens: Tokens, model: str | None, price_id: str | None, provider: str, at: datetime) -> Cost:
    if tokens.provider_cost is not None:
        return Cost(tokens.provider_cost.quantize(_QUANTUM), f"reported by {provider}")
    if tokens.usage is None:
        return Cost(None, tokens.note or "no usage in response")
    if price_id is None:
        return Cost(None, f"no price source for provider {provider!r}")
    if not model:
        return Cost(None, "no model named in request or response")
    tier = tokens.service_tier
    try:
        calc = genai_prices.calc_price(
            tokens.usage, model, provider_id=price_id, genai_request_timestamp=at,
            price_context={"service_tier": tier} if tier else None,
        )  # fmt: skip
    except LookupError:
        return Cost(None, f"model {model!r} of provider {price_id!r} not in genai-prices {VERSION}")
    except Exception as e:
        return Cost(None, f"pricing failed: {e}")
    notes = [tokens.note] if tokens.source in ("estimated", "partial") and tokens.note else []
    if tier and not _has_tier(calc, tier, at):
        notes.append(
            f"priced at the default tier: genai-prices {VERSION} has no {tier!r} price for {calc.model.id}"
        )
    return Cost(calc.total_price.quantize(_QUANTUM), "; ".join(notes) or None)


def _has_tier(calc: genai_prices.types.PriceCalculation, tier: str, at: datetime) -> bool:
    """Whether genai-prices priced the call at `tier`'s own price (a variant of the model's prices
    for that service tier, in force at the request's date, at the provider that priced it)."""
    if not any(calc.model is m for m in calc.provider.models):
        return False  # found at another provider: genai-prices applies no variant then
    return any(
        v.when.get("service_tier") == tier and (v.constraint is None or v.constraint.active(at))
        for v in calc.model.price_variants or ()
    )
