"""The dashboard: cost, latency, cache and errors at a glance, in a browser, offline.

Served by the running proxy on its local API port (`http://127.0.0.1:8788/`) and by `llmtap ui`
over a file. Plain HTML, CSS and JavaScript modules (static/), no build step; uPlot from the npm
registry (package-lock.json, installed by scripts/setup.sh). Read-only: every view is a report.
"""
