"""DuckDB: the embedded default. One file, nothing to start."""
from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

from medlake.cdm.ddl import create_table
from medlake.engines.base import DUCKDB_MACROS, Column, EngineError, Shapes, limit_held, message, stopped


class DuckDBEngine:
    name = "duckdb"
    dialect = "duckdb"
    # a column store: a bitmap of the key range tests that keys are distinct, and where they are not or too sparse
    # for a bitmap, sorting a million keys beats a hash table that outgrows the cache; a LIMIT 10 query stops early;
    # count(DISTINCT) is hashed in the scan itself
    shapes = Shapes(distinct_on_groups=False, window_examples=False, sorted_keys=True, unique_test=True,
                    bitmap_keys=True, catalog=True, narrow_delta=True, truncate=True)
    exact_names = False

    def __init__(self, path: str | Path = ":memory:", *, memory_limit: str | None = None, read_only: bool = False):
        self.path = str(path)
        self._limit: float | None = None  # seconds a query may run (`limited`)
        if read_only and not Path(self.path).is_file():
            raise EngineError(f"no DuckDB store at {self.path}: run `medlake init` there, or name the store with "
                              "--store")
        if self.path != ":memory:" and not read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        config = {"memory_limit": memory_limit} if memory_limit else {}
        try:
            self.con = duckdb.connect(self.path, read_only=read_only, config=config)
        except duckdb.Error as e:
            held = re.search(r"Conflicting lock is held in (.*?) \(PID (\d+)\)", str(e))
            if held:  # DuckDB lets one process at a time open a file to write
                raise EngineError(f"cannot open DuckDB store {self.path}: another process has it open ({held[1]}, "
                                  f"PID {held[2]}: a transform, a notebook?); let it finish or close it, and run "
                                  "again") from e
            raise EngineError(f"cannot open DuckDB store {self.path}: {e}") from e
        for macro in DUCKDB_MACROS:
            self.con.execute(macro)
        # (the file's full path: one store however a command spells it, e.g. its quality runs' history)
        self.url = f"duckdb:{self.path if self.path == ':memory:' else Path(self.path).resolve()}"
        self._depth = 0

    def execute(self, sql: str, params: list | None = None) -> None:
        try:
            self.con.execute(sql, params) if params is not None else self.con.execute(sql)
        except duckdb.Error as e:
            raise EngineError(message(e)) from e

    def query(self, sql: str, params: list | None = None) -> pa.Table:
        fired, timer = [], None
        if self._limit:  # (an interrupt that comes as the query ends is harmless: the next query clears it)
            timer = threading.Timer(self._limit, lambda: (fired.append(True), self.con.interrupt()))
            timer.start()
        try:
            rel = self.con.sql(sql, params=params)
            return rel.to_arrow_table() if rel is not None else pa.table({})
        except duckdb.Error as e:
            raise EngineError(stopped(self._limit) if fired else message(e)) from e
        finally:
            if timer:
                timer.cancel()

    def limited(self, seconds):
        return limit_held(self, seconds)

    def native(self, sql: str) -> str:
        return sql

    def load_arrow(self, table: str, data: pa.Table | pa.RecordBatchReader) -> int:
        view = f"__medlake_load_{id(data)}"
        self.con.register(view, data)
        try:
            names = data.schema.names
            cols = ", ".join(f'"{n}"' for n in names)
            return self.query(f'INSERT INTO "{table}" ({cols}) SELECT {cols} FROM "{view}"').column(0)[0].as_py()
        finally:
            try:
                self.con.unregister(view)
            except duckdb.Error:  # an aborted transaction refuses even this; the view dies with the rollback
                pass

    def read_arrow(self, table: str) -> pa.Table:
        return self.query(f'SELECT * FROM "{table}"')

    def tables(self) -> list[str]:
        t = self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1"
        )
        return t.column(0).to_pylist()

    def columns(self, table: str) -> list[Column]:
        t = self.query(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
            [table],
        ).to_pylist()
        return [Column(r["column_name"], r["data_type"].upper(), r["is_nullable"] == "YES") for r in t]

    def create_table(self, table, name: str | None = None) -> None:
        self.execute(create_table(table, name=name).sql("duckdb"))

    @contextmanager
    def transaction(self, snapshot: bool = False):  # (a DuckDB transaction is a snapshot)
        if self._depth:  # nested: join the outer transaction
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.con.execute("BEGIN TRANSACTION")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self.con.execute("ROLLBACK")
            raise
        self._depth = 0
        self.con.execute("COMMIT")

    def analyze(self, *tables: str) -> None:
        """Nothing to do: DuckDB keeps its statistics as it writes."""

    def index(self, table: str, *keys: str) -> bool:
        """None: DuckDB finds rows by scanning (zone maps skip the rest); an index would slow every insert."""
        return False

    def plan(self, *, bulk: bool) -> None:
        """Nothing to set: DuckDB joins by hash whatever the size."""

    @contextmanager
    def scanning(self, waiting=None):
        """Nothing to set: DuckDB's defaults are for scans."""
        yield

    def data_version(self) -> None:
        """None: no other process writes to the file while a reader has it open."""
        return None

    @contextmanager
    def snapshot(self, tables=()):
        """Nothing: no other process writes to the file while a reader has it open."""
        yield

    @contextmanager
    def restricted(self, where: dict[str, str]):
        """Temporary views (the temp catalog is read first); each reads its table by the catalog's name."""
        db, schema = self.query("SELECT current_database() AS d, current_schema() AS s").to_pylist()[0].values()
        try:
            for table, cond in where.items():
                self.execute(f'CREATE OR REPLACE TEMP VIEW "{table}" AS SELECT * FROM "{db}"."{schema}"."{table}" '
                             f"WHERE {cond}")
            yield
        finally:
            for table in where:
                self.execute(f'DROP VIEW IF EXISTS temp.main."{table}"')

    def close(self) -> None:
        self.con.close()
