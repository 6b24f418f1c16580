"""The fake LLM provider used by the tests.

The tests share the demo's stand-in (``llmtap.fakeprovider``) so that one
implementation speaks the OpenAI, Anthropic and Gemini wire formats.
"""

from llmtap.fakeprovider import FakeProvider, Received

__all__ = ["FakeProvider", "Received"]
