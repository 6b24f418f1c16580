"""What the providers and Helicone put on the wire: which requests are LLM calls, Helicone's
request headers, SSE framing, the usage chunk of OpenAI-style streams.

Pure format knowledge, no I/O and no imports from the rest of llmtap: the proxy, the writer
process and the local API all read calls through it.
"""
