"""The Engine protocol: the few methods every database offers medlake.

SQL is written once in DuckDB's dialect and transpiled by sqlglot for the engine. Bulk data moves as
Arrow. A capability an engine lacks fails with `EngineError` and a clear message.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, runtime_checkable

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from medlake.cdm.model import Table


class EngineError(RuntimeError):
    """An engine could not do what was asked; the message says what and what to do."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # the engine's own type name, upper-case
    nullable: bool


@dataclass(frozen=True)
class Shapes:
    """Which of two equivalent query shapes the engine runs faster, where engines differ (each measured with
    bench/quality.py or bench/transform.py at 100,000 persons; the results are the same either way)."""
    filter_aggs: bool = False  # count(*) FILTER (WHERE …) rather than sum(CASE WHEN … THEN 1 ELSE 0 END)
    distinct_on_groups: bool = True  # count(DISTINCT …) on the table grouped by value, not over every row
    window_examples: bool = True  # examples of failed rules: one windowed scan per rule kind, not a LIMIT query each
    sorted_keys: bool = False  # duplicate keys found by sorting (a row equal to its neighbour), not by GROUP BY
    unique_test: bool = False  # keys first tested with count(DISTINCT …) (where keys sort: the sort's own count);
    # duplicates counted only if that fails
    bitmap_keys: bool = False  # that test as a bitmap of the key range (DuckDB's bitstring_agg), not a DISTINCT
    lookup_array: bool = False  # the concept ids a table uses looked up as one array (= ANY(ARRAY(…)): an index
    # scan), not as an IN subquery, which a planner that overestimates the ids turns into a scan of the vocabulary
    anti_join: bool = False  # the persons without a row in a table found by NOT EXISTS (an anti-join on the table's
    # rows), not by a LEFT JOIN to the table's DISTINCT person ids
    catalog: bool = False  # information_schema.columns lists every table's columns in one query
    narrow_delta: bool = False  # an incremental transform copies its delta rows into work tables first
    truncate: bool = False  # TRUNCATE TABLE empties a work table (else a DELETE, or the engine drops its files)


def message(e: Exception) -> str:
    """A database error in one line: its first, and the suggestion the database makes on a line of its own
    (DuckDB's `Candidate bindings: "value_as_number"`, `Did you mean "t"?`; PostgreSQL's `HINT: …`), which is
    what a misspelt name needs; not the query text and caret lines."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    hint = next((x for x in lines[1:] if x.startswith(("Candidate bindings", "Did you mean", "HINT:"))), None)
    return (lines[0] if lines else type(e).__name__) + (f" ({hint})" if hint else "")


def stopped(seconds: float) -> str:
    """The error of a query an engine stopped at its time limit (`Engine.limited`)."""
    return f"stopped after {seconds:g} s, its time limit"


@contextmanager
def limit_held(engine, seconds: float | None):
    """`Engine.limited` of an engine whose `query` applies `engine._limit` itself (DuckDB, Spark)."""
    before, engine._limit = engine._limit, seconds or None
    try:
        yield
    finally:
        engine._limit = before


@runtime_checkable
class Engine(Protocol):
    name: str  # duckdb | postgres | spark
    dialect: str  # sqlglot dialect name
    url: str
    shapes: Shapes  # the query shapes it runs faster (set-based quality checks)
    exact_names: bool  # a name matches in its case only (PostgreSQL): a table created as "PERSON" is not person

    def execute(self, sql: str, params: list | None = None) -> None: ...

    def query(self, sql: str, params: list | None = None) -> pa.Table: ...

    def native(self, sql: str) -> str:
        """A statement written in DuckDB's dialect as this engine runs it (to show a user, to run by hand)."""

    def load_arrow(self, table: str, data: pa.Table | pa.RecordBatchReader) -> int: ...

    def read_arrow(self, table: str) -> pa.Table: ...

    def tables(self) -> list[str]: ...

    def columns(self, table: str) -> list[Column]: ...

    def create_table(self, table: "Table", name: str | None = None) -> None:
        """Create a CDM table (or a table shaped like one, under another name) with the engine's types."""

    def transaction(self, snapshot: bool = False) -> AbstractContextManager[None]:
        """All or nothing; a nested call joins the outer transaction. `snapshot`: every statement sees the store as
        at the first, and deletes and updates only rows it sees — a row another process commits meanwhile is left
        alone (PostgreSQL: REPEATABLE READ; a DuckDB transaction is a snapshot; Spark has one writer)."""

    def analyze(self, *tables: str) -> None:
        """Refresh the planner's statistics of tables just filled (work tables inside a run); may do nothing."""

    def index(self, table: str, *keys: str) -> bool:
        """A lookup index on `keys` (columns or expressions) where the engine's plans use one to find a few rows in
        a large table; True if the table has it now. Engines that scan columns fast do nothing (False)."""

    def plan(self, *, bulk: bool) -> None:
        """Planner settings for the rest of this transaction: `bulk` statements join whole tables (a first or full
        load), the others find few rows through indexes; may do nothing."""

    def scanning(self, waiting: Callable[[int, str], None] | None = None) -> AbstractContextManager[None]:
        """Session settings for a series of read-only queries that aggregate whole tables (a quality run), restored
        after; may do nothing. `waiting(seconds, who)`: called while a query waits for another session's lock, with
        who holds it (the query goes on waiting); engines where no other session locks a reader out never call it."""

    def limited(self, seconds: float | None) -> AbstractContextManager[None]:
        """Each query in it that runs longer than `seconds` is stopped and raises EngineError(`stopped(seconds)`) (a
        site check's predicate that would scan for ever); None or 0: no limit."""

    def data_version(self) -> str | None:
        """A mark that changes whenever another session may have written (PostgreSQL: its current snapshot); None
        where no other session writes while a reader has the store open. A quality run's fingerprints, taken at one
        mark, stand for a table's checks while the mark in its snapshot is the same."""

    def snapshot(self, tables: Iterable[str] = ()) -> AbstractContextManager[None]:
        """One state of the data for a few read-only queries (a quality run's checks of one table, which read
        `tables`) where other sessions may write meanwhile, held no longer (its locks would keep an ETL's TRUNCATE
        waiting); a query that fails leaves the others running. Nothing where no other session writes beside a
        reader."""

    def restricted(self, where: dict[str, str]) -> AbstractContextManager[None]:
        """For the session, then dropped: each table of `where` seen through a temporary view of the same name, of
        its rows where the condition (DuckDB SQL, the table's columns unqualified) holds; every unqualified read of
        the table reads the view (a quality run of a cohort's persons)."""

    def close(self) -> None: ...


# Functions medlake adds to its SQL. Written in DuckDB SQL as plain calls; DuckDB gets them as macros, the
# other engines get a rewrite to their own SQL (see `template` and each engine's FUNCTIONS).
#   stable_id(text) -> BIGINT: the first 60 bits of md5(text), identical on every engine.
#   hash(a, b, …) -> a 64-bit hash of the values together (DuckDB's own function; PostgreSQL and Spark hash in
#     their own way, so it differs between engines: for fingerprints that compare a store with itself).
DUCKDB_MACROS = [
    "CREATE OR REPLACE TEMP MACRO stable_id(s) AS CAST(('0x' || substr(md5(CAST(s AS VARCHAR)), 1, 15)) AS BIGINT)",
]


def template(body: str, dialect: str):
    """A function rewrite from SQL text in `dialect` with arguments named _1, _2, …"""
    tree = sqlglot.parse_one(body, read=dialect)

    def build(*args):
        def put(node):
            if isinstance(node, exp.Column) and node.name.startswith("_") and node.name[1:].isdigit():
                return args[int(node.name[1:]) - 1].copy()
            return node

        return tree.copy().transform(put)

    return build


def translate(sql: str, dialect: str, functions: dict | None = None, hook=None) -> list[str]:
    """DuckDB-dialect SQL (one or more statements) -> statements in `dialect`.

    `functions` rewrites medlake's own functions (name -> builder); `hook` may rewrite any other node.
    """
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except sqlglot.errors.ParseError as e:
        raise EngineError(f"cannot translate SQL for {dialect}: {e}") from e
    functions = functions or {}

    def rewrite(node):
        if isinstance(node, exp.Anonymous) and node.name.lower() in functions:
            return functions[node.name.lower()](*node.expressions)
        return hook(node) if hook else node

    return [st.transform(rewrite).sql(dialect) for st in statements]


@lru_cache(maxsize=4096)
def transpile(sql: str, dialect: str) -> str:
    """DuckDB-dialect SQL -> another dialect, without medlake's function rewrites (for reading)."""
    if dialect == "duckdb":
        return sql
    return ";\n".join(translate(sql, dialect))


ARROW_OF_SQL = {
    "BIGINT": pa.int64(), "INT8": pa.int64(), "INTEGER": pa.int32(), "INT": pa.int32(), "INT4": pa.int32(),
    "SMALLINT": pa.int16(), "DOUBLE": pa.float64(), "DOUBLE PRECISION": pa.float64(), "FLOAT": pa.float64(),
    "REAL": pa.float32(), "DATE": pa.date32(), "TIMESTAMP": pa.timestamp("us"), "TIMESTAMP_NTZ": pa.timestamp("us"),
    "TIMESTAMP WITHOUT TIME ZONE": pa.timestamp("us"), "BOOLEAN": pa.bool_(), "BLOB": pa.binary(),
    "BYTEA": pa.binary(), "BINARY": pa.binary(), "NUMERIC": pa.float64(), "DECIMAL": pa.float64(),
}  # (NUMERIC: the OHDSI DDL's type for the CDM's floats on PostgreSQL; values travel as doubles)


def arrow_schema_of(columns: list[Column]) -> pa.Schema:
    """The Arrow schema of a table as an engine reports it; text-like and unknown types are strings."""
    return pa.schema(
        [pa.field(c.name, ARROW_OF_SQL.get(c.type.split("(")[0].strip(), pa.string()), c.nullable) for c in columns]
    )


def conform(data: pa.Table, schema: pa.Schema, table: str) -> pa.Table:
    """Select and cast `data` to a table's schema: missing columns become null, unknown ones are an error.

    Required (non-nullable) columns with nulls are refused, naming the column and the first row.
    """
    unknown = [n for n in data.column_names if schema.get_field_index(n) < 0]
    if unknown:
        raise EngineError(f"{table}: unknown column(s) {', '.join(unknown)}")
    cols = []
    for f in schema:
        if f.name in data.column_names:
            col = data.column(f.name)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise EngineError(f"{table}.{f.name}: cannot convert {col.type} to {f.type}: {e}") from e
        else:
            col = pa.nulls(data.num_rows, f.type)
        if not f.nullable and col.null_count:
            first = pc.index(col.is_null(), True).as_py()
            raise EngineError(f"{table}.{f.name} is required but row {first} is null")
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)
