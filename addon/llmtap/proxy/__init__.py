"""Inside mitmdump, on the hot path: the addon, whose hooks read as a call's life, and one module
per concern they call into (the call itself, the cache, rate limits, retries and fallbacks, the
stream tee, replies llmtap makes itself, its own upstream client, rules hot reload).

The only package that imports mitmproxy's flows and hooks; nothing else imports it.
"""
