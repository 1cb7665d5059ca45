"""Benchmark: `medlake simulate` — patients/s, patients per CPU-second and peak RSS (3 hospitals, 2015–2025,
defect rate 0.02, seed 42), each run in its own process pinned to one core so that its peak RSS and speed are
its own. Every run logs its progress (patients, CPU-seconds, RSS now and peak) to bench/results, so that a run
stopped early still shows how far it got and its memory curve.

Baseline in the same run: the same persons and care plans (medlake.simulate.people + care: names, ID numbers,
encounters, results, drugs) written as one JSON line per person with orjson — the cost of the clinical model
alone, without the HL7 v2 / FHIR / CSV dialects, the defects and the ground truth. It shows what the formats cost.

--discard: the output of 1,000,000 patients (~100 GB) does not fit on the disk, so such runs use
simulate(discard=True): every writer, encoder and ground-truth writer runs, and each file only counts the bytes
written to it (reported as output MB, counted and discarded). Compare with a run of the same code written to disk.

Report: bench/results/<name>.md and .json (name: simulate, or simulate.1m etc. with --name);
progress: bench/results/<name>.progress.jsonl; `--from-progress NAME` summarizes a run stopped before the end.

    python bench/simulate.py [--sizes 10000 100000] [--keep]
    nice -n 10 python bench/simulate.py --discard --sizes 1000000 --name simulate.1m --no-baseline --core 0
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "simulate"
RESULTS = HERE / "results"

CHILD = r"""
import json, os, resource, sys, time
mode, n, out, discard, core, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", int(sys.argv[5]), sys.argv[6]
os.sched_setaffinity(0, {core})
t, c = time.perf_counter(), time.process_time()
every = max(1000, n // 100 // 200 * 200)  # simulate reports every 200
logf = open(log, "a")

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024

last = [0]

def progress(i, total):
    if (i % every == 0 or i == total) and i != last[0]:
        last[0] = i
        logf.write(json.dumps({"mode": mode, "patients": i, "of": total, "seconds": round(time.perf_counter() - t, 2),
                               "cpu_seconds": round(time.process_time() - c, 2), "rss_mb": round(rss_mb(), 1),
                               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}) + "\n")
        logf.flush()

extra = {}
if mode == "medlake":
    from medlake.simulate import simulate
    s = simulate(out, patients=n, hospitals=3, seed=42, defect_rate=0.02, progress=progress, discard=discard)
    size = s.bytes
    extra = {"files": s.files, "messages": s.messages, "resources": s.resources, "rows": s.rows, "facts": s.facts,
             "defects": sum(s.defects.values())}
else:
    import datetime as dt, random, orjson
    from medlake.simulate import care
    from medlake.simulate.people import make_person
    start, end = dt.date(2015, 1, 1), dt.date(2025, 12, 31)
    size = 0
    if not discard:
        os.makedirs(out, exist_ok=True)
    f = None if discard else open(os.path.join(out, "persons.jsonl"), "wb")
    for i in range(n):
        rng = random.Random(42 * 1_000_003 + i)
        p = make_person(f"P{i + 1:07d}", rng, start)
        encs = care.plan(p, start, end, 3, rng)
        p["encounters"] = [[e.hospital, e.cls, e.start, e.end, e.dx, e.labs, e.vitals, e.meds, e.procs]
                           for e in encs]
        line = orjson.dumps(p, default=str) + b"\n"
        size += len(line)
        if f:
            f.write(line)
        progress(i + 1, n)
    if f:
        f.close()
secs, cpu = time.perf_counter() - t, time.process_time() - c
print(json.dumps({"mode": mode, "patients": n, "discard": discard, "seconds": secs, "cpu_seconds": cpu,
                  "output_mb": size / 2**20, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  **extra}))
"""


def run(mode: str, n: int, discard: bool, core: int, log: Path) -> dict:
    out = WORK / f"{mode}-{n}"
    shutil.rmtree(out, ignore_errors=True)
    p = subprocess.run([sys.executable, "-c", CHILD, mode, str(n), str(out), "1" if discard else "0", str(core),
                        str(log)], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{mode} {n} failed:\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["patients_per_s"] = n / r["seconds"]
    r["patients_per_cpu_s"] = n / r["cpu_seconds"]
    return r


def from_progress(name: str) -> None:
    """Report a run that was stopped before it finished (deadline, machine time) from its progress log: the
    largest size reached, its speed and the RSS curve. Writes bench/results/<name>.md."""
    log = RESULTS / f"{name}.progress.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    med = [r for r in rows if r["mode"] == "medlake"]
    last = med[-1]
    done = last["patients"] == last["of"]
    step = max(1, len(med) // 20)
    lines = [
        f"# Simulated hospital benchmark: {last['of']:,} patients, output counted and discarded"
        + ("" if done else " — NOT FINISHED"), "",
        f"{'Finished' if done else 'Largest size reached'}: **{last['patients']:,} of {last['of']:,} patients** after "
        f"{last['seconds']:,.0f} s ({last['cpu_seconds']:,.0f} CPU-seconds): "
        f"{last['patients'] / last['cpu_seconds']:,.0f} patients per CPU-second, "
        f"{last['patients'] / last['seconds']:,.0f} patients/s wall-clock; peak RSS {last['peak_rss_mb']:,.1f} MB "
        f"(target < 2 GB: **{'met' if last['peak_rss_mb'] < 2048 else 'NOT met'}** up to this size).", "",
        *([] if done else ["The run had not finished when this summary was written from its progress log "
                           "(it was stopped, or still going).", ""]),
        "Every writer, encoder and ground-truth writer ran; the bytes were counted and discarded "
        "(simulate(discard=True)), because the full output (~100 KB per patient) does not fit on the disk. "
        "A run of the same code written to disk: bench/results/simulate.md.", "",
        "RSS curve (from the progress log):", "",
        "| patients | seconds | CPU-seconds | patients per CPU-s | RSS now (MB) | peak RSS (MB) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    shown = med[step - 1::step]
    for r in shown + ([] if shown[-1] is last else [last]):
        lines.append(f"| {r['patients']:,} | {r['seconds']:,.0f} | {r['cpu_seconds']:,.1f} | "
                     f"{r['patients'] / r['cpu_seconds']:,.0f} | {r['rss_mb']:,.1f} | {r['peak_rss_mb']:,.1f} |")
    lines += ["", f"Full log: `bench/results/{log.name}`. Summary written by "
              f"`.venv/bin/python bench/simulate.py --from-progress {name}`."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from-progress", metavar="NAME", help="only summarize bench/results/NAME.progress.jsonl "
                    "(a run stopped before it finished)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--discard", action="store_true", help="count the output bytes and discard them (no disk)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--core", type=int, default=None, help="CPU core to pin the runs to (default: the last)")
    ap.add_argument("--name", default="simulate", help="report name in bench/results")
    ap.add_argument("--keep", action="store_true", help="keep the outputs in bench/work/simulate")
    args = ap.parse_args()
    if args.from_progress:
        return from_progress(args.from_progress)
    core = sorted(os.sched_getaffinity(0))[-1] if args.core is None else args.core
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / f"{args.name}.progress.jsonl"
    log.unlink(missing_ok=True)
    load = os.getloadavg()
    results = []
    for n in args.sizes:
        for mode in ("medlake",) + (() if args.no_baseline else ("baseline",)):
            results.append(run(mode, n, args.discard, core, log))
            print(json.dumps(results[-1]), flush=True)
            if not args.keep:
                shutil.rmtree(WORK / f"{mode}-{n}", ignore_errors=True)
    med = [r for r in results if r["mode"] == "medlake"]
    rss = [r["peak_rss_mb"] for r in med]
    speed_ok = all(r["patients_per_cpu_s"] >= 500 for r in med)
    rss_flat = max(rss) < 1.5 * min(rss) + 50
    report = {
        "benchmark": args.name, "machine": f"{platform.machine()}, {os.cpu_count()} cores (runs pinned to core "
        f"{core}), Python {platform.python_version()}, niceness {os.nice(0)}", "load_average_at_start": [round(x, 2) for x in load],
        "setup": "3 hospitals, 2015-01-01..2025-12-31, defect rate 0.02, seed 42",
        "output": "counted and discarded (simulate(discard=True))" if args.discard else "written to disk",
        "runs": results,
        "targets": {"patients_per_cpu_s_at_least": 500, "speed_met": speed_ok, "peak_rss_mb_below": 2048,
                    "rss_met": max(rss) < 2048, "rss_flat_in_n": rss_flat},
        "progress_log": f"bench/results/{log.name}",
    }
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# Simulated hospital benchmark" + (" (output counted and discarded)" if args.discard else ""), "",
        f"Setup: {report['setup']}. Output: {report['output']}. Machine: {report['machine']}; load average when "
        f"it started: {', '.join(str(x) for x in report['load_average_at_start'])} (a shared machine: wall-clock "
        "speed depends on what else runs; CPU-seconds less so).", "",
        "| run | patients | seconds | patients/s | patients per CPU-s | peak RSS (MB) | output (MB) | files | "
        "HL7 messages | FHIR resources | CSV rows | facts | defects |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cells = [f"{r.get(k, 0):,}" if r["mode"] == "medlake" else "–" for k in
                 ("files", "messages", "resources", "rows", "facts", "defects")]
        lines.append(f"| {r['mode']}{' (discard)' if r['discard'] else ''} | {r['patients']:,} | {r['seconds']:.1f} | "
                     f"{r['patients_per_s']:,.0f} | {r['patients_per_cpu_s']:,.0f} | {r['peak_rss_mb']:,.0f} | "
                     f"{r['output_mb']:,.0f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Targets: ≥ 500 patients per CPU-second on one core — **{'met' if speed_ok else 'NOT met'}** "
        f"({', '.join(format(r['patients_per_cpu_s'], ',.0f') for r in med)}); peak RSS under 2 GB — "
        f"**{'met' if report['targets']['rss_met'] else 'NOT met'}**; peak RSS "
        f"{'does not grow' if rss_flat else 'GROWS'} with the number of patients "
        f"({' → '.join(format(x, ',.0f') + ' MB' for x in rss)}).",
        "",
        "The baseline builds the same persons and care plans and writes them as one JSON line per person: the "
        "clinical model alone, without the four systems' formats, the defects and the ground truth.",
    ]
    if not args.discard:
        lines += ["", "1,000,000 patients (~100 GB of output, more than the disk holds): "
                  "bench/results/simulate.1m.md, a run with the output counted and discarded."]
    if args.discard:
        lines += ["", "Output counted and discarded: every writer, encoder and ground-truth writer ran; each file "
                  "only counted its bytes (the output column), because the full output does not fit on the disk."]
    cmd = " ".join([".venv/bin/python bench/simulate.py", *sys.argv[1:]])
    lines += ["", f"Progress and RSS curve: `bench/results/{log.name}`.", "", f"Reproduce: `{cmd}`"]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
