"""Fleet mode: the state many proxies share on servers built for it (Redis for rate-limit buckets
and the response cache). Used from inside mitmdump and from the CLI alike, so nothing here imports
mitmproxy.
"""
