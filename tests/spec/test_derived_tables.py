"""Derived tables (observation period, condition, drug and dose eras): the same rows and ids on every engine."""
import datetime as dt

import pyarrow as pa

from medlake.cdm import ddl, model, store
from medlake.transform import derived

D = dt.date


def table(name, **cols):
    return ddl.arrow_table(model.load("5.4").table(name), cols)


def seed(engine):
    store.init(engine, "5.4")
    engine.load_arrow("concept", table("concept",
        concept_id=[1125315, 1127433, 201826, 40000001],
        concept_name=["acetaminophen", "acetaminophen 325 MG Oral Tablet", "Type 2 diabetes mellitus",
                      "acetaminophen 160 MG in 5 ML Oral Suspension"],
        domain_id=["Drug", "Drug", "Condition", "Drug"], vocabulary_id=["RxNorm", "RxNorm", "SNOMED", "RxNorm"],
        concept_class_id=["Ingredient", "Clinical Drug", "Disorder", "Clinical Drug"],
        standard_concept=["S", "S", "S", "S"],
        concept_code=["161", "313782", "44054006", "x-liquid"], valid_start_date=[D(1970, 1, 1)] * 4,
        valid_end_date=[D(2099, 12, 31)] * 4))
    engine.load_arrow("concept_ancestor", pa.table({
        "ancestor_concept_id": pa.array([1125315, 1125315, 1125315], pa.int32()),
        "descendant_concept_id": pa.array([1125315, 1127433, 40000001], pa.int32()),
        "min_levels_of_separation": pa.array([0, 1, 1], pa.int32()),
        "max_levels_of_separation": pa.array([0, 1, 1], pa.int32())}))
    # the tablet holds 325 mg; the suspension 160 mg per 5 mL (8576 mg, 8587 mL)
    engine.load_arrow("drug_strength", table("drug_strength",
        drug_concept_id=[1127433, 40000001], ingredient_concept_id=[1125315, 1125315],
        amount_value=[325.0, None], amount_unit_concept_id=[8576, None],
        numerator_value=[None, 160.0], numerator_unit_concept_id=[None, 8576],
        denominator_value=[None, 5.0], denominator_unit_concept_id=[None, 8587],
        valid_start_date=[D(1970, 1, 1)] * 2, valid_end_date=[D(2099, 12, 31)] * 2))
    #      person  start            end               -> era
    engine.load_arrow("condition_occurrence", table("condition_occurrence",
        condition_occurrence_id=[1, 2, 3, 4],
        person_id=[1, 1, 1, 2],
        condition_concept_id=[201826, 201826, 201826, 201826],
        condition_start_date=[D(2020, 1, 1), D(2020, 1, 20), D(2020, 3, 15), D(2022, 5, 5)],
        condition_end_date=[None, D(2020, 1, 25), None, D(2022, 5, 6)],
        condition_type_concept_id=[32817] * 4))
    #      person  drug      start       end         quantity  days supply  -> daily dose
    engine.load_arrow("drug_exposure", table("drug_exposure",
        drug_exposure_id=[1, 2, 3, 4, 5],
        person_id=[1, 1, 2, 2, 2],
        drug_concept_id=[1127433, 1127433, 40000001, 40000001, 40000001],
        drug_exposure_start_date=[D(2021, 1, 1), D(2021, 1, 25), D(2022, 2, 1), D(2022, 3, 1), D(2022, 3, 20)],
        drug_exposure_end_date=[D(2021, 1, 11), D(2021, 2, 3), D(2022, 2, 6), D(2022, 3, 6), D(2022, 3, 21)],
        quantity=[20.0, 18.0, 100.0, 50.0, None],  # tablets, tablets, mL, mL, unknown
        days_supply=[10, None, 5, 5, None],
        drug_type_concept_id=[32817] * 5))


def rows(engine, sql):
    return sorted(tuple(r.values()) for r in engine.query(sql).to_pylist())


def test_eras_and_observation_periods(engine):
    seed(engine)
    counts = derived.rebuild(engine)
    assert counts == {"observation_period": 2, "condition_era": 3, "drug_era": 2, "dose_era": 3}
    assert rows(engine, "SELECT person_id, condition_concept_id, condition_era_start_date, condition_era_end_date, "
                        "condition_occurrence_count FROM condition_era") == [
        (1, 201826, D(2020, 1, 1), D(2020, 1, 25), 2),   # 20 Jan starts within 30 days of 2 Jan
        (1, 201826, D(2020, 3, 15), D(2020, 3, 16), 1),  # more than 30 days after 25 Jan: a new era
        (2, 201826, D(2022, 5, 5), D(2022, 5, 6), 1),
    ]
    assert rows(engine, "SELECT person_id, drug_concept_id, drug_era_start_date, drug_era_end_date, "
                        "drug_exposure_count, gap_days FROM drug_era") == [
        (1, 1125315, D(2021, 1, 1), D(2021, 2, 3), 2, 14),  # rolled up to the ingredient; 33 days, 19 exposed
        (2, 1125315, D(2022, 2, 1), D(2022, 3, 21), 3, 37),  # 48 days, 11 exposed
    ]
    assert rows(engine, "SELECT person_id, drug_concept_id, unit_concept_id, dose_value, dose_era_start_date, "
                        "dose_era_end_date FROM dose_era") == [
        (1, 1125315, 8576, 650.0, D(2021, 1, 1), D(2021, 2, 3)),  # 325 mg x 20 / 10 days = 325 x 18 / 9 days
        (2, 1125315, 8576, 320.0, D(2022, 3, 1), D(2022, 3, 6)),  # 160 mg / 5 mL x 50 mL / 5 days: a new dose
        (2, 1125315, 8576, 640.0, D(2022, 2, 1), D(2022, 2, 6)),  # 160 mg / 5 mL x 100 mL / 5 days
    ]  # 20 March has no quantity: no known dose, no dose era (its drug era counts it)
    assert rows(engine, "SELECT person_id, observation_period_start_date, observation_period_end_date, "
                        "period_type_concept_id FROM observation_period") == [
        (1, D(2020, 1, 1), D(2021, 2, 3), 32817),
        (2, D(2022, 2, 1), D(2022, 5, 6), 32817),
    ]


def test_observation_period_ends_at_death(engine):
    seed(engine)  # person 2: drugs until 21 March 2022, a condition on 5-6 May 2022
    engine.load_arrow("death", table("death", person_id=[2], death_date=[D(2022, 4, 1)],
                                     death_type_concept_id=[32817]))
    derived.rebuild(engine)
    assert rows(engine, "SELECT person_id, observation_period_start_date, observation_period_end_date "
                        "FROM observation_period") == [
        (1, D(2020, 1, 1), D(2021, 2, 3)),  # no death: the last event
        (2, D(2022, 2, 1), D(2022, 4, 1)),  # records after death do not extend the observed time
    ]


def test_rebuild_for_touched_persons_only_and_ids_are_stable(engine):
    seed(engine)
    derived.rebuild(engine)
    before = rows(engine, "SELECT condition_era_id, person_id, condition_era_start_date FROM condition_era")
    doses = rows(engine, "SELECT dose_era_id, person_id, dose_value FROM dose_era")
    engine.load_arrow("condition_occurrence", table("condition_occurrence",
        condition_occurrence_id=[5], person_id=[2], condition_concept_id=[201826],
        condition_start_date=[D(2023, 1, 1)], condition_type_concept_id=[32817]))
    engine.execute("CREATE TABLE touched (person_id BIGINT)")
    engine.execute("INSERT INTO touched VALUES (2)")
    derived.rebuild(engine, persons="touched")
    after = rows(engine, "SELECT condition_era_id, person_id, condition_era_start_date FROM condition_era")
    assert [r for r in after if r[1] == 1] == [r for r in before if r[1] == 1]
    assert sorted(r[2] for r in after if r[1] == 2) == [D(2022, 5, 5), D(2023, 1, 1)]
    assert rows(engine, "SELECT dose_era_id, person_id, dose_value FROM dose_era") == doses  # rebuilt, same ids
    assert derived.rebuild(engine) and rows(engine, "SELECT condition_era_id, person_id, condition_era_start_date "
                                                    "FROM condition_era") == after  # a full rebuild agrees


def test_the_same_exposure_recorded_twice_is_one_era(engine):
    """An order in the EMR and its dispensing in the pharmacy feed: two exposures with the same drug and dates.
    They make one era of two exposures (not two eras of one with the same id, whatever order ties sort in)."""
    seed(engine)
    n = 300
    engine.load_arrow("drug_exposure", table("drug_exposure",
        drug_exposure_id=list(range(100, 100 + 2 * n)), person_id=[10 + i // 2 for i in range(2 * n)],
        drug_concept_id=[1127433] * (2 * n), drug_exposure_start_date=[D(2021, 6, 1)] * (2 * n),
        drug_exposure_end_date=[D(2021, 6, 30)] * (2 * n), drug_type_concept_id=[32817] * (2 * n)))
    derived.rebuild(engine)
    assert rows(engine, "SELECT count(*) AS n, count(DISTINCT drug_era_id) AS ids, min(drug_exposure_count) AS lo, "
                        "max(drug_exposure_count) AS hi FROM drug_era WHERE person_id >= 10") == [(n, n, 2, 2)]


def test_an_inferred_drug_end_stops_at_death_and_comes_back_when_the_death_goes(engine):
    """A 90-day supply dispensed a month before death: the end medlake inferred from the supply stops at the death
    (the exposure, its drug era and DQD's plausibleBeforeDeath agree); the source's own end, the supply, and an
    exposure started after the death stay. A death recorded later (a rebuild for the person) shortens it; a death
    taken back gives the inferred end again."""
    seed(engine)
    engine.load_arrow("drug_exposure", table("drug_exposure",
        drug_exposure_id=[20, 21, 22], person_id=[3, 3, 3], drug_concept_id=[1127433] * 3,
        drug_exposure_start_date=[D(2019, 10, 19), D(2019, 10, 1), D(2019, 12, 1)],
        drug_exposure_end_date=[D(2020, 1, 17), D(2020, 1, 1), D(2019, 12, 31)],
        verbatim_end_date=[None, D(2020, 1, 1), None],  # 21: the source said when it ended
        days_supply=[90, 92, 30], drug_type_concept_id=[32838] * 3))  # ends: start + supply, as the transform
    ends = "SELECT drug_exposure_id, drug_exposure_end_date, days_supply FROM drug_exposure WHERE person_id = 3"
    derived.rebuild(engine)
    assert rows(engine, ends) == [(20, D(2020, 1, 17), 90), (21, D(2020, 1, 1), 92), (22, D(2019, 12, 31), 30)]
    engine.load_arrow("death", table("death", person_id=[3], death_date=[D(2019, 11, 16)],
                                     death_type_concept_id=[32817]))
    engine.execute("CREATE TABLE touched (person_id BIGINT)")
    engine.execute("INSERT INTO touched VALUES (3)")
    derived.rebuild(engine, persons="touched")
    assert rows(engine, ends) == [(20, D(2019, 11, 16), 90), (21, D(2020, 1, 1), 92), (22, D(2019, 12, 31), 30)]
    assert rows(engine, "SELECT drug_era_start_date, drug_era_end_date, drug_exposure_count FROM drug_era "
                        "WHERE person_id = 3") == [(D(2019, 10, 1), D(2020, 1, 1), 3)]  # 21 and 22 run on
    engine.execute("DELETE FROM death")
    derived.rebuild(engine, persons="touched")
    assert rows(engine, ends) == [(20, D(2020, 1, 17), 90), (21, D(2020, 1, 1), 92), (22, D(2019, 12, 31), 30)]
