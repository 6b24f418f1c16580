"""What OpenAI-compatible hosts report beyond the usage genai-prices maps for them.

genai-prices reads each host's usage with that host's own extractor when it has one (usage.py:
Groq's, DeepSeek's, Mistral's, OpenRouter's, x.ai's, Fireworks', Azure's), else with OpenAI's. The
few fields it does not map are read here, from each host's API reference:

- DeepSeek reports its context-cache hits as `usage.prompt_cache_hit_tokens` (`prompt_tokens` is
  hits + misses), and newer responses repeat them in `prompt_tokens_details.cached_tokens`
  (https://api-docs.deepseek.com/api/create-chat-completion): the first is read when only it is there.
- Together puts `cached_tokens` at the top level of `usage` (togethercomputer/openapi `UsageData`,
  and its recorded traffic); genai-prices has no Together extractor.
- OpenRouter reports what it charged, in USD, as `usage.cost`; with your own provider key
  (`is_byok`) that is only its fee, and the provider's charge is
  `cost_details.upstream_inference_cost` (https://openrouter.ai/docs/api/reference/overview,
  https://openrouter.ai/docs/cookbook/administration/usage-accounting). It wins over a computed price.

Groq's stream usage under `x_groq.usage` is found by usage.py's stream scan.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from genai_prices import Usage


def adjust(vendor: str | None, doc: dict[str, Any], usage: Usage) -> Usage:
    """The extracted usage with the host's own extra fields applied."""
    raw = doc.get("usage")
    if not isinstance(raw, dict) or usage.cache_read_tokens:
        return usage
    field = {"deepseek": "prompt_cache_hit_tokens", "together": "cached_tokens"}.get(vendor or "")
    hits = raw.get(field) if field else None
    if not _amount(hits, integer=True):
        return usage
    usage = copy.copy(usage)
    usage.cache_read_tokens = int(hits)  # type: ignore[arg-type]
    return usage


def reported_cost(doc: dict[str, Any]) -> Decimal | None:
    """The cost the host says it charged (OpenRouter, and gateways that report it the same way)."""
    raw = doc.get("usage")
    cost = raw.get("cost") if isinstance(raw, dict) else None
    if not _amount(cost):
        return None
    total = Decimal(str(cost))
    details = raw.get("cost_details") if raw.get("is_byok") is True else None  # type: ignore[union-attr]
    upstream = details.get("upstream_inference_cost") if isinstance(details, dict) else None
    return total + Decimal(str(upstream)) if _amount(upstream) else total


def _amount(value: object, integer: bool = False) -> bool:
    kinds = int if integer else int | float
    return isinstance(value, kinds) and not isinstance(value, bool) and value >= 0
