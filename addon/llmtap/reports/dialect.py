"""What the reports' SQL says differently on Postgres (a fleet's log) than on DuckDB: the one place.

Everything else is written once. Where a DuckDB function has no Postgres twin, a migration gives
Postgres one of the same name and meaning (storage/postgres.py, p002: `epoch_us`, `epoch_ms`,
`//`, `range`, `round(double, int)`, `contains`, the latest_* views); what a function cannot hide
(list literals, ordered-set aggregates, array slices) is a fragment here. The report SQL also keeps
to the common ground: integer sums cast back to BIGINT (Postgres sums them as numeric), ratios
divided as DOUBLE PRECISION (Postgres divides integers as integers), every subquery named.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmtap.storage import postgres


@dataclass(frozen=True)
class Dialect:
    name: str

    @property
    def postgres(self) -> bool:
        return self.name == "postgres"

    def quantiles(self, expr: str, qs: tuple[float, ...]) -> str:
        """The continuous quantiles of `expr` as a list (1-based in both)."""
        values = ", ".join(str(q) for q in qs)
        if self.postgres:
            return f"percentile_cont(ARRAY[{values}]) WITHIN GROUP (ORDER BY {expr})"
        return f"quantile_cont({expr}, [{values}])"

    def arg_max(self, arg: str, val: str) -> str:
        """`arg` at the greatest `val`, skipping rows where either is NULL (DuckDB's arg_max)."""
        if self.postgres:
            known = f"{arg} IS NOT NULL AND {val} IS NOT NULL"
            return f"(array_agg({arg} ORDER BY {val} DESC) FILTER (WHERE {known}))[1]"
        return f"arg_max({arg}, {val})"

    def path_parts(self, expr: str) -> str:
        """The non-empty segments of a `/a/b` path, as a list."""
        if self.postgres:
            return f"ARRAY(SELECT m[1] FROM regexp_matches({expr}, '[^/]+', 'g') AS m)"
        return f"regexp_extract_all({expr}, '[^/]+')"

    def prefix(self, parts: str, n: str) -> str:
        """The first `n` elements of a list."""
        return f"{parts}[1:{n}]" if self.postgres else f"list_slice({parts}, 1, {n})"

    def length(self, parts: str) -> str:
        return f"CAST(cardinality({parts}) AS BIGINT)" if self.postgres else f"len({parts})"  # as DuckDB's

    def each_index(self, parts: str) -> str:
        """One row per position 1..length of a list (a set-returning select item)."""
        if self.postgres:
            return f"generate_series(1, cardinality({parts}))"
        return f"unnest(generate_series(1, len({parts})))"

    def object_keys(self, expr: str) -> str:
        """One row per key of a JSON object (a set-returning select item)."""
        return f"jsonb_object_keys({expr})" if self.postgres else f"unnest(json_keys({expr}))"

    def sample(self, expr: str) -> str:
        """A stable hash of a BIGINT, from 0 to 999,999: the same rows are kept on every read."""
        if self.postgres:
            return f"(hashint8extended({expr}, 0) & 9223372036854775807) % 1000000"
        return f"hash({expr}) % 1000000"


DUCKDB = Dialect("duckdb")
POSTGRES = Dialect("postgres")


def of(conn: object) -> Dialect:
    return POSTGRES if postgres.is_connection(conn) else DUCKDB
