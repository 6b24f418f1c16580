"""How each OpenAI-compatible host shapes its usage, for the fake provider.

The compatible hosts speak OpenAI's wire format but each reports tokens its own way: its own usage
fields, and its own place for them in a stream. The fake provider answers in a host's dialect when
the request reaches it under `/_host/<hostname>/...` (tests map the real host there with
mitmproxy's `--map-remote`, so clients keep their default base URLs). Each shape follows the
host's API reference or a published capture of its real traffic:

- Groq: timing fields in `usage`; in a stream, usage in `x_groq.usage` on the finish chunk, plus
  OpenAI's `choices: []` usage chunk when `include_usage` is asked
  (https://console.groq.com/docs/api-reference#chat-create; groq-python `ChatCompletionChunk`).
- Mistral: usage on the finish chunk, always; `stream_options` is refused with a 422
  `extra_forbidden` (https://docs.mistral.ai/api/; openai/openai-agents-python#442).
- DeepSeek: `prompt_cache_hit_tokens` / `prompt_cache_miss_tokens` (their sum is `prompt_tokens`)
  beside `prompt_tokens_details.cached_tokens`; usage on the last chunk, always; `include_usage`
  only adds `"usage": null` to the other chunks
  (https://api-docs.deepseek.com/api/create-chat-completion).
- OpenRouter: `usage.cost` (USD charged), `cache_write_tokens`, `is_byok`, `cost_details`; usage on
  a final `choices: []` chunk, always; `: OPENROUTER PROCESSING` comments
  (https://openrouter.ai/docs/api/reference/overview, .../usage-accounting, .../streaming).
- Together: `cached_tokens` at the top level of `usage`; usage on the finish chunk, unasked
  (togethercomputer/openapi `UsageData`; a recorded stream in llama-stack's test recordings).
- Fireworks: usage in the very last chunk, unasked; `prompt_tokens_details.cached_tokens`
  (https://docs.fireworks.ai/api-reference/post-chatcompletions; fw-ai python-sdk types).
- x.ai: `completion_tokens` excludes the reasoning tokens, which `completion_tokens_details`
  reports (total = prompt + completion + reasoning); `num_sources_used`; OpenAI's usage chunk with
  `include_usage` (https://docs.x.ai/developers/advanced-api-usage/prompt-caching/usage-and-pricing;
  charmbracelet/fantasy's recorded x.ai stream).
- Azure OpenAI: OpenAI's usage, plus `prompt_filter_results`; a stream starts with a
  prompt-annotation chunk (empty id, `choices: []`)
  (https://learn.microsoft.com/azure/ai-foundry/openai/concepts/content-streaming).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]
PREFIX = "/_host/"


@dataclass(frozen=True)
class Dialect:
    name: str
    stream_usage: str = "asked"  # 'asked': a choices-[] chunk if include_usage; 'finish': on the
    # finish chunk always; 'final': a choices-[] chunk always; 'x_groq': x_groq.usage on the finish
    # chunk always (and the choices-[] chunk if asked)
    null_usage: bool = True  # with include_usage, the other chunks carry "usage": null
    refuses_stream_options: bool = False
    comment: bytes = b""  # an SSE comment sent first


OPENAI = Dialect("openai")
DIALECTS = {
    "api.openai.com": OPENAI,
    "api.groq.com": Dialect("groq", stream_usage="x_groq"),
    "api.mistral.ai": Dialect("mistral", stream_usage="finish", null_usage=False,
                              refuses_stream_options=True),
    "api.deepseek.com": Dialect("deepseek", stream_usage="finish"),
    "openrouter.ai": Dialect("openrouter", stream_usage="final", null_usage=False,
                             comment=b": OPENROUTER PROCESSING\n\n"),
    "api.together.xyz": Dialect("together", stream_usage="finish"),
    "api.fireworks.ai": Dialect("fireworks", stream_usage="finish", null_usage=False),
    "api.x.ai": Dialect("x-ai"),
}  # fmt: skip
AZURE = Dialect("azure")


def split(path: str) -> tuple[Dialect, str]:
    """`/_host/api.groq.com/openai/v1/...` -> (Groq's dialect, `/openai/v1/...`)."""
    if not path.startswith(PREFIX):
        return OPENAI, path
    host, _, rest = path[len(PREFIX) :].partition("/")
    if host.endswith(".openai.azure.com"):
        return AZURE, "/" + rest
    return DIALECTS.get(host, OPENAI), "/" + rest


def usage(dialect: Dialect, u: dict[str, int], cost: float | None) -> JSON:
    """The neutral counts (input includes cached, output includes reasoning) as this host reports them."""
    i, o, c, w, r = (u[k] for k in ("input", "output", "cached", "cache_write", "reasoning"))
    base: JSON = {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o}
    name = dialect.name
    if name in ("openai", "azure"):
        return {
            **base,
            "prompt_tokens_details": {"cached_tokens": c, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": r, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }  # fmt: skip
    if name == "groq":
        out = {"queue_time": 0.037493756, "prompt_tokens": i, "prompt_time": 0.000680594,
               "completion_tokens": o, "completion_time": 0.463333333, "total_tokens": i + o,
               "total_time": 0.464013927}  # fmt: skip
        return {**out, **_details(c, r)}
    if name == "mistral":
        return {**base, "prompt_audio_seconds": None, **_details(c, 0)}
    if name == "deepseek":
        hits = {"prompt_cache_hit_tokens": c, "prompt_cache_miss_tokens": i - c}
        return {**base, "prompt_tokens_details": {"cached_tokens": c}, **hits, **_details(0, r)}
    if name == "openrouter":
        return {
            **base,
            "prompt_tokens_details": {"cached_tokens": c, "cache_write_tokens": w, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": r},
            "cost": cost if cost is not None else 0.00014,
            "is_byok": False,
            "cost_details": {"upstream_inference_cost": None},
        }
    if name == "together":
        return {**base, "completion_tokens_details": None, "prompt_tokens_details": None, "cached_tokens": c}
    if name == "fireworks":
        return {**base, **_details(c, 0)}
    # x.ai: the reasoning tokens are not part of completion_tokens
    return {
        "prompt_tokens": i, "completion_tokens": o - r, "total_tokens": i + o,
        "prompt_tokens_details": {"text_tokens": i, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": c},
        "completion_tokens_details": {"reasoning_tokens": r, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        "num_sources_used": 0,
    }  # fmt: skip


def _details(cached: int, reasoning: int) -> JSON:
    out: JSON = {}
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def extra_fields(dialect: Dialect) -> JSON:
    """What the host adds to a completion (non-streamed) beside the OpenAI fields."""
    if dialect.name == "groq":
        return {"x_groq": {"id": "req_01jbd6g2qdfw2adyrt2az8hz4w"}}
    if dialect.name == "azure":
        return {"prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}
    if dialect.name == "openrouter":
        return {"provider": "OpenAI"}
    return {}


def first_chunk(dialect: Dialect) -> JSON | None:
    """Azure's prompt-annotation chunk, before any content."""
    if dialect.name != "azure":
        return None
    return {"id": "", "object": "", "created": 0, "model": "", "choices": [],
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}  # fmt: skip


def refusal() -> JSON:
    """Mistral's 422 for a field it does not know (stream_options)."""
    detail = {"type": "extra_forbidden", "loc": ["body", "stream_options"],
              "msg": "Extra inputs are not permitted", "input": {"include_usage": True}}  # fmt: skip
    return {"object": "error", "message": {"detail": [detail]}, "type": "invalid_request_error",
            "param": None, "code": None}  # fmt: skip
