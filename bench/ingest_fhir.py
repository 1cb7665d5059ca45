"""Benchmark: FHIR R4 Bulk Data NDJSON → staging (`medlake.landing.ingest`), resources/s and peak RSS.

Generates ~1 GB of Synthea-like NDJSON (Patient, Encounter, Condition, Observation, MedicationRequest, Procedure,
Immunization), then, each in its own process pinned to ONE CPU core (so peak RSS and speed are its own):

- **medlake**: the whole ingest: land every file (sha256, durable), read it streamed, validate each resource,
  flatten it into `stg_fhir_*` rows and load them into DuckDB (one transaction per ~200k rows), quarantine none;
- **baseline json.loads**: the standard library parsing the same lines, and nothing else (no validation, no
  staging): what "just reading the JSON" costs in Python;
- **baseline orjson.loads**: orjson parsing the same lines, nothing else.

Report: bench/results/ingest_fhir.md and .json. Targets (issue 4): ≥ 20,000 resources/s on one core; peak RSS
≤ 1.5 GB on 1 GB of NDJSON.

    python bench/ingest_fhir.py [--mb 1024]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "ingest_fhir"
RESULTS = HERE / "results"
LOINC = [("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL"), ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL"),
         ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL"), ("8867-4", "Heart rate", "/min"),
         ("29463-7", "Body weight", "kg"), ("8302-2", "Body height", "cm")]
SNOMED = [("44054006", "Diabetes mellitus type 2"), ("38341003", "Hypertensive disorder"),
          ("195662009", "Acute viral pharyngitis"), ("10509002", "Acute bronchitis")]


def _ref(kind, i):
    return {"reference": f"{kind}/{kind[:3].lower()}-{i}"}


def resources(rng: random.Random, n_patients: int):
    """Yields (resourceType, resource) in a Synthea-like mix."""
    for p in range(n_patients):
        yield "Patient", {
            "resourceType": "Patient", "id": f"pat-{p}", "meta": {"versionId": "1", "lastUpdated": "2024-05-01T10:00:00Z"},
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                            "system": "urn:medlake:h1:mrn", "value": f"MRN{p:08d}"},
                           {"system": "urn:oid:2.16.156.10011.1.1", "value": f"33010619800101{p:04d}"}],
            "name": [{"use": "official", "family": "Wang", "given": ["Xiu", "Ying"]}],
            "telecom": [{"system": "phone", "value": "+86 571 8888 0000", "use": "home"}],
            "gender": rng.choice(["male", "female"]), "birthDate": f"19{rng.randint(30, 99)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
            "address": [{"line": ["1 West Lake Road"], "city": "Hangzhou", "state": "ZJ", "postalCode": "310000",
                         "country": "CN"}]}
        pat = {"reference": f"Patient/pat-{p}"}
        for e in range(3):
            enc = f"enc-{p}-{e}"
            day = f"20{rng.randint(15, 24)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
            yield "Encounter", {
                "resourceType": "Encounter", "id": enc, "meta": {"lastUpdated": "2024-05-01T10:00:00Z"},
                "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                                "code": "AMB", "display": "ambulatory"},
                "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003",
                                      "display": "Encounter for check up"}], "text": "Encounter for check up"}],
                "subject": pat, "period": {"start": f"{day}T08:00:00+08:00", "end": f"{day}T09:00:00+08:00"},
                "serviceProvider": {"reference": "Organization/org-1"}}
            for k in range(12):
                code, name, unit = rng.choice(LOINC)
                yield "Observation", {
                    "resourceType": "Observation", "id": f"obs-{p}-{e}-{k}", "meta": {"lastUpdated": "2024-05-01T10:00:00Z"},
                    "status": "final", "category": [{"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": name}], "text": name},
                    "subject": pat, "encounter": {"reference": f"Encounter/{enc}"},
                    "effectiveDateTime": f"{day}T08:30:00+08:00", "issued": f"{day}T10:30:00.000+08:00",
                    "valueQuantity": {"value": round(rng.uniform(1, 200), 1), "unit": unit,
                                      "system": "http://unitsofmeasure.org", "code": unit}}
            if e == 0:
                code, name = rng.choice(SNOMED)
                yield "Condition", {
                    "resourceType": "Condition", "id": f"cond-{p}", "clinicalStatus": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                    "verificationStatus": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                              "code": "encounter-diagnosis"}]}],
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": name}], "text": name},
                    "subject": pat, "encounter": {"reference": f"Encounter/{enc}"}, "onsetDateTime": f"{day}T08:00:00+08:00",
                    "recordedDate": f"{day}T08:00:00+08:00"}
                yield "MedicationRequest", {
                    "resourceType": "MedicationRequest", "id": f"mr-{p}", "status": "active", "intent": "order",
                    "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                              "code": "860975", "display": "metformin 500 MG"}]},
                    "subject": pat, "encounter": {"reference": f"Encounter/{enc}"}, "authoredOn": f"{day}T08:40:00+08:00",
                    "dosageInstruction": [{"timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
                                           "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}]}],
                    "dispenseRequest": {"quantity": {"value": 60, "unit": "tablet"},
                                        "expectedSupplyDuration": {"value": 30, "unit": "days"}}}
                yield "Procedure", {
                    "resourceType": "Procedure", "id": f"proc-{p}", "status": "completed",
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "430193006",
                                         "display": "Medication reconciliation"}]},
                    "subject": pat, "encounter": {"reference": f"Encounter/{enc}"},
                    "performedPeriod": {"start": f"{day}T08:45:00+08:00", "end": f"{day}T08:50:00+08:00"}}
                yield "Immunization", {
                    "resourceType": "Immunization", "id": f"imm-{p}", "status": "completed",
                    "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140",
                                                "display": "Influenza, seasonal"}]},
                    "patient": pat, "encounter": {"reference": f"Encounter/{enc}"},
                    "occurrenceDateTime": f"{day}T08:55:00+08:00", "primarySource": True}


def generate(folder: Path, mb: int, seed: int = 7) -> dict:
    """Bulk Data export folder: one NDJSON per resource type and a manifest, about `mb` megabytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files, counts, size = {}, {}, 0
    target = mb << 20
    batch = 0
    while size < target:
        for rt, res in resources(rng, 500):
            line = orjson.dumps(res) + b"\n"
            f = files.get(rt)
            if f is None:
                f = files[rt] = open(folder / f"{rt}.ndjson", "wb")
            f.write(line)
            counts[rt] = counts.get(rt, 0) + 1
            size += len(line)
        batch += 1
    for f in files.values():
        f.close()
    (folder / "manifest.json").write_bytes(orjson.dumps({
        "transactionTime": "2024-05-01T10:00:00Z", "request": "https://h1.example/fhir/$export",
        "requiresAccessToken": True, "error": [],
        "output": [{"type": rt, "url": f"https://h1.example/bulk/{rt}.ndjson", "count": n} for rt, n in counts.items()]}))
    return counts


CHILD = r"""
import json, os, resource, sys, time
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})   # one core
mode, folder, work, limit = sys.argv[1:5]
t, c = time.perf_counter(), time.process_time()
if mode.startswith("medlake"):
    from medlake.engines import open_engine
    from medlake.landing import Landing
    from medlake.landing import ingest as ing
    from medlake.landing.quarantine import Quarantine
    eng = open_engine(f"duckdb:{work}/store.duckdb" + (f"?memory_limit={limit}" if limit != "-" else ""))
    eng.execute("SET threads = 1")
    land, q = Landing(f"{work}/landing"), Quarantine(f"{work}/landing")
    phases = {}
    stamp = {"t": time.perf_counter()}
    def tick(desc, done, total):
        phase = desc.split(" ")[0]
        phases[phase] = phases.get(phase, 0) + (time.perf_counter() - stamp["t"])
        stamp["t"] = time.perf_counter()
    s = ing.ingest(eng, land, q, [folder], source_name="h1-emr", progress=tick)
    tot = s.total()
    n = tot.records - 1   # the manifest is a record, not a resource
    extra = {"rows": tot.rows, "quarantined": sum(tot.quarantined.values()), "files": tot.received,
             "landing_s": phases.get("landing", 0), "staging_s": phases.get("staging", 0),
             "staged_tables": {t: eng.query(f'SELECT count(*) FROM "{t}"').column(0)[0].as_py()
                               for t in eng.tables() if t.startswith("stg_fhir")}}
    eng.close()
else:
    loads = __import__("json").loads if mode == "json.loads" else __import__("orjson").loads
    n = 0
    for name in sorted(os.listdir(folder)):
        if name.endswith(".ndjson"):
            with open(os.path.join(folder, name), "rb") as f:
                for line in f:
                    r = loads(line)
                    n += 1
    extra = {}
secs, cpu = time.perf_counter() - t, time.process_time() - c
print(json.dumps({"mode": mode, "resources": n, "seconds": secs, "cpu_seconds": cpu, **extra,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(mode: str, folder: Path, limit: str = "-") -> dict:
    work = WORK / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder), str(work), limit], capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["resources_per_s"] = r["resources"] / r["seconds"]
    r["resources_per_cpu_s"] = r["resources"] / r["cpu_seconds"]
    shutil.rmtree(work, ignore_errors=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1024, help="NDJSON to generate, in MB")
    ap.add_argument("--memory-limit", default="1GB", help="DuckDB memory_limit of the store ('-' for none)")
    ap.add_argument("--skip-unlimited", action="store_true", help="skip the extra run without a memory_limit")
    args = ap.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    folder = WORK / "bulk"
    t = time.perf_counter()
    counts = generate(folder, args.mb)
    gen = time.perf_counter() - t
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    load_before = os.getloadavg()[0]
    results = [run("medlake", folder, args.memory_limit), run("json.loads", folder), run("orjson.loads", folder)]
    if not args.skip_unlimited:
        results.insert(1, run("medlake, no DuckDB memory_limit", folder))
    med = results[0]
    ok_speed = med["resources_per_cpu_s"] >= 20_000
    ok_rss = med["peak_rss_mb"] <= 1536
    report = {
        "benchmark": "ingest_fhir", "machine": f"{platform.machine()}, {os.cpu_count()} cores (runs pinned to 1), "
        f"Python {platform.python_version()}", "input_mb": round(size_mb, 1), "resources": counts,
        "duckdb_memory_limit": args.memory_limit, "generate_s": round(gen, 1), "runs": results, "load_average": [load_before, os.getloadavg()[0]],
        "targets": {"resources_per_s_at_least": 20_000, "peak_rss_mb_at_most": 1536, "speed_met": ok_speed,
                    "rss_met": ok_rss},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest_fhir.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# FHIR NDJSON ingest benchmark", "",
        f"Input: a generated Bulk Data export, {sum(counts.values()):,} resources in {len(counts)} NDJSON files + "
        f"manifest ({size_mb:,.0f} MB): " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + ".",
        f"Machine: {report['machine']}. Store: DuckDB with `memory_limit={args.memory_limit}` (store URL "
        f"`duckdb:PATH?memory_limit={args.memory_limit}`, how a site bounds DuckDB's cache).", "",
        "| run | resources | wall s | CPU s | resources/s (wall) | resources/CPU-s | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['mode']} | {r['resources']:,} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                     f"{r['resources_per_s']:,.0f} | {r['resources_per_cpu_s']:,.0f} | {r['peak_rss_mb']:,.0f} |")
    lines += [
        "", f"medlake: {med['files']} files landed (sha256, fsync) in {med['landing_s']:.1f} s, staged in "
        f"{med['staging_s']:.1f} s into {len(med['staged_tables'])} tables ({med['rows']:,} rows incl. "
        f"stg_fhir_coding), {med['quarantined']} quarantined.", "",
        f"Targets: ≥ 20,000 resources/s on one core — **{'met' if ok_speed else 'NOT met'}** "
        f"({med['resources_per_cpu_s']:,.0f} per CPU-second, {med['resources_per_s']:,.0f}/s wall; whole ingest: "
        "landing + validation + staging in DuckDB, one process pinned to one core); "
        f"peak RSS ≤ 1.5 GB on {size_mb:,.0f} MB — **{'met' if ok_rss else 'NOT met'}** ({med['peak_rss_mb']:,.0f} MB).",
        "", *([f"Without a memory_limit DuckDB keeps its buffer cache up to 80% of RAM by default: peak RSS "
               f"{results[1]['peak_rss_mb']:,.0f} MB in that run."] if not args.skip_unlimited else []),
        "", f"Speed is judged per CPU-second of the pinned process because the machine was shared with other jobs "
        f"(load average {report['load_average'][0]:.1f} before and {report['load_average'][1]:.1f} after the runs, "
        f"{os.cpu_count()} cores); the wall-clock rate depends on the share of the core the process got.",
        "", "Baselines parse the same lines and do nothing else (no validation, no flattening, no storage); "
        "`fhir.resources` (pydantic) validation was not run: it is not a medlake dependency.",
        "", "Reproduce: `.venv/bin/python bench/ingest_fhir.py` (`--mb 100` for a quick run)"]
    (RESULTS / "ingest_fhir.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
