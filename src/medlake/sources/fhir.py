"""FHIR R4: Bundles, single resources and Bulk Data NDJSON into `stg_fhir_<resource>` staging rows.

JSON is parsed with orjson. Each resource is checked for what a FHIR→OMOP mapping relies on — a known
resourceType, an id, well-formed references, the required elements of its type and the code values of its status
fields — and flattened into one row of its table (ids, references as `Type/id` keys, first coding of each code,
dates, values and units, status, versionId/lastUpdated) plus one `stg_fhir_coding` row per coding of its top-level
CodeableConcepts. The resource's own JSON is kept in `raw`. A resource that fails is rejected with its JSON path;
the rest of its file goes on.

Dates keep their wall-clock time (an offset such as +01:00 is dropped; the original is in `raw`); partial dates
("2012", "2012-03") become the first day of their period. Identifying columns (names, identifier values, telecom,
addresses, birth date, free text, raw JSON) carry the Arrow field metadata `identifying=true`.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from typing import BinaryIO, Iterator

import orjson
import pyarrow as pa

from medlake.sources.records import Loc, Rejected, Staged, ident

R4_TYPES = frozenset("""Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse
AuditEvent Basic Binary BiologicallyDerivedProduct BodyStructure Bundle CapabilityStatement CarePlan CareTeam
CatalogEntry ChargeItem ChargeItemDefinition Claim ClaimResponse ClinicalImpression CodeSystem Communication
CommunicationRequest CompartmentDefinition Composition ConceptMap Condition Consent Contract Coverage
CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue Device DeviceDefinition DeviceMetric
DeviceRequest DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference EffectEvidenceSynthesis
Encounter Endpoint EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition Evidence EvidenceVariable
ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag Goal GraphDefinition Group GuidanceResponse
HealthcareService ImagingStudy Immunization ImmunizationEvaluation ImmunizationRecommendation
ImplementationGuide InsurancePlan Invoice Library Linkage List Location Measure MeasureReport Media Medication
MedicationAdministration MedicationDispense MedicationKnowledge MedicationRequest MedicationStatement
MedicinalProduct MedicinalProductAuthorization MedicinalProductContraindication MedicinalProductIndication
MedicinalProductIngredient MedicinalProductInteraction MedicinalProductManufactured MedicinalProductPackaged
MedicinalProductPharmaceutical MedicinalProductUndesirableEffect MessageDefinition MessageHeader
MolecularSequence NamingSystem NutritionOrder Observation ObservationDefinition OperationDefinition
OperationOutcome Organization OrganizationAffiliation Parameters Patient PaymentNotice PaymentReconciliation
Person PlanDefinition Practitioner PractitionerRole Procedure Provenance Questionnaire QuestionnaireResponse
RelatedPerson RequestGroup ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject
RiskAssessment RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen SpecimenDefinition
StructureDefinition StructureMap Subscription Substance SubstanceNucleicAcid SubstancePolymer SubstanceProtein
SubstanceReferenceInformation SubstanceSourceMaterial SubstanceSpecification SupplyDelivery SupplyRequest Task
TerminologyCapabilities TestReport TestScript ValueSet VerificationResult VisionPrescription""".split())

# Code values of status fields (R4 required bindings) the mapping reads.
_MED_ADMIN = {"in-progress", "not-done", "on-hold", "completed", "entered-in-error", "stopped", "unknown"}
STATUS = {
    "Observation": {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error",
                    "unknown"},
    "Encounter": {"planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled",
                  "entered-in-error", "unknown"},
    "MedicationRequest": {"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft",
                          "unknown"},
    "Procedure": {"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", "entered-in-error",
                  "unknown"},
    "Immunization": {"completed", "entered-in-error", "not-done"},
    "DocumentReference": {"current", "superseded", "entered-in-error"},
    "DiagnosticReport": {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
                         "cancelled", "entered-in-error", "unknown"},
    "MedicationAdministration": _MED_ADMIN,
    "MedicationDispense": {"preparation", "in-progress", "cancelled", "on-hold", "completed", "entered-in-error",
                           "stopped", "declined", "unknown"},
    "MedicationStatement": {"active", "completed", "entered-in-error", "intended", "stopped", "on-hold", "unknown",
                            "not-taken"},
}
CLINICAL_STATUS = {"Condition": {"active", "recurrence", "relapse", "inactive", "remission", "resolved"},
                   "AllergyIntolerance": {"active", "inactive", "resolved"}}
VERIFICATION_STATUS = {"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error",
                       "presumed"}
# Elements the mapping cannot do without ("x[x]" = any choice type of x).
REQUIRED = {
    "Observation": ("status", "code", "subject"), "Encounter": ("status", "class", "subject"),
    "Condition": ("code", "subject"), "MedicationRequest": ("status", "intent", "medication[x]", "subject"),
    "Procedure": ("status", "code", "subject"), "AllergyIntolerance": ("patient",),
    "Immunization": ("status", "vaccineCode", "patient", "occurrence[x]"),
    "DocumentReference": ("status", "content", "subject"), "DiagnosticReport": ("status", "code", "subject"),
    "MedicationAdministration": ("status", "medication[x]", "subject", "effective[x]"),
    "MedicationDispense": ("status", "medication[x]", "subject"),
    "MedicationStatement": ("status", "medication[x]", "subject"),
}


class Invalid(Exception):
    def __init__(self, path: str, reason: str, detail: str):
        super().__init__(detail)
        self.path, self.reason, self.detail = path, reason, detail


# -- schemas ---------------------------------------------------------------------------------------------------
_T = {"s": pa.string(), "f": pa.float64(), "i": pa.int64(), "d": pa.date32(), "t": pa.timestamp("us"),
      "b": pa.bool_()}
CODE = "code_system code code_display code_text"
COMMON = "resource_id version_id last_updated:t"
MED = f"status {CODE} medication_ref subject_ref encounter_ref effective_at:t effective_end:t quantity:f " \
      "quantity_unit days_supply:f dose_value:f dose_unit route_code"
COLUMNS = {
    "Patient": "active:b gender birth_date:d! deceased:b deceased_at:t family_name! given_names! name_text! "
               "identifiers! mrn! telecom! address_line! address_city! address_district! address_state! "
               "address_postal_code! address_country! marital_status_code race_code race_display ethnicity_code "
               "ethnicity_display birth_sex language_code managing_organization_ref general_practitioner_ref",
    "Encounter": "status class_system class_code class_display type_system type_code type_display subject_ref "
                 "period_start:t period_end:t service_provider_ref participant_ref location_ref part_of_ref "
                 "admit_source_code discharge_disposition_code reason_system reason_code identifier_value",
    "Condition": f"clinical_status verification_status category_code {CODE} subject_ref encounter_ref onset_at:t "
                 "abatement_at:t recorded_date:t recorder_ref asserter_ref",
    "Observation": f"status category_code {CODE} subject_ref encounter_ref effective_at:t effective_end:t issued:t "
                   "performer_ref value_number:f value_comparator value_unit value_unit_code value_unit_system "
                   "value_code_system value_code value_code_display value_string! value_boolean:b "
                   "data_absent_reason interpretation_code range_low:f range_high:f range_unit specimen_ref "
                   "has_member_refs",
    "MedicationRequest": f"status intent {CODE} medication_ref subject_ref encounter_ref authored_on:t requester_ref "
                         "dose_value:f dose_unit route_system route_code frequency:i period:f period_unit "
                         "dispense_quantity:f dispense_unit days_supply:f validity_start:t validity_end:t refills:i",
    "MedicationAdministration": MED, "MedicationDispense": MED, "MedicationStatement": MED,
    "Medication": f"status {CODE} form_code",
    "Procedure": f"status {CODE} category_code subject_ref encounter_ref performed_at:t performed_end:t "
                 "performer_ref location_ref body_site_code reason_code",
    "AllergyIntolerance": f"clinical_status verification_status type category criticality {CODE} patient_ref "
                          "encounter_ref onset_at:t recorded_date:t recorder_ref reaction_code reaction_severity",
    "Immunization": f"status {CODE} patient_ref encounter_ref occurrence_at:t recorded:t primary_source:b "
                    "lot_number expiration_date:d route_code site_code dose_value:f dose_unit",
    "DocumentReference": f"status doc_status {CODE} category_code subject_ref encounter_ref date:t period_start:t "
                         "period_end:t author_ref custodian_ref content_type content_language content_title "
                         "content_url content_size:i text!",
    "DiagnosticReport": f"status category_code {CODE} subject_ref encounter_ref effective_at:t effective_end:t "
                        "issued:t performer_ref result_refs conclusion! text!",
    "Practitioner": "active:b gender family_name! given_names! identifiers! npi! telecom! qualification_code",
    "PractitionerRole": "active:b practitioner_ref organization_ref location_ref role_code specialty_system "
                        "specialty_code",
    "Organization": "active:b name type_system type_code identifiers part_of_ref address_line address_city "
                    "address_state address_postal_code address_country",
    "Location": "status name type_system type_code address_line address_city address_state address_postal_code "
                "address_country latitude:f longitude:f managing_organization_ref part_of_ref",
    "Device": f"status {CODE} patient_ref lot_number udi_device_identifier manufacture_date:t expiration_date:t",
    "Specimen": f"status {CODE} subject_ref collected_at:t collected_end:t quantity_value:f quantity_unit "
                "body_site_system body_site_code",
    "Coverage": "status beneficiary_ref period_start:t period_end:t payor_ref payor_display type_system type_code "
                "type_text relationship_code",
}


def _fields(spec: str) -> list[pa.Field]:
    out = []
    for tok in spec.split():
        secret = tok.endswith("!")
        name, _, t = tok.rstrip("!").partition(":")
        out.append(ident(name, _T[t or "s"]) if secret else pa.field(name, _T[t or "s"]))
    return out


def table_name(resource_type: str) -> str:
    return "stg_fhir_" + re.sub(r"(?<!^)(?=[A-Z])", "_", resource_type).lower()


STAGING_SCHEMAS: dict[str, pa.Schema] = {
    table_name(rt): pa.schema(_fields(COMMON) + _fields(cols) + [ident("raw")]) for rt, cols in COLUMNS.items()
}
STAGING_SCHEMAS["stg_fhir_other"] = pa.schema(
    [pa.field("resource_type", pa.string())] + _fields(COMMON) + _fields("subject_ref request_method request_url")
    + [ident("raw")])
STAGING_SCHEMAS["stg_fhir_coding"] = pa.schema(_fields(
    "resource_type resource_id element position:i system code display text! coding_index:i"))
STAGING_SCHEMAS["stg_fhir_observation_component"] = pa.schema(_fields(
    "resource_id position:i code_system code code_display code_text value_number:f value_unit value_unit_code "
    "value_code_system value_code value_string! value_comparator value_unit_system"))
STAGING_SCHEMAS["stg_fhir_encounter_location"] = pa.schema(_fields(  # Encounter.location[]: transfers (VISIT_DETAIL)
    "resource_id position:i location_ref status period_start:t period_end:t"))
STAGING_SCHEMAS["stg_fhir_bulk_manifest"] = pa.schema(_fields(
    "transaction_time:t request resource_type url count:i"))
TABLE_OF = {rt: table_name(rt) for rt in COLUMNS}
# The Python types a staging column takes (exactly: True is no number, 2.5 no integer; Arrow would cast both).
_PY = {pa.string(): (str,), pa.float64(): (float, int), pa.int64(): (int,), pa.date32(): (dt.date,),
       pa.timestamp("us"): (dt.datetime,), pa.bool_(): (bool,)}
_WANT = {str: "a string", float: "a number", int: "an integer", bool: "true or false", dt.date: "a date",
         dt.datetime: "a dateTime"}
ROW_TYPES = {t: {f.name: _PY[f.type] for f in schema} for t, schema in STAGING_SCHEMAS.items()}


# -- small readers of FHIR datatypes ----------------------------------------------------------------------------
def _when(v, path: str) -> dt.datetime | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise Invalid(path, "invalid", f"{path} = {v!r} is not a FHIR date/dateTime")
    try:
        n = len(v)
        if n == 4:
            return dt.datetime(int(v), 1, 1)
        if n == 7 and v[4] == "-":
            return dt.datetime(int(v[:4]), int(v[5:7]), 1)
        if n > 19:  # drop the offset by slicing (cheaper than parsing it): wall-clock time
            if v[-1] == "Z":
                v = v[:-1]
            elif v[-6] in "+-" and v[-3] == ":":
                v = v[:-6]
        d = dt.datetime.fromisoformat(v)
        return d.replace(tzinfo=None) if d.tzinfo else d
    except ValueError:
        raise Invalid(path, "invalid", f"{path} = {v!r} is not a FHIR date/dateTime") from None


def _date(v, path: str) -> dt.date | None:
    d = _when(v, path)
    return d.date() if d else None


_REF = re.compile(r"^(?:https?://\S+/)?([A-Z][A-Za-z]+)/([^/\s?#]{1,64})(?:/_history/[^/\s]{1,64})?$")


class Ctx:
    """Per resource: its type (for paths) and the bundle's fullUrl → Type/id map."""
    __slots__ = ("rt", "refs")

    def __init__(self, rt: str, refs: dict | None):
        self.rt, self.refs = rt, refs

    def ref(self, v, el: str) -> str | None:
        if v is None:
            return None
        if isinstance(v, list):
            v = v[0] if v else None
            if v is None:
                return None
        if not isinstance(v, dict):
            raise Invalid(f"{self.rt}.{el}", "invalid", f"{self.rt}.{el} is not a Reference")
        r = v.get("reference")
        if r is None:
            return None  # identifier- or display-only reference
        if not isinstance(r, str) or not r.strip():
            raise Invalid(f"{self.rt}.{el}.reference", "invalid", f"{self.rt}.{el}.reference is empty")
        if self.refs and r in self.refs:
            return self.refs[r]
        t, sep, i = r.partition("/")
        if sep and t in R4_TYPES and i and "/" not in i and len(i) <= 64 and " " not in i and "?" not in i:
            return r  # the common case, Type/id
        if r[0] == "#" or r.startswith(("urn:uuid:", "urn:oid:")):
            return r
        m = _REF.match(r)
        if m and m[1] in R4_TYPES:
            return f"{m[1]}/{m[2]}"
        if "?" in r and r.split("?", 1)[0] in R4_TYPES:
            return r  # a conditional reference, as transactions use
        raise Invalid(f"{self.rt}.{el}.reference", "invalid",
                      f"{self.rt}.{el}.reference {r!r} is not a FHIR reference (Type/id, URL, urn:uuid:…, #id)")

    def refs_joined(self, v, el: str) -> str | None:
        if not v:
            return None
        if not isinstance(v, list):
            raise Invalid(f"{self.rt}.{el}", "invalid", f"{self.rt}.{el} is not a list of References")
        out = [self.ref(x, f"{el}[{i}]") for i, x in enumerate(v)]
        return ";".join(x for x in out if x) or None

    def when(self, v, el: str):
        return _when(v, f"{self.rt}.{el}")


def _cc(v) -> tuple:
    """(system, code, display, text) of a CodeableConcept's first coding (or of a Coding)."""
    if isinstance(v, list):
        v = v[0] if v else None
    if not isinstance(v, dict):
        return None, None, None, None
    c = v.get("coding")
    first = c[0] if isinstance(c, list) and c and isinstance(c[0], dict) else (v if "code" in v else {})
    return first.get("system"), first.get("code"), first.get("display"), v.get("text")


def _code(v) -> str | None:
    return _cc(v)[1]


def _qty(v) -> tuple:
    if not isinstance(v, dict):
        return None, None
    val = v.get("value")
    return (float(val) if isinstance(val, (int, float)) and not isinstance(val, bool) else None,
            v.get("unit") or v.get("code"))


def _period(v, c: Ctx, el: str) -> tuple:
    if not isinstance(v, dict):
        return None, None
    return c.when(v.get("start"), f"{el}.start"), c.when(v.get("end"), f"{el}.end")


def _choice(res: dict, base: str, c: Ctx) -> tuple:
    """A dateTime-or-Period choice element (effective[x], onset[x], performed[x] …) → (start, end)."""
    if (v := res.get(base + "DateTime")) is not None:
        return c.when(v, base + "DateTime"), None
    if (v := res.get(base + "Period")) is not None:
        return _period(v, c, base + "Period")
    if (v := res.get(base + "Instant")) is not None:
        return c.when(v, base + "Instant"), None
    return None, None


def _codes(res: dict, c: Ctx, el: str) -> dict:
    s, k, d, t = _cc(res.get(el))
    return {"code_system": s, "code": k, "code_display": d, "code_text": t}


def _status(res: dict, c: Ctx, allowed=None) -> str | None:
    s = res.get("status")
    allowed = allowed or STATUS.get(c.rt)
    if s is not None and allowed and (not isinstance(s, str) or s not in allowed):
        raise Invalid(f"{c.rt}.status", "invalid", f"{c.rt}.status {s!r} is not one of {', '.join(sorted(allowed))}")
    return s


def _coded_status(res: dict, c: Ctx, el: str, allowed: set) -> str | None:
    s = _code(res.get(el))
    if s is not None and (not isinstance(s, str) or s not in allowed):
        raise Invalid(f"{c.rt}.{el}", "invalid", f"{c.rt}.{el} {s!r} is not one of {', '.join(sorted(allowed))}")
    return s


def _human_name(v) -> tuple:
    if not isinstance(v, list) or not v:
        return None, None, None
    n = next((x for x in v if isinstance(x, dict) and x.get("use") == "official"), v[0])
    if not isinstance(n, dict):
        return None, None, None
    return n.get("family"), _joined(n.get("given"), " "), n.get("text")


def _joined(v, sep: str):
    """A list of strings joined; of another list its first item that is no string, for the row check to name."""
    if not isinstance(v, list):
        return None
    v = [x for x in v if x is not None]  # FHIR JSON holds a null where only the item's extension (_given) is
    bad = [x for x in v if not isinstance(x, str)]
    return bad[0] if bad else sep.join(v) or None


def _json(v) -> str | None:
    return orjson.dumps(v).decode() if v else None


def _address(v, prefix="address_") -> dict:
    if isinstance(v, list):
        v = next((x for x in v if isinstance(x, dict) and x.get("use") == "home"), v[0] if v else None)
    if not isinstance(v, dict):
        return {}
    return {prefix + "line": _joined(v.get("line"), " "), prefix + "city": v.get("city"),
            prefix + "state": v.get("state"), prefix + "postal_code": v.get("postalCode"),
            prefix + "country": v.get("country"), **({prefix + "district": v.get("district")}
                                                       if prefix == "address_" else {})}


def _list(res: dict, el: str, path: str) -> list:
    """An element FHIR repeats: its list ([] when absent); anything else is refused with its path."""
    v = res.get(el)
    if v is None:
        return []
    if not isinstance(v, list):
        raise Invalid(f"{path}.{el}", "invalid", f"{path}.{el} is not a list (FHIR JSON writes a repeating element "
                      "as an array, even of one)")
    return v


def _first(res: dict, el: str, path: str) -> dict:
    """The first item of a repeating element of objects ({} when absent); anything else refused with its path."""
    v = _list(res, el, path)
    if v and not isinstance(v[0], dict):
        raise Invalid(f"{path}.{el}[0]", "invalid", f"{path}.{el}[0] is not an object")
    return v[0] if v else {}


def _ext(res: dict, url: str) -> list:
    return [e for e in _list(res, "extension", res["resourceType"]) if isinstance(e, dict) and e.get("url") == url]


def _omb(res: dict, url: str) -> tuple:
    for e in _ext(res, url):
        for sub in _list(e, "extension", f"{res['resourceType']}.extension"):
            if isinstance(sub, dict) and sub.get("url") == "ombCategory" and isinstance(sub.get("valueCoding"), dict):
                return sub["valueCoding"].get("code"), sub["valueCoding"].get("display")
    return None, None


def _attachment_text(att, path: str) -> str | None:
    if not isinstance(att, dict) or "data" not in att:
        return None
    ctype = att.get("contentType") or ""
    if not isinstance(ctype, str):
        raise Invalid(path + ".contentType", "invalid", f"{path}.contentType is not a string")
    if ctype and not ctype.startswith("text/"):
        return None
    try:
        data = base64.b64decode(att["data"], validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise Invalid(path + ".data", "invalid", f"{path}.data is not valid base64") from None
    charset = "utf-8"
    if "charset=" in ctype:
        charset = ctype.split("charset=", 1)[1].split(";")[0].strip() or "utf-8"
    try:
        return data.decode(charset)
    except (UnicodeDecodeError, LookupError):
        raise Invalid(path + ".data", "invalid", f"{path}.data is not {charset} text") from None


# -- one extractor per resource type ----------------------------------------------------------------------------
def _patient(r: dict, c: Ctx) -> dict:
    fam, given, text = _human_name(_list(r, "name", "Patient"))
    mrn = next((i.get("value") for i in _list(r, "identifier", "Patient") if isinstance(i, dict)
                and _code(i.get("type")) == "MR"), None)
    race, ethn = _omb(r, "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"), \
        _omb(r, "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity")
    sex = _ext(r, "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex")
    gender = r.get("gender")
    if gender is not None and gender not in ("male", "female", "other", "unknown"):
        raise Invalid("Patient.gender", "invalid", f"Patient.gender {gender!r} is not male|female|other|unknown")
    comm = _first(r, "communication", "Patient")
    return {"active": r.get("active") if isinstance(r.get("active"), bool) else None, "gender": gender,
            "birth_date": _date(r.get("birthDate"), "Patient.birthDate"),
            "deceased": r.get("deceasedBoolean") if "deceasedBoolean" in r else ("deceasedDateTime" in r or None),
            "deceased_at": c.when(r.get("deceasedDateTime"), "deceasedDateTime"),
            "family_name": fam, "given_names": given, "name_text": text,
            "identifiers": _json(r.get("identifier")), "mrn": mrn, "telecom": _json(r.get("telecom")),
            **_address(r.get("address")), "marital_status_code": _code(r.get("maritalStatus")),
            "race_code": race[0], "race_display": race[1], "ethnicity_code": ethn[0], "ethnicity_display": ethn[1],
            "birth_sex": sex[0].get("valueCode") if sex else None,
            "language_code": _code(comm.get("language")),
            "managing_organization_ref": c.ref(r.get("managingOrganization"), "managingOrganization"),
            "general_practitioner_ref": c.ref(r.get("generalPractitioner"), "generalPractitioner")}


def _encounter(r: dict, c: Ctx) -> dict:
    cls = r.get("class") if isinstance(r.get("class"), dict) else {}
    ts, tc, td, _ = _cc(r.get("type"))
    rs, rc, _, _ = _cc(r.get("reasonCode"))
    start, end = _period(r.get("period"), c, "period")
    hosp = r.get("hospitalization") if isinstance(r.get("hospitalization"), dict) else {}
    part = _first(r, "participant", "Encounter")
    loc = _first(r, "location", "Encounter")
    return {"status": _status(r, c), "class_system": cls.get("system"), "class_code": cls.get("code"),
            "class_display": cls.get("display"), "type_system": ts, "type_code": tc, "type_display": td,
            "subject_ref": c.ref(r.get("subject"), "subject"), "period_start": start, "period_end": end,
            "service_provider_ref": c.ref(r.get("serviceProvider"), "serviceProvider"),
            "participant_ref": c.ref(part.get("individual"), "participant[0].individual"),
            "location_ref": c.ref(loc.get("location"), "location[0].location"),
            "part_of_ref": c.ref(r.get("partOf"), "partOf"),
            "admit_source_code": _code(hosp.get("admitSource")),
            "discharge_disposition_code": _code(hosp.get("dischargeDisposition")),
            "reason_system": rs, "reason_code": rc, "identifier_value": _visit_number(_list(r, "identifier", "Encounter"))}


def _visit_number(ids) -> str | None:
    """The visit number among an Encounter's identifiers: type VN first, then use official/usual, then the first.

    It is the key HL7 v2 uses (PV1-19), so the HL7 visit and the FHIR Encounter of one stay become one visit."""
    ids = [i for i in ids if isinstance(i, dict) and isinstance(i.get("value"), str) and i["value"]] \
        if isinstance(ids, list) else []

    def rank(i):
        t = i.get("type") if isinstance(i.get("type"), dict) else {}
        codings = t.get("coding") if isinstance(t.get("coding"), list) else ()
        vn = any(isinstance(cd, dict) and cd.get("code") == "VN" for cd in codings)
        return (0 if vn else 1 if i.get("use") in ("official", "usual") else 2)
    return min(ids, key=rank)["value"] if ids else None


def _condition(r: dict, c: Ctx) -> dict:
    onset, _ = _choice(r, "onset", c)
    abate, abate_end = _choice(r, "abatement", c)
    return {"clinical_status": _coded_status(r, c, "clinicalStatus", CLINICAL_STATUS["Condition"]),
            "verification_status": _coded_status(r, c, "verificationStatus", VERIFICATION_STATUS),
            "category_code": _code(r.get("category")), **_codes(r, c, "code"),
            "subject_ref": c.ref(r.get("subject"), "subject"), "encounter_ref": c.ref(r.get("encounter"), "encounter"),
            "onset_at": onset, "abatement_at": abate_end or abate,
            "recorded_date": c.when(r.get("recordedDate"), "recordedDate"),
            "recorder_ref": c.ref(r.get("recorder"), "recorder"), "asserter_ref": c.ref(r.get("asserter"), "asserter")}


def _value(r: dict, c: Ctx, out: dict, prefix: str = "value_") -> None:
    q = r.get("valueQuantity")
    if isinstance(q, dict):
        v = q.get("value")
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise Invalid(f"{c.rt}.valueQuantity.value", "invalid", f"{c.rt}.valueQuantity.value {v!r} is not a number")
        out[prefix + "number"] = float(v) if v is not None else None
        out[prefix + "unit"] = q.get("unit")
        out[prefix + "unit_code"] = q.get("code")
        if prefix == "value_":
            out["value_comparator"] = q.get("comparator")
            out["value_unit_system"] = q.get("system")
    if "valueCodeableConcept" in r:
        s, k, d, _ = _cc(r["valueCodeableConcept"])
        out[prefix + "code_system"], out[prefix + "code"] = s, k
        if prefix == "value_":
            out["value_code_display"] = d
    if "valueString" in r:
        out[prefix + "string"] = r["valueString"]
    if prefix == "value_" and "valueBoolean" in r:
        out["value_boolean"] = r["valueBoolean"] if isinstance(r["valueBoolean"], bool) else None
    if prefix == "value_" and "valueInteger" in r:
        out["value_number"] = float(r["valueInteger"])


def _observation(r: dict, c: Ctx) -> dict:
    start, end = _choice(r, "effective", c)
    rr = _first(r, "referenceRange", "Observation")
    low, unit = _qty(rr.get("low"))
    high, unit2 = _qty(rr.get("high"))
    out = {"status": _status(r, c), "category_code": _code(r.get("category")), **_codes(r, c, "code"),
           "subject_ref": c.ref(r.get("subject"), "subject"), "encounter_ref": c.ref(r.get("encounter"), "encounter"),
           "effective_at": start, "effective_end": end, "issued": c.when(r.get("issued"), "issued"),
           "performer_ref": c.ref(r.get("performer"), "performer"),
           "data_absent_reason": _code(r.get("dataAbsentReason")),
           "interpretation_code": _code(r.get("interpretation")), "range_low": low, "range_high": high,
           "range_unit": unit or unit2, "specimen_ref": c.ref(r.get("specimen"), "specimen"),
           "has_member_refs": c.refs_joined(r.get("hasMember"), "hasMember")}
    _value(r, c, out)
    return out


def _components(r: dict, c: Ctx, rid: str) -> list[dict]:
    out = []
    for i, comp in enumerate(_list(r, "component", "Observation")):
        if not isinstance(comp, dict):
            continue
        if "code" not in comp:
            raise Invalid(f"Observation.component[{i}].code", "missing_mandatory",
                          f"Observation.component[{i}].code is required")
        s, k, d, t = _cc(comp.get("code"))
        row = {"resource_id": rid, "position": i, "code_system": s, "code": k, "code_display": d, "code_text": t}
        _value(comp, Ctx(f"Observation.component[{i}]", c.refs), row)
        out.append(row)
    return out


def _encounter_locations(r: dict, c: Ctx, rid: str) -> list[dict]:
    """Every Encounter.location[] entry with its period: where the patient was, when (the transfers of a stay)."""
    out = []
    for i, loc in enumerate(r.get("location") or ()):
        if not isinstance(loc, dict):
            continue
        start, end = _period(loc.get("period"), c, f"location[{i}].period")
        out.append({"resource_id": rid, "position": i, "location_ref": c.ref(loc.get("location"), f"location[{i}]"
                                                                                                   ".location"),
                    "status": loc.get("status") if isinstance(loc.get("status"), str) else None,
                    "period_start": start, "period_end": end})
    return out


def _med_code(r: dict, c: Ctx) -> dict:
    return {**_codes(r, c, "medicationCodeableConcept"),
            "medication_ref": c.ref(r.get("medicationReference"), "medicationReference")}


def _dosage(d) -> dict:
    d = d[0] if isinstance(d, list) and d else d
    if not isinstance(d, dict):
        return {}
    dr = d.get("doseAndRate")
    dose = dr[0].get("doseQuantity") if isinstance(dr, list) and dr and isinstance(dr[0], dict) else d.get("dose")
    v, u = _qty(dose)
    rs, rc, _, _ = _cc(d.get("route"))
    timing = d.get("timing") if isinstance(d.get("timing"), dict) else {}
    timing = timing.get("repeat") if isinstance(timing.get("repeat"), dict) else {}
    return {"dose_value": v, "dose_unit": u, "route_system": rs, "route_code": rc,
            "frequency": timing.get("frequency"), "period": timing.get("period"), "period_unit": timing.get("periodUnit")}


def _medication_request(r: dict, c: Ctx) -> dict:
    disp = r.get("dispenseRequest") if isinstance(r.get("dispenseRequest"), dict) else {}
    q, qu = _qty(disp.get("quantity"))
    days, _ = _qty(disp.get("expectedSupplyDuration"))
    vs, ve = _period(disp.get("validityPeriod"), c, "dispenseRequest.validityPeriod")
    return {"status": _status(r, c), "intent": r.get("intent"), **_med_code(r, c),
            "subject_ref": c.ref(r.get("subject"), "subject"), "encounter_ref": c.ref(r.get("encounter"), "encounter"),
            "authored_on": c.when(r.get("authoredOn"), "authoredOn"), "requester_ref": c.ref(r.get("requester"), "requester"),
            **_dosage(r.get("dosageInstruction")), "dispense_quantity": q, "dispense_unit": qu, "days_supply": days,
            "validity_start": vs, "validity_end": ve, "refills": disp.get("numberOfRepeatsAllowed")}


def _medication_event(r: dict, c: Ctx) -> dict:
    """MedicationAdministration, MedicationDispense and MedicationStatement share one row shape."""
    start, end = _choice(r, "effective", c)
    if c.rt == "MedicationDispense":
        start = c.when(r.get("whenHandedOver") or r.get("whenPrepared"), "whenHandedOver")
    q, qu = _qty(r.get("quantity"))
    days, _ = _qty(r.get("daysSupply"))
    dose = _dosage(r.get("dosage") or r.get("dosageInstruction"))
    return {"status": _status(r, c), **_med_code(r, c), "subject_ref": c.ref(r.get("subject"), "subject"),
            "encounter_ref": c.ref(r.get("context") or r.get("encounter"), "context"), "effective_at": start,
            "effective_end": end, "quantity": q, "quantity_unit": qu, "days_supply": days,
            "dose_value": dose.get("dose_value"), "dose_unit": dose.get("dose_unit"), "route_code": dose.get("route_code")}


def _medication(r: dict, c: Ctx) -> dict:
    return {"status": r.get("status"), **_codes(r, c, "code"), "form_code": _code(r.get("form"))}


def _procedure(r: dict, c: Ctx) -> dict:
    start, end = _choice(r, "performed", c)
    perf = _first(r, "performer", "Procedure")
    return {"status": _status(r, c), **_codes(r, c, "code"), "category_code": _code(r.get("category")),
            "subject_ref": c.ref(r.get("subject"), "subject"), "encounter_ref": c.ref(r.get("encounter"), "encounter"),
            "performed_at": start, "performed_end": end,
            "performer_ref": c.ref(perf.get("actor"), "performer[0].actor"),
            "location_ref": c.ref(r.get("location"), "location"), "body_site_code": _code(r.get("bodySite")),
            "reason_code": _code(r.get("reasonCode"))}


def _allergy(r: dict, c: Ctx) -> dict:
    onset, _ = _choice(r, "onset", c)
    reac = _first(r, "reaction", "AllergyIntolerance")
    return {"clinical_status": _coded_status(r, c, "clinicalStatus", CLINICAL_STATUS["AllergyIntolerance"]),
            "verification_status": _coded_status(r, c, "verificationStatus", VERIFICATION_STATUS),
            "type": r.get("type"), "category": _joined(_list(r, "category", "AllergyIntolerance"), ";"),
            "criticality": r.get("criticality"), **_codes(r, c, "code"),
            "patient_ref": c.ref(r.get("patient"), "patient"), "encounter_ref": c.ref(r.get("encounter"), "encounter"),
            "onset_at": onset, "recorded_date": c.when(r.get("recordedDate"), "recordedDate"),
            "recorder_ref": c.ref(r.get("recorder"), "recorder"), "reaction_code": _code(reac.get("manifestation")),
            "reaction_severity": reac.get("severity")}


def _immunization(r: dict, c: Ctx) -> dict:
    v, u = _qty(r.get("doseQuantity"))
    return {"status": _status(r, c), **_codes(r, c, "vaccineCode"), "patient_ref": c.ref(r.get("patient"), "patient"),
            "encounter_ref": c.ref(r.get("encounter"), "encounter"),
            "occurrence_at": c.when(r.get("occurrenceDateTime"), "occurrenceDateTime"),
            "recorded": c.when(r.get("recorded"), "recorded"),
            "primary_source": r.get("primarySource") if isinstance(r.get("primarySource"), bool) else None,
            "lot_number": r.get("lotNumber"), "expiration_date": _date(r.get("expirationDate"),
                                                                       "Immunization.expirationDate"),
            "route_code": _code(r.get("route")), "site_code": _code(r.get("site")), "dose_value": v, "dose_unit": u}


def _document(r: dict, c: Ctx) -> dict:
    content = r.get("content")
    if not isinstance(content, list) or not content or not all(isinstance(x, dict) for x in content):
        raise Invalid("DocumentReference.content", "missing_mandatory", "DocumentReference.content must list attachments")
    for i, x in enumerate(content):
        if not isinstance(x.get("attachment"), dict):
            raise Invalid(f"DocumentReference.content[{i}].attachment", "invalid" if "attachment" in x else
                          "missing_mandatory", f"DocumentReference.content[{i}].attachment is not an Attachment")
    text, att = None, content[0]["attachment"]
    for i, x in enumerate(content):
        a = x["attachment"]
        text = _attachment_text(a, f"DocumentReference.content[{i}].attachment")
        if text is not None:
            att = a
            break
    ctx = r.get("context") if isinstance(r.get("context"), dict) else {}
    ps, pe = _period(ctx.get("period"), c, "context.period")
    return {"status": _status(r, c), "doc_status": r.get("docStatus"), **_codes(r, c, "type"),
            "category_code": _code(r.get("category")), "subject_ref": c.ref(r.get("subject"), "subject"),
            "encounter_ref": c.ref(ctx.get("encounter"), "context.encounter"), "date": c.when(r.get("date"), "date"),
            "period_start": ps, "period_end": pe, "author_ref": c.ref(r.get("author"), "author"),
            "custodian_ref": c.ref(r.get("custodian"), "custodian"), "content_type": att.get("contentType"),
            "content_language": att.get("language"), "content_title": att.get("title"), "content_url": att.get("url"),
            "content_size": att.get("size") if isinstance(att.get("size"), int) else None, "text": text}


def _report(r: dict, c: Ctx) -> dict:
    start, end = _choice(r, "effective", c)
    text = _attachment_text(_first(r, "presentedForm", "DiagnosticReport"), "DiagnosticReport.presentedForm[0]")
    return {"status": _status(r, c), "category_code": _code(r.get("category")), **_codes(r, c, "code"),
            "subject_ref": c.ref(r.get("subject"), "subject"), "encounter_ref": c.ref(r.get("encounter"), "encounter"),
            "effective_at": start, "effective_end": end, "issued": c.when(r.get("issued"), "issued"),
            "performer_ref": c.ref(r.get("performer"), "performer"),
            "result_refs": c.refs_joined(r.get("result"), "result"), "conclusion": r.get("conclusion"), "text": text}


def _practitioner(r: dict, c: Ctx) -> dict:
    fam, given, _ = _human_name(_list(r, "name", "Practitioner"))
    npi = next((i.get("value") for i in _list(r, "identifier", "Practitioner") if isinstance(i, dict)
                and i.get("system") == "http://hl7.org/fhir/sid/us-npi"), None)
    q = _first(r, "qualification", "Practitioner")
    return {"active": r.get("active") if isinstance(r.get("active"), bool) else None, "gender": r.get("gender"),
            "family_name": fam, "given_names": given, "identifiers": _json(r.get("identifier")), "npi": npi,
            "telecom": _json(r.get("telecom")),
            "qualification_code": _code(q.get("code"))}


def _practitioner_role(r: dict, c: Ctx) -> dict:
    ss, sc, _, _ = _cc(r.get("specialty"))
    return {"active": r.get("active") if isinstance(r.get("active"), bool) else None,
            "practitioner_ref": c.ref(r.get("practitioner"), "practitioner"),
            "organization_ref": c.ref(r.get("organization"), "organization"),
            "location_ref": c.ref(r.get("location"), "location"), "role_code": _code(r.get("code")),
            "specialty_system": ss, "specialty_code": sc}


def _organization(r: dict, c: Ctx) -> dict:
    ts, tc, _, _ = _cc(r.get("type"))
    a = _address(r.get("address"))
    a.pop("address_district", None)
    return {"active": r.get("active") if isinstance(r.get("active"), bool) else None, "name": r.get("name"),
            "type_system": ts, "type_code": tc, "identifiers": _json(r.get("identifier")),
            "part_of_ref": c.ref(r.get("partOf"), "partOf"), **a}


def _location(r: dict, c: Ctx) -> dict:
    ts, tc, _, _ = _cc(r.get("type"))
    a = _address(r.get("address"))
    a.pop("address_district", None)
    pos = r.get("position") if isinstance(r.get("position"), dict) else {}
    return {"status": r.get("status"), "name": r.get("name"), "type_system": ts, "type_code": tc, **a,
            "latitude": pos.get("latitude"), "longitude": pos.get("longitude"),
            "managing_organization_ref": c.ref(r.get("managingOrganization"), "managingOrganization"),
            "part_of_ref": c.ref(r.get("partOf"), "partOf")}


def _device(r: dict, c: Ctx) -> dict:
    """Device (R4 has no use period: the IG takes manufactureDate → expirationDate as the exposure)."""
    udi = _first(r, "udiCarrier", "Device")
    return {"status": _status(r, c), **_codes(r, c, "type"), "patient_ref": c.ref(r.get("patient"), "patient"),
            "lot_number": r.get("lotNumber"), "udi_device_identifier": udi.get("deviceIdentifier"),
            "manufacture_date": c.when(r.get("manufactureDate"), "manufactureDate"),
            "expiration_date": c.when(r.get("expirationDate"), "expirationDate")}


def _specimen(r: dict, c: Ctx) -> dict:
    col = r.get("collection") if isinstance(r.get("collection"), dict) else {}
    start, end = _choice(col, "collected", Ctx("Specimen.collection", c.refs))
    qty, unit = _qty(col.get("quantity"))
    ss, sc, _, _ = _cc(col.get("bodySite"))
    return {"status": _status(r, c), **_codes(r, c, "type"), "subject_ref": c.ref(r.get("subject"), "subject"),
            "collected_at": start, "collected_end": end, "quantity_value": qty, "quantity_unit": unit,
            "body_site_system": ss, "body_site_code": sc}


def _coverage(r: dict, c: Ctx) -> dict:
    """Coverage without the member and subscriber ids (identifying): who pays, which plan, when."""
    start, end = _period(r.get("period"), c, "period")
    payor = _first(r, "payor", "Coverage")
    ts, tc, _, tt = _cc(r.get("type"))
    return {"status": _status(r, c), "beneficiary_ref": c.ref(r.get("beneficiary"), "beneficiary"),
            "period_start": start, "period_end": end, "payor_ref": c.ref(payor, "payor[0]") if payor else None,
            "payor_display": payor.get("display"), "type_system": ts, "type_code": tc, "type_text": tt,
            "relationship_code": _code(r.get("relationship"))}


EXTRACT = {"Patient": _patient, "Encounter": _encounter, "Condition": _condition, "Observation": _observation,
           "MedicationRequest": _medication_request, "MedicationAdministration": _medication_event,
           "MedicationDispense": _medication_event, "MedicationStatement": _medication_event,
           "Medication": _medication, "Procedure": _procedure, "AllergyIntolerance": _allergy,
           "Immunization": _immunization, "DocumentReference": _document, "DiagnosticReport": _report,
           "Practitioner": _practitioner, "PractitionerRole": _practitioner_role, "Organization": _organization,
           "Location": _location, "Device": _device, "Specimen": _specimen, "Coverage": _coverage}
SUBJECT_KEYS = ("subject", "patient", "beneficiary")
_BAD_ID = re.compile(r"[\s/]")
# Top-level CodeableConcept elements whose codings go to stg_fhir_coding (other types: every top-level one).
_MED_CODED = ("category", "medicationCodeableConcept", "reasonCode", "statusReason", "courseOfTherapyType", "type")
CODED = {
    "Patient": ("maritalStatus",), "Encounter": ("type", "serviceType", "priority", "reasonCode"),
    "Condition": ("clinicalStatus", "verificationStatus", "category", "severity", "code", "bodySite"),
    "Observation": ("category", "code", "valueCodeableConcept", "interpretation", "dataAbsentReason", "bodySite",
                    "method"),
    "MedicationRequest": _MED_CODED, "MedicationAdministration": _MED_CODED, "MedicationDispense": _MED_CODED,
    "MedicationStatement": _MED_CODED, "Medication": ("code", "form"),
    "Procedure": ("category", "code", "bodySite", "reasonCode", "outcome", "statusReason"),
    "AllergyIntolerance": ("clinicalStatus", "verificationStatus", "code"),
    "Immunization": ("vaccineCode", "route", "site", "reasonCode", "statusReason"),
    "DocumentReference": ("type", "category", "securityLabel"), "DiagnosticReport": ("category", "code",
                                                                                      "conclusionCode"),
    "Practitioner": (), "PractitionerRole": ("code", "specialty"), "Organization": ("type",),
    "Location": ("type", "physicalType"), "Device": ("type",), "Specimen": ("type",), "Coverage": ("type",),
}


# -- one resource -------------------------------------------------------------------------------------------------
def _check_required(res: dict, rt: str) -> None:
    for el in REQUIRED.get(rt, ()):
        if el.endswith("[x]"):
            base = el[:-3]
            if not any(k.startswith(base) and k[len(base):len(base) + 1].isupper() for k in res):
                raise Invalid(f"{rt}.{el}", "missing_mandatory", f"{rt}.{el} is required and missing")
        elif res.get(el) in (None, "", [], {}):
            raise Invalid(f"{rt}.{el}", "missing_mandatory", f"{rt}.{el} is required and missing")


def stage_resource(res, raw: str | None = None, refs: dict | None = None, id_hint: str | None = None
                   ) -> dict[str, list[dict]]:
    """Rows per staging table for one resource; raises Invalid(path, reason, detail)."""
    if not isinstance(res, dict):
        raise Invalid("$", "invalid", f"a resource must be a JSON object, not {type(res).__name__}")
    rt = res.get("resourceType")
    if not isinstance(rt, str) or not rt:
        raise Invalid("resourceType", "missing_mandatory", "resourceType is missing: not a FHIR resource")
    if rt not in R4_TYPES:
        raise Invalid("resourceType", "invalid", f"resourceType {rt!r} is not a FHIR R4 resource type")
    rid = res.get("id", id_hint)
    if rid is None and id_hint is None:
        raise Invalid(f"{rt}.id", "missing_mandatory", f"{rt}.id is missing")
    if not isinstance(rid, str) or not rid or len(rid) > 64 or _BAD_ID.search(rid):
        raise Invalid(f"{rt}.id", "invalid", f"{rt}.id {rid!r} is not a FHIR id (1-64 characters, no spaces or /)")
    _check_required(res, rt)
    c = Ctx(rt, refs)
    meta = res.get("meta") if isinstance(res.get("meta"), dict) else {}
    base = {"resource_id": rid, "version_id": meta.get("versionId"),
            "last_updated": c.when(meta.get("lastUpdated"), "meta.lastUpdated")}
    raw = raw if raw is not None else orjson.dumps(res).decode()
    fn = EXTRACT.get(rt)
    if fn is None:
        subj = next((res[k] for k in SUBJECT_KEYS if k in res), None)
        out = {"stg_fhir_other": [{"resource_type": rt, **base, "subject_ref": c.ref(subj, "subject"), "raw": raw}]}
    else:
        out = {TABLE_OF[rt]: [{**base, **fn(res, c), "raw": raw}]}
        if rt == "Observation" and res.get("component"):
            out["stg_fhir_observation_component"] = _components(res, c, rid)
        if rt == "Encounter" and isinstance(res.get("location"), list) and res["location"]:
            out["stg_fhir_encounter_location"] = _encounter_locations(res, c, rid)
    codings = []
    elements = CODED.get(rt)
    for el in elements if elements is not None else res:
        v = res.get(el)
        if isinstance(v, dict):
            v = (v,)
        elif not isinstance(v, list) or not v or not isinstance(v[0], dict):
            continue
        for pos, cc in enumerate(v):
            if isinstance(cc, dict) and isinstance(cc.get("coding"), list):
                for k, cd in enumerate(cc["coding"]):
                    if isinstance(cd, dict):
                        codings.append({"resource_type": rt, "resource_id": rid, "element": el, "position": pos,
                                        "system": cd.get("system"), "code": cd.get("code"),
                                        "display": cd.get("display"), "text": cc.get("text"), "coding_index": k})
    if codings:
        out["stg_fhir_coding"] = codings
    for table, rows in out.items():
        types = ROW_TYPES[table]
        for row in rows:
            for k, v in row.items():
                if v is not None and type(v) not in types.get(k, (type(v),)):  # a key not in the table: not kept
                    _wrong_type(res, rt, v, types[k][0], f"{table}.{k}")
                if type(v) is int and not -2**31 <= v < 2**31:
                    if types.get(k) is not _PY[pa.int64()]:  # a decimal: staged as the float it is in JSON
                        row[k] = float(v)
                    else:  # FHIR R4's integer, unsignedInt and positiveInt are 32-bit
                        _wrong_type(res, rt, v, int, f"{table}.{k}", "beyond FHIR's 32-bit integer range "
                                    "(-2,147,483,648 to 2,147,483,647)")
    return out


def _wrong_type(res: dict, rt: str, v, want: type, column: str, beyond: str | None = None):
    """Refuse a resource whose element has a JSON type FHIR does not allow there, naming the element."""
    def where(x, path):
        if x is v if isinstance(v, (list, dict)) else (type(x) is type(v) and x == v):
            return path
        items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
        for k, y in items:
            if (p := where(y, f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}")) is not None:
                return p
        return None
    path = where(res, rt)
    if path is None:  # not a value of the resource: medlake made it
        raise TypeError(f"{column} = {v!r:.60} is not {_WANT[want]}")
    if beyond:
        raise Invalid(path, "invalid", f"{path} is {v}, {beyond}")
    kind = {str: "a string", bool: "true or false", int: "a number", float: "a number", list: "a list",
            dict: "an object"}.get(type(v), type(v).__name__)
    raise Invalid(path, "invalid", f"{path} is {kind} ({orjson.dumps(v).decode()[:60]}); FHIR has "
                  f"{_WANT[want]} there")


# -- files --------------------------------------------------------------------------------------------------------
def _json_error(e: orjson.JSONDecodeError, data: bytes, loc: Loc) -> Rejected:
    pos = getattr(e, "pos", 0) or 0
    truncated = pos >= len(data.rstrip()) - 1 or "end of" in str(e).lower() or "EOF" in str(e)
    if loc.line is None:  # a whole document: the record is the file; the line says where it broke
        loc.line, loc.whole = data.count(b"\n", 0, pos) + 1, True
    return Rejected(loc, "truncated" if truncated else "bad_json",
                    f"{'truncated JSON' if truncated else 'not valid JSON'}: {str(e).splitlines()[0]}", data)


def _is_manifest(doc) -> bool:
    return isinstance(doc, dict) and "resourceType" not in doc and isinstance(doc.get("output"), list) \
        and ("transactionTime" in doc or "request" in doc)


def _manifest(doc: dict, loc: Loc) -> Staged | Rejected:
    rows = []
    for i, o in enumerate(doc["output"]):
        if not isinstance(o, dict) or not isinstance(o.get("url"), str) or o.get("type") not in R4_TYPES:
            loc.field = f"output[{i}]"
            return Rejected(loc, "invalid", f"manifest output[{i}] needs a url and a FHIR resource type",
                            orjson.dumps(doc))
        rows.append({"transaction_time": _when(doc.get("transactionTime"), "transactionTime"),
                     "request": doc.get("request"), "resource_type": o["type"], "url": o["url"],
                     "count": o.get("count") if type(o.get("count")) is int and 0 <= o["count"] < 2**63 else None})
    return Staged(loc, {"stg_fhir_bulk_manifest": rows})


def _resource_record(res, raw: str | None, loc: Loc, refs=None, id_hint=None, prefix: str = "") -> Staged | Rejected:
    try:
        if isinstance(res, dict) and isinstance(res.get("id"), str):
            loc.message_id = res["id"]
        return Staged(loc, stage_resource(res, raw, refs, id_hint))
    except Invalid as e:
        loc.field = prefix + e.path
        return Rejected(loc, e.reason, e.detail, raw.encode() if raw is not None else orjson.dumps(res))
    except Exception as e:  # a reader bug: this resource is kept in quarantine, the rest of the file goes on
        loc.field = prefix + str(res.get("resourceType"))
        return Rejected(loc, "parser_error", f"medlake could not read this {res.get('resourceType')} ({type(e).__name__}: "
                        f"{e}); it is kept here: report it, and run `medlake quarantine retry` once medlake is fixed",
                        raw.encode() if raw is not None else orjson.dumps(res))


def _fullurl_id(url) -> str | None:
    if not isinstance(url, str) or not url:
        return None
    return url.rsplit(":", 1)[1] if url.startswith("urn:") else url.rstrip("/").rsplit("/", 1)[-1]


def bundle_records(doc: dict, name: str, path: str = "Bundle") -> Iterator[Staged | Rejected]:
    entries = doc.get("entry") or []
    if not isinstance(entries, list):
        yield Rejected(Loc(name, field=f"{path}.entry"), "invalid", f"{path}.entry is not a list", orjson.dumps(doc))
        return
    refs = {}
    for e in entries:
        r = e.get("resource") if isinstance(e, dict) else None
        if isinstance(r, dict) and isinstance(e.get("fullUrl"), str):
            rid = r.get("id") or _fullurl_id(e["fullUrl"])
            refs[e["fullUrl"]] = f"{r.get('resourceType')}/{rid}"
    for i, e in enumerate(entries):
        p = f"{path}.entry[{i}]"
        loc = Loc(name, field=p)
        if not isinstance(e, dict):
            yield Rejected(loc, "invalid", f"{p} is not an object", orjson.dumps(e))
            continue
        res = e.get("resource")
        if res is None:
            req = e.get("request") if isinstance(e.get("request"), dict) else {}
            if not req:
                yield Rejected(loc, "missing_mandatory", f"{p} has neither a resource nor a request", orjson.dumps(e))
                continue
            yield Staged(loc, {"stg_fhir_other": [{
                "resource_type": "Bundle.entry.request", "resource_id": None, "request_method": req.get("method"),
                "request_url": req.get("url"), "raw": orjson.dumps(e).decode()}]})
            continue
        if isinstance(res, dict) and res.get("resourceType") == "Bundle":
            yield from bundle_records(res, name, p + ".resource")
            continue
        hint = _fullurl_id(e.get("fullUrl")) if isinstance(res, dict) and "id" not in res else None
        yield _resource_record(res, None, loc, refs, hint, prefix=p + ".resource.")


def document_records(doc, name: str, data: bytes) -> Iterator[Staged | Rejected]:
    """A whole JSON document: a Bundle, a single resource or a Bulk Data manifest."""
    loc = Loc(name)
    if _is_manifest(doc):
        yield _manifest(doc, loc)
    elif isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        yield from bundle_records(doc, name)
    else:
        yield _resource_record(doc, data.decode("utf-8", "replace"), loc)


def _strip_bom(b: bytes) -> bytes:
    return b[3:] if b.startswith(b"\xef\xbb\xbf") else b


def read(stream: BinaryIO, name: str, source=None) -> Iterator[Staged | Rejected]:
    """Records of one FHIR file: NDJSON is streamed line by line; other JSON is read whole."""
    first = stream.readline()
    head = _strip_bom(first).strip()
    ndjson = name.lower().endswith((".ndjson", ".jsonl"))
    if not ndjson and head.startswith(b"{") and head.endswith(b"}"):
        try:
            doc = orjson.loads(head)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and not _is_manifest(doc) and doc.get("resourceType") != "Bundle":
            ndjson = True
    if ndjson:
        yield from ndjson_records(first, stream, name)
        return
    data = _strip_bom(first + stream.read())
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        yield _json_error(e, data, Loc(name))
        return
    yield from document_records(doc, name, data)


def ndjson_records(first: bytes, stream: BinaryIO, name: str) -> Iterator[Staged | Rejected]:
    offset = 0
    line_no = 0
    for b in _chain(first, stream):
        line_no += 1
        here = offset
        offset += len(b)
        if line_no == 1:
            b = _strip_bom(b)
        s = b.strip()
        if not s:
            continue
        loc = Loc(name, line=line_no, offset=here)
        try:
            res = orjson.loads(s)
        except orjson.JSONDecodeError as e:
            r = _json_error(e, s, loc)
            r.reason = "truncated" if r.reason == "truncated" and not b.endswith(b"\n") else "bad_json"
            yield r
            continue
        yield _resource_record(res, s.decode(), loc)


def _chain(first: bytes, stream: BinaryIO):
    if first:
        yield first
    yield from stream
