"""llmtap: a local-first LLM observability proxy built as a mitmproxy addon."""

__version__ = "0.1.0"


def log(*args, **kwargs):  # noqa: ANN002, ANN003 - see llmtap.api.log.log
    """Log a call made without the proxy through a running proxy's local API (`llmtap.api.log.log`)."""
    from llmtap.api.log import log as _log

    return _log(*args, **kwargs)
