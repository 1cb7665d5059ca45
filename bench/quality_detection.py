"""Detection: do the quality checks see the defects the simulator injected? (issue 8, "Measured")

simulate (with defects) → ingest → site mapping → transform → `medlake.quality` on the CDM, in-process on DuckDB.
Every check's violating rows are traced back to their source message through `cdm_lineage` and matched with
`ground_truth/defects.jsonl` (message_id). Per defect class:
- `reached CDM`: defects whose message produced at least one CDM row (the others were quarantined or merged
  before the CDM: not visible to a CDM-level check, by design);
- `detected`: of those, defects whose message has a row violating one of the checks meant to see that class
  (EXPECTED below); `any check`: a row violating any check at all.
Then a clean run (defect rate 0): the checks that fail beyond DQD's default thresholds.

    .venv/bin/python bench/quality_detection.py [--patients 400] [--hospitals 2] [--defect-rate 0.02]
"""
from __future__ import annotations

import argparse
import collections
import json
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # the site's SOURCE_TO_CONCEPT_MAP from the simulator's codes

from test_transform_simulated import site_mapping  # noqa: E402

from medlake.cdm import store, vocab  # noqa: E402
from medlake.engines import open_engine  # noqa: E402
from medlake.landing import Landing  # noqa: E402
from medlake.landing.ingest import ingest  # noqa: E402
from medlake.landing.quarantine import Quarantine  # noqa: E402
from medlake.quality import runner  # noqa: E402
from medlake.quality.checks import checks as dqd_checks  # noqa: E402
from medlake.simulate import simulate  # noqa: E402
from medlake.sources import config as source_config  # noqa: E402
from medlake.transform.run import transform  # noqa: E402

# defect class -> the checks meant to see it in the CDM ("name" or "name:field")
EXPECTED = {
    "impossible_value": ("plausibleValueLow", "plausibleValueHigh"),
    "wrong_unit": ("plausibleValueLow", "plausibleValueHigh", "plausibleUnitConceptIds"),
    "missing_unit": ("plausibleUnitConceptIds", "measureValueCompleteness:unit_concept_id",
                     "measureValueCompleteness:unit_source_value", "standardConceptRecordCompleteness:unit_concept_id"),
    "future_date": ("plausibleValueHigh", "plausibleStartBeforeEnd", "plausibleTemporalAfter", "plausibleBeforeDeath"),
    "death_before_birth": ("plausibleAfterBirth", "plausibleDuringLife", "plausibleBeforeDeath"),
    "unmapped_code": ("standardConceptRecordCompleteness", "isStandardValidConcept"),
}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def build(work: Path, patients: int, hospitals: int, rate: float, seed: int):
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    simulate(work / "out", patients=patients, hospitals=hospitals, seed=seed, defect_rate=rate)
    eng = open_engine(f"duckdb:{work / 'store.duckdb'}")
    store.init(eng, "5.4")
    vocab.load(eng, vocab.demo_vocabulary_dir())
    sources = source_config.load(work / "out" / "sources.toml")
    land, q = Landing(work / "landing"), Quarantine(work / "landing")
    ingest(eng, land, q, (), sources)
    land.close()
    q.close()
    site_mapping(eng, work / "out" / "ground_truth")
    transform(eng, namespaces={s.name: s.hospital for s in sources})
    return eng, time.perf_counter() - t0


def detection(eng, work: Path) -> tuple[list[dict], dict]:
    t0 = time.perf_counter()
    run = runner.run(eng, "5.4", out=work / "quality")
    t_run = time.perf_counter() - t0
    by_id = {c.id: c for c in dqd_checks("5.4")}
    status = {r["check_id"]: r["status"] for r in run.results}
    r = runner.Runner(eng, "5.4", work / "quality-trace", incremental=False, resume=False)
    lineage = collections.defaultdict(set)  # message id -> {(cdm_table, row_id)}
    cols = eng.query("SELECT cdm_table, CAST(row_id AS VARCHAR) AS r, message_id FROM cdm_lineage "
                     "WHERE message_id IS NOT NULL").columns
    for t, rid, msg in zip(*(c.to_pylist() for c in cols)):
        for m in {msg, msg.split("/", 1)[-1]}:
            lineage[m].add((t, rid))
    flagged = collections.defaultdict(set)  # (cdm_table, row_id) -> {(check name, status)}
    for table in sorted({t for rows in lineage.values() for t, _ in rows}):
        for cid, rows in r.violating_rows(table).items():
            for rid in rows:
                flagged[(table, rid)].add((by_id[cid].name, by_id[cid].field, status.get(cid)))
    per = collections.defaultdict(lambda: collections.Counter())
    missed = collections.defaultdict(list)
    for d in jsonl(work / "out" / "ground_truth" / "defects.jsonl"):
        cls, rows = d["class"], lineage.get(d["message_id"] or "", set())
        per[cls]["defects"] += 1
        if not rows:
            continue
        per[cls]["reached"] += 1
        hits = set().union(*(flagged.get(x, set()) for x in rows))
        per[cls]["any"] += bool(hits)
        want = [h for h in hits if h[0] in EXPECTED.get(cls, ()) or f"{h[0]}:{h[1]}" in EXPECTED.get(cls, ())]
        per[cls]["expected"] += bool(want)
        per[cls]["failed_check"] += any(s == "failed" for *_, s in want)
        if cls in EXPECTED and not want and len(missed[cls]) < 5:
            missed[cls].append({"defect_id": d["defect_id"], "message_id": d["message_id"], "detail": d["detail"],
                                "rows": sorted(rows)[:3], "checks": sorted(f"{h[0]}:{h[1]}" for h in hits)})
    out = []
    for cls in sorted(per, key=lambda c: (c not in EXPECTED, c)):
        n = per[cls]
        out.append({"class": cls, "defects": n["defects"], "reached_cdm": n["reached"],
                    "expected_checks": list(EXPECTED.get(cls, ())), "detected": n["expected"],
                    "detected_by_failed_check": n["failed_check"], "flagged_by_any_check": n["any"],
                    "recall": n["expected"] / n["reached"] if n["reached"] and cls in EXPECTED else None,
                    "missed_examples": missed.get(cls, [])})
    rules = {i for c in dqd_checks("5.4") if c.level == "CONCEPT" and c.table == "measurement"
             for i in c.param("concept_ids") or ()}
    concepts = eng.query("SELECT measurement_concept_id AS c, count(*) AS n FROM measurement GROUP BY 1").to_pylist()
    covered = sum(r["n"] for r in concepts if r["c"] in rules) / max(1, sum(r["n"] for r in concepts))
    return out, {"seconds_quality_run": round(t_run, 2), "summary": run.summary,
                 "measurement_rows_with_dqd_concept_rules": round(covered, 4)}


def failures(eng, work: Path) -> list[dict]:
    run = runner.run(eng, "5.4", out=work / "quality")
    return [{k: x[k] for k in ("check_name", "cdm_table", "cdm_field", "concept_id", "num_violated_rows",
                               "num_denominator_rows", "threshold", "examples")}
            for x in run.results if x["status"] == "failed"]


def pct(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=400)
    ap.add_argument("--hospitals", type=int, default=2)
    ap.add_argument("--defect-rate", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "quality_detection")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args()
    eng, t_build = build(a.work / "defects", a.patients, a.hospitals, a.defect_rate, a.seed)
    det, meta = detection(eng, a.work / "defects")
    eng.close()
    eng0, t_build0 = build(a.work / "clean", a.patients, a.hospitals, 0.0, a.seed)
    fails = failures(eng0, a.work / "clean")
    eng0.close()
    report = {"machine": f"{platform.machine()}, Python {platform.python_version()}", "patients": a.patients,
              "hospitals": a.hospitals, "defect_rate": a.defect_rate, "seed": a.seed,
              "seconds_build": round(t_build, 1), **meta, "detection": det, "clean_run_failed_checks": fails}
    a.results.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1, default=str)
    text = text.replace(str(Path(__file__).resolve().parents[1]) + "/", "")  # no machine paths in the report
    (a.results / "quality_detection.json").write_text(text, encoding="utf-8")
    met = all(d["recall"] is None or d["recall"] >= 0.95 for d in det)
    md = [f"# Quality detection on the simulated hospital\n",
          f"`.venv/bin/python bench/quality_detection.py --patients {a.patients} --hospitals {a.hospitals} "
          f"--defect-rate {a.defect_rate} --seed {a.seed}` on {report['machine']}. simulate → ingest → site mapping "
          "→ transform (in-process, DuckDB, demo vocabulary, no EMPI step) → full v5.4 DQD suite. Each check's "
          "violating rows are traced to their message through `cdm_lineage` and matched with "
          "`ground_truth/defects.jsonl` by message id. A defect counts as detected when a row of its message "
          "violates one of the checks meant for its class (a message can carry several rows: a lab message with "
          "several results counts when one of its rows is flagged).\n",
          "| defect class | defects | reached CDM | checks meant to see it | detected | recall | by a failed check "
          "| flagged by any check |", "|---|---:|---:|---|---:|---:|---:|---:|"]
    for d in det:
        md.append(f"| {d['class']} | {d['defects']} | {d['reached_cdm']} | {', '.join(d['expected_checks']) or '(not a CDM-level defect)'} "
                  f"| {d['detected']} | {pct(d['recall'])} | {d['detected_by_failed_check']} | {d['flagged_by_any_check']} |")
    md += ["", f"- **Recall ≥ 0.95 for every CDM-visible class: {'met' if met else 'NOT met'}.**",
           "- `reached CDM` 0: the defect's message was quarantined at ingest or merged (duplicates, identity "
           "defects); those are seen by ingest and the EMPI, not by CDM checks.",
           f"- Measurement rows whose concept has a DQD concept-level rule (plausibleValueLow/High, "
           f"plausibleUnitConceptIds): {meta['measurement_rows_with_dqd_concept_rules']:.1%} (DQD v5.4 has unit rules "
           "for measurements but no value ranges: its concept-level value rules are all on observation). DQD keys those rules "
           "on Athena concept ids; concepts the demo vocabulary gives local ids (>= 2,000,000,000, e.g. LOINC 8310-5 "
           "body temperature = 2002100003 instead of Athena's 3020891) get no value or unit rule, so "
           "impossible values and wrong units on them cannot be seen by DQD's checks."]
    for d in det:
        for m in d["missed_examples"]:
            md.append(f"- missed {d['class']}: {m['message_id']} — {m['detail']}; rows {m['rows']}; "
                      f"flagged by {m['checks'] or 'nothing'}")
    md += ["", f"## Clean run (defect rate 0): {len(fails)} failed check(s) beyond DQD's default thresholds "
           "(target: none)\n", "| check | table | field | concept | violated | denominator | threshold % |",
           "|---|---|---|---:|---:|---:|---:|"]
    for f in fails:
        md.append(f"| {f['check_name']} | {f['cdm_table']} | {f['cdm_field'] or ''} | {f['concept_id'] or ''} | "
                  f"{f['num_violated_rows']} | {f['num_denominator_rows']} | {f['threshold']} |")
    (a.results / "quality_detection.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
