"""Benchmark: staging → OMOP CDM for a simulated hospital group, DuckDB and PostgreSQL in the same run.

1. simulate N patients (3 hospitals), ingest them into a DuckDB store and into a PostgreSQL store (not timed);
2. full transform on each engine, each in its own process (peak RSS is its own): time, CDM rows/s, peak RSS;
3. incremental: a further 1% of patients (another seed, their own source names) ingested, then a transform —
   time as a share of the full load (target ≤ 5%).
Report: bench/results/transform.md and .json.

    python bench/transform.py [--patients 20000]
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "transform"
RESULTS = HERE / "results"


def child(url: str, what: str) -> None:
    """In a fresh process: ingest (what=ingest:DIR) or transform, print JSON with seconds and peak RSS."""
    from medlake.engines import open_engine

    eng = open_engine(url)
    t0 = time.perf_counter()
    out = {}
    if what.startswith("ingest:"):
        from medlake.cdm import store, vocab
        from medlake.landing import Landing
        from medlake.landing.ingest import ingest
        from medlake.landing.quarantine import Quarantine
        from medlake.sources import config

        folder = Path(what[7:])
        if "concept" not in eng.tables():
            store.init(eng, "5.4")
            vocab.load(eng, vocab.demo_vocabulary_dir())
        land_root = WORK / ("landing-" + re.sub(r"\W", "_", url)[-40:])
        land, q = Landing(land_root), Quarantine(land_root)
        s = ingest(eng, land, q, (), config.load(folder / "sources.toml"))
        out["staged_rows"] = s.total().rows
        land.close()
        q.close()
    else:
        from medlake.transform.run import transform

        ns = json.loads(what[10:])
        s = transform(eng, namespaces=ns)
        out.update(rows=sum(s.written.values()), records=s.records, written=s.written, persons=s.persons)
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    eng.close()
    print("RESULT " + json.dumps(out))


def run_child(url: str, what: str) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", url, what], capture_output=True, text=True)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if p.returncode or line is None:
        raise SystemExit(f"child failed ({url} {what[:30]}): {p.stderr.strip()[-2000:]}")
    return json.loads(line[7:])


def simulate(folder: Path, patients: int, seed: int, suffix: str = "") -> dict[str, str]:
    from medlake.simulate import simulate as sim

    sim(folder, patients=patients, hospitals=3, seed=seed)
    toml = (folder / "sources.toml").read_text(encoding="utf-8")
    if suffix:  # another feed of the same sites: own source names and namespaces
        toml = re.sub(r'^name = "(h\d+)-', rf'name = "\1{suffix}-', toml, flags=re.M)
        toml = re.sub(r'^hospital = "(h\d+)"', rf'hospital = "\1{suffix}"', toml, flags=re.M)
        (folder / "sources.toml").write_text(toml, encoding="utf-8")
    names = re.findall(r'^name = "([^"]+)"', toml, re.M)
    hosp = re.findall(r'^hospital = "([^"]+)"', toml, re.M)
    return dict(zip(names, hosp))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=20000)
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    from medlake.engines.postgres import TempCluster

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    t = time.perf_counter()
    ns = simulate(WORK / "sim", a.patients, 42)
    ns_inc = simulate(WORK / "sim-inc", max(a.patients // 100, 1), 4242, "x")
    sim_s = time.perf_counter() - t
    cluster = TempCluster().start()
    try:
        stores = {"duckdb": f"duckdb:{WORK / 'store.duckdb'}", "postgres": cluster.create_database("bench")}
        res = {}
        for name, url in stores.items():
            ing = run_child(url, f"ingest:{WORK / 'sim'}")
            full = run_child(url, "transform:" + json.dumps(ns))
            run_child(url, f"ingest:{WORK / 'sim-inc'}")
            inc = run_child(url, "transform:" + json.dumps({**ns, **ns_inc}))
            res[name] = {"staged_rows": ing["staged_rows"], "full": full, "incremental": inc,
                         "rows_per_s": full["rows"] / full["seconds"],
                         "incremental_share": inc["seconds"] / full["seconds"]}
    finally:
        cluster.stop()
    d, p = res["duckdb"], res["postgres"]
    report = {"patients": a.patients, "incremental_patients": max(a.patients // 100, 1), "simulate_seconds": sim_s,
              "machine": f"{platform.machine()}, {platform.python_version()}", "engines": res,
              "postgres_to_duckdb_time_ratio": p["full"]["seconds"] / d["full"]["seconds"],
              "same_rows_on_both": d["full"]["written"] == p["full"]["written"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "transform.json").write_text(json.dumps(report, indent=1))
    lines = [f"# Transform benchmark: staging → OMOP CDM ({a.patients:,} simulated patients, 3 hospitals)", "",
             "`python bench/transform.py --patients N`; each load in its own process; same staging on both engines.",
             "", "| engine | staged rows | CDM rows | full load s | rows/s | peak RSS MB | +1% load s | share of full |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in res.items():
        lines.append(f"| {name} | {r['staged_rows']:,} | {r['full']['rows']:,} | {r['full']['seconds']:.1f} | "
                     f"{r['rows_per_s']:,.0f} | {r['full']['peak_rss_mb']:.0f} | {r['incremental']['seconds']:.2f} | "
                     f"{r['incremental_share']:.1%} |")
    lines += ["", f"PostgreSQL / DuckDB full-load time: {report['postgres_to_duckdb_time_ratio']:.2f}×; "
              f"same CDM row counts on both: {report['same_rows_on_both']}.",
              f"Incremental target (≤ 5% of the full load): DuckDB {'met' if d['incremental_share'] <= 0.05 else 'NOT met'}"
              f", PostgreSQL {'met' if p['incremental_share'] <= 0.05 else 'NOT met'}.",
              f"Machine: {report['machine']} (shared, 2 cores; other jobs were running)."]
    (RESULTS / "transform.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
