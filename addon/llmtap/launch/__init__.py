"""Running apps under llmtap with no code change: `llmtap run`, `llmtap env`, `llmtap ca`.

Runs in a CLI process: it starts a proxy as a child (`proxyproc`), sets the command's environment
(proxy variables, a combined CA bundle, Node's proxy support) and summarizes the run from the file.
"""
