"""PostgreSQL: where OHDSI tools (ATLAS, HADES) use the same CDM. Arrow in and out through ADBC (COPY)."""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager, suppress
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import sqlglot
from sqlglot import exp

from medlake.cdm.ddl import create_table
from medlake.config import redact
from medlake.engines.base import (Column, EngineError, Shapes, arrow_schema_of, conform, message, stopped, template,
                                  translate)

LOCK_WAIT = 10  # seconds a quality run's read waits for a lock before it says who holds it (`scanning`)

# Dialect overrides: keep VARCHAR lengths; float is DOUBLE PRECISION (sqlglot renders DOUBLE that way).
TYPE_OVERRIDES: dict[str, str] = {}


def _numbers(t: pa.Table) -> pa.Table:
    """NUMERIC (a sum of integers, an OHDSI DDL's float column) comes from ADBC as text: as numbers, as DuckDB
    and Spark give them — int64 when every value is whole and fits, else decimal128(38, 0) when whole, else
    double ('NaN' included). (`f"{n:,}"` of a sum of rows failed on text: `medlake transform`'s gap count.)"""
    for i, f in enumerate(t.schema):
        if (f.metadata or {}).get(b"ADBC:postgresql:typname") != b"numeric":
            continue
        col = t.column(i)
        text = pa.chunked_array([c.storage if isinstance(c, pa.ExtensionArray) else c for c in col.chunks], pa.string())
        for typ in (pa.int64(), pa.decimal128(38, 0), pa.float64()):
            try:
                text = text.cast(typ)
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        t = t.set_column(i, pa.field(f.name, text.type, f.nullable), text)
    return t


FUNCTIONS = {
    "stable_id": template("CAST(CAST('x' || LPAD(SUBSTRING(MD5(CAST(_1 AS TEXT)), 1, 15), 16, '0') AS BIT(64)) "
                          "AS BIGINT)", "postgres"),
    # the values as one record, hashed to 64 bits (PostgreSQL 14 or later; about twice as fast as hashing the
    # row's text form), mixed again: the record's hash is linear in its columns' (31 * h + h'), so a fingerprint's
    # sum over rows missed two rows swapping values in most pairs
    "hash": lambda *args: exp.func("hashint8extended", exp.func(
        "hash_record_extended", exp.Anonymous(this="ROW", expressions=list(args)), exp.Literal.number(0)),
        exp.Literal.number(0)),
}


@lru_cache(maxsize=4096)
def to_postgres(sql: str) -> str:
    """DuckDB SQL -> PostgreSQL, with `?` placeholders numbered `$1, $2, …` as libpq wants."""
    n = 0

    def number(node):
        nonlocal n
        if isinstance(node, exp.Placeholder) and not node.this:
            n += 1
            return exp.Parameter(this=exp.Literal.number(n))
        return node

    return ";\n".join(translate(sql, "postgres", FUNCTIONS, number))


class _Busy(Exception):
    """A table is locked by another session (`PostgresEngine.snapshot`)."""


class PostgresEngine:
    name = "postgres"
    dialect = "postgres"
    # a row store: FILTER aggregates skip a CASE per row; a DISTINCT sorts, so on the grouped table; every query
    # reads whole rows, so one windowed scan for the examples; count(DISTINCT key) sorts ~8x faster than a
    # GROUP BY of a million keys, so that first; the planner's estimate of a grouped table's distinct values is
    # far too high, so the concept ids it uses are looked up by the index as an array
    shapes = Shapes(filter_aggs=True, unique_test=True, lookup_array=True, anti_join=True, catalog=True,
                    narrow_delta=True, truncate=True)
    exact_names = True

    def __init__(self, url: str):
        try:
            import adbc_driver_postgresql.dbapi as dbapi
        except ImportError as e:  # pragma: no cover - depends on install
            raise EngineError("PostgreSQL support is not installed: pip install 'medlake[postgres]'") from e
        self.url = url
        try:
            self.con = dbapi.connect(url, autocommit=True)
        except Exception as e:  # adbc raises its own OperationalError family
            raise EngineError(f"cannot connect to {redact(url)}: {str(e).splitlines()[0]}") from e
        self._depth = 0
        self._guarded = False  # in a `snapshot`: each statement in a savepoint (`_step`)
        self._waiting = None  # in `scanning`: told of each wait for a lock (`_run`)
        self._limit = None  # in `limited`: the seconds a statement may run (its statement_timeout)

    def _cursor(self):
        return self.con.cursor()

    @contextmanager
    def _step(self):
        """Inside a `snapshot`, each statement in a savepoint: one that fails (a check's error) is undone alone and
        the snapshot's transaction goes on (else every later statement would fail)."""
        if not self._guarded:
            yield
            return
        self.execute_native("SAVEPOINT step")
        try:
            yield
        except BaseException:
            self.execute_native("ROLLBACK TO SAVEPOINT step")
            raise
        self.execute_native("RELEASE SAVEPOINT step")

    def execute(self, sql: str, params: list | None = None) -> None:
        self._run(sql, params, fetch=False)

    def query(self, sql: str, params: list | None = None) -> pa.Table:
        return self._run(sql, params, fetch=True)

    def _run(self, sql: str, params: list | None, fetch: bool):
        """In `scanning`, a statement that waits `LOCK_WAIT` s for another session's lock (an ETL's TRUNCATE, a
        migration's ALTER) tells `self._waiting` who holds it and waits again: the run goes on when they end."""
        waited = 0
        while True:
            try:
                with self._step(), self._cursor() as cur:
                    try:
                        cur.execute(to_postgres(sql), tuple(params) if params is not None else None)
                        return _numbers(cur.fetch_arrow_table()) if fetch else None
                    except Exception as e:
                        timed_out = self._limit and "statement timeout" in str(e)
                        raise EngineError(stopped(self._limit) if timed_out else message(e)) from e
            except EngineError as e:
                # (a statement of a transaction without savepoints cannot be tried again: its transaction failed)
                if not self._waiting or "lock timeout" not in str(e) or (self._depth and not self._guarded):
                    raise
                waited += LOCK_WAIT
                self._waiting(waited, self._holders())

    def _holders(self) -> str:
        """Who holds a table exclusively (the locks a read waits for): session, user, application, since when,
        what it runs (its text only to the user's own sessions or pg_read_all_stats), and the tables."""
        rows = self.query(
            "SELECT a.pid, a.usename AS who, a.application_name AS app, to_char(a.xact_start, 'HH24:MI:SS') AS since, "
            "left(regexp_replace(a.query, '\\s+', ' ', 'g'), 60) AS what, string_agg(DISTINCT c.relname, ', ') AS t "
            "FROM pg_locks AS l JOIN pg_class AS c ON c.oid = l.relation JOIN pg_stat_activity AS a ON a.pid = l.pid "
            "WHERE l.granted AND l.mode = 'AccessExclusiveLock' AND l.pid <> pg_backend_pid() "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'f') GROUP BY 1, 2, 3, 4, 5 ORDER BY 1").to_pylist()
        return "; ".join(
            f"session {r['pid']} ({r['who']}{', ' + r['app'] if r['app'] else ''}"
            f"{', in a transaction since ' + r['since'] if r['since'] else ''}: {r['what']}) holds {r['t']}"
            for r in rows) or "a session holds a table the checks read"

    def native(self, sql: str) -> str:
        return to_postgres(sql)

    def load_arrow(self, table: str, data: pa.Table | pa.RecordBatchReader) -> int:
        """Append by COPY (ADBC). A table with NUMERIC columns (the OHDSI DDL's type for the CDM's floats), which
        COPY cannot fill from doubles, is filled through a temporary table of doubles by INSERT … SELECT: the
        server then casts each double to its shortest decimal (0.1, not 0.1000000000000000055511)."""
        columns = self.columns(table)
        schema = arrow_schema_of(columns)
        if not len(schema):
            raise EngineError(f"no table {table} in {redact(self.url)}")
        via = f"medlake_load_{table}"[:63] if any(c.type.split("(")[0] in ("NUMERIC", "DECIMAL") for c in columns) else None
        names = ", ".join(f'"{f.name}"' for f in schema)
        batches = data.to_batches() if isinstance(data, pa.Table) else data
        total = 0
        with self._cursor() as cur:
            try:
                for batch in batches:
                    part = conform(pa.Table.from_batches([batch]), schema, table)
                    try:
                        if via:
                            cur.adbc_ingest(via, part, mode="replace", temporary=True)
                            cur.execute(f'INSERT INTO "{table}" ({names}) SELECT {names} FROM pg_temp."{via}"')
                        else:
                            cur.adbc_ingest(table, part, mode="append")
                    except Exception as e:
                        raise EngineError(f"{table}: {str(e).splitlines()[0]}") from e
                    total += part.num_rows
            finally:
                if via:
                    with suppress(Exception):  # (an aborted transaction drops it at its rollback)
                        cur.execute(f'DROP TABLE IF EXISTS pg_temp."{via}"')
        return total

    def read_arrow(self, table: str) -> pa.Table:
        return self.query(f'SELECT * FROM "{table}"')

    def tables(self) -> list[str]:
        """The tables of every schema on the search path (an OHDSI database may keep its CDM and its vocabulary in
        two schemas: `?options=-csearch_path%3Dcdm,vocab` in the URL), as unqualified names resolve them; a view,
        materialized view, foreign or partitioned table is read as a table (a CDM a site exposes as views)."""
        t = self.query(
            "SELECT DISTINCT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE n.nspname = ANY(current_schemas(FALSE)) AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1"
        )
        return [str(x) for x in t.column(0).to_pylist()]

    def columns(self, table: str) -> list[Column]:
        """The columns of the table the name resolves to (the first schema on the search path that has it), from
        the system catalog (information_schema leaves out a materialized view's); types named as
        information_schema names them (format_type: integer, character varying, timestamp without time zone)."""
        rows = self.query(
            "SELECT attname AS column_name, format_type(atttypid, NULL) AS data_type, NOT attnotnull AS nullable "
            "FROM pg_attribute WHERE attrelid = to_regclass(quote_ident(?)) AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum",
            [table],
        ).to_pylist()
        return [Column(r["column_name"], r["data_type"].upper(), r["nullable"]) for r in rows]

    def create_table(self, table, name: str | None = None) -> None:
        self.execute_native(create_table(table, name=name, overrides=TYPE_OVERRIDES, keep_length=True).sql("postgres"))

    def execute_native(self, sql: str) -> None:
        """Run SQL already written for PostgreSQL (no translation)."""
        with self._cursor() as cur:
            try:
                cur.execute(sql)
            except Exception as e:
                raise EngineError(message(e)) from e

    def analyze(self, *tables: str) -> None:
        """ANALYZE: a table filled in this transaction has no statistics otherwise, and the planner's guesses
        (a handful of rows) turn joins of tens of thousands of rows into nested loops."""
        if tables:
            self.execute_native("ANALYZE " + ", ".join(tables))

    def index(self, table: str, *keys: str) -> bool:
        """A B-tree index (if not there yet), named after the table and a hash of its keys. Inside a transaction it
        holds a lock on the table until the end."""
        name = f"ix_{table[:40]}_{hashlib.md5('|'.join(keys).encode()).hexdigest()[:8]}"
        self.execute_native(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({', '.join(keys)})")
        return True

    def plan(self, *, bulk: bool) -> None:
        """For this transaction. Bulk: the planner guesses the rows of every newest version (`rn = 1` after a
        window) and of every coding picked at a handful, and then joins tens of thousands of rows by a nested loop
        or a merge on one of four keys (74 s for the 32k Conditions of 2,000 patients, 2 s with a hash join):
        hash joins only. Otherwise nested loops find the few rows through indexes. Never JIT: it compiles every
        large statement again (~0.3 s each)."""
        settings = {"jit": "off", "enable_nestloop": "off" if bulk else "on", "enable_mergejoin": "off" if bulk else "on",
                    "random_page_cost": "4" if bulk else "1.1"}
        for k, v in settings.items():
            self.execute_native(f"SET LOCAL {k} = {v}")

    @contextmanager
    def scanning(self, waiting=None):
        """For the session, then restored: no JIT (it compiles each wide aggregate for ~1 s, with its huge cost
        estimate, and then runs it in ms), and 256 MB work_mem (at the default 4 MB every GROUP BY of a large
        table's keys goes to disk). A read that waits for a lock is said to `waiting` every `LOCK_WAIT` s (a run
        kept waiting by an ETL had looked hung)."""
        settings = {"jit": "off", "work_mem": "256MB", "lock_timeout": f"{LOCK_WAIT}s" if waiting else None}
        old = {k: self.query(f"SELECT current_setting('{k}') AS v").column(0)[0].as_py() for k, v in settings.items()
               if v}
        for k in old:
            self.execute_native(f"SET {k} = '{settings[k]}'")
        self._waiting = waiting
        try:
            yield
        finally:
            self._waiting = None
            for k, v in old.items():
                self.execute_native(f"SET {k} = '{v}'")

    @contextmanager
    def limited(self, seconds):
        """statement_timeout for the queries in it, then the session's again (a SET in a transaction that is rolled
        back is undone with it)."""
        if not seconds:
            yield
            return
        old = self.query("SELECT current_setting('statement_timeout') AS v").column(0)[0].as_py()
        self.execute_native(f"SET statement_timeout = '{max(1, round(seconds * 1000))}ms'")
        self._limit = seconds
        try:
            yield
        finally:
            self._limit = None
            with suppress(EngineError):  # (in a transaction a failed statement aborted, its rollback undoes the SET)
                self.execute_native(f"SET statement_timeout = '{old}'")

    def data_version(self) -> str:
        """The current snapshot (its oldest and next transaction ids and those in progress): it changes when a
        transaction that writes begins or ends, anywhere on the server (inside a REPEATABLE READ transaction, the
        transaction's)."""
        return self.query("SELECT CAST(pg_current_snapshot() AS TEXT) AS v").column(0)[0].as_py()

    @contextmanager
    def snapshot(self, tables=()):
        """A REPEATABLE READ transaction, each statement in a savepoint (`_step`): a quality run beside a loading ETL
        counted some checks of a table before a load and some after. `tables` (those the checks read) are locked
        for reading first: the snapshot is taken by the first query, so a query that then waited for an ETL's
        TRUNCATE saw the table empty (TRUNCATE is not MVCC-safe). A lock that waits `LOCK_WAIT` s is said with who
        holds it (`_waiting`, outside the transaction: a query inside would take the snapshot) and asked again;
        the ETL's TRUNCATE then waits for the table's checks."""
        waited = 0
        while True:
            try:
                with self.transaction(snapshot=True):
                    self._lock(tables)
                    self._guarded = True
                    try:
                        yield
                    finally:
                        self._guarded = False
                return
            except _Busy:
                waited += LOCK_WAIT
                self._waiting(waited, self._holders())

    def _lock(self, tables) -> None:
        """LOCK … IN ACCESS SHARE MODE (it takes no snapshot) each table; one the user may not lock (not to be read,
        a foreign table) is left to its checks; a lock that timed out raises `_Busy`."""
        for t in tables:
            self.execute_native("SAVEPOINT lock")
            try:
                self.execute_native(f'LOCK TABLE "{t}" IN ACCESS SHARE MODE')
            except EngineError as e:
                if self._waiting and "lock timeout" in str(e):
                    raise _Busy() from None
                self.execute_native("ROLLBACK TO SAVEPOINT lock")
            else:
                self.execute_native("RELEASE SAVEPOINT lock")

    @contextmanager
    def transaction(self, snapshot: bool = False):
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.execute_native("BEGIN ISOLATION LEVEL REPEATABLE READ" if snapshot else "BEGIN")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self.execute_native("ROLLBACK")
            raise
        self._depth = 0
        self.execute_native("COMMIT")

    @contextmanager
    def restricted(self, where: dict[str, str]):
        """Temporary views (pg_temp is searched first); each reads its table in the schema the name resolved to."""
        made = []
        temp = "SELECT has_database_privilege(current_database(), 'TEMP') AS t"
        if where and not self.query(temp).column(0)[0].as_py():
            raise EngineError("a run of one cohort needs the TEMP privilege on the database, to see each table's "
                              "rows of the cohort's persons as a temporary view: GRANT TEMP ON DATABASE … TO the "
                              "store's user")
        try:
            for table, cond in where.items():
                schema = self.query("SELECT n.nspname AS s FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = "
                                    "c.relnamespace WHERE c.oid = to_regclass(quote_ident(?))", [table]).column(0)[0]
                self.execute(f'CREATE TEMP VIEW "{table}" AS SELECT * FROM "{schema}"."{table}" WHERE {cond}')
                made.append(table)
            yield
        finally:
            for table in made:
                self.execute_native(f'DROP VIEW IF EXISTS pg_temp."{table}"')

    def close(self) -> None:
        self.con.close()


# --- a throwaway local server, for tests and benchmarks -------------------------------------------------


def _pg_bindir() -> Path:
    for cand in [os.environ.get("MEDLAKE_PG_BINDIR")] + sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if cand and Path(cand, "initdb").exists():
            return Path(cand)
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise EngineError("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempCluster:
    """A PostgreSQL cluster in a temporary folder on a free loopback port; `stop()` removes it.

    initdb refuses to run as root, so as root the cluster belongs to the `postgres` OS user.
    """

    def __init__(self):
        self.bindir = _pg_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="medlake-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres")
            os.chmod(self.dir, 0o755)
        self.user = "postgres" if self._as else os.environ.get("USER", "postgres")

    def _run(self, *args: str) -> None:
        r = subprocess.run([*self._as, *args], capture_output=True, text=True)
        if r.returncode:
            raise EngineError(f"{Path(args[0]).name} failed: {(r.stderr or r.stdout).strip()[-500:]}")

    def start(self) -> "TempCluster":
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user,
                  "-E", "UTF8", "--locale=C", "--no-sync")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off " \
               f"-c synchronous_commit=off -c full_page_writes=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"),
                  "-w", "-t", "60", "start")
        return self

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def create_database(self, name: str) -> str:
        eng = PostgresEngine(self.url)
        try:
            eng.execute_native(f'CREATE DATABASE "{name}"')
        finally:
            eng.close()
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except EngineError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        time.sleep(0)
        self.stop()
