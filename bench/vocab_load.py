"""Benchmark: load an Athena-format vocabulary (1M concepts, 10M concept_ancestor rows) into DuckDB.

medlake's loader (streamed, strict, verified, one transaction) against a baseline in the same run: DuckDB's own
CSV reader (`INSERT … SELECT * FROM read_csv(…)`, not strict about dates/"NA", no line-level errors). Each load
runs in its own process so that its peak RSS is its own. Report: bench/results/vocab_load.md and .json.

    python bench/vocab_load.py [--concepts 1000000] [--ancestors 10000000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "vocab"
RESULTS = HERE / "results"


def generate(folder: Path, n_concepts: int, n_ancestors: int) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    opts = pacsv.WriteOptions(delimiter="\t", quoting_style="none", include_header=True)
    ids = pa.array(range(1, n_concepts + 1), pa.int64())
    domains = pa.array(["Condition", "Drug", "Measurement", "Procedure", "Observation"])
    idx = pc.cast(pc.divide(ids, pa.scalar(1, pa.int64())), pa.int64())
    concept = pa.table({
        "concept_id": ids,
        "concept_name": pc.binary_join_element_wise("Generated concept ", pc.cast(ids, pa.string()), ""),
        "domain_id": pc.take(domains, pc.remainder(idx, 5)),
        "vocabulary_id": pa.array(["SNOMED"] * n_concepts),
        "concept_class_id": pa.array(["Clinical Finding"] * n_concepts),
        "standard_concept": pa.array(["S"] * n_concepts),
        "concept_code": pc.cast(pc.add(ids, 100000), pa.string()),
        "valid_start_date": pa.array(["19700101"] * n_concepts),
        "valid_end_date": pa.array(["20991231"] * n_concepts),
        "invalid_reason": pa.array([""] * n_concepts),
    })
    pacsv.write_csv(concept, folder / "CONCEPT.csv", opts)
    del concept
    chunk = 2_000_000
    with pacsv.CSVWriter(folder / "CONCEPT_ANCESTOR.csv", pa.schema([
        ("ancestor_concept_id", pa.int64()), ("descendant_concept_id", pa.int64()),
        ("min_levels_of_separation", pa.int64()), ("max_levels_of_separation", pa.int64())]), write_options=opts) as w:
        for start in range(0, n_ancestors, chunk):
            k = min(chunk, n_ancestors - start)
            r = pa.array(range(start, start + k), pa.int64())
            w.write_table(pa.table({
                "ancestor_concept_id": pc.add(pc.remainder(r, n_concepts // 10), 1),
                "descendant_concept_id": pc.add(pc.remainder(pc.multiply(r, 7), n_concepts), 1),
                "min_levels_of_separation": pc.remainder(r, 5),
                "max_levels_of_separation": pc.add(pc.remainder(r, 5), 1),
            }))
    (folder / "VOCABULARY.csv").write_text(
        "vocabulary_id\tvocabulary_name\tvocabulary_reference\tvocabulary_version\tvocabulary_concept_id\n"
        "None\tOMOP Standardized Vocabularies\tOMOP generated\tbench generated\t44819096\n")
    return {"concept": n_concepts, "concept_ancestor": n_ancestors, "vocabulary": 1}


CHILD = r"""
import json, resource, sys, time
from medlake.engines import open_engine
from medlake.cdm import store, vocab
mode, folder, db, mem = sys.argv[1:5]
eng = open_engine(f"duckdb:{db}" + (f"?memory_limit={mem}" if mem != "-" else ""))
store.init(eng)
t = time.perf_counter()
if mode == "medlake":
    report = vocab.load(eng, folder)
    rows = sum(report.loaded.values())
    ok = report.verified
else:
    rows = 0
    with eng.transaction():
        for name in ("vocabulary", "concept", "concept_ancestor"):
            eng.execute(f"INSERT INTO {name} SELECT * FROM read_csv('{folder}/{name.upper()}.csv', delim='\t', "
                        f"header=true, quote='', dateformat='%Y%m%d', auto_detect=true)")
            rows += eng.query(f"SELECT count(*) FROM {name}").column(0)[0].as_py()
    ok = True
secs = time.perf_counter() - t
eng.close()
print(json.dumps({"mode": mode, "rows": rows, "seconds": secs, "verified": ok,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(mode: str, folder: Path, mem: str) -> dict:
    db = WORK / f"{mode}.duckdb"
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder), str(db), mem],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concepts", type=int, default=1_000_000)
    ap.add_argument("--ancestors", type=int, default=10_000_000)
    ap.add_argument("--memory-limit", default="1GB", help="DuckDB memory_limit for both runs ('-' for none)")
    args = ap.parse_args()
    folder = WORK / "athena"
    shutil.rmtree(WORK, ignore_errors=True)
    t = time.perf_counter()
    files = generate(folder, args.concepts, args.ancestors)
    gen = time.perf_counter() - t
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    results = [run("medlake", folder, args.memory_limit), run("duckdb-read_csv", folder, args.memory_limit)]
    for r in results:
        r["rows_per_s"] = r["rows"] / r["seconds"]
    med = results[0]
    report = {
        "benchmark": "vocab_load", "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}", "files": files, "input_mb": round(size_mb, 1), "generate_s": round(gen, 1),
        "duckdb_memory_limit": args.memory_limit, "runs": results,
        "target": {"peak_rss_mb_below": 2048, "met": med["peak_rss_mb"] < 2048 and med["verified"]},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vocab_load.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# Vocabulary load benchmark", "",
        f"Input: generated Athena-format files, {files['concept']:,} concepts and {files['concept_ancestor']:,} "
        f"concept_ancestor rows ({size_mb:,.0f} MB). Machine: {report['machine']}. "
        f"DuckDB memory_limit: {args.memory_limit}.", "",
        "| loader | rows | seconds | rows/s | peak RSS (MB) | verified |", "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(f"| {r['mode']} | {r['rows']:,} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | "
                     f"{r['peak_rss_mb']:,.0f} | {r['verified']} |")
    lines += ["", f"Target: medlake's peak RSS under 2 GB — **{'met' if report['target']['met'] else 'NOT met'}**.",
              "", "The baseline is DuckDB's native CSV reader: fastest possible, but it neither checks dates "
              "strictly nor names the file, line and field of a bad row, and it is not engine-neutral.",
              "", "Reproduce: `.venv/bin/python bench/vocab_load.py`"]
    (RESULTS / "vocab_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
