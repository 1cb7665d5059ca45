"""Benchmark: staging → OMOP CDM for a simulated hospital group, DuckDB and PostgreSQL in the same run.

1. simulate N patients (3 hospitals) and a further 1 % (another seed, their own source names) — once, kept under
   bench/work/transform-N/ (git-ignored) and reused by later runs;
2. ingest the N patients once into a staged DuckDB store and a staged PostgreSQL database (a cluster kept under
   bench/work/transform-N/pg) — not timed, reused;
3. per engine, on a fresh copy of the staged store (file copy / CREATE DATABASE … TEMPLATE): the full transform,
   each run in its own process — time, CDM rows/s, peak RSS (for PostgreSQL also the server backend's peak);
4. incremental: the 1 % ingested, then a plain `transform` — time as a share of the full load (target ≤ 5 %);
   a re-run with nothing new; and one accepted mapping (the most frequent unmapped code) re-mapped.
Report: bench/results/transform.md and .json.

    python bench/transform.py [--patients 100000] [--postgres-patients N] [--engines duckdb,postgres]
                              [--postgres-staging copy] [--postgres-in-place] [--keep-others]
(at 100,000 patients PostgreSQL's staging is best copied from the staged DuckDB store: ~5 min instead of ~2 h)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
RESULTS = HERE / "results"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _backend(eng) -> tuple[float | None, float]:
    """The PostgreSQL server process serving this connection: (peak RSS MB (VmHWM), CPU seconds), when readable."""
    try:
        pid = eng.query("SELECT pg_backend_pid() AS p").column(0)[0].as_py()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, cpu
        return None, cpu
    except Exception:
        return None, 0.0


def child(url: str, what: str, landing: str) -> None:
    """In a fresh process: ingest:DIR, transform:NAMESPACES_JSON or remap (accept the top gap); print JSON."""
    from medlake.engines import open_engine

    eng = open_engine(url)
    from medlake.mapping import review  # noqa: F401  (imports before the clock starts)
    from medlake.transform import run  # noqa: F401
    out = {}
    pg0 = _backend(eng)[1] if url.startswith("postgres") else 0.0
    c0 = _cpu_seconds()
    t0 = time.perf_counter()
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
        land, q = Landing(Path(landing)), Quarantine(Path(landing))
        s = ingest(eng, land, q, (), config.load(folder / "sources.toml"))
        out["staged_rows"] = s.total().rows
        land.close()
        q.close()
    elif what.startswith("copy:"):  # the staged DuckDB store's tables into this (PostgreSQL) database
        import duckdb

        from medlake.cdm import store, vocab

        if "concept" not in eng.tables():
            store.init(eng, "5.4")
            vocab.load(eng, vocab.demo_vocabulary_dir())
        have = set(eng.tables())
        src = duckdb.connect(what[5:], read_only=True)
        rows = 0
        for (name,) in src.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                                   "AND (table_name LIKE 'stg_%' OR table_name = 'ingest_log') ORDER BY 1").fetchall():
            if name not in have:
                cols = src.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
                                   "ORDER BY ordinal_position", [name]).fetchall()
                eng.execute(f'CREATE TABLE "{name}" (' + ", ".join(f'"{c}" {t}' for c, t in cols) + ")")
            n = eng.load_arrow(name, src.execute(f'SELECT * FROM "{name}"').to_arrow_reader(200_000))
            rows += n if name.startswith("stg_") else 0  # (staged rows, as the ingest counts them)
        src.close()
        out["staged_rows"] = rows
    elif what.startswith("transform:"):
        from medlake.transform.run import transform

        s = transform(eng, namespaces=json.loads(what[10:]))
        out.update(rows=sum(s.written.values()), records=s.records, written=s.written, persons=s.persons,
                   deleted=s.deleted)
    elif what == "accept-top-gap":  # a reviewer accepts one mapping: the most frequent unmapped code
        from medlake.mapping import review, store

        top = eng.query("SELECT code_system, code, vocabulary_id, sum(n_rows) AS n FROM transform_gap "
                        "GROUP BY code_system, code, vocabulary_id ORDER BY n DESC, code LIMIT 1").to_pylist()[0]
        concept = eng.query("SELECT min(concept_id) FROM concept WHERE standard_concept = 'S' AND domain_id = "
                            "'Observation'").column(0)[0].as_py()
        review.decide(eng, review.Target(top["code_system"], store.source_vocabulary_id(top["code_system"]),
                                         top["code"], None), "accepted", concept, by="bench")
        out.update(code=top["code"], rows_with_code=int(top["n"]), concept_id=int(concept))
    out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = _cpu_seconds() - c0  # this process (DuckDB runs in it) + the PostgreSQL backend
    out["peak_rss_mb"] = _peak_rss_mb()
    if url.startswith("postgres"):
        out["server_peak_rss_mb"], pg1 = _backend(eng)
        out["cpu_seconds"] += pg1 - pg0
    eng.close()
    print("RESULT " + json.dumps(out))


def run_child(url: str, what: str, landing: Path | None = None) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", url, what, str(landing or "")],
                       capture_output=True, text=True)
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


def prepared(work: Path, patients: int) -> dict:
    """Simulated data (N patients and 1 %), made once per size and kept."""
    mark = work / "sim.json"
    if mark.exists():
        return json.loads(mark.read_text())
    t = time.perf_counter()
    ns = simulate(work / "sim", patients, 42)
    ns_inc = simulate(work / "sim-inc", max(patients // 100, 1), 4242, "x")
    info = {"ns": ns, "ns_inc": ns_inc, "seconds": time.perf_counter() - t}
    mark.write_text(json.dumps(info))
    return info


class KeptCluster:
    """A PostgreSQL cluster in a fixed folder that survives the run (the staged database is reused)."""

    def __init__(self, folder: Path):
        from medlake.engines.postgres import TempCluster

        self.c = TempCluster()
        shutil.rmtree(self.c.dir, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        self.c.dir, self.c.data = folder, folder / "data"
        if self.c._as:
            shutil.chown(folder, "postgres")

    def start(self) -> "KeptCluster":
        c = self.c
        if not (c.data / "PG_VERSION").exists():
            c._run(str(c.bindir / "initdb"), "-D", str(c.data), "-A", "trust", "-U", c.user, "-E", "UTF8",
                   "--locale=C", "--no-sync")
        opts = f"-p {c.port} -k {c.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off " \
               f"-c full_page_writes=off -c max_wal_size=2GB -c shared_buffers=512MB -c work_mem=64MB"
        c._run(str(c.bindir / "pg_ctl"), "-D", str(c.data), "-o", opts, "-l", str(c.dir / "log"), "-w", "-t", "120",
               "start")
        return self

    def url(self, db: str) -> str:
        return f"postgresql://{self.c.user}@127.0.0.1:{self.c.port}/{db}"

    def sql(self, statement: str) -> None:
        from medlake.engines.postgres import PostgresEngine

        eng = PostgresEngine(self.c.url)
        try:
            eng.execute_native(statement)
        finally:
            eng.close()

    def stop(self) -> None:
        c = self.c
        c._run(str(c.bindir / "pg_ctl"), "-D", str(c.data), "-m", "fast", "-w", "-t", "300", "stop")


def staged_store(work: Path, engine: str, cluster: KeptCluster | None, copy: bool = False) -> dict:
    """Ingest the N patients once per engine; returns {staged_rows, seconds, landing}. `copy`: PostgreSQL's
    staging is copied from the staged DuckDB store (the same rows, receipt numbers and ingest log; its landing is
    DuckDB's) instead of ingesting again — at 100,000 patients that takes about 2 h here."""
    mark = work / f"staged-{engine}.json"
    if mark.exists():
        return {"landing": f"landing-{engine}", **json.loads(mark.read_text())}
    if engine == "duckdb":
        url = f"duckdb:{work / 'staged.duckdb'}"
        Path(work / "staged.duckdb").unlink(missing_ok=True)
    else:
        cluster.sql('DROP DATABASE IF EXISTS "staged"')
        cluster.sql('CREATE DATABASE "staged"')
        url = cluster.url("staged")
    if copy:
        info = {**run_child(url, f"copy:{work / 'staged.duckdb'}"), "copied_from": "staged.duckdb",
                "landing": "landing-duckdb"}
    else:
        landing = work / f"landing-{engine}"
        shutil.rmtree(landing, ignore_errors=True)
        info = run_child(url, f"ingest:{work / 'sim'}", landing)
    mark.write_text(json.dumps(info))
    return {"landing": f"landing-{engine}", **info}


def fresh_copy(work: Path, engine: str, cluster: KeptCluster | None, in_place: bool = False) -> str:
    """A copy of the staged store to transform; `in_place` (PostgreSQL): the staged database itself (no room for
    a copy on this disk), which is then no longer staged only."""
    if engine == "duckdb":
        shutil.copyfile(work / "staged.duckdb", work / "run.duckdb")
        return f"duckdb:{work / 'run.duckdb'}"
    if in_place:
        (work / f"staged-{engine}.json").unlink()
        return cluster.url("staged")
    cluster.sql('DROP DATABASE IF EXISTS "run"')
    cluster.sql('CREATE DATABASE "run" TEMPLATE "staged"')
    return cluster.url("run")


def measure(work: Path, engine: str, cluster: KeptCluster | None, sim: dict, copy: bool = False,
            in_place: bool = False) -> dict:
    staged = staged_store(work, engine, cluster, copy)
    url = fresh_copy(work, engine, cluster, in_place)
    ns_all = {**sim["ns"], **sim["ns_inc"]}
    full = run_child(url, "transform:" + json.dumps(sim["ns"]))
    rerun = run_child(url, "transform:" + json.dumps(sim["ns"]))
    landing = work / f"landing-inc-{engine}"  # the store's own landing (receipt numbers go on), copied
    kept = work / staged["landing"]
    shutil.rmtree(landing, ignore_errors=True)
    subprocess.run(["cp", "-al", str(kept), str(landing)], check=True)  # objects: linked
    for f in landing.iterdir():
        if f.is_file():  # the databases: copied, the kept landing stays as it was
            f.unlink()
            shutil.copyfile(kept / f.name, f)
    run_child(url, f"ingest:{work / 'sim-inc'}", landing)
    inc = run_child(url, "transform:" + json.dumps(ns_all))
    accepted = run_child(url, "accept-top-gap")
    remap = run_child(url, "transform:" + json.dumps(ns_all))
    if engine == "duckdb":  # the transformed CDM is kept for `bench/quality.py --cdm` (the simulated hospital's CDM)
        os.replace(work / "run.duckdb", work / "cdm.duckdb")
    return {"staged_rows": staged["staged_rows"], "ingest_seconds": staged["seconds"],
            "staging": "copied from DuckDB's staged store" if staged.get("copied_from") else "ingested",
            "full": full, "rerun": rerun,
            "incremental": inc, "accepted": accepted, "remap": remap, "rows_per_s": full["rows"] / full["seconds"],
            "incremental_share": inc["seconds"] / full["seconds"], "remap_share": remap["seconds"] / full["seconds"],
            "incremental_cpu_share": inc["cpu_seconds"] / full["cpu_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=100000)
    ap.add_argument("--postgres-patients", type=int, help="a smaller size for PostgreSQL (default: --patients)")
    ap.add_argument("--engines", default="duckdb,postgres")
    ap.add_argument("--postgres-staging", choices=("ingest", "copy"), default="ingest",
                    help="copy: fill PostgreSQL's staging from the staged DuckDB store (made first) instead of ingesting")
    ap.add_argument("--postgres-in-place", action="store_true",
                    help="transform the staged PostgreSQL database itself, not a copy (disk space)")
    ap.add_argument("--keep-others", action="store_true",
                    help="engines not run now keep their result from the last report (marked as such)")
    ap.add_argument("--child", nargs=3)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    engines = a.engines.split(",")
    sizes = {"duckdb": a.patients, "postgres": a.postgres_patients or a.patients}
    res, sims, clusters = {}, {}, {}
    kept = {}
    if a.keep_others and (RESULTS / "transform.json").exists():
        last = json.loads((RESULTS / "transform.json").read_text())
        kept = {k: {**r, "earlier_run": True} for k, r in last["engines"].items() if k not in engines}
    try:
        for name in engines:
            n = sizes[name]
            work = WORK / f"transform-{n}"
            work.mkdir(parents=True, exist_ok=True)
            sims[n] = sims.get(n) or prepared(work, n)
            cluster = None
            if name == "postgres":
                cluster = clusters.get(n) or KeptCluster(work / "pg").start()
                clusters[n] = cluster
            if name == "postgres" and a.postgres_staging == "copy":
                staged_store(work, "duckdb", None)
            res[name] = {"patients": n, **measure(work, name, cluster, sims[n], a.postgres_staging == "copy",
                                                  a.postgres_in_place)}
            print(name, json.dumps(res[name]), flush=True)
            write_report({**res, **kept}, {**sizes, **{k: r["patients"] for k, r in kept.items()}},
                         engines + list(kept))  # after each engine: a slow one does not lose the others
    finally:
        for c in clusters.values():
            c.stop()


def write_report(res: dict, sizes: dict, engines: list) -> None:
    report = {"patients": sizes, "machine": f"{platform.machine()}, {platform.python_version()}, "
                                            f"{os.cpu_count()} cores", "engines": res}
    d, p = res.get("duckdb"), res.get("postgres")
    if d and p:
        report["postgres_to_duckdb_time_ratio"] = p["full"]["seconds"] / d["full"]["seconds"]
        report["postgres_to_duckdb_cpu_ratio"] = p["full"]["cpu_seconds"] / d["full"]["cpu_seconds"]
        report["same_patients"] = d["patients"] == p["patients"]
        report["same_rows_on_both"] = d["full"]["written"] == p["full"]["written"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "transform.json").write_text(json.dumps(report, indent=1))
    lines = ["# Transform benchmark: staging → OMOP CDM (simulated hospital group, 3 hospitals)", "",
             "`python bench/transform.py " + " ".join(sys.argv[1:]) + "`; each load in its own process, on a fresh "
             "copy of the same staged store; +1 % = a further 1 % of patients ingested, then a plain `transform`.", "",
             "| engine | patients | staged rows | CDM rows | full load s (CPU s) | rows/s | peak RSS MB | +1 % s (CPU s) "
             "| share of full: wall, CPU | re-run s | 1 mapping accepted: records re-mapped, s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in res.items():
        rss = f"{r['full']['peak_rss_mb']:.0f}"
        if r["full"].get("server_peak_rss_mb"):
            rss += f" (+ server {r['full']['server_peak_rss_mb']:.0f})"
        lines.append(f"| {name} | {r['patients']:,} | {r['staged_rows']:,} | {r['full']['rows']:,} | "
                     f"{r['full']['seconds']:.1f} ({r['full']['cpu_seconds']:.1f}) | {r['rows_per_s']:,.0f} | {rss} | "
                     f"{r['incremental']['seconds']:.2f} ({r['incremental']['cpu_seconds']:.2f}) | "
                     f"{r['incremental_share']:.1%}, {r['incremental_cpu_share']:.1%} | {r['rerun']['seconds']:.2f} | "
                     f"{r['remap']['records']:,} ({r['accepted']['rows_with_code']:,} with the code), "
                     f"{r['remap']['seconds']:.2f} |")
    lines.append("")
    if d and p:
        lines.append(f"PostgreSQL / DuckDB full-load time: {report['postgres_to_duckdb_time_ratio']:.2f}× wall, "
                     f"{report['postgres_to_duckdb_cpu_ratio']:.2f}× CPU"
                     + ("" if report["same_patients"] else
                        f" (NOT the same size: PostgreSQL ran {p['patients']:,} patients, DuckDB {d['patients']:,})")
                     + f"; same CDM row counts on both: {report['same_rows_on_both'] if report['same_patients'] else 'n/a'}.")
    lines.append("Incremental target (+1 % ≤ 5 % of the full load), by wall time: " + ", ".join(
        f"{k} {'met' if r['incremental_share'] <= 0.05 else 'NOT met'} ({r['incremental_share']:.1%})"
        for k, r in res.items()) + "; by CPU time: " + ", ".join(
        f"{k} {'met' if r['incremental_cpu_share'] <= 0.05 else 'NOT met'} ({r['incremental_cpu_share']:.1%})"
        for k, r in res.items()) + ". CPU time counts the work whatever else the machine runs; wall time includes "
        "waiting for the CPU.")
    for name, r in res.items():
        if r.get("staging", "ingested") != "ingested":
            lines.append(f"{name}'s staging was {r['staging']} ({r['ingest_seconds']:.0f} s, not timed): the same rows, "
                         "receipt numbers and ingest log; its +1 % is ingested into it as usual.")
    earlier = [k for k, r in res.items() if r.get("earlier_run")]
    if earlier:
        lines.append(f"{', '.join(earlier)}: the result of an earlier run of this benchmark on the same staged store, "
                     "kept (`--keep-others`); not measured in this run.")
    missing = [e for e in engines if e not in res]
    if missing:
        lines.append(f"Not measured in this run (still running or failed): {', '.join(missing)}.")
    lines.append(f"Machine: {report['machine']} (shared with other jobs; runs under nice).")
    (RESULTS / "transform.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
