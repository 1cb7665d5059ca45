"""The gap inventory on every engine: the same codes, statuses, people and median values (MEDIAN is
transpiled per engine)."""
from medlake.cdm import store
from medlake.mapping import gaps, review, suggest
from medlake.transform.run import transform

from test_transform import NS, T, batch1, hba1c_results, stage, vocab


def test_gap_inventory_same_on_every_engine(engine):
    store.init(engine, "5.4")
    vocab(engine)
    batch1(engine)
    stage(engine, "stg_hl7_observation", "lis", 2, [  # a local lab code, three results, two patients
        dict(control_id=f"L{i}", message_type="ORU^R01", event_time=T(2021, 6, i), patient_id=p,
             code="GLU-F", code_system="L", code_text="血糖(空腹)", value_type="NM", value_number=v,
             units="mmol/L", observation_time=T(2021, 6, i, 7), result_status="F")
        for i, (p, v) in enumerate([("M1", 5.0), ("M2", 7.0), ("M2", 6.0)], start=2)])
    inv = {(c.code_system, c.code): c for c in gaps.inventory(engine)}

    glu = inv[("L", "GLU-F")]
    assert (glu.status, glu.kind, glu.rows, glu.n_persons) == ("gap", "lab", 3, 2)
    assert (glu.unit, glu.value_median, glu.display) == ("mmol/L", 6.0, "血糖(空腹)")
    hba1c = inv[("LN", "4548-4")]
    assert (hba1c.status, hba1c.target_concept_id, hba1c.via, hba1c.value_median) == (
        "mapped", 3004410, "vocabulary", 7.0)  # batch1's HbA1c result
    assert inv[("urn:local", "X1")].status == "gap"
    pharm = inv[("H1PHARM", "Y100147")]
    assert (pharm.status, pharm.target_concept_id, pharm.via) == ("mapped", 1127433, "source_to_concept_map")
    assert inv[("http://hl7.org/fhir/sid/icd-10-cm", "I10")].target_concept_id == 320128
    # most rows first
    assert [c.rows for c in inv.values()] == sorted((c.rows for c in inv.values()), reverse=True)


def test_unit_spellings_are_gaps_the_suggester_maps_and_the_transform_then_uses(engine):
    """A unit as a hospital writes it ('％', 'percent') is a gap of kind unit under the system the transform looks
    it up with (UCUM when the feed names none, a FHIR Quantity too); the suggester reads it as UCUM %, auto-accept
    records it, and the next transform re-maps the rows already in the CDM from 0 to the unit's concept."""
    store.init(engine, "5.4")
    vocab(engine)
    hba1c_results(engine, ["%", "％", "％", "percent", "bananas"])
    stage(engine, "stg_fhir_patient", "emr", 1, [dict(resource_id="p1", gender="female", mrn="M1")])
    stage(engine, "stg_fhir_observation", "emr", 1, [
        dict(resource_id="o1", status="final", code_system="http://loinc.org", code="4548-4",
             subject_ref="Patient/p1", effective_at=T(2021, 5, 3, 7), value_number=6.1, value_unit="％")])
    transform(engine, namespaces=NS)
    units = "SELECT unit_source_value AS u, unit_concept_id AS c, count(*) AS n FROM measurement GROUP BY 1, 2"
    assert {(r["u"], r["c"], r["n"]) for r in engine.query(units).to_pylist()} == {
        ("%", 8554, 1), ("％", 0, 3), ("percent", 0, 1), ("bananas", 0, 1)}

    inv = {(c.code_system, c.code): c for c in gaps.inventory(engine)}
    assert (inv[("UCUM", "%")].status, inv[("UCUM", "%")].via) == ("mapped", "vocabulary")
    assert {k: (c.kind, c.status, c.rows, c.n_persons) for k, c in inv.items()
            if c.kind == "unit" and c.status == "gap"} == {
        ("UCUM", "％"): ("unit", "gap", 2, 1), ("UCUM", "percent"): ("unit", "gap", 1, 1),
        ("UCUM", "bananas"): ("unit", "gap", 1, 1), ("http://unitsofmeasure.org", "％"): ("unit", "gap", 1, 1)}
    cov = gaps.coverage(list(inv.values()))  # units apart: a unit belongs to a result already counted as a lab
    assert (cov["unit"]["rows"], cov["unit"]["mapped_rows"]) == (6, 1)
    assert cov["all"]["rows"] == sum(v["rows"] for k, v in cov.items() if k not in ("all", "unit"))
    got = suggest.refresh(engine)
    top = {(c.code_system, c.code): got[c.gap_id][0] if got[c.gap_id] else None for c in inv.values()
           if c.status == "gap" and c.kind == "unit"}
    assert top[("UCUM", "bananas")] is None
    assert {k: (s.concept_id, s.score) for k, s in top.items() if s} == {  # 'percent' is also the concept's name
        ("UCUM", "％"): (8554, 0.95), ("UCUM", "percent"): (8554, 0.97), ("http://unitsofmeasure.org", "％"): (8554, 0.95)}
    assert "is UCUM %" in top[("UCUM", "％")].evidence[0]
    assert len(review.auto_accept(engine, 0.9)) == 3

    transform(engine, namespaces=NS)
    assert {(r["u"], r["c"], r["n"]) for r in engine.query(units).to_pylist()} == {
        ("%", 8554, 1), ("％", 8554, 3), ("percent", 8554, 1), ("bananas", 0, 1)}
