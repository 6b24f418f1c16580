"""`llmtap report` and `llmtap sql`: the built-in reports' SQL and the output formats.

Runs in a CLI process over a read-only connection (`storage.query`).
"""
