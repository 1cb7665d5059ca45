"""Derived CDM tables: OBSERVATION_PERIOD, CONDITION_ERA, DRUG_ERA, DOSE_ERA — SQL written once, every engine.

Era logic is the standard OHDSI one: events of the same person and concept whose start falls within the
persistence window (30 days) after the end of the era so far join that era. Drug eras roll drug exposures up to
their ingredients through CONCEPT_ANCESTOR. Dose eras do the same per ingredient *and* daily dose (value and unit),
the dose coming from DRUG_STRENGTH (see `dose_era_sql`). Ids are `stable_id(...)` of the era's natural key, so the
same data gives the same ids on every engine and every rerun.

Incremental: with `persons` (a table holding `person_id`s), only those persons' rows are deleted and rebuilt.
"""
from __future__ import annotations

from typing import NamedTuple

from medlake.cdm import model
from medlake.transform import compile as c
from medlake.transform import rules as r

PERSISTENCE_DAYS = 30
EHR_PERIOD_TYPE = 32817  # EHR: the standard type concept (Obs Period Type 44814724 is no longer standard)


def _era_sql(events: str, era_table: str, tail: str = "n", keys: tuple[str, ...] = (), head: str = "",
             id_keys: tuple[str, ...] = ()) -> str:
    """Collapse `events` (person_id, concept_id, [keys…], start_date, end_date) into eras.

    `tail` lists the columns after the dates: the event count `n`, and for drug eras the gap days
    (days inside the era not covered by an exposure). `keys` are further columns an era is made per (a dose era:
    unit and dose), `head` the columns written between concept and dates, `id_keys` expressions added to the id.
    The running sum follows the order `marked` numbered (`seq`): events that tie on their dates (one drug recorded
    by two feeds) could otherwise sort one way for `prev_end` and the other for the sum, and split one era in two."""
    part = ", ".join(("person_id", "concept_id", *keys))
    w = f"PARTITION BY {part} ORDER BY start_date, end_date"
    ids = "".join(f" || '|' || CAST({k} AS VARCHAR)" for k in id_keys)
    return f"""
INSERT INTO {era_table}
WITH ev AS ({events}),
marked AS (
    SELECT *, MAX(end_date) OVER ({w} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end,
           ROW_NUMBER() OVER ({w}) AS seq
    FROM ev
),
grouped AS (
    SELECT *, SUM(CASE WHEN prev_end IS NULL OR start_date > prev_end + {PERSISTENCE_DAYS} THEN 1 ELSE 0 END)
              OVER (PARTITION BY {part} ORDER BY seq ROWS UNBOUNDED PRECEDING) AS grp
    FROM marked
),
eras AS (
    SELECT {part}, MIN(start_date) AS era_start, MAX(end_date) AS era_end, COUNT(*) AS n,
           SUM(date_diff('day', start_date, end_date)) AS exposed_days
    FROM grouped GROUP BY {part}, grp
)
SELECT stable_id('{era_table}|' || CAST(person_id AS VARCHAR) || '|' || CAST(concept_id AS VARCHAR){ids} || '|'
                 || CAST(era_start AS VARCHAR)),
       person_id, concept_id, {head}era_start, era_end{", " + tail if tail else ""}
FROM eras
"""


def _person_filter(alias: str, persons: str | None) -> str:
    return f" AND {alias}.person_id IN (SELECT person_id FROM {persons})" if persons else ""


def condition_era_sql(persons: str | None = None) -> str:
    events = f"""
        SELECT c.person_id, c.condition_concept_id AS concept_id, c.condition_start_date AS start_date,
               COALESCE(c.condition_end_date, {r.days_after('c.condition_start_date', '1')}) AS end_date
        FROM condition_occurrence c
        WHERE c.condition_concept_id <> 0{_person_filter('c', persons)}"""
    return _era_sql(events, "condition_era")


# A drug exposure's end (its own, else start + days supply, else the next day) and its ingredients (RxNorm)
_DRUG_END = f"""COALESCE(d.drug_exposure_end_date,
                        CASE WHEN d.days_supply > 0 THEN {r.days_after('d.drug_exposure_start_date', 'd.days_supply')} END,
                        {r.days_after('d.drug_exposure_start_date', '1')})"""
_INGREDIENTS = """JOIN concept_ancestor ca ON ca.descendant_concept_id = d.drug_concept_id
        JOIN concept c ON c.concept_id = ca.ancestor_concept_id"""
_IS_INGREDIENT = "c.concept_class_id = 'Ingredient' AND c.vocabulary_id IN ('RxNorm', 'RxNorm Extension')"


def drug_era_sql(persons: str | None = None) -> str:
    events = f"""
        SELECT d.person_id, ca.ancestor_concept_id AS concept_id, d.drug_exposure_start_date AS start_date,
               {_DRUG_END} AS end_date
        FROM drug_exposure d
        {_INGREDIENTS}
        WHERE {_IS_INGREDIENT}
          AND d.drug_concept_id <> 0{_person_filter('d', persons)}"""
    return _era_sql(events, "drug_era", "n, GREATEST(date_diff('day', era_start, era_end) - exposed_days, 0)")


# The daily dose of one ingredient in one exposure, from DRUG_STRENGTH (OMOP "drug_dose" conventions):
# - a fixed amount per unit (tablet, capsule: amount_value) → amount × quantity ÷ days, unit amount_unit;
# - a concentration (numerator per denominator: liquids, injections) → numerator ÷ denominator × quantity ÷ days
#   (a NULL denominator means the quantity is already in denominator units: numerator × quantity ÷ days),
#   unit numerator_unit.
# days = days_supply, else the exposure's length in days (at least 1). An exposure without quantity, or whose drug
# has no DRUG_STRENGTH row for the ingredient, has no known dose and gets no dose era (its drug era still counts it).
# The dose is rounded to 6 decimals (a DECIMAL cast) so that every engine groups the same exposures together.
_DAILY_DOSE = """CAST(CAST(CASE WHEN ds.amount_value IS NOT NULL THEN ds.amount_value
                  WHEN ds.denominator_value IS NOT NULL AND ds.denominator_value > 0
                       THEN ds.numerator_value / ds.denominator_value
                  ELSE ds.numerator_value END
             * d.quantity / COALESCE(NULLIF(d.days_supply, 0),
                                     GREATEST(date_diff('day', d.drug_exposure_start_date,
                                                        COALESCE(d.drug_exposure_end_date,
                                                                 d.drug_exposure_start_date)), 1))
             AS DECIMAL(18, 6)) AS DOUBLE)"""


def dose_era_sql(persons: str | None = None) -> str:
    """DOSE_ERA: per person, ingredient, unit and daily dose, OHDSI eras with the 30-day persistence window."""
    events = f"""
        SELECT person_id, concept_id, unit_concept_id, dose_value, start_date, end_date FROM (
        SELECT d.person_id, ca.ancestor_concept_id AS concept_id,
               CAST(COALESCE(ds.amount_unit_concept_id, ds.numerator_unit_concept_id) AS INTEGER) AS unit_concept_id,
               {_DAILY_DOSE} AS dose_value,
               d.drug_exposure_start_date AS start_date, {_DRUG_END} AS end_date
        FROM drug_exposure d
        {_INGREDIENTS}
        JOIN drug_strength ds ON ds.drug_concept_id = d.drug_concept_id
             AND ds.ingredient_concept_id = ca.ancestor_concept_id AND ds.invalid_reason IS NULL
        WHERE {_IS_INGREDIENT}
          AND d.drug_concept_id <> 0 AND d.quantity > 0{_person_filter('d', persons)}
        ) AS x WHERE dose_value > 0 AND unit_concept_id IS NOT NULL"""
    return _era_sql(events, "dose_era", tail="", keys=("unit_concept_id", "dose_value"),
                    head="unit_concept_id, dose_value, ",
                    id_keys=("unit_concept_id", "CAST(ROUND(dose_value * 1000000) AS BIGINT)"))


def observation_period_sql(persons: str | None = None) -> str:
    """One period per person from the earliest to the latest clinical event (visits, conditions, drugs,
    procedures, measurements, observations, devices, death), ending at death at the latest (a supply that runs
    past the death date does not extend the time the person was observed)."""
    parts = [
        ("visit_occurrence", "visit_start_date", "COALESCE(visit_end_date, visit_start_date)"),
        ("condition_occurrence", "condition_start_date", "COALESCE(condition_end_date, condition_start_date)"),
        ("drug_exposure", "drug_exposure_start_date", "COALESCE(drug_exposure_end_date, drug_exposure_start_date)"),
        ("procedure_occurrence", "procedure_date", "procedure_date"),
        ("measurement", "measurement_date", "measurement_date"),
        ("observation", "observation_date", "observation_date"),
        ("device_exposure", "device_exposure_start_date",
         "COALESCE(device_exposure_end_date, device_exposure_start_date)"),
        ("death", "death_date", "death_date"),
    ]
    flt = f" WHERE person_id IN (SELECT person_id FROM {persons})" if persons else ""
    union = "\n        UNION ALL\n".join(f"        SELECT person_id, {s} AS s, {e} AS e FROM {t}{flt}"
                                      for t, s, e in parts)
    return f"""
INSERT INTO observation_period
SELECT stable_id('observation_period|' || CAST(ev.person_id AS VARCHAR)), ev.person_id, MIN(ev.s),
       CASE WHEN MAX(dd.death_date) >= MIN(ev.s) AND MAX(ev.e) > MAX(dd.death_date) THEN MAX(dd.death_date)
            ELSE MAX(ev.e) END,
       {EHR_PERIOD_TYPE}
FROM (
{union}
) AS ev
LEFT JOIN death dd ON dd.person_id = ev.person_id
GROUP BY ev.person_id
"""


# -- VISIT_DETAIL: where in the hospital a stay took place, one row per stretch in one unit -------------------------
_HL7_ADT = ("s.message_type LIKE 'ADT%' AND COALESCE(s.event_type, '') NOT IN ('A11', 'A12', 'A13', 'A27', 'A38')")
_FHIR_ENC = "COALESCE(s.status, 'finished') NOT IN ('entered-in-error', 'cancelled', 'planned')"
_WINDOW = ("JOIN tx_mark mk ON mk.source = s.source AND s.receipt_seq <= mk.receipt_seq\n"
           "    LEFT JOIN transform_source ns ON ns.source = s.source")
# the columns every stretch carries into the common tail (HL7 and FHIR parts select them in this order)
_STRETCH = ("grp", "id_key", "visit_occurrence_id", "concept_id", "provider_id", "care_site_id",
            "source_value", "d_start", "d_end", "v_end", "o2", "o3", "rule", "source", "record_key", "source_key",
            "landing_sha256", "receipt_seq", "record_location", "message_id")


STAY_CLASSES = ("I", "E")  # PV1-2 patient classes whose units make details (an outpatient visit has one place)


VISITS = "SELECT visit_occurrence_id FROM tx_detail_visit"  # the visits whose details a run rebuilds (`rebuild`)


def _rows(table: str, key: str, persons: str) -> str:
    """The `key`s of the rows of `table` a rebuild for `persons` reads again: the persons' and their visits' (two
    lookups, not an OR of two sets, which PostgreSQL runs as a scan of the table)."""
    return (f"SELECT {key} FROM {table} WHERE person_id IN (SELECT person_id FROM {persons}) UNION "
            f"SELECT {key} FROM {table} WHERE visit_occurrence_id IN ({VISITS})")


def _hl7_stretches(persons: str | None) -> str:
    """HL7 ADT of inpatient and emergency visits: the unit (PV1-3.1 point of care) of each message of a visit, in
    time order; a message in another unit than the one before starts a stretch (A01 admit at the admit time, A02
    transfer at the event time). An A12 cancels the transfer (A02) before it: both are left out. The stay ends at
    the visit's discharge, as hl7.visit's (`rules.hl7_discharge`: the newest message's, none after an A13). Every
    message of the visit counts, whichever patient it names (the stretches are the visit's, see `visit_detail_sql`)."""
    visit = c.keyed_id("visit_occurrence", "s.visit_number")
    flt = f" AND {visit} IN ({VISITS})" if persons else ""
    order = "COALESCE(s.event_time, s.admit_time), s.receipt_seq, s.record_location"
    stay = "PARTITION BY s.source, s.visit_number"
    return f"""
    SELECT s.source || '|' || s.visit_number, s.ns || '|' || s.visit_number || '|' || s.point_of_care || '|'
               || CAST(s.d_start AS VARCHAR),
           s.visit_occurrence_id, s.concept_id, s.provider_id, s.care_site_id,
           left(s.point_of_care, 50), s.d_start, CAST(NULL AS TIMESTAMP), s.v_end, s.receipt_seq, s.record_location,
           'hl7.visit_detail', s.source, 'visit|' || s.visit_number, 'hl7.visit|' || s.source || '|visit|' ||
           s.visit_number, s.landing_sha256, s.receipt_seq, s.record_location, s.control_id
    FROM (
        SELECT s.*,
               {visit} AS visit_occurrence_id,
               {c.keyed_id("provider", "s.attending_doctor_id")} AS provider_id,
               {c.keyed_id("care_site", "s.point_of_care")} AS care_site_id,
               COALESCE({r.case("s.patient_class", r.HL7_VISIT)}, 0) AS concept_id,
               CASE WHEN LAG(s.point_of_care) OVER ({stay} ORDER BY {order}) IS NULL
                    THEN COALESCE(s.admit_time, s.event_time) ELSE s.event_time END AS d_start,
               LAG(s.point_of_care) OVER ({stay} ORDER BY {order}) AS prev_unit,
               {r.hl7_discharge(f"FIRST_VALUE(s.discharge_time) OVER ({stay} ORDER BY {r.HL7_ORDER})",
                                f"MAX(s.discharge_time) OVER ({stay})")} AS v_end
        FROM (
            SELECT s.*, {c.NS} AS ns,
                   LEAD(s.event_type) OVER ({stay},
                                            CASE WHEN s.event_type IN ('A02', 'A12') THEN 1 ELSE 0 END
                                            ORDER BY {order}) AS next_move,
                   {", ".join(f"{a} OVER ({stay}) AS {n}"
                              for n, a in r.DISCHARGE_CANCELS.items())}
            FROM stg_hl7_visit s
            {_WINDOW}
            WHERE ({_HL7_ADT} OR s.event_type IN ('A12', 'A13')) AND s.visit_number IS NOT NULL
              AND s.point_of_care IS NOT NULL AND s.patient_class IN ({", ".join(f"'{k}'" for k in STAY_CLASSES)}){flt}
        ) AS s
        LEFT JOIN transform_source ns ON ns.source = s.source
        WHERE COALESCE(s.event_type, '') NOT IN ('A12', 'A13')
          AND NOT (s.event_type = 'A02' AND COALESCE(s.next_move, '') = 'A12')
    ) AS s
    WHERE s.prev_unit IS NULL OR s.prev_unit <> s.point_of_care"""


def _fhir_stretches(persons: str | None) -> str:
    """FHIR: every Encounter.location[] entry (not `planned`) of the newest version of an Encounter, with its
    period (else the Encounter's), under the Encounter's visit (its visit number, as for VISIT_OCCURRENCE)."""
    visit = c.keyed_id("visit_occurrence", "COALESCE(s.identifier_value, 'Encounter/' || s.resource_id)")
    flt = f" AND {visit} IN ({VISITS})" if persons else ""
    loc = r.fhir_ref("s.l_ref", "Location")
    return f"""
    SELECT s.source || '|Encounter/' || s.resource_id, s.ns || '|Encounter/' || s.resource_id || '|'
               || CAST(s.position AS VARCHAR),
           s.visit_occurrence_id, s.concept_id, CAST(NULL AS BIGINT), s.care_site_id,
           left({r.ref_id("s.l_ref", "Location")}, 50), s.d_start, s.l_end, s.period_end,
           CAST(s.position AS BIGINT), s.record_location,
           'fhir.encounter_location', s.source, 'Encounter/' || s.resource_id, 'fhir.encounter|' || s.source ||
           '|Encounter/' || s.resource_id, s.landing_sha256, s.receipt_seq, s.record_location,
           'Encounter/' || s.resource_id
    FROM (
        SELECT s.*, {c.NS} AS ns, {visit} AS visit_occurrence_id,
               {c.keyed_id("care_site", loc)} AS care_site_id,
               COALESCE({r.case("s.class_code", r.FHIR_VISIT)}, 0) AS concept_id
        FROM (
            SELECT e.*, l.position, l.location_ref AS l_ref, l.status AS location_status, l.period_end AS l_end,
                   COALESCE(l.period_start, e.period_start) AS d_start
            FROM (SELECT s.*, ROW_NUMBER() OVER (PARTITION BY s.source, s.resource_id ORDER BY s.last_updated DESC
                                                 NULLS LAST, s.receipt_seq DESC, s.record_location DESC) AS rn
                  FROM stg_fhir_encounter s JOIN tx_mark mk ON mk.source = s.source
                       AND s.receipt_seq <= mk.receipt_seq
                  WHERE EXISTS (SELECT 1 FROM stg_fhir_encounter_location l0 WHERE l0.source = s.source
                                AND l0.resource_id = s.resource_id)) AS e  -- (versions of Encounters with units)
            JOIN stg_fhir_encounter_location l ON l.source = e.source AND l.receipt_seq = e.receipt_seq
                 AND l.record_location = e.record_location AND l.resource_id = e.resource_id
            WHERE e.rn = 1
        ) AS s
        LEFT JOIN transform_source ns ON ns.source = s.source
        WHERE {_FHIR_ENC} AND COALESCE(s.location_status, 'completed') <> 'planned'
          AND s.l_ref IS NOT NULL{flt}
    ) AS s"""


DETAILS = "tx_detail"  # the work table of the details a rebuild computes, read by its insert and lineage


class DetailSteps(NamedTuple):
    """The VISIT_DETAIL statements of a rebuild, in the order they run."""
    delete_lineage: str
    delete_rows: str
    details: str   # a query: the work table DETAILS
    insert: str    # into VISIT_DETAIL, from DETAILS
    lineage: str   # into cdm_lineage, from DETAILS


def visit_detail_sql(parts: list[str], run_id: int) -> tuple[str, str, str]:
    """(the details, as a query; insert into VISIT_DETAIL and into cdm_lineage from them, read as DETAILS) from
    the stretches of `parts` (HL7 and/or FHIR): the stretches are computed once, for both.

    A stretch ends where the next one of its visit starts, else at its own end (FHIR period), else at the visit's
    discharge, else where it started. An HL7 stay's stretches lie within its visit: the first starts when the visit
    does (the newest message's admit time: an A08 that corrects it, a re-admission after an A11, moves both), a
    stretch over by then is left out (the units of the cancelled admission, a transfer before the corrected admit
    time), and none runs past the discharge (a unit first named by the discharge message is a stretch of no length
    at the discharge: the patient left from there, when they moved there is unknown). Ids are stable_id of (namespace,
    visit, unit, first message's start) for HL7 — so a corrected admit time updates the row — and (namespace,
    Encounter, location entry) for FHIR; preceding_visit_detail_id links the stretches of a stay. A stay one FHIR
    Encounter with locations and HL7 messages both describe has the Encounter's stretches only (FHIR before HL7, as
    for the VISIT_OCCURRENCE row they share): one set of details per visit, not two. Only stretches
    whose VISIT_OCCURRENCE exists are written, with its person: the stay's messages may name several patients (a
    PID error, a merge not yet received); the stretches and whose they are do not depend on which of them a run
    touches, so a CDM loaded in batches has the details it has loaded at once."""
    union = "\n    UNION ALL".join(parts)
    cols = ", ".join(_STRETCH)
    stay = "PARTITION BY grp ORDER BY d_start, o2, o3"  # a stay's stretches in order
    cut = "rule = 'hl7.visit_detail' AND v_end >= COALESCE(v_start, d_first)"  # an HL7 stay ends at its discharge
    tail = f"""WITH seg ({cols}) AS ({union}
), t AS (
    SELECT seg.*, vo.person_id, vo.visit_start_datetime AS v_start, stable_id('visit_detail|' || id_key) AS id,
           LEAD(d_start) OVER ({stay}) AS next_start,
           MAX(CASE WHEN rule = 'fhir.encounter_location' THEN 1 ELSE 0 END)
               OVER (PARTITION BY seg.visit_occurrence_id) AS fhir_units
    FROM seg JOIN visit_occurrence vo ON vo.visit_occurrence_id = seg.visit_occurrence_id
    WHERE d_start IS NOT NULL
), k AS (
    SELECT t.* FROM t
    WHERE rule <> 'hl7.visit_detail' OR (fhir_units = 0 AND COALESCE(d_start >= v_start OR next_start > v_start, TRUE))
), u AS (
    SELECT k.*, LAG(id) OVER ({stay}) AS prev_id,
           CASE WHEN rule = 'hl7.visit_detail' AND LAG(id) OVER ({stay}) IS NULL THEN COALESCE(v_start, d_start)
                ELSE d_start END AS d_first,
           COALESCE(d_end, next_start, v_end, d_start) AS end0
    FROM k
), d AS (
    SELECT u.*, CASE WHEN {cut} AND d_first > v_end THEN v_end ELSE d_first END AS d_begin,
           CASE WHEN {cut} AND (end0 > v_end OR d_first > v_end) THEN v_end
                WHEN end0 < d_first THEN d_first ELSE end0 END AS d_stop,
           ROW_NUMBER() OVER (PARTITION BY id ORDER BY source, record_location) AS dup
    FROM u
)"""
    exprs = {"visit_detail_id": "d.id", "person_id": "d.person_id", "visit_detail_concept_id": "d.concept_id",
             "visit_detail_start_date": "CAST(d.d_begin AS DATE)", "visit_detail_start_datetime": "d.d_begin",
             "visit_detail_end_date": "CAST(d.d_stop AS DATE)", "visit_detail_end_datetime": "d.d_stop",
             "visit_detail_type_concept_id": str(r.EHR), "provider_id": "d.provider_id",
             "care_site_id": "d.care_site_id", "visit_detail_source_value": "d.source_value",
             "visit_detail_source_concept_id": "0", "preceding_visit_detail_id": "d.prev_id",
             "visit_occurrence_id": "d.visit_occurrence_id"}
    insert = f"INSERT INTO visit_detail SELECT {c.select_list('visit_detail', exprs)} FROM {DETAILS} d"
    lineage = ("INSERT INTO cdm_lineage SELECT 'visit_detail', d.id, d.person_id, d.rule, d.source, "
               "d.record_key, d.source_key, d.landing_sha256, d.receipt_seq, d.record_location, d.message_id, "
               f"CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR), CAST(NULL AS INTEGER), CAST({run_id} AS BIGINT) "
               f"FROM {DETAILS} d")
    return f"{tail}\nSELECT * FROM d WHERE d.dup = 1", insert, lineage


def _visit_detail_steps(engine, persons: str | None, run_id: int | None) -> tuple[DetailSteps | None, int]:
    """The VISIT_DETAIL statements for this store: delete the lineage and the rows rebuilt (the persons' and their
    visits'), the details, insert, lineage; None when nothing stages visits or no run has set up. And the id of the
    run the lineage names: `run_id` (the calling run's), else the last run's (a rebuild outside a run reads that
    run's window, `tx_mark`)."""
    tables = set(engine.tables())
    if not {"tx_mark", "transform_source", "cdm_lineage"} <= tables:
        return None, 0
    parts = []
    if "stg_hl7_visit" in tables:
        parts.append(_hl7_stretches(persons))
    if {"stg_fhir_encounter", "stg_fhir_encounter_location"} <= tables:
        parts.append(_fhir_stretches(persons))
    if not parts:
        return None, 0
    if run_id is None:
        run_id = engine.query("SELECT COALESCE(MAX(run_id), 0) AS n FROM transform_run").column(0)[0].as_py() \
            if "transform_run" in tables else 0
    details = visit_detail_sql(parts, run_id)
    if not persons:
        return DetailSteps("DELETE FROM cdm_lineage WHERE cdm_table = 'visit_detail'", "DELETE FROM visit_detail",
                           *details), run_id
    rows = _rows("visit_detail", "visit_detail_id", persons)  # (a detail's lineage rows are its persons')
    return DetailSteps(f"DELETE FROM cdm_lineage WHERE cdm_table = 'visit_detail' AND row_id IN ({rows})",
                       f"DELETE FROM visit_detail WHERE visit_detail_id IN ({rows})", *details), run_id


def work(engine, sql: str, name: str) -> None:
    """A temporary work table holding the rows of `sql` (the transform's one way to make one)."""
    engine.execute(f"DROP TABLE IF EXISTS {name}")
    engine.execute(f"CREATE TEMP TABLE {name} AS {sql}")
    engine.analyze(name)  # temporary tables get no statistics otherwise


def _relink_earlier(engine, persons: str) -> None:
    """The touched persons' events of earlier runs, and those of the visits whose details were rebuilt (`VISITS`:
    an event may name another patient), look their visit_detail_id up again in the VISIT_DETAIL just rebuilt — a
    transfer that arrives after the results of the stay, a stretch that moved — so a CDM loaded in batches is the
    CDM loaded at once. Only rows whose id changes are written again (same ids, same lineage)."""
    for table in sorted(set(c.DOMAIN_COLUMNS) & set(engine.tables())):
        t = model.load("5.4").table(table)
        if "visit_detail_id" not in t.field_names:
            continue
        col = {v: k for k, v in c.DOMAIN_COLUMNS[table].items()}  # the table's columns of the event's start
        pk = t.primary_key[0]
        work(engine, f"""SELECT x.* FROM (
    SELECT t.*, vd.visit_detail_id AS new_detail_id,
           ROW_NUMBER() OVER (PARTITION BY t.{pk} ORDER BY {c.DETAIL_ORDER}) AS detail_rn
    FROM {table} t
    LEFT JOIN visit_detail vd ON {c.in_stretch('t', col['e.start_datetime'], col['e.start_date'])}
    WHERE t.{pk} IN ({_rows(table, pk, persons)})
      AND (t.visit_detail_id IS NOT NULL OR t.visit_occurrence_id IN (SELECT visit_occurrence_id FROM visit_detail))
      AND t.{pk} NOT IN (SELECT row_id FROM tx_event WHERE cdm_table = '{table}')
) AS x
WHERE x.detail_rn = 1 AND x.visit_detail_id IS DISTINCT FROM x.new_detail_id""", "tx_relink")
        _write_again(engine, table, "tx_relink", "visit_detail_id", "new_detail_id")


def _write_again(engine, table: str, rows: str, field: str, new: str) -> None:
    """Write again the rows of `table` held in work table `rows` (its columns, and `new`: the value `field` takes),
    with their ids (their lineage stays): delete, insert from the work table, drop it."""
    t = model.load("5.4").table(table)
    pk = t.primary_key[0]
    if engine.query(f"SELECT count(*) AS n FROM {rows}").column(0)[0].as_py():
        engine.execute(f"DELETE FROM {table} WHERE {pk} IN (SELECT {pk} FROM {rows})")
        cols = ", ".join(new if f == field else f for f in t.field_names)
        engine.execute(f"INSERT INTO {table} SELECT {cols} FROM {rows}")
    engine.execute(f"DROP TABLE {rows}")


# A drug exposure's end that medlake inferred from its days supply (the source gave none: verbatim_end_date NULL)
_INFERRED_END = r.days_after("d.drug_exposure_start_date", "d.days_supply")


def _end_at_death(engine, persons: str | None) -> None:
    """A drug exposure whose end medlake inferred from its days supply ends at the person's death at the latest: a
    90-day supply dispensed a month before death did not expose the person after it (the drug era and DQD's
    `plausibleBeforeDeath` read this end). A death recorded in a later run shortens the exposures of earlier runs;
    a death taken back gives them their inferred end again. The source's own end (verbatim_end_date), its days
    supply, and an exposure that starts after the death (a defect the checks should see) stay as they are. Only
    rows whose end changes are written again (same ids, same lineage)."""
    if "death" not in engine.tables():
        return
    end = (f"CASE WHEN dd.death_date >= d.drug_exposure_start_date AND {_INFERRED_END} > dd.death_date "
           f"THEN dd.death_date ELSE {_INFERRED_END} END")
    work(engine, f"""SELECT d.*, {end} AS new_end
FROM drug_exposure d
LEFT JOIN (SELECT person_id, min(death_date) AS death_date FROM death GROUP BY person_id) AS dd
       ON dd.person_id = d.person_id
WHERE d.verbatim_end_date IS NULL AND d.days_supply > 0 AND d.drug_exposure_end_date <= {_INFERRED_END}
  AND d.drug_exposure_end_date IS DISTINCT FROM ({end}){_person_filter('d', persons)}""", "tx_drug_end")
    _write_again(engine, "drug_exposure", "tx_drug_end", "drug_exposure_end_date", "new_end")


def _link_events(engine) -> None:
    """This run's events (tx_event) that fall in a stretch of their visit get its visit_detail_id: their rows are
    written again with it (same ids, same lineage). Earlier runs' events: `_relink_earlier`."""
    # rewrite only the tables that have such events (a DELETE is a file rewrite on Spark)
    linked = {x["cdm_table"] for x in engine.query(
        f"SELECT DISTINCT e.cdm_table FROM tx_event e JOIN visit_detail vd ON {c.in_stretch('e')}").to_pylist()}
    for table in sorted(linked & set(c.DOMAIN_COLUMNS)):
        if "visit_detail_id" not in model.load("5.4").table(table).field_names:
            continue
        pk = model.load("5.4").table(table).primary_key[0]
        engine.execute(f"DELETE FROM {table} WHERE {pk} IN (SELECT d.row_id FROM ({c.event_detail_sql(table)}) AS d "
                       "WHERE d.rn = 1)")
        engine.execute(c.domain_insert_sql(table, detail=True))


# the tables computed from each person's events: no row of theirs has a source record (nor lineage) of its own
FROM_EVENTS = {"observation_period": observation_period_sql, "condition_era": condition_era_sql,
               "drug_era": drug_era_sql, "dose_era": dose_era_sql}


def rebuild(engine, persons: str | None = None, lookups: bool = False, run_id: int | None = None) -> dict[str, int]:
    """Recompute the derived tables (for all persons, or only those listed in table `persons`), atomically.
    `lookups`: the persons are few, their rows are found through indexes (`Engine.plan`); VISIT_DETAIL, rebuilt
    from staging, joins whole tables either way.

    VISIT_DETAIL is rebuilt from staging (HL7 ADT units, FHIR Encounter.location) in the window of a transform run
    (`tx_mark`), its lineage under `run_id` (the calling run's; else the last run's); without staging it is left
    alone."""
    flt = f" WHERE person_id IN (SELECT person_id FROM {persons})" if persons else ""
    detail, run_id = _visit_detail_steps(engine, persons, run_id)
    steps = [(table, sql(persons)) for table, sql in FROM_EVENTS.items()]
    counts = {}
    with engine.transaction():
        if detail:
            engine.plan(bulk=not lookups)
            if persons:  # the persons' visits, and the visits this run's records name (a shared visit row may
                #          be another person's: a stay and an Encounter whose patients differ)
                work(engine, "SELECT visit_occurrence_id FROM visit_occurrence WHERE person_id IN (SELECT person_id "
                             f"FROM {persons}) UNION SELECT row_id FROM cdm_lineage WHERE run_id = {run_id} "
                             "AND cdm_table = 'visit_occurrence'", "tx_detail_visit")
            engine.execute(detail.delete_lineage)
            engine.execute(detail.delete_rows)
            engine.plan(bulk=True)
            work(engine, detail.details, DETAILS)
            engine.execute(detail.insert)
        engine.plan(bulk=not lookups)
        _end_at_death(engine, persons)  # (before the eras, which read the end)
        for table, sql in steps:
            engine.plan(bulk=not lookups)
            engine.execute(f"DELETE FROM {table}{flt}")
            engine.execute(sql)
        engine.plan(bulk=True)
        if detail:
            engine.execute(detail.lineage)
            engine.execute(f"DROP TABLE {DETAILS}")
            if persons and "tx_event" in engine.tables():
                _link_events(engine)
                _relink_earlier(engine, persons)
    for table in ["visit_detail"] * bool(detail) + [t for t, _ in steps]:
        counts[table] = engine.query(f"SELECT count(*) AS n FROM {table}").column(0)[0].as_py()
    return counts
