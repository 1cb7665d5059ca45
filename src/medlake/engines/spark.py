"""Spark: where a site outgrows one machine. Tables are Parquet folders in a warehouse directory.

The catalog is rebuilt at start from the DDL kept beside each table (`<table>/_medlake.sql`), so a warehouse
folder is self-describing and needs no metastore. Arrow goes in as Parquet files written by pyarrow and
comes out through `DataFrame.toArrow()`.

Parquet tables have no transactions and ignore NOT NULL. medlake adds both for its own writes:
`transaction()` snapshots the warehouse with hard links (Parquet files are never modified in place) and
restores it on error; `load_arrow` refuses nulls in required fields.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import exp

from medlake.engines.base import (Column, EngineError, Shapes, conform, limit_held, stopped, template,
                                  translate)

TYPE_OVERRIDES = {"datetime": "TIMESTAMP_NTZ"}
META = "_medlake.json"

_SESSION = None
LOG4J2 = Path(__file__).with_name("spark-log4j2.properties")

FUNCTIONS = {
    "stable_id": template("CAST(CONV(SUBSTRING(MD5(CAST(_1 AS STRING)), 1, 15), 16, 10) AS BIGINT)", "spark"),
    # xxhash64 skips NULL values: each value's null flag is hashed too, so a value moving to a NULL neighbour counts
    "hash": lambda *args: exp.func("xxhash64", *[x for a in args
                                                 for x in (a, exp.Is(this=a.copy(), expression=exp.Null()))]),
}


@lru_cache(maxsize=4096)
def to_spark(sql: str) -> tuple[str, ...]:
    return tuple(translate(sql, "spark", FUNCTIONS))


def spark_session():
    """One local SparkSession per process (Spark allows one active context)."""
    global _SESSION
    if _SESSION is None:
        try:
            from pyspark.sql import SparkSession
        except ImportError as e:  # pragma: no cover
            raise EngineError("Spark support is not installed: pip install 'medlake[spark]'") from e
        os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)
        b = (
            SparkSession.builder.master(os.environ.get("MEDLAKE_SPARK_MASTER", "local[2]"))
            .appName("medlake")
            .config("spark.sql.catalogImplementation", "in-memory")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")  # no [Stage …] bars over the CLI's own progress
            # shuffle and spill files can hold identifying values (EMPI comparisons): encrypted on local disk
            .config("spark.io.encryption.enabled", "true")
            .config("spark.authenticate", "true").config("spark.network.crypto.enabled", "true")
            .config("spark.sql.shuffle.partitions", os.environ.get("MEDLAKE_SPARK_PARTITIONS", "4"))
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
            .config("spark.driver.memory", os.environ.get("MEDLAKE_SPARK_DRIVER_MEMORY", "2g"))
            .config("spark.sql.ansi.enabled", "false")
            # errors only from the driver's start (its notes would come before medlake's own line on stderr)
            .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={LOG4J2.as_uri()}")
        )
        _SESSION = b.getOrCreate()
        _SESSION.sparkContext.setLogLevel("FATAL")  # (a failed task's stack, thousands of lines: the error says it)
    return _SESSION


def _arrow_to_spark_type(t: pa.DataType) -> str:
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_int32(t):
        return "INT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP_NTZ"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    return "STRING"



def _why(e: Exception) -> str:
    """An error's first line; for one from the JVM, whose first line is py4j's "An error occurred while calling
    o570.getResult.", the line with Spark's error class ([FAILED_READ_FILE…] … Expected Spark type double, actual
    Parquet type INT64) or else the deepest cause."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    if first.startswith("An error occurred while calling"):
        named = re.search(r"\[[A-Z][A-Z0-9_.]+\][^\n]*", text)
        causes = re.findall(r"Caused by: ([^\n]+)", text)
        first = named.group(0) if named else causes[-1] if causes else (text.splitlines()[1:] or [first])[0]
    return first[:500]

class SparkEngine:
    name = "spark"
    dialect = "spark"
    shapes = Shapes(unique_test=True)  # every query is a job: the fewer the better
    exact_names = False

    def __init__(self, warehouse: str | Path, read_only: bool = False):
        self.warehouse = Path(warehouse).resolve()
        if read_only and not self.warehouse.is_dir():  # (a mistyped folder was made, and then had no CDM)
            raise EngineError(f"no Spark store at {self.warehouse}: run `medlake init` there, or name the store with "
                              "--store")
        self.warehouse.mkdir(parents=True, exist_ok=True)
        self.url = f"spark:{self.warehouse}"
        self.spark = spark_session()
        self._snapshot: Path | None = None
        self._depth = 0
        self._limit: float | None = None  # seconds a query may run (`limited`)
        self._register_all()

    # -- catalog ---------------------------------------------------------------------------------------
    def _meta(self, table: str) -> dict | None:
        p = self.warehouse / table / META
        return json.loads(p.read_text()) if p.exists() else None

    def _register(self, table: str, meta: dict) -> None:
        cols = ", ".join(f"`{c['name']}` {c['type']}" for c in meta["columns"])
        loc = (self.warehouse / table).as_posix()
        self.spark.sql(f"DROP TABLE IF EXISTS `{table}`")
        self.spark.sql(f"CREATE TABLE `{table}` ({cols}) USING PARQUET LOCATION '{loc}'")

    def _register_all(self) -> None:
        known = {t.name for t in self.spark.catalog.listTables()}
        for d in sorted(self.warehouse.iterdir()):
            meta = self._meta(d.name) if d.is_dir() else None
            if meta and d.name not in known:
                self._register(d.name, meta)

    def _define(self, table: str, columns: list[dict]) -> None:
        d = self.warehouse / table
        d.mkdir(parents=True, exist_ok=True)
        (d / META).write_text(json.dumps({"columns": columns}, indent=1))
        self._register(table, {"columns": columns})

    # -- protocol ------------------------------------------------------------------------------------------
    def _sql(self, sql: str, params: list | None):
        try:
            out = None
            for st in to_spark(sql):
                out = self.spark.sql(st, args=list(params) if params else None)
            return out
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(_why(e)) from e

    def execute(self, sql: str, params: list | None = None) -> None:
        parsed = exp.maybe_parse(sql, dialect="duckdb") if ";" not in sql else None
        if isinstance(parsed, exp.Create) and parsed.kind == "TABLE" and isinstance(parsed.this, exp.Schema):
            self._create_from_sql(parsed)
            return
        if isinstance(parsed, exp.Create) and parsed.kind == "TABLE" and parsed.expression is not None and any(
                isinstance(p, exp.TemporaryProperty) for p in (parsed.args.get("properties") or exp.Properties())):
            self._work_table(parsed.this.name, parsed.expression.sql("duckdb"), params)
            return
        if isinstance(parsed, exp.Drop) and parsed.kind == "TABLE":
            self._sql(sql, params)
            for t in parsed.args.get("tables") or [parsed.this]:
                shutil.rmtree(self.warehouse / t.name, ignore_errors=True)
            return
        if isinstance(parsed, exp.Delete):
            self._delete(parsed, params)
            return
        if isinstance(parsed, exp.Alter) and parsed.args.get("actions") and all(
                isinstance(a, exp.ColumnDef) for a in parsed.args["actions"]):
            self._add_columns(parsed.this.name, parsed.args["actions"])
            return
        if isinstance(parsed, exp.TruncateTable):  # external Parquet tables cannot be truncated by Spark
            for t in parsed.expressions:
                self._replace_files(t.name, None)
            return
        df = self._sql(sql, params)
        if df is not None:
            df.collect()

    def _work_table(self, name: str, select: str, params: list | None) -> None:
        """CREATE TEMP TABLE … AS: the rows, computed now and kept (a local checkpoint). Spark's own translation, a
        temporary view, computed its query again at each read: a work table read after a DELETE from the table it
        was selected from (rows written again with a new value) held no rows any more, and the rows were lost."""
        try:
            self._sql(select, params).localCheckpoint(eager=True).createOrReplaceTempView(name)
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(_why(e)) from e

    def _add_columns(self, name: str, defs: list) -> None:
        """ALTER TABLE … ADD COLUMN (a reader gained a column): into medlake's table definition, which the
        Parquet files written before read as NULL."""
        meta = self._meta(name)
        if meta is None:
            raise EngineError(f"no table {name} in {self.warehouse}")
        have = {c["name"] for c in meta["columns"]}
        new = [{"name": d.name, "type": d.kind.sql("spark"), "nullable": True} for d in defs if d.name not in have]
        if new:
            self._define(name, meta["columns"] + new)

    def _delete(self, delete: exp.Delete, params: list | None) -> None:
        """Parquet tables have no DELETE: write the rows that stay to new files, then swap them in."""
        name = delete.this.name
        where = delete.args.get("where")
        if where is None:
            self._replace_files(name, None)
            return
        keep = f"SELECT * FROM {exp.to_table(name).sql('duckdb')} WHERE NOT COALESCE(({where.this.sql('duckdb')}), FALSE)"
        self._replace_files(name, self._sql(keep, params))

    def _replace_files(self, name: str, df) -> None:
        """Replace a table's Parquet files by those of `df` (None: no rows). Old files stay in a snapshot, if any."""
        table_dir = self.warehouse / name
        if not (table_dir / META).exists():
            raise EngineError(f"no table {name} in {self.warehouse}")
        staged = self.warehouse / f".{name}.rewrite-{uuid.uuid4().hex[:8]}"
        if df is not None:
            try:
                df.write.parquet(staged.as_posix())
            except Exception as e:
                raise EngineError(_why(e)) from e
        for p in table_dir.iterdir():
            if p.name != META:
                p.unlink() if p.is_file() else shutil.rmtree(p)
        for p in staged.glob("*.parquet"):
            os.replace(p, table_dir / p.name)
        shutil.rmtree(staged, ignore_errors=True)
        self.spark.sql(f"REFRESH TABLE `{name}`")

    def _create_from_sql(self, create: exp.Create) -> None:
        name = create.this.this.name
        if (self.warehouse / name / META).exists():
            if create.args.get("exists"):
                return
            raise EngineError(f"table {name} already exists")
        foreign = sorted(d.name for d in self.warehouse.iterdir() if d.is_dir() and d.name[0] not in "._"
                         and not (d / META).exists() and any(d.iterdir()))
        if foreign:  # (medlake's types were declared over them: files of other types failed every read)
            raise EngineError(
                f"{self.warehouse} holds tables medlake did not write ({', '.join(foreign[:5])}"
                f"{', …' if len(foreign) > 5 else ''}: Spark or another tool wrote them): a Spark store is a folder of "
                f"medlake's own; load that CDM into one with `medlake cdm import {self.warehouse} --store "
                "spark:ANOTHER_FOLDER`")
        cols = []
        for cd in create.this.expressions:
            nn = any(isinstance(c.kind, exp.NotNullColumnConstraint) for c in cd.constraints)
            cols.append({"name": cd.name, "type": cd.kind.sql("spark"), "nullable": not nn})
        self._define(name, cols)

    def create_table(self, table, name: str | None = None) -> None:
        from medlake.cdm.ddl import create_table

        self._create_from_sql(create_table(table, name=name, overrides=TYPE_OVERRIDES))

    def query(self, sql: str, params: list | None = None) -> pa.Table:
        df = self._sql(sql, params)
        fired, timer, sc = [], None, self.spark.sparkContext
        if self._limit:  # at the limit every job is cancelled: the session runs one query at a time, and a scalar
            # subquery's jobs, which a job tag or group does not reach, went on holding the cores for the next query
            # (a task already running may still finish its partition: the cores can stay busy a while after)
            sc.setInterruptOnCancel(True)
            timer = threading.Timer(self._limit, lambda: (fired.append(True), sc.cancelAllJobs()))
            timer.start()
        try:
            return df.toArrow()
        except Exception as e:
            raise EngineError(stopped(self._limit) if fired else _why(e)) from e
        finally:
            if timer:
                timer.cancel()
                sc.setInterruptOnCancel(False)

    def limited(self, seconds):
        return limit_held(self, seconds)

    def native(self, sql: str) -> str:
        return ";\n".join(to_spark(sql))

    def _schema(self, table: str) -> pa.Schema:
        meta = self._meta(table)
        if meta is None:
            raise EngineError(f"no table {table} in {self.warehouse}")
        fields = []
        for c in meta["columns"]:
            t = c["type"].upper()
            at = {"BIGINT": pa.int64(), "INT": pa.int32(), "INTEGER": pa.int32(), "DOUBLE": pa.float64(),
                  "DATE": pa.date32(), "TIMESTAMP_NTZ": pa.timestamp("us"), "TIMESTAMP": pa.timestamp("us"),
                  "BOOLEAN": pa.bool_()}.get(t.split("(")[0], pa.string())
            fields.append(pa.field(c["name"], at, nullable=c["nullable"]))
        return pa.schema(fields)

    def load_arrow(self, table: str, data: pa.Table | pa.RecordBatchReader) -> int:
        schema = self._schema(table)
        if isinstance(data, pa.RecordBatchReader):
            data = data.read_all()
        data = conform(data, schema, table)
        if data.num_rows:
            pq.write_table(data, self.warehouse / table / f"part-{uuid.uuid4().hex}.parquet")
            self.spark.sql(f"REFRESH TABLE `{table}`")
        return data.num_rows

    def read_arrow(self, table: str) -> pa.Table:
        return self.query(f'SELECT * FROM "{table}"')

    def tables(self) -> list[str]:
        return sorted(d.name for d in self.warehouse.iterdir() if (d / META).exists())

    def columns(self, table: str) -> list[Column]:
        meta = self._meta(table)
        if meta is None:
            raise EngineError(f"no table {table} in {self.warehouse}")
        # Types as Spark's catalog reports them; nullability from medlake's DDL (Parquet tables drop NOT NULL).
        actual = {f.name: f.dataType.simpleString().upper() for f in self.spark.table(f"`{table}`").schema}
        return [Column(c["name"], actual.get(c["name"], "?"), c["nullable"]) for c in meta["columns"]]

    # -- transactions by snapshot ----------------------------------------------------------------------
    @contextmanager
    def transaction(self, snapshot: bool = False):  # (one writer: nothing commits beside it)
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        snap = self.warehouse.parent / f".{self.warehouse.name}.snapshot-{uuid.uuid4().hex[:8]}"
        shutil.copytree(self.warehouse, snap, copy_function=os.link)
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._restore(snap)
            raise
        finally:
            self._depth = 0
        shutil.rmtree(snap, ignore_errors=True)

    def _restore(self, snap: Path) -> None:
        before = set(self.tables())
        broken = self.warehouse.parent / f".{self.warehouse.name}.rolledback-{uuid.uuid4().hex[:8]}"
        os.replace(self.warehouse, broken)
        os.replace(snap, self.warehouse)
        shutil.rmtree(broken, ignore_errors=True)
        after = set(self.tables())
        for t in before - after:
            self.spark.sql(f"DROP TABLE IF EXISTS `{t}`")
        for t in after:
            self._register(t, self._meta(t))

    def analyze(self, *tables: str) -> None:
        """Nothing to do: Spark plans from the files themselves."""

    def index(self, table: str, *keys: str) -> bool:
        """None: Parquet tables have no indexes."""
        return False

    def plan(self, *, bulk: bool) -> None:
        """Nothing to set: Spark picks its joins by size at run time."""

    @contextmanager
    def scanning(self, waiting=None):
        """Nothing to set: Spark sizes its shuffles at run time."""
        yield

    def data_version(self) -> None:
        """None: each query reads the table's files as they are when it starts."""
        return None

    @contextmanager
    def snapshot(self, tables=()):
        """Nothing: each query reads the table's files as they are when it starts."""
        yield

    @contextmanager
    def restricted(self, where: dict[str, str]):
        """Temporary views (read before the catalog's tables); each reads its table by the catalog's name."""
        db = self.spark.catalog.currentDatabase()
        try:
            for table, cond in where.items():
                self.execute(f'CREATE OR REPLACE TEMP VIEW "{table}" AS SELECT * FROM spark_catalog."{db}"."{table}" '
                             f"WHERE {cond}")
            yield
        finally:
            for table in where:
                self.spark.catalog.dropTempView(table)

    def close(self) -> None:
        """The Spark session is shared by the process and stays up; nothing to release per store."""
