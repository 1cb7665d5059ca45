import base64
import io
import json
from pathlib import Path

import pyarrow as pa
import pytest

from medlake.sources import fhir
from medlake.sources.records import Rejected, Staged, is_identifying

SHARED = Path(__file__).resolve().parents[3] / "shared" / "fhir"
SAMPLES = sorted(p for p in SHARED.glob("*/*") if p.suffix in (".json", ".ndjson"))


def read(data: bytes, name="f.ndjson"):
    return list(fhir.read(io.BytesIO(data), name))


def nd(*resources) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in resources)


PATIENT = {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3", "lastUpdated": "2024-01-02T03:04:05Z"},
           "name": [{"use": "official", "family": "Wang", "given": ["Xiu", "Ying"]}], "gender": "female",
           "birthDate": "1980-07", "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "MRN-7"}],
           "address": [{"city": "Hangzhou", "postalCode": "310000"}]}
OBS = {"resourceType": "Observation", "id": "o1", "status": "final",
       "code": {"coding": [{"system": "urn:lab", "code": "GLU", "display": "Glucose"}], "text": "glucose"},
       "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-03-01T08:30:00+08:00",
       "valueQuantity": {"value": 6.1, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}}


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_every_shared_sample_stages_without_rejections(path):
    with open(path, "rb") as f:
        recs = list(fhir.read(f, path.name))
    assert recs and all(isinstance(r, Staged) for r in recs), [r for r in recs if isinstance(r, Rejected)]
    for r in recs:  # every row fits its table's schema
        for table, rows in r.rows.items():
            pa.Table.from_pylist(rows, schema=fhir.STAGING_SCHEMAS[table])


def test_ndjson_rows_values_and_identifying_columns():
    recs = read(nd(PATIENT, OBS))
    (p, o) = recs
    row = p.rows["stg_fhir_patient"][0]
    assert (row["resource_id"], row["version_id"], row["gender"], str(row["birth_date"])) == \
        ("p1", "3", "female", "1980-07-01")
    assert (row["family_name"], row["given_names"], row["mrn"], row["address_city"]) == \
        ("Wang", "Xiu Ying", "MRN-7", "Hangzhou")
    assert str(row["last_updated"]) == "2024-01-02 03:04:05"
    assert (p.loc.line, p.loc.offset, o.loc.line) == (1, 0, 2)
    ob = o.rows["stg_fhir_observation"][0]
    assert (ob["code_system"], ob["code"], ob["code_display"], ob["subject_ref"]) == \
        ("urn:lab", "GLU", "Glucose", "Patient/p1")
    assert (ob["value_number"], ob["value_unit"], ob["value_unit_code"]) == (6.1, "mmol/L", "mmol/L")
    assert str(ob["effective_at"]) == "2024-03-01 08:30:00"  # wall-clock, offset dropped
    assert json.loads(ob["raw"]) == OBS
    assert o.rows["stg_fhir_coding"] == [{"resource_type": "Observation", "resource_id": "o1", "element": "code",
                                          "position": 0, "system": "urn:lab", "code": "GLU", "display": "Glucose",
                                          "text": "glucose", "coding_index": 0}]
    schema = fhir.STAGING_SCHEMAS["stg_fhir_patient"]
    marked = {f.name for f in schema if is_identifying(f)}
    assert {"family_name", "given_names", "birth_date", "mrn", "identifiers", "telecom", "address_line",
            "address_postal_code", "raw"} <= marked
    assert "gender" not in marked and "resource_id" not in marked


def test_a_component_quantity_keeps_its_comparator_and_unit_system():
    panel = {**OBS, "id": "o2", "valueQuantity": None, "component": [
        {"code": {"coding": [{"system": "http://loinc.org", "code": "2888-6"}]},
         "valueQuantity": {"value": 0.1, "comparator": "<", "unit": "g/L", "system": "http://unitsofmeasure.org",
                           "code": "g/L"}}]}
    del panel["valueQuantity"]
    [rec] = read(nd(panel))
    [k] = rec.rows["stg_fhir_observation_component"]
    assert (k["value_number"], k["value_comparator"], k["value_unit_system"], k["value_unit_code"]) == \
        (0.1, "<", "http://unitsofmeasure.org", "g/L")
    assert set(k) <= set(fhir.STAGING_SCHEMAS["stg_fhir_observation_component"].names)


def test_bad_records_are_rejected_with_line_and_json_path_and_the_rest_goes_on():
    no_status = {k: v for k, v in OBS.items() if k != "status"} | {"id": "o2"}
    bad_status = OBS | {"id": "o3", "status": "done"}
    bad_ref = OBS | {"id": "o4", "subject": {"reference": "Patinet/p1"}}
    bad_date = OBS | {"id": "o5", "effectiveDateTime": "2024-13-45"}
    no_subject = {k: v for k, v in OBS.items() if k != "subject"} | {"id": "o6"}
    data = nd(PATIENT, b'{"resourceType": "Patient", "id": ', no_status, bad_status, OBS, bad_ref, bad_date,
              no_subject, {"resourceType": "Alien", "id": "x"}) + b'{"resourceType":"Observation","id":"o9","sta'
    recs = read(data)
    got = [(r.loc.line, r.reason, r.loc.message_id, r.loc.field) for r in recs if isinstance(r, Rejected)]
    assert got == [
        (2, "bad_json", None, None),
        (3, "missing_mandatory", "o2", "Observation.status"),
        (4, "invalid", "o3", "Observation.status"),
        (6, "invalid", "o4", "Observation.subject.reference"),
        (7, "invalid", "o5", "Observation.effectiveDateTime"),
        (8, "missing_mandatory", "o6", "Observation.subject"),
        (9, "invalid", "x", "resourceType"),
        (10, "truncated", None, None),
    ]
    assert [r.loc.line for r in recs if isinstance(r, Staged)] == [1, 5]
    bad = next(r for r in recs if isinstance(r, Rejected) and r.loc.line == 4)
    assert json.loads(bad.raw)["status"] == "done"
    assert "'done' is not one of" in bad.detail


ENC = {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"},
       "subject": {"reference": "Patient/p1"}}
MEDREQ = {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
          "medicationCodeableConcept": {"coding": [{"code": "860975"}]}, "subject": {"reference": "Patient/p1"},
          "dosageInstruction": [{"timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}}}]}
ALLERGY = {"resourceType": "AllergyIntolerance", "id": "a1", "patient": {"reference": "Patient/p1"},
           "category": ["food"]}
DOC = {"resourceType": "DocumentReference", "id": "d1", "status": "current", "subject": {"reference": "Patient/p1"},
       "content": [{"attachment": {"contentType": "text/plain", "data": base64.b64encode(b"note").decode()}}]}


def _with(res: dict, path: str, value) -> dict:
    res = json.loads(json.dumps(res))
    *head, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    o = res
    for k in head:
        o = o[k]
    o[last] = value
    return res


@pytest.mark.parametrize("res, path, value, field, says", [
    # a value of the wrong JSON type: staged as it came, it was cast by Arrow (2.5 → 2, true → 1.0) or set aside
    # later as a staging row, apart from the resource's codings
    (OBS, "code.coding.0.code", 2339, "Observation.code.coding[0].code", "is a number (2339); FHIR has a string"),
    (PATIENT, "name.0.given", ["Xiu", 7], "Patient.name[0].given[1]", "is a number (7)"),
    (PATIENT, "address.0.postalCode", 310000, "Patient.address[0].postalCode", "is a number (310000)"),
    (PATIENT, "deceasedBoolean", "true", "Patient.deceasedBoolean", 'is a string ("true"); FHIR has true or false'),
    (MEDREQ, "dosageInstruction.0.timing.repeat.frequency", 2.5,
     "MedicationRequest.dosageInstruction[0].timing.repeat.frequency", "is a number (2.5); FHIR has an integer"),
    (OBS, "valueQuantity.unit", ["mmol/L"], "Observation.valueQuantity.unit", "is a list"),
    # the wrong type where the reader looks inside: it raised (TypeError, AttributeError) and the rest of the file
    # was set aside with it
    (ENC, "status", ["finished"], "Encounter.status", "['finished'] is not one of"),
    (PATIENT, "identifier", {"value": "MRN-7"}, "Patient.identifier", "is not a list"),
    (PATIENT, "extension", {"url": "x"}, "Patient.extension", "is not a list"),
    (DOC, "content.0.attachment", "note", "DocumentReference.content[0].attachment", "is not an Attachment"),
    (DOC, "content.0.attachment.contentType", 7, "DocumentReference.content[0].attachment.contentType",
     "is not a string"),
    (OBS | {"resourceType": "DiagnosticReport"}, "result", {"reference": "Observation/o1"},
     "DiagnosticReport.result", "is not a list of References"),
    (OBS, "component", {"code": {"text": "systolic"}}, "Observation.component", "is not a list"),
    # one object where FHIR repeats an element, or a string where it repeats objects: it was read as absent
    (PATIENT, "name", {"family": "Wang"}, "Patient.name", "is not a list"),
    (ALLERGY, "category", "food", "AllergyIntolerance.category", "is not a list"),
    (ENC, "participant", ["Practitioner/x"], "Encounter.participant[0]", "is not an object"),
])
def test_an_element_of_the_wrong_json_type_rejects_its_resource_by_path_and_the_file_goes_on(
        res, path, value, field, says):
    bad = _with(res, path, value)
    for recs, prefix in ((read(nd(bad, OBS)), ""),
                         (read(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
                             {"resource": bad}, {"resource": OBS}]}).encode(), "b.json"), "Bundle.entry[0].resource.")):
        assert [type(r) for r in recs] == [Rejected, Staged]
        assert (recs[0].reason, recs[0].loc.field) == ("invalid", prefix + field)
        assert says in recs[0].detail and json.loads(recs[0].raw) == bad
    assert isinstance(read(nd(res))[0], Staged)  # the same resource with the right type stages


def test_a_number_beyond_64_bits_is_refused_at_its_element_or_staged_as_the_decimal_it_is():
    """orjson reads whole numbers up to 2^64 - 1 as integers: staging's 64-bit columns cannot hold them."""
    big = 18446744073709551615
    bad = _with(DOC, "content.0.attachment.size", big)  # unsignedInt: 32-bit in FHIR R4
    rej, ok = read(nd(bad, _with(DOC, "content.0.attachment.size", 2**31 - 1) | {"id": "d2"}))
    assert (rej.reason, rej.loc.field) == ("invalid", "DocumentReference.content[0].attachment.size")
    assert "18446744073709551615, beyond FHIR's 32-bit integer range" in rej.detail
    assert ok.rows["stg_fhir_document_reference"][0]["content_size"] == 2**31 - 1
    (r,) = read(nd(_with(OBS, "valueQuantity.value", big)))  # a decimal: the float JSON's number is
    assert r.rows["stg_fhir_observation"][0]["value_number"] == float(big)
    pa.Table.from_pylist(r.rows["stg_fhir_observation"], schema=fhir.STAGING_SCHEMAS["stg_fhir_observation"])
    manifest = {"transactionTime": "2024-01-01T00:00:00Z", "request": "http://x/$export",
                "output": [{"type": "Patient", "url": "Patient.ndjson", "count": big}]}
    (m,) = read(json.dumps(manifest).encode(), "manifest.json")
    assert m.rows["stg_fhir_bulk_manifest"][0]["count"] is None


def test_what_the_reader_passes_over_does_not_stop_the_resource():
    # FHIR JSON puts null where a repeating primitive has only an extension (given + _given)
    (r,) = read(nd(_with(PATIENT, "name.0.given", ["Xiu", None]) | {"_given": [None, {"extension": []}]}))
    assert r.rows["stg_fhir_patient"][0]["given_names"] == "Xiu"
    # an identifier's type the visit number rule looks into, not a CodeableConcept
    (r,) = read(nd(ENC | {"identifier": [{"type": {"coding": 7}, "value": "V1"}]}))
    assert r.rows["stg_fhir_encounter"][0]["identifier_value"] == "V1"


def test_transaction_bundle_resolves_urn_uuid_references_and_ids_from_full_urls():
    pid = "urn:uuid:9a1b0c4e-0000-4000-8000-000000000001"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": pid, "resource": {"resourceType": "Patient", "gender": "male"},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:e1", "resource": OBS | {"id": "o1", "subject": {"reference": pid}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": OBS | {"id": "o2", "status": "nope"}},
        {"request": {"method": "DELETE", "url": "Patient/234"}},
    ]}
    recs = read(json.dumps(bundle, indent=2).encode(), "bundle.json")
    assert recs[0].rows["stg_fhir_patient"][0]["resource_id"] == "9a1b0c4e-0000-4000-8000-000000000001"
    assert recs[1].rows["stg_fhir_observation"][0]["subject_ref"] == "Patient/9a1b0c4e-0000-4000-8000-000000000001"
    assert isinstance(recs[2], Rejected) and recs[2].loc.field == "Bundle.entry[2].resource.Observation.status"
    assert recs[2].loc.key() == "Bundle.entry[2]"
    assert recs[3].rows["stg_fhir_other"][0]["request_method"] == "DELETE"


def test_whole_file_json_errors_and_manifest():
    (r,) = read(b'{\n  "resourceType": "Bundle",\n  "type": "collection",\n  "entry": [\n', "b.json")
    assert (r.reason, r.loc.key()) == ("truncated", "file")
    (r,) = read(b'{\n  "resourceType": "Patient",\n  "id": "p1",,\n}\n', "p.json")
    assert (r.reason, r.loc.line) == ("bad_json", 3)
    manifest = {"transactionTime": "2024-01-01T00:00:00Z", "request": "http://x/$export", "requiresAccessToken": False,
                "output": [{"type": "Patient", "url": "Patient.ndjson", "count": 2}], "error": []}
    (m,) = read(json.dumps(manifest, indent=1).encode(), "manifest.json")
    assert m.rows["stg_fhir_bulk_manifest"][0]["url"] == "Patient.ndjson"


def test_document_reference_text_is_decoded_and_bad_base64_rejected():
    doc = {"resourceType": "DocumentReference", "id": "d1", "status": "current", "subject": {"reference": "Patient/p1"},
           "content": [{"attachment": {"contentType": "text/plain; charset=utf-8",
                                       "data": base64.b64encode("主诉：头痛三天".encode()).decode()}}]}
    bad = json.loads(json.dumps(doc)) | {"id": "d2"}
    bad["content"][0]["attachment"]["data"] = "%%%not base64"
    ok, rej = read(nd(doc, bad))
    assert ok.rows["stg_fhir_document_reference"][0]["text"] == "主诉：头痛三天"
    assert rej.loc.field == "DocumentReference.content[0].attachment.data"
    assert is_identifying(fhir.STAGING_SCHEMAS["stg_fhir_document_reference"].field("text"))


def test_encounter_visit_number_and_coding_order():
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "IMP"},
           "subject": {"reference": "Patient/p1"},
           "identifier": [{"system": "urn:other", "value": "X-1"},
                          {"type": {"coding": [{"code": "VN"}]}, "system": "urn:his:visit", "value": "V42"}]}
    assert fhir.stage_resource(enc)["stg_fhir_encounter"][0]["identifier_value"] == "V42"  # the VN-typed one
    enc["identifier"] = [{"use": "secondary", "value": "S-1"}, {"use": "official", "value": "V43"}]
    assert fhir.stage_resource(enc)["stg_fhir_encounter"][0]["identifier_value"] == "V43"
    enc["identifier"] = [{"system": "urn:x"}]  # no value
    assert fhir.stage_resource(enc)["stg_fhir_encounter"][0]["identifier_value"] is None
    cond = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "urn:local", "code": "HT"}, {"system": "http://snomed.info/sct",
                                                                         "code": "59621000"}]}}
    codings = [(r["element"], r["position"], r["coding_index"], r["code"])
               for r in fhir.stage_resource(cond)["stg_fhir_coding"]]
    assert codings == [("code", 0, 0, "HT"), ("code", 0, 1, "59621000")]
