"""The local HTTP API (served inside the proxy process, port `llmtap_api`): feedback, scores,
properties and Helicone-style async logs; plus the clients of it: `llmtap.log` and the CLI's
`feedback` / `score` / `property`.

Handlers turn requests into records for the writer; nothing here imports mitmproxy or DuckDB.
"""
