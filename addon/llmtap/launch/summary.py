"""What one `llmtap run` cost: its calls, tokens, cost by model, cache hits and errors.

Read from the database after the run's calls are written, over the rows created since the run
began. Money stays exact: DuckDB's DECIMAL sums as text, never floats.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from llmtap.storage import query

SQL = """
SELECT coalesce(model, requested_model, '(unknown)') AS model,
       count(*) AS calls,
       coalesce(sum(input_tokens), 0) AS input_tokens,
       coalesce(sum(output_tokens), 0) AS output_tokens,
       sum(cost_usd)::VARCHAR AS cost_usd,
       count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced,
       count(*) FILTER (WHERE cache_status = 'HIT') AS cache_hits,
       sum(cost_saved_usd)::VARCHAR AS cost_saved_usd,
       count(*) FILTER (WHERE status IS NULL OR status >= 400 OR error IS NOT NULL) AS errors
FROM requests
WHERE created_at >= $since
GROUP BY 1
ORDER BY sum(cost_usd) DESC NULLS LAST, calls DESC, model
"""
FIELDS = ("model", "calls", "input_tokens", "output_tokens", "cost_usd", "unpriced", "cache_hits",
          "cost_saved_usd", "errors")  # fmt: skip
_MONEY = ("cost_usd", "cost_saved_usd")


def collect(db: Path, since: datetime) -> dict[str, Any]:
    """Totals and per-model rows of the calls created at or after `since`."""
    if not db.exists():
        models: list[dict[str, Any]] = []
    else:
        _, rows = query.run(db, SQL, {"since": since})
        models = [dict(zip(FIELDS, row, strict=True)) for row in rows]
    total: dict[str, Any] = {k: sum(m[k] for m in models) for k in FIELDS if k not in (*_MONEY, "model")}
    for k in _MONEY:
        known = [Decimal(m[k]) for m in models if m[k] is not None]
        total[k] = str(sum(known)) if known else None
    return total | {"models": models}


def render(s: dict[str, Any], exit_status: int) -> str:
    """A few lines for stderr, as `time` prints after a command."""
    cost = f"${s['cost_usd']}" if s["cost_usd"] is not None else "no known cost"
    if s["unpriced"]:
        cost += f" (unpriced: {s['unpriced']} calls)"
    hits = f"{s['cache_hits']} cache hits"
    if s["cost_saved_usd"]:
        hits += f" (saved ${s['cost_saved_usd']})"
    tokens = f"{s['input_tokens']:,} input + {s['output_tokens']:,} output tokens"
    lines = [f"llmtap: {s['calls']} calls, {tokens}, {cost}; {hits}, {s['errors']} errors; "
             f"exit status {exit_status}"]  # fmt: skip
    if s["models"]:
        lines.append(f"  {'model':<32}{'calls':>7}{'input':>10}{'output':>10}  cost")
    for m in s["models"]:
        money = f"${m['cost_usd']}" if m["cost_usd"] is not None else "unpriced"
        counts = f"{m['calls']:>7}{m['input_tokens']:>10,}{m['output_tokens']:>10,}"
        lines.append(f"  {m['model'][:32]:<32}{counts}  {money}")
    return "\n".join(lines)


def to_json(s: dict[str, Any], exit_status: int) -> str:
    return json.dumps(s | {"exit_status": exit_status}, default=str)
