from __future__ import annotations

from llmtap.service import Service


def test_remembers_only_as_many_ids_as_can_be_unwritten() -> None:
    """Older ids are in the database by then: memory stays bounded, not growing per call."""
    s = Service(
        submit=lambda item: True, db_path=lambda: "unused.duckdb", extra_providers=dict,
        store_limit=lambda: 1000, unwritten=lambda: 3,
    )  # fmt: skip
    for n in range(5):
        s.remember(f"id-{n}")
    assert list(s.recent) == ["id-2", "id-3", "id-4"]
