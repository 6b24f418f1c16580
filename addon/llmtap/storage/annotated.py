"""`annotated_calls`: the figures of every call that has feedback or a score, beside the calls (a
fleet's Postgres log only).

`cost` and `cache` grouped by rating or by a score add up the rated (scored) calls, ~1 % of them,
and take the others as the totals less those (reports/rollup_by.py). Read from `requests` by id,
each rated call is an index probe and a heap page: ~1 s for 100k of them over 10M calls here,
mostly the pages (README, Performance), and a rating cannot be summed ahead because a later
feedback changes it. Here those calls' few figures sit in a small table of their own, read whole
and joined with the latest ratings in tens of milliseconds.

It must hold every call that has feedback or a score, with the call's current figures; rows for
calls whose feedback was since deleted do no harm (the reader joins the latest ratings). Triggers
keep it, statement by statement: feedback or scores inserted add their calls; calls inserted after
their feedback (by hand) are added; calls updated or deleted are replaced or removed; `TRUNCATE
requests` empties it. Migration p010 creates it and fills it from the calls rated so far.

llmtap writes feedback only for a call it sees committed (the writer's own batch, or the "unknown
id" check that asks Postgres), so a call and its feedback are never written by two transactions at
once, which would each miss the other: a race left to statements run by hand.
"""

from __future__ import annotations

from llmtap.storage import rollup

TABLE = "annotated_calls"
# The calls' columns the rollups' measures read (rollup_by.MEASURES), and the time the range uses.
COLUMNS = (
    "request_id", "created_at", "input_tokens", "output_tokens", "cost_usd", "cost_saved_usd",
    "status", "error", "cache_status", "latency_saved_ms",
)  # fmt: skip
_NAMES = ", ".join(COLUMNS)
_ANNOTATED = (
    "(EXISTS (SELECT 1 FROM feedback AS f WHERE f.request_id = c.request_id)"
    " OR EXISTS (SELECT 1 FROM scores AS s WHERE s.request_id = c.request_id))"
)


def postgres_ddl() -> str:
    """The table, filled from the calls with feedback or scores, and its triggers (migration p010:
    what it creates is fixed there)."""

    def calls_of(ids: str) -> str:  # the calls whose ids `ids` selects: an index probe each
        return (
            f"INSERT INTO {TABLE} SELECT {_NAMES} FROM requests WHERE request_id IN ({ids})"
            " ON CONFLICT DO NOTHING;"
        )

    annotated = (
        f"INSERT INTO {TABLE} SELECT {_NAMES} FROM new_rows AS c WHERE {_ANNOTATED} ON CONFLICT DO NOTHING;"
    )
    gone = (
        f"DELETE FROM {TABLE} AS a USING old_rows AS o"
        " WHERE a.request_id = o.request_id AND a.created_at = o.created_at;"
    )
    new_ids = calls_of("SELECT request_id FROM new_rows")
    triggers = [  # (name, table, event, transition tables, body)
        ("llmtap_annotated_feedback", "feedback", "INSERT", "NEW TABLE AS new_rows", new_ids),
        ("llmtap_annotated_scores", "scores", "INSERT", "NEW TABLE AS new_rows", new_ids),
        ("llmtap_annotated_insert", "requests", "INSERT", "NEW TABLE AS new_rows", annotated),
        ("llmtap_annotated_delete", "requests", "DELETE", "OLD TABLE AS old_rows", gone),
        ("llmtap_annotated_update", "requests", "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows",
         gone + annotated),
        ("llmtap_annotated_truncate", "requests", "TRUNCATE", None, f"DELETE FROM {TABLE};"),
    ]  # fmt: skip
    statements = [
        f"CREATE TABLE {TABLE} AS SELECT {_NAMES} FROM requests WITH NO DATA;",
        f"ALTER TABLE {TABLE} ADD PRIMARY KEY (request_id, created_at);",
        calls_of("SELECT request_id FROM feedback UNION SELECT request_id FROM scores"),
    ]
    for trigger in triggers:
        statements += rollup.statement_trigger(*trigger)
    return "\n".join(statements)
