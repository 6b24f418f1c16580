"""`llmtap demo` and the fake provider it talks to (also the test suite's and benchmarks' upstream):
offline, keyless stand-ins that speak each provider's and host's own wire shapes.
"""
