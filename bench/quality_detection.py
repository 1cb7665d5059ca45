"""Detection: do the quality checks see the defects the simulator injected? (issue 8, "Measured")

simulate (with defects) → ingest → site mapping → transform → `medlake.quality` on the CDM, in-process on DuckDB.
Every check's violating rows are traced back to their source message through `cdm_lineage` and matched with
`ground_truth/defects.jsonl` (message_id). Per defect class:
- `reached CDM`: defects whose message produced at least one CDM row (the others were quarantined or merged
  before the CDM: not visible to a CDM-level check, by design);
- `detected`: of those, defects whose message has a row violating one of the checks meant to see that class
  (EXPECTED below); `any check`: a row violating any check at all.
Then a clean run (defect rate 0): the checks that fail beyond DQD's default thresholds; with `--clean-seeds`, clean
runs of as many other simulated hospitals (seeds), since a check near its threshold can fail at one seed only.

    .venv/bin/python bench/quality_detection.py [--patients 400] [--hospitals 2] [--defect-rate 0.02] [--clean-seeds 1-10]
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
from medlake.quality.checks import plausible_values  # noqa: E402
from medlake.quality.feeds import EVENT_DATES, future_date_rows, odd_unit_rows  # noqa: E402
from medlake.simulate import simulate  # noqa: E402
from medlake.sources import config as source_config  # noqa: E402
from medlake.transform.run import transform  # noqa: E402

# defect class -> the checks meant to see it in the CDM ("name" or "name:field"); a value range (a concept-level
# check: its field is the concept's) or a concept by its field, so that another field's violation on the row (a
# route 0, a date) is not taken for the defect's
_CONCEPTS = ("measurement_concept_id", "condition_concept_id", "drug_concept_id", "observation_concept_id",
             "procedure_concept_id")
EXPECTED = {
    "impossible_value": ("plausibleValueLow:measurement_concept_id", "plausibleValueHigh:measurement_concept_id"),
    "wrong_unit": ("plausibleValueLow:measurement_concept_id", "plausibleValueHigh:measurement_concept_id",
                   "plausibleUnitConceptIds", "sourceUnitConsistency"),
    "missing_unit": ("plausibleUnitConceptIds", "measureValueCompleteness:unit_concept_id",
                     "measureValueCompleteness:unit_source_value", "standardConceptRecordCompleteness:unit_concept_id"),
    "future_date": ("plausibleValueHigh", "plausibleStartBeforeEnd", "plausibleTemporalAfter", "plausibleBeforeDeath",
                    "sourceFutureDates"),
    "death_before_birth": ("plausibleAfterBirth", "plausibleDuringLife", "plausibleBeforeDeath"),
    "unmapped_code": tuple(f"{c}:{f}" for c in ("standardConceptRecordCompleteness", "isStandardValidConcept")
                           for f in _CONCEPTS),
}


def meant(cls: str, hit: tuple) -> bool:
    """Whether a row's violation `hit` (check name, field, …) is of a check meant for the class (EXPECTED)."""
    want = EXPECTED.get(cls, ())
    return hit[0] in want or f"{hit[0]}:{hit[1]}" in want


def shown(checks) -> str:
    """The checks of a class in a line: `name (field, field)` for those named with their fields."""
    fields = collections.defaultdict(list)
    for c in checks:
        name, _, field = c.partition(":")
        fields[name] += [field] if field else []
    return ", ".join(f"{n} ({', '.join(f)})" if f else n for n, f in fields.items())


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def build(work: Path, patients: int, hospitals: int, rate: float, seed: int, with_empi: bool = False):
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
    if with_empi:  # as `medlake empi run`: identifying staging values into the vault, then linkage
        import base64

        from medlake.identity import empi, keys, staging
        from medlake.identity.vault import Vault

        with Vault.open(work / "site", keys.KeyRing([base64.b64decode(keys.new_key())], origin="bench")) as v:
            staging.vault_staging(eng, v, {s.name: (s.hospital, s.system) for s in sources})
            empi.run(eng, v, who="bench")
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
    # (source, message id) -> {(cdm_table, row_id)}: a message id is a source's own (the pharmacies of two
    # hospitals both number their dispensings RX000000012)
    lineage = collections.defaultdict(set)
    cols = eng.query("SELECT cdm_table, CAST(row_id AS VARCHAR) AS r, message_id, CAST(source AS VARCHAR) AS s "
                     "FROM cdm_lineage WHERE message_id IS NOT NULL").columns
    for t, rid, msg, src in zip(*(c.to_pylist() for c in cols)):
        for m in {msg, msg.split("/", 1)[-1]}:
            lineage[(src, m)].add((t, rid))
    flagged = collections.defaultdict(set)  # (cdm_table, row_id) -> {(check name, status)}
    for table in sorted({t for rows in lineage.values() for t, _ in rows}):
        for cid, rows in r.violating_rows(table).items():
            for rid in rows:
                flagged[(table, rid)].add((by_id[cid].name, by_id[cid].field, status.get(cid), by_id[cid].source))
    unit_status = {x["data_source"]: x["status"] for x in run.results if x["check_name"] == "sourceUnitConsistency"}
    for src, ids in odd_unit_rows(eng).items():  # the source-level checks with rows in the CDM
        for rid in ids:
            flagged[("measurement", str(rid))].add(("sourceUnitConsistency", "unit_concept_id", unit_status.get(src),
                                                    "medlake"))
    late_status = {(x["data_source"], x["cdm_table"]): x["status"] for x in run.results
                   if x["check_name"] == "sourceFutureDates"}
    for (src, table), ids in future_date_rows(eng, work / "landing").items():
        for rid in ids:
            flagged[(table, str(rid))].add(("sourceFutureDates", EVENT_DATES[table][1], late_status.get((src, table)),
                                            "medlake"))
    per = collections.defaultdict(lambda: collections.Counter())
    by_check = collections.defaultdict(collections.Counter)  # class -> check name -> defects it saw
    missed = collections.defaultdict(list)
    of_class = collections.defaultdict(set)  # class -> the CDM rows of its defects' messages
    for d in jsonl(work / "out" / "ground_truth" / "defects.jsonl"):
        # the defect's source from its file (h4/pharmacy/dispense_00001.csv: h4-pharmacy), as the sources are named
        src = "-".join(Path(d["file"]).parts[:2]) if d.get("file") else None
        cls, rows = d["class"], lineage.get((src, d["message_id"] or ""), set())
        per[cls]["defects"] += 1
        if not rows:
            continue
        per[cls]["reached"] += 1
        of_class[cls] |= rows
        hits = set().union(*(flagged.get(x, set()) for x in rows))
        per[cls]["any"] += bool(hits)
        want = [h for h in hits if meant(cls, h)]
        per[cls]["expected"] += bool(want)
        per[cls]["failed_check"] += any(h[2] == "failed" for h in want)
        per[cls]["by_dqd"] += any(h[3] == "dqd" for h in want)
        per[cls]["by_medlake"] += any(h[3] == "medlake" for h in want)
        for name in {h[0] for h in want}:
            by_check[cls][name] += 1
        if cls in EXPECTED and not want:
            missed[cls].append({"defect_id": d["defect_id"], "message_id": d["message_id"], "detail": d["detail"],
                                "rows": sorted(rows)[:3], "checks": sorted(f"{h[0]}:{h[1]}" for h in hits)[:12]})
    listed = collections.defaultdict(set)  # class -> the rows its checks list (precision: how many are its defects')
    for row, hs in flagged.items():
        for cls in EXPECTED:
            if any(meant(cls, h) for h in hs):
                listed[cls].add(row)
    out = []
    for cls in sorted(per, key=lambda c: (c not in EXPECTED, c)):
        n = per[cls]
        out.append({"class": cls, "defects": n["defects"], "reached_cdm": n["reached"],
                    "expected_checks": list(EXPECTED.get(cls, ())), "detected": n["expected"],
                    "detected_by_failed_check": n["failed_check"], "flagged_by_any_check": n["any"],
                    "detected_by_dqd_check": n["by_dqd"], "detected_by_medlake_check": n["by_medlake"],
                    "detected_by_check": dict(by_check[cls].most_common()),
                    "recall": n["expected"] / n["reached"] if n["reached"] and cls in EXPECTED else None,
                    "recall_by_failed_check": n["failed_check"] / n["reached"] if n["reached"] and cls in EXPECTED
                    else None,
                    "rows_listed_by_its_checks": len(listed[cls]) if cls in EXPECTED else None,
                    "of_them_rows_of_its_defects": len(listed[cls] & of_class[cls]) if cls in EXPECTED else None,
                    "missed_examples": missed.get(cls, [])})
    units = {i for c in dqd_checks("5.4") if c.name == "plausibleUnitConceptIds" and c.table == "measurement"
             and c.source == "dqd" for i in c.param("concept_ids")}
    ranges = {(c.concept_id, c.unit_concept_id) for c in dqd_checks("5.4")
              if c.name == "plausibleValueLow" and c.table == "measurement"}
    rows = eng.query("SELECT measurement_concept_id AS c, unit_concept_id AS u, count(*) AS n FROM measurement "
                     "WHERE value_as_number IS NOT NULL GROUP BY 1, 2").to_pylist()
    total = max(1, sum(r["n"] for r in rows))
    sources = collections.Counter()
    for x in run.results:
        if x.get("data_source"):
            sources[x["check_name"]] += x["num_violated_rows"] or 0
    return out, {"seconds_quality_run": round(t_run, 2), "summary": run.summary,
                 "numeric_measurement_rows_with_a_dqd_unit_rule": round(
                     sum(r["n"] for r in rows if r["c"] in units) / total, 4),
                 "numeric_measurement_rows_with_a_value_range_for_their_unit": round(
                     sum(r["n"] for r in rows if (r["c"], r["u"]) in ranges) / total, 4),
                 "source_checks_violations": dict(sources),
                 "source_check_results": [{k: x.get(k) for k in ("check_name", "data_source", "cdm_table", "cdm_field",
                                                                 "num_violated_rows", "num_denominator_rows", "status")}
                                          for x in run.results if x.get("data_source")]}


def unit_detectability(eng) -> list[dict]:
    """For every measurement concept with a value range in two units: the share of its results (clean run) that
    would fall outside the other unit's range if labelled with it — how well ranges can see a wrong unit."""
    per: dict[int, dict[int, tuple]] = collections.defaultdict(dict)
    for c in dqd_checks("5.4"):
        if c.source == "medlake" and c.name in ("plausibleValueLow", "plausibleValueHigh"):
            lo, hi = per[c.concept_id].get(c.unit_concept_id, (None, None))
            v = c.param("value")
            per[c.concept_id][c.unit_concept_id] = (v, hi) if c.name == "plausibleValueLow" else (lo, v)
    names = {r["loinc"]: r["concept_name"] for r in plausible_values()}
    by_id = {r["concept_id"]: r for r in plausible_values()}
    ucum = {r["unit_concept_id"]: r["ucum"] for r in plausible_values()}
    out = []
    for cid, units in sorted(per.items()):
        if len(units) != 2:
            continue
        if len(set(units.values())) == 1:
            continue  # one range for both units: the same quantity (10*9/L and 10*3/uL), a label cannot be wrong
        for a, b in (tuple(units), tuple(units)[::-1]):
            lo, hi = units[b]
            r = eng.query(f"SELECT count(*) AS n, sum(CASE WHEN value_as_number < {lo} OR value_as_number > {hi} "
                          f"THEN 1 ELSE 0 END) AS seen FROM measurement WHERE measurement_concept_id = {cid} "
                          f"AND unit_concept_id = {a} AND value_as_number IS NOT NULL").to_pylist()[0]
            if r["n"]:
                out.append({"concept_id": cid, "concept": names[by_id[cid]["loinc"]], "unit": ucum[a],
                            "labelled": ucum[b], "results": r["n"], "outside_range": int(r["seen"] or 0),
                            "share": round((r["seen"] or 0) / r["n"], 3)})
    return out


def failures(eng, work: Path) -> list[dict]:
    run = runner.run(eng, "5.4", out=work / "quality")
    return [{k: x.get(k) for k in ("check_name", "data_source", "cdm_table", "cdm_field", "concept_id",
                                   "num_violated_rows", "num_denominator_rows", "threshold", "examples")}
            for x in run.results if x["status"] == "failed"]


# Why a clean simulated CDM still fails a check (traced by hand; the owner is named).
CAUSES = {
    ("plausibleDuringLife", "observation_period", "observation_period_end_date"):
        "transform (derived.py): an observation period ends after its person's death (a record dated after death)",
    ("plausibleBeforeDeath", "observation_period", "observation_period_end_date"):
        "same row as plausibleDuringLife",
    ("plausibleDuringLife", "drug_exposure", "drug_exposure_end_date"):
        "transform (derived.py): a drug end inferred from the days supply ran past the person's death (a 90-day "
        "supply dispensed a month before death; seed 7 until 2026-12-07: it stops at the death now)",
    ("plausibleBeforeDeath", "drug_exposure", "drug_exposure_end_date"): "same rows as plausibleDuringLife",
    ("plausibleBeforeDeath", "drug_era", "drug_era_end_date"): "the eras of those exposures",
    ("isStandardValidConcept", "observation_period", "period_type_concept_id"):
        "transform: period_type_concept_id 44814724 is not standard (Athena deprecated the Obs Period Type "
        "concepts); 32817 'EHR' or 32827 'EHR encounter record' are the standard type concepts",
    ("standardConceptRecordCompleteness", "visit_occurrence", "admitted_from_concept_id"):
        "transform (rules.py): 0 where the source says nothing; NULL is the convention for 'not recorded'",
    ("standardConceptRecordCompleteness", "visit_occurrence", "discharged_to_concept_id"):
        "transform (rules.py): as admitted_from_concept_id",
    ("standardConceptRecordCompleteness", "visit_detail", "admitted_from_concept_id"):
        "transform: as visit_occurrence.admitted_from_concept_id",
    ("standardConceptRecordCompleteness", "visit_detail", "discharged_to_concept_id"):
        "transform: as visit_occurrence.admitted_from_concept_id",
    ("sourceConceptRecordCompleteness", "drug_exposure", "drug_source_concept_id"):
        "mapping/transform: local pharmacy codes have no source concept (0); a site registers its local codes "
        "as local concepts (>= 2,000,000,000) mapped to the standard ones",
    ("sourceConceptRecordCompleteness", "procedure_occurrence", "procedure_source_concept_id"):
        "as drug_source_concept_id (local procedure codes)",
    ("sourceConceptRecordCompleteness", "measurement", "measurement_source_concept_id"):
        "as drug_source_concept_id (local LIS codes)",
}


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
    ap.add_argument("--empi", action="store_true", help="run the EMPI (vault, linkage) before the transform, as "
                    "`make demo` does; report quality_detection_empi")
    ap.add_argument("--clean-seeds", default="", help="clean runs at these other seeds too (`1-10`, `3,7`): "
                    "the failed checks of each")
    a = ap.parse_args()
    seeds = [n for part in a.clean_seeds.split(",") if part.strip() for lo, _, hi in [part.partition("-")]
             for n in range(int(lo), int(hi or lo) + 1) if n != a.seed]
    name = "quality_detection_empi" if a.empi else "quality_detection"
    eng, t_build = build(a.work / "defects", a.patients, a.hospitals, a.defect_rate, a.seed, a.empi)
    det, meta = detection(eng, a.work / "defects")
    eng.close()
    eng0, t_build0 = build(a.work / "clean", a.patients, a.hospitals, 0.0, a.seed, a.empi)
    fails = failures(eng0, a.work / "clean")
    detectable = unit_detectability(eng0)
    eng0.close()
    others = {}
    for n in seeds:  # (each built, checked and removed: a clean build's store is ~100 MB at 400 patients)
        e, _ = build(a.work / f"clean-{n}", a.patients, a.hospitals, 0.0, n, a.empi)
        others[n] = failures(e, a.work / f"clean-{n}")
        e.close()
        shutil.rmtree(a.work / f"clean-{n}", ignore_errors=True)
    report = {"machine": f"{platform.machine()}, Python {platform.python_version()}", "patients": a.patients,
              "hospitals": a.hospitals, "defect_rate": a.defect_rate, "seed": a.seed,
              "seconds_build": round(t_build, 1), **meta, "detection": det, "clean_run_failed_checks": fails,
              "clean_runs_at_other_seeds": {str(n): f for n, f in others.items()},
              "wrong_unit_detectability_by_range": detectable}
    a.results.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1, default=str)
    text = text.replace(str(Path(__file__).resolve().parents[1]) + "/", "")  # no machine paths in the report
    (a.results / f"{name}.json").write_text(text, encoding="utf-8")
    met = all(d["recall"] is None or d["recall"] >= 0.95 for d in det)
    unmeasured = [d["class"] for d in det if d["expected_checks"] and not d["reached_cdm"]]  # (counted as no miss)
    by_failed = [f"{d['class']} {d['detected_by_failed_check']}/{d['reached_cdm']}" for d in det
                 if d["recall_by_failed_check"] is not None]
    failing = [d["class"] for d in det if d["recall_by_failed_check"] is not None and d["recall_by_failed_check"] < 0.95]
    md = ["# Quality detection on the simulated hospital\n",
          f"`.venv/bin/python bench/quality_detection.py --patients {a.patients} --hospitals {a.hospitals} "
          f"--defect-rate {a.defect_rate} --seed {a.seed}{' --empi' if a.empi else ''}` on {report['machine']}. simulate → ingest → site mapping "
          f"→ transform (in-process, DuckDB, demo vocabulary, {'the EMPI (vault, linkage) before it' if a.empi else 'no EMPI step'}) → full v5.4 suite (DQD checks, medlake value ranges, source-level checks). Each check's "
          "violating rows are traced to their message through `cdm_lineage` and matched with "
          "`ground_truth/defects.jsonl` by message id. A defect counts as detected when a row of its message "
          "violates one of the checks meant for its class (a message can carry several rows: a lab message with "
          "several results counts when one of its rows is flagged).\n",
          "| defect class | defects | reached CDM | checks meant to see it | detected | recall | by a failed check "
          "| by a DQD check | by a medlake check | flagged by any check |",
          "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for d in det:
        md.append(f"| {d['class']} | {d['defects']} | {d['reached_cdm']} | "
                  f"{shown(d['expected_checks']) or '(not a CDM-level defect)'} | {d['detected']} | "
                  f"{pct(d['recall'])} | {d['detected_by_failed_check']} | {d['detected_by_dqd_check']} | "
                  f"{d['detected_by_medlake_check']} | {d['flagged_by_any_check']} |")
    md += ["", f"- **Recall ≥ 0.95 for every CDM-visible class: {'met' if met else 'NOT met'}**"
           + (f" (not measured, none reached the CDM: {', '.join(unmeasured)})." if unmeasured else "."),
           f"- By a **failed** check (what a site reading only the failures sees): {', '.join(by_failed)}; "
           + (f"below 0.95 for {', '.join(failing)} (a row a check counts, under a threshold it does not cross, "
              "is seen only in the check's counts)." if failing else "0.95 or more for every class."),
           "- `reached CDM` 0: the defect's message was quarantined at ingest or merged (duplicates, identity "
           "defects); those are seen by ingest, the source-level checks below and the EMPI, not by CDM checks.",
           "- Impossible values and wrong units are seen by medlake's physiologic value ranges per measurement "
           "concept and unit (`src/medlake/quality/plausible_values.csv`, checks `plausibleValueLow/High` with "
           "source `medlake`): DQD v5.4 has no value range for any measurement concept. Numeric measurement rows "
           f"with a DQD unit rule: {meta['numeric_measurement_rows_with_a_dqd_unit_rule']:.1%}; with a medlake value "
           f"range for their unit: {meta['numeric_measurement_rows_with_a_value_range_for_their_unit']:.1%} "
           "(the demo vocabulary now carries Athena ids for the simulated LOINC labs and UCUM units)."]
    md.append("- Precision (rows the class's checks list that are rows of its defects' messages; the rest are rows "
              "of other causes, a defect of another class, or the data as it is): " + ", ".join(
                  f"{d['class']} {d['of_them_rows_of_its_defects']}/{d['rows_listed_by_its_checks']}"
                  for d in det if d["rows_listed_by_its_checks"]) + ".")
    for d in det:
        if d["detected_by_check"]:
            md.append(f"- {d['class']} seen by: " + ", ".join(f"{k} {v}" for k, v in d["detected_by_check"].items()))
    for d in det:
        for m in d["missed_examples"][:5]:
            md.append(f"- missed {d['class']}: {m['message_id']} — {m['detail']}; rows {m['rows']}; "
                      f"flagged by {m['checks'] or 'nothing'}")
    md += ["", "## How well value ranges can see a wrong unit (clean run)\n",
           "Share of each lab's results that would fall outside the range of its other unit if labelled with it "
           "(the same number, the other unit). Below 1.0 the two units' ranges overlap and a wrong label on those "
           "values is physiologically possible: no range check can see it (urea nitrogen mmol/L vs mg/dL, CRP mg/L "
           "vs mg/dL, magnesium, bilirubin in part).\n",
           ]
    n_all = sum(x["results"] for x in detectable)
    if n_all:
        md.append(f"Over all these results: {sum(x['outside_range'] for x in detectable) / n_all:.2f} would be seen "
                  "— the recall to expect for wrong units on a large sample with the simulator's lab mix.\n")
    md += ["| concept | unit | labelled as | results | outside the range | share |", "|---|---|---|---:|---:|---:|"]
    for x in detectable:
        md.append(f"| {x['concept']} | {x['unit']} | {x['labelled']} | {x['results']} | {x['outside_range']} | "
                  f"{x['share']:.2f} |")
    src = meta["source_check_results"]
    truth = collections.Counter(d["class"] for d in jsonl(a.work / "defects" / "out" / "ground_truth" / "defects.jsonl"))
    viol = meta["source_checks_violations"]
    md += ["", "## Source-level checks (defect run)\n",
           "Per source: mandatory fields the source must send (staging), duplicate records (staging) and duplicate "
           "receipts (landing), records held in quarantine, rows without a standard concept (through `cdm_lineage`). "
           "Totals next to the ground truth: duplicate records "
           f"{viol.get('sourceDuplicateRecords', 0)} (simulator: {truth['duplicate_message']} duplicate_message); "
           f"quarantined {viol.get('sourceQuarantined', 0)} (simulator: malformed_hl7 {truth['malformed_hl7']} + "
           f"missing_mandatory {truth['missing_mandatory']} + bad_json {truth['bad_json']} + wrong_encoding "
           f"{truth['wrong_encoding']} + truncated_file {truth['truncated_file']}); rows without a standard concept "
           f"{viol.get('sourceMappingCoverage', 0)} (simulator: unmapped_code {truth['unmapped_code']}, each message "
           f"can carry several rows); results in an unusual unit {viol.get('sourceUnitConsistency', 0)} (simulator: "
           f"wrong_unit {truth['wrong_unit']}); rows dated more than a day after their receipt "
           f"{viol.get('sourceFutureDates', 0)} (simulator: future_date {truth['future_date']}).\n",
           "| source | check | table | field | violated | of | status |", "|---|---|---|---|---:|---:|---|"]
    for x in src:
        if x["status"] != "passed" or x["check_name"] in ("sourceQuarantined", "sourceMappingCoverage",
                                                          "sourceUnitConsistency"):
            md.append(f"| {x['data_source']} | {x['check_name']} | {x['cdm_table']} | {x['cdm_field'] or ''} | "
                      f"{x['num_violated_rows']} | {x['num_denominator_rows']} | {x['status']} |")
    md += ["", f"## Clean run (defect rate 0): {len(fails)} failed check(s) beyond DQD's default thresholds "
           "(target: none)\n", "| check | source | table | field | violated | denominator | threshold % | cause |",
           "|---|---|---|---|---:|---:|---:|---|"]
    for f in fails:
        cause = CAUSES.get((f["check_name"], f["cdm_table"], f["cdm_field"]), "")
        md.append(f"| {f['check_name']} | {f.get('data_source') or ''} | {f['cdm_table']} | {f['cdm_field'] or ''} | "
                  f"{f['num_violated_rows']} | {f['num_denominator_rows']} | {f['threshold']} | {cause} |")
    if others:
        bad = {n: f for n, f in others.items() if f}
        md += ["", f"Clean runs of {len(others)} other simulated hospitals (seeds {a.clean_seeds}, "
               f"{a.patients} patients, {a.hospitals} hospitals): "
               + (f"**{len(bad)} with failed checks**: " + "; ".join(
                   f"seed {n}: " + ", ".join(f"{x['check_name']} {x['cdm_table']}.{x['cdm_field'] or ''} "
                                            f"{x['num_violated_rows']}/{x['num_denominator_rows']}" for x in f)
                   for n, f in bad.items()) if bad else "no failed check at any of them.")]
    (a.results / f"{name}.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
