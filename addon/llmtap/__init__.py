"""llmtap: a local-first LLM observability proxy built as a mitmproxy addon."""

__version__ = "0.1.0"
