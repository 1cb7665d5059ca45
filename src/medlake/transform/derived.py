"""Derived CDM tables: OBSERVATION_PERIOD, CONDITION_ERA, DRUG_ERA, DOSE_ERA — SQL written once, every engine.

Era logic is the standard OHDSI one: events of the same person and concept whose start falls within the
persistence window (30 days) after the end of the era so far join that era. Drug eras roll drug exposures up to
their ingredients through CONCEPT_ANCESTOR. Dose eras do the same per ingredient *and* daily dose (value and unit),
the dose coming from DRUG_STRENGTH (see `dose_era_sql`). Ids are `stable_id(...)` of the era's natural key, so the
same data gives the same ids on every engine and every rerun.

Incremental: with `persons` (a table holding `person_id`s), only those persons' rows are deleted and rebuilt.
"""
from __future__ import annotations

PERSISTENCE_DAYS = 30
EHR_PERIOD_TYPE = 44814724  # Period covering healthcare encounters


def _era_sql(events: str, era_table: str, tail: str = "n", keys: tuple[str, ...] = (), head: str = "",
             id_keys: tuple[str, ...] = ()) -> str:
    """Collapse `events` (person_id, concept_id, [keys…], start_date, end_date) into eras.

    `tail` lists the columns after the dates: the event count `n`, and for drug eras the gap days
    (days inside the era not covered by an exposure). `keys` are further columns an era is made per (a dose era:
    unit and dose), `head` the columns written between concept and dates, `id_keys` expressions added to the id."""
    part = ", ".join(("person_id", "concept_id", *keys))
    w = f"PARTITION BY {part} ORDER BY start_date, end_date"
    ids = "".join(f" || '|' || CAST({k} AS VARCHAR)" for k in id_keys)
    return f"""
INSERT INTO {era_table}
WITH ev AS ({events}),
marked AS (
    SELECT *, MAX(end_date) OVER ({w} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
    FROM ev
),
grouped AS (
    SELECT *, SUM(CASE WHEN prev_end IS NULL OR start_date > prev_end + {PERSISTENCE_DAYS} THEN 1 ELSE 0 END)
              OVER ({w} ROWS UNBOUNDED PRECEDING) AS grp
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
               COALESCE(c.condition_end_date, c.condition_start_date + 1) AS end_date
        FROM condition_occurrence c
        WHERE c.condition_concept_id <> 0{_person_filter('c', persons)}"""
    return _era_sql(events, "condition_era")


def drug_era_sql(persons: str | None = None) -> str:
    events = f"""
        SELECT d.person_id, ca.ancestor_concept_id AS concept_id, d.drug_exposure_start_date AS start_date,
               COALESCE(d.drug_exposure_end_date,
                        CASE WHEN d.days_supply > 0 THEN d.drug_exposure_start_date + d.days_supply END,
                        d.drug_exposure_start_date + 1) AS end_date
        FROM drug_exposure d
        JOIN concept_ancestor ca ON ca.descendant_concept_id = d.drug_concept_id
        JOIN concept c ON c.concept_id = ca.ancestor_concept_id
        WHERE c.concept_class_id = 'Ingredient' AND c.vocabulary_id IN ('RxNorm', 'RxNorm Extension')
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
               d.drug_exposure_start_date AS start_date,
               COALESCE(d.drug_exposure_end_date,
                        CASE WHEN d.days_supply > 0 THEN d.drug_exposure_start_date + d.days_supply END,
                        d.drug_exposure_start_date + 1) AS end_date
        FROM drug_exposure d
        JOIN concept_ancestor ca ON ca.descendant_concept_id = d.drug_concept_id
        JOIN concept c ON c.concept_id = ca.ancestor_concept_id
        JOIN drug_strength ds ON ds.drug_concept_id = d.drug_concept_id
             AND ds.ingredient_concept_id = ca.ancestor_concept_id AND ds.invalid_reason IS NULL
        WHERE c.concept_class_id = 'Ingredient' AND c.vocabulary_id IN ('RxNorm', 'RxNorm Extension')
          AND d.drug_concept_id <> 0 AND d.quantity > 0{_person_filter('d', persons)}
        ) AS x WHERE dose_value > 0 AND unit_concept_id IS NOT NULL"""
    return _era_sql(events, "dose_era", tail="", keys=("unit_concept_id", "dose_value"),
                    head="unit_concept_id, dose_value, ",
                    id_keys=("unit_concept_id", "CAST(ROUND(dose_value * 1000000) AS BIGINT)"))


def observation_period_sql(persons: str | None = None) -> str:
    """One period per person from the earliest to the latest clinical event (visits, conditions, drugs,
    procedures, measurements, observations, devices, death)."""
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
SELECT stable_id('observation_period|' || CAST(person_id AS VARCHAR)), person_id, MIN(s), MAX(e), {EHR_PERIOD_TYPE}
FROM (
{union}
) AS ev
GROUP BY person_id
"""


def rebuild(engine, persons: str | None = None) -> dict[str, int]:
    """Recompute the derived tables (for all persons, or only those listed in table `persons`), atomically."""
    flt = f" WHERE person_id IN (SELECT person_id FROM {persons})" if persons else ""
    steps = [
        ("observation_period", observation_period_sql(persons)),
        ("condition_era", condition_era_sql(persons)),
        ("drug_era", drug_era_sql(persons)),
        ("dose_era", dose_era_sql(persons)),
    ]
    counts = {}
    with engine.transaction():
        for table, sql in steps:
            engine.execute(f"DELETE FROM {table}{flt}")
            engine.execute(sql)
    for table, _ in steps:
        counts[table] = engine.query(f"SELECT count(*) AS n FROM {table}").column(0)[0].as_py()
    return counts
