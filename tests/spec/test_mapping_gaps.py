"""The gap inventory on every engine: the same codes, statuses, people and median values (MEDIAN is
transpiled per engine)."""
from medlake.cdm import store
from medlake.mapping import gaps

from test_transform import T, batch1, stage, vocab


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
        "mapped", 3004410, "vocabulary", 6.5)
    assert inv[("urn:local", "X1")].status == "gap"
    pharm = inv[("H1PHARM", "Y100147")]
    assert (pharm.status, pharm.target_concept_id, pharm.via) == ("mapped", 1127433, "source_to_concept_map")
    assert inv[("http://hl7.org/fhir/sid/icd-10-cm", "I10")].target_concept_id == 320128
    # most rows first
    assert [c.rows for c in inv.values()] == sorted((c.rows for c in inv.values()), reverse=True)
