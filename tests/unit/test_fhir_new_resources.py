"""FHIR staging of the resources mapped for VISIT_DETAIL, DEVICE_EXPOSURE, SPECIMEN and PAYER_PLAN_PERIOD."""
import datetime as dt

from medlake.sources import fhir

T = dt.datetime


def test_encounter_locations_are_staged_with_their_periods():
    out = fhir.stage_resource({
        "resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "IMP"},
        "subject": {"reference": "Patient/p1"},
        "location": [{"location": {"reference": "Location/w1"}, "status": "completed",
                      "period": {"start": "2020-01-01T10:00:00", "end": "2020-01-03T10:00:00"}},
                     {"location": {"reference": "Location/icu"}, "period": {"start": "2020-01-03T10:00:00"}}]})
    assert out["stg_fhir_encounter"][0]["location_ref"] == "Location/w1"
    assert [(r["position"], r["location_ref"], r["status"], r["period_start"], r["period_end"])
            for r in out["stg_fhir_encounter_location"]] == [
        (0, "Location/w1", "completed", T(2020, 1, 1, 10), T(2020, 1, 3, 10)),
        (1, "Location/icu", None, T(2020, 1, 3, 10), None)]


def test_device_specimen_coverage_staging():
    dev = fhir.stage_resource({
        "resourceType": "Device", "id": "d1", "status": "active", "patient": {"reference": "Patient/p1"},
        "type": {"coding": [{"system": "http://snomed.info/sct", "code": "170615005"}]}, "lotNumber": "1106",
        "udiCarrier": [{"deviceIdentifier": "43856429819831", "carrierHRF": "(01)438…(21)2602796356"}],
        "manufactureDate": "2019-10-29T20:26:17+00:00"})["stg_fhir_device"][0]
    assert (dev["code"], dev["patient_ref"], dev["lot_number"], dev["udi_device_identifier"],
            dev["manufacture_date"], dev["expiration_date"]) == (
        "170615005", "Patient/p1", "1106", "43856429819831", T(2019, 10, 29, 20, 26, 17), None)
    spec = fhir.stage_resource({
        "resourceType": "Specimen", "id": "s1", "subject": {"reference": "Patient/p1"},
        "type": {"coding": [{"system": "http://snomed.info/sct", "code": "119297000"}]},
        "collection": {"collectedDateTime": "2019-03-15T09:30:00", "quantity": {"value": 5, "unit": "mL"},
                       "bodySite": {"coding": [{"system": "http://snomed.info/sct", "code": "368208006"}]}}})
    s = spec["stg_fhir_specimen"][0]
    assert (s["code"], s["collected_at"], s["quantity_value"], s["quantity_unit"], s["body_site_code"]) == (
        "119297000", T(2019, 3, 15, 9, 30), 5.0, "mL", "368208006")
    cov = fhir.stage_resource({
        "resourceType": "Coverage", "id": "c1", "status": "active", "beneficiary": {"reference": "Patient/p1"},
        "subscriberId": "S-123456", "period": {"start": "2018-01-01", "end": "2018-12-31"},
        "payor": [{"reference": "Organization/o1", "display": "Aetna"}], "type": {"text": "PPO"}})
    c = cov["stg_fhir_coverage"][0]
    assert (c["beneficiary_ref"], c["period_start"], c["payor_ref"], c["payor_display"], c["type_text"]) == (
        "Patient/p1", T(2018, 1, 1), "Organization/o1", "Aetna", "PPO")
    assert "S-123456" not in str({k: v for k, v in c.items() if k != "raw"})  # member ids are not staged as columns
    assert fhir.STAGING_SCHEMAS["stg_fhir_coverage"].field("raw").metadata == {b"identifying": b"true"}
