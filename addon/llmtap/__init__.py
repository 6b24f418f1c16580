"""llmtap: a local-first LLM observability proxy built as a mitmproxy addon.

The public surface, kept small and stable (everything else may move between releases):

- `mitmdump -s addon/tap.py`: the entry script, and the `llmtap_*` mitmdump options it declares
  (`llmtap.options`, listed by `mitmdump --options`);
- the `llmtap` command (`llmtap.cli`): `proxy`, `report`, `sql`, `feedback`, `score`,
  `property`, `cache`, `rules`, `schema`, `migrate`, `demo`, `run`, `env`, `ca`, `ui`;
- `llmtap.log(...)`: log a call made without the proxy through a running proxy's local API;
- `__version__`.

Where the rest lives, and what may import what: docs/architecture.md.
"""

__all__ = ["__version__", "log"]

__version__ = "0.1.0"


def log(*args, **kwargs):  # noqa: ANN002, ANN003 - see llmtap.api.log.log
    """Log a call made without the proxy through a running proxy's local API (`llmtap.api.log.log`)."""
    from llmtap.api.log import log as _log

    return _log(*args, **kwargs)
