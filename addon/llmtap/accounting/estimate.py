"""Token estimates for calls whose response carried no usage.

Usage reported by the provider always comes first; this is the documented fallback, used when a
stream ended early or an OpenAI-compatible server ignored `include_usage`. tiktoken's `o200k_base`
encoding is used when it is available locally (tiktoken downloads encodings on first use and
these machines may be offline); otherwise the estimate is ceil(characters / 4), OpenAI's rule of
thumb. The method used is returned so rows can say which it was. Only the writer thread calls
this, so the one-time load attempt never delays traffic.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_encoder: Callable[[str], int] | None = None
_method = ""


def _load() -> None:
    global _encoder, _method
    try:
        import tiktoken

        enc = tiktoken.get_encoding("o200k_base")
        _encoder = lambda text: len(enc.encode(text, disallowed_special=()))  # noqa: E731
        _method = "tiktoken o200k_base"
    except Exception as e:  # offline: no cached encoding and no network
        logger.info(f"llmtap: tiktoken encoding unavailable ({type(e).__name__}); estimating chars/4")
        _encoder = lambda text: math.ceil(len(text) / 4)  # noqa: E731
        _method = "chars/4 heuristic"


def count(text: str) -> tuple[int, str]:
    """Estimated tokens in `text`, and the method that produced the number."""
    with _lock:
        if _encoder is None:
            _load()
    assert _encoder is not None
    return _encoder(text), _method
