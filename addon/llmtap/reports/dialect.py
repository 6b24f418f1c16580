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

    def sampled(self, table: str, pct: float) -> tuple[str, str | None]:
        """`table` read for a stable sample of `pct` percent of its rows (the same rows on every
        read), and the condition that keeps them, if any: the rows whose created_at hashes low.
        Postgres reads every row of the range for that (~0.25 s per million here), so up to 10 %
        it reads that share of the pages instead (a page holds consecutive calls), picked by
        block number, the same pages as the table grows. That share is of the whole months the
        range touches, so past 10 % reading the range costs less."""
        if self.postgres and pct <= 10:
            return f"{table} TABLESAMPLE SYSTEM ({pct:.6f}) REPEATABLE (0)", None
        below = round(pct * 10_000)
        if self.postgres:
            return (
                table,
                f"(hashint8extended(epoch_us(created_at), 0) & 9223372036854775807) % 1000000 < {below}",
            )
        return table, f"hash(epoch_us(created_at)) % 1000000 < {below}"


DUCKDB = Dialect("duckdb")
POSTGRES = Dialect("postgres")


def of(conn: object) -> Dialect:
    return POSTGRES if postgres.is_connection(conn) else DUCKDB
