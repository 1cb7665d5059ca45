"""Incremental transform on every engine: a re-run changes nothing; an accepted (then rejected) site mapping re-maps
only the rows carrying that code; an A08 updates its visit; a changed EMPI person map moves the source patient's
rows to the new person and rebuilds both persons' derived rows. Rows not involved keep their ids and the run that
wrote them."""
import datetime as dt

import pyarrow as pa

from medlake.cdm import store
from medlake.mapping import review
from medlake.transform.run import transform
from test_transform import NS, D, T, batch1, rows, sid, stage, vocab

LINEAGE = "SELECT cdm_table, row_id, source_key, run_id FROM cdm_lineage"


def test_rerun_and_an_accepted_mapping_remaps_only_its_rows(engine):
    store.init(engine, "5.4")
    vocab(engine)
    batch1(engine)
    transform(engine, namespaces=NS)
    lineage = rows(engine, LINEAGE)
    again = transform(engine, namespaces=NS)  # nothing new: no run, nothing changes
    assert again.run_id is None and rows(engine, LINEAGE) == lineage

    # the reviewer maps the local code X1 of Condition c4 (concept 0 so far) to essential hypertension
    x1 = review.Target("urn:local", "local", "X1", "local hypertension")
    review.decide(engine, x1, "accepted", 320128, by="test", today=dt.date(2024, 1, 1))
    s = transform(engine, namespaces=NS)
    assert s.run_id == 2 and s.records == 1  # only Condition c4
    old_c4, new_c4 = (sid(f"condition_occurrence|fhir.condition|emr|Condition/c4|{c}") for c in (0, 320128))
    assert rows(engine, "SELECT condition_occurrence_id, condition_concept_id, condition_source_value "
                        "FROM condition_occurrence WHERE condition_start_date = DATE '2020-04-01'") == [
        (new_c4, 320128, "X1")]
    person = sid("h1|M1")
    # the person's condition era is rebuilt: c1 (January) and c4 (April) are two eras of 320128
    assert rows(engine, "SELECT person_id, condition_concept_id, condition_era_start_date, condition_occurrence_count "
                        "FROM condition_era") == [(person, 320128, D(2020, 1, 1), 1), (person, 320128, D(2020, 4, 1), 1)]
    assert rows(engine, "SELECT code FROM transform_gap") == []
    now = rows(engine, LINEAGE)
    unrelated = [x for x in lineage if x[2] != "fhir.condition|emr|Condition/c4" and x[0] not in ("person", "death")]
    assert unrelated and all(x in now for x in unrelated)  # same ids, same run id
    assert [x for x in now if x[2] == "fhir.condition|emr|Condition/c4"] == [
        ("condition_occurrence", new_c4, "fhir.condition|emr|Condition/c4", 2)]

    # rejecting the mapping takes it away again: back to concept 0 and in the gap report
    review.decide(engine, x1, "rejected", 320128, by="test")
    s = transform(engine, namespaces=NS)
    assert s.records == 1
    assert rows(engine, "SELECT condition_occurrence_id, condition_concept_id FROM condition_occurrence "
                        "WHERE condition_start_date = DATE '2020-04-01'") == [(old_c4, 0)]
    assert rows(engine, "SELECT code, n_rows FROM transform_gap") == [("X1", 1)]
    assert all(x in rows(engine, LINEAGE) for x in unrelated)


def test_a_record_moved_to_another_patient_keeps_the_old_person(engine):
    """A corrected dispensing names another patient: the record moves; the old person, touched, keeps its PERSON
    row (rebuilt from all of its records, not only the new ones)."""
    store.init(engine, "5.4")
    vocab(engine)
    batch1(engine)
    transform(engine, namespaces=NS)
    person = sid("h1|M1")
    stage(engine, "stg_csv_pharmacy", "pharmacy", 3, [
        dict(record_id="RX1", patient_id="M9", visit_id="V9", drug_code="Y100147", drug_code_system="H1PHARM",
             quantity=90.0, days_supply=30, dispensed_at=T(2021, 5, 3, 15))])
    s = transform(engine, namespaces=NS)
    assert s.records == 1
    assert rows(engine, "SELECT person_id, drug_concept_id FROM drug_exposure") == [(sid("h1|M9"), 1127433)]
    assert rows(engine, "SELECT person_id, year_of_birth FROM person") == [(person, 1965)]
    assert rows(engine, "SELECT person_id, drug_concept_id FROM drug_era") == [(sid("h1|M9"), 1125315)]
    assert rows(engine, "SELECT person_id, observation_period_end_date FROM observation_period") == sorted([
        (person, D(2021, 5, 2)), (sid("h1|M9"), D(2021, 6, 2))])


def test_the_gap_report_moves_with_the_rows_replaced_and_written(engine):
    """An incremental run moves the unmapped-code counts by the rows it replaced and wrote (no recount over the
    lineage): the same counts as a full re-map."""
    store.init(engine, "5.4")
    vocab(engine)
    batch1(engine)
    transform(engine, namespaces=NS)
    gap = "SELECT source, rule, code_system, code, vocabulary_id, n_rows FROM transform_gap"
    assert [(x[3], x[5]) for x in rows(engine, gap)] == [("X1", 1)]

    def dispensing(record_id, code):
        return dict(record_id=record_id, patient_id="M1", visit_id="V9", drug_code=code, drug_code_system="H1PHARM",
                    quantity=90.0, days_supply=30, dispensed_at=T(2021, 5, 3, 15))

    # RX1 corrected to a local code no one has mapped, RX2 new with it: two rows in the gap
    stage(engine, "stg_csv_pharmacy", "pharmacy", 2, [dispensing("RX1", "LOC9"), dispensing("RX2", "LOC9")])
    assert transform(engine, namespaces=NS).records == 2
    assert sorted((x[3], x[5]) for x in rows(engine, gap)) == [("LOC9", 2), ("X1", 1)]
    # RX1 corrected back: one left
    stage(engine, "stg_csv_pharmacy", "pharmacy", 3, [dispensing("RX1", "Y100147")])
    transform(engine, namespaces=NS)
    moved = rows(engine, gap)
    assert sorted((x[3], x[5]) for x in moved) == [("LOC9", 1), ("X1", 1)]
    transform(engine, namespaces=NS, full=True)
    assert rows(engine, gap) == moved


def empi(engine, mapping: dict):
    engine.execute("CREATE TABLE IF NOT EXISTS empi_person_map (source VARCHAR NOT NULL, source_id VARCHAR NOT NULL, "
                   "person_id BIGINT NOT NULL)")
    engine.execute("DELETE FROM empi_person_map")
    engine.load_arrow("empi_person_map", pa.table({
        "source": [k[0] for k in mapping], "source_id": [k[1] for k in mapping],
        "person_id": pa.array(list(mapping.values()), pa.int64())}))


def test_a08_and_an_empi_merge_remap_only_the_persons_involved(engine):
    store.init(engine, "5.4")
    vocab(engine)
    ns = {"his": "h1", "lis": "h1", "rx": "h1"}
    stage(engine, "stg_hl7_patient", "his", 1, [
        dict(control_id=f"A{i}", message_type="ADT^A01", event_time=T(2021, 5, i), patient_id=f"M{i}", sex="F",
             birth_date=D(1960 + i, 1, 1)) for i in (1, 2, 3)])
    stage(engine, "stg_hl7_visit", "his", 1, [
        dict(control_id=f"V{i}", message_type="ADT^A01", event_type="A01", event_time=T(2021, 5, i),
             patient_id=f"M{i}", visit_number=f"V{i}", patient_class="I", admit_time=T(2021, 5, i, 8))
        for i in (1, 2, 3)])
    stage(engine, "stg_hl7_observation", "lis", 1, [
        dict(control_id=f"L{i}", message_type="ORU^R01", event_time=T(2021, 6, i), patient_id=f"M{i}",
             filler_number=f"F{i}", code="4548-4", code_system="LN", value_number=6.0 + i, units="%",
             observation_time=T(2021, 6, i)) for i in (1, 2, 3)])
    # the pharmacy sends the hospital's MRN and is not registered in the EMPI: its rows take the person the EMPI gave
    # that MRN in the hospital (namespace h1); an MRN the EMPI does not know keeps the namespace's own id
    stage(engine, "stg_csv_pharmacy", "rx", 1, [
        dict(record_id=f"RX{i}", patient_id=m, drug_code="Y100147", drug_code_system="urn:medlake:h1:pharmacy",
             quantity=30.0, dispensed_at=T(2021, 7, i)) for i, m in ((1, "M1"), (2, "M2"), (3, "M9"))])
    empi(engine, {("his", "M1"): 101, ("lis", "M1"): 101, ("his", "M2"): 102, ("lis", "M2"): 102,
                  ("his", "M3"): 103, ("lis", "M3"): 103})
    transform(engine, namespaces=ns)
    assert rows(engine, "SELECT person_id, year_of_birth FROM person") == [(101, 1961), (102, 1962), (103, 1963)]
    assert rows(engine, "SELECT person_id FROM drug_exposure") == sorted([(101,), (102,), (sid("h1|M9"),)])
    lineage = rows(engine, LINEAGE)
    m3 = [x for x in lineage if x[0] not in ("person", "death") and ("|V3" in x[2] or "|F3|" in x[2])]
    assert len(m3) == 2  # M3's visit and lab result

    # an A08 discharges M1's visit: only that visit is re-mapped
    stage(engine, "stg_hl7_visit", "his", 2, [
        dict(control_id="V1b", message_type="ADT^A08", event_type="A08", event_time=T(2021, 5, 9), patient_id="M1",
             visit_number="V1", patient_class="I", admit_time=T(2021, 5, 1, 8), discharge_time=T(2021, 5, 9, 12))])
    s = transform(engine, namespaces=ns)
    assert s.records == 1
    assert rows(engine, "SELECT person_id, visit_end_date FROM visit_occurrence") == [
        (101, D(2021, 5, 9)), (102, D(2021, 5, 2)), (103, D(2021, 5, 3))]

    # a new EMPI run links M2 to M1: M2's records move to person 101, person 102 goes; M3 is untouched
    before_m3 = [x for x in rows(engine, LINEAGE) if x in m3]
    empi(engine, {("his", "M1"): 101, ("lis", "M1"): 101, ("his", "M2"): 101, ("lis", "M2"): 101,
                  ("his", "M3"): 103, ("lis", "M3"): 103})
    s = transform(engine, namespaces=ns)
    assert s.records == 4  # M2's patient record, visit, lab result and dispensing
    assert rows(engine, "SELECT person_id FROM person") == [(101,), (103,)]
    assert rows(engine, "SELECT person_id FROM drug_exposure") == sorted([(101,), (101,), (sid("h1|M9"),)])
    assert rows(engine, "SELECT person_id, value_as_number FROM measurement") == [(101, 7.0), (101, 8.0), (103, 9.0)]
    assert rows(engine, "SELECT person_id, observation_period_start_date, observation_period_end_date "
                        "FROM observation_period") == sorted([(101, D(2021, 5, 1), D(2021, 7, 2)),
                                                              (103, D(2021, 5, 3), D(2021, 6, 3)),
                                                              (sid("h1|M9"), D(2021, 7, 3), D(2021, 7, 3))])
    assert rows(engine, "SELECT count(*) FROM cdm_lineage WHERE person_id = 102") == [(0,)]
    assert before_m3 == m3 and all(x in rows(engine, LINEAGE) for x in m3)
    final = rows(engine, "SELECT measurement_id, person_id, value_as_number FROM measurement")
    dispensed = rows(engine, "SELECT drug_exposure_id, person_id FROM drug_exposure")
    assert transform(engine, namespaces=ns).run_id is None  # the change is applied once
    transform(engine, namespaces=ns, full=True)  # a full re-map agrees with the incremental result
    assert rows(engine, "SELECT measurement_id, person_id, value_as_number FROM measurement") == final
    assert rows(engine, "SELECT drug_exposure_id, person_id FROM drug_exposure") == dispensed
    assert rows(engine, "SELECT person_id FROM person") == [(101,), (103,)]


def test_only_a_source_the_empi_does_not_register_takes_the_empi_person_of_its_namespace(engine):
    """The pharmacy (not in the EMPI) takes the person the EMPI gave its MRN in the hospital; the LIS, which the
    EMPI registers, keeps to its own identities: an id the EMPI linked only for the HIS is no link for it (a source's
    id that equals another source's is not the same patient unless the EMPI says so)."""
    store.init(engine, "5.4")
    vocab(engine)
    ns = {"his": "h1", "lis": "h1", "rx": "h1"}
    stage(engine, "stg_hl7_observation", "lis", 1, [
        dict(control_id=f"L{m}", message_type="ORU^R01", event_time=T(2021, 6, 1), patient_id=m, filler_number=f"F{m}",
             code="4548-4", code_system="LN", value_number=6.0, units="%", observation_time=T(2021, 6, 1))
        for m in ("M1", "M5")])
    stage(engine, "stg_csv_pharmacy", "rx", 1, [
        dict(record_id=f"RX{m}", patient_id=m, drug_code="Y100147", drug_code_system="urn:medlake:h1:pharmacy",
             quantity=30.0, dispensed_at=T(2021, 7, 1)) for m in ("M1", "M5", "M9")])
    empi(engine, {("his", "M1"): 101, ("lis", "M1"): 101, ("his", "M5"): 105})
    transform(engine, namespaces=ns)
    assert rows(engine, "SELECT person_id FROM measurement") == sorted([(101,), (sid("h1|M5"),)])
    assert rows(engine, "SELECT person_id FROM drug_exposure") == sorted([(101,), (105,), (sid("h1|M9"),)])


def test_a_pharmacy_mrn_only_a_fhir_patient_carries_takes_the_empi_person_of_that_patient(engine):
    """The vault holds the FHIR Patient's MRN identifier (staging no longer does), and no HL7 source sent the patient:
    the EMPI keeps the MRN as the identity's alias (`empi_alias`), and the pharmacy's rows take its person — without
    it they had a person of their own, with no PERSON row. A changed alias re-maps those rows."""
    from medlake.identity import empi as empi_mod
    from medlake.transform.trace import patient_ids

    store.init(engine, "5.4")
    vocab(engine)
    ns = {"emr": "h1", "rx": "h1"}
    stage(engine, "stg_fhir_patient", "emr", 1, [dict(resource_id="p7", gender="female", birth_date=D(1970, 1, 1))])
    stage(engine, "stg_csv_pharmacy", "rx", 1, [
        dict(record_id=f"RX{m}", patient_id=m, drug_code="Y100147", drug_code_system="urn:medlake:h1:pharmacy",
             quantity=30.0, dispensed_at=T(2021, 7, 1)) for m in ("M7", "M8")])
    empi(engine, {("emr", "p7"): 107})
    empi_mod.ensure_tables(engine)
    engine.load_arrow("empi_alias", pa.table({"source": ["emr"], "source_id": ["p7"], "alias": ["M7"]}))
    transform(engine, namespaces=ns)
    assert rows(engine, "SELECT person_id FROM person") == [(107,)]
    assert rows(engine, "SELECT person_id, drug_source_value FROM drug_exposure") == sorted([
        (107, "Y100147"), (sid("h1|M8"), "Y100147")])
    # the MRN was mistyped in the EMR: corrected to M8, the dispensing for M8 is the patient's, M7's no longer
    engine.execute("DELETE FROM empi_alias")
    engine.load_arrow("empi_alias", pa.table({"source": ["emr"], "source_id": ["p7"], "alias": ["M8"]}))
    assert transform(engine, namespaces=ns).records == 2
    assert rows(engine, "SELECT person_id FROM drug_exposure") == sorted([(107,), (sid("h1|M7"),)])
    assert rows(engine, "SELECT person_id FROM observation_period") == sorted([(107,), (sid("h1|M7"),)])
    assert transform(engine, namespaces=ns).run_id is None  # the change is applied once
    assert patient_ids(engine, 107) == ["M8", "p7"]  # what `trace` looks for in the quarantine
    engine.execute("DELETE FROM empi_alias")
    engine.load_arrow("empi_alias", pa.table({"source": ["emr"], "source_id": ["p7"], "alias": ["M9"]}))
    assert patient_ids(engine, 107) == ["M8", "M9", "p7"]  # (before the next run: the EMPI's alias, no record yet)


def test_a_vocabulary_loaded_after_the_first_run_maps_the_records(engine):
    """Runs before any vocabulary was loaded leave every code unmapped; the first `medlake vocab load` after them
    counts as a release, and the next plain run maps the records its codes now reach — the CDM of a store whose
    vocabulary came first. Before, it took `--full`: the run saw no release."""
    store.init(engine, "5.4")
    batch1(engine)
    transform(engine, namespaces=NS)
    assert rows(engine, "SELECT condition_concept_id FROM condition_occurrence") == [(0,), (0,), (0,)]
    vocab(engine)
    s = transform(engine, namespaces=NS)
    assert s.vocabularies_changed == ["None"] and s.codes_changed >= 3
    cdm = ("condition_occurrence", "measurement", "drug_exposure", "person", "visit_occurrence", "drug_era")
    got = {t: rows(engine, f"SELECT * FROM {t}") for t in cdm}
    assert rows(engine, "SELECT condition_concept_id FROM condition_occurrence") == [(0,), (320128,)]
    transform(engine, namespaces=NS, full=True)
    assert {t: rows(engine, f"SELECT * FROM {t}") for t in cdm} == got
    engine.execute("DROP TABLE transform_applied_vocabulary")  # a store mapped before the releases were kept:
    assert transform(engine, namespaces=NS).vocabularies_changed == []  # taken as mapped with the one it has


def test_a_new_vocabulary_release_maps_again_the_records_whose_codes_it_changed(engine):
    """`medlake vocab load` of a new release changes what codes map to (ICD-10-CM R73 now maps to a condition, not
    a lab) and the drug hierarchy (acetaminophen tablets no longer under the ingredient): the next plain run sees
    the release changed, maps again the records whose codes now resolve differently — only those, with the same
    CDM as `--full` gives — and rebuilds every person's eras, also of persons none of whose records changed; the
    site's own code lists (`medlake map`) and a re-run do not count as a release. A store mapped before the code
    map was kept maps every record again."""
    from medlake.cdm import ddl
    from test_transform import CDM

    store.init(engine, "5.4")
    vocab(engine)
    batch1(engine)
    stage(engine, "stg_csv_pharmacy", "pharmacy", 2, [  # another patient, only this dispensing
        dict(record_id="RX2", patient_id="M2", drug_code="Y100147", drug_code_system="H1PHARM", quantity=30.0,
             days_supply=30, dispensed_at=T(2021, 6, 1, 9))])
    transform(engine, namespaces=NS)
    assert rows(engine, "SELECT person_id FROM drug_era") == sorted([(sid("h1|M1"),), (sid("h1|M2"),)])
    c2 = "SELECT count(*) FROM {} WHERE person_id = %d AND {}_date = DATE '2020-02-01'" % sid("h1|M1")
    assert rows(engine, c2.format("measurement", "measurement")) == [(1,)]

    x1 = review.Target("urn:local", "local", "X1", "local hypertension")  # a site code list: no release
    review.decide(engine, x1, "accepted", 320128, by="test", today=dt.date(2024, 1, 1))
    assert transform(engine, namespaces=NS).vocabularies_changed == []

    engine.execute("DELETE FROM vocabulary WHERE vocabulary_id = 'None'")
    engine.load_arrow("vocabulary", ddl.arrow_table(CDM.table("vocabulary"), dict(
        vocabulary_id=["None"], vocabulary_name=["OMOP Standardized Vocabularies"],
        vocabulary_version=["v5.0 31-AUG-26"], vocabulary_concept_id=[44819096])))
    engine.execute("DELETE FROM concept_relationship WHERE concept_id_1 = 45548980")
    engine.load_arrow("concept_relationship", ddl.arrow_table(CDM.table("concept_relationship"), dict(
        concept_id_1=[45548980], concept_id_2=[320128], relationship_id=["Maps to"],
        valid_start_date=[D(1970, 1, 1)], valid_end_date=[D(2099, 12, 31)])))
    engine.execute("DELETE FROM concept_ancestor")
    cdm = ("condition_occurrence", "measurement", "drug_exposure", "observation", "person", "visit_occurrence",
           "drug_era", "condition_era", "observation_period")
    s = transform(engine, namespaces=NS)
    assert s.vocabularies_changed == ["None"] and s.codes_changed == 1 and s.records == 1  # c2 alone
    assert rows(engine, c2.format("measurement", "measurement")) == [(0,)]
    assert rows(engine, c2.format("condition_occurrence", "condition_start")) == [(1,)]
    assert rows(engine, "SELECT count(*) FROM drug_era") == [(0,)]  # M2's too: no record of M2 changed
    got = {t: rows(engine, f"SELECT * FROM {t}") for t in cdm}
    assert transform(engine, namespaces=NS).run_id is None
    transform(engine, namespaces=NS, full=True)
    assert {t: rows(engine, f"SELECT * FROM {t}") for t in cdm} == got  # what a full re-map gives

    def release(version: str) -> None:
        engine.execute("DELETE FROM vocabulary WHERE vocabulary_id = 'None'")
        engine.load_arrow("vocabulary", ddl.arrow_table(CDM.table("vocabulary"), dict(
            vocabulary_id=["None"], vocabulary_name=["OMOP Standardized Vocabularies"],
            vocabulary_version=[version], vocabulary_concept_id=[44819096])))

    # a release that changes no code's mapping: no record is mapped again, the eras are rebuilt
    release("v5.0 30-SEP-26")
    engine.load_arrow("concept_ancestor", pa.table({
        "ancestor_concept_id": pa.array([1125315], pa.int32()), "descendant_concept_id": pa.array([1127433], pa.int32()),
        "min_levels_of_separation": pa.array([1], pa.int32()), "max_levels_of_separation": pa.array([1], pa.int32())}))
    s = transform(engine, namespaces=NS)
    assert (s.run_id, s.vocabularies_changed, s.codes_changed) == (None, ["None"], 0)
    assert rows(engine, "SELECT person_id FROM drug_era") == sorted([(sid("h1|M1"),), (sid("h1|M2"),)])
    got = {t: rows(engine, f"SELECT * FROM {t}") for t in cdm}

    # a store mapped before the code map was kept: the next release maps every record again
    engine.execute("DROP TABLE transform_code_map")
    release("v5.0 31-OCT-26")
    s = transform(engine, namespaces=NS)
    assert s.vocabularies_changed == ["None"] and s.codes_changed is None and s.records > 1
    assert {t: rows(engine, f"SELECT * FROM {t}") for t in cdm} == got
