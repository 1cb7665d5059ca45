"""The gap inventory: every source code in staging, whether it reaches a standard concept, and what it touches.

Computed from the staging tables (`stg_hl7_*`, `stg_fhir_*`, `stg_csv_*`) and the vocabulary, set-based (a few
GROUP BY queries per staging table; no row goes through Python). A code is *mapped* when its code system is a
known vocabulary and the code is a standard concept or has a valid 'Maps to', or when SOURCE_TO_CONCEPT_MAP has
a valid row for it (target 0 = reviewed, no standard concept exists: `no_match`). Everything else is a *gap*.
People are counted per source as distinct patient identifiers (pseudonymous counts; no identifier leaves here).
"""
from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass, field

from medlake.mapping import store
from medlake.transform import compile as tx
from medlake.transform import rules

# table, kind, code column, code system column, display columns (first non-null), unit column(s), value, patient
EXTRACTS = [
    ("stg_hl7_observation", "lab", "code", "code_system", ("code_text",), ("units", "units_text"), "value_number",
     "patient_id"),
    ("stg_hl7_diagnosis", "diagnosis", "code", "code_system", ("code_text", "description"), (), None, "patient_id"),
    ("stg_hl7_procedure", "procedure", "code", "code_system", ("code_text", "description"), (), None, "patient_id"),
    ("stg_hl7_medication", "drug", "drug_code", "drug_code_system", ("drug_name",), (), None, "patient_id"),
    ("stg_hl7_immunization", "vaccine", "vaccine_code", "vaccine_code_system", ("vaccine_name",), (), None,
     "patient_id"),
    ("stg_hl7_allergy", "allergy", "code", "code_system", ("code_text",), (), None, "patient_id"),
    ("stg_fhir_observation", "lab", "code", "code_system", ("code_display", "code_text"), ("value_unit",
                                                                                          "value_unit_code"),
     "value_number", "subject_ref"),
    ("stg_fhir_condition", "diagnosis", "code", "code_system", ("code_display", "code_text"), (), None,
     "subject_ref"),
    ("stg_fhir_procedure", "procedure", "code", "code_system", ("code_display", "code_text"), (), None,
     "subject_ref"),
    ("stg_fhir_medication_request", "drug", "code", "code_system", ("code_display", "code_text"), (), None,
     "subject_ref"),
    ("stg_fhir_medication_administration", "drug", "code", "code_system", ("code_display", "code_text"), (), None,
     "subject_ref"),
    ("stg_fhir_medication_dispense", "drug", "code", "code_system", ("code_display", "code_text"), (), None,
     "subject_ref"),
    ("stg_fhir_medication_statement", "drug", "code", "code_system", ("code_display", "code_text"), (), None,
     "subject_ref"),
    ("stg_fhir_immunization", "vaccine", "code", "code_system", ("code_display", "code_text"), (), None,
     "patient_ref"),
    ("stg_fhir_allergy_intolerance", "allergy", "code", "code_system", ("code_display", "code_text"), (), None,
     "patient_ref"),
    ("stg_csv_pharmacy", "drug", "drug_code", "drug_code_system", ("drug_name",), (), None, "patient_id"),
]


@dataclass
class Code:
    """One source code (code system + code) as staging holds it."""
    code_system: str | None
    code: str
    kind: str
    display: str | None = None
    sources: dict = field(default_factory=dict)        # source -> rows
    persons: dict = field(default_factory=dict)        # source -> distinct patients
    units: dict = field(default_factory=dict)          # unit text -> (rows, median value)
    displays: dict = field(default_factory=dict)       # display -> rows
    status: str = "gap"                                # mapped | no_match | gap
    target_concept_id: int | None = None
    via: str = ""                                      # vocabulary | source_to_concept_map

    @property
    def gap_id(self) -> str:
        return store.gap_id(self.code_system, self.code)

    @property
    def rows(self) -> int:
        return sum(self.sources.values())

    @property
    def n_persons(self) -> int:
        return sum(self.persons.values())

    @property
    def unit(self) -> str | None:
        """The most frequent non-empty unit text."""
        units = [(n, u) for u, (n, _) in self.units.items() if u]
        return max(units)[1] if units else None

    @property
    def value_median(self) -> float | None:
        u = self.unit
        return self.units[u][1] if u is not None else (self.units.get("", (0, None))[1] if self.units else None)

    @property
    def source_vocabulary_id(self) -> str:
        return store.source_vocabulary_id(self.code_system)


def _q(name: str) -> str:
    return f'"{name}"'


def _coalesce(cols, have) -> str | None:
    cols = [c for c in cols if c in have]
    if not cols:
        return None
    return cols[0] if len(cols) == 1 else "COALESCE(" + ", ".join(_q(c) for c in cols) + ")"


def collect(engine) -> dict[tuple, Code]:
    """Every source code in staging with its rows, people, displays and units (no vocabulary lookup yet)."""
    codes: dict[tuple, Code] = {}
    tables = set(engine.tables())
    for table, kind, code, system, displays, units, value, person in EXTRACTS:
        if table not in tables:
            continue
        have = {c.name for c in engine.columns(table)}
        if code not in have or "source" not in have:
            continue
        sys_col = _q(system) if system in have else "NULL"
        disp = _coalesce(displays, have) or "NULL"
        pers = _q(person) if person in have else "NULL"
        base = f"FROM {_q(table)} WHERE {_q(code)} IS NOT NULL AND {_q(code)} <> ''"
        for r in engine.query(
                f"SELECT source, {sys_col} AS code_system, {_q(code)} AS code, {disp} AS display, COUNT(*) AS n "
                f"{base} GROUP BY 1, 2, 3, 4").to_pylist():
            c = codes.setdefault((r["code_system"], r["code"]), Code(r["code_system"], r["code"], kind))
            c.sources[r["source"]] = c.sources.get(r["source"], 0) + r["n"]
            if r["display"]:
                c.displays[r["display"]] = c.displays.get(r["display"], 0) + r["n"]
        for r in engine.query(
                f"SELECT source, {sys_col} AS code_system, {_q(code)} AS code, COUNT(DISTINCT {pers}) AS p "
                f"{base} GROUP BY 1, 2, 3").to_pylist():
            c = codes[(r["code_system"], r["code"])]
            c.persons[r["source"]] = c.persons.get(r["source"], 0) + r["p"]
        unit = _coalesce(units, have)
        if unit and value in have:
            for r in engine.query(
                    f"SELECT {sys_col} AS code_system, {_q(code)} AS code, COALESCE({unit}, '') AS unit, "
                    f"COUNT(*) AS n, MEDIAN({_q(value)}) AS med {base} GROUP BY 1, 2, 3").to_pylist():
                c = codes[(r["code_system"], r["code"])]
                n0, _ = c.units.get(r["unit"], (0, None))
                c.units[r["unit"]] = (n0 + r["n"], r["med"])
    # unit spellings: the transform's own unit expressions (a slot without a code system is UCUM), so a gap is
    # exactly what the transform will look up
    for rule in (r for r in rules.EVENTS if r.unit is not None and r.staging in tables):
        u = rule.unit
        read = set(re.findall(r"\bs\.(\w+)", " ".join((u.system, u.code, "" if rule.from_sql else rule.person))))
        if not read <= {c.name for c in engine.columns(rule.staging)}:
            continue  # a staging table of an older or partial layout: the transform cannot map its units either
        for r in engine.query(f"SELECT s.source, {u.system} AS code_system, {u.code} AS code, COUNT(*) AS n, "
                              f"COUNT(DISTINCT {rule.person}) AS p FROM {tx.read_sql(rule)} s "
                              f"WHERE NULLIF(CAST({u.code} AS VARCHAR), '') IS NOT NULL GROUP BY 1, 2, 3").to_pylist():
            c = codes.setdefault((r["code_system"], r["code"]), Code(r["code_system"], r["code"], "unit"))
            c.sources[r["source"]] = c.sources.get(r["source"], 0) + r["n"]
            c.persons[r["source"]] = c.persons.get(r["source"], 0) + r["p"]
    for c in codes.values():
        if c.displays:
            c.display = max(c.displays.items(), key=lambda kv: (kv[1], kv[0]))[0]
    return codes


def lookup(engine, vocabulary_id: str, codes) -> dict[str, tuple[int, int | None, str]]:
    """{code: (concept_id, standard target concept id or None, domain_id)} for codes of one vocabulary."""
    out = {}
    codes = sorted(set(codes))
    for i in range(0, len(codes), 500):
        chunk = codes[i:i + 500]
        marks = ", ".join("?" for _ in chunk)
        t = engine.query(
            "SELECT c.concept_code, c.concept_id, c.standard_concept, c.domain_id, t.concept_id AS target "
            "FROM concept c LEFT JOIN concept_relationship r ON r.concept_id_1 = c.concept_id "
            "AND r.relationship_id = 'Maps to' AND r.invalid_reason IS NULL "
            "LEFT JOIN concept t ON t.concept_id = r.concept_id_2 AND t.standard_concept = 'S' "
            f"WHERE c.vocabulary_id = ? AND c.concept_code IN ({marks})", [vocabulary_id, *chunk])
        for r in t.to_pylist():
            target = r["concept_id"] if r["standard_concept"] == "S" else r["target"]
            prev = out.get(r["concept_code"])
            if prev is None or (prev[1] is None and target is not None):
                out[r["concept_code"]] = (r["concept_id"], target, r["domain_id"])
    return out


def stcm(engine) -> dict[tuple[str, str], int]:
    """Valid SOURCE_TO_CONCEPT_MAP rows: {(source_vocabulary_id, source_code): target_concept_id}."""
    t = engine.query("SELECT source_vocabulary_id, source_code, target_concept_id FROM source_to_concept_map "
                     "WHERE invalid_reason IS NULL")
    return {(r["source_vocabulary_id"], r["source_code"]): r["target_concept_id"] for r in t.to_pylist()}


def inventory(engine) -> list[Code]:
    """Every staged source code with its status (mapped, no_match, gap), most rows first."""
    store.require_cdm(engine)
    codes = collect(engine)
    by_vocab = defaultdict(list)
    for c in codes.values():
        v = store.vocabulary_of(c.code_system)
        if v:
            by_vocab[v].append(c.code)
    found = {v: lookup(engine, v, cs) for v, cs in by_vocab.items()}
    accepted = stcm(engine)
    for c in codes.values():
        v = store.vocabulary_of(c.code_system)
        hit = found.get(v, {}).get(c.code) if v else None
        if hit and hit[1] is not None:
            c.status, c.target_concept_id, c.via = "mapped", hit[1], "vocabulary"
            continue
        key = (c.source_vocabulary_id, c.code)
        if key in accepted:
            t = accepted[key]
            c.status, c.target_concept_id, c.via = ("mapped" if t else "no_match"), t, "source_to_concept_map"
    store.remember_systems(engine, {c.code_system for c in codes.values()})
    return sorted(codes.values(), key=lambda c: (-c.rows, c.code_system or "", c.code))


def refresh(engine, codes: list[Code] | None = None) -> list[Code]:
    """Recompute the inventory and write its gaps to `mapping_gap`; returns the whole inventory."""
    codes = inventory(engine) if codes is None else codes
    now = dt.datetime.now().replace(microsecond=0)
    rows = []
    for c in codes:
        if c.status != "gap":
            continue
        units = "; ".join(f"{u or '(none)'} {n}" for u, (n, _) in sorted(c.units.items(), key=lambda kv: -kv[1][0]))
        examples = "; ".join(d for d, _ in sorted(c.displays.items(), key=lambda kv: -kv[1])[:3])
        rows.append({"gap_id": c.gap_id, "code_system": c.code_system, "source_vocabulary_id": c.source_vocabulary_id,
                     "code": c.code, "display": c.display, "kind": c.kind,
                     "sources": ", ".join(f"{s} {n}" for s, n in sorted(c.sources.items())), "rows": c.rows,
                     "persons": c.n_persons, "units": units or None, "unit": c.unit, "value_median": c.value_median,
                     "examples": examples or None, "refreshed_at": now})
    store.replace_rows(engine, "mapping_gap", rows)
    return codes


def coverage(codes: list[Code]) -> dict[str, dict]:
    """Per kind (and 'all'): staged rows, rows whose code reaches a standard concept, and the share. 'all' leaves
    out the unit spellings: a unit belongs to a result whose own code is already counted (as a lab)."""
    out: dict[str, dict] = {}
    for c in codes:
        for k in (c.kind,) if c.kind == "unit" else (c.kind, "all"):
            d = out.setdefault(k, {"codes": 0, "rows": 0, "mapped_rows": 0, "gaps": 0, "gap_rows": 0})
            d["codes"] += 1
            d["rows"] += c.rows
            if c.status == "mapped":
                d["mapped_rows"] += c.rows
            elif c.status == "gap":
                d["gaps"] += 1
                d["gap_rows"] += c.rows
    for d in out.values():
        d["share"] = d["mapped_rows"] / d["rows"] if d["rows"] else None
    return dict(sorted(out.items(), key=lambda kv: (kv[0] == "all", kv[0])))
