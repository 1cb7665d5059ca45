"""Text every engine can store: a NUL character (PostgreSQL cannot hold one) is left out, the same on every engine."""
import json

from medlake.cdm import importer, store
from medlake.landing import Landing
from medlake.landing import ingest as ing
from medlake.landing.quarantine import Quarantine
from medlake.sources.config import Source


def test_a_nul_in_a_value_is_left_out_on_every_engine(engine, tmp_path):
    """Before, one NUL (a field padded with NUL bytes, JSON's \\u0000) failed the whole ingest or import on
    PostgreSQL ("invalid byte sequence for encoding UTF8: 0x00") and was kept on DuckDB and Spark."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "p.ndjson").write_text(
        json.dumps({"resourceType": "Patient", "id": "p1", "name": [{"family": "Wa\u0000ng"}]}) + "\n"
        + json.dumps({"resourceType": "Patient", "id": "p2", "name": [{"family": "Li"}]}) + "\n")
    (inbox / "m.hl7").write_bytes(b"MSH|^~\\&|LIS|H1|||20240305||ADT^A01|C1|P|2.5.1\r"
                                  b"PID|1||M1^^^H1^MR||ZHAO\x00\x00^WEI||19900307|F\r")
    (inbox / "rx.csv").write_bytes(b"rx,mrn,drug,when\nR1,M1,D\x0001,2024-03-01T08:00:00\n")
    pharmacy = Source(name="h1-pharmacy", kind="csv", system="pharmacy", path=inbox / "rx.csv",
                      columns={"record_id": "rx", "patient_id": "mrn", "drug_code": "drug", "dispensed_at": "when"})
    land, q = Landing(tmp_path / "landing"), Quarantine(tmp_path / "landing")
    s = ing.ingest(engine, land, q, [inbox / "p.ndjson", inbox / "m.hl7"], source_name="h1")
    assert s.total().records == 3 and not s.total().quarantined
    ing.ingest(engine, land, q, [inbox / "rx.csv"], sources=[pharmacy])
    assert sorted(engine.query("SELECT family_name FROM stg_fhir_patient").column(0).to_pylist()) == ["Li", "Wang"]
    assert engine.query("SELECT family_name FROM stg_hl7_patient").column(0).to_pylist() == ["ZHAO"]
    assert engine.query("SELECT drug_code FROM stg_csv_pharmacy").column(0).to_pylist() == ["D01"]

    store.init(engine, "5.4")
    cdm = tmp_path / "cdm"
    cdm.mkdir()
    (cdm / "person.csv").write_bytes(b"person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id,"
                                     b"person_source_value\n1,8507,1970,0,0,M\x001\n2,8532,1980,0,0,M2\n")
    [report] = importer.import_folder(engine, cdm, "5.4").values()
    assert sorted(engine.query("SELECT person_source_value FROM person").column(0).to_pylist()) == ["M1", "M2"]
    assert report.notes == {("person_source_value", "nul"): (1, f"{cdm / 'person.csv'}:2")}  # said, not silent
