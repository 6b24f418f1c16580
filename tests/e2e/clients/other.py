"""The app's non-LLM HTTPS traffic: a host reached directly (NO_PROXY) and one through the proxy.

Both serve certificates of the test world's own CA, which the app trusted before llmtap (its
SSL_CERT_FILE): they verify only if llmtap's bundle kept the app's roots.
"""

import os


def check(get) -> None:
    for name in ("OTHER_DIRECT", "OTHER_PROXIED"):
        print(f"other {name.lower()}: {get(os.environ[name])['ok']}")
