"""Where mapping work is kept: code systems, the gap inventory, suggestions, decisions, SOURCE_TO_CONCEPT_MAP.

Tables (medlake's own, beside the CDM):
- `mapping_code_system`: code_system (a URI or HL7 table name as the source sends it) -> source_vocabulary_id
  (the id used in SOURCE_TO_CONCEPT_MAP, at most 20 characters) and, for known vocabularies, vocabulary_id.
- `mapping_gap`: the gap inventory (`gaps.refresh`), one row per unmapped code.
- `mapping_suggestion`: ranked candidates per gap with score and evidence (`suggest.refresh`).
- `mapping_decision`: append-only history of accept / reject / no-match with who and when (the CDM's
  SOURCE_TO_CONCEPT_MAP has no such columns); the current decision per code is its latest row.
"""
from __future__ import annotations

import hashlib
import re

import pyarrow as pa

# Code systems as sources send them -> OMOP vocabulary_id.
KNOWN_SYSTEMS = {
    "http://loinc.org": "LOINC", "ln": "LOINC", "loinc": "LOINC", "urn:oid:2.16.840.1.113883.6.1": "LOINC",
    "http://snomed.info/sct": "SNOMED", "sct": "SNOMED", "snm": "SNOMED", "snomed": "SNOMED", "snomedct": "SNOMED",
    "urn:oid:2.16.840.1.113883.6.96": "SNOMED",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm", "rxnorm": "RxNorm", "rxn": "RxNorm",
    "urn:oid:2.16.840.1.113883.6.88": "RxNorm",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM", "i10c": "ICD10CM", "icd10cm": "ICD10CM", "icd-10-cm": "ICD10CM",
    "urn:oid:2.16.840.1.113883.6.90": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD10", "i10": "ICD10", "icd10": "ICD10", "icd-10": "ICD10",
    "urn:oid:2.16.840.1.113883.6.3": "ICD10",
    "https://medlake.org/fhir/sid/icd-10-cn": "ICD10CN", "icd10cn": "ICD10CN", "icd-10-cn": "ICD10CN",
    "urn:oid:2.16.156.10011.2.3.3.11": "ICD10CN",
    "http://hl7.org/fhir/sid/cvx": "CVX", "cvx": "CVX", "urn:oid:2.16.840.1.113883.12.292": "CVX",
    "http://unitsofmeasure.org": "UCUM", "ucum": "UCUM", "urn:oid:2.16.840.1.113883.6.8": "UCUM",
    "http://www.ama-assn.org/go/cpt": "CPT4", "c4": "CPT4", "cpt": "CPT4",
    "http://hl7.org/fhir/sid/ndc": "NDC", "ndc": "NDC",
    "http://www.whocc.no/atc": "ATC", "atc": "ATC",
}
ICD10_FAMILY = ("ICD10", "ICD10CM", "ICD10CN")

TABLES = {
    "mapping_code_system": pa.schema([("code_system", pa.string()), ("source_vocabulary_id", pa.string()),
                                      ("vocabulary_id", pa.string())]),
    "mapping_gap": pa.schema([
        ("gap_id", pa.string()), ("code_system", pa.string()), ("source_vocabulary_id", pa.string()),
        ("code", pa.string()), ("display", pa.string()), ("kind", pa.string()), ("sources", pa.string()),
        ("rows", pa.int64()), ("persons", pa.int64()), ("units", pa.string()), ("unit", pa.string()),
        ("value_median", pa.float64()), ("examples", pa.string()), ("refreshed_at", pa.timestamp("us"))]),
    "mapping_suggestion": pa.schema([
        ("gap_id", pa.string()), ("rank", pa.int64()), ("concept_id", pa.int64()), ("concept_name", pa.string()),
        ("vocabulary_id", pa.string()), ("domain_id", pa.string()), ("score", pa.float64()),
        ("evidence", pa.string())]),
    "mapping_decision": pa.schema([
        ("source_vocabulary_id", pa.string()), ("source_code", pa.string()), ("code_system", pa.string()),
        ("source_code_description", pa.string()), ("decision", pa.string()), ("target_concept_id", pa.int64()),
        ("score", pa.float64()), ("evidence", pa.string()), ("decided_by", pa.string()),
        ("decided_at", pa.timestamp("us")), ("how", pa.string())]),
}
SQL_TYPE = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.timestamp("us"): "TIMESTAMP"}


def create_table(engine, name: str, schema: pa.Schema) -> None:
    cols = ", ".join(f'"{f.name}" {SQL_TYPE[f.type]}' for f in schema)
    engine.execute(f'CREATE TABLE IF NOT EXISTS "{name}" ({cols})')


def ensure(engine) -> None:
    """Create medlake's mapping tables that do not exist yet."""
    have = set(engine.tables())
    for name, schema in TABLES.items():
        if name not in have:
            create_table(engine, name, schema)


def require_cdm(engine) -> None:
    have = set(engine.tables())
    if "concept" not in have or "source_to_concept_map" not in have:
        raise ValueError("this store has no OMOP CDM: run `medlake init` and `medlake vocab load` first")


def _transform_systems() -> dict:
    try:  # the transform's own table of code systems wins, so both look SOURCE_TO_CONCEPT_MAP up the same way
        from medlake.transform.rules import CODE_SYSTEMS
        return CODE_SYSTEMS
    except ImportError:
        return {}


def vocabulary_of(code_system: str | None) -> str | None:
    """The OMOP vocabulary a code system is, when it is a known one."""
    if not code_system:
        return None
    s = code_system.strip()
    return _transform_systems().get(s) or KNOWN_SYSTEMS.get(s.rstrip("/").lower()) or KNOWN_SYSTEMS.get(s)


def register_with_transform(engine, systems) -> None:
    """Tell the transform which source_vocabulary_id a local code system has in SOURCE_TO_CONCEPT_MAP."""
    local = {s: source_vocabulary_id(s) for s in systems if s and not vocabulary_of(s)}
    if not local:
        return
    try:
        from medlake.transform.run import register_code_systems
    except ImportError:
        return
    if "medlake_code_system" in engine.tables():
        have = {(r["system"], r["vocabulary_id"]) for r in engine.query(
            "SELECT system, vocabulary_id FROM medlake_code_system").to_pylist()}
        local = {k: v for k, v in local.items() if (k, v) not in have}
    if local:
        register_code_systems(engine, local)


def source_vocabulary_id(code_system: str | None) -> str:
    """The SOURCE_TO_CONCEPT_MAP source_vocabulary_id of a code system: the known vocabulary's id, else a
    readable short form of the system (<= 20 characters, a hash tail when it had to be cut)."""
    known = vocabulary_of(code_system)
    if known:
        return known
    s = (code_system or "local").strip()
    short = re.sub(r"^(urn:(oid:)?|https?://)", "", s)
    short = re.sub(r"^medlake[:.]", "", short)
    short = re.sub(r"[^A-Za-z0-9:._-]+", "-", short).strip("-") or "local"
    if len(short) <= 20:
        return short
    return short[:11] + "~" + hashlib.sha1(s.encode()).hexdigest()[:8]


def gap_id(code_system: str | None, code: str) -> str:
    """A short stable id of a source code (8 hex digits)."""
    return hashlib.sha1(f"{code_system or ''}|{code}".encode()).hexdigest()[:8]


def replace_rows(engine, name: str, rows: list[dict], where: str | None = None, params: list | None = None) -> None:
    """Replace a mapping table's rows (all, or those matching `where`) in one transaction."""
    ensure(engine)
    schema = TABLES[name]
    with engine.transaction():
        engine.execute(f'DELETE FROM "{name}"' + (f" WHERE {where}" if where else ""), params)
        if rows:
            engine.load_arrow(name, pa.Table.from_pylist(rows, schema=schema))


def append_rows(engine, name: str, rows: list[dict]) -> None:
    ensure(engine)
    if rows:
        engine.load_arrow(name, pa.Table.from_pylist(rows, schema=TABLES[name]))


def remember_systems(engine, systems) -> None:
    """Record code system -> source_vocabulary_id for every system seen (SQL joins use it)."""
    ensure(engine)
    have = {r["code_system"] for r in engine.query("SELECT code_system FROM mapping_code_system").to_pylist()}
    new = [{"code_system": s, "source_vocabulary_id": source_vocabulary_id(s), "vocabulary_id": vocabulary_of(s)}
           for s in sorted({s for s in systems if s is not None} - have)]
    append_rows(engine, "mapping_code_system", new)
