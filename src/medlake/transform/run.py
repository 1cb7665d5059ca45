"""One transform run: staging rows not transformed yet → CDM rows, incrementally, in one transaction.

1. **Delta.** For every rule, the keys of staging rows that arrived since the last run (per source, by
   `receipt_seq`; the upper bound is fixed at the start, so rows staged meanwhile wait for the next run). A new
   A40 merge adds every record of the merged-away person.
2. **Replace.** The CDM rows the lineage lists for those keys are deleted; the newest version of each key is
   mapped again (an A08, a newer FHIR version, an entered-in-error status all land here). Same key, same ids.
3. **Persons.** PERSON and DEATH are rebuilt for every person touched, from all their records; the derived
   tables (observation period, eras) are rebuilt for the same persons.
4. **Account.** Lineage for every row written, the mapping-gap table, CDM_SOURCE, METADATA, a `transform_run` row.

Everything happens in one engine transaction: a failure leaves the CDM as it was.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from medlake.cdm import store
from medlake.cdm.importer import IMPORTED
from medlake.engines.base import Engine
from medlake.identity import demographics, empi as empi_tables
from medlake.landing.ingest import RESTAGED_TABLE, _ensure_table, staging_schemas
from medlake.transform import compile as c
from medlake.transform import derived, rules as r
from medlake.transform.derived import work

PROTECTED = ("person", "death")  # rebuilt per touched person, not per record key

# What the last run applied, so the next one can see what changed since (medlake's own tables, beside the CDM).
APPLIED = {
    "transform_applied_code_system": ("system VARCHAR, vocabulary_id VARCHAR",
                                      "SELECT DISTINCT system, vocabulary_id FROM medlake_code_system"),
    "transform_applied_mapping": ("source_vocabulary_id VARCHAR, source_code VARCHAR, target_concept_id INTEGER, "
                                  "source_concept_id INTEGER",
                                  "SELECT DISTINCT source_vocabulary_id, source_code, target_concept_id, "
                                  "source_concept_id FROM source_to_concept_map WHERE invalid_reason IS NULL"),
    "transform_applied_identity": ("source VARCHAR, source_id VARCHAR, person_id BIGINT",
                                   f"SELECT DISTINCT source, source_id, person_id FROM {c.EMPI_IDS} AS m"),
    # the vocabulary releases (not the site's own code lists, which `medlake map` adds and the mapping diff covers)
    "transform_applied_vocabulary": ("vocabulary_id VARCHAR, vocabulary_version VARCHAR",
                                     "SELECT DISTINCT vocabulary_id, vocabulary_version FROM vocabulary "
                                     "WHERE COALESCE(vocabulary_reference, '') <> 'medlake map'"),
}
CHANGES = {"tx_remap_code": "vocabulary_id VARCHAR, code VARCHAR",  # codes whose site mapping changed
           "tx_remap_identity": "source VARCHAR, source_id VARCHAR",  # source patients whose EMPI person changed
           "tx_replaced": "cdm_table VARCHAR, row_id BIGINT, person_id BIGINT, source_key VARCHAR, "  # rows replaced
                          "code VARCHAR, concept_id INTEGER, source VARCHAR, rule VARCHAR, code_system VARCHAR",
           "tx_gap": "source VARCHAR, rule VARCHAR, code_system VARCHAR, code VARCHAR, vocabulary_id VARCHAR, "
                     "n_rows BIGINT",  # the gap table moved by this run (see _gaps)
           "tx_person_ref": "ref VARCHAR",  # source patient ids of the touched persons (see _person_work)
           "tx_merge_person": "person_id BIGINT"}  # persons whose link (A40, a Patient's MRN) is new or changed
# Record keys mapped without writing a CDM row (filtered, skipped): with the lineage, the keys seen before.
QUIET = {"transform_quiet_key": "source_key VARCHAR"}
# What every code of the CDM's records resolved to when last mapped (tx_code's rows, kept): a new vocabulary
# release re-maps only the records whose codes now resolve differently (`_release_changes`). A row with a NULL
# system marks a map begun on a store mapped before it was kept: incomplete until a full run.
CODE_MAP = {"transform_code_map": c.WORK_TABLES["tx_code"]}
_CODE_COLS = "system, code, vocabulary_id, source_concept_id, concept_id, domain_id, n"
CODING_WORK = "tx_stg_coding"


# The dates the rules changed what a CDM row may hold that an earlier run wrote (2026-12-07: no note text, no day of
# birth). A store last mapped by older rules is mapped again in full once (`RunSummary.rules_upgraded`): its rows
# hold what the rules now keep out. The store records the rules it was mapped by (`medlake_info`).
RULES = ("2026-12-07",)
RULES_KEY = "transform_rules"


@dataclass
class RunSummary:
    run_id: int | None
    records: int = 0                       # source record keys (re)mapped
    written: dict[str, int] = field(default_factory=dict)
    deleted: int = 0                       # CDM rows replaced or removed
    skipped: int = 0                       # events without a person or a date (counted, see transform_run)
    persons: int = 0                       # persons touched
    unmapped_codes: int = 0                # distinct (source, system, code) with concept 0, whole store
    seconds: float = 0.0
    vocabularies_changed: list[str] = field(default_factory=list)  # new releases since the last run
    codes_changed: int | None = None       # codes such a release maps differently (their records re-mapped);
    #                                        None: every record was re-mapped (--full, or no code map kept yet)
    rules_upgraded: str | None = None      # mapped before these rules (RULES): every record was mapped again


def _count(engine: Engine, sql: str) -> int:
    return engine.query(sql).column(0)[0].as_py() or 0


def ensure_tables(engine: Engine) -> None:
    have = set(engine.tables())
    for name, cols in {**c.WORK_TABLES, **CHANGES}.items():
        if name in have and [x.name for x in engine.columns(name)] != [x.split()[0] for x in cols.split(", ")]:
            engine.execute(f"DROP TABLE {name}")  # a work table from an older release: recreated below
            have.discard(name)
    own = {k: v[0] for k, v in APPLIED.items()}
    for name, cols in {**c.OWN_TABLES, **c.WORK_TABLES, **own, **CHANGES, **QUIET, **CODE_MAP}.items():
        if name not in have:
            engine.execute(c.create_sql(name, cols))
    mapped = not {"transform_applied_vocabulary", "transform_code_map"} <= have and \
        _count(engine, "SELECT count(*) FROM transform_run")  # (a store with runs from before these tables)
    if "transform_applied_vocabulary" not in have and mapped:
        # a store mapped before the releases were kept: taken as mapped with the vocabulary it has
        engine.execute(f"INSERT INTO transform_applied_vocabulary {APPLIED['transform_applied_vocabulary'][1]}")
    if "transform_code_map" not in have and mapped:
        engine.execute("INSERT INTO transform_code_map SELECT " + ", ".join(
            f"CAST(NULL AS {x.split()[1]})" for x in CODE_MAP["transform_code_map"].split(", ")))
    if _count(engine, "SELECT count(*) FROM medlake_code_system") == 0:
        engine.load_arrow("medlake_code_system", pa.table({"system": list(r.CODE_SYSTEMS),
                                                           "vocabulary_id": list(r.CODE_SYSTEMS.values())}))


def register_code_systems(engine: Engine, systems: dict[str, str]) -> None:
    """Declare a site's code systems: system (URI or HL7 name) → vocabulary_id used in SOURCE_TO_CONCEPT_MAP."""
    ensure_tables(engine)
    with engine.transaction():
        for system in systems:
            engine.execute("DELETE FROM medlake_code_system WHERE system = ?", [system])
        engine.load_arrow("medlake_code_system", pa.table({"system": list(systems),
                                                           "vocabulary_id": list(systems.values())}))


def _set_namespaces(engine: Engine, namespaces: dict[str, str]) -> None:
    for src in namespaces:
        engine.execute("DELETE FROM transform_source WHERE source = ?", [src])
    engine.load_arrow("transform_source", pa.table({"source": list(namespaces), "namespace": list(namespaces.values())}))


def transform(engine: Engine, *, namespaces: dict[str, str] | None = None, full: bool = False,
              progress: Callable[[str, int, int], None] | None = None, site: dict[str, str] | None = None) -> RunSummary:
    """Transform what is new in staging. `namespaces` maps a source to the namespace of its patient and visit ids
    (the hospital: a HIS, LIS and pharmacy of one hospital share MRNs); `full` re-maps every record. `site`: the
    site's names for its `cdm_source` row (config.Config.cdm_source)."""
    t0 = time.perf_counter()
    tables = set(engine.tables())
    if "concept" not in tables or "person" not in tables:
        raise ValueError("this store has no OMOP CDM: run `medlake init` (and `medlake vocab load`) first")
    if store.INFO_TABLE not in tables:  # an OHDSI database checked in place: nothing is written to it unasked
        raise ValueError("this store's CDM was not made by medlake (it has no medlake_info table): `medlake "
                         "transform` would write medlake's own tables into it and rebuild its CDM from medlake's "
                         "staging; to make it medlake's store, run `medlake init` on it first")
    imported = store.info(engine).get(IMPORTED)
    if imported:  # the site's CDM, loaded to be checked: a transform would delete and rebuild rows of its persons
        raise ValueError(f"this store's CDM was loaded by `medlake cdm import` (from {imported}): `medlake transform` "
                         "would write medlake's own tables into it and delete and rebuild the rows of the persons it "
                         "loads; give medlake's pipeline a store of its own (--store, or `medlake init` on a new one)")
    ensure_tables(engine)
    for t in ("stg_fhir_observation_component", "stg_hl7_patient"):  # staged before they had a column the rules
        if t in tables:                                                # read (comparator, unit system; removed)
            _ensure_table(engine, t, staging_schemas()[t], set())
    if "stg_hl7_visit" in tables and "stg_hl7_observation" not in tables:  # a visit's results (hl7.result_visit)
        _ensure_table(engine, "stg_hl7_observation", staging_schemas()["stg_hl7_observation"], set())
    tables = set(engine.tables())
    if "stg_fhir_encounter" in tables and "identifier_value" in {x.name for x in engine.columns("stg_fhir_encounter")}:
        tables.add(r.VISIT_NUMBER)  # the visit number is staged (older stores lack the column)
    if "stg_fhir_coding" in tables and "coding_index" in {x.name for x in engine.columns("stg_fhir_coding")}:
        tables.add(c.CODINGS)  # every coding is staged in order: events pick the one that maps
    empi = "empi_person_map" in tables
    if empi:
        empi_tables.ensure_tables(engine)  # (a store linked before empi_alias existed)
    events = [x for x in r.EVENTS if x.staging in tables]
    entities = [x for x in r.TABLES if x.staging in tables]
    persons = [x for x in r.PERSONS if x.staging in tables]
    staged = sorted({x.staging for x in (*events, *entities, *persons)} | ({"stg_hl7_merge"} & tables))
    steps = 12 + len(events) + len(entities)
    done = 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(what, done, steps)

    indexed = _staging_indexes(engine, tables, staged)  # outside the run's transaction: it would lock staging
    with engine.transaction():
        engine.plan(bulk=True)
        for w in (*c.WORK_TABLES, *CHANGES):
            engine.execute(f"TRUNCATE TABLE {w}")  # (PostgreSQL: a DELETE leaves the last run's rows to scan)
        if namespaces:
            _set_namespaces(engine, namespaces)
        if empi:
            engine.execute(c.EMPI_BY_NAMESPACE)
            engine.analyze("tx_empi_ns")
        changed = _vocabularies_changed(engine)  # a new release can change any code's concept and domain:
        codes_changed = None  # the records whose codes it resolves differently are mapped again (else all of them)
        if changed and not full and _count(engine, "SELECT count(*) FROM transform_code_map WHERE system IS NULL"):
            full = True
        elif changed and not full:
            codes_changed = _release_changes(engine)
        older = store.info(engine).get(RULES_KEY)
        upgraded = older != RULES[-1] and _count(engine, "SELECT count(*) FROM transform_run") > 0
        if upgraded:
            full = True
        if full:
            engine.execute("DELETE FROM transform_watermark")
            engine.execute("DELETE FROM transform_quiet_key")
        replayed = _restaged(engine, tables)
        if not staged:
            return RunSummary(None, seconds=time.perf_counter() - t0, vocabularies_changed=changed)
        marks = engine.query("SELECT source, MIN(receipt_seq) AS lo, MAX(receipt_seq) AS hi FROM (" + " UNION ALL ".join(
            f"SELECT source, receipt_seq FROM {t}" for t in staged) + ") AS a GROUP BY source").to_pylist()
        engine.load_arrow("tx_mark", pa.table({"source": pa.array([m["source"] for m in marks], pa.string()),
                                               "receipt_seq": pa.array([m["hi"] for m in marks], pa.int64())}))
        seen = {x["source"]: x["receipt_seq"] for x in engine.query(
            "SELECT source, receipt_seq FROM transform_watermark").to_pylist()}
        # every new staging row has a receipt_seq above `floor` (receipt numbers only grow within a source): a
        # constant filter the engines can use to skip the old part of a staging table
        floor = min((seen[m["source"]] if m["source"] in seen else m["lo"] - 1 for m in marks
                     if m["hi"] > seen.get(m["source"], -1)), default=None)
        step("finding new records")
        if floor is not None:
            for rule in (*events, *entities, *persons):
                joins = bool(seen) and _looks_up(rule)  # (a first load hashes whole tables)
                if joins:
                    engine.plan(bulk=False)
                engine.execute(c.delta_sql(rule) + f" AND s.receipt_seq > {floor}")
                if joins:
                    engine.plan(bulk=True)
        new_keys = _count(engine, "SELECT count(*) FROM tx_delta")
        # a first load, or a batch as large as a tenth of what the store holds, joins whole tables; a smaller one
        # finds the rows it replaces and the persons it touches through indexes (`lookups`)
        bulk = full or new_keys * 10 > _count(engine, "SELECT CAST(sum(records) AS BIGINT) FROM transform_run")
        _merges(engine, tables, bulk)
        _applied_changes(engine, tables, (*events, *entities, *persons), full)
        if not full and seen:  # (--full maps every event again; a first load has nothing mapped before)
            _late_encounters(engine, tables, events, entities, bulk, floor)
            _adt_visits(engine, entities, bulk, floor, replayed)
        for src in replayed:   # records gone from a replayed source's staging (now rejected): their rows go too
            engine.execute("INSERT INTO tx_delta SELECT DISTINCT rule, source_key FROM cdm_lineage WHERE source = ? "
                           "AND source_key NOT IN (SELECT source_key FROM tx_delta)", [src])
        engine.analyze("tx_mark", "tx_delta", "tx_merge")  # work tables just filled: statistics for the planner
        only_new = _count(engine, "SELECT count(*) FROM tx_delta") == new_keys  # no merge, mapping or EMPI change
        remapped = set() if full else _co_owners(engine, entities, bulk)  # (--full: every record is mapped again)
        per_rule = {x["rule"]: x["n"] for x in engine.query(
            "SELECT rule, count(DISTINCT source_key) AS n FROM tx_delta GROUP BY rule").to_pylist()}
        n_delta = sum(per_rule.values())
        events = [x for x in events if x.name in per_rule]  # only rules with something to do run their SQL
        entities = [x for x in entities if x.name in per_rule]
        if n_delta == 0:
            engine.execute("DELETE FROM transform_watermark WHERE source IN (SELECT source FROM tx_mark)")
            engine.execute("INSERT INTO transform_watermark SELECT source, receipt_seq FROM tx_mark")
            if changed:  # no code maps differently; the eras may (CONCEPT_ANCESTOR, DRUG_STRENGTH)
                derived.rebuild(engine)
            return RunSummary(None, seconds=time.perf_counter() - t0, vocabularies_changed=changed,
                              codes_changed=codes_changed)
        run_id = _count(engine, "SELECT COALESCE(MAX(run_id), 0) + 1 FROM transform_run")
        started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)

        # replace: old rows of the delta keys go (their persons are touched)
        step("removing replaced rows")
        engine.plan(bulk=bulk)
        engine.execute("INSERT INTO tx_replaced SELECT cdm_table, row_id, person_id, source_key, code, concept_id, "
                       "source, rule, code_system "
                       "FROM cdm_lineage "
                       "WHERE source_key IN (SELECT source_key FROM tx_delta)")
        engine.execute("INSERT INTO tx_touched SELECT DISTINCT person_id FROM tx_replaced WHERE person_id IS NOT NULL")
        engine.analyze("tx_replaced", "tx_touched")
        old = {x["cdm_table"]: x["n"] for x in engine.query(
            "SELECT cdm_table, count(*) AS n FROM tx_replaced GROUP BY cdm_table").to_pylist()
            if x["cdm_table"] not in PROTECTED}
        deleted = sum(old.values())
        for t in sorted(old):
            engine.execute(f"DELETE FROM {t} WHERE {_pk(t)} IN (SELECT row_id FROM tx_replaced WHERE cdm_table = '{t}')")
        if deleted:
            engine.execute("DELETE FROM cdm_lineage WHERE source_key IN (SELECT source_key FROM tx_replaced) "
                           f"AND cdm_table NOT IN {PROTECTED}")
        engine.plan(bulk=True)
        narrowed = {}
        if not full and seen and engine.shapes.narrow_delta:
            narrowed = _narrow(engine, events + entities, floor if only_new else None, tables, indexed, bulk,
                               remapped)
        events = [narrowed.get(x.name, x) for x in events]  # rules narrowed to their delta rows
        entities = [narrowed.get(x.name, x) for x in entities]

        # codes of the delta, resolved once
        step("resolving codes")
        needed = []
        for rule in (*events, *entities):
            needed += [c.needed_sql(rule, code) for code in c.codes_of(rule)]
            if getattr(rule, "codings", ()) and c.CODINGS in tables:
                needed.append(_codings(c.coding_needed_sql(rule), narrowed))
        head = "INSERT INTO tx_needed\n"
        if narrowed and all(x.startswith(head) for x in needed):  # few rows each: one statement
            needed = [head + "\nUNION ALL\n".join(f"SELECT * FROM ({x[len(head):]}) AS n{i}"
                                                  for i, x in enumerate(needed))] if needed else []
        for sql in needed:
            engine.execute(sql)
        engine.analyze("tx_needed")
        engine.execute(c.RESOLVE_SQL)
        engine.analyze("tx_code")
        engine.execute("DELETE FROM transform_code_map" + ("" if full else " WHERE system || '|' || code IN "
                                                                     "(SELECT system || '|' || code FROM tx_code)"))
        engine.execute(f"INSERT INTO transform_code_map SELECT {_CODE_COLS} FROM tx_code")

        for rule in events:
            step(f"mapping {rule.name}")
            engine.execute(_codings(c.event_sql(rule, empi, tables), narrowed))
        step("writing events")
        engine.analyze("tx_event")
        routed = {x["cdm_table"] for x in engine.query("SELECT DISTINCT cdm_table FROM tx_event").to_pylist()}
        for t in sorted(routed):
            engine.execute(c.domain_insert_sql(t))
        engine.execute(c.lineage_from_events_sql(run_id))
        skipped = _count(engine, "SELECT count(*) FROM tx_event WHERE person_id IS NULL OR start_date IS NULL")
        inserts = {}
        for rule in entities:
            step(f"mapping {rule.name}")
            inserts[rule.name], lineage = c.table_rule_sql(rule, empi, run_id, tables)
            engine.execute(inserts[rule.name])
            engine.execute(lineage)
        _writers(engine, run_id, entities, inserts, bulk)

        # persons: demographics and death from all their records; derived tables
        step("rebuilding persons")
        engine.execute(f"INSERT INTO tx_touched SELECT DISTINCT person_id FROM cdm_lineage WHERE run_id = {run_id} "
                       "AND person_id IS NOT NULL")
        if changed:  # a new release: every person's eras may change (CONCEPT_ANCESTOR, DRUG_STRENGTH)
            engine.execute("INSERT INTO tx_touched SELECT DISTINCT person_id FROM cdm_lineage WHERE person_id IS NOT "
                           "NULL AND person_id NOT IN (SELECT person_id FROM tx_touched)")
        found, records = {}, {}
        if narrowed and floor is not None and only_new and not empi:
            found, records = _person_work(engine, persons, [*events, *entities], floor)
            narrowed.update({x.staging: None for x in (*found.values(), *records.values())})
        for rule in persons:
            if rule.name in per_rule:
                engine.execute(c.person_delta_touched_sql(found.get(rule.name, rule), empi))
        engine.analyze("tx_touched")
        demo = demographics.person_sql() if empi and demographics.TABLE in tables else c.NO_DEMOGRAPHICS
        for rule in persons:
            engine.execute(c.person_rows_sql(records.get(rule.name, rule), empi, demographics=demo))
        if records and _count(engine, "SELECT count(*) FROM (SELECT person_id FROM person UNION ALL SELECT person_id "
                              "FROM death) AS p WHERE person_id IN (SELECT person_id FROM tx_touched) AND NOT EXISTS "
                              "(SELECT 1 FROM tx_person tp WHERE tp.person_id = p.person_id)"):
            engine.execute("DELETE FROM tx_person")  # a touched person's records were not all found: read all
            for rule in persons:
                engine.execute(c.person_rows_sql(rule, empi, demographics=demo))
        engine.analyze("tx_person")
        engine.plan(bulk=bulk)
        for t in PROTECTED:
            engine.execute(f"DELETE FROM {t} WHERE person_id IN (SELECT person_id FROM tx_touched)")
        engine.execute(f"DELETE FROM cdm_lineage WHERE cdm_table IN {PROTECTED} "
                       "AND person_id IN (SELECT person_id FROM tx_touched)")  # (their row_id is the person_id)
        engine.plan(bulk=True)
        engine.execute(c.person_insert_sql(r.GENDER, r.RACE, r.ETHNICITY))
        engine.execute(c.DEATH_SQL)
        for t in PROTECTED:
            engine.execute(c.person_lineage_sql(t, run_id))
        step("rebuilding observation periods and eras")
        # (after a release every person is touched: their rows are joined whole, not looked up)
        derived.rebuild(engine, persons="tx_touched", lookups=not (bulk or changed), run_id=run_id)

        history = [x.name for x in (*events, *entities) if _needs_history(x)]
        if history:  # keys mapped without a row: with the lineage, the keys seen before (see _narrow)
            # (NOT EXISTS, not NOT IN: PostgreSQL runs a NOT IN whose keys outgrow work_mem once per row; bulk: the
            # quiet keys have no index, a nested loop would scan them once per delta key)
            engine.execute("INSERT INTO transform_quiet_key SELECT DISTINCT d.source_key FROM tx_delta d WHERE d.rule IN ("
                           + ", ".join(f"'{x}'" for x in history) + ") AND NOT EXISTS (SELECT 1 FROM cdm_lineage l "
                           f"WHERE l.source_key = d.source_key AND l.run_id = {run_id}) AND NOT EXISTS "
                           "(SELECT 1 FROM transform_quiet_key q WHERE q.source_key = d.source_key)")
        for name in sorted(k for k, x in narrowed.items() if x is None and not k.startswith("__")):  # work tables
            engine.execute(f"DROP TABLE IF EXISTS {name}")

        step("recording the run")
        engine.execute("DELETE FROM transform_watermark WHERE source IN (SELECT source FROM tx_mark)")
        engine.execute("INSERT INTO transform_watermark SELECT source, receipt_seq FROM tx_mark")
        _gaps(engine, run_id, everything=full or not only_new)
        written = {x["cdm_table"]: x["n"] for x in engine.query(
            f"SELECT cdm_table, count(DISTINCT row_id) AS n FROM cdm_lineage WHERE run_id = {run_id} "
            "GROUP BY cdm_table").to_pylist()}
        n_persons = _count(engine, "SELECT count(DISTINCT person_id) FROM tx_touched")
        _cdm_source(engine, run_id, started, site or {})
        engine.load_arrow("transform_run", pa.table({
            "run_id": [run_id], "started_at": [started],
            "finished_at": [dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)], "engine": [engine.name],
            "records": [n_delta], "rows_written": [sum(written.values())], "rows_deleted": [deleted],
            "skipped": [skipped], "persons": [n_persons]}))
        store.set_info(engine, RULES_KEY, RULES[-1])
        gaps = _count(engine, "SELECT count(*) FROM transform_gap")
        for w in (*c.WORK_TABLES, *CHANGES):  # emptied now, so the next run does not pay for this one's size
            if w not in ("tx_mark", "tx_empi_ns") and engine.shapes.truncate:  # (Spark empties a table by removing
                # its files; these two stay for derived.rebuild outside a run)
                engine.execute(f"TRUNCATE TABLE {w}")
        _cdm_indexes(engine, tables, analyze=bulk)
    return RunSummary(run_id, n_delta, dict(sorted(written.items())), deleted, skipped, n_persons, gaps,
                      time.perf_counter() - t0, changed, codes_changed,
                      (older or "an earlier release") if upgraded else None)


def _staging_indexes(engine: Engine, tables: set[str], staged: list[str]) -> set[str]:
    """Indexes a run reads staging (and the EMPI maps) through, where the engine keeps them: the rows received
    since the last run (`receipt_seq`), and the lookups PostgreSQL runs once per row (correlated subqueries; DuckDB
    turns them into joins): an event's visit number (105 s -> 0.07 s for 40k events x 40k encounters), whether an
    Observation without a value is a panel with components (without the index, quadratic: the 100,000-patient full
    load did not get past `fhir.observation` in 23 minutes). Returns the lookups indexed."""
    for t in staged:
        engine.index(t, "receipt_seq")
    if "empi_person_map" in tables:  # every rule's person: its source's EMPI id, else its namespace's (lookups)
        engine.index("empi_person_map", "source", "source_id")
        engine.index("tx_empi_ns", "source", "source_id")
    if "stg_hl7_visit" in tables:  # a visit known from results (hl7.result_visit): its ADT messages, its results
        engine.index("stg_hl7_visit", "visit_number")
        engine.index("stg_hl7_observation", "source", "control_id")
    if "stg_fhir_observation_component" in tables:
        engine.index("stg_fhir_observation_component", "source", "receipt_seq", "record_location", "resource_id")
    if r.VISIT_NUMBER in tables:  # the events of an Encounter that comes late (_late_encounters)
        for t in sorted({x.staging for x in _numbered([*r.EVENTS, *r.TABLES]) if not getattr(x, "from_sql", None)}
                        & tables):
            engine.index(t, "source", "encounter_ref")
    if r.VISIT_NUMBER in tables and engine.index("stg_fhir_encounter", "source", "('Encounter/' || resource_id)"):
        return {"stg_fhir_encounter"}
    return set()


def _cdm_indexes(engine: Engine, tables: set[str], analyze: bool) -> None:
    """Indexes the next run finds its few rows through, where the engine keeps them (created once, after the first
    load, which is faster than growing them row by row): lineage by record key, person and run; every person-level
    CDM table by its primary key, person and visit (as the OHDSI DDL's indexes; by visit: the events of a stay
    whose details are rebuilt, see derived.rebuild). `analyze`: after a bulk load, fresh statistics, or the next
    run's planner guesses half the lineage for a few thousand record keys."""
    from medlake.cdm import model

    for key in ("source_key", "person_id", "run_id", "row_id"):  # (row_id: the records sharing a row)
        engine.index("cdm_lineage", key)
    for t in model.load("5.4").tables:
        if t.name in tables and "person_id" in t.field_names:
            keys = [*t.primary_key[:1], "person_id"] + [k for k in ("visit_occurrence_id",) if k in t.field_names]
            for key in dict.fromkeys(keys):
                engine.index(t.name, key)
            if analyze:
                engine.analyze(t.name)
    if analyze:
        engine.analyze("cdm_lineage")


def _gaps(engine: Engine, run_id: int, everything: bool) -> None:
    """The mapping-gap table (unmapped codes counted per source, rule and code, over the whole store): counted
    again over the lineage after a full run or a mapping change; otherwise moved by this run's rows — less the
    rows it replaced, plus those it wrote."""
    def unmapped(frm: str, sign: str = "", where: str = "") -> str:
        return (f"SELECT l.source, l.rule, l.code_system, l.code, COALESCE(cs.vocabulary_id, l.code_system) AS v, "
                f"{sign}count(*) AS n FROM {frm} l LEFT JOIN medlake_code_system cs ON cs.system = l.code_system "
                f"WHERE l.concept_id = 0 AND l.code IS NOT NULL{where} "
                "GROUP BY l.source, l.rule, l.code_system, l.code, COALESCE(cs.vocabulary_id, l.code_system)")
    if everything:
        engine.execute("DELETE FROM transform_gap")
        engine.execute("INSERT INTO transform_gap " + unmapped("cdm_lineage"))
        return
    engine.execute("INSERT INTO tx_gap SELECT source, rule, code_system, code, v, CAST(sum(n) AS BIGINT) FROM ("
                   "SELECT source, rule, code_system, code, vocabulary_id AS v, n_rows AS n FROM transform_gap "
                   f"UNION ALL {unmapped('tx_replaced', '-')} "
                   f"UNION ALL {unmapped('cdm_lineage', where=f' AND l.run_id = {run_id}')}) AS g "
                   "GROUP BY source, rule, code_system, code, v HAVING sum(n) > 0")
    engine.execute("DELETE FROM transform_gap")
    engine.execute("INSERT INTO transform_gap SELECT * FROM tx_gap")


def _pk(table: str) -> str:
    from medlake.cdm import model

    t = model.load("5.4").table(table)
    return (t.primary_key or t.field_names)[0]


def _restaged(engine: Engine, tables: set[str]) -> list[str]:
    """Receipts staged again by `medlake quarantine retry` or `replay` lie below the watermark of their source: it
    goes down to just below the lowest of them, so this run maps them (and what follows them) again. Returns the
    sources replayed whole (receipt 0), whose records no longer staged are to leave the CDM."""
    if RESTAGED_TABLE not in tables:
        return []
    low = {x["source"]: x["lo"] for x in engine.query(
        f"SELECT source, MIN(receipt_seq) AS lo FROM {RESTAGED_TABLE} GROUP BY source").to_pylist()}
    seen = {x["source"]: x["receipt_seq"] for x in engine.query(
        "SELECT source, receipt_seq FROM transform_watermark").to_pylist()}
    lower = {s: lo - 1 for s, lo in low.items() if s in seen and seen[s] >= lo}
    if lower:
        engine.execute("DELETE FROM transform_watermark WHERE source IN (" + ", ".join("?" * len(lower)) + ")",
                       list(lower))
        engine.load_arrow("transform_watermark", pa.table({"source": pa.array(list(lower), pa.string()),
                                                          "receipt_seq": pa.array(list(lower.values()), pa.int64())}))
    engine.execute(f"DELETE FROM {RESTAGED_TABLE}")
    return sorted(s for s, lo in low.items() if lo == 0 and s in seen)


def _merges(engine: Engine, tables: set[str], bulk: bool) -> None:
    """Person links known from the sources themselves: HL7 A40 merges (prior MRN → surviving MRN) and a FHIR
    Patient's MRN identifier (Patient/id → MRN, in the hospital's namespace). When a link is new or changed, every
    record of the person it took the id from is mapped again."""
    window = "JOIN tx_mark mk ON mk.source = s.source AND s.receipt_seq <= mk.receipt_seq " \
             "LEFT JOIN transform_source ns ON ns.source = s.source"
    parts = []
    if "stg_hl7_merge" in tables:
        parts.append(f"SELECT {c.NS} AS namespace, s.prior_patient_id AS prior_ref, s.patient_id AS survivor_ref, "
                     f"s.receipt_seq, s.source FROM stg_hl7_merge s {window} "
                     "WHERE s.prior_patient_id IS NOT NULL AND s.patient_id IS NOT NULL")
    if "stg_fhir_patient" in tables:
        parts.append(f"SELECT {c.NS} AS namespace, 'Patient/' || s.resource_id AS prior_ref, s.mrn AS survivor_ref, "
                     "s.receipt_seq, s.source FROM ("
                     "SELECT s.*, ROW_NUMBER() OVER (PARTITION BY s.source, s.resource_id ORDER BY s.last_updated DESC "
                     "NULLS LAST, s.receipt_seq DESC) AS rn FROM stg_fhir_patient s) AS s "
                     f"{window} WHERE s.rn = 1 AND s.mrn IS NOT NULL")
    if not parts:
        return
    # one link per prior id: the newest (a message repeated in a batch file, or resent, is staged twice)
    engine.execute("INSERT INTO tx_merge SELECT namespace, prior_ref, survivor_ref, receipt_seq, source FROM ("
                   "SELECT m.*, ROW_NUMBER() OVER (PARTITION BY m.namespace, m.prior_ref ORDER BY m.receipt_seq DESC, "
                   f"m.survivor_ref DESC, m.source) AS rn FROM ({' UNION ALL '.join(parts)}) AS m) AS m WHERE m.rn = 1")
    changed = ("SELECT n.namespace, n.prior_ref FROM tx_merge n LEFT JOIN transform_merge o ON o.namespace = "
               "n.namespace AND o.prior_ref = n.prior_ref WHERE o.survivor_ref IS NULL OR o.survivor_ref <> n.survivor_ref")
    gone = ("SELECT count(*) FROM transform_merge o LEFT JOIN tx_merge n ON n.namespace = o.namespace "
            "AND n.prior_ref = o.prior_ref WHERE n.prior_ref IS NULL")
    engine.execute(f"""INSERT INTO tx_merge_person
SELECT DISTINCT stable_id(x.namespace || '|' || COALESCE(o.survivor_ref, x.prior_ref))
FROM ({changed}) AS x LEFT JOIN transform_merge o ON o.namespace = x.namespace AND o.prior_ref = x.prior_ref""")
    if not _count(engine, "SELECT count(*) FROM tx_merge_person") and not _count(engine, gone):
        return  # no link is new, changed or gone
    engine.analyze("tx_merge_person")
    engine.plan(bulk=bulk)  # the lineage of those persons: few, through its index
    engine.execute(f"INSERT INTO tx_delta SELECT DISTINCT l.rule, l.source_key FROM cdm_lineage l WHERE l.cdm_table "
                   f"NOT IN {PROTECTED} AND l.person_id IN (SELECT person_id FROM tx_merge_person)")
    engine.execute("INSERT INTO tx_touched SELECT person_id FROM tx_merge_person")
    engine.plan(bulk=True)
    engine.execute("DELETE FROM transform_merge")
    engine.execute("INSERT INTO transform_merge SELECT * FROM tx_merge")


def _late_encounters(engine: Engine, tables: set[str], events: list, entities: list, bulk: bool,
                     floor: int | None) -> None:
    """A FHIR event's (or note's) visit is its Encounter's visit number, looked up when it is mapped: an event mapped
    before its Encounter arrived (bulk files in any order, a feed that sends results first) took `Encounter/id`,
    a visit that never exists once the Encounter has a number. Such events are mapped again when it comes (found
    through the staging tables' (source, encounter_ref) index where the engine keeps one, `_staging_indexes`: a
    daily batch of new Encounters scanned every FHIR event table, 3 of PostgreSQL's 8.5 s at 10,000 patients)."""
    enc = next((x for x in entities if x.name == "fhir.encounter"), None)
    late = _numbered([*events, *entities])
    if floor is None or enc is None or r.VISIT_NUMBER not in tables or not late or not _count(
            engine, "SELECT count(*) FROM tx_delta WHERE rule = 'fhir.encounter'"):
        return
    # the Encounters received now that have a visit number, once (every rule below reads them; an Encounter
    # mapped again for another reason, a merge or a mapping, has the number its events already took)
    work(engine, f"SELECT DISTINCT s.source, 'Encounter/' || s.resource_id AS ref FROM stg_fhir_encounter s "
                 f"WHERE s.receipt_seq > {floor} AND s.identifier_value IS NOT NULL AND {c.source_key(enc)} IN "
                 "(SELECT source_key FROM tx_delta WHERE rule = 'fhir.encounter')", "tx_late_encounter")
    if not _count(engine, "SELECT count(*) FROM tx_late_encounter"):
        return  # (no event staging table is read)
    engine.plan(bulk=bulk)
    for rule in late:
        engine.execute(f"""INSERT INTO tx_delta
SELECT DISTINCT '{rule.name}', {c.source_key(rule)}
FROM {c.read_sql(rule)} s
JOIN tx_late_encounter x ON x.source = s.source AND x.ref = s.encounter_ref
JOIN tx_mark mk ON mk.source = s.source AND s.receipt_seq <= mk.receipt_seq
WHERE ({rule.key}) IS NOT NULL
  AND {c.source_key(rule)} IN (SELECT source_key FROM cdm_lineage WHERE rule = '{rule.name}')
  AND {c.source_key(rule)} NOT IN (SELECT source_key FROM tx_delta WHERE rule = '{rule.name}')""")
    engine.plan(bulk=True)


def _adt_visits(engine: Engine, entities: list, bulk: bool, floor: int | None, replayed: list[str]) -> None:
    """A visit known only from its results has the results' row (`rules` hl7.result_visit) until an ADT message of
    its visit number arrives: then the results' records that wrote or share the row are mapped again (they no
    longer write it) and the ADT's state holds, a cancel included, as if both had come in one run. Only the ADT
    messages received now can be the first of their visit (read above `floor`, as `_late_encounters` reads). A
    replay that takes a visit's ADT messages back (now rejected) gives the row back to its results."""
    rule = next((x for x in entities if x.name == "hl7.result_visit"), None)
    if rule is None or "hl7.visit" not in {x.name for x in entities}:
        return
    if replayed:  # the results of visit numbers without an ADT message that have no row (the rule reads only those)
        key = c.source_key(rule)
        engine.execute(f"""INSERT INTO tx_delta
SELECT DISTINCT '{rule.name}', {key} FROM {c.read_sql(rule)} s
JOIN tx_mark mk ON mk.source = s.source AND s.receipt_seq <= mk.receipt_seq
WHERE ({rule.key}) IS NOT NULL AND {key} NOT IN (SELECT source_key FROM cdm_lineage WHERE rule = '{rule.name}')
  AND {key} NOT IN (SELECT source_key FROM tx_delta WHERE rule = '{rule.name}')""")
    if floor is None or not _count(engine, "SELECT count(*) FROM tx_delta WHERE rule = 'hl7.visit'"):
        return
    # the visits of those messages, then their lineage through its row_id index (PostgreSQL scanned the lineage,
    # 0.5-1.6 s at 10k: for a row_id IN a list it could not size, and for a NOT IN it costs once per index lookup)
    work(engine, f"SELECT DISTINCT {c.keyed_id('visit_occurrence', 's.visit_number')} AS row_id FROM stg_hl7_visit s "
                 f"LEFT JOIN transform_source ns ON ns.source = s.source WHERE s.receipt_seq > {floor} "
                 "AND s.message_type LIKE 'ADT%' AND s.visit_number IS NOT NULL", "tx_adt_visit")
    engine.plan(bulk=bulk)
    engine.execute(f"""INSERT INTO tx_delta
SELECT DISTINCT l.rule, l.source_key FROM tx_adt_visit v JOIN cdm_lineage l ON l.row_id = v.row_id
WHERE l.rule = '{rule.name}' AND l.cdm_table = 'visit_occurrence'
  AND NOT EXISTS (SELECT 1 FROM tx_delta d WHERE d.rule = l.rule AND d.source_key = l.source_key)""")
    engine.plan(bulk=True)


def _numbered(rules: list) -> list:
    """The rules whose visit is their FHIR Encounter's visit number (once the staging holds it): events, and the
    NOTE rules (DocumentReference, DiagnosticReport text)."""
    return [x for x in rules if any("FROM stg_fhir_encounter x WHERE" in k for _, k in (
        x.visit_if if isinstance(x, r.EventRule) else r.TABLE_KEYS.get(x.name, {}).get("visit_if", ())))]


def _co_owners(engine: Engine, entities: list, bulk: bool) -> set[str]:
    """A row that several records share (`compile.sharing`: the HL7 visit and the FHIR Encounter of one stay) goes
    when one of them is mapped again: its other records are mapped again too, so that the one that comes first
    writes it again (an A08 must not overwrite the Encounter's row). Returns their rules."""
    shared = _names(c.sharing(r.TABLES))
    if not c.sharing(entities) or not _count(engine, f"SELECT count(*) FROM tx_delta WHERE rule IN {shared}"):
        return set()
    # (the delta's shared rows first: DuckDB joined every shared lineage row to every other, 5M pairs at 100k;
    # PostgreSQL finds them through the lineage's indexes)
    engine.plan(bulk=bulk)
    work(engine, f"""SELECT DISTINCT o.rule, o.source_key FROM (
    SELECT DISTINCT l.cdm_table, l.row_id FROM cdm_lineage l
    WHERE l.rule IN {shared} AND l.source_key IN (SELECT source_key FROM tx_delta WHERE rule IN {shared})) AS k
JOIN cdm_lineage o ON o.row_id = k.row_id AND o.cdm_table = k.cdm_table AND o.rule IN {shared}
WHERE NOT EXISTS (SELECT 1 FROM tx_delta d WHERE d.source_key = o.source_key)""", "tx_co_owner")
    engine.plan(bulk=True)
    engine.execute("INSERT INTO tx_delta SELECT rule, source_key FROM tx_co_owner")
    return {x["rule"] for x in engine.query("SELECT DISTINCT rule FROM tx_co_owner").to_pylist()}


def _writers(engine: Engine, run_id: int, entities: list, inserts: dict, bulk: bool) -> None:
    """A record mapped now that comes before the one that wrote a shared row in an earlier run (`compile.sharing`:
    the FHIR Encounter that arrives after the HL7 stay) writes the row instead, as if both came in one run. The
    row's person before is touched (the Encounter may name another patient: their periods and eras change)."""
    mapped = [x for x in c.sharing(entities) if x.name in inserts]
    if not mapped:
        return
    shared = _names(c.sharing(r.TABLES))
    engine.plan(bulk=bulk)  # (the rows written now, then their earlier records: through the lineage's indexes)
    work(engine, f"""SELECT cdm_table, row_id, rule FROM (
    SELECT l.cdm_table, l.row_id, l.rule, l.run_id, MIN(l.run_id) OVER (PARTITION BY l.cdm_table, l.row_id) AS since,
           ROW_NUMBER() OVER (PARTITION BY l.cdm_table, l.row_id ORDER BY {c.writer_order(r.TABLES)}) AS rn
    FROM cdm_lineage l
    WHERE l.rule IN {shared} AND l.row_id IN (  -- rows written now that records of earlier runs share
        SELECT n.row_id FROM cdm_lineage n WHERE n.run_id = {run_id} AND n.rule IN {_names(mapped)} AND EXISTS (
            SELECT 1 FROM cdm_lineage o WHERE o.row_id = n.row_id AND o.run_id < {run_id} AND o.rule IN {shared}))
) AS w WHERE rn = 1 AND run_id = {run_id} AND since < {run_id}""", "tx_writer")
    engine.plan(bulk=True)
    from medlake.cdm import model

    found = engine.query("SELECT DISTINCT cdm_table, rule FROM tx_writer").to_pylist()
    for t in sorted({x["cdm_table"] for x in found}):
        rows = f"{_pk(t)} IN (SELECT row_id FROM tx_writer WHERE cdm_table = '{t}')"
        if "person_id" in model.load("5.4").table(t).field_names:  # the row's person may lose it: rebuilt too
            engine.execute(f"INSERT INTO tx_touched SELECT DISTINCT person_id FROM {t} WHERE {rows} "
                           "AND person_id IS NOT NULL")
        engine.execute(f"DELETE FROM {t} WHERE {rows}")
    writers = {x["rule"] for x in found}
    for rule in mapped:  # in order: the first rule writes a row two of them share
        if rule.name in writers:
            engine.execute(inserts[rule.name])


def _names(rules) -> str:
    return "(" + ", ".join(f"'{x.name}'" for x in rules) + ")"


def _looks_up(rule) -> bool:
    """An entity rule that reads a query of its own (hl7.result_visit: visit numbers without an ADT message, with
    their results) finds a run's few keys' rows through the ADT and result indexes (`_staging_indexes`): hashed,
    PostgreSQL read every ADT message and result, 0.2-0.3 s per statement of a 10k +1 % run. An event rule's query
    (the components joined to their Observation) is quicker hashed."""
    return isinstance(rule, r.TableRule) and rule.from_sql is not None


def _read(engine: Engine, frm: str, alias: str) -> str:
    """The columns of a staging table (or a rule's own query: all) that a work table narrowed from it keeps: all but
    `raw`, the resource as received, which no rule reads (the Encounters a 100k +1 % looks up are a 1.6 GB read
    with it)."""
    if not frm.startswith("stg_"):
        return f"{alias}.*"
    return ", ".join(f"{alias}.{x.name}" for x in engine.columns(frm) if x.name != "raw")


def _narrow(engine: Engine, rules: list, floor: int | None, tables: set[str], indexed: set[str], bulk: bool,
            remapped: set[str] = frozenset()) -> dict:
    """Rules reading a work table with only the staging rows of their delta keys (every version), instead of scanning
    their staging table once per code and once more per statement. Where the newest version is the last received,
    the new rows suffice: rules read only the rows above `floor` (None: a merge, mapping or EMPI change re-maps old
    records: read everything). A rule whose versions are ordered otherwise (FHIR: lastUpdated, which can arrive out
    of order) or aggregated (a visit's admit time is the earliest of its messages) reads its whole staging table
    once when one of its keys was seen before (it has lineage, or was mapped without a row)."""
    old_rules = set()
    history = [x.name for x in rules if _needs_history(x)]
    if floor is not None and history:
        rules_in = "rule IN (" + ", ".join(f"'{x}'" for x in history) + ")"
        old_rules = {x["rule"] for x in engine.query(  # (a UNION, not an OR of two IN: each is a join)
            f"SELECT rule FROM tx_delta WHERE {rules_in} AND source_key IN (SELECT source_key FROM tx_replaced) UNION "
            f"SELECT rule FROM tx_delta WHERE {rules_in} AND source_key IN (SELECT source_key FROM transform_quiet_key)"
        ).to_pylist()}

    old_rules |= remapped  # (records mapped again for a row they share: no new rows)

    def above(alias: str, names) -> str:
        return f"{alias}.receipt_seq > {floor} AND " if floor is not None and not old_rules & set(names) else ""

    out = {}
    for rule in rules:
        name = "tx_stg_" + re.sub(r"\W", "_", rule.name)
        frm = getattr(rule, "from_sql", None) or rule.staging
        joins = not bulk and _looks_up(rule)
        if joins:
            engine.plan(bulk=False)
        work(engine, f"SELECT {_read(engine, frm, 's')} FROM {frm} s WHERE {above('s', [rule.name])}"
                     f"{c.source_key(rule)} IN (SELECT source_key FROM tx_delta WHERE rule = '{rule.name}')", name)
        if joins:
            engine.plan(bulk=True)
        field = "from_sql" if hasattr(rule, "from_sql") else "staging"  # entity rules read their `staging`
        out[rule.name] = dataclasses.replace(rule, **{field: name})
        out[name] = None
    narrowed = [x for x in out.values() if x is not None]
    rec = "{a}.source || '|' || CAST({a}.receipt_seq AS VARCHAR) || '|' || {a}.record_location || '|' || {a}.resource_id"
    replace = {}
    # Tables the rules' SQL looks up per row, narrowed to the rows those delta rows can find (same receipt: the same
    # floor applies; an Encounter may be older than its events: no floor): FHIR codings, an Observation's
    # components (a panel has no value of its own), the Encounter's visit number.
    for table, alias, uses, key, ref, same_receipt in (
            ("stg_fhir_coding", "k", lambda x: getattr(x, "codings", ()) and c.CODINGS in tables, rec, rec, True),
            ("stg_fhir_observation_component", "k", lambda x: "FROM stg_fhir_observation_component k WHERE" in x.where,
             rec, rec, True),
            ("stg_fhir_encounter", "x", lambda x: r.VISIT_NUMBER in tables and bool(_numbered([x])),
             "'Encounter/' || {a}.resource_id", "{a}.encounter_ref", False)):
        users = [x for x in narrowed if isinstance(x, r.EventRule) and uses(x)]
        if not users or table not in tables or table in indexed:
            continue  # looked up through its index (_staging_indexes); a work table without one would be scanned
                      # once per event: quadratic in the delta
        name = CODING_WORK if table == "stg_fhir_coding" else f"tx_stg_lookup_{alias}_{len(replace)}"
        keys = " UNION ALL ".join(f"SELECT {ref.format(a='s')} FROM {x.from_sql} s" for x in users)
        lo = above(alias, [x.name for x in users]) if same_receipt else ""
        work(engine, f"SELECT {_read(engine, table, alias)} FROM {table} {alias} WHERE {lo}{key.format(a=alias)} IN "
                     f"({keys})", name)
        out[name] = None
        replace[f"FROM {table} {alias}\n"] = f"FROM {name} {alias}\n"
        replace[f"FROM {table} {alias} "] = f"FROM {name} {alias} "
    out["__sql__"] = replace
    return out


def _person_work(engine: Engine, persons: list, rules: list, floor: int) -> tuple[dict, dict]:
    """Person rules narrowed like the others (only new rows: no merge, mapping or EMPI change; no EMPI): (rules
    reading their delta rows, to find the persons they touch; rules reading every record of the source patients
    involved, to rebuild PERSON and DEATH). A person's id is the hash of its patient id or, after an A40 or a FHIR
    Patient's MRN, of the surviving id: the patient ids of the new rows, their survivors and every id merged into
    those are all the ids of the touched persons (checked by the caller)."""
    found, records = {}, {}
    read = {rule.name: _read(engine, rule.staging, "s") for rule in persons}  # (one catalog read per table)
    for rule in persons:
        name = "tx_stg_" + re.sub(r"\W", "_", rule.name)
        work(engine, f"SELECT {read[rule.name]} FROM {rule.staging} s WHERE s.receipt_seq > {floor} "
                     f"AND {c.source_key(rule)} IN (SELECT source_key FROM tx_delta WHERE rule = '{rule.name}')", name)
        found[rule.name] = dataclasses.replace(rule, staging=name)
    refs = [f"SELECT ({x.person_ref or x.person}) AS ref FROM {getattr(x, 'from_sql', None) or x.staging} s"
            for x in (*rules, *found.values()) if x.person and (getattr(x, "from_sql", None) or x.staging).startswith(
                "tx_stg_")]
    engine.execute("INSERT INTO tx_person_ref SELECT DISTINCT ref FROM (" + " UNION ALL ".join(refs) + ") AS r "
                   "WHERE ref IS NOT NULL")
    engine.execute("INSERT INTO tx_person_ref SELECT DISTINCT survivor_ref FROM transform_merge "
                   "WHERE prior_ref IN (SELECT ref FROM tx_person_ref)")
    engine.execute("INSERT INTO tx_person_ref SELECT DISTINCT prior_ref FROM transform_merge "
                   "WHERE survivor_ref IN (SELECT ref FROM tx_person_ref)")
    for rule in persons:
        name = "tx_rec_" + re.sub(r"\W", "_", rule.name)
        work(engine, f"SELECT {read[rule.name]} FROM {rule.staging} s WHERE "
                     f"({rule.person_ref or rule.person}) IN (SELECT ref FROM tx_person_ref)", name)
        records[rule.name] = dataclasses.replace(rule, staging=name)
    return found, records


def _needs_history(rule) -> bool:
    """Whether a rule's newest version may not be the last received, or it aggregates over every version."""
    return bool(getattr(rule, "aggregates", None)) or not rule.order.startswith("s.receipt_seq DESC")


def _codings(sql: str, narrowed: dict) -> str:
    """A rule's SQL reading the narrowed lookup tables (codings, components, encounters) where there are."""
    for old, new in narrowed.get("__sql__", {}).items():
        sql = sql.replace(old, new)
    return sql


def _applied_changes(engine: Engine, tables: set[str], rules, full: bool) -> None:
    """Records to map again because what the last run applied has changed since: a site mapping in
    SOURCE_TO_CONCEPT_MAP (`medlake map accept|reject|import|auto-accept`, or edited by hand) re-maps the records
    carrying that code (as code, unit, value or any FHIR coding), as does a code system now read as another
    vocabulary for the site codes of both; a changed `empi_person_map` (a new EMPI run, a merge or unmerge) re-maps
    the records of the source patients whose person changed, in their source and in the other sources of its
    namespace (which take the EMPI's person by the same id: compile.EMPI_BY_NAMESPACE). Their old and new persons are touched through the
    lineage, so PERSON, DEATH and the derived tables are rebuilt for both."""
    for name, (_, now) in APPLIED.items():
        if name == "transform_applied_identity" and "empi_person_map" not in tables:
            continue
        cols, diff = _applied_diff(name)
        if full or name == "transform_applied_vocabulary":  # (a changed release makes the run a full one)
            pass
        elif name == "transform_applied_code_system":
            if not _count(engine, f"SELECT count(*) FROM ({diff}) AS d"):
                continue
            engine.execute("INSERT INTO tx_remap_code SELECT DISTINCT source_vocabulary_id, source_code FROM "
                           f"source_to_concept_map WHERE source_vocabulary_id IN (SELECT vocabulary_id FROM ({diff}) AS d)")
        else:
            work = "tx_remap_identity" if name == "transform_applied_identity" else "tx_remap_code"
            engine.execute(f"INSERT INTO {work} SELECT DISTINCT {', '.join(cols.split(', ')[:2])} FROM ({diff}) AS d")
            if not _count(engine, f"SELECT count(*) FROM {work}"):
                continue
            if work == "tx_remap_identity":  # the namespace's sources the EMPI does not register take the person
                # by that id too (c.EMPI_BY_NAMESPACE); the registered ones keep to their own identities
                engine.execute("INSERT INTO tx_remap_identity SELECT DISTINCT t2.source, m.source_id "
                               f"FROM tx_remap_identity m {c.UNREGISTERED_IN_NAMESPACE}")
            for rule in rules:
                if work == "tx_remap_code":
                    for sql in _code_change_sql(rule, tables):
                        engine.execute(sql)
                elif rule.person:
                    engine.execute(_keys_sql(rule, "JOIN tx_remap_identity m ON m.source = s.source "
                                                   f"AND m.source_id = ({rule.person})"))
        engine.execute(f"DELETE FROM {name}")
        engine.execute(f"INSERT INTO {name} {now}")


def _applied_diff(name: str) -> tuple[str, str]:
    """The columns of the APPLIED table `name` and the rows that differ between it (what the last run applied) and
    what its query reads now, both ways."""
    now = APPLIED[name][1]
    cols = now.split("SELECT DISTINCT ")[1].split(" FROM ")[0]
    return cols, _both_ways(now, f"SELECT {cols} FROM {name}")


def _both_ways(now: str, kept: str) -> str:
    """The rows of query `now` that query `kept` lacks, and those of `kept` that `now` lacks (same columns)."""
    return f"SELECT * FROM ({now} EXCEPT {kept}) AS a UNION ALL SELECT * FROM ({kept} EXCEPT {now}) AS b"


def _release_changes(engine: Engine) -> int:
    """After a new vocabulary release: every code the CDM's records carry (`transform_code_map`) resolved again;
    those that resolve differently now (concept, source concept, domain) go to tx_remap_code, whose records
    `_applied_changes` maps again. Returns how many codes."""
    engine.execute("INSERT INTO tx_needed SELECT DISTINCT system, code FROM transform_code_map WHERE system IS NOT NULL")
    engine.execute(c.RESOLVE_SQL)
    diff = _both_ways(f"SELECT {_CODE_COLS} FROM tx_code",
                      f"SELECT {_CODE_COLS} FROM transform_code_map WHERE system IS NOT NULL")
    engine.execute(f"INSERT INTO tx_remap_code SELECT DISTINCT vocabulary_id, code FROM ({diff}) AS d")
    for w in ("tx_needed", "tx_code"):  # the run resolves its own codes
        engine.execute(f"TRUNCATE TABLE {w}")
    return _count(engine, "SELECT count(*) FROM tx_remap_code")


def _vocabularies_changed(engine: Engine) -> list[str]:
    """The vocabularies whose release (`vocabulary_version`) differs from the one the last run mapped with, or that
    came or went since (`medlake vocab load` of a new Athena download, or of the first one after runs without a
    vocabulary); none before a first run."""
    name = "transform_applied_vocabulary"
    if not _count(engine, "SELECT count(*) FROM transform_run"):
        return []
    return sorted(x["vocabulary_id"] for x in engine.query(
        f"SELECT DISTINCT vocabulary_id FROM ({_applied_diff(name)[1]}) AS d").to_pylist())


def _keys_sql(rule, join: str, frm: str | None = None, key: str | None = None) -> str:
    return f"""INSERT INTO tx_delta
SELECT DISTINCT '{rule.name}', {key or c.source_key(rule)}
FROM {frm or getattr(rule, "from_sql", None) or rule.staging} s
JOIN tx_mark mk ON mk.source = s.source AND s.receipt_seq <= mk.receipt_seq
{join}
WHERE ({rule.key}) IS NOT NULL"""


def _code_change_sql(rule, tables: set[str]) -> list[str]:
    """Keys of a rule's records carrying a code whose site mapping changed (tx_remap_code)."""
    def join(code) -> str:
        system = f"COALESCE({code.system}, '')"
        return (f"LEFT JOIN medlake_code_system cs ON cs.system = {system}\nJOIN tx_remap_code m ON m.code = "
                f"({code.code}) AND m.vocabulary_id = COALESCE(cs.vocabulary_id, {system})")
    out = [_keys_sql(rule, join(code)) for code in c.codes_of(rule)]
    if getattr(rule, "codings", ()) and c.CODINGS in tables:  # any coding of the resource (the event picks one)
        rtype, element = rule.codings[:2]
        k = r.Code("k.system", "k.code")
        out.append(f"""INSERT INTO tx_delta
SELECT DISTINCT '{rule.name}', '{rule.name}|' || k.source || '|{rtype}/' || k.resource_id
FROM stg_fhir_coding k
JOIN tx_mark mk ON mk.source = k.source AND k.receipt_seq <= mk.receipt_seq
{join(k)}
WHERE k.resource_type = '{rtype}' AND k.element = '{element}'""")
    return out


def _cdm_source(engine: Engine, run_id: int, when: dt.datetime, site: dict[str, str]) -> None:
    """The CDM's one `cdm_source` row, its dates and vocabulary version of this run; its names the site's (`site`,
    from `[site]` in medlake.toml), else those the row has (a site's own UPDATE is kept), else medlake's defaults."""
    v = engine.query("SELECT vocabulary_version FROM vocabulary WHERE vocabulary_id = 'None'")
    vocab = (v.column(0)[0].as_py() if v.num_rows else None) or "unknown"
    names = {"cdm_source_name": "medlake site", "cdm_source_abbreviation": "medlake", "cdm_holder": "medlake site",
             "source_description": "HL7 v2, FHIR R4 and CSV feeds transformed by medlake",
             "source_documentation_reference": None}
    had = engine.query(f"SELECT {', '.join(names)} FROM cdm_source LIMIT 1").to_pylist()
    names |= {k: v for k, v in (had[0] if had else {}).items() if v} | site
    engine.execute("DELETE FROM cdm_source")
    engine.execute("INSERT INTO cdm_source SELECT " + c.select_list("cdm_source", {
        **{k: "CAST(? AS VARCHAR)" for k in names},
        "source_release_date": "CAST(? AS DATE)", "cdm_release_date": "CAST(? AS DATE)",
        "cdm_etl_reference": "'medlake.transform'", "cdm_version": "'5.4'", "cdm_version_concept_id": "756265",
        "vocabulary_version": "CAST(? AS VARCHAR)"}), [*names.values(), when.date().isoformat(),
                                                       when.date().isoformat(), vocab])
    engine.execute("INSERT INTO metadata SELECT " + c.select_list("metadata", {
        "metadata_id": str(run_id), "metadata_concept_id": "0", "metadata_type_concept_id": "32817",
        "name": "'medlake transform run'", "value_as_string": f"'run {run_id}'", "value_as_number": str(run_id),
        "metadata_date": "CAST(? AS DATE)", "metadata_datetime": "CAST(? AS TIMESTAMP)"}),
        [when.date().isoformat(), when.isoformat(sep=" ")])
