"""Rules → SQL, written once in DuckDB's dialect (the engines transpile it for PostgreSQL and Spark).

Work tables (`tx_*`) hold one run's delta: the record keys to (re)build, the resolved codes, the events.
"""
from __future__ import annotations

import dataclasses
import re

from medlake.cdm import model
from medlake.cdm.ddl import SQL_TYPES
from medlake.transform.rules import (DOMAIN_TABLE, TABLE_KEYS, Code, EventRule, PersonRule, TableRule, as_integer,
                                     days_after)

OPERATORS = {"<": 4171756, "<=": 4171754, "=": 4172703, ">=": 4171755, ">": 4172704}

# medlake's own tables (name -> columns), created when missing.
OWN_TABLES = {
    "medlake_code_system": "system VARCHAR, vocabulary_id VARCHAR",
    "transform_source": "source VARCHAR, namespace VARCHAR",
    "transform_watermark": "source VARCHAR, receipt_seq BIGINT",
    "transform_merge": "namespace VARCHAR, prior_ref VARCHAR, survivor_ref VARCHAR, receipt_seq BIGINT, "
                       "source VARCHAR",
    "transform_run": "run_id BIGINT, started_at TIMESTAMP, finished_at TIMESTAMP, engine VARCHAR, records BIGINT, "
                     "rows_written BIGINT, rows_deleted BIGINT, skipped BIGINT, persons BIGINT",
    "transform_gap": "source VARCHAR, rule VARCHAR, code_system VARCHAR, code VARCHAR, vocabulary_id VARCHAR, "
                     "n_rows BIGINT",
    "cdm_lineage": "cdm_table VARCHAR, row_id BIGINT, person_id BIGINT, rule VARCHAR, source VARCHAR, "
                   "record_key VARCHAR, source_key VARCHAR, landing_sha256 VARCHAR, receipt_seq BIGINT, "
                   "record_location VARCHAR, message_id VARCHAR, code_system VARCHAR, code VARCHAR, "
                   "concept_id INTEGER, run_id BIGINT",
}
EVENT_COLUMNS = {
    "rule": "VARCHAR", "source": "VARCHAR", "record_key": "VARCHAR", "source_key": "VARCHAR",
    "landing_sha256": "VARCHAR", "receipt_seq": "BIGINT", "record_location": "VARCHAR", "message_id": "VARCHAR",
    "cdm_table": "VARCHAR", "row_id": "BIGINT", "person_id": "BIGINT", "visit_occurrence_id": "BIGINT",
    "provider_id": "BIGINT", "concept_id": "INTEGER", "source_concept_id": "INTEGER", "code_system": "VARCHAR",
    "code": "VARCHAR", "source_value": "VARCHAR", "type_concept_id": "INTEGER", "start_date": "DATE",
    "start_datetime": "TIMESTAMP", "end_date": "DATE", "end_datetime": "TIMESTAMP", "value_as_number": "DOUBLE",
    "value_as_concept_id": "INTEGER", "value_source_value": "VARCHAR", "unit_concept_id": "INTEGER",
    "unit_source_concept_id": "INTEGER", "unit_source_value": "VARCHAR", "operator_concept_id": "INTEGER",
    "range_low": "DOUBLE", "range_high": "DOUBLE", "quantity": "DOUBLE", "days_supply": "INTEGER",
    "refills": "INTEGER", "route_source_value": "VARCHAR", "dose_unit_source_value": "VARCHAR",
    "lot_number": "VARCHAR", "status_concept_id": "INTEGER", "status_source_value": "VARCHAR",
    "stop_reason": "VARCHAR",
}
WORK_TABLES = {
    "tx_mark": "source VARCHAR, receipt_seq BIGINT",
    "tx_delta": "rule VARCHAR, source_key VARCHAR",
    "tx_needed": "system VARCHAR, code VARCHAR",
    "tx_code": "system VARCHAR, code VARCHAR, vocabulary_id VARCHAR, source_concept_id INTEGER, "
               "concept_id INTEGER, domain_id VARCHAR, n BIGINT",
    "tx_touched": "person_id BIGINT",
    "tx_empi_ns": "source VARCHAR, source_id VARCHAR, person_id BIGINT",  # see EMPI_BY_NAMESPACE
    "tx_merge": "namespace VARCHAR, prior_ref VARCHAR, survivor_ref VARCHAR, receipt_seq BIGINT, source VARCHAR",
    "tx_event": ", ".join(f"{k} {v}" for k, v in EVENT_COLUMNS.items()),
    "tx_person": "person_id BIGINT, rule VARCHAR, source VARCHAR, record_key VARCHAR, source_key VARCHAR, "
                 "landing_sha256 VARCHAR, receipt_seq BIGINT, record_location VARCHAR, message_id VARCHAR, "
                 "seen_at TIMESTAMP, gender VARCHAR, birth DATE, race VARCHAR, ethnicity VARCHAR, death TIMESTAMP, "
                 "birth_year INTEGER, birth_month INTEGER, alive BOOLEAN",
}

# Event columns -> CDM columns, per domain table (unlisted CDM columns are NULL).
_COMMON = {"person_id": "e.person_id", "provider_id": "e.provider_id", "visit_occurrence_id": "e.visit_occurrence_id"}
DOMAIN_COLUMNS = {
    "condition_occurrence": {
        "condition_occurrence_id": "e.row_id", "condition_concept_id": "e.concept_id",
        "condition_start_date": "e.start_date", "condition_start_datetime": "e.start_datetime",
        "condition_end_date": "e.end_date", "condition_end_datetime": "e.end_datetime",
        "condition_type_concept_id": "e.type_concept_id", "condition_status_concept_id": "e.status_concept_id",
        "stop_reason": "e.stop_reason", "condition_source_value": "e.source_value",
        "condition_source_concept_id": "e.source_concept_id",
        "condition_status_source_value": "e.status_source_value", **_COMMON},
    "measurement": {
        "measurement_id": "e.row_id", "measurement_concept_id": "e.concept_id", "measurement_date": "e.start_date",
        "measurement_datetime": "e.start_datetime", "measurement_type_concept_id": "e.type_concept_id",
        "operator_concept_id": "e.operator_concept_id", "value_as_number": "e.value_as_number",
        "value_as_concept_id": "e.value_as_concept_id", "unit_concept_id": "e.unit_concept_id",
        "range_low": "e.range_low", "range_high": "e.range_high", "measurement_source_value": "e.source_value",
        "measurement_source_concept_id": "e.source_concept_id", "unit_source_value": "e.unit_source_value",
        "unit_source_concept_id": "e.unit_source_concept_id", "value_source_value": "e.value_source_value",
        **_COMMON},
    "observation": {
        "observation_id": "e.row_id", "observation_concept_id": "e.concept_id", "observation_date": "e.start_date",
        "observation_datetime": "e.start_datetime", "observation_type_concept_id": "e.type_concept_id",
        "value_as_number": "e.value_as_number", "value_as_concept_id": "e.value_as_concept_id",
        "unit_concept_id": "e.unit_concept_id", "observation_source_value": "e.source_value",
        "observation_source_concept_id": "e.source_concept_id", "unit_source_value": "e.unit_source_value",
        "value_source_value": "e.value_source_value", **_COMMON},
    "procedure_occurrence": {
        "procedure_occurrence_id": "e.row_id", "procedure_concept_id": "e.concept_id",
        "procedure_date": "e.start_date", "procedure_datetime": "e.start_datetime",
        "procedure_end_date": "e.end_date", "procedure_end_datetime": "e.end_datetime",
        "procedure_type_concept_id": "e.type_concept_id", "procedure_source_value": "e.source_value",
        "procedure_source_concept_id": "e.source_concept_id", **_COMMON},
    "drug_exposure": {
        "drug_exposure_id": "e.row_id", "drug_concept_id": "e.concept_id",
        "drug_exposure_start_date": "e.start_date", "drug_exposure_start_datetime": "e.start_datetime",
        "drug_exposure_end_date": "COALESCE(e.end_date, CASE WHEN e.days_supply > 0 THEN "
                                  f"{days_after('e.start_date', 'e.days_supply')} END, e.start_date)",
        "drug_exposure_end_datetime": "COALESCE(e.end_datetime, CASE WHEN e.end_date IS NULL AND "
                                      "COALESCE(e.days_supply, 0) <= 0 THEN e.start_datetime END)",
        "verbatim_end_date": "e.end_date",
        "drug_type_concept_id": "e.type_concept_id", "stop_reason": "e.stop_reason", "refills": "e.refills",
        "quantity": "e.quantity", "days_supply": "e.days_supply", "lot_number": "e.lot_number",
        "drug_source_value": "e.source_value", "drug_source_concept_id": "e.source_concept_id",
        "route_source_value": "e.route_source_value", "dose_unit_source_value": "e.dose_unit_source_value",
        **_COMMON},
    "device_exposure": {
        "device_exposure_id": "e.row_id", "device_concept_id": "e.concept_id",
        "device_exposure_start_date": "e.start_date", "device_exposure_start_datetime": "e.start_datetime",
        "device_exposure_end_date": "e.end_date", "device_exposure_end_datetime": "e.end_datetime",
        "device_type_concept_id": "e.type_concept_id", "quantity": as_integer("e.quantity"),
        "device_source_value": "e.source_value", "device_source_concept_id": "e.source_concept_id",
        "unit_concept_id": "e.unit_concept_id", "unit_source_value": "e.unit_source_value",
        "unique_device_id": "CASE WHEN e.rule = 'fhir.device' THEN e.value_source_value END",  # UDI device id
        "production_id": "e.lot_number", **_COMMON},
    "specimen": {  # the anatomic site is the event's coded value
        "specimen_id": "e.row_id", "person_id": "e.person_id", "specimen_concept_id": "e.concept_id",
        "specimen_type_concept_id": "e.type_concept_id", "specimen_date": "e.start_date",
        "specimen_datetime": "e.start_datetime", "quantity": "e.quantity", "unit_concept_id": "e.unit_concept_id",
        "anatomic_site_concept_id": "e.value_as_concept_id", "specimen_source_value": "e.source_value",
        "unit_source_value": "e.unit_source_value", "anatomic_site_source_value": "e.value_source_value"},
}


def create_sql(name: str, columns: str) -> str:
    return f"CREATE TABLE IF NOT EXISTS {name} ({columns})"


def _null(table: str, column: str) -> str:
    f = model.load("5.4").table(table).field(column)
    return f"CAST(NULL AS {SQL_TYPES[f.kind]})"


def select_list(table: str, exprs: dict) -> str:
    """Every column of a CDM table, in order: the given expression or a typed NULL."""
    cols = model.load("5.4").table(table).field_names
    unknown = set(exprs) - set(cols)
    if unknown:
        raise ValueError(f"{table} has no column(s) {', '.join(sorted(unknown))}")
    t = model.load("5.4").table(table)

    def fit(c: str) -> str:  # PostgreSQL enforces the spec's VARCHAR lengths: cut, never fail the run
        f = t.field(c)
        return f"left(CAST({exprs[c]} AS VARCHAR), {f.length})" if f.kind == "varchar" and f.length else exprs[c]
    return ", ".join(f"{fit(c)} AS {c}" if c in exprs else f"{_null(table, c)} AS {c}" for c in cols)


# -- keys and ids ----------------------------------------------------------------------------------------------------
NS = "COALESCE(ns.namespace, s.source)"


def source_key(rule, alias: str = "s") -> str:
    return f"'{rule.name}|' || {alias}.source || '|' || ({rule.key})"


def keyed_id(kind: str, expr: str | None) -> str:
    """The id of a visit/provider/care site named by `expr` in the row's namespace (NULL when expr is)."""
    if not expr or expr == "NULL":
        return "CAST(NULL AS BIGINT)"
    return f"CASE WHEN ({expr}) IS NULL THEN NULL ELSE stable_id('{kind}|' || {NS} || '|' || ({expr})) END"


# The EMPI's persons for the sources it does not register (a pharmacy feed that sends only the hospital's MRN), filled
# once per run (tx_empi_ns): such a source takes the person the EMPI gave the same id in its namespace (the sources of
# one hospital share MRNs), as it does without the EMPI; a source the EMPI registers keeps to its own ids (a FHIR
# Patient id equal to some MRN links nothing). Sources of a namespace that disagree on an id: the lowest person.
# UNREGISTERED_IN_NAMESPACE: for each row `m` of a source, the sources of its namespace the EMPI does not register
# (as t2.source): the ones that take the EMPI's person by id here, and follow its changes (transform.run).
# EMPI_IDS: the ids the EMPI knows each person by, in its sources: their own ids and the MRNs that identities with
# another id carry (a FHIR Patient's MR identifier: `empi_alias`), so a pharmacy dispensing for a patient only the
# EMR sent has that patient's person.
UNREGISTERED_IN_NAMESPACE = ("JOIN transform_source t1 ON t1.source = m.source "
                             "JOIN transform_source t2 ON t2.namespace = t1.namespace "
                             "WHERE t2.source NOT IN (SELECT DISTINCT source FROM empi_person_map)")
EMPI_IDS = ("(SELECT source, source_id, person_id FROM empi_person_map UNION ALL SELECT a.source, a.alias AS "
            "source_id, p.person_id FROM empi_alias a JOIN empi_person_map p ON p.source = a.source AND p.source_id = "
            "a.source_id)")
EMPI_BY_NAMESPACE = ("INSERT INTO tx_empi_ns SELECT t2.source, m.source_id, min(m.person_id) FROM "
                     f"{EMPI_IDS} m {UNREGISTERED_IN_NAMESPACE} GROUP BY 1, 2")


def person_joins(rule, empi: bool) -> tuple[str, str]:
    """(joins, person_id expression) for a rule's rows."""
    pref = rule.person_ref or rule.person
    joins = (f"LEFT JOIN transform_merge mg ON mg.namespace = {NS} AND mg.prior_ref = ({pref})")
    pid = f"stable_id({NS} || '|' || COALESCE(mg.survivor_ref, ({pref})))"
    if empi:
        joins += (f"\nLEFT JOIN empi_person_map em ON em.source = s.source AND em.source_id = ({rule.person})"
                  f"\nLEFT JOIN tx_empi_ns en ON en.source = s.source AND en.source_id = ({rule.person})")
        pid = f"COALESCE(em.person_id, en.person_id, {pid})"
    return joins, f"CASE WHEN ({pref}) IS NULL THEN NULL ELSE {pid} END"


def read_sql(rule) -> str:
    """What a rule reads, as `FROM … s`: its staging table, or the query it reads instead (from_sql)."""
    return getattr(rule, "from_sql", None) or rule.staging


def latest(rule, aggregates: dict | None = None) -> str:
    """The newest version of every delta key of a rule, as CTE `s` (plus `v`, all versions)."""
    aggs = "".join(f", {a} OVER (PARTITION BY s.source, {rule.key}) AS {n}" for n, a in (aggregates or {}).items())
    return f"""WITH v AS (
    SELECT s.*, {rule.key} AS rkey, ROW_NUMBER() OVER (PARTITION BY s.source, {rule.key} ORDER BY {rule.order}) AS rn{aggs}
    FROM {read_sql(rule)} s
    JOIN tx_mark mk ON mk.source = s.source AND s.receipt_seq <= mk.receipt_seq
    WHERE {source_key(rule)} IN (SELECT source_key FROM tx_delta)
), s AS (SELECT * FROM v WHERE rn = 1)"""


def delta_sql(rule) -> str:
    """Keys of a rule's staging rows that arrived since the last run."""
    return f"""INSERT INTO tx_delta
SELECT DISTINCT '{rule.name}', {source_key(rule)}
FROM {read_sql(rule)} s
JOIN tx_mark mk ON mk.source = s.source AND s.receipt_seq <= mk.receipt_seq
LEFT JOIN transform_watermark w ON w.source = s.source
WHERE s.receipt_seq > COALESCE(w.receipt_seq, -1) AND ({rule.key}) IS NOT NULL"""


def codes_of(rule) -> list[Code]:
    if isinstance(rule, EventRule):
        return [c for c in (rule.code, rule.unit, rule.value_code) if c is not None]
    if isinstance(rule, TableRule):
        c = TABLE_KEYS.get(rule.name, {}).get("concept")
        return [c] if c else []
    return []


def needed_sql(rule, code: Code) -> str:
    return f"""INSERT INTO tx_needed
SELECT DISTINCT COALESCE({code.system}, ''), {code.code}
FROM {read_sql(rule)} s
WHERE {source_key(rule)} IN (SELECT source_key FROM tx_delta) AND ({code.code}) IS NOT NULL"""


RESOLVE_SQL = """INSERT INTO tx_code
WITH p AS (SELECT DISTINCT system, code FROM tx_needed),
v AS (SELECT p.system, p.code, COALESCE(cs.vocabulary_id, p.system) AS vocabulary_id
      FROM p LEFT JOIN medlake_code_system cs ON cs.system = p.system),
src AS (SELECT v.*, c.concept_id AS scid, c.standard_concept AS sstd
        FROM v LEFT JOIN concept c ON c.vocabulary_id = v.vocabulary_id AND c.concept_code = v.code),
m AS (SELECT src.*, cr.concept_id_2 AS mid
      FROM src LEFT JOIN concept_relationship cr ON cr.concept_id_1 = src.scid AND cr.relationship_id = 'Maps to'
           AND cr.invalid_reason IS NULL),
st AS (SELECT m.*, t.target_concept_id AS tid, t.source_concept_id AS tsid
       FROM m LEFT JOIN source_to_concept_map t ON t.source_vocabulary_id = m.vocabulary_id
            AND t.source_code = m.code AND t.invalid_reason IS NULL),
r AS (SELECT DISTINCT system, code, vocabulary_id, COALESCE(scid, NULLIF(tsid, 0), 0) AS source_concept_id,
             COALESCE(mid, CASE WHEN sstd = 'S' THEN scid END, NULLIF(tid, 0), 0) AS concept_id FROM st)
SELECT r.system, r.code, r.vocabulary_id, r.source_concept_id, r.concept_id, COALESCE(k.domain_id, ''),
       ROW_NUMBER() OVER (PARTITION BY r.system, r.code ORDER BY r.concept_id)
FROM r LEFT JOIN concept k ON k.concept_id = r.concept_id AND r.concept_id <> 0"""


def _code_join(alias: str, code: Code, first: bool) -> str:
    return (f"LEFT JOIN tx_code {alias} ON {alias}.system = COALESCE({code.system}, '') AND {alias}.code = {code.code}"
            + (f" AND {alias}.n = 1" if first else ""))


def _lineage_cols(rule, person: str) -> str:
    return (f"'{rule.name}' AS rule, s.source AS source, s.rkey AS record_key, {source_key(rule)} AS source_key, "
            f"s.landing_sha256 AS landing_sha256, s.receipt_seq AS receipt_seq, s.record_location AS record_location, "
            f"CAST({rule.message_id} AS VARCHAR) AS message_id, {person} AS person_id")


def visit_key(visit: str, visit_if: tuple, tables) -> str:
    """A rule's visit key: the first `visit_if` key whose table (or `table.column`) exists, else `visit`."""
    return next((k for t, k in visit_if if t in tables), visit)


CODINGS = "stg_fhir_coding.coding_index"  # in `tables` when the staging keeps every coding in order


def coding_needed_sql(rule) -> str:
    """Every coding of a FHIR rule's delta resources (the event picks one, see `_pick_coding`)."""
    rtype, element = rule.codings[:2]
    return f"""INSERT INTO tx_needed
SELECT DISTINCT COALESCE(k.system, ''), k.code
FROM stg_fhir_coding k
WHERE k.resource_type = '{rtype}' AND k.element = '{element}' AND k.code IS NOT NULL
  AND '{rule.name}|' || k.source || '|{rtype}/' || k.resource_id IN (SELECT source_key FROM tx_delta)"""


_CODE_COL = re.compile(r"\bs\.code(_system|_display)?\b")


def _pick_coding(rule) -> tuple[str, callable]:
    """(join, rewrite): join `bc`, the first coding of the resource that maps to a standard concept (preferred
    vocabularies first, then the order in the resource), and a rewrite of s.code/s.code_system/s.code_display to it."""
    rtype, element, *prefer = rule.codings
    rank = "CASE t.vocabulary_id " + " ".join(f"WHEN '{p}' THEN {i}" for i, p in enumerate(prefer)) + \
        f" ELSE {len(prefer)} END" if prefer else "0"
    join = f"""LEFT JOIN (
        SELECT k.source, k.receipt_seq, k.record_location, k.resource_id, k.system, k.code, k.display,
               ROW_NUMBER() OVER (PARTITION BY k.source, k.receipt_seq, k.record_location, k.resource_id
                                  ORDER BY {rank}, k.position, k.coding_index) AS pick
        FROM stg_fhir_coding k
        JOIN tx_code t ON t.system = COALESCE(k.system, '') AND t.code = k.code AND t.n = 1
        WHERE k.resource_type = '{rtype}' AND k.element = '{element}' AND t.concept_id <> 0
    ) bc ON bc.source = s.source AND bc.receipt_seq = s.receipt_seq AND bc.record_location = s.record_location
        AND bc.resource_id = s.resource_id AND bc.pick = 1"""
    col = {None: "code", "_system": "system", "_display": "display"}

    def rewrite(expr: str) -> str:
        return _CODE_COL.sub(lambda m: f"(CASE WHEN bc.code IS NULL THEN {m.group(0)} ELSE bc.{col[m.group(1)]} END)",
                             expr)
    return join, rewrite


def event_sql(rule: EventRule, empi: bool, tables: set[str] = frozenset()) -> str:
    """Insert a rule's events (newest version of each delta key, filtered) into tx_event, routed by domain."""
    pjoin, pid = person_joins(rule, empi)
    v = rule.values
    pick = []
    if rule.codings and CODINGS in tables:
        join, rewrite = _pick_coding(rule)
        pick = [join]
        rule = dataclasses.replace(rule, code=Code(rewrite(rule.code.system), rewrite(rule.code.code)),
                                   source_value=rule.source_value and rewrite(rule.source_value))
    joins = [pjoin, *pick, _code_join("c", rule.code, False)]
    unit = value = "CAST(NULL AS INTEGER)"
    unit_src = "CAST(NULL AS INTEGER)"
    if rule.unit:
        joins.append(_code_join("u", rule.unit, True))
        # the spec: no unit in the source, NULL; a unit that is not mapped, 0
        unit = (f"CASE WHEN NULLIF(CAST({rule.unit.code} AS VARCHAR), '') IS NULL THEN NULL "
                "ELSE COALESCE(u.concept_id, 0) END")
        unit_src = "u.source_concept_id"
    if rule.value_code:
        joins.append(_code_join("vc", rule.value_code, True))
        value = "vc.concept_id"
    op = v.get("operator_source")
    routed = " ".join(f"WHEN '{d}' THEN '{t}'" for d, t in DOMAIN_TABLE.items())
    table = f"CASE b.domain_id {routed} ELSE '{rule.default_table}' END" if rule.routed else f"'{rule.default_table}'"
    body = {
        "visit_occurrence_id": keyed_id("visit_occurrence", visit_key(rule.visit, rule.visit_if, tables)),
        "provider_id": keyed_id("provider", rule.provider),
        "concept_id": "COALESCE(c.concept_id, 0)", "source_concept_id": "COALESCE(c.source_concept_id, 0)",
        "domain_id": "c.domain_id",
        "code_system": f"CAST({rule.code.system} AS VARCHAR)", "code": f"CAST({rule.code.code} AS VARCHAR)",
        "source_value": f"CAST({rule.source_value or rule.code.code} AS VARCHAR)",
        "type_concept_id": f"CAST({rule.type_concept} AS INTEGER)",
        "start_date": f"CAST({rule.start} AS DATE)", "start_datetime": f"CAST({rule.start} AS TIMESTAMP)",
        "end_date": f"CAST({rule.end} AS DATE)", "end_datetime": f"CAST({rule.end} AS TIMESTAMP)",
        "value_as_concept_id": f"CASE WHEN {value} IS NULL THEN NULL ELSE {value} END",
        "unit_concept_id": unit, "unit_source_concept_id": unit_src,
        "operator_concept_id": (f"CASE {op} " + " ".join(f"WHEN '{k}' THEN {c}" for k, c in OPERATORS.items())
                                + " END") if op else "CAST(NULL AS INTEGER)",
    }
    for col, expr in v.items():
        if col != "operator_source":
            body[col] = expr
    if rule.value_code is None:
        body["value_as_concept_id"] = "CAST(NULL AS INTEGER)"
    inner = ", ".join([_lineage_cols(rule, pid)] + [f"{e} AS {k}" for k, e in body.items()])
    cols = [c for c in EVENT_COLUMNS]
    outer = []
    for c in cols:
        if c == "cdm_table":
            outer.append(f"{table}")
        elif c == "row_id":
            outer.append(f"stable_id({table} || '|{rule.name}|' || b.source || '|' || b.record_key || '|' || "
                         f"CAST(b.concept_id AS VARCHAR))")
        elif c in body or c in ("rule", "source", "record_key", "source_key", "landing_sha256", "receipt_seq",
                                 "record_location", "message_id", "person_id"):
            outer.append(f"b.{c}")
        else:
            outer.append(f"CAST(NULL AS {EVENT_COLUMNS[c]})")
    join_sql = "\n".join(joins)
    where = " AND ".join([f"({rule.where})"] + [f"({w})" for t, w in rule.where_if if t in tables])
    return f"""INSERT INTO tx_event
{latest(rule)}
SELECT {', '.join(outer)}
FROM (
    SELECT {inner}
    FROM s
    LEFT JOIN transform_source ns ON ns.source = s.source
    {join_sql}
    WHERE {where}
) AS b"""


def domain_insert_sql(table: str, detail: bool = False) -> str:
    """This run's events of one CDM table (tx_event) into it. With `detail`, only the events that fall in a stretch of
    their visit's VISIT_DETAIL, with that visit_detail_id (see `event_detail_sql`)."""
    cols = DOMAIN_COLUMNS[table]
    join = ""
    if detail:
        cols = {**cols, "visit_detail_id": "d.visit_detail_id"}
        join = f"JOIN ({event_detail_sql(table)}) d ON d.row_id = e.row_id AND d.rn = 1\n"
    return f"INSERT INTO {table}\nSELECT {select_list(table, cols)}\nFROM tx_event e\n{join}" \
           f"WHERE e.cdm_table = '{table}' AND e.person_id IS NOT NULL AND e.start_date IS NOT NULL"


# The stretch of its visit a row falls in: of those that hold its time, the latest-starting (a transfer's time
# belongs to the new unit). `in_stretch` joins a row to them as `vd`; DETAIL_ORDER puts that one first.
DETAIL_ORDER = "vd.visit_detail_start_datetime DESC, vd.visit_detail_id"


def in_stretch(alias: str, datetime_col: str = "start_datetime", date_col: str = "start_date") -> str:
    """The join condition of a row (`alias`) to the VISIT_DETAIL stretches `vd` of its visit holding its time."""
    at = f"COALESCE({alias}.{datetime_col}, CAST({alias}.{date_col} AS TIMESTAMP))"
    return (f"vd.visit_occurrence_id = {alias}.visit_occurrence_id AND vd.visit_detail_start_datetime <= {at} "
            f"AND {at} <= vd.visit_detail_end_datetime")


def event_detail_sql(table: str) -> str:
    """(row_id, visit_detail_id, rn) of this run's events of `table` that fall in a VISIT_DETAIL stretch of their
    visit; rn = 1 is the stretch they belong to (`in_stretch`)."""
    return (f"SELECT e.row_id, vd.visit_detail_id, ROW_NUMBER() OVER (PARTITION BY e.row_id ORDER BY {DETAIL_ORDER}) "
            f"AS rn FROM tx_event e JOIN visit_detail vd ON {in_stretch('e')} WHERE e.cdm_table = '{table}'")


def table_rule_sql(rule: TableRule, empi: bool, run_id: int, tables=frozenset()) -> tuple[str, str]:
    """(insert into the CDM table, insert into cdm_lineage) for an entity rule.

    A row whose id is already in the table is not inserted again (the HL7 visit and the FHIR Encounter of one stay
    share a visit id): the rule first in `rules.TABLES`, then the lowest record key, writes it (`sharing`); both
    records still get a lineage row."""
    keys = TABLE_KEYS.get(rule.name, {})
    joins = ["LEFT JOIN transform_source ns ON ns.source = s.source"]
    pid = "CAST(NULL AS BIGINT)"
    if rule.person:
        pj, pid = person_joins(rule, empi)
        joins.append(pj)
    concept = keys.get("concept")
    if concept:
        joins.append(_code_join("c", concept, True))
    row_id = f"stable_id('{rule.table}|{rule.name}|' || s.source || '|' || s.rkey)"
    subst = {"visit": keyed_id("visit_occurrence", visit_key(keys.get("visit"), keys.get("visit_if", ()), tables)),
             "provider": keyed_id("provider", keys.get("provider")),
             "care_site": keyed_id("care_site", keys.get("care_site")),
             "concept": "COALESCE(c.concept_id, 0)", "row_id": row_id}
    table = model.load("5.4").table(rule.table)
    pk = table.primary_key[0] if table.primary_key else table.field_names[0]
    exprs = {k: e.format(**subst) for k, e in rule.columns.items()}
    id_expr = rule.id.format(**subst)
    exprs[pk] = id_expr
    if "person_id" in table.field_names and rule.person:
        exprs["person_id"] = pid
    required = [f"({exprs[f.name]}) IS NOT NULL" for f in table.fields if f.required and f.name in exprs
                and f.name != pk]  # a record lacking what the CDM requires is skipped, never a failed run
    where = " AND ".join([f"({rule.where})", f"({id_expr}) IS NOT NULL", *required])
    frm = f"{latest(rule, rule.aggregates)}\nSELECT {{cols}}\nFROM s\n" + "\n".join(joins) + f"\nWHERE {where}"
    if "person_id" in table.field_names:
        frm += f" AND ({pid}) IS NOT NULL"
    cols = ", ".join(f"d.{c}" for c in table.field_names)
    insert = (f"INSERT INTO {rule.table}\n{frm.split(chr(10) + 'SELECT {cols}')[0]}\nSELECT {cols} FROM (\n"
              f"SELECT {select_list(rule.table, exprs)}, ROW_NUMBER() OVER (PARTITION BY {id_expr} "
              f"ORDER BY s.rkey, s.source) AS dup_rn\n" + frm.split("SELECT {cols}\n")[1] + f"\n) AS d\nWHERE d.dup_rn = 1 AND NOT EXISTS "
              f"(SELECT 1 FROM {rule.table} x WHERE x.{pk} = d.{pk})")
    code = (f"CAST({concept.system} AS VARCHAR), CAST({concept.code} AS VARCHAR), COALESCE(c.concept_id, 0)"
            if concept else "CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR), CAST(NULL AS INTEGER)")
    lin = (f"'{rule.table}', {id_expr}, {pid}, '{rule.name}', s.source, s.rkey, {source_key(rule)}, "
           f"s.landing_sha256, s.receipt_seq, s.record_location, CAST({rule.message_id} AS VARCHAR), {code}, "
           f"CAST({run_id} AS BIGINT)")
    lineage = "INSERT INTO cdm_lineage\n" + frm.replace("{cols}", lin)
    return insert, lineage


def sharing(rules) -> list:
    """The entity rules whose rows other records may share (an id named by a key, not the record's own), in the
    order that says which record writes a shared row: the first rule, then the lowest record key and source."""
    return [x for x in rules if x.id != "{row_id}"]


def writer_order(rules, alias: str = "l") -> str:
    """ORDER BY of lineage rows `alias` sharing a row: its writer first (see `sharing`)."""
    rank = " ".join(f"WHEN '{x.name}' THEN {i}" for i, x in enumerate(sharing(rules)))
    return f"CASE {alias}.rule {rank} END, {alias}.record_key, {alias}.source"


def lineage_from_events_sql(run_id: int) -> str:
    return ("INSERT INTO cdm_lineage SELECT cdm_table, row_id, person_id, rule, source, record_key, source_key, "
            "landing_sha256, receipt_seq, record_location, message_id, code_system, code, concept_id, "
            f"CAST({run_id} AS BIGINT) FROM tx_event WHERE person_id IS NOT NULL AND start_date IS NOT NULL")


# -- persons ---------------------------------------------------------------------------------------------------------
NO_DEMOGRAPHICS = ("SELECT CAST(NULL AS BIGINT) AS person_id, CAST(NULL AS VARCHAR) AS gender_source_value, "
                   "CAST(NULL AS INTEGER) AS year_of_birth, CAST(NULL AS INTEGER) AS month_of_birth")


def person_rows_sql(rule: PersonRule, empi: bool, touched_only: bool = True, demographics: str = NO_DEMOGRAPHICS) -> str:
    """Every record of a person rule whose person is touched, into tx_person.

    `demographics` (person_id, gender_source_value, year_of_birth, month_of_birth) fills what staging no longer
    holds once the EMPI has moved identifying values into the vault (see medlake.identity.demographics)."""
    pj, pid = person_joins(rule, empi)
    return f"""INSERT INTO tx_person
SELECT p.person_id, p.rule, p.source, p.record_key, p.source_key, p.landing_sha256, p.receipt_seq,
       p.record_location, p.message_id, p.seen_at, COALESCE(dm.gender_source_value, p.gender), p.birth, p.race,
       p.ethnicity, p.death, dm.year_of_birth, dm.month_of_birth, p.alive
FROM (
    SELECT {pid} AS person_id, '{rule.name}' AS rule, s.source AS source, {rule.key} AS record_key,
           {source_key(rule)} AS source_key, s.landing_sha256 AS landing_sha256, s.receipt_seq AS receipt_seq,
           s.record_location AS record_location, CAST({rule.message_id} AS VARCHAR) AS message_id,
           CAST({rule.when} AS TIMESTAMP) AS seen_at, CAST({rule.gender} AS VARCHAR) AS gender,
           CAST({rule.birth} AS DATE) AS birth, CAST({rule.race} AS VARCHAR) AS race,
           CAST({rule.ethnicity} AS VARCHAR) AS ethnicity, CAST({rule.death} AS TIMESTAMP) AS death,
           CAST({rule.alive} AS BOOLEAN) AS alive
    FROM {rule.staging} s
    JOIN tx_mark mk ON mk.source = s.source AND s.receipt_seq <= mk.receipt_seq
    LEFT JOIN transform_source ns ON ns.source = s.source
    {pj}
    WHERE ({rule.where}) AND ({rule.key}) IS NOT NULL
) AS p
LEFT JOIN ({demographics}) AS dm ON dm.person_id = p.person_id
WHERE p.person_id IN (SELECT person_id FROM tx_touched)"""


def person_delta_touched_sql(rule: PersonRule, empi: bool) -> str:
    pj, pid = person_joins(rule, empi)
    return f"""INSERT INTO tx_touched
SELECT DISTINCT {pid}
FROM {rule.staging} s
LEFT JOIN transform_source ns ON ns.source = s.source
{pj}
WHERE {source_key(rule)} IN (SELECT source_key FROM tx_delta)"""


def _case(expr: str, mapping: dict) -> str:
    return "CASE " + expr + " " + " ".join(f"WHEN '{k}' THEN {v}" for k, v in mapping.items()) + " ELSE 0 END"


_NEWEST = "seen_at DESC NULLS LAST, receipt_seq DESC, record_location DESC"
# A person's demographics: the newest of their records with a birth.
PERSONS = f"""(SELECT * FROM (SELECT tp.*, ROW_NUMBER() OVER (PARTITION BY person_id ORDER BY {_NEWEST}) AS rn
      FROM tx_person tp WHERE birth IS NOT NULL OR birth_year IS NOT NULL) AS p
  WHERE rn = 1)"""


def person_insert_sql(gender: dict, race: dict, ethnicity: dict) -> str:
    """PERSON from each person's newest record with a birth. Of the birth date the CDM keeps the year and month
    (what `identity.demographics` keeps once the EMPI moved the date into the vault): the day stays out (NULL), also
    from a birth date staging still holds (a transform before `empi run`, or a site without the EMPI)."""
    exprs = {
        "person_id": "p.person_id", "gender_concept_id": _case("p.gender", gender),
        "year_of_birth": "COALESCE(CAST(EXTRACT(year FROM p.birth) AS INTEGER), p.birth_year)",
        "month_of_birth": "COALESCE(CAST(EXTRACT(month FROM p.birth) AS INTEGER), p.birth_month)",
        "race_concept_id": _case("p.race", race), "ethnicity_concept_id": _case("p.ethnicity", ethnicity),
        "gender_source_value": "left(p.gender, 50)", "gender_source_concept_id": "0",
        "race_source_value": "left(p.race, 50)", "race_source_concept_id": "0",
        "ethnicity_source_value": "left(p.ethnicity, 50)", "ethnicity_source_concept_id": "0",
    }
    return f"""INSERT INTO person
SELECT {select_list('person', exprs)}
FROM {PERSONS} AS p"""


# A person's death: of each source record (a patient id of a source, a FHIR Patient), its latest word on death
# (a time of death, or that the person is not dead: HL7 PID-30 'N', a FHIR Patient version that is not deceased);
# of the records whose latest word is a death, the newest. A death its own record takes back is gone; another
# record that says nothing of it, or an older word, does not take it back.
DEATHS = f"""(SELECT * FROM (SELECT tp.*, ROW_NUMBER() OVER (PARTITION BY person_id ORDER BY {_NEWEST}) AS rn
      FROM (SELECT tp.*, ROW_NUMBER() OVER (PARTITION BY person_id, source, record_key ORDER BY {_NEWEST}) AS said
            FROM tx_person tp WHERE death IS NOT NULL OR alive) AS tp
      WHERE said = 1 AND death IS NOT NULL) AS p
  WHERE rn = 1)"""

DEATH_SQL = f"""INSERT INTO death
SELECT {select_list('death', {"person_id": "p.person_id", "death_date": "CAST(p.death AS DATE)",
                              "death_datetime": "p.death", "death_type_concept_id": "32817",
                              })}
FROM {DEATHS} AS p"""


def person_lineage_sql(table: str, run_id: int) -> str:
    return f"""INSERT INTO cdm_lineage
SELECT '{table}', p.person_id, p.person_id, p.rule, p.source, p.record_key, p.source_key, p.landing_sha256,
       p.receipt_seq, p.record_location, p.message_id, CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR),
       CAST(NULL AS INTEGER), CAST({run_id} AS BIGINT)
FROM {DEATHS if table == "death" else PERSONS} AS p"""
