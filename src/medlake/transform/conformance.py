"""`medlake conformance fhir2omop DIR`: run the FHIR→OMOP golden cases (HealthSamurai/fhir2omop format).

Each case file holds `fixtures` (resources in every variant) and `cases` (variants: `fhir` resources and the
expected `omop` rows). A variant passes when every listed table holds exactly the listed rows (unordered), every
other target table is empty, and in each row every listed column matches and every unlisted column is NULL (the
row's own primary key excepted). `ref:<fhir-id>` is the id our mapping gave that resource; `id:<token>` binds a
value consistently across rows; `<col>__name` keys are hints and ignored.

Every variant runs on a fresh in-memory DuckDB store with the cases' vocabulary seed, through the real FHIR
staging (`medlake.sources.fhir.stage_resource`) and the real transform.
"""
from __future__ import annotations

import csv
import hashlib
import datetime as dt
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pyarrow as pa

from medlake.cdm import ddl, model, store
from medlake.engines.duckdb import DuckDBEngine
from medlake.sources import fhir
from medlake.transform.run import transform

SOURCE = "conformance"
CDM = model.load("5.4")
CLINICAL = [t.name for t in CDM.tables if t.schema == "CDM"]
REF_TABLES = {"Patient": "person", "Encounter": "visit_occurrence", "Practitioner": "provider",
              "PractitionerRole": "provider", "Organization": "care_site", "Location": "care_site"}
# `ref:<id>` in a column is the id our mapping gave that resource *in the table the column points to* (a Location is
# both a CARE_SITE and a LOCATION row)
REF_COLUMNS = {"person_id": "person", "visit_occurrence_id": "visit_occurrence", "provider_id": "provider",
               "care_site_id": "care_site", "location_id": "location"}


@dataclass
class Variant:
    file: str
    index: int
    desc: str
    passed: bool
    problems: list[str] = field(default_factory=list)


def _seed(engine) -> None:
    folder = resources.files("medlake.transform").joinpath("fhir2omop_seed")
    for name in ("concept", "concept_relationship"):
        rows = list(csv.DictReader(folder.joinpath(f"{name}.csv").read_text(encoding="utf-8").splitlines()))
        table = CDM.table(name)
        cols = {}
        for f in table.fields:
            if f.name not in rows[0]:
                continue
            vals = [r[f.name] or None for r in rows]
            if f.kind == "date":
                vals = [dt.date.fromisoformat(v) if v else None for v in vals]
            elif f.kind in ("integer", "bigint"):
                vals = [int(v) if v else None for v in vals]
            cols[f.name] = vals
        engine.load_arrow(name, ddl.arrow_table(table, cols))


def _stage(engine, resources_: list[dict]) -> None:
    from medlake.landing.ingest import _ensure_table, _full, staging_schemas  # the real staging DDL

    schemas = staging_schemas()
    out: dict[str, list] = {}
    for i, res in enumerate(resources_):
        for table, rows in fhir.stage_resource(res).items():
            out.setdefault(table, []).extend(
                {**r, "source": SOURCE, "receipt_seq": 1, "landing_sha256": "case", "record_location": f"entry[{i}]"}
                for r in rows)
    known: set[str] = set()
    for table, rows in out.items():
        _ensure_table(engine, table, schemas[table], known)
        engine.load_arrow(table, pa.Table.from_pylist(rows, schema=_full(schemas[table])))


def _norm(v):
    if isinstance(v, dt.datetime):
        return v.isoformat(timespec="seconds")
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _match(exp: dict, got: dict, refs: dict, binds: dict, pk: str) -> list[str]:
    bad = []
    for col, want in exp.items():
        if col.endswith("__name"):
            continue
        have = _norm(got.get(col))
        if isinstance(want, str) and want.startswith("ref:"):
            rid = want[4:]
            want = refs.get((REF_COLUMNS.get(col), rid), refs.get(rid, f"<no row for {rid}>"))
        elif isinstance(want, str) and want.startswith("id:"):
            if want in binds and binds[want] != have:
                bad.append(f"{col}={have!r} (bound {want} = {binds[want]!r})")
            continue
        if isinstance(want, float) and isinstance(have, (int, float)):
            ok = abs(want - have) < 1e-9
        else:
            ok = want == have
        if not ok:
            bad.append(f"{col}={have!r}, expected {want!r}")
    for col, have in got.items():
        if col != pk and col not in exp and have is not None:
            bad.append(f"{col}={_norm(have)!r}, expected NULL")
    return bad


def run_variant(engine, fixtures: list, case: dict, targets: list[str]) -> list[str]:
    for t in [x for x in engine.tables() if x.startswith(("stg_", "tx_", "transform_", "cdm_lineage"))]:
        engine.execute(f'DROP TABLE "{t}"')
    for t in CLINICAL:
        if t not in ("cdm_source", "metadata"):
            engine.execute(f"DELETE FROM {t}")
    _stage(engine, [*fixtures, *case.get("fhir", [])])
    transform(engine)
    refs = {}
    kinds = {"Patient": "", "Encounter": "visit_occurrence|", "Practitioner": "provider|",
             "PractitionerRole": "provider|", "Organization": "care_site|"}
    def sid(key: str) -> int:
        return int(hashlib.md5(key.encode()).hexdigest()[:15], 16)
    for res in [*fixtures, *case.get("fhir", [])]:  # an FK is the referenced resource's id even without its row
        if res.get("resourceType") in kinds:
            refs[res.get("id")] = sid(f"{kinds[res['resourceType']]}{SOURCE}|{res['resourceType']}/{res.get('id')}")
        for col in ("patient", "subject", "beneficiary"):  # a patient named only by reference (no Patient resource)
            ref = (res.get(col) or {}).get("reference") if isinstance(res.get(col), dict) else None
            if isinstance(ref, str) and ref.startswith(("Patient/", "urn:uuid:")):
                pid = ref.split("/", 1)[1] if ref.startswith("Patient/") else ref[len("urn:uuid:"):]
                refs.setdefault(("person", pid), sid(f"{SOURCE}|Patient/{pid}"))
    for r in engine.query("SELECT cdm_table, row_id, record_key FROM cdm_lineage").to_pylist():
        rtype, _, rid = (r["record_key"] or "").partition("/")
        if REF_TABLES.get(rtype) == r["cdm_table"]:
            refs[rid] = r["row_id"]
        if rtype:
            refs[(r["cdm_table"], rid)] = r["row_id"]
    problems = []
    expected = case.get("omop") or {}
    for t in targets:
        table = CDM.table(t)
        pk = table.primary_key[0] if table.primary_key else ""
        got = engine.query(f"SELECT * FROM {t}").to_pylist()
        want = expected.get(t, [])
        binds: dict = {}
        for i, w in enumerate(want):
            errs_first = None
            for g in got:
                errs = _match(w, g, refs, binds, pk)
                if not errs:
                    got.remove(g)
                    for col, v in w.items():
                        if isinstance(v, str) and v.startswith("id:"):
                            binds.setdefault(v, _norm(g.get(col)))
                    break
                errs_first = errs_first or errs
            else:
                problems.append(f"{t} row {i + 1} not found" + (f": {'; '.join(errs_first[:4])}" if errs_first
                                                                 else " (no row in the table)"))
        if got:
            problems.append(f"{t}: {len(got)} row(s) more than expected")
    return problems


def run(folder: str | Path) -> list[Variant]:
    folder = Path(folder)
    files = sorted(folder.glob("*.json")) if folder.is_dir() else [folder]
    if not files:
        raise ValueError(f"{folder}: no case files (*.json)")
    engine = DuckDBEngine(":memory:")
    try:
        store.init(engine, "5.4")
        _seed(engine)
        results = []
        for f in files:
            doc = json.loads(f.read_text(encoding="utf-8"))
            targets = sorted({t for c in doc.get("cases", []) for t in (c.get("omop") or {})})
            for i, case in enumerate(doc.get("cases", []), 1):
                try:
                    problems = run_variant(engine, doc.get("fixtures", []), case, targets)
                except Exception as e:  # a case the staging rejects is a failed variant, not a crash
                    problems = [f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"]
                results.append(Variant(f.name, i, case.get("desc", ""), not problems, problems))
    finally:
        engine.close()
    return results
