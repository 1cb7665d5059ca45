"""Mappings as data: which staging rows become which CDM rows.

Every rule is declared here; `compile.py` turns it into SQL (DuckDB dialect, transpiled for PostgreSQL and Spark).
Expressions are SQL over one staging row `s` (with the ingest columns `source`, `receipt_seq`,
`landing_sha256`, `record_location`).

Three kinds of rule:

- `EventRule`: a clinical event with a code. The code resolves through the vocabulary (code system →
  vocabulary_id → source concept → `Maps to` standard concept, else SOURCE_TO_CONCEPT_MAP) and the row goes to
  the CDM table of the standard concept's domain (a Condition-coded row whose concept is a Measurement becomes
  a MEASUREMENT row). Unmapped codes get concept 0 and go to the rule's default table.
- `TableRule`: an entity with fixed columns (visits, providers, care sites, notes).
- `PersonRule`: demographics and death; many source records can name one person, the latest wins.

A rule's `key` names its source record within a source (a FHIR resource, an HL7 visit or result); the newest
version of a key wins (`order`), and the CDM row id is `stable_id(table|rule|source|key|concept)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field


def as_integer(expr: str) -> str:
    """A number as a CDM INTEGER; NULL outside INTEGER's range, where CAST would fail the whole run (a FHIR supply
    of 1e12 days; as text longer than its VARCHAR is cut: `compile.select_list`). The staging row keeps it."""
    return f"CASE WHEN round({expr}) BETWEEN -2147483648 AND 2147483647 THEN CAST({expr} AS INTEGER) END"


# A note's text is free text (staging marks it identifying or free_text: it names patients, relatives, staff): like
# every identifying staging value it stays out of the CDM, whether the EMPI has moved it into the vault yet or not
# (the CDM must not depend on that order). NOTE keeps what the note is (date, class, title, visit, author); the
# original is in the landing. note_text is NOT NULL: ''. Test: tests/unit/test_transform_rules.py.
NO_TEXT = "''"

LAST_DAY = "DATE '9999-12-31'"  # the last day every OMOP client (R, Python, Java, SQL Server) holds


def days_after(date: str, days: str) -> str:
    """`date` + `days` (an INTEGER), stopping at 9999-12-31: a supply of 2,147,483,647 days ran past every engine's
    last date (the run failed) and a day after 9999-12-31 is a date no client reads. NULL in, NULL out."""
    return f"CASE WHEN {days} > date_diff('day', {date}, {LAST_DAY}) THEN {LAST_DAY} ELSE {date} + {days} END"


# Type concepts (OMOP "Type Concept" vocabulary).
EHR = 32817
EHR_ENCOUNTER = 32827
EHR_PROBLEM_LIST = 32840
LAB = 32856
PRESCRIPTION = 32838
DISPENSING = 32825
ADMINISTRATION = 32818
SELF_REPORT = 32865

# The CDM table of each domain an event can be routed to.
DOMAIN_TABLE = {
    "Condition": "condition_occurrence", "Measurement": "measurement", "Observation": "observation",
    "Procedure": "procedure_occurrence", "Drug": "drug_exposure", "Device": "device_exposure",
}

# Code system (FHIR URI or HL7 v2 table 0396 name) → OMOP vocabulary_id. A site adds its own rows to the table
# `medlake_code_system`; a system listed nowhere is looked up under its own name (so a site's
# SOURCE_TO_CONCEPT_MAP can use it as source_vocabulary_id).
CODE_SYSTEMS = {
    "http://snomed.info/sct": "SNOMED", "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm", "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-9-cm": "ICD9CM", "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://hl7.org/fhir/sid/icd-10-pcs": "ICD10PCS", "http://hl7.org/fhir/sid/ndc": "NDC",
    "http://hl7.org/fhir/sid/cvx": "CVX", "http://www.ama-assn.org/go/cpt": "CPT4",
    "https://www.cms.gov/Medicare/Coding/place-of-service-codes": "CMS Place of Service",
    "http://unitsofmeasure.org": "UCUM", "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets": "HCPCS", "https://medlake.org/fhir/sid/icd-10-cn": "ICD10CN",
    "urn:oid:2.16.840.1.113883.6.1": "LOINC", "urn:oid:2.16.840.1.113883.6.96": "SNOMED",
    "urn:oid:2.16.840.1.113883.6.88": "RxNorm", "urn:oid:2.16.840.1.113883.12.292": "CVX",
    # HL7 v2 coding system names (table 0396)
    "LN": "LOINC", "LOINC": "LOINC", "SCT": "SNOMED", "SNM": "SNOMED", "SNOMED": "SNOMED", "SNOMEDCT": "SNOMED",
    "I10": "ICD10CM", "I10C": "ICD10CM", "ICD10CM": "ICD10CM", "ICD10": "ICD10", "I9CDX": "ICD9CM",
    "I9C": "ICD9CM", "I10P": "ICD10PCS", "RXNORM": "RxNorm", "RXN": "RxNorm", "CVX": "CVX", "NDC": "NDC",
    "UCUM": "UCUM", "ICD10CN": "ICD10CN", "ICD-10-CN": "ICD10CN", "C4": "CPT4", "CPT": "CPT4",
}

# -- small SQL helpers ---------------------------------------------------------------------------------------------


def case(expr: str, mapping: dict, default="NULL") -> str:
    """CASE expr WHEN k THEN v … END, for code → concept maps declared as dicts."""
    def lit(v):
        return f"'{v}'" if isinstance(v, str) else str(v)
    whens = " ".join(f"WHEN {lit(k)} THEN {lit(v)}" for k, v in mapping.items())
    return f"CASE {expr} {whens} ELSE {lit(default) if default != 'NULL' else 'NULL'} END"


def ref_id(col: str, rtype: str) -> str:
    """The id of a FHIR reference `Type/id` (NULL for another type)."""
    return f"CASE WHEN {col} LIKE '{rtype}/%' THEN substr({col}, {len(rtype) + 2}) END"


def fhir_ref(col: str, rtype: str) -> str:
    """A FHIR reference as a key, only when it points at `rtype`."""
    return f"CASE WHEN {col} LIKE '{rtype}/%' THEN {col} END"


GENDER = {"male": 8507, "female": 8532, "other": 8521, "unknown": 8551, "M": 8507, "F": 8532, "O": 8521,
          "U": 8551, "A": 8521, "N": 8551,
          "1": 8507, "2": 8532, "0": 8551, "9": 8551}  # GB/T 2261.1 (Chinese hospital systems)
RACE = {"2106-3": 8527, "2054-5": 8516, "2028-9": 8515, "1002-5": 8657, "2076-8": 8557, "UNK": 8552}
ETHNICITY = {"2135-2": 38003563, "2186-5": 38003564, "H": 38003563, "N": 38003564}
FHIR_VISIT = {"AMB": 9202, "IMP": 9201, "ACUTE": 9201, "NONAC": 42898160, "EMER": 9203, "SS": 8870, "HH": 581476,
              "FLD": 581476, "OBSENC": 9202, "VR": 722455, "PRENC": 9202, "ambulatory": 9202, "outpatient": 9202,
              "wellness": 9202, "inpatient": 9201, "emergency": 9203, "urgentcare": 8870, "hospice": 8546,
              "snf": 8676, "virtual": 722455}
HL7_VISIT = {"I": 9201, "O": 9202, "E": 9203, "P": 9202, "R": 9202, "B": 9202, "U": 0}
CONDITION_CATEGORY = {"encounter-diagnosis": EHR_ENCOUNTER, "problem-list-item": EHR_PROBLEM_LIST,
                      "health-concern": EHR}
VERIFICATION = {"confirmed": 32893, "provisional": 32899}
# FHIR organization-type (http://terminology.hl7.org/CodeSystem/organization-type) → place of service
ORGANIZATION_TYPE = {"prov": 8940, "dept": 4318944, "govt": 4195901, "team": 4217012}
# ISO 3166 country (alpha-2/alpha-3) → OMOP Geography concept; a site adds its own (unlisted: 0)
COUNTRY = {"US": 4330442, "USA": 4330442}
SNOMED_URI = "http://snomed.info/sct"
LANGUAGE = {"zh": 4182948, "zh-CN": 4182948, "en": 4180186, "en-US": 4180186}

# -- rule kinds ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Code:
    system: str
    code: str


@dataclass(frozen=True)
class EventRule:
    name: str
    staging: str
    key: str
    person: str                      # the source patient id (as the EMPI knows it)
    start: str                       # timestamp or date
    code: Code
    default_table: str
    type_concept: str | int = EHR
    person_ref: str | None = None    # the id as hashed for person_id without EMPI (default: person)
    where: str = "TRUE"
    order: str = "s.receipt_seq DESC, s.record_location DESC"
    routed: bool = True
    end: str = "NULL"
    source_value: str | None = None  # default: the code
    visit: str = "NULL"              # visit key in the source's namespace
    provider: str = "NULL"           # provider key
    message_id: str = "NULL"
    unit: Code | None = None
    value_code: Code | None = None
    values: dict = field(default_factory=dict)  # tx_event column -> expression
    from_sql: str | None = None      # a query to read instead of the staging table (same columns and more)
    where_if: tuple = ()             # (table, condition): a condition used only when that table exists
    visit_if: tuple = ()             # (table, visit key): a visit key used instead of `visit` when that table exists
    codings: tuple = ()              # FHIR (resource type, element, preferred vocabulary ids …): pick the coding


@dataclass(frozen=True)
class TableRule:
    name: str
    staging: str
    table: str
    key: str
    id: str                          # the row id, e.g. the visit id others refer to
    columns: dict                    # CDM column -> expression (unlisted columns are NULL)
    person: str | None = None
    person_ref: str | None = None
    where: str = "TRUE"
    order: str = "s.receipt_seq DESC, s.record_location DESC"
    message_id: str = "NULL"
    aggregates: dict = field(default_factory=dict)  # name -> aggregate over all versions of the key
    from_sql: str | None = None      # a query to read instead of the staging table (same columns and more)


@dataclass(frozen=True)
class PersonRule:
    name: str
    staging: str
    key: str
    person: str
    person_ref: str | None = None
    where: str = "TRUE"
    when: str = "NULL"               # timestamp of the record: the newest record of a person wins
    gender: str = "NULL"             # gender source value
    birth: str = "NULL"              # date
    race: str = "NULL"
    ethnicity: str = "NULL"
    death: str = "NULL"              # timestamp of death
    alive: str = "NULL"              # boolean: the record says the person is not dead (retracts its source's death)
    message_id: str = "NULL"


# -- FHIR R4 ---------------------------------------------------------------------------------------------------------
FHIR_PATIENT = "s.subject_ref"


# A CodeableConcept can carry several codings (staged in stg_fhir_coding): the event uses the first one that maps
# to a standard concept, preferring the domain's standard vocabularies; without one, the first coding.
_PREFER = {"Condition": ("SNOMED",), "Observation": ("LOINC", "SNOMED"), "Procedure": ("SNOMED",),
           "DiagnosticReport": ("LOINC", "SNOMED"), "Device": ("SNOMED",), "Specimen": ("SNOMED",),
           "Immunization": ("CVX", "RxNorm"), "AllergyIntolerance": ("SNOMED", "RxNorm")}
_ELEMENT = {"Immunization": "vaccineCode", "AllergyIntolerance": "code", "Device": "type", "Specimen": "type"}


def _fhir(rtype: str, **kw) -> dict:
    subj = kw.pop("subject", "s.subject_ref")
    if "codings" not in kw:  # an event rule (entity rules pass codings=None)
        el = _ELEMENT.get(rtype, "medicationCodeableConcept" if rtype.startswith("Medication") else "code")
        kw["codings"] = (rtype, el, *_PREFER.get(rtype, ("RxNorm", "NDC") if rtype.startswith("Medication")
                                                  else ()))
    elif kw["codings"] is None:
        del kw["codings"]
    return dict(key=f"'{rtype}/' || s.resource_id", person=ref_id(subj, "Patient"),
                person_ref=fhir_ref(subj, "Patient"), message_id=f"'{rtype}/' || s.resource_id",
                order="s.last_updated DESC NULLS LAST, s.receipt_seq DESC, s.record_location DESC", **kw)


_FHIR_CODE = Code("s.code_system", "s.code")
_FHIR_SV = "left(COALESCE(s.code_display, s.code, s.code_text), 50)"  # Condition: the display (as the IG cases)
_FHIR_SRC = "left(COALESCE(s.code, s.code_text), 50)"  # other events: the source code itself (OMOP convention)
# A panel (blood pressure …) has no value of its own: its components are the measurements.
_NOT_A_PANEL = ("NOT (s.value_number IS NULL AND s.value_code IS NULL AND s.value_string IS NULL AND "
                "s.value_boolean IS NULL AND EXISTS (SELECT 1 FROM stg_fhir_observation_component k WHERE "
                "k.source = s.source AND k.receipt_seq = s.receipt_seq AND k.record_location = s.record_location "
                "AND k.resource_id = s.resource_id))")
_PROVIDER = "CASE WHEN {c} LIKE 'Practitioner/%' OR {c} LIKE 'PractitionerRole/%' THEN {c} END"
# A FHIR visit's key is its Encounter's visit number (Encounter.identifier, staged as identifier_value) when it has
# one — the key HL7 v2 uses (PV1-19), so the HL7 visit and the FHIR Encounter of one stay are one VISIT_OCCURRENCE
# row — else the reference `Encounter/id`. Used only when the staging has that column (older stores lack it).
VISIT_NUMBER = "stg_fhir_encounter.identifier_value"
_ENC = fhir_ref("s.encounter_ref", "Encounter")
_ENC_VISIT = ((VISIT_NUMBER, f"COALESCE((SELECT max(x.identifier_value) FROM stg_fhir_encounter x WHERE "
                             f"x.source = s.source AND 'Encounter/' || x.resource_id = s.encounter_ref), {_ENC})"),)

FHIR_EVENTS = [
    EventRule(name="fhir.condition", staging="stg_fhir_condition", default_table="condition_occurrence",
              start="COALESCE(s.onset_at, s.recorded_date)", end="s.abatement_at", code=_FHIR_CODE,
              source_value=_FHIR_SV, visit=_ENC, visit_if=_ENC_VISIT,
              provider=_PROVIDER.format(c="COALESCE(s.asserter_ref, s.recorder_ref)"),
              where="COALESCE(s.verification_status, 'confirmed') NOT IN ('refuted', 'entered-in-error')",
              type_concept=f"COALESCE({case('s.category_code', CONDITION_CATEGORY)}, {EHR})",
              values={"status_concept_id": f"COALESCE({case('s.verification_status', VERIFICATION)}, "
                                           f"CASE WHEN s.clinical_status = 'resolved' THEN 32906 END, 0)",
                      "status_source_value": "s.clinical_status"},
              **_fhir("Condition")),
    EventRule(name="fhir.observation", staging="stg_fhir_observation",
              default_table="measurement", start="s.effective_at", code=_FHIR_CODE, source_value=_FHIR_SRC,
              visit=_ENC, visit_if=_ENC_VISIT, provider=_PROVIDER.format(c="s.performer_ref"),
              where="COALESCE(s.status, 'final') NOT IN ('entered-in-error', 'cancelled', 'registered')",
              unit=Code("COALESCE(s.value_unit_system, 'http://unitsofmeasure.org')",
                        "COALESCE(s.value_unit_code, s.value_unit)"),
              value_code=Code("s.value_code_system", "s.value_code"),
              values={"value_as_number": "s.value_number",
                      "unit_source_value": "COALESCE(s.value_unit_code, s.value_unit)",
                      "value_source_value": "left(COALESCE(s.value_code_display, s.value_code), 50)",
                      "range_low": "s.range_low", "range_high": "s.range_high",
                      "operator_source": "s.value_comparator"},
              where_if=(("stg_fhir_observation_component", _NOT_A_PANEL),),
              **_fhir("Observation")),
    EventRule(name="fhir.observation_component", staging="stg_fhir_observation_component",
              from_sql="(SELECT k.*, o.subject_ref, o.encounter_ref, o.effective_at, o.status, o.last_updated, "
                       "o.performer_ref FROM stg_fhir_observation_component k JOIN stg_fhir_observation o "
                       "ON o.source = k.source AND o.receipt_seq = k.receipt_seq AND o.record_location = "
                       "k.record_location AND o.resource_id = k.resource_id)",
              default_table="measurement", start="s.effective_at", code=_FHIR_CODE, source_value="s.code",
              visit=_ENC, visit_if=_ENC_VISIT, provider=_PROVIDER.format(c="s.performer_ref"),
              where="COALESCE(s.status, 'final') NOT IN ('entered-in-error', 'cancelled', 'registered') AND "
                    "(s.value_number IS NOT NULL OR s.value_code IS NOT NULL)",
              unit=Code("COALESCE(s.value_unit_system, 'http://unitsofmeasure.org')",
                        "COALESCE(s.value_unit_code, s.value_unit)"),
              value_code=Code("s.value_code_system", "s.value_code"),
              values={"value_as_number": "s.value_number",
                      "unit_source_value": "COALESCE(s.value_unit_code, s.value_unit)",
                      "value_source_value": "left(s.value_code, 50)", "operator_source": "s.value_comparator"},
              **{**_fhir("Observation", codings=()), "key": "'Observation/' || s.resource_id || '#' || "
                                               "CAST(s.position AS VARCHAR)"}),
    EventRule(name="fhir.medication_request", staging="stg_fhir_medication_request", default_table="drug_exposure",
              start="COALESCE(s.validity_start, s.authored_on)", end="s.validity_end", code=_FHIR_CODE,
              source_value=_FHIR_SRC, visit=_ENC, visit_if=_ENC_VISIT,
              provider=_PROVIDER.format(c="s.requester_ref"), type_concept=PRESCRIPTION,
              where="COALESCE(s.status, 'active') NOT IN ('entered-in-error', 'cancelled', 'draft') AND "
                    "COALESCE(s.intent, 'order') IN ('order', 'original-order', 'reflex-order', 'filler-order', "
                    "'instance-order')",
              values={"quantity": "s.dispense_quantity", "days_supply": as_integer("s.days_supply"),
                      "refills": as_integer("s.refills"), "route_source_value": "s.route_code",
                      "dose_unit_source_value": "s.dose_unit"},
              **_fhir("MedicationRequest")),
    *[EventRule(name=f"fhir.medication_{kind}", staging=f"stg_fhir_medication_{kind}", default_table="drug_exposure",
                start="s.effective_at", end="s.effective_end", code=_FHIR_CODE, source_value=_FHIR_SRC,
                visit=_ENC, visit_if=_ENC_VISIT, type_concept=tc,
                where=f"COALESCE(s.status, 'completed') NOT IN ({bad})",
                values={"quantity": "s.quantity", "days_supply": as_integer("s.days_supply"),
                        "route_source_value": "s.route_code", "dose_unit_source_value": "s.dose_unit"},
                **_fhir(rt))
      for kind, rt, tc, bad in [
          ("administration", "MedicationAdministration", ADMINISTRATION, "'entered-in-error', 'not-done'"),
          ("dispense", "MedicationDispense", DISPENSING,
           "'entered-in-error', 'cancelled', 'declined', 'preparation'"),
          ("statement", "MedicationStatement", SELF_REPORT, "'entered-in-error', 'not-taken', 'intended'")]],
    EventRule(name="fhir.procedure", staging="stg_fhir_procedure", default_table="procedure_occurrence",
              start="s.performed_at", end="s.performed_end", code=_FHIR_CODE, source_value=_FHIR_SRC,
              type_concept=EHR_ENCOUNTER,
              visit=_ENC, visit_if=_ENC_VISIT, provider=_PROVIDER.format(c="s.performer_ref"),
              where="COALESCE(s.status, 'completed') NOT IN ('entered-in-error', 'not-done', 'preparation')",
              **_fhir("Procedure")),
    EventRule(name="fhir.immunization", staging="stg_fhir_immunization", default_table="drug_exposure",
              start="s.occurrence_at", code=_FHIR_CODE, source_value=_FHIR_SRC, type_concept=EHR_ENCOUNTER,
              visit=_ENC, visit_if=_ENC_VISIT,
              where="COALESCE(s.status, 'completed') = 'completed'",
              values={"lot_number": "s.lot_number", "route_source_value": "s.route_code",
                      "quantity": "s.dose_value", "dose_unit_source_value": "s.dose_unit"},
              **_fhir("Immunization", subject="s.patient_ref")),
    EventRule(name="fhir.allergy_intolerance", staging="stg_fhir_allergy_intolerance", default_table="observation",
              routed=False, start="COALESCE(s.onset_at, s.recorded_date)", code=_FHIR_CODE, source_value=_FHIR_SV,
              visit=_ENC, visit_if=_ENC_VISIT, provider=_PROVIDER.format(c="s.recorder_ref"),
              where="COALESCE(s.verification_status, 'confirmed') NOT IN ('refuted', 'entered-in-error')",
              values={"value_source_value": "s.reaction_code"},
              **_fhir("AllergyIntolerance", subject="s.patient_ref")),
    # The report's own code, when it is a clinical fact (a panel → MEASUREMENT, a questionnaire → OBSERVATION …);
    # a document-type code (Note domain) is only the NOTE below. Its results are its Observations, mapped as such.
    EventRule(name="fhir.diagnostic_report", staging="stg_fhir_diagnostic_report", default_table="measurement",
              start="COALESCE(s.effective_at, s.issued)", code=_FHIR_CODE, source_value=_FHIR_SRC,
              visit=_ENC, visit_if=_ENC_VISIT, provider=_PROVIDER.format(c="s.performer_ref"),
              type_concept=f"CASE WHEN c.domain_id = 'Measurement' THEN {LAB} ELSE {EHR} END",
              where="COALESCE(s.status, 'final') NOT IN ('entered-in-error', 'cancelled', 'registered', 'unknown') "
                    "AND c.domain_id IN ('Measurement', 'Observation', 'Condition', 'Procedure')",
              values={"value_source_value": "CASE WHEN c.domain_id = 'Observation' THEN "
                                            "left(COALESCE(s.code_text, s.code_display), 50) END"},
              **_fhir("DiagnosticReport")),
    # R4 Device has no use period: the exposure runs from manufactureDate to expirationDate (as the IG does).
    # Device.patient can only be a Patient, so an unresolved urn:uuid reference names the Patient's id.
    EventRule(name="fhir.device", staging="stg_fhir_device", default_table="device_exposure",
              start="s.manufacture_date", end="s.expiration_date", code=_FHIR_CODE, source_value=_FHIR_SRC,
              where="COALESCE(s.status, 'active') IN ('active', 'inactive')",
              values={"value_source_value": "s.udi_device_identifier", "lot_number": "s.lot_number"},
              **{**_fhir("Device", subject="s.patient_ref"),
                 "person": "CASE WHEN s.patient_ref LIKE 'urn:uuid:%' THEN substr(s.patient_ref, 10) ELSE "
                           + ref_id("s.patient_ref", "Patient") + " END",
                 "person_ref": "CASE WHEN s.patient_ref LIKE 'urn:uuid:%' THEN 'Patient/' || substr(s.patient_ref, 10) "
                               "ELSE " + fhir_ref("s.patient_ref", "Patient") + " END"}),
    EventRule(name="fhir.specimen", staging="stg_fhir_specimen", default_table="specimen", routed=False,
              start="s.collected_at", code=_FHIR_CODE, source_value=_FHIR_SRC, type_concept=LAB,
              where="COALESCE(s.status, 'available') <> 'entered-in-error'",
              unit=Code("'http://unitsofmeasure.org'", "s.quantity_unit"),
              value_code=Code("s.body_site_system", "s.body_site_code"),  # the anatomic site
              values={"quantity": "s.quantity_value", "unit_source_value": "s.quantity_unit",
                      "value_source_value": "s.body_site_code"},
              **_fhir("Specimen")),
]

FHIR_TABLES = [
    TableRule(name="fhir.encounter", staging="stg_fhir_encounter", table="visit_occurrence",
              where="COALESCE(s.status, 'finished') NOT IN ('entered-in-error', 'cancelled', 'planned')",
              id="{visit}", columns={
                  "visit_concept_id": f"COALESCE({case('s.class_code', FHIR_VISIT)}, 0)",
                  "visit_start_date": "CAST(s.period_start AS DATE)", "visit_start_datetime": "s.period_start",
                  "visit_end_date": "CAST(COALESCE(s.period_end, s.period_start) AS DATE)",
                  "visit_end_datetime": "COALESCE(s.period_end, s.period_start)",
                  "visit_type_concept_id": str(EHR_ENCOUNTER), "provider_id": "{provider}",
                  "care_site_id": "{care_site}", "visit_source_value": "left(s.resource_id, 50)",
                  "visit_source_concept_id": "0",
                  "admitted_from_source_value": "s.admit_source_code",
                  "discharged_to_source_value": "s.discharge_disposition_code",
              }, **_fhir("Encounter", codings=None)),
    TableRule(name="fhir.practitioner", staging="stg_fhir_practitioner", table="provider", id="{provider}",
              columns={"gender_concept_id": f"COALESCE({case('s.gender', GENDER)}, 0)",
                       "provider_source_value": "s.resource_id", "specialty_concept_id": "0",
                       "specialty_source_concept_id": "0", "gender_source_value": "s.gender",
                       "gender_source_concept_id": "0"},
              key="'Practitioner/' || s.resource_id", message_id="'Practitioner/' || s.resource_id"),
    TableRule(name="fhir.organization", staging="stg_fhir_organization", table="care_site", id="{care_site}",
              columns={"care_site_name": "left(s.name, 255)",
                       "place_of_service_concept_id": f"COALESCE({case('s.type_code', ORGANIZATION_TYPE)}, 0)",
                       "care_site_source_value": "left(s.resource_id, 50)",
                       "place_of_service_source_value": "s.type_code"},
              key="'Organization/' || s.resource_id", message_id="'Organization/' || s.resource_id"),
    TableRule(name="fhir.document_reference", staging="stg_fhir_document_reference", table="note",
              where="COALESCE(s.status, 'current') <> 'entered-in-error' AND "
                    "COALESCE(s.doc_status, 'final') <> 'entered-in-error'",
              id="{row_id}", columns={
                  "note_date": "CAST(COALESCE(s.date, s.period_start) AS DATE)",
                  "note_datetime": "COALESCE(s.date, s.period_start)", "note_type_concept_id": str(EHR),
                  "note_class_concept_id": "{concept}", "note_title": "left(s.content_title, 250)",
                  "note_text": NO_TEXT, "encoding_concept_id": "32678",
                  "language_concept_id": f"COALESCE({case('s.content_language', LANGUAGE)}, 0)",
                  "provider_id": "{provider}", "visit_occurrence_id": "{visit}",
                  "note_source_value": "left(COALESCE(s.code_display, s.code), 50)",
              }, **_fhir("DocumentReference", codings=None)),
]
# A FHIR Location is a CARE_SITE (as the IG does) with its facility address as a LOCATION row; a patient's residence
# (type PTRES) gives no LOCATION (addresses of persons stay out of the CDM).
LOCATION_ID = "stable_id('location|' || COALESCE(ns.namespace, s.source) || '|Location/' || s.resource_id)"
_NOT_HOME = "COALESCE(s.type_code, '') <> 'PTRES'"
FHIR_TABLES += [
    TableRule(name="fhir.location_care_site", staging="stg_fhir_location", table="care_site", id="{care_site}",
              columns={"care_site_name": "left(s.name, 255)", "place_of_service_concept_id": "{concept}",
                       "location_id": f"CASE WHEN {_NOT_HOME} THEN {LOCATION_ID} END",
                       "care_site_source_value": "left(s.resource_id, 50)",
                       "place_of_service_source_value": "s.type_code"},
              key="'Location/' || s.resource_id", message_id="'Location/' || s.resource_id"),
    TableRule(name="fhir.location", staging="stg_fhir_location", table="location", id=LOCATION_ID, where=_NOT_HOME,
              columns={"address_1": "left(s.address_line, 50)", "city": "left(s.address_city, 50)",
                       "state": "CASE WHEN length(s.address_state) <= 2 THEN s.address_state END",
                       "zip": "left(s.address_postal_code, 9)",
                       "country_concept_id": f"COALESCE({case('upper(s.address_country)', COUNTRY)}, 0)",
                       "country_source_value": "s.address_country", "latitude": "s.latitude",
                       "longitude": "s.longitude"},
              key="'Location/' || s.resource_id", message_id="'Location/' || s.resource_id"),
    # A PractitionerRole is the provider its references name (events key a performer `PractitionerRole/id`): its
    # specialty (resolved through the vocabulary) and its care site (organization, else location). The
    # Practitioner's own row is not changed by it (another id: see docs/transform.md).
    TableRule(name="fhir.practitioner_role", staging="stg_fhir_practitioner_role", table="provider", id="{provider}",
              columns={"specialty_concept_id": "{concept}", "care_site_id": "{care_site}",
                       "provider_source_value": "left(s.resource_id, 50)", "specialty_source_value":
                       "left(s.specialty_code, 50)", "specialty_source_concept_id": "COALESCE(c.source_concept_id, 0)",
                       "gender_concept_id": "0", "gender_source_concept_id": "0"},
              key="'PractitionerRole/' || s.resource_id", message_id="'PractitionerRole/' || s.resource_id"),
    TableRule(name="fhir.coverage", staging="stg_fhir_coverage", table="payer_plan_period", id="{row_id}",
              where="COALESCE(s.status, 'active') NOT IN ('entered-in-error', 'cancelled', 'draft')",
              columns={"payer_plan_period_start_date": "CAST(s.period_start AS DATE)",
                       "payer_plan_period_end_date": "CAST(s.period_end AS DATE)", "payer_concept_id": "0",
                       # the payor's name only when it is an organization (a self-paying person's name is not)
                       "payer_source_value": "CASE WHEN s.payor_ref IS NULL OR s.payor_ref LIKE 'Organization/%' "
                                             "THEN left(s.payor_display, 50) END",
                       "plan_concept_id": "0", "plan_source_value": "left(COALESCE(s.type_text, s.type_code), 50)",
                       "sponsor_concept_id": "0", "stop_reason_concept_id": "0"},
              **_fhir("Coverage", subject="s.beneficiary_ref", codings=None)),
    TableRule(name="fhir.diagnostic_report_note", staging="stg_fhir_diagnostic_report", table="note",
              where="COALESCE(s.status, 'final') NOT IN ('entered-in-error', 'cancelled', 'registered', 'unknown')",
              id="{row_id}", columns={
                  "note_date": "CAST(COALESCE(s.effective_at, s.issued) AS DATE)",
                  "note_datetime": "COALESCE(s.effective_at, s.issued)", "note_type_concept_id": str(EHR),
                  "note_class_concept_id": "CASE WHEN c.domain_id = 'Note' THEN c.concept_id ELSE 0 END",
                  "note_title": "left(COALESCE(s.code_text, s.code_display), 250)",
                  "note_text": NO_TEXT,
                  "encoding_concept_id": "32678", "language_concept_id": "0",
                  "provider_id": "{provider}", "visit_occurrence_id": "{visit}",
                  "note_source_value": "left(s.code, 50)",
              }, **_fhir("DiagnosticReport", codings=None)),
]
# The TableRule placeholders {visit}, {provider}, {care_site}, {concept} and {row_id} are filled by the compiler
# from these per-rule expressions (keys in the source's namespace).
TABLE_KEYS = {
    "fhir.encounter": dict(visit="'Encounter/' || s.resource_id",
                           visit_if=((VISIT_NUMBER, "COALESCE(s.identifier_value, 'Encounter/' || s.resource_id)"),),
                           provider=_PROVIDER.format(c="s.participant_ref"),
                           care_site="CASE WHEN s.service_provider_ref LIKE 'Organization/%' "
                                     "THEN s.service_provider_ref END"),
    "fhir.practitioner": dict(provider="'Practitioner/' || s.resource_id"),
    "fhir.organization": dict(care_site="'Organization/' || s.resource_id"),
    "fhir.document_reference": dict(visit=_ENC, visit_if=_ENC_VISIT,
                                    provider=_PROVIDER.format(c="s.author_ref"),
                                    concept=Code("s.code_system", "s.code")),
    "fhir.practitioner_role": dict(provider="'PractitionerRole/' || s.resource_id",
                                   care_site="COALESCE(" + fhir_ref("s.organization_ref", "Organization") + ", "
                                             + fhir_ref("s.location_ref", "Location") + ")",
                                   concept=Code("s.specialty_system", "s.specialty_code")),
    "fhir.location_care_site": dict(care_site="'Location/' || s.resource_id",
                                    concept=Code("s.type_system", "s.type_code")),
    "fhir.diagnostic_report_note": dict(visit=_ENC, visit_if=_ENC_VISIT, provider=_PROVIDER.format(c="s.performer_ref"),
                                        concept=Code("s.code_system", "s.code")),
}

FHIR_PERSONS = [
    PersonRule(name="fhir.patient", staging="stg_fhir_patient", key="'Patient/' || s.resource_id",
               person="s.resource_id", person_ref="'Patient/' || s.resource_id",
               message_id="'Patient/' || s.resource_id",
               when="s.last_updated",
               gender="s.gender", birth="s.birth_date", race="s.race_code", ethnicity="s.ethnicity_code",
               death="s.deceased_at", alive="s.deceased IS NOT TRUE AND s.deceased_at IS NULL"),
]

# -- HL7 v2 ----------------------------------------------------------------------------------------------------------
_HL7 = dict(person="s.patient_id", message_id="s.control_id", visit="s.visit_number")
HL7_ORDER = "s.event_time DESC NULLS LAST, s.receipt_seq DESC, s.record_location DESC"
# Whether an A13 (cancel discharge) came after a visit's last A03: window aggregates over the visit's messages
# (hl7.visit, derived VISIT_DETAIL).
DISCHARGE_CANCELS = {"v_a03": "MAX(CASE WHEN s.event_type = 'A03' THEN s.event_time END)",
                     "v_a13": "MAX(CASE WHEN s.event_type = 'A13' THEN s.event_time END)"}
ADT_STATE = "s.message_type LIKE 'ADT%' AND COALESCE(s.event_type, '') <> 'A13'"  # an ADT message that gives a state
# A visit's admission: the newest message's PV1-44 (an A08 corrects it; a re-admission after an A11 has its own),
# else the earliest admit or event time of its ADT messages (`s.v_start`); its discharge likewise the newest
# message's PV1-45, else the latest of them (`s.v_dis`) — none once an A13 has cancelled it.
HL7_ADMIT = "COALESCE(s.admit_time, s.v_start)"


def hl7_discharge(newest: str = "s.discharge_time", latest: str = "s.v_dis") -> str:
    """A visit's discharge: `newest` (the newest message's PV1-45), else `latest` (the latest of its messages'),
    none once an A13 has cancelled the last A03 (`DISCHARGE_CANCELS`)."""
    return (f"CASE WHEN s.v_a13 IS NOT NULL AND (s.v_a03 IS NULL OR s.v_a13 >= s.v_a03) THEN NULL "
            f"ELSE COALESCE({newest}, {latest}) END")


HL7_DISCHARGE = hl7_discharge()

HL7_EVENTS = [
    EventRule(name="hl7.observation", staging="stg_hl7_observation", default_table="measurement",
              key="'obx|' || COALESCE(s.filler_number, s.placer_number, s.control_id) || '|' || "
                  "COALESCE(s.code, '') || '|' || COALESCE(s.sub_id, '')",
              start="COALESCE(s.observation_time, s.specimen_time, s.event_time)", code=Code("s.code_system", "s.code"),
              source_value="left(COALESCE(s.code_text, s.code), 50)", type_concept=LAB, order=HL7_ORDER,
              where="COALESCE(s.result_status, 'F') NOT IN ('W', 'X', 'D')",
              unit=Code("COALESCE(s.units_system, 'UCUM')", "s.units"),
              value_code=Code("s.value_code_system", "s.value_code"),
              values={"value_as_number": "s.value_number", "unit_source_value": "s.units",
                      # a number as OBX-5 writes it ("7", ">5", "1-10"), not as an engine prints a double
                      "value_source_value": "left(COALESCE(s.value_code_text, s.value_code, "
                                            "CASE WHEN s.value_number IS NOT NULL THEN s.value_text END), 50)",
                      "range_low": "s.range_low", "range_high": "s.range_high",
                      "operator_source": "s.value_comparator"},
              provider="s.observer_id", **_HL7),
    EventRule(name="hl7.diagnosis", staging="stg_hl7_diagnosis", default_table="condition_occurrence",
              key="'dg1|' || COALESCE(s.visit_number, s.control_id) || '|' || COALESCE(s.code, '') || '|' || "
                  "COALESCE(s.code_system, '')",
              start="COALESCE(s.diagnosis_time, s.event_time)", code=Code("s.code_system", "s.code"),
              source_value="left(COALESCE(s.code, s.code_text), 50)", order=HL7_ORDER,
              where="COALESCE(s.action, 'A') <> 'D'",
              provider="s.clinician_id", **_HL7),
    EventRule(name="hl7.procedure", staging="stg_hl7_procedure", default_table="procedure_occurrence",
              key="'pr1|' || COALESCE(s.visit_number, s.control_id) || '|' || COALESCE(s.code, '') || '|' || "
                  "COALESCE(CAST(s.procedure_time AS VARCHAR), '')",
              start="COALESCE(s.procedure_time, s.event_time)", code=Code("s.code_system", "s.code"),
              source_value="left(COALESCE(s.code, s.code_text), 50)", order=HL7_ORDER, **_HL7),
    EventRule(name="hl7.medication", staging="stg_hl7_medication", default_table="drug_exposure",
              key="'rx|' || COALESCE(s.placer_number, s.filler_number, s.prescription_number, s.control_id) || '|' "
                  "|| COALESCE(s.drug_code, '')",
              start="COALESCE(s.start_time, s.dispensed_time, s.ordered_time, s.event_time)", end="s.end_time",
              code=Code("s.drug_code_system", "s.drug_code"),
              source_value="left(COALESCE(s.drug_code, s.drug_name), 50)", order=HL7_ORDER,
              type_concept=f"CASE WHEN s.message_type LIKE 'RDS%' OR s.source_segment = 'RXD' THEN {DISPENSING} "
                           f"WHEN s.source_segment = 'RXA' THEN {ADMINISTRATION} ELSE {PRESCRIPTION} END",
              where="COALESCE(s.order_control, 'NW') NOT IN ('CA', 'OC', 'CR', 'DE')",
              values={"quantity": "s.quantity", "refills": as_integer("s.refills"),
                      "route_source_value": "s.route", "dose_unit_source_value": "s.dose_units"},
              provider="s.ordering_provider_id", **_HL7),
    EventRule(name="hl7.immunization", staging="stg_hl7_immunization", default_table="drug_exposure",
              key="'rxa|' || COALESCE(s.filler_number, s.placer_number, s.control_id) || '|' || "
                  "COALESCE(s.vaccine_code, '') || '|' || COALESCE(CAST(s.administered_time AS VARCHAR), '')",
              start="s.administered_time", end="s.administered_end_time",
              code=Code("COALESCE(s.vaccine_code_system, 'CVX')", "s.vaccine_code"),
              source_value="left(COALESCE(s.vaccine_code, s.vaccine_name), 50)", order=HL7_ORDER,
              where="COALESCE(s.completion_status, 'CP') IN ('CP', 'PA') AND COALESCE(s.action_code, 'A') <> 'D'",
              values={"quantity": "s.amount", "lot_number": "s.lot_number", "route_source_value": "s.route",
                      "dose_unit_source_value": "s.amount_units"},
              provider="s.administering_provider_id", **_HL7),
    EventRule(name="hl7.allergy", staging="stg_hl7_allergy", default_table="observation", routed=False,
              key="'al1|' || COALESCE(s.code, '') || '|' || COALESCE(s.code_text, '')",
              start="COALESCE(CAST(s.identified_date AS TIMESTAMP), s.event_time)",
              code=Code("s.code_system", "s.code"), source_value="left(COALESCE(s.code, s.code_text), 50)",
              order=HL7_ORDER, values={"value_source_value": "left(s.reaction, 50)"}, **_HL7),
]

HL7_TABLES = [
    # The newest ADT message of a visit gives its state: a cancelled admission (A11, A27, A38 newest) has no row. An
    # A13 (cancel discharge) is no state of its own: it takes back the discharges (A03) before it, so the visit is
    # open again until the next A03. A result's PV1 (ORU on the same feed) names the visit but gives no state (a
    # visit known only from results: hl7.result_visit).
    TableRule(name="hl7.visit", staging="stg_hl7_visit", table="visit_occurrence",
              key="'visit|' || COALESCE(s.visit_number, s.control_id)", person="s.patient_id",
              message_id="s.control_id", order=f"CASE WHEN {ADT_STATE} THEN 0 ELSE 1 END, {HL7_ORDER}",
              id="{visit}",
              where="s.message_type LIKE 'ADT%' AND COALESCE(s.event_type, '') NOT IN ('A11', 'A13', 'A27', 'A38')",
              aggregates={"v_start": "MIN(CASE WHEN s.message_type LIKE 'ADT%' THEN COALESCE(s.admit_time, "
                                     "s.event_time) END)",
                          "v_dis": f"MAX(CASE WHEN {ADT_STATE} THEN s.discharge_time END)", **DISCHARGE_CANCELS},
              columns={"visit_concept_id": f"COALESCE({case('s.patient_class', HL7_VISIT)}, 0)",
                       "visit_start_date": f"CAST({HL7_ADMIT} AS DATE)", "visit_start_datetime": HL7_ADMIT,
                       "visit_end_date": f"CAST(COALESCE({HL7_DISCHARGE}, {HL7_ADMIT}) AS DATE)",
                       "visit_end_datetime": f"COALESCE({HL7_DISCHARGE}, {HL7_ADMIT})",
                       "visit_type_concept_id": str(EHR), "provider_id": "{provider}",
                       "care_site_id": "{care_site}", "visit_source_value": "left(s.visit_number, 50)",
                       "visit_source_concept_id": "0", "admitted_from_source_value": "s.admit_source",
                       "discharged_to_source_value": "s.discharge_disposition"}),
    # A visit known only from its results (an ORU's PV1-19, and no ADT message of that visit number in its
    # namespace: the HIS not connected, or its messages quarantined) still has a row, so that its events point at a
    # visit: the class from PV1-2, from its first result (PV1-44 where sent, else the results' own time as their
    # MEASUREMENT rows have it, else the message's; a result time after its message's is an error, not used) to its
    # last message (PV1-45 where sent), type Lab. An ADT message of the visit number takes it over, arriving with or
    # after the results, a cancel included (run._adt_visits); an Encounter with the visit number writes it first
    # (FHIR before HL7).
    TableRule(name="hl7.result_visit", staging="stg_hl7_visit", table="visit_occurrence",
              # the result messages' PV1 of visit numbers without an ADT message in the namespace, with their results
              # (the results joined last: DuckDB joined every result message's first, 0.25 s vs 0.07 s at 10k)
              from_sql="(SELECT v.*, COALESCE(o.observation_time, o.specimen_time) AS result_time FROM (SELECT v.* "
                       "FROM stg_hl7_visit v LEFT JOIN transform_source vn ON vn.source = v.source "
                       "WHERE v.message_type NOT LIKE 'ADT%' AND NOT EXISTS (SELECT 1 FROM stg_hl7_visit a "
                       "LEFT JOIN transform_source an ON an.source = a.source WHERE a.visit_number = v.visit_number "
                       "AND a.message_type LIKE 'ADT%' AND COALESCE(an.namespace, a.source) = "
                       "COALESCE(vn.namespace, v.source))) v "
                       "LEFT JOIN stg_hl7_observation o ON o.source = v.source AND o.control_id = v.control_id)",
              key="'visit|' || s.visit_number",
              person="s.patient_id", message_id="s.control_id", order=HL7_ORDER, id="{visit}",
              aggregates={"r_start": "MIN(COALESCE(s.admit_time, CASE WHEN s.result_time <= s.event_time THEN "
                                     "s.result_time END, s.event_time))",
                          "r_end": "MAX(COALESCE(s.discharge_time, s.event_time))"},
              columns={"visit_concept_id": f"COALESCE({case('s.patient_class', HL7_VISIT)}, 0)",
                       "visit_start_date": "CAST(s.r_start AS DATE)", "visit_start_datetime": "s.r_start",
                       "visit_end_date": "CAST(s.r_end AS DATE)", "visit_end_datetime": "s.r_end",
                       "visit_type_concept_id": str(LAB), "provider_id": "{provider}",
                       "care_site_id": "{care_site}", "visit_source_value": "left(s.visit_number, 50)",
                       "visit_source_concept_id": "0"}),
    TableRule(name="hl7.provider", staging="stg_hl7_visit", table="provider", key="'doctor|' || s.attending_doctor_id",
              where="s.attending_doctor_id IS NOT NULL", id="{provider}", order=HL7_ORDER,
              message_id="s.control_id",
              columns={"provider_source_value": "left(s.attending_doctor_id, 50)", "specialty_concept_id": "0",
                       "specialty_source_value": "left(s.hospital_service, 50)", "gender_concept_id": "0",
                       "specialty_source_concept_id": "0", "gender_source_concept_id": "0"}),
    TableRule(name="hl7.care_site", staging="stg_hl7_visit", table="care_site",
              key="'unit|' || s.point_of_care", where="s.point_of_care IS NOT NULL", id="{care_site}",
              order=HL7_ORDER, message_id="s.control_id",
              columns={"care_site_name": "left(s.point_of_care, 255)", "place_of_service_concept_id": "0",
                       "care_site_source_value": "left(s.point_of_care, 50)",
                       "place_of_service_source_value": "left(COALESCE(s.facility, s.servicing_facility), 50)"}),
    TableRule(name="hl7.document", staging="stg_hl7_document", table="note",
              key="'doc|' || COALESCE(s.document_id, s.control_id)", person="s.patient_id", message_id="s.control_id",
              order=HL7_ORDER, where="COALESCE(s.completion_status, 'AU') NOT IN ('CA')", id="{row_id}",
              columns={"note_date": "CAST(COALESCE(s.activity_time, s.origination_time, s.event_time) AS DATE)",
                       "note_datetime": "COALESCE(s.activity_time, s.origination_time, s.event_time)",
                       "note_type_concept_id": str(EHR), "note_class_concept_id": "0",
                       "note_text": NO_TEXT, "encoding_concept_id": "32678",
                       "language_concept_id": "0", "provider_id": "{provider}", "visit_occurrence_id": "{visit}",
                       "note_source_value": "left(s.document_type, 50)"}),
]
TABLE_KEYS.update({
    "hl7.visit": dict(visit="s.visit_number", provider="s.attending_doctor_id", care_site="s.point_of_care"),
    "hl7.result_visit": dict(visit="s.visit_number", provider="s.attending_doctor_id", care_site="s.point_of_care"),
    "hl7.provider": dict(provider="s.attending_doctor_id"),
    "hl7.care_site": dict(care_site="s.point_of_care"),
    "hl7.document": dict(visit="s.visit_number", provider="s.author_id"),
})

HL7_PERSONS = [
    PersonRule(name="hl7.patient", staging="stg_hl7_patient", key="'patient|' || s.patient_id",
               person="s.patient_id", message_id="s.control_id",
               when="s.event_time",
               where="s.patient_id IS NOT NULL",
               gender="s.sex", birth="s.birth_date", race="s.race", ethnicity="s.ethnicity",
               death="CASE WHEN s.death_time IS NOT NULL THEN s.death_time END",
               alive="s.death_time IS NULL AND (upper(s.death_indicator) = 'N' OR (s.death_indicator IS NULL "
                     "AND s.removed LIKE '%PID-29%'))"),  # PID-30 'N' (or 'n'), or PID-29 sent as "" (delete it)
]

# -- CSV -------------------------------------------------------------------------------------------------------------
CSV_EVENTS = [
    EventRule(name="csv.pharmacy", staging="stg_csv_pharmacy", default_table="drug_exposure",
              key="'rx|' || s.record_id", person="s.patient_id", message_id="s.record_id",
              start="s.dispensed_at", code=Code("s.drug_code_system", "s.drug_code"),
              source_value="left(s.drug_code, 50)", type_concept=DISPENSING, visit="s.visit_id",
              values={"quantity": "s.quantity", "days_supply": as_integer("s.days_supply"),
                      "route_source_value": "left(s.route, 50)", "dose_unit_source_value": "left(s.quantity_unit, 50)"}),
]

EVENTS: list[EventRule] = FHIR_EVENTS + HL7_EVENTS + CSV_EVENTS
TABLES: list[TableRule] = FHIR_TABLES + HL7_TABLES
PERSONS: list[PersonRule] = FHIR_PERSONS + HL7_PERSONS
ALL = [*EVENTS, *TABLES, *PERSONS]
