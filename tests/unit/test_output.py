from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from llmtap.reports.output import FORMATS, render

COLUMNS = ["model", "calls", "cost_usd", "latency_ms", "day", "streamed"]
ROWS = [
    ("gpt-4o-2024-08-06", 12, Decimal("0.004720000"), 812.46, date(2025, 6, 1), True),
    ("claude-3-5-sonnet-20241022", 3, None, None, date(2025, 6, 2), False),
]


def test_formats() -> None:
    assert FORMATS == ("table", "csv", "json")


def test_table() -> None:
    assert render(COLUMNS, ROWS, "table") == (
        "model                       calls  cost_usd  latency_ms  day         streamed\n"
        "--------------------------  -----  --------  ----------  ----------  --------\n"
        "gpt-4o-2024-08-06              12   0.00472       812.5  2025-06-01  True\n"
        "claude-3-5-sonnet-20241022      3                        2025-06-02  False\n"
        "(2 rows)\n"
    )


def test_table_is_the_default() -> None:
    assert render(COLUMNS, ROWS) == render(COLUMNS, ROWS, "table")


@pytest.mark.parametrize(
    "value, cell",
    [
        # money: trailing zeros dropped, never scientific notation
        (Decimal("0.004720000"), "0.00472"),
        (Decimal("100.000000000"), "100"),
        (Decimal("0E-9"), "0"),
        (Decimal("0.000000001"), "0.000000001"),
        # floats to one decimal
        (12.345, "12.3"),
        # timestamps to the second
        (datetime(2025, 6, 1, 12, 30, 5, 123456, tzinfo=UTC), "2025-06-01 12:30:05"),
        # long text is cut at 60 characters
        ("x" * 61, "x" * 57 + "..."),
        ("y" * 60, "y" * 60),
    ],
)
def test_table_cells(value: object, cell: str) -> None:
    lines = render(["v"], [(value,)], "table").splitlines()
    assert lines[2].strip() == cell
    assert lines[-1] == "(1 row)"


def test_empty_table() -> None:
    assert render(["a", "b"], [], "table") == "a  b\n-  -\n(0 rows)\n"


def test_csv() -> None:
    out = render(COLUMNS, ROWS, "csv")
    assert out == (
        "model,calls,cost_usd,latency_ms,day,streamed\n"
        "gpt-4o-2024-08-06,12,0.004720000,812.46,2025-06-01,True\n"
        "claude-3-5-sonnet-20241022,3,,,2025-06-02,False\n"
    )
    assert list(csv.reader(io.StringIO(out)))[1][0] == "gpt-4o-2024-08-06"


def test_csv_quotes_commas_and_newlines() -> None:
    out = render(["note"], [("a, b",), ('say "hi"\nbye',)], "csv")
    assert list(csv.reader(io.StringIO(out))) == [["note"], ["a, b"], ['say "hi"\nbye']]


def test_json() -> None:
    out = render(COLUMNS, ROWS, "json")
    assert out.endswith("]\n")
    assert json.loads(out) == [
        {
            "model": "gpt-4o-2024-08-06", "calls": 12, "cost_usd": "0.004720000", "latency_ms": 812.46,
            "day": "2025-06-01", "streamed": True,
        },
        {
            "model": "claude-3-5-sonnet-20241022", "calls": 3, "cost_usd": None, "latency_ms": None,
            "day": "2025-06-02", "streamed": False,
        },
    ]  # fmt: skip


def test_json_timestamps_and_other_types() -> None:
    at = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    out = json.loads(render(["at", "id"], [(at, b"raw")], "json"))
    assert out == [{"at": "2025-06-01T12:00:00+00:00", "id": "b'raw'"}]


def test_json_rejects_a_row_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="zip"):
        render(["a", "b"], [(1,)], "json")


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_exports_write_decimals_in_fixed_notation(fmt: str) -> None:
    """DuckDB hands tiny and zero costs over as Decimal("1.95E-7") and Decimal("0E-9")."""
    rows = [("a", Decimal("1.95E-7")), ("b", Decimal("0E-9")), ("c", None)]
    out = render(["model", "cost_usd"], rows, fmt)
    if fmt == "csv":
        assert out == "model,cost_usd\na,0.000000195\nb,0.000000000\nc,\n"
    else:
        assert [r["cost_usd"] for r in json.loads(out)] == ["0.000000195", "0.000000000", None]
