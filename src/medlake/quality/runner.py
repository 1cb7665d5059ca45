"""Run the checks on a store: set-based, incremental, resumable; honest results.

Work is done table by table. Each table's results are written to `<out>/<run-id>/tables/<table>.json` as soon
as they are known, with a key made of the table's fingerprint (row count and a sum of row hashes), the
fingerprints of the tables its checks read (person, concept, …) and the list of checks. A later run reuses a
table's results when its key is unchanged (incremental); a run that stopped half-way continues where it
stopped (resumable). At the end `results.json` (and the same as `results.csv`), `run.json`, `report.html` and
`dqd.json` are written.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import difflib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import re

from medlake.cdm import model, store
from medlake.cdm.importer import IMPORTED
from medlake.config import OptionError, redact
from medlake.engines import store_url
from medlake.engines.base import EngineError, stopped
from medlake.quality import compile as cp
from medlake.quality.report import FEED_CHECKS
from medlake.quality.checks import (Check, build_checks, checks as all_dqd_checks, example_ids, fails,
                                    threshold_files)

RESULT_FIELDS = (
    "check_id", "check_name", "check_level", "category", "subcategory", "context", "severity", "cdm_table",
    "cdm_field", "concept_id", "unit_concept_id", "status", "num_violated_rows", "num_denominator_rows",
    "pct_violated_rows", "threshold", "failed", "error", "not_applicable_reason", "examples", "example_field",
    "description", "source",
)


def result(c: Check, status: str, violated: int | None = None, denominator: int | None = None, *,
           error: str | None = None, reason: str | None = None) -> dict:
    """One check's result. `status` is decided here from the counts and the threshold unless given as
    not_applicable or error. DQD's rule: threshold 0 fails on any violation, otherwise pct > threshold %."""
    pct = None
    if status == "counted":
        if not denominator:
            status, reason = "not_applicable", reason or "no rows to check (denominator 0)"
        else:
            pct = violated / denominator
            status = "failed" if fails(violated, pct, c.threshold) else "passed"
            reason = None  # given for the case the check has nothing to judge
    return {
        "check_id": c.id, "check_name": c.name, "check_level": c.level, "category": c.category,
        "subcategory": c.subcategory, "context": c.context, "severity": c.severity, "cdm_table": c.table,
        "cdm_field": c.field, "concept_id": c.concept_id, "unit_concept_id": c.unit_concept_id,
        "status": status, "num_violated_rows": violated, "num_denominator_rows": denominator,
        "pct_violated_rows": pct, "threshold": c.threshold, "failed": status == "failed", "error": error,
        "not_applicable_reason": reason, "examples": [], "example_field": None, "description": c.description,
        "source": c.source, "notes": c.notes or None,
    } | ({"rule": rule_of(c)} if c.source == "site" else {})


def rule_of(c: Check) -> str:
    """A site check's rule as its file gives it (predicate, denominator, threshold), as a short hash: a result
    compared with one of another rule is said to be of a changed rule (`compare`), not of changed data."""
    return hashlib.sha256(repr((c.params, c.threshold)).encode()).hexdigest()[:12]


TABLE_REF = re.compile(r"(?<!YEAR )(?<!MONTH )(?<!DAY )\b(?:FROM|JOIN)\s+(?!\()", re.IGNORECASE)  # a base table read (not a subquery)


FIELD_REF = re.compile(r'\b(t|fk_\w+|dth)\.("[^"]+"|\w+)')  # a field a check's condition reads: alias.field

# How this release counts (its checks, compiler, runner, the engines' SQL rewrites and the CDM model): a table's
# results are reused only from a run that counted them the same way, so an upgrade that changes what a check counts
# re-checks every table once
COUNTING = hashlib.sha256(b"".join(Path(m).read_bytes() for m in sorted(
    [cp.__file__, __file__, str(Path(cp.__file__).with_name("checks.py")), model.__file__]
    + [str(p) for p in (Path(__file__).parents[1] / "engines").glob("*.py")]))).hexdigest()[:16]

NA_IF_NO_VALUES = ("isForeignKey", "fkDomain", "fkClass", "isStandardValidConcept",
                   "standardConceptRecordCompleteness", "sourceConceptRecordCompleteness",
                   # (their denominators, as DQD's, count rows without a value too)
                   "cdmDatatype", "plausibleTemporalAfter", "plausibleDuringLife", "withinVisitDates",
                   "isRequired", "isPrimaryKey", "sourceValueCompleteness")
# (DQD 2.8: every check of a field no row fills but cdmField and measureValueCompleteness, which say it)


class RowCounts(dict):
    """The store's tables -> row count: the tables checked, counted up front; a table only referenced (the
    vocabulary, a foreign key's target) when first needed, and then only whether it has rows (0 or 1): counting
    a full concept_ancestor (~80M rows) takes a row store seconds."""

    def __init__(self, tables, count):
        super().__init__({t: None for t in tables})
        self._count = count

    def __getitem__(self, table):
        v = super().__getitem__(table)
        if v is None:
            v = self._count(table)
            self[table] = v
        return v

    def get(self, table, default=None):
        return self[table] if table in self else default


class Counted:
    """An engine wrapper that counts the queries issued and the table scans they contain."""

    def __init__(self, engine):
        self.engine = engine
        self.queries = 0
        self.scans = 0
        self.seconds = 0.0
        self.log: list[tuple[float, str]] = []  # (seconds, SQL) of every query, for profiling (bench/)

    def query(self, sql: str, params=None):
        self.queries += 1
        self.scans += len(TABLE_REF.findall(sql))
        t0 = time.perf_counter()
        try:
            return self.engine.query(sql, params)
        finally:
            took = time.perf_counter() - t0
            self.seconds += took
            self.log.append((took, sql))

    def __getattr__(self, name):
        return getattr(self.engine, name)


@dataclass
class Run:
    run_id: str
    dir: Path
    results: list[dict]
    summary: dict
    rechecked: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)


def _fingerprint_sql(table: str, columns: dict[str, str]) -> str:
    """Row count and the sum of a 64-bit hash of each whole row (the engine's own hash): the same rows in any order
    give the same sum, and a change to any value of any row changes it, but for a hash collision. Not
    cryptographic."""
    cols = ", ".join(f"t.{cp.q(n)}" for n in columns)
    return (f"SELECT count(*) AS f0, sum(CAST(hash({cols}) AS DECIMAL(38, 0))) AS f1 "
            f"FROM {cp.q(table)} AS t")


# every one-column PRIMARY KEY of the store's schema: the engine keeps such a key unique and not NULL
DECLARED_KEYS = ("SELECT tc.table_name AS t, min(kcu.column_name) AS c FROM information_schema.table_constraints AS tc "
                 "JOIN information_schema.key_column_usage AS kcu ON kcu.constraint_name = tc.constraint_name AND "
                 "kcu.table_schema = tc.table_schema AND kcu.table_name = tc.table_name WHERE tc.constraint_type = "
                 "'PRIMARY KEY' AND tc.table_schema = current_schema() GROUP BY tc.table_name, tc.constraint_name "
                 "HAVING count(*) = 1")
# the same from PostgreSQL's own catalog, of the tables the search path resolves: information_schema shows a
# constraint only to the table's owner (a read-only user saw none), and of the first schema only
DECLARED_KEYS_PG = ("SELECT c.relname AS t, min(a.attname) AS c FROM pg_constraint AS k JOIN pg_class AS c ON c.oid = "
                    "k.conrelid JOIN pg_attribute AS a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1] WHERE "
                    "k.contype = 'p' AND array_length(k.conkey) = 1 AND c.oid = to_regclass(quote_ident(c.relname)) "
                    "GROUP BY c.relname")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.9g}"
    return str(v)


COHORT_TABLE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?")  # DQD's cohortDatabaseSchema.cohortTableName


def _qualified(name: str) -> str:
    return ".".join(cp.q(x) for x in name.split("."))


SEVERITIES = {"source", "feed"}  # the severities of medlake's source-level checks (DQD's: fatal, convention, …)
LEVELS = ("TABLE", "FIELD", "CONCEPT", "SOURCE")  # DQD's check levels, and medlake's source-level checks
# DQD's default `tablesToExclude`: the vocabulary comes from Athena and is checked there, not at every site (a
# full vocabulary is ~100M rows of concept_ancestor and concept_relationship: most of a run's work, none of its use)
VOCABULARY_TABLES = ("concept", "vocabulary", "concept_ancestor", "concept_relationship", "concept_class",
                     "concept_synonym", "relationship", "domain")


class Runner:
    def __init__(self, engine, version: str, out: Path, *, site_checks: list[tuple[Check, cp.Item]] = (),
                 mode: str = "set", incremental: bool = True, resume: bool = True,
                 progress: Callable[[str, int, int], None] | None = None,
                 notice: Callable[[str], None] | None = None, only: list[str] | None = None,
                 exclude: Iterable[str] | None = None, feed: dict | None = None, sources: bool = True,
                 source_fields: dict | None = None,
                 version_from: str = "as given", write_table: str | None = None, tuning: dict | None = None,
                 check_names: Iterable[str] | None = None, dqd_thresholds: Iterable[str] = (),
                 check_levels: Iterable[str] | None = None, cohort: tuple[str, int] | None = None,
                 check_severity: Iterable[str] | None = None, fail_on_new: bool = False,
                 site_timeout: float | None = None, keyed: bool = True, site_file: str | None = None):
        """`only`: check just these tables; otherwise every CDM table but `exclude` (default: the vocabulary
        tables, as DQD; `()` checks every table). A table named in `only` is checked even if excluded.
        `write_table`: also put the DQD checks' results in this table of the store, as DQD's `writeToTable` does
        (its `dqdashboard_results` layout, the rows replaced each run). `tuning`: the site's thresholds and notes
        (site.tuning_config), applied to the results of every check, re-used ones too. `check_names`: only checks
        of these types (DQD's `checkNames`: `isForeignKey`, …; medlake's and the site's names too).
        `dqd_thresholds`: the site's own copies of DQD's threshold files (checks.threshold_file), read here: a
        mistake in them is a ValueError before any run. `cohort`: (cohort table, cohort_definition_id): check the
        rows of that cohort's persons only (DQD's cohortTableName and cohortDefinitionId; `restricted`).
        `check_levels`, `check_severity`: only checks of these levels and severities (DQD's checkLevels and
        checkSeverity). `fail_on_new`: the run is a pipeline's gate on new failures and errors (`--fail-on-new`): a
        run it refuses is not what later runs compare with (`since_last_run`), so a retry is refused again.
        `site_timeout`: seconds a query of site checks may run (`--site-timeout`): a predicate that would scan for
        ever is its check's error, and the run goes on. `keyed`: record each table's key (the checks and the
        fingerprints of the data they read) even when not reusing (`incremental`) or resuming, so that the run
        after a `--full` run reuses its results; False only for one-off executions (the benchmark's)."""
        self.eng = Counted(engine)
        self.store = redact(engine.url)  # names the store in the reports and run folders, without a password
        self.shapes = engine.shapes  # the query shapes the engine runs faster (engines/base.py Shapes)
        self.version = version
        self.out = Path(out)
        self.site = list(site_checks)
        self.site_file = str(Path(site_file).resolve()) if site_file else None  # (--checks: what run.json records)
        self.mode = mode
        self.incremental = incremental
        self.resume = resume
        self.keyed = keyed or incremental or resume
        self.progress = progress
        self.fail_on_new = fail_on_new
        self.site_timeout = site_timeout
        self.notice = notice  # a message to show now, not only in the summary (a wait for another session's lock)
        self.waits: dict[str, str] = {}  # what waited for a lock: for how long, held by whom
        self._said: dict[str, int] = {}  # when a wait was last said (`_waiting`)
        self.unprinted: dict[str, str] = {}  # tables the engine could not fingerprint: why (checked every run)
        self._at = ("the store survey", 0, 0)  # what the run is doing, for a wait's message
        self.only = sorted({t.lower() for t in only}) if only else None  # (once each, as the store names them)
        self.exclude = set(VOCABULARY_TABLES if exclude is None else (t.lower() for t in exclude)) - set(self.only or ())
        self.default_exclude = exclude is None  # (the vocabulary left out as DQD leaves it, not by the site's word)
        self.feed = feed
        self.sources = sources and not cohort  # the source-level checks (staging, landing, lineage) of a whole run
        if cohort and not COHORT_TABLE.fullmatch(cohort[0]):
            raise ValueError(f"cohort table {cohort[0]!r} is not a table name (NAME or SCHEMA.NAME)")
        self.cohort = (cohort[0].lower(), int(cohort[1])) if cohort else None
        self.cohort_subjects: int | None = None
        self.source_fields = source_fields  # the site's staging tables' keys and mandatory fields (site.py)
        self.version_from = version_from  # how the CDM version was found (store.detect_version), for the reports
        # a cohort's results go to their own table, as DQD names it (writeResultsTo: `<name>_<cohort id>`)
        self.write_table = f"{write_table}_{self.cohort[1]}" if write_table and self.cohort else write_table
        self.tuning = tuning or {}
        self.names = set(check_names or ())
        self.levels = {x.upper() for x in check_levels or ()}  # DQD's checkLevels (and SOURCE: medlake's)
        if self.levels - set(LEVELS):
            raise OptionError(f"no check level {', '.join(sorted(self.levels - set(LEVELS)))}: the levels are "
                              f"{', '.join(LEVELS)}")
        self.severities = {x.lower() for x in check_severity or ()}  # DQD's checkSeverity (and medlake's)
        self.dqd_files = threshold_files(dqd_thresholds, version)
        self._checks: tuple[Check, ...] | None = None
        self._fp: dict[str, str] = {}
        self._unique: dict[tuple[str, str], bool | None] = {}

    def _wanted(self, name: str, level: str, severity: str) -> bool:
        """A check of a type (`--check-names`), level (`--check-levels`) and severity (`--check-severity`) this run
        was asked for."""
        return (not self.names or name in self.names) and (not self.levels or level in self.levels) and (
            not self.severities or severity in self.severities)

    def dqd_checks(self) -> tuple[Check, ...]:
        """DQD's checks (and medlake's beside them) of the store's CDM version, from the site's threshold files where
        given."""
        if self._checks is None:  # (read once a run: the site's files as they are now)
            self._checks = build_checks(self.version, None, self.dqd_files) if self.dqd_files else all_dqd_checks(
                self.version)
        return self._checks

    # -- store facts --------------------------------------------------------------------------------------
    def _name(self, name: str) -> str:
        """A table's or column's name as the checks' SQL reaches it: in lower case where names match in any case;
        as it is where they match exactly (PostgreSQL: "PERSON", created quoted, is not the CDM's person)."""
        return name if self.eng.engine.exact_names else name.lower()

    def _survey(self) -> None:
        tables = [self._name(t) for t in self.eng.tables()]
        if not set(tables) & set(model.load(self.version).table_names):
            raise ValueError(self._no_cdm())
        wanted = [t.name for t in model.load(self.version).tables if t.name in tables]
        wanted += [c.table for c, _ in self.site if c.table in tables and c.table not in wanted]
        wanted = [t for t in wanted if self._checked(t)]
        self.present = RowCounts(tables, self._count)
        self.denied: dict[str, str] = {}  # tables the store's user may not read: why
        if wanted:  # the tables to check, counted in one query; the ones they refer to when first needed
            sql = " UNION ALL ".join(f"SELECT '{n}' AS t, count(*) AS n FROM {cp.q(n)}" for n in wanted)
            try:
                rows = self.eng.query(sql).to_pylist()
            except EngineError:  # a table the user may not read (notes kept from researchers): the others are checked
                rows = []
                for n in wanted:
                    try:
                        rows += self.eng.query(f"SELECT '{n}' AS t, count(*) AS n FROM {cp.q(n)}").to_pylist()
                    except EngineError as e:
                        self.denied[n] = _why_not(e)
            for r in rows:
                self.present[r["t"]] = r["n"]
        self.columns: dict[str, dict[str, str]] = {}

    def mismatched_columns(self, tables: list[str]) -> list[dict]:
        """The columns the store holds as text (or a date as a number) where the CDM says a number or a date: an
        OHDSI database loaded from CSV as it came. The checks that compare them stop with an error on the first
        value they cannot read ('20200101' as a date), which the errors alone do not explain (run.json, warnings)."""
        spec = {t.name: t for t in model.load(self.version).tables}
        wrong = []
        for table in tables:
            if table not in spec or table not in self.present:
                continue
            have = self.cols(table)
            for f in spec[table].fields:
                got = have.get(f.name, "").split("(")[0].strip()
                if f.kind != "varchar" and got.startswith(cp.TEXTUAL) or (
                        f.kind in ("date", "datetime") and got in cp.INTEGRAL + cp.FLOATING):
                    wrong.append({"table": table, "field": f.name, "type": got, "cdm_type": f.kind})
        return wrong

    def _checked(self, table: str) -> bool:
        return table not in self.exclude and (not self.only or table in self.only)

    def _count(self, table: str) -> int:
        """1 if `table` has a row, else 0 (see RowCounts); 1 if it cannot be read (`denied`: the checks that read it
        say why)."""
        try:
            return self.eng.query(f"SELECT count(*) AS n FROM (SELECT 1 AS x FROM {cp.q(table)} LIMIT 1) AS r"
                                  ).column(0)[0].as_py()
        except EngineError as e:
            self.denied[table] = _why_not(e)
            return 1

    def cols(self, table: str) -> dict[str, str]:
        if not self.columns and self.shapes.catalog:  # every table in one query
            for r in self.eng.query("SELECT table_name, column_name, data_type FROM information_schema.columns "
                                    "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
                                    ).to_pylist():
                self.columns.setdefault(self._name(r["table_name"]), {})[self._name(r["column_name"])] = \
                    r["data_type"].upper()
        if table not in self.columns:
            self.columns[table] = {self._name(c.name): c.type.upper() for c in self.eng.columns(table)}
        return self.columns[table]

    def declared_keys(self) -> set[tuple[str, str]]:
        """(table, column) of the one-column primary keys the engine enforces (an OHDSI database with its
        primary-key DDL applied): such a key has no duplicate and no NULL, so its isPrimaryKey check needs no
        query. Empty on an engine without a catalog of constraints (Spark)."""
        if not hasattr(self, "_keys"):
            self._keys: set[tuple[str, str]] = set()
            if self.shapes.catalog:
                try:
                    sql = DECLARED_KEYS_PG if self.eng.engine.name == "postgres" else DECLARED_KEYS
                    self._keys = {(self._name(r["t"]), self._name(r["c"])) for r in self.eng.query(sql).to_pylist()}
                except EngineError:
                    pass  # no such catalog: every key is counted
        return self._keys

    def fingerprint(self, table: str) -> str:
        if table not in self._fp:
            if table not in self.present:
                self._fp[table] = "absent"
            else:
                try:
                    row = self.eng.query(_fingerprint_sql(table, self.cols(table))).to_pylist()[0]
                    # the columns' names and types too: the hash of a row is of its values in order, so a renamed
                    # column, or two whose names were swapped, gave the same sum (review-incr #1)
                    self._fp[table] = "|".join([*(_fmt(v) for v in row.values()),
                                                *(f"{n} {t}" for n, t in self.cols(table).items())])
                except EngineError as e:  # (a column the engine cannot hash): no key ever matches, always checked
                    self._fp[table] = f"unknown {time.time_ns()}"
                    self.unprinted[table] = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        return self._fp[table]

    def _path(self) -> str:
        """PostgreSQL's search path, as set (the schemas the store's tables are read from)."""
        return self.eng.query("SELECT current_setting('search_path') AS p").column(0)[0].as_py()

    def _no_cdm(self) -> str:
        """Why a store without a table of the CDM is not checked: on PostgreSQL, where it looked."""
        if self.eng.engine.name == "postgres":
            return (f"no table of OMOP CDM v{self.version} on the search path ({self._path()}) of {self.store}: "
                    "name the schemas of the CDM and the vocabulary in the store URL (?options=-csearch_path%3Dcdm,"
                    "vocab), as DQD's cdmDatabaseSchema and vocabDatabaseSchema"
                    + "".join(f"; {w}" for w in self._no_schema()))
        return (f"no table of OMOP CDM v{self.version} in {self.store}: make one (medlake init, then medlake "
                "transform) or import one (medlake cdm import DIR)")

    def _no_schema(self) -> list[str]:
        """PostgreSQL: the schemas on the search path that do not exist (a misspelt `cdmx` is passed over quietly)."""
        if self.eng.engine.name != "postgres":
            return []
        named = [x.strip().strip('"') for x in self._path().split(",") if x.strip() and "$user" not in x]
        have = set(self.eng.query("SELECT nspname FROM pg_namespace").column(0).to_pylist())
        gone = [x for x in named if x not in have]
        return [f"schema(s) {', '.join(gone)} on the search path do not exist: a misspelt name? (schemas: "
                f"{', '.join(sorted(h for h in have if not h.startswith('pg_') and h != 'information_schema'))})"
                ] if gone else []

    def _unreadable(self) -> list[str]:
        """Warnings of what the checks could not read: tables the store's user may not read, and tables or columns
        named in upper case where names match exactly (the checks, as DQD's SQL, do not find them)."""
        out = []
        if self.denied:
            names = ", ".join(sorted(self.denied))
            out.append(f"{len(self.denied)} table(s) the store's user may not read ({names}: "
                       f"{next(iter(self.denied.values()))}): the checks that read them are errors; give the user "
                       f"SELECT on them (GRANT SELECT ON … TO …), or leave them out with --exclude {names} (it "
                       "replaces the default list: name the vocabulary tables too)")
        if self.eng.engine.exact_names:
            cdm = model.load(self.version)
            named = [f'"{t}"' for t in self.present if t != t.lower() and t.lower() in cdm.table_names]  # (as listed)
            named += [f'{t}."{c}"' for t, cols in self.columns.items() if t in cdm.table_names
                      for c in cols if c != c.lower() and c.lower() in cdm.table(t).field_names]
            if named:
                out.append(f"{len(named)} table(s) or column(s) named in upper case, which the checks (and DQD's SQL, "
                           f"which does not quote names) do not find as the CDM's: {', '.join(named[:10])}; rename "
                           "them in lower case (ALTER TABLE \"PERSON\" RENAME TO person; ALTER TABLE t RENAME COLUMN "
                           "\"X\" TO x)")
        return out

    # -- one table ----------------------------------------------------------------------------------------
    def context(self, table: str, probe: bool = True) -> cp.Context:
        """`probe`: test the keys of the tables it joins (False: only the tables read are wanted, no query)."""
        cols = self.cols(table)
        spec = model.load(self.version)
        pk = spec.table(table).primary_key if table in spec.table_names else []
        idc = next((c for c in pk + ["person_id"] if c in cols), next(iter(cols), None))
        person = tuple(self.cols("person")) if "person" in self.present else None
        unique = (lambda t, k: self.key_is_unique(t, k) is not False) if probe else (lambda t, k: True)
        return cp.Context(table, cols, self.present, idc, shapes=self.shapes, person_columns=person, unique=unique)

    def key_is_unique(self, table: str, key: str) -> bool | None:
        """Whether `key` is unique in `table` (one NULL key aside, but in a DISTINCT count): a key the store
        enforces is; else tested once per run (isPrimaryKey's first test; a check joining a table whose key is
        duplicated joins it one row per key: compile.one_per_key). None when the test fails (isPrimaryKey's own
        query then says why; a join takes the table as it is)."""
        if (table, key) in self.declared_keys():
            return True
        if (table, key) not in self._unique:
            self._unique[(table, key)] = None
            tests = [cp.key_unique_sql(table, key, True)] if self.shapes.bitmap_keys else []
            # where a bitmap cannot hold the keys, an engine that sorts them counts their duplicates at once (DuckDB:
            # 0.34-0.41 s for 8.5M hashed keys, against 0.45-0.60 s for count(DISTINCT …) before the same sort)
            tests.append(cp.primary_key_sql(table, key, sort=True)[0] if self.shapes.sorted_keys else
                         cp.key_unique_sql(table, key))
            for sql in tests:
                try:
                    self._unique[(table, key)] = self.eng.query(sql).column(0)[0].as_py() == 0
                    break
                except EngineError:
                    continue
        return self._unique[(table, key)]

    def plan(self, table: str, checks: list[Check], probe: bool = True):
        """Compile a table's checks: (results known without querying, field items, pk, concept, table-level)."""
        known: dict[str, dict] = {}
        if table not in self.present:
            for c in checks:
                if c.name == "cdmTable":
                    known[c.id] = result(c, "counted", 1, 1)
                else:
                    known[c.id] = result(c, "not_applicable", reason=f"table {table} absent")
            return known, [], [], [], [], {table}, None
        ctx = self.context(table, probe)
        empty = self.present.get(table) == 0
        items, pks, concept, tlevel, reads = [], [], [], [], {table}
        for c in checks:
            try:
                if c.name == "cdmTable":
                    known[c.id] = result(c, "counted", 0, 1)
                elif c.name == "cdmField":
                    known[c.id] = result(c, "counted", 0 if c.field in ctx.columns else 1, 1)
                elif c.level == "TABLE":
                    sql, ex, needs = cp.table_level_sql(c, ctx, dqd=self.mode == "dqd")
                    tlevel.append((c, sql, ex))
                    reads.update(needs)
                elif empty:
                    raise cp.NotApplicable(f"table {table} empty")
                elif c.name == "isPrimaryKey":
                    ctx.need_column(c.field)
                    pks.append(c)
                elif c.level == "CONCEPT":
                    ctx.need_column(c.field)
                    if c.name == "plausibleGenderUseDescendants":  # (alone: plausibleGender reads no vocabulary)
                        ctx.need_table("concept_ancestor", "descendants")
                    concept.append(c)
                else:
                    it = cp.field_item(c, ctx)
                    items.append(it)
                    reads.update(it.needs)
            except cp.NotApplicable as e:
                known[c.id] = result(c, "not_applicable", reason=str(e))
        cq = []
        if concept:
            for kind in (("plausibleValueLow", "plausibleValueHigh"), ("plausibleGender", "plausibleGenderUseDescendants"),
                         ("plausibleUnitConceptIds",)):
                group = [c for c in concept if c.name in kind]
                try:
                    cq += cp.concept_queries(table, group, ctx)
                except cp.NotApplicable as e:
                    for c in group:
                        known[c.id] = result(c, "not_applicable", reason=str(e))
            for _, _, r, _ in cq:
                reads.update(r)
        return known, items, pks, cq, tlevel, reads, ctx

    def run_table(self, table: str, checks: list[Check], site_items: list[cp.Item]) -> list[dict]:
        if table in self.denied:  # there, but not to be read by the store's user: every check says so
            return [result(c, "counted", 0, 1) if c.name == "cdmTable" else result(c, "error", error=(
                f"cannot read {table}: {self.denied[table]}")) for c in checks + [i.check for i in site_items]]
        known, items, pks, cq, tlevel, reads, ctx = self.plan(table, checks)
        if ctx is None:  # absent table (a site check's: maybe misspelt)
            near = difflib.get_close_matches(table, list(self.present), 1) if site_items else []
            absent = f"table {table} absent" + (f" (did you mean {near[0]}?)" if near else "")
            return list(known.values()) + [result(i.check, "not_applicable", reason=absent) for i in site_items]
        res = dict(known)
        conds: dict[str, tuple[str, tuple[str, ...]]] = {}
        if self.present.get(table) == 0:
            for it in site_items:
                res[it.check.id] = result(it.check, "not_applicable", reason=f"table {table} empty")
            site_items = []
        for it in [it for it in site_items if it.check.field and it.check.field not in ctx.columns]:
            near = difflib.get_close_matches(it.check.field, list(ctx.columns), 1)  # a check of a field not there
            res[it.check.id] = result(it.check, "not_applicable", reason=f"field {table}.{it.check.field} absent"
                                      + (f" (did you mean {near[0]}?)" if near else ""))
            site_items.remove(it)
        # field-level: one scan for the DQD checks, one for site checks (their SQL is the site's own).
        # DQD: a check on a field with no values at all is not applicable, not passed
        empty_ok = sorted({it.check.field for it in items if it.check.name in NA_IF_NO_VALUES}
                          | {c.field for c in pks if c.field in ctx.columns})
        probes = [cp.Item(Check("nonNull", "FIELD", table, f, source="probe"), f"count(t.{cp.q(f)})", "count(*)")
                  for f in empty_ok]
        found: dict[str, tuple[str, tuple[str, ...]]] = {}  # violating rows by value, from the grouped scan
        self._scan(table, items + probes, ctx, res, found)  # the DQD checks
        with self.eng.engine.limited(self.site_timeout if site_items else None):  # the site's own SQL, in its time
            self._scan(table, site_items, ctx, res, found)  # limit (a scan stopped: each check alone, in the same)
        for it in site_items:
            if (res.get(it.check.id) or {}).get("error") == stopped(self.site_timeout or 0):
                res[it.check.id]["error"] += (" for a site check (--site-timeout): its predicate reads too much; "
                                              "rewrite it, or raise the limit")
        for it in items + site_items:
            conds[it.check.id] = found.get(it.check.id) or (it.where, it.joins)
        empty = set()
        for p in probes:
            got = res.pop(p.check.id)
            if got["status"] != "error" and not got["num_violated_rows"]:
                empty.add(p.check.field)
        for c in [it.check for it in items] + [c for c in pks if c.field in empty]:
            if c.field in empty and c.name in NA_IF_NO_VALUES:
                res[c.id] = result(c, "not_applicable", reason=f"field {table}.{c.field} has no values")
        for c in [c for c in pks if c.field not in empty]:
            if self.mode == "set" and (table, c.field) in self.declared_keys():
                res[c.id] = result(c, "counted", 0, self.present.get(table, 0))
                res[c.id]["answered_by"] = f"the store's PRIMARY KEY constraint on {table}({c.field})"
                continue
            sql, ex = cp.primary_key_sql(table, c.field, sort=self.shapes.sorted_keys)
            if self.mode == "dqd":
                sql = cp.primary_key_dqd_sql(table, c.field)
            elif self.shapes.unique_test and self.key_is_unique(table, c.field) is True:
                # first the test that every key is distinct (shared with the joins); the exact count only when not
                res[c.id] = result(c, "counted", 0, self.present.get(table, 0))
                continue
            self._single(c, sql, res, examples=ex)
        concept_failed = []  # (example parts, failed checks by rid) per rule kind
        for sql, group, _, parts in cq:
            rows = {}
            if self.mode == "set":
                try:
                    rows = {r["rid"]: (r["v"], r["d"]) for r in self.eng.query(sql).to_pylist()}
                except EngineError as e:
                    for c in group:
                        res[c.id] = result(c, "error", error=str(e))
                    continue
            for i, c in enumerate(group):
                if self.mode != "set":  # baseline: DQD's way, one query per concept rule
                    try:
                        r = self.eng.query(cp.concept_single_sql(c, ctx, dqd=self.mode == "dqd")).to_pylist()[0]
                    except EngineError as e:
                        res[c.id] = result(c, "error", error=str(e))
                        continue
                    if r["d0"]:
                        rows[i] = (r["v0"], r["d0"])
                if i not in rows:
                    ids = ", ".join(str(x) for x in c.param("concept_ids"))
                    res[c.id] = result(c, "not_applicable", reason=f"no records with concept {ids}"
                                       + (f" and unit {c.unit_concept_id}" if c.unit_concept_id else ""))
                else:
                    res[c.id] = result(c, "counted", int(rows[i][0] or 0), int(rows[i][1] or 0))
            failed = {i: c for i, c in enumerate(group) if res[c.id]["failed"]}
            if failed and self.shapes.window_examples:
                concept_failed.append((parts, failed))
            for c in failed.values() if not self.shapes.window_examples else ():
                try:
                    conds[c.id] = cp.concept_example(c, ctx)
                except cp.NotApplicable:
                    pass
        for c, sql, ex in tlevel:
            self._single(c, sql, res, examples=ex)
        # examples: one UNION ALL query for every failed scan/concept check of the table
        wanted = [(cid, *conds[cid]) for cid, r in res.items() if r["failed"] and cid in conds and conds[cid][0]]
        if wanted and ctx.id_column:
            try:
                for r in self.eng.query(cp.examples_sql(table, wanted, ctx)).to_pylist():
                    res[r["check_id"]]["examples"].append(r["row_id"])
                for cid, *_ in wanted:
                    res[cid]["example_field"] = ctx.id_column
            except EngineError as e:  # examples are a help, not a result: say so, keep the counts
                for cid, *_ in wanted:
                    res[cid]["example_error"] = str(e)
        for parts, failed in concept_failed if ctx.id_column else ():  # one scan per rule kind, not per check
            try:
                for r in self.eng.query(cp.concept_examples_sql(parts, sorted(failed), ctx)).to_pylist():
                    res[failed[r["rid"]].id]["examples"].append(r["row_id"])
                for c in failed.values():
                    res[c.id]["example_field"] = ctx.id_column
            except EngineError as e:
                for c in failed.values():
                    res[c.id]["example_error"] = str(e)
        for r in res.values():
            r["examples"] = example_ids(r["examples"])
        order = {c.id: i for i, c in enumerate(checks + [i.check for i in site_items])}
        return sorted(res.values(), key=lambda r: order.get(r["check_id"], 1 << 30))

    def violating_rows(self, table: str) -> dict[str, list[str]]:
        """Every violating row id (the table's id column) per field-level and concept-level check of `table`,
        one query per check. Not part of a run: for tracing checks back to their source rows (bench/)."""
        if not hasattr(self, "present"):
            self._survey()
        checks = [c for c in self.dqd_checks() if c.table == table]
        _, items, _, cq, _, _, ctx = self.plan(table, checks)
        if ctx is None or not ctx.id_column:
            return {}
        wanted = [(it.check.id, it.where, it.joins) for it in items if it.where]
        for _, group, _, _ in cq:
            for c in group:
                try:
                    wanted.append((c.id, *cp.concept_example(c, ctx)))
                except cp.NotApplicable:
                    pass
        out: dict[str, list[str]] = {}
        for cid, cond, joins in wanted:
            try:
                rows = self.eng.query(cp.examples_sql(table, [(cid, cond, joins)], ctx, k=1 << 40)).to_pylist()
            except EngineError:
                continue
            if rows:
                out[cid] = [r["row_id"] for r in rows]
        return out

    def check_queries(self, check_id: str, rows: int = 20) -> tuple[Check, str | None, str | None]:
        """One check's queries, to run by hand: its count alone, in DQD's shape (what DQD's `queryText` holds:
        medlake computes it inside a table's scan), and up to `rows` of its violating rows — their id and the
        fields the rule reads (a table-level check: the ids of the persons it counts). In medlake's dialect (the
        engine's `native` gives its own); None where the check has no query (cdmTable, cdmField: read from the
        catalog). cp.NotApplicable (with the reason) if it cannot apply here; KeyError if there is no such check."""
        if not hasattr(self, "present"):
            self._survey()
        site = {c.id: (c, it) for c, it in self.site}
        c = site[check_id][0] if check_id in site else next(
            (c for c in self.dqd_checks() if c.id == check_id), None)
        if c is None:
            raise KeyError(check_id)
        return self.queries_of(c, rows, site[check_id][1] if check_id in site else None)

    def queries_of(self, c: Check, rows: int = 20, site_item: cp.Item | None = None
                   ) -> tuple[Check, str | None, str | None]:
        """`check_queries` of a check in hand (`site_item`: a site check's compiled SQL)."""
        table = c.table
        if table not in self.present:
            raise cp.NotApplicable(f"table {table} absent")
        if c.name in ("cdmTable", "cdmField"):
            return c, None, None
        ctx = self.context(table)
        order = f" ORDER BY t.{cp.q(ctx.id_column)}" if ctx.id_column else ""

        def whole(cond: str, joins=()) -> str:
            """The rows' id and the fields the condition reads, its joins' fields named by their table."""
            cols = {f"t.{cp.q(ctx.id_column)}": ctx.id_column} if ctx.id_column else {}
            for alias, col in FIELD_REF.findall(cond):
                name = col.strip('"')
                owner = ctx.joins.get(alias, ("", alias))[1]  # a joined table's field: named by its table
                cols.setdefault(f"{alias}.{col}", name if alias == "t" else f"{owner}.{name}")
            if site_item:  # a site's predicate names its table's fields bare: those it reads, and the check's field
                for name in ctx.columns:
                    if name == c.field or re.search(rf'(?<![.\w"])"?{re.escape(name)}"?(?![\w"])', cond):
                        cols.setdefault(f"t.{cp.q(name)}", name)
            pick = ", ".join(f"{e} AS {cp.q(n)}" for e, n in cols.items()) or "t.*"
            return f"SELECT {pick} FROM {cp.q(table)} AS t {ctx.join_sql(joins, cond)} WHERE {cond}{order} LIMIT {rows}"

        if c.level == "TABLE" and not site_item:  # (a site check of a whole table is its own predicate)
            count, ex, _ = cp.table_level_sql(c, ctx, dqd=True)
            listed = ex.replace("LIMIT 10", f"LIMIT {rows}")
        elif c.name == "isPrimaryKey":
            ctx.need_column(c.field)
            f = cp.q(c.field)
            count = cp.primary_key_dqd_sql(table, c.field)
            listed = whole(f"t.{f} IN (SELECT {f} FROM {cp.q(table)} GROUP BY {f} HAVING count(*) > 1)")
        elif c.level == "CONCEPT":
            ctx.need_column(c.field)
            count = cp.concept_single_sql(c, ctx, dqd=True)
            listed = whole(*cp.concept_example(c, ctx))
        else:
            it = site_item or cp.field_item(c, ctx)
            count = cp.dqd_sql(table, it, ctx)
            listed = whole(it.where, it.joins) if it.where else None
        return c, count, listed

    def _scan(self, table, items, ctx, res, found):
        if not items:
            return
        if self.mode == "set":
            grouped = [it for it in items if it.grouped]
            rest = [it for it in items if not it.grouped]
            todo = []
            # one scan per set of joins, not one with every LEFT JOIN chained: faster on DuckDB and PostgreSQL
            # (bench/quality.py), as each of DQD's queries joins only what its check reads (a table whose key is
            # repeated is joined one row per key: Context.target). Person and death are both small and keyed by
            # person_id: one scan for both
            parts: dict[tuple, list] = {}
            for it in rest:
                parts.setdefault(tuple(sorted({"fk_person_id" if a == "dth" else a for a in it.joins})), []).append(it)
            for group, build in [(g, cp.scan_sql) for g in parts.values()] + [(grouped, cp.grouped_sql)]:
                if not group:
                    continue
                refs = cp.scan_refs(group) if build is cp.scan_sql else [(f"v{i}", f"d{i}") for i in range(len(group))]
                try:
                    row = self.eng.query(build(table, group, ctx)).to_pylist()[0]
                    for i, (it, (v, d)) in enumerate(zip(group, refs)):
                        res[it.check.id] = result(it.check, "counted", int(row[v] or 0), int(row[d] or 0))
                        if f"lo{i}" in row and (cond := cp.value_condition(it, [row[f"lo{i}"], row[f"hi{i}"]])):
                            found[it.check.id] = cond
                except EngineError:
                    todo += group  # one check broke the query (a bad type, a site predicate): isolate it below
            items = todo
        one = cp.dqd_sql if self.mode == "dqd" else cp.single_sql
        for it in items:  # one query per check: the baselines, or to isolate the failing check
            self._single(it.check, one(table, it, ctx), res)

    def _examples_of_tuned(self, results: list[dict], checks: list[Check]) -> None:
        """Examples for the checks that fail only by the site's threshold: the run looked for examples with each
        check's own threshold, under which they passed. Each one's violating rows (up to 10), one query each."""
        site = {c.id: (c, it) for c, it in self.site}
        own = {c.id: (c, None) for c in checks}
        for r in results:
            if not (r["failed"] and "default_threshold" in r and r["num_violated_rows"] and not r["examples"]):
                continue
            c, it = site.get(r["check_id"]) or own.get(r["check_id"]) or (None, None)
            try:
                listed = self.queries_of(c, 10, it)[2] if c else None
                if listed:
                    got = self.eng.query(listed)
                    r["examples"] = example_ids(got.column(0).to_pylist())  # (as every check's examples)
                    r["example_field"] = got.column_names[0]
            except (cp.NotApplicable, EngineError):
                continue  # (examples are a help, not a result: the counts stand)

    def _single(self, c, sql, res, examples=None):
        try:
            row = self.eng.query(sql).to_pylist()[0]
            v = int(row["v0"] or 0)
            d = int(row["d0"] or 0) if "d0" in row else self.present.get(c.table, 0)  # isPrimaryKey: all rows
            res[c.id] = result(c, "counted", v, d)
            if examples and res[c.id]["failed"]:
                res[c.id]["examples"] = [r["row_id"] for r in self.eng.query(examples).to_pylist()]
                res[c.id]["example_field"] = c.field or "person_id"
        except EngineError as e:
            res[c.id] = result(c, "error", error=str(e))

    # -- the whole run ------------------------------------------------------------------------------------
    def run(self, run_id: str | None = None) -> Run:
        if self.names:  # a misspelt check name would quietly check nothing
            from medlake.quality.feeds import SOURCE_TYPES, TYPES

            known = {c.name for c in self.dqd_checks()} | {c.name for c, _ in self.site} | set(SOURCE_TYPES) \
                | set(TYPES)
            spelled = {n.lower(): n for n in known}  # isforeignkey is isForeignKey
            self.names = {spelled.get(n.lower(), n) for n in self.names}
            if self.names - known:
                raise OptionError(f"no check type {', '.join(sorted(self.names - known))} in OMOP CDM v{self.version}: "
                                 "the names are DQD's (isRequired, isForeignKey, plausibleDuringLife, …), medlake's "
                                 "(mappingCoverage, sourceDuplicateRecords, feedTimeliness, …) and the site's")
        if self.only or self.exclude:  # a misspelt table would quietly check nothing (--tables) or not skip it
            known = {t.name for t in model.load(self.version).tables} | {c.table for c, _ in self.site}
            for opt, given in (("--tables", set(self.only or ())), ("--exclude", self.exclude)):
                if given - known:
                    near = [m for t in sorted(given - known) for m in difflib.get_close_matches(t, known, 1)]
                    raise OptionError(f"{opt}: no table {', '.join(sorted(given - known))} in OMOP CDM v{self.version}"
                                     f" (nor in --checks){'; did you mean ' + ', '.join(near) + '?' if near else ''}")
        if self.severities:  # as a misspelt name, a misspelt severity would quietly check nothing
            known = {c.severity for c in self.dqd_checks()} | {c.severity for c, _ in self.site} | SEVERITIES | {
                "site"}  # (a site check's own, when it gives none)
            if self.severities - known:
                raise OptionError(f"no check severity {', '.join(sorted(self.severities - known))}: the severities are "
                                 f"{', '.join(sorted(known))}")
        if self.write_table:  # a name that cannot be written is said before the run, not after it
            from medlake.quality.report import dqd_table_exists

            dqd_table_exists(self.eng.engine, self.write_table)
        if self.cohort:  # a cohort that is not there is said before the run
            table, cid = self.cohort
            try:
                self.cohort_subjects = self.eng.engine.query(
                    f"SELECT count(DISTINCT subject_id) AS n FROM {_qualified(table)} "
                    f"WHERE cohort_definition_id = {cid}").column(0)[0].as_py()
            except EngineError as e:
                raise ValueError(f"cohort table {table}: cannot read its cohort_definition_id and subject_id ({e})"
                                 ) from None
            if not self.cohort_subjects:
                raise ValueError(f"cohort {cid} has no subjects in {table}: is it generated (ATLAS), and is that "
                                 "its cohort_definition_id?")
        started = dt.datetime.now(dt.timezone.utc)
        t0 = time.perf_counter()
        # whole-table aggregates, a wait for a lock said; a cohort's rows
        with self.alone(), self.eng.engine.scanning(self._waiting), self.restricted(), self._beating():
            return self._run(run_id, started, t0)

    BEAT = 60  # seconds: a table checked longer than this is said, then every BEAT seconds

    @contextlib.contextmanager
    def _beating(self):
        """While the run goes, a table checked for more than a minute is said (`notice`), then every minute: a
        pipeline's log otherwise shows nothing while a slow query runs (a site check's predicate that scans for
        ever, a table far larger than usual)."""
        if not self.notice:
            yield
            return
        import threading

        stop = threading.Event()
        watch = threading.Thread(target=lambda: [self._beat(time.monotonic()) for _ in iter(
            lambda: stop.wait(min(5, self.BEAT)), True)], daemon=True)
        watch.start()
        try:
            yield
        finally:
            stop.set()
            watch.join()

    def _beat(self, now: float) -> None:
        """Say the table being checked when it has been for a BEAT or more since last said (`_beating`)."""
        at = self._at
        if at is not getattr(self, "_beat_at", None):
            self._beat_at, self._beat_since, self._beat_said = at, now, now
        elif now - self._beat_said >= self.BEAT:
            self._beat_said = now
            name, n, total = at
            self.notice(f"{name}{f' (table {n + 1} of {total})' if total and n < total else ''}: still being checked "
                        f"after {now - self._beat_since:.0f} s (a slow query: a site check's predicate from --checks, "
                        "a table larger than usual); Ctrl-C stops the run, which goes on from the tables it finished")

    def _waiting(self, seconds: int, who: str) -> None:
        """A query of this run waits for another session's lock (an ETL loading a table): said at once and then
        every minute (`notice`; the progress line says it every time), and in the run's warnings with how long it
        waited in all."""
        at, n, total = self._at
        if seconds - self._said.get(at, -60) >= 60:
            self._said[at] = seconds
            if self.notice:
                self.notice(f"{at}: waiting {seconds} s for a lock: {who}; the checks go on when it ends")
        if self.progress:
            self.progress(f"{at}: waiting for a lock ({seconds} s)", n, total)
        self.waits[at] = f"{at}: waited {seconds} s for a lock: {who}"

    @contextlib.contextmanager
    def alone(self):
        """One run of this store into this folder at a time: a second would take the first's unfinished run folder
        for a stopped run's, resume it and write beside it. A lock the system drops with its process (a run killed
        leaves none), on a file in the folder named for the store (a dot file, not among the runs); the holder's
        PID in it, for the message."""
        import fcntl

        key = hashlib.sha256(self.store.encode()).hexdigest()[:16]
        self.out.mkdir(parents=True, exist_ok=True)  # (in the folder: two machines or TMPDIRs writing it see it)
        with open(self.out / f".run-{key}.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                raise ValueError(f"another quality run of this store is writing to {self.out} (PID "
                                 f"{fh.read().strip() or '?'}): wait for it to end, or give another --out") from None
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            yield

    def restricted(self):
        """With a cohort: for the session, every CDM table with a person_id seen as its rows of the cohort's
        persons (the engine's temporary views of the same names), as DQD joins the cohort to each checked table;
        the tables they refer to (a foreign key's target) are seen so too. Without one: nothing."""
        if not self.cohort:
            return contextlib.nullcontext()
        table, cid = self.cohort
        present = {self._name(t) for t in self.eng.engine.tables()}
        cond = f"person_id IN (SELECT subject_id FROM {_qualified(table)} WHERE cohort_definition_id = {cid})"
        return self.eng.engine.restricted({t.name: cond for t in model.load(self.version).tables
                                           if "person_id" in t.field_names and t.name in present})

    def _run(self, run_id, started, t0) -> Run:
        self._survey()
        all_checks = [c for c in self.dqd_checks() if self._wanted(c.name, c.level, c.severity)]
        by_table: dict[str, list[Check]] = {}
        for c in all_checks:
            by_table.setdefault(c.table, []).append(c)
        site_by_table: dict[str, list[cp.Item]] = {}
        for c, it in self.site:
            if not self._wanted(c.name, c.level, c.severity):
                continue
            site_by_table.setdefault(c.table, []).append(it)
            by_table.setdefault(c.table, [])
        # a vocabulary table DQD's checks leave out by default still gets the site's own checks of it (its file names
        # the table: its local concepts, say); not DQD's checks of it
        site_only = {t for t in site_by_table if self.default_exclude and not self.only and t in self.exclude}
        for t in site_only:
            by_table[t] = []
        tables = [t for t in by_table if self._checked(t) or t in site_only]
        from medlake.quality.feeds import SOURCE_TYPES, TYPES

        asked = (not self.levels or "SOURCE" in self.levels) and (not self.severities or self.severities & SEVERITIES)
        feed = self.feed and self.feed["table"] and asked and not self.cohort and (
            not self.names or self.names & set(TYPES))
        sources = self.sources and asked and not self.only and (
            not self.names or self.names & (set(SOURCE_TYPES) | set(TYPES)))
        if not any(by_table[t] or site_by_table.get(t) for t in tables) and not (feed or sources):
            raise OptionError("the options select no check (" + ", ".join(o for o, v in (
                ("--tables", self.only), ("--check-names", self.names), ("--check-levels", self.levels),
                ("--check-severity", self.severities), ("--cohort-id", self.cohort)) if v) + " together): a run "
                "would check nothing; widen one of them")

        run_dir, earlier = self._dirs(run_id)
        (run_dir / "tables").mkdir(parents=True, exist_ok=True)
        run = Run(run_dir.name, run_dir, [], {})
        # the fingerprints (`_key`) are taken once a run, at this mark; a table checked after another session wrote
        # (an ETL beside the run) has its key taken again in its snapshot (results saved under a key of other data
        # were re-used by a later run)
        self._mark = self.eng.engine.data_version() if self.keyed else None
        for n, table in enumerate(tables):
            self._at = (table, n, len(tables))
            if self.progress:
                self.progress(table, n, len(tables))
            checks = by_table[table]
            site_items = site_by_table.get(table, [])
            key = self._key(table, checks, site_items)
            path = run_dir / "tables" / f"{table}.json"
            ids = {c.id for c in checks} | {it.check.id for it in site_items}
            saved = _saved(path, key, ids) if self.resume else None
            if saved:
                run.results += saved["results"]
                run.resumed.append(table)
                continue
            found = self._reusable(earlier, table, key, ids) if self.incremental else None
            if found:
                d, saved = found
                _write(path, {"key": key, "reused_from": saved.get("reused_from") or d.name,
                              "results": saved["results"]})
                run.results += saved["results"]
                run.reused.append(table)
                continue
            t1 = time.perf_counter()
            # the table's checks see one state of the data (rows an ETL loads meanwhile are the next run's); the
            # snapshot is held for this table only (its locks keep an ETL's TRUNCATE waiting, and a run can be long)
            with self.eng.engine.snapshot(sorted(t for t in self._reads(table, checks, site_items)
                                                 if t in self.present and t not in self.denied)):
                now = self.eng.engine.data_version() if key else self._mark
                if now != self._mark:  # another session wrote since the fingerprints were taken: the key of the
                    self._fp.clear()  # data these checks count, taken anew
                    key = self._key(table, checks, site_items)
                    self._mark = now
                results = self.run_table(table, checks, site_items)
            _write(path, {"key": key, "seconds": round(time.perf_counter() - t1, 3), "results": results})
            run.results += results
            run.rechecked.append(table)
        self._at = ("source-level checks", len(tables), len(tables))
        first = len(run.results)  # the source-level checks' results start here
        if self.progress and (feed or sources):
            self.progress("source-level checks", len(tables), len(tables))
        if feed:
            from medlake.quality.feeds import run_feeds

            try:
                run.results += run_feeds(self.eng, self.feed, result)
            except EngineError as e:
                from medlake.quality.feeds import feed_checks

                run.results += [result(c, "error", error=str(e))
                                for c in feed_checks(self.feed["table"], "*", self.feed["drop"])]
        if sources:  # source-level checks (staging, landing, lineage): run every time
            from medlake.quality.feeds import run_sources, source_check

            try:
                run.results += run_sources(self.eng, result, fields=self.source_fields,
                                           feeds=not (self.feed and self.feed["table"]), feed=self.feed)
            except EngineError as e:  # (each section's own failure is its checks' error, in run_sources: this is
                run.results.append(result(  # the store's tables or columns not read, so none of them could run)
                    source_check("sourceMappingCoverage", "cdm_lineage", None, "*"), "error",
                    error=f"the source-level checks could not read the store's staging tables: {e}"))
        if self.names or self.severities:  # (the source-level queries each serve several check types: as asked)
            run.results[first:] = [r for r in run.results[first:]
                                   if self._wanted(r["check_name"], r["check_level"], r["severity"])]
        notes = {c.id: c.notes for c in all_checks}  # the threshold files' notes, on re-used results too
        for r in run.results[:first]:
            if r["check_id"] in notes:
                r["notes"] = notes[r["check_id"]] or None
        tuned = []
        if self.tuning:
            from medlake.quality.site import tune

            tuned = tune(run.results, self.tuning)
            self._examples_of_tuned(run.results[:first], all_checks)
        if self.progress:
            self.progress("done", len(tables), len(tables))
        wrong = self.mismatched_columns(tables)
        cdm_tables = set(model.load(self.version).table_names)
        run.summary = summarize(run.results) | {
            "run_id": run.run_id, "store": self.store, "engine": self.eng.engine.name,
            "cdm_version": self.version, "cdm_version_from": self.version_from,
            # (else an OHDSI database checked in place, or a CDM imported from one: the site's ETL made it)
            "medlake_store": store.INFO_TABLE in self.present and IMPORTED not in store.info(self.eng.engine),
            "started": started.isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - t0, 3), "queries": self.eng.queries, "scans": self.eng.scans,
            "mode": self.mode, "rechecked_tables": run.rechecked, "reused_tables": run.reused,
            "check_names": sorted(self.names) or None, "tables": sorted(self.only) if self.only else None,
            "check_levels": [x for x in LEVELS if x in self.levels] or None,
            "check_severity": sorted(self.severities) or None,
            "cohort": {"table": self.cohort[0], "cohort_definition_id": self.cohort[1],
                       "subjects": self.cohort_subjects} if self.cohort else None,
            "dqd_thresholds": list(self.dqd_files) or None, "site_checks": self.site_file,
            "exclude": sorted(self.exclude),
            "resumed_tables": run.resumed,
            "excluded_tables": sorted(t for t in self.exclude if t in by_table and t in self.present
                                      and t not in site_only),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "cdm_source": self._cdm_source(),
            "mismatched_columns": wrong,
            "warnings": empty_warnings({t: self.present[t] for t in tables if t in self.present and t in cdm_tables})
            + vocabulary_warnings(run.results, self.eng.engine.name) + type_warnings(wrong, self.eng.engine.name)
            + self._no_schema() + self._unreadable() + site_absent(run.results) + list(self.waits.values())
            + [w for r in run.results for w in r.get("warnings") or ()]  # the source-level checks' (feeds.py)
            + damaged_runs(self.out) + [f"{t}: no fingerprint of its rows ({why}), so it and the tables whose checks "
                                        "read it are checked again on every run" for t, why in self.unprinted.items()]
            + tuned + ([f"checked as OMOP CDM v{self.version} (--cdm-version), but {self.version_from.split('; ')[1]}: "
                        "a run of the other version's checks finds its fields missing; it is compared with runs of "
                        f"v{self.version} only"] if "; the store says" in self.version_from else []),
        }
        since = run.summary["since_last_run"] = since_last_run(
            run.results, [d for d in finished_runs(self.out, self.store) if d.name != run.run_id], scope(run.summary))
        run.summary["refused_new"] = bool(self.fail_on_new and since and (
            since["new_failures"] or since["more_days"] or since["new_errors"] or since["emptied"]))
        _write(run_dir / "results.json", run.results)
        _write_csv(run_dir / "results.csv", run.results)
        _write(run_dir / "run.json", run.summary)
        from medlake.quality.report import dqd_results, write_html

        write_html(run, [h for h in history(self.out, self.store) if scope(h) == scope(run.summary)])
        dqd = dqd_results(run, self._query_texts(run.results, all_checks))
        if not dqd["CheckResults"]:  # (DQD stops where no check is to run: an empty file breaks ARES, an emptied
            run.summary["warnings"].append(  # table loses the last run's rows)
                "no DQD check ran (--check-severity, --check-levels or --check-names chose none): no dqd.json"
                + (f", and table {self.write_table} is left as it was" if self.write_table else ""))
            _write(run_dir / "run.json", run.summary)
            return run
        _write(run_dir / "dqd.json", dqd)  # DQD's own results format, for its viewer and ARES
        if self.write_table:
            from medlake.quality.report import write_dqd_table

            try:
                rows = write_dqd_table(self.eng.engine, self.write_table, dqd)
            except (ValueError, EngineError) as e:
                raise ValueError(f"the results are in {run_dir}, but not in table {self.write_table}: {e}") from None
            run.summary["dqd_table"] = {"table": self.write_table.lower(), "rows": rows}
            _write(run_dir / "run.json", run.summary)
        return run

    def _query_texts(self, results: list[dict], checks: list[Check]) -> dict[str, str]:
        """The failed and broken DQD checks' queries alone, in DQD's shape and the store's dialect (dqd.json's
        `queryText`; the others share their table's queries and have none of their own)."""
        wanted = {r["check_id"] for r in results if r["source"] == "dqd" and r["status"] in ("failed", "error")}
        out = {}
        for c in checks:
            if c.id in wanted:
                try:
                    count = self.queries_of(c)[1]
                except cp.NotApplicable:
                    continue
                if count:  # (named as DQD's templates name their result's columns)
                    out[c.id] = self.eng.engine.native(
                        "SELECT r.v0 AS num_violated_rows, CASE WHEN r.d0 = 0 THEN 0 ELSE 1.0 * r.v0 / r.d0 END AS "
                        f"pct_violated_rows, r.d0 AS num_denominator_rows FROM ({count}) AS r")
        return out

    def _cdm_source(self) -> dict | None:
        """The store's cdm_source row (name, holder, versions…) if it has one."""
        if not self.present.get("cdm_source"):
            return None
        try:
            rows = self.eng.query("SELECT * FROM cdm_source LIMIT 1").to_pylist()
        except EngineError:
            return None
        return {k.lower(): v for k, v in rows[0].items()} if rows else None

    def _key(self, table, checks, site_items) -> str:
        if not self.keyed:
            return ""  # a one-off execution: skip the fingerprint queries
        # each check whole (repr: its threshold, severity, category, description… as well as what it counts: a
        # site's edited rule is judged anew) and each site predicate
        sig = [self.version, self.mode, COUNTING] + [repr(c) for c in checks]
        sig += [repr(it.check) + it.num + it.den for it in site_items]
        sig += [f"{t}={self.fingerprint(t)}" for t in sorted(self._reads(table, checks, site_items))]
        if any(cp.CLOCK in it.needs for it in site_items):  # a site check that reads the clock: today's
            sig.append(f"today={self.eng.query('SELECT CAST(current_date AS VARCHAR) AS d').column(0)[0].as_py()}")
        if any(cp.NOW in it.needs for it in site_items):  # the time: no later run re-uses its result
            sig.append(f"now={time.time_ns()}")
        return hashlib.sha256("\n".join(sig).encode()).hexdigest()

    def _reads(self, table, checks, site_items) -> set[str]:
        """The tables a table's checks read: its own, those DQD's checks join, those the site's predicates name."""
        return {t for t in self.plan(table, checks, probe=False)[5].union(*(it.needs for it in site_items))
                if t not in (cp.CLOCK, cp.NOW)}

    @staticmethod
    def _reusable(earlier: list[Path], table: str, key: str, ids: set[str]) -> tuple[Path, dict] | None:
        """(run, its saved results of `table`) from the latest earlier run that checked it with the same checks on the
        same data (`key`, `_saved`); back past runs that did not check it (of other tables) or checked only some
        check types or a cohort's rows, to the table's last check by every type of all its rows. None if there is
        none."""
        for d in earlier:
            p = d / "tables" / f"{table}.json"
            if p.exists():
                saved = _saved(p, key, ids)
                if saved:
                    return d, saved
                s = json.loads((d / "run.json").read_text())
                if not (some_checks(s) or s.get("cohort")):
                    return None  # its last check by every type of all its rows, of other data: older ones are older
        return None

    def _dirs(self, run_id):
        """This run's folder (a new one, or the unfinished last one when resuming) and the store's finished runs,
        the latest first."""
        prev = finished_runs(self.out, self.store)[::-1]
        if run_id:
            return self.out / run_id, prev
        if self.resume and self.out.exists():
            mine = sorted(d for d in self.out.iterdir() if d.is_dir() and (d / "tables").is_dir()
                          and not (d / "run.json").exists() and _store_of(d) == self.store)
            if mine:
                return mine[-1], prev
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        d = self.out / stamp
        (d / "tables").mkdir(parents=True, exist_ok=True)
        (d / "store.txt").write_text(self.store)
        return d, prev


def _saved(p: Path, key: str, ids: set[str]) -> dict | None:
    """A table's saved results (`tables/<table>.json`) where they stand for this run: readable, of the same checks
    on the same data (`key`), a result for each check (`ids`), none an error, nor without the examples its query
    failed to give — a cancelled query, a dropped connection or a full disk is tried again, not carried into every
    later run. None otherwise (re-checked)."""
    try:
        saved = json.loads(p.read_text())
        results = saved["results"]
        if saved.get("key") != key or {r["check_id"] for r in results} != ids or any(
                r["status"] == "error" or r.get("example_error") for r in results):
            return None
    except (OSError, ValueError, KeyError, TypeError):  # a file a crash or a copy cut short: checked again
        return None
    return saved


def _store_of(d: Path) -> str | None:
    """The store a run folder's runs are of (a DuckDB file by its full path; runs before 2026-12-07 named it as the
    command spelt it, read from the folder the command runs in now)."""
    p = d / "store.txt"
    if not p.exists():
        return None
    text = p.read_text().strip()
    return store_url(text) if text.startswith("duckdb:") else text


def finished_runs(out: Path, store: str | None = None) -> list[Path]:
    """The finished runs in `out` (of one store, when given), oldest first: folders with a run.json and a
    results.json that read; a link (a site's `latest`) is not another run, and a damaged run is passed over
    (`damaged_runs` says which)."""
    return [d for d, why in _run_dirs(out) if not why and (store is None or _store_of(d) == store)]


def _run_dirs(out: Path) -> list[tuple[Path, str]]:
    """The folders in `out` with a run.json (a link is not another run), each with why its files cannot be read
    ('' if they can: `_damaged`), in the order of their names."""
    if not Path(out).exists():
        return []
    return [(d, _damaged(d)) for d in sorted(Path(out).iterdir()) if not d.is_symlink() and (d / "run.json").exists()]


def _damaged(d: Path) -> str:
    """Why a finished run's files cannot be read ('' if they can): a copy cut short, a hand edit. (results.json is
    only looked at at both ends: a year of nightly runs' results is large.)"""
    try:
        s = json.loads((d / "run.json").read_text())
        if not isinstance(s, dict) or not {"run_id", "checks", "pass_rate"} <= s.keys():
            return "its run.json is not a medlake run's summary"
        with open(d / "results.json", "rb") as fh:
            head = fh.read(64).lstrip()[:1]
            fh.seek(max(0, fh.seek(0, 2) - 64))
            tail = fh.read().rstrip()[-1:]
        if (head, tail) != (b"[", b"]"):
            return "its results.json is cut short or not a list of results"
    except FileNotFoundError:
        return "its results.json is missing"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"its run.json cannot be read ({str(e).splitlines()[0]})"
    return ""


def damaged_runs(out: Path) -> list[str]:
    """Warnings for the run folders in `out` that are passed over because their files cannot be read."""
    return [f"run {d.name} in {out} is passed over: {why} (move the folder away, or restore it)"
            for d, why in _run_dirs(out) if why]


def other_stores(out: Path, store: str) -> str:
    """The other stores whose runs `out` holds, as a hint for a store that has none there ('' if none)."""
    others = sorted({_store_of(d) for d in finished_runs(out)} - {store, None})
    return f" (the folder holds runs of {', '.join(others)}: give --store)" if others else ""


def history(out: Path, store: str | None = None) -> list[dict]:
    """The summaries of the finished runs in `out` (of one store, when given), oldest first."""
    return [json.loads((d / "run.json").read_text()) for d in finished_runs(out, store)]


def scope(summary: dict) -> tuple:
    """What a run checked: its tables (`--tables`), check types and levels (`--check-names`, `--check-levels`),
    cohort (`--cohort-id`: (table, id), or ()), excluded tables, the site's files (`--checks`, `--dqd-thresholds`:
    their checks, thresholds and feeds) and CDM version (the last). The trend compares runs of one scope (a run of
    one table is not a drop in the pass rate of the whole suite, nor is a run without the site's checks)."""
    return (tuple(summary.get("tables") or ()), tuple(summary.get("check_names") or ()),
            tuple(summary.get("check_levels") or ()), tuple((summary.get("cohort") or {}).items())[:2],
            tuple(summary.get("check_severity") or ()),
            tuple(summary.get("exclude", sorted(VOCABULARY_TABLES))), site_files(summary), summary.get("cdm_version"))


def site_files(summary: dict) -> tuple:
    """The site's files a run read (`--checks`, `--dqd-thresholds`), as run.json records them (absolute paths)."""
    return (summary.get("site_checks"), *(summary.get("dqd_thresholds") or ()))


def some_checks(summary: dict) -> bool:
    """A run of some check types, levels or severities only (`--check-names`, `--check-levels`,
    `--check-severity`)."""
    return bool(summary.get("check_names") or summary.get("check_levels") or summary.get("check_severity"))


def partial(summary: dict) -> bool:
    """A run of some tables, check types or levels, or of a cohort's persons only: not the whole suite."""
    return bool(summary.get("tables") or summary.get("cohort")) or some_checks(summary)


def since_last_run(results: list[dict], earlier: list[Path], within: tuple) -> dict | None:
    """What changed since the store's previous finished run of the same scope (`within`, this run's) or of all
    tables and check types with the same site files (a nightly run with `--checks` does not compare with an ad-hoc
    run without them, which would make the site's failing checks new): the checks failing now that did not fail
    then (new, or passed, not applicable, an error, not run), the feed checks that failed then and find more days
    now (`more_days`: a source silent or low again; one outage weeks ago keeps its check failed), those that stop
    with an error now and did not then (`new_errors`: a column an ETL change dropped, a check added since that
    cannot run) and those that failed then and pass now.
    None when there is none (a first run). An ad-hoc run of one table is not what the next nightly run compares
    with; a cohort's run compares with the same cohort's only (other persons' rows are not its rows fixed or
    broken); nor is a run that `--fail-on-new` refused for its new failures (`refused_new`): a pipeline's retry,
    with nothing fixed, is refused again, until a run without the gate accepts them."""
    cohort = within[3]
    for d in reversed(earlier):
        s = json.loads((d / "run.json").read_text())
        if s.get("refused_new"):
            continue
        if scope(s) == within or (not partial(s) and not cohort and scope(s)[-2:] == within[-2:]):
            before = json.loads((d / "results.json").read_text())
            changes = compare(before, results)
            judged = {r["check_id"] for r in before if r["status"] in ("passed", "failed")}
            ruled = sorted(c["check_id"] for c in changes if c["rule_changed"])
            return {"run_id": d.name,
                    "new_failures": sorted(c["check_id"] for c in changes if c["change"] == "newly failing"),
                    "more_days": sorted(c["check_id"] for c in changes if c["change"] == "more rows"
                                        and c["result"].get("check_name") in FEED_CHECKS),
                    "new_errors": sorted(c["check_id"] for c in changes if c["after"] == "error"),
                    "fixed": sorted(c["check_id"] for c in changes if c["change"] == "fixed"),
                    # the site's checks among those whose rule the site changed since (not the data: their file)
                    **({"rule_changed": ruled} if ruled else {}),
                    # the tables that held rows then and are empty or gone now (an ETL that emptied one and
                    # failed): their checks, judged then, are not applicable now, which no pass rate shows
                    "emptied": sorted({r["cdm_table"] for r in results
                                       if r["status"] == "not_applicable" and r["check_id"] in judged
                                       and EMPTIED.match(r.get("not_applicable_reason") or "")})}
    return None


EMPTIED = re.compile(r"table \S+ (empty|absent)")  # a check's reason for being not applicable: its table has no rows


CHANGES = ("newly failing", "fixed", "more rows", "fewer rows", "other")  # compare's kinds, the worst first


def compare(before: list[dict], after: list[dict]) -> list[dict]:
    """The checks whose result differs between two runs, the worst change first: failing now and not then
    (`newly failing`), failed then and passed now (`fixed`), failing in both with more or fewer violating rows,
    any other change of status (a check now not applicable, an error, not run in one of them). `rule_changed`: a
    site check whose rule (predicate, denominator or threshold) the site changed between the runs."""
    old = {r["check_id"]: r for r in before}
    new = {r["check_id"]: r for r in after}
    out = []
    for cid in sorted(old.keys() | new.keys()):
        a, b = old.get(cid), new.get(cid)
        sa, sb = (a or {}).get("status", "not run"), (b or {}).get("status", "not run")
        va, vb = (a or {}).get("num_violated_rows"), (b or {}).get("num_violated_rows")
        if sb == "failed" and sa != "failed":
            change = "newly failing"
        elif sa == "failed" and sb == "passed":
            change = "fixed"
        elif sa == sb == "failed" and va != vb:
            change = "more rows" if (vb or 0) > (va or 0) else "fewer rows"
        elif sa != sb:
            change = "other"
        else:
            continue
        out.append({"check_id": cid, "change": change, "before": sa, "after": sb, "violated_before": va,
                    "violated_after": vb, "result": b or a,
                    "rule_changed": bool(a and b and a.get("rule") and b.get("rule") and a["rule"] != b["rule"])})
    return sorted(out, key=lambda c: (CHANGES.index(c["change"]), c["check_id"]))


def _write(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, default=str))  # compact: the C encoder (indent falls back to pure Python)
    os.replace(tmp, path)


def _write_csv(path: Path, results: list[dict]) -> None:
    """results.json as a spreadsheet opens it: one row per check, the same fields, the examples space-separated."""
    cols = list(dict.fromkeys(k for r in results for k in r))
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for r in results:
            w.writerow({k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()})
    os.replace(tmp, path)


def site_absent(results: list[dict]) -> list[str]:
    """The site's checks of a table or field the store has not (misspelt, or not there yet): said, not only counted
    as not applicable among thousands of results."""
    return [f"site check {r['check_name']} not applicable: {r['not_applicable_reason']}" for r in results
            if r["source"] == "site" and " absent" in (r.get("not_applicable_reason") or "")]


def _why_not(e: EngineError) -> str:
    """The database's own words of why a query failed (PostgreSQL's after `ERROR:`), without the driver's."""
    m = re.search(r"ERROR:\s+(.*)", str(e))
    return m.group(1).strip() if m else str(e)


def empty_warnings(counts: dict[str, int]) -> list[str]:
    """CDM tables that hold no rows pass what they can be checked for, their structure: a pass rate that says
    nothing of data. Say so when every table checked is empty."""
    if counts and not any(counts.values()):
        return [f"the {len(counts)} CDM table(s) checked hold no rows: only their structure was checked, and the pass "
                "rate is of that; load data first (medlake transform, or medlake cdm import DIR)"]
    return []


def vocabulary_warnings(results: list[dict], engine: str) -> list[str]:
    """A vocabulary table that is absent or empty makes every check that looks up concepts not applicable: a
    run that quietly passes. Say so, with the number of checks it silenced and what to do."""
    silenced: dict[str, int] = {}
    for r in results:
        reason = r.get("not_applicable_reason") or ""
        table, _, rest = reason.partition(" table ")
        if r["status"] == "not_applicable" and table in VOCABULARY_TABLES and rest.startswith(("absent", "empty")):
            key = f"{table} table is {rest.split()[0]}"
            silenced[key] = silenced.get(key, 0) + 1
    hint = (", or, if it is in another schema, name that schema first on the search path (?options=-csearch_path"
            "%3Dvocab,cdm in the store URL: empty vocabulary tables in the CDM schema hide the vocabulary schema's "
            "when the CDM schema comes first)" if engine == "postgres" else "")
    if not silenced:
        return []
    what = ", ".join(f"the {k} ({n:,} checks)" for k, n in silenced.items())
    return [f"{sum(silenced.values()):,} checks not applicable because the store's vocabulary is missing: {what}; "
            f"load the vocabulary (medlake vocab load){hint}"]


def type_warnings(wrong: list[dict], engine: str, table: str | None = None) -> list[str]:
    """The columns not of their CDM type (`mismatched_columns`), of one table or all, in one warning with what to
    do (a run's warnings; `quality show` of a check that stopped with an error)."""
    wrong = [w for w in wrong if table in (None, w["table"])]
    if not wrong:
        return []
    named = [f"{w['table']}.{w['field']} is {w['type']} (the CDM: {w['cdm_type']})" for w in wrong]
    more = f" and {len(named) - 10} more" if len(named) > 10 else ""
    unread = ("read as empty and not counted by the checks that compare them" if engine == "spark"
              else "an error of the checks that compare them")
    return [f"{len(named)} column(s) not of their CDM type in the store: {'; '.join(named[:10])}{more}; a value "
            f"not of the CDM's type ('20200101' for a date) is {unread}: convert the columns to the CDM's types "
            "(medlake cdm import converts a folder of CSV or Parquet files as it loads them)"]


def summarize(results: list[dict]) -> dict:
    def rate(rs):  # DQD's percentPassed: a check that could not run is no pass (not rounded: 1 failed of 20,001
        p = sum(r["status"] == "passed" for r in rs)  # is not 1.0; the report and the CLI write it as 99.995%)
        f = sum(r["status"] == "failed" for r in rs)
        e = sum(r["status"] == "error" for r in rs)
        na = sum(r["status"] == "not_applicable" for r in rs)
        return {"passed": p, "failed": f, "errors": e, "not_applicable": na,
                "pass_rate": p / (p + f + e) if p + f + e else None}

    by_cat: dict[str, list] = {}
    by_table: dict[str, list] = {}
    for r in results:
        by_cat.setdefault(r["category"] or "(none)", []).append(r)
        by_table.setdefault(r["cdm_table"], []).append(r)
    return {"checks": len(results), **rate(results),
            "by_category": {k: rate(v) for k, v in sorted(by_cat.items())},
            "by_table": {k: rate(v) for k, v in by_table.items()}}


def run(engine, version: str | None = None, out: str | Path = "quality", **kw) -> Run:
    """Run every check for the store's CDM version (and the site's checks) and write the reports."""
    from medlake.cdm import store

    found_version, how = store.detect_version(engine)
    version, found = (version, "as given") if version else (found_version, how)
    if version != found_version and not how.startswith("the default"):  # said in the reports, not refused: a
        found += f"; the store says v{found_version} ({how})"              # cdm_source can be out of date
    return Runner(engine, version, Path(out), version_from=found, **kw).run()
