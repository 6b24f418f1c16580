"""The fake LLM provider used by the tests.

The tests share the demo's stand-in (``llmtap.demo.fakeprovider``) so that one
implementation speaks the OpenAI, Anthropic and Gemini wire formats.
"""

from llmtap.demo.fakeprovider import FakeProvider, Received

__all__ = ["FakeProvider", "Received"]
