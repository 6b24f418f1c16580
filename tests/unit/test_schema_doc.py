"""docs/schema.md is generated from the database and stays in step with the migrations."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from llmtap.cli import main
from llmtap.storage import schema_doc
from llmtap.storage.migrations import migrate

DOC = Path(__file__).resolve().parents[2] / "docs" / "schema.md"


def test_the_committed_schema_doc_is_up_to_date() -> None:
    assert DOC.read_text() == schema_doc.generate(), (
        f"docs/schema.md is out of date: regenerate it with `{schema_doc.REGENERATE}`"
    )


def test_the_doc_says_how_to_regenerate_it() -> None:
    head = DOC.read_text().splitlines()[:3]
    assert any(schema_doc.REGENERATE in line for line in head)


def test_every_table_view_and_column_has_a_meaning() -> None:
    with duckdb.connect() as conn:
        migrate(conn)
        relations = conn.execute(
            "SELECT table_name, comment FROM duckdb_tables() WHERE NOT internal"
            " UNION ALL SELECT view_name, comment FROM duckdb_views() WHERE NOT internal"
        ).fetchall()
        bare = [name for name, comment in relations if not comment]
        assert bare == [], f"add COMMENT ON TABLE / VIEW for {bare}"
        names = [name for name, _ in relations]
        columns = conn.execute(
            "SELECT table_name || '.' || column_name FROM duckdb_columns()"
            " WHERE table_name IN (SELECT unnest(?)) AND (comment IS NULL OR comment = '')",
            [names],
        ).fetchall()
        assert columns == [], f"add COMMENT ON COLUMN in the migration that adds {columns}"
        assert {"requests", "feedback", "scores", "daily_cost_by_model", "cost_by_user", "cache_savings",
                "session_summary", "request_scores"} <= set(names)  # fmt: skip


def test_the_doc_lists_every_column_with_its_type() -> None:
    text = schema_doc.generate()
    with duckdb.connect() as conn:
        migrate(conn)
        for table, column, kind in conn.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE NOT internal"
        ).fetchall():
            assert f"### `{table}`" in text
            assert f"| `{column}` | {kind} |" in text


def test_llmtap_schema_prints_and_writes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == schema_doc.generate()
    target = tmp_path / "schema.md"
    assert main(["schema", "--out", str(target)]) == 0
    assert capsys.readouterr().out == ""
    assert target.read_text() == DOC.read_text()
