"""Every DQD check type, made to pass on a small clean CDM and then to fail by one readable change (DuckDB).

The world: two persons (1: male, born 1980; 2: female, born 1990), one visit and one condition each,
observation periods, eras, a measurement and an observation. Every case first asserts that its check
passes on the clean world, then applies its SQL and asserts the exact violated/denominator counts.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import pytest

from medlake.cdm import model, store
from medlake.engines import open_engine
from medlake.engines.base import Shapes
from medlake.quality import report, site
from medlake.quality.checks import build_checks, checks
from medlake.quality.compile import PERSON
from medlake.quality.runner import Runner

DQD = Path(report.__file__).parent / "dqd"  # DQD's own threshold files, as medlake ships them
FEMALE_ONLY = next(c for c in checks("5.4") if c.name == "plausibleGender" and c.table == "condition_occurrence"
                   and c.param("gender_concept_id") == 8532).concept_id
MALE_TREE = 4090861  # plausibleGenderUseDescendants: male genitalia finding and its descendants
HBA1C = 3004410  # plausibleUnitConceptIds: 8554 (percent) is allowed, 8876 (mmHg) is not
OBS = 37393449  # concept-level plausibleValueLow/High with unit 8840

CONCEPTS = [  # concept_id, name, domain, class, standard
    (0, "No matching concept", "Metadata", "Undefined", None),
    (8507, "MALE", "Gender", "Gender", "S"),
    (8532, "FEMALE", "Gender", "Gender", "S"),
    (9201, "Inpatient Visit", "Visit", "Visit", "S"),
    (32817, "EHR", "Type Concept", "Type Concept", "S"),
    (201826, "Type 2 diabetes mellitus", "Condition", "Clinical Finding", "S"),
    (45576876, "E11 Type 2 diabetes mellitus", "Condition", "3-char nonbill code", None),
    (FEMALE_ONLY, "female-only condition", "Condition", "Clinical Finding", "S"),
    (MALE_TREE, "Male genitalia finding", "Condition", "Clinical Finding", "S"),
    (3004249, "Systolic blood pressure", "Measurement", "Clinical Observation", "S"),
    (HBA1C, "Hemoglobin A1c", "Measurement", "Lab Test", "S"),
    (8554, "percent", "Unit", "Unit", "S"),
    (8876, "millimeter mercury column", "Unit", "Unit", "S"),
    (8840, "milligram per deciliter", "Unit", "Unit", "S"),
    (OBS, "observation with a plausible range", "Observation", "Clinical Observation", "S"),
    (1503297, "metformin", "Drug", "Ingredient", "S"),
    (40163924, "metformin 500 MG Oral Tablet", "Drug", "Clinical Drug", "S"),
]

WORLD = [
    "INSERT INTO person (person_id, gender_concept_id, year_of_birth, birth_datetime, race_concept_id, "
    "ethnicity_concept_id) VALUES (1, 8507, 1980, TIMESTAMP '1980-05-01 00:00:00', 0, 0), "
    "(2, 8532, 1990, TIMESTAMP '1990-03-01 00:00:00', 0, 0)",
    "INSERT INTO observation_period VALUES (1, 1, DATE '2019-01-01', DATE '2022-12-31', 32817), "
    "(2, 2, DATE '2019-01-01', DATE '2022-12-31', 32817)",
    "INSERT INTO visit_occurrence (visit_occurrence_id, person_id, visit_concept_id, visit_start_date, "
    "visit_end_date, visit_type_concept_id) VALUES (10, 1, 9201, DATE '2020-01-01', DATE '2020-01-03', 32817), "
    "(20, 2, 9201, DATE '2021-01-01', DATE '2021-01-02', 32817)",
    "INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, condition_start_date, "
    "condition_end_date, condition_type_concept_id, visit_occurrence_id, condition_source_value, "
    "condition_source_concept_id) VALUES "
    "(100, 1, 201826, DATE '2020-01-02', DATE '2020-01-05', 32817, 10, 'E11', 45576876), "
    "(200, 2, 201826, DATE '2021-01-01', DATE '2021-01-02', 32817, 20, 'E11.9', 45576876), "
    f"(300, 2, {FEMALE_ONLY}, DATE '2021-01-01', NULL, 32817, 20, 'X', 45576876), "
    f"(400, 1, {MALE_TREE}, DATE '2020-01-01', NULL, 32817, 10, 'Y', 45576876)",
    "INSERT INTO condition_era VALUES (1, 1, 201826, DATE '2020-01-02', DATE '2020-01-05', 1), "
    "(2, 2, 201826, DATE '2021-01-01', DATE '2021-01-02', 1)",
    "INSERT INTO drug_era VALUES (1, 1, 1503297, DATE '2020-01-01', DATE '2020-02-01', 1, 0), "
    "(2, 2, 1503297, DATE '2021-01-01', DATE '2021-02-01', 1, 0)",
    "INSERT INTO measurement (measurement_id, person_id, measurement_concept_id, measurement_date, "
    f"measurement_type_concept_id, value_as_number, unit_concept_id) VALUES "
    f"(1000, 1, {HBA1C}, DATE '2020-01-02', 32817, 6.5, 8554)",
    "INSERT INTO observation (observation_id, person_id, observation_concept_id, observation_date, "
    f"observation_type_concept_id, value_as_number, unit_concept_id) VALUES "
    f"(5000, 1, {OBS}, DATE '2020-01-02', 32817, 70, 8840)",
    "INSERT INTO death (person_id, death_date, death_type_concept_id) VALUES (2, DATE '2022-06-01', 32817)",
    f"INSERT INTO concept_ancestor VALUES ({MALE_TREE}, {MALE_TREE}, 0, 0)",
    "INSERT INTO note (note_id, person_id, note_date, note_type_concept_id, note_class_concept_id, note_text, "
    "encoding_concept_id, language_concept_id) VALUES (1, 1, DATE '2020-01-02', 32817, 0, 'text', 0, 0)",
]

DEATH_P1 = "INSERT INTO death (person_id, death_date, death_type_concept_id) VALUES (1, DATE '2019-06-01', 32817)"
CO = "UPDATE condition_occurrence SET "

# check id, table, SQL that breaks it, violated rows, denominator
CASES = [
    ("table_cdmtable_note", ["DROP TABLE note"], 1, 1),
    ("field_cdmfield_note_note_text", ["ALTER TABLE note DROP COLUMN note_text"], 1, 1),
    ("field_isrequired_person_gender_concept_id",
     ["ALTER TABLE person ALTER COLUMN gender_concept_id DROP NOT NULL",
      "UPDATE person SET gender_concept_id = NULL WHERE person_id = 2"], 1, 2),
    ("field_measurevaluecompleteness_person_gender_concept_id",
     ["ALTER TABLE person ALTER COLUMN gender_concept_id DROP NOT NULL",
      "UPDATE person SET gender_concept_id = NULL WHERE person_id = 2"], 1, 2),
    ("field_cdmdatatype_person_year_of_birth",
     ["ALTER TABLE person ALTER COLUMN year_of_birth TYPE VARCHAR",
      "UPDATE person SET year_of_birth = '19x0' WHERE person_id = 2"], 1, 2),
    ("field_isprimarykey_person_person_id",
     ["INSERT INTO person (person_id, gender_concept_id, year_of_birth, race_concept_id, ethnicity_concept_id) "
      "VALUES (2, 8532, 1990, 0, 0)"], 2, 3),
    ("field_isforeignkey_condition_occurrence_person_id", [CO + "person_id = 99 WHERE condition_occurrence_id = 200"], 1, 4),
    ("field_fkdomain_condition_occurrence_condition_concept_id",
     [CO + "condition_concept_id = 3004249 WHERE condition_occurrence_id = 200"], 1, 4),
    ("field_fkclass_drug_era_drug_concept_id", ["UPDATE drug_era SET drug_concept_id = 40163924 WHERE drug_era_id = 2"],
     1, 2),
    ("field_isstandardvalidconcept_condition_occurrence_condition_concept_id",
     [CO + "condition_concept_id = 45576876 WHERE condition_occurrence_id = 200"], 1, 4),
    ("field_standardconceptrecordcompleteness_condition_occurrence_condition_concept_id",
     [CO + "condition_concept_id = 0 WHERE condition_occurrence_id = 200"], 1, 4),
    ("field_sourceconceptrecordcompleteness_condition_occurrence_condition_source_concept_id",
     [CO + "condition_source_concept_id = 0 WHERE condition_occurrence_id = 200"], 1, 4),
    ("field_sourcevaluecompleteness_condition_occurrence_condition_source_value",
     [CO + "condition_concept_id = 0 WHERE condition_occurrence_id = 200"], 1, 4),  # distinct source values
    ("field_plausiblevaluelow_person_year_of_birth", ["UPDATE person SET year_of_birth = 1849 WHERE person_id = 2"],
     1, 2),
    ("field_plausiblevaluehigh_condition_occurrence_condition_start_date",
     [CO + "condition_start_date = DATE '2999-01-01', condition_end_date = DATE '2999-01-02' "
      "WHERE condition_occurrence_id = 200"], 1, 4),
    ("field_plausibletemporalafter_condition_occurrence_condition_start_date",
     [CO + "condition_start_date = DATE '1975-01-01' WHERE condition_occurrence_id = 100"], 1, 4),
    ("field_plausibletemporalafter_condition_occurrence_condition_end_date",
     [CO + "condition_end_date = DATE '2019-12-01' WHERE condition_occurrence_id = 100"], 1, 4),  # every row (DQD)
    ("field_plausibleafterbirth_condition_occurrence_condition_start_date",
     [CO + "condition_start_date = DATE '1975-01-01' WHERE condition_occurrence_id = 100"], 1, 4),
    # a concept id in year_of_birth: a birth after every date, counted (64-bit), not an overflow that stops the check
    ("field_plausibleafterbirth_condition_occurrence_condition_end_date",
     ["UPDATE person SET birth_datetime = NULL, year_of_birth = 3004410 WHERE person_id = 2"], 1, 2),
    ("field_plausiblebeforedeath_condition_occurrence_condition_start_date", [DEATH_P1], 2, 4),
    ("field_plausibleduringlife_condition_occurrence_condition_start_date", [DEATH_P1], 2, 4),
    # a death row without its date (a CDM medlake did not make) counts its person's rows, as DQD's `IN (… death)`
    ("field_plausibleduringlife_condition_occurrence_condition_start_date",
     ["ALTER TABLE death ALTER COLUMN death_date DROP NOT NULL",
      "INSERT INTO death (person_id, death_date, death_type_concept_id) VALUES (1, NULL, 32817)",
      CO + "condition_start_date = DATE '2023-01-01' WHERE condition_occurrence_id = 200"], 1, 4),
    ("field_plausiblestartbeforeend_condition_occurrence_condition_start_date",
     [CO + "condition_end_date = DATE '2019-12-01' WHERE condition_occurrence_id = 100"], 1, 2),  # rows with both
    ("field_withinvisitdates_condition_occurrence_condition_start_date",
     [CO + "condition_start_date = DATE '2020-03-01', condition_end_date = NULL WHERE condition_occurrence_id = 100"],
     1, 4),
    ("table_measurepersoncompleteness_observation_period", ["DELETE FROM observation_period WHERE person_id = 2"], 1, 2),
    ("table_measureconditioneracompleteness_condition_era", ["DELETE FROM condition_era WHERE person_id = 2"], 1, 2),
    ("table_measureobservationperiodoverlap_observation_period",
     ["INSERT INTO observation_period VALUES (3, 1, DATE '2023-01-01', DATE '2023-06-30', 32817)"], 1, 2),  # back to back
    (f"concept_plausiblegender_condition_occurrence_condition_concept_id_{FEMALE_ONLY}",
     [f"INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, "
      f"condition_start_date, condition_type_concept_id) VALUES (301, 1, {FEMALE_ONLY}, DATE '2020-01-01', 32817)"], 1, 2),
    (f"concept_plausiblegenderusedescendants_condition_occurrence_condition_concept_id_{MALE_TREE}",
     [f"INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, "
      f"condition_start_date, condition_type_concept_id) VALUES (401, 2, {MALE_TREE}, DATE '2021-01-01', 32817)"], 1, 2),
    (f"concept_plausibleunitconceptids_measurement_measurement_concept_id_{HBA1C}",
     ["INSERT INTO measurement (measurement_id, person_id, measurement_concept_id, measurement_date, "
      f"measurement_type_concept_id, value_as_number, unit_concept_id) VALUES "
      f"(1001, 2, {HBA1C}, DATE '2021-01-01', 32817, 7.0, 8876)"], 1, 2),
    (f"concept_plausiblevaluelow_observation_observation_concept_id_{OBS}_8840",
     ["UPDATE observation SET value_as_number = 20"], 1, 1),
    (f"concept_plausiblevaluehigh_observation_observation_concept_id_{OBS}_8840",
     ["UPDATE observation SET value_as_number = 99999"], 1, 1),
    # beyond DQD: medlake's physiologic range for HbA1c in percent (2-25 %)
    (f"concept_plausiblevaluehigh_measurement_measurement_concept_id_{HBA1C}_8554",
     ["UPDATE measurement SET value_as_number = 65"], 1, 1),
    (f"concept_plausiblevaluelow_measurement_measurement_concept_id_{HBA1C}_8554",
     ["UPDATE measurement SET value_as_number = 0.65"], 1, 1),
]


def test_a_violating_row_without_an_id_is_an_example_as_null(clean, tmp_path):
    clean.execute("ALTER TABLE condition_occurrence ALTER COLUMN condition_occurrence_id DROP NOT NULL")
    clean.execute(CO + "condition_occurrence_id = NULL WHERE condition_occurrence_id = 200")
    got = results(clean, "condition_occurrence", tmp_path)["field_isrequired_condition_occurrence_condition_occurrence_id"]
    assert (got["status"], got["num_violated_rows"], got["examples"]) == ("failed", 1, ["NULL"])


def world(eng):
    store.init(eng, "5.4")
    rows = ", ".join(f"({i}, '{n}', '{d}', 'Test', '{k}', {'NULL' if s is None else repr(s)}, '{i}', "
                     "DATE '1970-01-01', DATE '2099-12-31', NULL)" for i, n, d, k, s in CONCEPTS)
    eng.execute(f"INSERT INTO concept VALUES {rows}")
    for sql in WORLD:
        eng.execute(sql)
    return eng


def results(eng, table, tmp_path, extra=(), mode="set", only=None):
    runner = Runner(eng, "5.4", tmp_path / "q", incremental=False, resume=False, mode=mode)
    runner._survey()
    cs = [c for c in checks("5.4") if c.table == table and (only is None or c.id == only)] + list(extra)
    return {r["check_id"]: r for r in runner.run_table(table, cs, [])}


def table_of(check_id):
    return next(c.table for c in checks("5.4") if c.id == check_id)


@pytest.fixture
def clean():
    eng = open_engine("duckdb::memory:")
    yield world(eng)
    eng.close()


@pytest.mark.parametrize("check_id,breaking,violated,denominator", CASES, ids=[c[0].split("_")[1] + ":" + c[0]
                                                                                for c in CASES])
def test_check_passes_then_fails(clean, tmp_path, check_id, breaking, violated, denominator):
    table = table_of(check_id)
    before = results(clean, table, tmp_path)[check_id]
    assert before["status"] == "passed", before
    assert before["num_violated_rows"] == 0
    for sql in breaking:
        clean.execute(sql)
    after = results(clean, table, tmp_path)[check_id]
    assert after["status"] == "failed", after
    assert (after["num_violated_rows"], after["num_denominator_rows"]) == (violated, denominator)
    assert after["failed"] is True
    if after["check_name"] not in ("cdmTable", "cdmField"):  # those are about the schema, not rows
        assert 0 < len(after["examples"]) <= 10, after
    for mode in ("per_check", "dqd"):  # the benchmark's baselines count the same rows, one query for the check
        alone = results(clean, table, tmp_path, mode=mode, only=check_id)[check_id]
        assert (alone["status"], alone["num_violated_rows"], alone["num_denominator_rows"]) == ("failed", violated,
                                                                                               denominator), mode


def test_every_check_type_has_a_case():
    names = {c.name for c in checks("5.4") if c.source == "dqd"} | {c.name for c in checks("5.3") if c.source == "dqd"}
    covered = {next(c.name for c in checks("5.4") if c.id == cid) for cid, *_ in CASES}
    assert names - covered == set()
    assert len(names) >= 27  # DQD's 27 check types (plus the concept-level low/high sharing names)


def test_examples_name_the_violating_rows(clean, tmp_path):
    clean.execute(CO + "person_id = 99 WHERE condition_occurrence_id IN (200, 300)")
    r = results(clean, "condition_occurrence", tmp_path)["field_isforeignkey_condition_occurrence_person_id"]
    assert sorted(r["examples"]) == ["200", "300"]
    assert r["example_field"] == "condition_occurrence_id"
    assert r["pct_violated_rows"] == 0.5


def test_examples_of_a_failed_concept_check_are_its_violating_rows_found_without_the_vocabulary(clean, tmp_path):
    """fkDomain fails on two rows: their ids are the examples, found by the violating concept ids the grouped
    scan returns (no join to a vocabulary of millions of rows), the same rows as the joined condition finds."""
    clean.execute(CO + "condition_concept_id = 1503297 WHERE condition_occurrence_id = 200")  # a Drug concept
    clean.execute(CO + "condition_concept_id = 3004249 WHERE condition_occurrence_id = 300")  # a Measurement one
    runner = Runner(clean, "5.4", tmp_path / "q", incremental=False, resume=False)
    runner._survey()
    cs = [c for c in checks("5.4") if c.table == "condition_occurrence"]
    r = {x["check_id"]: x for x in runner.run_table("condition_occurrence", cs, [])}
    fk = r["field_fkdomain_condition_occurrence_condition_concept_id"]
    assert (fk["status"], fk["num_violated_rows"], sorted(fk["examples"])) == ("failed", 2, ["200", "300"])
    examples = [sql for _, sql in runner.eng.log if "row_id" in sql and "fkdomain" in sql]
    assert examples and all('"concept"' not in sql for sql in examples), examples
    joined = results(clean, "condition_occurrence", tmp_path, mode="per_check")
    assert sorted(joined[fk["check_id"]]["examples"]) == ["200", "300"]


def test_threshold_follows_dqd_rule(clean, tmp_path):
    """Threshold 5%: 1 violation in 4 rows (25%) fails; the same at threshold 30% passes."""
    cid = "field_standardconceptrecordcompleteness_condition_occurrence_condition_concept_id"
    clean.execute(CO + "condition_concept_id = 0 WHERE condition_occurrence_id = 200")
    assert results(clean, "condition_occurrence", tmp_path)[cid]["status"] == "failed"
    c = next(c for c in checks("5.4") if c.id == cid)
    loose = dataclasses.replace(c, threshold=30.0, name="standardConceptRecordCompleteness")
    runner = Runner(clean, "5.4", tmp_path / "q", incremental=False, resume=False)
    runner._survey()
    r = {x["check_id"]: x for x in runner.run_table("condition_occurrence", [loose], [])}[cid]
    assert (r["status"], r["pct_violated_rows"]) == ("passed", 0.25)


def test_mapping_coverage_counts_unmapped_and_non_standard(clean, tmp_path):
    cid = "field_mappingcoverage_condition_occurrence_condition_concept_id"
    assert results(clean, "condition_occurrence", tmp_path)[cid]["num_violated_rows"] == 0
    clean.execute(CO + "condition_concept_id = 0 WHERE condition_occurrence_id = 100")
    clean.execute(CO + "condition_concept_id = 45576876 WHERE condition_occurrence_id = 200")
    r = results(clean, "condition_occurrence", tmp_path)[cid]
    assert (r["num_violated_rows"], r["num_denominator_rows"]) == (2, 4)
    assert r["status"] == "passed"  # informational by default (threshold 100%)
    strict = dataclasses.replace(next(c for c in checks("5.4") if c.id == cid), threshold=0.0)
    runner = Runner(clean, "5.4", tmp_path / "q2", incremental=False, resume=False)
    runner._survey()
    assert runner.run_table("condition_occurrence", [strict], [])[0]["status"] == "failed"


def test_not_applicable_is_not_passed(clean, tmp_path):
    r = results(clean, "specimen", tmp_path)  # empty table
    assert r["field_isrequired_specimen_specimen_id"]["status"] == "not_applicable"
    assert "empty" in r["field_isrequired_specimen_specimen_id"]["not_applicable_reason"]
    assert r["table_cdmtable_specimen"]["status"] == "passed"
    clean.execute("ALTER TABLE note DROP COLUMN note_text")
    r = results(clean, "note", tmp_path)
    assert r["field_cdmfield_note_note_text"]["status"] == "failed"
    assert r["field_measurevaluecompleteness_note_note_text"]["status"] == "not_applicable"
    # a concept rule with no records of its concept is not applicable, not passed
    r = results(clean, "measurement", tmp_path)
    other = next(c.id for c in checks("5.4") if c.name == "plausibleUnitConceptIds" and c.concept_id != HBA1C)
    assert r[other]["status"] == "not_applicable"
    # a field no row fills: its foreign-key and concept checks are not applicable (not "passed")
    r = results(clean, "condition_occurrence", tmp_path)
    na = r["field_isforeignkey_condition_occurrence_provider_id"]
    assert (na["status"], na["not_applicable_reason"]) == (
        "not_applicable", "field condition_occurrence.provider_id has no values")
    assert r["field_isforeignkey_condition_occurrence_person_id"]["status"] == "passed"
    clean.execute("DROP TABLE death")
    r = results(clean, "condition_occurrence", tmp_path)
    assert r["field_plausiblebeforedeath_condition_occurrence_condition_start_date"]["status"] == "not_applicable"
    # DQD 2.8: a required field, or a key, no row fills: its completeness check fails, its other checks do not apply
    for sql in ("ALTER TABLE condition_occurrence ALTER COLUMN condition_occurrence_id DROP NOT NULL",
                "ALTER TABLE condition_occurrence ALTER COLUMN condition_type_concept_id DROP NOT NULL",
                "UPDATE condition_occurrence SET condition_occurrence_id = NULL, condition_type_concept_id = NULL"):
        clean.execute(sql)
    r = results(clean, "condition_occurrence", tmp_path)
    for check in ("isrequired_condition_occurrence_condition_type_concept_id",
                  "isprimarykey_condition_occurrence_condition_occurrence_id",
                  "isrequired_condition_occurrence_condition_occurrence_id"):
        assert r[f"field_{check}"]["status"] == "not_applicable", check
    full = r["field_measurevaluecompleteness_condition_occurrence_condition_type_concept_id"]
    assert (full["status"], full["num_violated_rows"], full["num_denominator_rows"]) == ("failed", 4, 4)


def test_a_concept_the_vocabulary_holds_twice_counts_each_row_once(clean, tmp_path):
    """A local concept loaded again: the concept checks' denominators stay the table's rows."""
    before = results(clean, "condition_occurrence", tmp_path)
    clean.execute("INSERT INTO concept SELECT * FROM concept WHERE concept_id IN (201826, 32817)")
    after = results(clean, "condition_occurrence", tmp_path)
    ids = [i for i, r in before.items() if r["num_denominator_rows"] and ("concept" in i or "foreignkey" in i)]
    assert len(ids) > 5 and all(
        (before[i]["num_violated_rows"], before[i]["num_denominator_rows"])
        == (after[i]["num_violated_rows"], after[i]["num_denominator_rows"]) for i in ids), \
        [(i, before[i]["num_denominator_rows"], after[i]["num_denominator_rows"]) for i in ids]


def test_a_failing_query_is_an_error_with_its_text(clean, tmp_path):
    clean.execute("ALTER TABLE person ALTER COLUMN year_of_birth TYPE VARCHAR")
    clean.execute("UPDATE person SET year_of_birth = 'abc' WHERE person_id = 2")  # cannot compare with 1850
    r = results(clean, "person", tmp_path)
    bad = r["field_plausiblevaluelow_person_year_of_birth"]
    assert bad["status"] == "error" and "VARCHAR" in bad["error"]
    # the failing check is isolated: the others of the same scan still have results
    assert r["field_cdmdatatype_person_year_of_birth"]["status"] == "failed"
    assert r["field_isrequired_person_gender_concept_id"]["status"] == "passed"


def test_set_based_and_per_check_agree(clean, tmp_path):
    clean.execute(CO + "person_id = 99, condition_concept_id = 0 WHERE condition_occurrence_id = 200")
    clean.execute(DEATH_P1)
    out = {}
    for mode in ("set", "per_check", "dqd"):
        runner = Runner(clean, "5.4", tmp_path / mode, incremental=False, resume=False, mode=mode)
        runner._survey()
        cs = [c for c in checks("5.4") if c.table in ("condition_occurrence", "measurement")]
        res = runner.run_table("condition_occurrence", [c for c in cs if c.table == "condition_occurrence"], [])
        res += runner.run_table("measurement", [c for c in cs if c.table == "measurement"], [])
        out[mode] = ({r["check_id"]: (r["status"], r["num_violated_rows"], r["num_denominator_rows"]) for r in res},
                     runner.eng.queries)
    assert out["set"][0] == out["per_check"][0] == out["dqd"][0]
    assert out["set"][1] * 5 < out["per_check"][1] <= out["dqd"][1]


def test_field_checks_run_as_one_scan_per_set_of_joins(clean, tmp_path):
    """The runner's own queries over condition_occurrence: every field-level check is answered by a few scans (one
    per set of joins, person and death together), the concept checks by one grouped query, not one query each."""
    runner = Runner(clean, "5.4", tmp_path / "q", incremental=False, resume=False, only=["condition_occurrence"],
                    sources=False)
    run = runner.run()
    field_checks = [r for r in run.results if r["check_level"] == "FIELD" and r["status"] in ("passed", "failed")
                    and r["check_name"] not in ("isPrimaryKey", "cdmField")]
    table = 'FROM "condition_occurrence" AS t'
    scans = [sql for _, sql in runner.eng.log if sql.startswith("SELECT count(*) AS n") and table in sql]
    grouped = [sql for _, sql in runner.eng.log if sql.startswith("WITH g__") and 'FROM "condition_occurrence"' in sql]
    joined = sorted(tuple(sorted(re.findall(r'LEFT JOIN (?:"(\w+)"|\(SELECT person_id, min\(death_date\))',
                                            sql.replace(PERSON, '"person"')))) for sql in scans)
    assert len(field_checks) > 40 and len(grouped) == 1
    # no join; person and death (the min(death_date) subquery); visit; the other referenced tables one each
    assert {(), ("", "person"), ("visit_occurrence",)} <= set(joined), joined
    assert len(scans) == len(set(joined)) <= 8 and all(len(j) == 1 for j in joined if j not in ((), ("", "person")))


def test_after_birth_uses_the_birth_month_when_only_year_and_month_are_known(clean, tmp_path):
    """Birth known as 1990-03 (no birth_datetime): an event in February 1990 is before birth, one in March is not."""
    cid = "field_plausibleafterbirth_condition_occurrence_condition_start_date"
    clean.execute("UPDATE person SET birth_datetime = NULL, month_of_birth = 3 WHERE person_id = 2")
    clean.execute(CO + "condition_start_date = DATE '1990-03-20' WHERE condition_occurrence_id = 200")
    assert results(clean, "condition_occurrence", tmp_path)[cid]["num_violated_rows"] == 0
    clean.execute(CO + "condition_start_date = DATE '1990-02-20' WHERE condition_occurrence_id = 200")
    r = results(clean, "condition_occurrence", tmp_path)[cid]
    assert (r["status"], r["num_violated_rows"]) == ("failed", 1)


@pytest.mark.parametrize("month, day, event, before", [
    (3, None, "1990-02-28", True), (3, None, "1990-03-01", False),      # a sure date: compared as dates
    (1, 31, "1990-01-30", True), (1, 31, "1990-01-31", False),          # day 29-31: as the number yyyymmdd
    (2, 30, "1990-02-28", True), (2, 30, "1990-03-01", False),          # no such day: never an error
    (13, None, "1990-12-31", True), (None, None, "1989-12-31", True), (None, None, "1990-01-01", False),
])
def test_after_birth_from_birth_fields_of_any_quality(clean, tmp_path, month, day, event, before):
    """Without birth_datetime, birth is the earliest day the birth fields allow, even where they make no date."""
    cid = "field_plausibleafterbirth_condition_occurrence_condition_start_date"
    clean.execute(f"UPDATE person SET birth_datetime = NULL, month_of_birth = {month or 'NULL'}, "
                  f"day_of_birth = {day or 'NULL'} WHERE person_id = 2")
    clean.execute(CO + f"condition_start_date = DATE '{event}' WHERE condition_occurrence_id = 200")
    r = results(clean, "condition_occurrence", tmp_path)[cid]
    assert (r["status"], r["num_violated_rows"]) == (("failed", 1) if before else ("passed", 0))


def test_violating_rows_lists_every_violating_row(clean, tmp_path):
    clean.execute(CO + "person_id = 99 WHERE condition_occurrence_id IN (200, 300)")
    runner = Runner(clean, "5.4", tmp_path / "q", incremental=False, resume=False)
    rows = runner.violating_rows("condition_occurrence")
    assert sorted(rows["field_isforeignkey_condition_occurrence_person_id"]) == ["200", "300"]
    assert "field_isrequired_condition_occurrence_person_id" not in rows  # no violation: not listed


# every query shape the quality runner reads (narrow_delta and truncate are the transform's)
QUALITY_SHAPES = [f.name for f in dataclasses.fields(Shapes) if f.name not in ("narrow_delta", "truncate")]


def test_every_query_shape_gives_the_same_results(clean, tmp_path):
    """Each engine runs the equivalent query shapes it runs faster (engines/base.py Shapes). Here every shape the
    quality runner knows is flipped in turn, on DuckDB, on a CDM with every breaking change of CASES at once:
    the same status, counts and example rows each time."""
    for _, breaking, _, _ in CASES:
        if not any(sql.startswith("DROP") or "DROP COLUMN" in sql or " TYPE " in sql for sql in breaking):
            for sql in breaking:  # (the schema stays)
                clean.execute(sql)
    clean.execute(CO + "condition_concept_id = 3004249 WHERE condition_occurrence_id = 100")  # 200's was overwritten
    clean.execute(CO + "condition_concept_id = 45576876 WHERE condition_occurrence_id = 300")

    def run(name, shapes):
        r = Runner(clean, "5.4", tmp_path / name, incremental=False, resume=False, sources=False)
        r.shapes = shapes
        return {x["check_id"]: (x["status"], x["num_violated_rows"], x["num_denominator_rows"], sorted(x["examples"]))
                for x in r.run().results}

    base = run("default", clean.shapes)
    failed = {cid.split("_")[1] for cid, (status, *_) in base.items() if status == "failed"}
    assert {"isprimarykey", "isforeignkey", "fkdomain", "isstandardvalidconcept", "plausibleunitconceptids",
            "plausiblevaluehigh", "plausiblegender", "plausibleduringlife", "measurepersoncompleteness"} <= failed
    assert not [cid for cid, (status, *_) in base.items() if status == "error"]
    # person 2 is there twice (isPrimaryKey): a check that does not join person still counts each row once
    rows = clean.query("SELECT count(*) AS n FROM condition_occurrence").column(0)[0].as_py()
    assert base["field_isrequired_condition_occurrence_person_id"][2] == rows
    for flag in QUALITY_SHAPES:
        flipped = dataclasses.replace(clean.shapes, **{flag: not getattr(clean.shapes, flag)})
        got = run(flag, flipped)
        assert {k: (v, base[k]) for k, v in got.items() if v != base[k]} == {}, flag


def random_cdm(seed: int) -> dict[str, list[dict]]:
    """Every table of the CDM, a few rows each of values of the right type drawn from small pools — ids that
    repeat (two persons with one person_id), references that hit and miss, concepts of DQD's rules with random
    domains, classes and flags, dates that cross each other: every kind of defect at once, as a fuzz finds them."""
    import random

    rnd = random.Random(seed)
    rule_ids = sorted({c.concept_id for c in checks("5.4") if c.concept_id}
                      | {c.unit_concept_id for c in checks("5.4") if c.unit_concept_id})
    ids = sorted(set(rnd.sample(rule_ids, 40)) | {0, 8507, 8532, 9201, 32817})
    domains = ["Gender", "Visit", "Condition", "Drug", "Measurement", "Observation", "Unit", "Type Concept"]
    data = {"concept": [dict(concept_id=c, concept_name=f"c{c}", domain_id=rnd.choice(domains), vocabulary_id="T",
                             concept_class_id=rnd.choice(["Clinical Finding", "Ingredient", "Unit", "Lab Test"]),
                             standard_concept=rnd.choice(["S", "S", "C", None]), concept_code=str(c),
                             valid_start_date=dt.date(1970, 1, 1), valid_end_date=dt.date(2099, 12, 31),
                             invalid_reason=rnd.choice([None, None, "D"])) for c in ids]}

    def value(f):
        day = dt.date(rnd.randint(1880, 2030), rnd.randint(1, 12), rnd.randint(1, 28))
        if f.kind == "varchar":
            return rnd.choice(["", "x", "E11", "0"])[:int(f.datatype[8:-1])] if f.datatype[8:-1].isdigit() else "x"
        if f.name.endswith("concept_id"):
            return rnd.choice(ids + [999999991])
        if f.name == "year_of_birth":
            return rnd.randint(1840, 2030)
        if f.kind in ("integer", "bigint"):
            return rnd.randint(1, 7) if f.name == "person_id" else rnd.randint(-1, 9)
        if f.kind == "float":
            return rnd.choice([rnd.uniform(-50, 600), 0.0, 1e6])
        return day if f.kind == "date" else dt.datetime.combine(day, dt.time(rnd.randint(0, 23)))

    for t in model.load("5.4").tables:
        if t.schema != "VOCAB":
            data[t.name] = [{f.name: None if rnd.random() < (0.05 if f.required else 0.3) else value(f)
                             for f in t.fields} for _ in range(6 if t.name == "person" else rnd.choice([0, 1, 3, 6, 10]))]
    data["concept_ancestor"] = [dict(ancestor_concept_id=c, descendant_concept_id=c, min_levels_of_separation=0,
                                     max_levels_of_separation=0) for c in rnd.sample(ids, 10)]
    return data


def test_a_random_dirty_cdm_gives_the_same_results_in_every_execution(tmp_path, seed=11):
    """The set-based run and the two one-query-per-check executions (DQD's shapes, one pass per check) agree on
    every status and count of a random CDM with every defect at once; each set-based example is one of the rows
    the others list (it takes the rows of the lowest and highest violating value). Before 8964b5b a repeated
    person or visit made them disagree on dozens of results of such a CDM (found by a fuzz of this generator)."""
    import pyarrow as pa

    from medlake.cdm import ddl

    eng = open_engine("duckdb::memory:")
    for t in model.load("5.4").tables:
        t = dataclasses.replace(t, fields=tuple(dataclasses.replace(f, required=False, primary_key=False)
                                                for f in t.fields))
        eng.create_table(t)
        rows = random_cdm(seed).get(t.name)
        if rows:
            eng.load_arrow(t.name, pa.Table.from_pylist(rows, schema=ddl.arrow_schema(t)))
    got = {}
    for mode in ("set", "per_check", "dqd"):
        got[mode] = {x["check_id"]: (x["status"], x["num_violated_rows"], x["num_denominator_rows"], x["examples"])
                     for x in Runner(eng, "5.4", tmp_path / mode, incremental=False, resume=False, mode=mode).run().results}
    eng.close()
    failed = [k for k, v in got["set"].items() if v[0] == "failed"]
    assert len(failed) > 200 and not [k for k, v in got["set"].items() if v[0] == "error"]
    for mode in ("per_check", "dqd"):
        assert {k: (v[:3], got["set"][k][:3]) for k, v in got[mode].items() if v[:3] != got["set"][k][:3]} == {}, mode
        for k in failed:
            listed, ours = got[mode][k][3], got["set"][k][3]
            assert bool(ours) == bool(listed) and (got["set"][k][1] > 10 or set(ours) <= set(listed)), (mode, k)


# -- beyond DQD: medlake's value ranges and unit lists, and the demo vocabulary's Athena ids ------------------

def test_medlake_value_ranges_are_sane_and_match_the_demo_vocabulary():
    from medlake.cdm import vocab
    from medlake.quality.checks import plausible_values

    rows = {}
    for line in (vocab.demo_vocabulary_dir() / "CONCEPT.csv").read_text(encoding="utf-8").splitlines()[1:]:
        f = line.split("\t")
        rows[int(f[0])] = (f[3], f[6])  # vocabulary, code
    ranges = plausible_values()
    assert len(ranges) >= 50
    for r in ranges:
        assert r["plausible_value_low"] < r["plausible_value_high"], r
        if r["concept_id"] in rows:  # the demo vocabulary carries these concepts with the same codes
            assert rows[r["concept_id"]] == ("LOINC", r["loinc"]), r
        if r["unit_concept_id"] in rows:
            assert rows[r["unit_concept_id"]] == ("UCUM", r["ucum"]), r
    assert {3020891, 3016723, 3000963} <= {r["concept_id"] for r in ranges}  # temperature, creatinine, hemoglobin
    medlake = [c for c in checks("5.4") if c.source == "medlake" and c.name.startswith("plausibleValue")]
    assert len(medlake) == 2 * len(ranges) and all(c.table == "measurement" and c.unit_concept_id for c in medlake)


def test_si_units_join_dqds_unit_lists():
    units = {c.concept_id: c.param("units") for c in checks("5.4") if c.name == "plausibleUnitConceptIds"}
    assert 8840 in units[3000483] and 8753 in units[3000483]  # glucose in blood: DQD lists mg/dL only
    assert units[HBA1C][:4] == (8554, 8737, 9225, 9579)  # DQD's own list first, unchanged
    glucose = next(c for c in checks("5.4") if c.name == "plausibleUnitConceptIds" and c.concept_id == 3000483)
    assert glucose.description.endswith("(DQD's list 8840, with medlake's SI unit(s) 8753; DQD's exactly: "
                                        "--dqd-thresholds with DQD's Concept_Level file)")  # said where it is read
    # the site's own Concept_Level file (here DQD's) is the lists as written
    dqd = build_checks("5.4", files=(str(DQD / "OMOP_CDMv5.4_Concept_Level.csv"),))
    exact = {c.concept_id: c.param("units") for c in dqd if c.name == "plausibleUnitConceptIds"}
    assert exact[3000483] == (8840,) and len(exact) == len(units)


def test_catalog_lab_ids_are_the_ones_dqd_lists_under_the_same_loinc_name():
    from medlake.quality.checks import _csv
    from medlake.simulate import catalog

    dqd = {}
    for r in _csv("OMOP_CDMv5.4_Concept_Level.csv"):
        if r["cdmTableName"] == "MEASUREMENT":
            dqd.setdefault(int(r["conceptId"].split(",")[0]), r["conceptName"].strip())
    names = {x.loinc: x.en for x in catalog.LABS + catalog.VITALS}
    checked = 0
    for (vocabulary, code), cid in catalog.KNOWN_IDS.items():
        if vocabulary == "LOINC" and cid in dqd:
            assert dqd[cid] == names[code], (code, cid)
            checked += 1
    assert checked >= 45


# -- source-level checks ----------------------------------------------------------------------------------------

def test_feed_checks_read_what_the_landing_received_per_day(tmp_path):
    """Without a site [feed] table, each source's arrivals in the landing (messages or files per UTC day) are
    checked: a silent day and a day far below the source's usual volume fail; a source seen on one day only is not
    judged for volume."""
    import sqlite3

    from medlake.landing import Landing
    from medlake.quality.feeds import run_sources
    from medlake.quality.runner import result

    Landing(tmp_path / "landing").close()  # the landing's own tables
    days = {"lis": {1: 10, 2: 12, 3: 9, 4: 11, 6: 10, 7: 3, 8: 10},  # nothing on the 5th, little on the 7th
            "his": {d: 5 for d in range(1, 9)}, "pacs": {8: 1}}
    db = sqlite3.connect(tmp_path / "landing" / "landing.sqlite")
    db.executemany("INSERT INTO receipt (sha256, source, received_at, size, duplicate) VALUES (?, ?, ?, 1, 0)",
                   [(f"{src}-{d}-{i}", src, f"2026-01-{d:02d}T{i:02d}:30:00.000000+00:00")
                    for src, per in days.items() for d, n in per.items() for i in range(n)])
    db.commit()
    db.close()
    eng = open_engine("duckdb::memory:")
    got = {(x["check_name"], x["data_source"]): x for x in run_sources(eng, result, tmp_path / "landing")}
    counts = {k: (v["num_violated_rows"], v["num_denominator_rows"], v["status"], v["examples"])
              for k, v in got.items() if k[0].startswith("feed")}
    assert counts == {
        ("feedTimeliness", "lis"): (1, 8, "failed", ["2026-01-05"]),
        ("feedVolume", "lis"): (1, 4, "failed", ["2026-01-07"]),  # days 4, 6, 7, 8 have 3 days of data before them
        ("feedTimeliness", "his"): (0, 8, "passed", []), ("feedVolume", "his"): (0, 5, "passed", []),
        ("feedTimeliness", "pacs"): (0, 1, "passed", []), ("feedVolume", "pacs"): (0, 0, "not_applicable", [])}
    assert "1 day(s) with data from pacs" in got["feedVolume", "pacs"]["not_applicable_reason"]
    assert got["feedTimeliness", "lis"]["check_id"] == "source_feedtimeliness_landing_lis"
    # a site's [feed] table replaces them
    assert not [x for x in run_sources(eng, result, tmp_path / "landing", feeds=False) if x["check_name"].startswith("feed")]
    eng.close()


def test_the_day_in_progress_is_not_judged(tmp_path):
    """A run during the day sees only part of it: today is neither a volume drop (lis has sent 1 of its usual 10 so
    far) nor a missing day (his has sent nothing yet today), and teaches nothing; the chart marks it `~`. A source
    that has sent on today only is not judged until tomorrow. Before, a nightly run at 01:00 failed every feed's
    volume with today's first hour."""
    import sqlite3

    from medlake.landing import Landing
    from medlake.quality.feeds import run_sources
    from medlake.quality.runner import result

    Landing(tmp_path / "landing").close()
    now = dt.datetime.now(dt.timezone.utc)
    today = now.date()
    sent = [("lis", today - dt.timedelta(days=d), 10) for d in range(1, 8)] + [("lis", today, 1)]
    sent += [("his", today - dt.timedelta(days=d), 5) for d in range(1, 8)] + [("pacs", today, 3)]
    db = sqlite3.connect(tmp_path / "landing" / "landing.sqlite")
    db.executemany("INSERT INTO receipt (sha256, source, received_at, size, duplicate) VALUES (?, ?, ?, 1, 0)",
                   [(f"{src}-{day}-{i}", src, (now if day == today else dt.datetime.combine(
                       day, dt.time(12, i), dt.timezone.utc)).isoformat()) for src, day, n in sent for i in range(n)])
    db.commit()
    db.close()
    eng = open_engine("duckdb::memory:")
    got = {(x["check_name"], x["data_source"]): x for x in run_sources(eng, result, tmp_path / "landing")
           if x["check_name"].startswith("feed")}
    eng.close()
    counts = {k: (v["status"], v["num_violated_rows"], v["num_denominator_rows"]) for k, v in got.items()}
    assert counts == {("feedTimeliness", "lis"): ("passed", 0, 7), ("feedVolume", "lis"): ("passed", 0, 4),
                      ("feedTimeliness", "his"): ("passed", 0, 7), ("feedVolume", "his"): ("passed", 0, 4),
                      ("feedTimeliness", "pacs"): ("not_applicable", None, None),
                      ("feedVolume", "pacs"): ("not_applicable", None, None)}
    assert got["feedVolume", "lis"]["daily_marks"] == "." * 7 + "~" and got["feedVolume", "lis"]["daily_counts"][-1] == 1
    assert got["feedVolume", "his"]["daily_marks"] == "." * 7
    assert "day in progress" in got["feedVolume", "pacs"]["not_applicable_reason"]

def test_feed_checks_count_the_hospitals_local_days(tmp_path):
    """[feed] timezone: the landing's receipts (UTC) counted by local days, to the quarter of an hour (Nepal is
    UTC+5:45); the examples are local days. A zone that is none, or a zone beside a table, is refused."""
    import sqlite3

    from medlake.landing import Landing
    from medlake.quality.feeds import landing_feed, run_sources
    from medlake.quality.runner import result

    Landing(tmp_path / "landing").close()
    times = [f"2026-03-{d:02d}T18:40:00.000000+00:00" for d in (1, 2, 3, 5)]  # 00:25 the next day in Kathmandu
    times += ["2026-03-05T18:10:00.000000+00:00"]  # 23:55 the same day there
    db = sqlite3.connect(tmp_path / "landing" / "landing.sqlite")
    db.executemany("INSERT INTO receipt (sha256, source, received_at, size, duplicate) VALUES (?, 'lis', ?, 1, 0)",
                   [(f"x{i}", t) for i, t in enumerate(times)])
    db.commit()
    assert landing_feed(db)["lis"] == {dt.date(2026, 3, d): n for d, n in ((1, 1), (2, 1), (3, 1), (5, 2))}
    assert landing_feed(db, "Asia/Kathmandu")["lis"] == {dt.date(2026, 3, d): 1 for d in (2, 3, 4, 5, 6)}
    db.close()
    eng = open_engine("duckdb::memory:")
    utc = {x["check_name"]: x for x in run_sources(eng, result, tmp_path / "landing") if x["data_source"] == "lis"}
    local = {x["check_name"]: x for x in run_sources(eng, result, tmp_path / "landing", feed={"timezone": "Asia/Kathmandu"})
             if x["data_source"] == "lis"}
    eng.close()
    assert utc["feedTimeliness"]["examples"] == ["2026-03-04"] and local["feedTimeliness"]["status"] == "passed"
    for text, message in (("[feed]\ntimezone = 'Mars/Olympus'", "timezone 'Mars/Olympus' is not a time zone"),
                          ("[feed]\ntimezone = 'UTC'\ntable = 'log'", "timezone is for the landing's receipts"),
                          ("[feed]\nholidays = ['Christmas']", "holidays must be a list of dates .* not 'Christmas'"),
                          ("[feed]\nweekends = true", r"\[feed\] takes table, source, received_at, drop, timezone")):
        with pytest.raises(ValueError, match=message):
            site.feed_config(text, "site.toml")
    assert site.feed_config("[feed]\ntimezone = 'Europe/Berlin'")["table"] is None
    assert site.feed_config("[feed]\nholidays = [2026-12-25, '2027-01-01']")["holidays"] == {
        dt.date(2026, 12, 25), dt.date(2027, 1, 1)}


def test_feed_checks_know_the_sites_public_holidays(tmp_path):
    """A weekday feed in Bavaria, silent over Easter 2026 (Good Friday 3 April, Easter Monday 6 April) and on
    Epiphany (6 January, a holiday in Bavaria, not in Berlin): missing days by UTC, none with the country's
    calendar, one (Epiphany) with Berlin's. A country or subdivision that has no calendar is refused."""
    import sqlite3

    from medlake.landing import Landing
    from medlake.quality.feeds import days_off, run_sources
    from medlake.quality.runner import result

    Landing(tmp_path / "landing").close()
    start = dt.date(2026, 1, 5)
    quiet = {dt.date(2026, 1, 6), dt.date(2026, 4, 3), dt.date(2026, 4, 6)}
    sent = [start + dt.timedelta(days=i) for i in range(100)]
    sent = [d for d in sent if d.weekday() < 5 and d not in quiet]
    db = sqlite3.connect(tmp_path / "landing" / "landing.sqlite")
    for src in ("lis", "ed-adt", "h3-lis"):  # the same days from three sources
        db.executemany("INSERT INTO receipt (sha256, source, received_at, size, duplicate) VALUES (?, ?, ?, 1, 0)",
                       [(f"{src}{i}", src, f"{d}T10:00:00.000000+00:00") for i, d in enumerate(sent)])
    db.commit()
    db.close()
    eng = open_engine("duckdb::memory:")
    got = {}
    for name, text in (("none", "[feed]\ndrop = 0.5"), ("BY", "[feed]\ncountry = 'de'\nsubdivision = 'BY'"),
                       ("BE", "[feed]\ncountry = 'DE'\nsubdivision = 'BE'\nholidays = [2026-01-02]"),
                       ("own", "[feed]\ncountry = 'DE'\nsubdivision = 'BY'\n[feed.sources.ed-adt]\n"
                               "sends_on_holidays = true\n[feed.sources.h3-lis]\nsubdivision = 'BE'\n"
                               "[feed.sources.gone]\ncountry = 'AT'")):
        for x in run_sources(eng, result, tmp_path / "landing", feed=site.feed_config(text)):
            got.setdefault(name, {})[x["check_name"], x["data_source"]] = x
    eng.close()
    t = {k: (v["feedTimeliness", "lis"]["num_violated_rows"], v["feedTimeliness", "lis"]["examples"])
         for k, v in got.items()}
    assert t == {"none": (3, ["2026-04-06", "2026-04-03", "2026-01-06"]), "BY": (0, []), "BE": (1, ["2026-01-06"]),
                 "own": (0, [])}
    # a source's own calendar: the emergency department's silent holidays are missing days, h3's state is Berlin
    own = {s: got["own"]["feedTimeliness", s]["examples"] for s in ("lis", "ed-adt", "h3-lis")}
    assert own == {"lis": [], "ed-adt": ["2026-04-06", "2026-04-03", "2026-01-06"], "h3-lis": ["2026-01-06"]}
    assert got["own"]["feedTimeliness", "gone"]["status"] == "not_applicable"  # named, never sent
    assert "sent nothing to landing" in got["own"]["feedTimeliness", "gone"]["not_applicable_reason"]
    got = {k: {c: x for (c, s), x in v.items() if s == "lis"} for k, v in got.items()}
    assert (got["none"]["feedTimeliness"]["num_denominator_rows"] - got["BY"]["feedTimeliness"]["num_denominator_rows"]
            == 3)  # Epiphany, Good Friday, Easter Monday: holidays on weekdays of its span (1 May is past it)
    assert "nor 3 holiday(s))" in got["BY"]["feedTimeliness"]["description"]
    assert (got["BY"]["feedVolume"]["status"], got["BY"]["feedVolume"]["not_applicable_reason"]) == ("passed", None)
    cal = days_off(site.feed_config("[feed]\ncountry = 'US'\nholidays = ['2026-12-24']"), {"x": {dt.date(2026, 7, 1): 1}})["x"]
    assert {dt.date(2026, 7, 3), dt.date(2026, 12, 24), dt.date(2026, 12, 25)} <= cal  # 4 July 2026, a Saturday: observed the Friday
    for text, message in (("[feed]\ncountry = 'Atlantis'", "country 'ATLANTIS' has no calendar of public holidays"),
                          ("[feed]\ncountry = 'DE'\nsubdivision = 'XX'", "subdivision 'XX' is not one of DE's: BB, BE"),
                          ("[feed]\nsubdivision = 'BY'", "subdivision 'BY' needs the country"),
                          ("[feed]\ncountry = 'DE'\n[feed.sources.x]\nsubdivision = 'CA'",
                           r"\[feed.sources.x\] subdivision 'CA' is not one of DE's"),
                          ("[feed.sources.x]\nsends_on_holiday = true", r"\[feed.sources.x\] takes country, subdivision"),
                          ("[feed]\nsources = ['x']", r"\[feed.sources.NAME\] are tables")):
        with pytest.raises(ValueError, match=message):
            site.feed_config(text, "site.toml")


def test_feed_checks_learn_each_sources_week():
    """Five weeks from Monday 2026-01-05: a weekday-only feed is not missing its weekends (but is its silent
    Wednesday), a feed with light weekends has no weekend volume drops (but has its low Tuesday), and a feed
    that went silent after two weeks is missing every day since, weekends included."""
    from medlake.quality.feeds import cadence, feed_results
    from medlake.quality.runner import result

    start = dt.date(2026, 1, 5)
    span = [start + dt.timedelta(days=i) for i in range(35)]
    wed, tue = dt.date(2026, 1, 21), dt.date(2026, 1, 27)
    per = {"lab": {d: 100 for d in span if d.weekday() < 5 and d != wed},
           "adt": {d: (20 if d.weekday() >= 5 else 30 if d == tue else 100) for d in span},
           "old": {d: 50 for d in span[:14]}}
    assert cadence(per["lab"], 0.5) == ((5, 6), (5, 6))
    assert cadence(per["adt"], 0.5) == ((), (5, 6))
    assert cadence(per["old"], 0.5) == ((), ())
    got = {(x["check_name"], x["data_source"]): x for x in feed_results(per, "landing", 0.5, result)}
    counts = {k: (v["num_violated_rows"], v["num_denominator_rows"], v["examples"]) for k, v in got.items()}
    assert counts[("feedTimeliness", "lab")] == (1, 25, ["2026-01-21"])
    assert counts[("feedVolume", "lab")] == (0, 21, [])
    assert counts[("feedTimeliness", "adt")] == (0, 35, [])
    assert counts[("feedVolume", "adt")] == (1, 22 + 7, ["2026-01-27"])  # 22 weekdays after the first 3, 7 weekend days after 3
    assert counts[("feedTimeliness", "old")][:2] == (21, 35)
    assert "(not counting Saturdays and Sundays: it sends on fewer than 1 in 5 of them)" in got[
        "feedTimeliness", "lab"]["description"]
    assert "(Saturdays and Sundays, its quiet days, are judged" in got["feedVolume", "adt"]["description"]
    # each source's days for the report's chart: what it sent, and a letter a day
    lab = got["feedVolume", "lab"]
    assert (lab["daily_from"], lab["daily_counts"][:7]) == ("2026-01-05", [100] * 5 + [0, 0])
    assert lab["daily_marks"] == "".join("x" if d == wed else "-" if d.weekday() >= 5 else "." for d in span)
    assert got["feedVolume", "adt"]["daily_marks"] == "".join("v" if d == tue else "." for d in span)
    assert got["feedVolume", "old"]["daily_marks"] == "." * 14 + "x" * 21
    # the site's holidays: the silent Wednesday and the low Tuesday are neither missing nor a drop
    got = {(x["check_name"], x["data_source"]): x for x in feed_results(per, "landing", 0.5, result, {
        "lab": frozenset({wed, tue}), "adt": frozenset({wed, tue})})}
    assert (got["feedTimeliness", "lab"]["num_violated_rows"], got["feedTimeliness", "lab"]["num_denominator_rows"]) == (0, 23)  # 25 weekdays, 2 holidays
    assert (got["feedVolume", "adt"]["num_violated_rows"], got["feedVolume", "adt"]["num_denominator_rows"]) == (0, 20 + 7 + 2)  # 23 weekdays, 3 first; a 7-day feed's holidays judged as its quiet days (review-src #5)


def test_feed_table_of_the_sites_own_with_its_calendar(engine):
    """On DuckDB, PostgreSQL and Spark: a site's interface-engine log ([feed] table, its own column names), a French
    LIS silent on New Year's Day (a public holiday) and on 5 January (not one), a HIS whose 9 January is a drop."""
    from medlake.quality.feeds import run_feeds
    from medlake.quality.runner import result

    days = [dt.date(2023, 12, 28) + dt.timedelta(days=i) for i in range(14)]  # to 10 January
    rows = [("LIS", d, 4) for d in days if d not in (dt.date(2024, 1, 1), dt.date(2024, 1, 5))]
    rows += [("HIS", d, 2 if d == dt.date(2024, 1, 9) else 10) for d in days]
    engine.execute("CREATE TABLE msg_log (sender VARCHAR, got TIMESTAMP, n INTEGER)")
    engine.execute("INSERT INTO msg_log VALUES " + ", ".join(
        f"('{src}', TIMESTAMP '{d} {h:02d}:30:00', {i})" for src, d, n in rows for i, h in enumerate(range(8, 8 + n))))
    base = "[feed]\ntable = 'MSG_LOG'\nsource = 'sender'\nreceived_at = 'got'\n"
    got = {}
    for name, extra in (("plain", ""), ("FR", "country = 'FR'\n")):
        got[name] = {(x["check_name"], x["data_source"]): x for x in run_feeds(engine, site.feed_config(base + extra), result)}
    lis = {k: (v["feedTimeliness", "LIS"]["num_violated_rows"], v["feedTimeliness", "LIS"]["num_denominator_rows"],
               v["feedTimeliness", "LIS"]["examples"]) for k, v in got.items()}
    assert lis == {"plain": (2, 14, ["2024-01-05", "2024-01-01"]), "FR": (1, 13, ["2024-01-05"])}
    assert [got[k]["feedVolume", "HIS"]["examples"] for k in got] == [["2024-01-09"]] * 2
    assert got["FR"]["feedVolume", "HIS"]["num_denominator_rows"] == 14 - 1 - 3  # New Year's Day not judged; 3 first


def test_records_without_their_key_repeat_no_record(engine, tmp_path):
    """Messages without a control id were one group of duplicates, their example None (the HTML report then failed
    with a TypeError): they miss a mandatory field, which is counted; a repeated key still is."""
    from medlake.quality import report
    from medlake.quality.feeds import run_sources
    from medlake.quality.runner import result

    store.init(engine, "5.4")
    engine.execute("CREATE TABLE stg_hl7_message (control_id VARCHAR, message_type VARCHAR, message_time TIMESTAMP, "
                   "sending_facility VARCHAR, source VARCHAR)")
    engine.execute("INSERT INTO stg_hl7_message VALUES " + ", ".join(
        f"({cid}, 'ADT^A01', TIMESTAMP '2024-01-01 10:00:00', 'H1', 'ed')" for cid in ("NULL", "NULL", "'M1'", "'M1'")))
    got = {(x["check_name"], x["cdm_field"]): x for x in run_sources(engine, result, tmp_path / "landing")
           if x["data_source"] == "ed"}
    dup = got["sourceDuplicateRecords", "control_id"]
    assert (dup["num_violated_rows"], dup["num_denominator_rows"], dup["examples"]) == (1, 4, ["M1"])
    assert got["sourceMandatoryCompleteness", "control_id"]["num_violated_rows"] == 2
    assert "M1" in "".join(report._row(x) for x in got.values())

    # a FHIR resource sent twice without meta.versionId: its key's second part is absent, still a repeat
    engine.execute("CREATE TABLE stg_fhir_condition (resource_id VARCHAR, version_id VARCHAR, source VARCHAR)")
    engine.execute("INSERT INTO stg_fhir_condition VALUES ('c1', NULL, 'emr'), ('c1', NULL, 'emr'), "
                   "('c2', '1', 'emr'), ('c2', '2', 'emr'), (NULL, NULL, 'emr')")
    got = {(x["check_name"], x["cdm_table"]): x for x in run_sources(engine, result, tmp_path / "landing")
           if x["data_source"] == "emr"}
    dup = got["sourceDuplicateRecords", "stg_fhir_condition"]
    assert (dup["num_violated_rows"], dup["num_denominator_rows"], dup["examples"]) == (1, 5, ["c1"])


def test_source_checks_count_missing_fields_duplicates_quarantine_and_unmapped_rows(engine, tmp_path):
    """On DuckDB, PostgreSQL and Spark (the `engine` fixture): the same counts."""
    from medlake.landing import Landing
    from medlake.landing.quarantine import Quarantine
    from medlake.quality.feeds import odd_unit_rows, run_sources
    from medlake.quality.runner import result
    from medlake.sources.records import Loc, Rejected

    eng = engine
    store.init(eng, "5.4")
    eng.execute("INSERT INTO concept VALUES (3004410, 'HbA1c', 'Measurement', 'LOINC', 'Lab Test', 'S', '4548-4', "
                "DATE '1970-01-01', DATE '2099-12-31', NULL), (2000000001, 'local', 'Measurement', 'L', 'Lab Test', "
                "NULL, 'X1', DATE '1970-01-01', DATE '2099-12-31', NULL)")
    eng.execute("CREATE TABLE stg_hl7_message (control_id VARCHAR, message_type VARCHAR, message_time TIMESTAMP, "
                "sending_facility VARCHAR, source VARCHAR)")
    eng.execute("INSERT INTO stg_hl7_message VALUES ('M1', 'ORU^R01', TIMESTAMP '2024-01-01 10:00:00', 'H1', 'lis'), "
                "('M1', 'ORU^R01', TIMESTAMP '2024-01-01 10:00:00', 'H1', 'lis'), "   # sent twice
                "('M2', 'ORU^R01', NULL, 'H1', 'lis'), ('A1', 'ADT^A01', TIMESTAMP '2024-01-01 09:00:00', '  ', 'his')")  # spaces: blank
    eng.execute("CREATE TABLE cdm_lineage (cdm_table VARCHAR, row_id BIGINT, source VARCHAR, code_system VARCHAR, "
                "code VARCHAR, concept_id INTEGER)")
    eng.execute("INSERT INTO cdm_lineage VALUES ('measurement', 1, 'lis', 'LIS', 'A1C', 3004410), "
                "('measurement', 2, 'lis', 'LIS', 'X1', 2000000001), ('measurement', 3, 'lis', 'LIS', 'Q', 0), "
                "('measurement', 4, 'lis', 'LIS', 'Q', NULL), ('person', 5, 'his', NULL, NULL, NULL), "
                "('measurement', 6, 'lis', NULL, '1234', 0)")  # a code without its system (an HL7 CE's 3rd part empty)
    # unit consistency: lis sends HbA1c in percent (20 results) and once in mg/dL (a label from elsewhere)
    eng.execute("INSERT INTO measurement (measurement_id, person_id, measurement_concept_id, measurement_date, "
                "measurement_type_concept_id, value_as_number, unit_concept_id) VALUES "
                + ", ".join(f"({100 + i}, 1, 3004410, DATE '2024-01-01', 32817, 6.5, {8840 if i == 20 else 8554})"
                            for i in range(21)))
    eng.execute("INSERT INTO cdm_lineage VALUES " + ", ".join(f"('measurement', {100 + i}, 'lis', 'LIS', 'A1C', 3004410)"
                                                             for i in range(21)))
    eng.execute("CREATE TABLE ingest_log (source VARCHAR, records BIGINT, quarantined BIGINT)")
    eng.execute("INSERT INTO ingest_log VALUES ('lis', 3, 1), ('his', 1, 0)")
    land, quar = Landing(tmp_path / "landing"), Quarantine(tmp_path / "landing")
    r = land.put(b"MSH|1", "lis")
    land.put(b"MSH|1", "lis")  # the same file again: a landing duplicate
    land.put(b"MSH|2", "his")
    quar.add_many("lis", r.seq, r.sha256, [Rejected(Loc(file="f", line=3), "missing_mandatory", "PID-3 empty")])
    land.close()
    quar.close()

    got = {(x["check_name"], x["data_source"], x["cdm_table"], x["cdm_field"]): x
           for x in run_sources(eng, result, tmp_path / "landing")}
    counts = {k: (v["num_violated_rows"], v["num_denominator_rows"], v["status"]) for k, v in got.items()}
    assert counts[("sourceMandatoryCompleteness", "lis", "stg_hl7_message", "message_time")] == (1, 3, "failed")
    assert counts[("sourceMandatoryCompleteness", "his", "stg_hl7_message", "sending_facility")] == (1, 1, "failed")
    late = got[("sourceMandatoryCompleteness", "lis", "stg_hl7_message", "message_time")]  # the records, by their id
    assert (late["examples"], late["example_field"]) == (["M2"], "control_id")
    assert got[("sourceMandatoryCompleteness", "his", "stg_hl7_message", "sending_facility")]["examples"] == ["A1"]
    assert counts[("sourceMandatoryCompleteness", "lis", "stg_hl7_message", "control_id")] == (0, 3, "passed")
    assert counts[("sourceDuplicateRecords", "lis", "stg_hl7_message", "control_id")] == (1, 3, "failed")
    assert got[("sourceDuplicateRecords", "lis", "stg_hl7_message", "control_id")]["examples"] == ["M1"]
    assert counts[("sourceDuplicateRecords", "his", "stg_hl7_message", "control_id")] == (0, 1, "passed")
    assert counts[("sourceDuplicateReceipts", "lis", "landing", None)] == (1, 2, "failed")  # 50% > 5%
    assert counts[("sourceDuplicateReceipts", "his", "landing", None)] == (0, 1, "passed")
    assert counts[("sourceQuarantined", "lis", "quarantine", None)] == (1, 4, "failed")
    assert got[("sourceQuarantined", "lis", "quarantine", None)]["examples"] == ["missing_mandatory: 1"]
    # mapping coverage: a local non-standard concept, 0 and NULL are not standard; rows without a code don't count
    assert counts[("sourceMappingCoverage", "lis", "measurement", None)] == (4, 26, "failed")
    assert got[("sourceMappingCoverage", "lis", "measurement", None)]["examples"] == ["LIS|Q (2)", "1234 (1)",
                                                                                      "LIS|X1 (1)"]
    assert counts[("sourceUnitConsistency", "lis", "measurement", "unit_concept_id")] == (1, 21, "failed")
    assert odd_unit_rows(eng) == {"lis": [120]}
    assert ("sourceMappingCoverage", "his", "person", None) not in counts
    assert len({x["check_id"] for x in got.values()}) == len(got)
    html = "".join(report._sources(list(got.values())))
    assert "By source (2)" in html and "15.38% <small>(4 of 26)</small>" in html  # lis: rows without a standard concept

    # the site's own rules ([source_fields] in its checks TOML): sending_facility no longer mandatory (its mandatory
    # list replaces medlake's), a key of two fields, a staging table not in the store yet, a misspelt field
    fields = site.fields_config("[source_fields.stg_hl7_message]\nmandatory = ['control_id', 'message_time']\n"
                                "key = ['control_id', 'message_type']\n"
                                "[source_fields.stg_csv_lab]\nmandatory = ['order_id']\n"
                                "[source_fields.stg_hl7_message.when]\nsendng_facility = \"message_type LIKE 'ADT%'\"\n")
    got = {x["check_id"]: x for x in run_sources(eng, result, tmp_path / "landing", fields=fields)}
    mandatory = {k for k in got if k.startswith("source_sourcemandatorycompleteness_lis_stg_hl7_message")}
    assert mandatory == {f"source_sourcemandatorycompleteness_lis_stg_hl7_message_{f}" for f in ("control_id", "message_time")}
    dup = got["source_sourceduplicaterecords_lis_stg_hl7_message_control_id+message_type"]
    assert (dup["num_violated_rows"], dup["examples"]) == (1, ["M1"])
    lab = got["source_sourcemandatorycompleteness_site_stg_csv_lab"]
    assert lab["status"] == "not_applicable" and "not in the store" in lab["not_applicable_reason"]
    typo = got["source_sourcemandatorycompleteness_site_stg_hl7_message_sendng_facility"]
    assert typo["status"] == "error" and "sendng_facility is not a field of stg_hl7_message" in typo["error"]


def test_a_table_checked_for_long_is_said_every_minute(clean, tmp_path):
    """A slow query (a site predicate that scans for ever) is not silence in a pipeline's log: the table being
    checked is said after a minute, then every minute, with how long it has run."""
    said = []
    runner = Runner(clean, "5.4", tmp_path / "q", notice=said.append)
    runner._at = ("measurement", 3, 15)
    for now in (100.0, 130.0, 159.0):
        runner._beat(now)
    assert said == []
    runner._beat(160.0)
    assert said == ["measurement (table 4 of 15): still being checked after 60 s (a slow query: a site check's "
                    "predicate from --checks, a table larger than usual); Ctrl-C stops the run, which goes on from "
                    "the tables it finished"]
    runner._beat(200.0)
    runner._beat(220.0)
    assert len(said) == 2 and "after 120 s" in said[1]
    runner._at = ("person", 4, 15)  # the next table: its own minute
    runner._beat(250.0)
    assert len(said) == 2
    assert runner.run().summary["checks"]  # a run with the watch on ends (its thread stopped)
