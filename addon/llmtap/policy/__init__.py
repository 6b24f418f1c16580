"""What `rules.yaml` and the Helicone headers decide: cache keys, rate-limit buckets, retry timing,
redaction.

Pure code (no mitmproxy, no database), so every rule is unit-tested without a proxy. It imports
only `wire`.
"""
