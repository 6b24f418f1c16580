"""Query results as aligned tables, CSV or JSON (the formats every CLI command shares).

Parquet, the fourth export format, is written by DuckDB itself (`query.to_parquet`, also for a
Postgres log's rows), so its types stay exact; it always goes to a file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

FORMATS = ("table", "csv", "json")  # what render() produces
EXPORT_FORMATS = (*FORMATS, "parquet")  # what `llmtap sql` and `llmtap report` accept


def render(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "table", width: int | None = 60
) -> str:
    """`width` caps table cells (None: never cut)."""
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        # csv writes None as "" itself; only dates and decimals need converting, so only their
        # columns are touched (50k rows: 0.3 s less than converting every value).
        typed = _typed_columns(rows, len(columns))
        if typed:
            rows = [[_plain(v) if i in typed else v for i, v in enumerate(row)] for row in rows]
        writer.writerows(rows)
        return buf.getvalue()
    if fmt == "json":
        return (
            json.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=_json, indent=2) + "\n"
        )
    return _table(columns, rows, width)


def to_json(value: Any) -> str:
    """Any nesting of dicts and lists as JSON, with render()'s conventions (exact decimals as strings)."""
    return json.dumps(value, default=_json, indent=2) + "\n"


def _typed_columns(rows: Sequence[Sequence[Any]], n: int) -> set[int]:
    """Columns of dates or decimals (a SQL column has one type: its first value tells)."""
    found = set()
    for i in range(n):
        first = next((row[i] for row in rows if row[i] is not None), None)
        if isinstance(first, datetime | date | Decimal):
            found.add(i)
    return found


def _plain(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return f"{value:f}"  # exact and never "1.95E-7" or "0E-9"
    return value


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"{value:f}"  # a string, exact, in fixed notation
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _cell(value: Any, width: int | None = 60) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, Decimal):
        return f"{value.normalize():f}" if value else "0"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    return text if width is None or len(text) <= width else text[: width - 3] + "..."


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], width: int | None = 60) -> str:
    cells = [[_cell(v, width) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [all(_is_number(row[i]) for row in rows if row[i] is not None) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)
