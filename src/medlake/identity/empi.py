"""EMPI: link every source identity to one person, with Splink (Fellegi–Sunter, EM) on the store's engine:
Splink's Spark backend for a Spark store, an in-memory DuckDB for every other store.

A run reads the vault's identities (a logged plaintext read, kept in this process's memory only), derives the
comparison values, blocks on the vault's HMAC-ed keys, scores pairs with the saved (or newly estimated) model,
and stores in the site store — never any identifying value — :

- `empi_pair`: the scored pairs of the latest run (identity keys, probability, weight, level per comparison);
  those between the review and the link threshold form the review queue;
- `empi_decision`: the history of A40 merges and of manual accept / reject / unmerge decisions (append-only;
  the latest decision on a pair wins);
- `empi_person_map(source, source_id, person_id)`: what the transform uses;
- `empi_alias(source, source_id, alias)`: the hospital MRN an identity carries besides its own id (a FHIR Patient's
  MR identifier; an HL7 patient's id is its MRN): a source the EMPI does not register, which sends only the MRN (a
  pharmacy), takes the person by it (`transform.compile.EMPI_IDS`) — an MRN, like an HL7 source id, not a name;
- `empi_person_history`: every person_id change, with the run and the reason;
- `empi_run`: one row per run or re-cluster, with thresholds and the model (Splink JSON: the m/u parameters).

Clusters join automatic links, accepted pairs and merges, strongest first; a rejected or unmerged pair is
never put into one person, also not through a chain of other links (`cluster`). person_ids are stable: each
cluster keeps the smallest old id it holds a majority of; an id is never reused; a new cluster gets the next
unused id.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from medlake.identity import model as model_mod
from medlake.identity.normalize import BLOCKING_KINDS, comparison_values
from medlake.identity.vault import Vault

LINK_THRESHOLD = 0.95    # match probability at or above: linked
REVIEW_THRESHOLD = 0.50  # between this and the link threshold: review queue
MIN_TRAIN = 2000         # fewer identities than this: the prior model is used as it is

Key = tuple[str, str]

DDL = """
CREATE TABLE IF NOT EXISTS empi_person_map (source VARCHAR NOT NULL, source_id VARCHAR NOT NULL,
  person_id BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS empi_alias (source VARCHAR NOT NULL, source_id VARCHAR NOT NULL, alias VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS empi_pair (run_id BIGINT NOT NULL, pair_id BIGINT NOT NULL,
  source_l VARCHAR NOT NULL, id_l VARCHAR NOT NULL, source_r VARCHAR NOT NULL, id_r VARCHAR NOT NULL,
  match_probability DOUBLE, match_weight DOUBLE, status VARCHAR NOT NULL, {gammas});
CREATE TABLE IF NOT EXISTS empi_decision (seq BIGINT NOT NULL, recorded_at TIMESTAMP NOT NULL, who VARCHAR NOT NULL,
  kind VARCHAR NOT NULL, source_l VARCHAR NOT NULL, id_l VARCHAR NOT NULL, source_r VARCHAR NOT NULL,
  id_r VARCHAR NOT NULL, reason VARCHAR);
CREATE TABLE IF NOT EXISTS empi_person_history (run_id BIGINT NOT NULL, recorded_at TIMESTAMP NOT NULL, source VARCHAR NOT NULL,
  source_id VARCHAR NOT NULL, old_person_id BIGINT, new_person_id BIGINT NOT NULL, reason VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS empi_run (run_id BIGINT NOT NULL, recorded_at TIMESTAMP NOT NULL, who VARCHAR NOT NULL,
  kind VARCHAR NOT NULL, identities BIGINT, pairs BIGINT, links BIGINT, review BIGINT, persons BIGINT,
  changed BIGINT, link_threshold DOUBLE, review_threshold DOUBLE, trained BOOLEAN, seconds DOUBLE, model VARCHAR)
""".format(gammas=", ".join(f"g_{c['output_column_name']} INTEGER" for c in model_mod.COMPARISONS))

LINKING = {"accept", "merge"}
SPLITTING = {"reject", "unmerge"}


TABLES = ("empi_person_map", "empi_alias", "empi_pair", "empi_decision", "empi_person_history", "empi_run")


def ensure_tables(engine) -> None:
    """The EMPI tables, created where missing (nothing is written when they all exist: a read-only store reads)."""
    if set(TABLES) <= set(engine.tables()):
        return
    for stmt in DDL.split(";"):
        if stmt.strip():
            engine.execute(stmt)


def _now() -> dt.datetime:
    return dt.datetime.now().replace(microsecond=0)


def _order(a: Key, b: Key) -> tuple[Key, Key]:
    return (a, b) if a <= b else (b, a)


def parse_key(text: str) -> Key:
    """'SOURCE:SOURCE_ID' -> (source, source_id); the source name may not contain ':'."""
    src, sep, sid = text.partition(":")
    if not sep or not src or not sid:
        raise ValueError(f"{text!r}: give an identity as SOURCE:SOURCE_ID (e.g. h1-his:MRN0001)")
    return src, sid


@dataclass
class RunReport:
    run_id: int
    identities: int
    pairs: int
    links: int
    review: int
    persons: int
    changed: int
    trained: bool
    seconds: float
    timings: dict = field(default_factory=dict)
    backend: str = "duckdb"  # where Splink ran: "spark" (a Spark store) or "duckdb" (in memory, every other store)


# -- input ------------------------------------------------------------------------------------------------------
def build_input(vault: Vault, who: str, why: str = "empi run") -> tuple[pa.Table, list[Key], dict[Key, str]]:
    """The in-memory linkage input: comparison values (plaintext, this process only) + HMAC blocking keys; and the
    MRN of each identity whose own id is another (`empi_alias`)."""
    recs = vault.read(who, why)
    bks = {(b["source"], b["source_id"]): b for b in vault.blocking()}
    cols: dict[str, list] = defaultdict(list)
    keys, aliases = [], {}
    for i, r in enumerate(recs):
        k = (r["source"], r["source_id"])
        keys.append(k)
        if r.get("mrn") and str(r["mrn"]) != k[1]:
            aliases[k] = str(r["mrn"])
        cv = comparison_values(r)
        cols["unique_id"].append(i)
        for c in model_mod.COMPARISON_COLUMNS:
            cols[c].append(cv[c])
        bk = bks.get(k, {})
        for kind in BLOCKING_KINDS:
            cols[f"bk_{kind}"].append(bk.get(f"bk_{kind}"))
    types = {"unique_id": pa.int64(), "id_valid": pa.bool_()}
    table = pa.table({c: pa.array(v, types.get(c, pa.string())) for c, v in cols.items()}) if keys else None
    return table, keys, aliases


def _linker(table: pa.Table, settings: dict, engine=None):
    """A Splink linker on the store's engine: Splink's Spark backend for a Spark store, else an in-memory DuckDB.
    `settings` are in DuckDB's SQL (as stored) and translated for Spark."""
    from splink import Linker

    if linkage_backend(engine) == "spark":
        db = _spark_api(engine.spark)
        settings = model_mod.for_dialect(settings, "spark")
    else:
        from splink import DuckDBAPI

        db = DuckDBAPI(":memory:")
        settings = model_mod.for_dialect(settings, "duckdb")
    return Linker(db.register(table), settings, log_level=logging.ERROR), db


def linkage_backend(engine) -> str:
    return "spark" if getattr(engine, "name", None) == "spark" else "duckdb"


def _spark_api(spark):
    """Splink's Spark backend on the running session. Its similarity functions (Jaro-Winkler, Damerau-Levenshtein)
    are Scala UDFs in a jar that ships inside the splink wheel: added to the session here (no download), then
    registered by SparkAPI. Intermediate tables are kept in memory (persist), never written as Parquet files:
    they hold comparison values derived from plaintext."""
    from splink.backends.spark import SparkAPI, similarity_jar_location

    jar = similarity_jar_location()
    if not Path(jar).exists():
        raise RuntimeError(f"Splink's similarity UDF jar is missing ({jar}): reinstall splink")
    spark.sql(f"ADD JAR '{jar}'")
    return SparkAPI(spark_session=spark, break_lineage_method="persist")


def _release(db) -> None:
    """Drop Splink's tables (in-memory comparison values) once a run has its pairs."""
    db.delete_tables_created_by_splink_from_db()
    if hasattr(db, "spark"):
        db.spark.catalog.clearCache()


def train(table: pa.Table, settings: dict, engine=None):
    """Estimate the model without labels: λ from deterministic rules, u by random sampling, m by EM."""
    linker, db = _linker(table, settings, engine)
    t = linker.training
    t.estimate_probability_two_random_records_match(
        ["l.id_number = r.id_number", "l.name_py = r.name_py AND l.birth_date = r.birth_date"], recall=0.8)
    t.estimate_u_using_random_sampling(max_pairs=2e6, seed=42)
    import pyarrow.compute as pc

    for col in ("birth_date", "name_py"):  # each trains the other; a phone block is all matches (λ -> 1)
        counts = pc.value_counts(table.column(col).drop_null()).field("counts")
        if len(counts) and pc.max(counts).as_py() > 1:  # a rule with no pairs (e.g. no phones at all) is skipped
            t.estimate_parameters_using_expectation_maximisation(f"l.{col} = r.{col}", max_pairs=2e6,
                                                                 record_sample_proportion=1.0)
    return linker, db


def _latest_model(engine) -> dict | None:
    t = engine.query("SELECT model FROM empi_run WHERE model IS NOT NULL ORDER BY run_id DESC LIMIT 1")
    return json.loads(t.column(0)[0].as_py()) if t.num_rows else None


def _next_run_id(engine) -> int:
    return (engine.query("SELECT max(run_id) FROM empi_run").column(0)[0].as_py() or 0) + 1


# -- the run ----------------------------------------------------------------------------------------------------
def run(engine, vault: Vault, *, who: str, link_threshold: float = LINK_THRESHOLD,
        review_threshold: float = REVIEW_THRESHOLD, retrain: bool = False, min_train: int = MIN_TRAIN,
        progress=None) -> RunReport:
    """Link all identities in the vault; replace the pair table and re-cluster into stable person_ids."""
    if not 0 < review_threshold <= link_threshold <= 1:
        raise ValueError(f"thresholds must satisfy 0 < review ({review_threshold}) <= link ({link_threshold}) <= 1")
    say = progress or (lambda msg: None)
    ensure_tables(engine)
    t0 = time.perf_counter()
    timings = {}
    say("reading the vault")
    table, keys, aliases = build_input(vault, who)
    timings["read_and_normalise"] = time.perf_counter() - t0
    run_id = _next_run_id(engine)
    if not keys:
        return _finish(engine, run_id, who, "run", [], [], link_threshold, review_threshold, False, None, t0, timings,
                       aliases)
    settings = None if retrain else _latest_model(engine)
    trained = False
    t1 = time.perf_counter()
    if settings is None:
        settings = model_mod.default_settings()
        if len(keys) >= min_train:
            say(f"estimating the model on {len(keys):,} identities")
            linker, db = train(table, settings, engine)
            trained = True
        else:
            linker, db = _linker(table, settings, engine)
    else:
        linker, db = _linker(table, settings, engine)
    timings["train"] = time.perf_counter() - t1
    say("scoring pairs")
    t2 = time.perf_counter()
    pred = linker.inference.predict(threshold_match_probability=review_threshold, warning_mode="never")
    names = [c["output_column_name"] for c in model_mod.COMPARISONS]
    gam = ", ".join(f"gamma_{n}" for n in names)
    scored = pred.query_sql(f"SELECT unique_id_l, unique_id_r, match_probability, match_weight, {gam} FROM {{this}}")
    scored = scored.as_pyarrow_table().sort_by(
        [("match_probability", "descending"), ("unique_id_l", "ascending"), ("unique_id_r", "ascending")])
    model_json = model_mod.for_dialect(linker.misc.save_model_to_json(), "duckdb")
    _release(db)
    timings["predict"] = time.perf_counter() - t2
    pairs = []
    ul, ur = scored.column("unique_id_l").to_pylist(), scored.column("unique_id_r").to_pylist()
    probs, weights = scored.column("match_probability").to_pylist(), scored.column("match_weight").to_pylist()
    gcols = [scored.column(f"gamma_{n}").to_pylist() for n in names]
    for i in range(scored.num_rows):
        a, b = _order(keys[ul[i]], keys[ur[i]])
        pairs.append((a, b, probs[i], weights[i], "link" if probs[i] >= link_threshold else "review",
                      [g[i] for g in gcols]))
    rep = _finish(engine, run_id, who, "run", keys, pairs, link_threshold, review_threshold, trained,
                  model_json, t0, timings, aliases)
    rep.backend = linkage_backend(engine)
    return rep


def _finish(engine, run_id, who, kind, keys, pairs, link_t, review_t, trained, model_json, t0, timings,
            aliases: dict[Key, str]) -> RunReport:
    names = [c["output_column_name"] for c in model_mod.COMPARISONS]
    now = _now()
    t3 = time.perf_counter()
    with engine.transaction():
        _store_aliases(engine, keys, aliases)
        engine.execute("DELETE FROM empi_pair")
        if pairs:
            data = {
                "run_id": pa.array([run_id] * len(pairs), pa.int64()),
                "pair_id": pa.array(range(1, len(pairs) + 1), pa.int64()),
                "source_l": [p[0][0] for p in pairs], "id_l": [p[0][1] for p in pairs],
                "source_r": [p[1][0] for p in pairs], "id_r": [p[1][1] for p in pairs],
                "match_probability": pa.array([p[2] for p in pairs], pa.float64()),
                "match_weight": pa.array([p[3] for p in pairs], pa.float64()),
                "status": [p[4] for p in pairs],
            }
            for j, n in enumerate(names):
                data[f"g_{n}"] = pa.array([p[5][j] for p in pairs], pa.int32())
            engine.load_arrow("empi_pair", pa.table(data))
        changed, persons = _recluster(engine, run_id, now, f"run {run_id}", keys)
        links = sum(1 for p in pairs if p[4] == "link")
        engine.load_arrow("empi_run", pa.table({
            "run_id": pa.array([run_id], pa.int64()), "recorded_at": pa.array([now], pa.timestamp("us")), "who": [who],
            "kind": [kind], "identities": pa.array([len(keys)], pa.int64()), "pairs": pa.array([len(pairs)], pa.int64()),
            "links": pa.array([links], pa.int64()), "review": pa.array([len(pairs) - links], pa.int64()),
            "persons": pa.array([persons], pa.int64()), "changed": pa.array([changed], pa.int64()),
            "link_threshold": [float(link_t)], "review_threshold": [float(review_t)], "trained": [trained],
            "seconds": [time.perf_counter() - t0], "model": [json.dumps(model_json) if model_json else None]}))
    timings["cluster_and_store"] = time.perf_counter() - t3
    return RunReport(run_id, len(keys), len(pairs), links, len(pairs) - links, persons, changed, trained,
                     time.perf_counter() - t0, timings)


def _store_aliases(engine, keys: list[Key], aliases: dict[Key, str]) -> None:
    """The MRNs of the identities this run read replace theirs; an identity it did not read keeps its own (as it
    keeps its person: `_recluster`)."""
    old = [(r["source"], r["source_id"], r["alias"]) for r in engine.query(
        "SELECT source, source_id, alias FROM empi_alias").to_pylist()]
    seen = set(keys)
    rows = sorted({x for x in old if x[:2] not in seen} | {(*k, a) for k, a in aliases.items()})
    if sorted(old) == rows:
        return
    engine.execute("DELETE FROM empi_alias")
    if rows:
        engine.load_arrow("empi_alias", pa.table({"source": [x[0] for x in rows], "source_id": [x[1] for x in rows],
                                                  "alias": [x[2] for x in rows]}))


# -- clustering and stable ids ----------------------------------------------------------------------------------
def _decisions(engine) -> dict[tuple[Key, Key], str]:
    """The latest decision per pair, in the order they were made."""
    t = engine.query("SELECT kind, source_l, id_l, source_r, id_r FROM empi_decision ORDER BY seq").to_pylist()
    out: dict[tuple[Key, Key], str] = {}
    for r in t:
        pair = ((r["source_l"], r["id_l"]), (r["source_r"], r["id_r"]))
        out.pop(pair, None)  # re-inserted: the dict's order is the order of each pair's latest decision
        out[pair] = r["kind"]
    return out


def cluster(nodes: list[Key], decisions: dict[tuple[Key, Key], str],
            links: list[tuple[Key, Key, float]]) -> list[list[Key]]:
    """Persons from links and decisions (the latest per pair, oldest first). A reject or unmerge keeps its two
    identities in different persons even when other links chain them (a cannot-link constraint): links are
    joined strongest first — manual accepts and merges (the latest first), then automatic links by match
    probability — and a link that would put a kept-apart pair into one person is left out (an accept left out
    so is listed by `conflicts`)."""
    parent = {k: k for k in nodes}
    apart: dict[Key, set[Key]] = defaultdict(set)  # root -> identities its person may not hold
    for (a, b), kind in decisions.items():
        if kind in SPLITTING:
            apart[a].add(b)
            apart[b].add(a)
    manual = [pair for pair, kind in reversed(decisions.items()) if kind in LINKING]
    if apart:  # the order only matters when a pair is kept apart
        links = sorted(links, key=lambda x: (-x[2], x[0], x[1]))
    automatic = [(a, b) for a, b, _ in links if decisions.get((a, b)) not in SPLITTING]

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in manual + automatic:
        for x in (a, b):
            if x not in parent:  # a decision or merge names an identity not (yet) in the vault
                parent[x] = x
                nodes.append(x)
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        if any(x in parent and find(x) == rb for x in apart.get(ra, ())) or \
                any(x in parent and find(x) == ra for x in apart.get(rb, ())):
            continue
        keep, gone = min(ra, rb), max(ra, rb)
        parent[gone] = keep
        if gone in apart:
            apart[keep] |= apart.pop(gone)
    clusters: dict[Key, list[Key]] = defaultdict(list)
    for k in nodes:
        clusters[find(k)].append(k)
    return list(clusters.values())


def _recluster(engine, run_id: int, now: dt.datetime, reason: str, new_keys: list[Key] | None = None) -> tuple[int, int]:
    old = {(r["source"], r["source_id"]): r["person_id"]
           for r in engine.query("SELECT source, source_id, person_id FROM empi_person_map").to_pylist()}
    nodes = list(new_keys) if new_keys else list(old)
    if new_keys:  # identities once mapped stay mapped even when a run does not see them (e.g. vault pruned)
        seen = set(new_keys)
        nodes += [k for k in old if k not in seen]
    links = [((r["source_l"], r["id_l"]), (r["source_r"], r["id_r"]), r["match_probability"]) for r in engine.query(
        "SELECT source_l, id_l, source_r, id_r, match_probability FROM empi_pair WHERE status = 'link'").to_pylist()]
    clusters = cluster(nodes, _decisions(engine), links)
    new = assign_ids(old, clusters, _max_id_ever(engine))
    changes = [(k, old.get(k), pid) for k, pid in new.items() if old.get(k) != pid]
    engine.execute("DELETE FROM empi_person_map")
    if new:
        items = sorted(new.items())
        engine.load_arrow("empi_person_map", pa.table({
            "source": [k[0] for k, _ in items], "source_id": [k[1] for k, _ in items],
            "person_id": pa.array([p for _, p in items], pa.int64())}))
    if changes:
        engine.load_arrow("empi_person_history", pa.table({
            "run_id": pa.array([run_id] * len(changes), pa.int64()),
            "recorded_at": pa.array([now] * len(changes), pa.timestamp("us")),
            "source": [c[0][0] for c in changes], "source_id": [c[0][1] for c in changes],
            "old_person_id": pa.array([c[1] for c in changes], pa.int64()),
            "new_person_id": pa.array([c[2] for c in changes], pa.int64()),
            "reason": [("new identity; " if c[1] is None else "") + reason for c in changes]}))
    return len(changes), len(clusters)


def _max_id_ever(engine) -> int:
    t = engine.query("SELECT greatest(coalesce((SELECT max(person_id) FROM empi_person_map), 0), "
                     "coalesce((SELECT max(new_person_id) FROM empi_person_history), 0))")
    return t.column(0)[0].as_py() or 0


def assign_ids(old: dict[Key, int], clusters: list[list[Key]], max_ever: int) -> dict[Key, int]:
    """Stable person_ids. An old id goes to the cluster holding most of its identities (ties: the cluster with the
    smallest identity key); a cluster takes the smallest old id it won; the others get fresh ids, in order of
    their smallest identity key. Ids are never reused."""
    clusters = [sorted(c) for c in clusters]
    holders: dict[int, list[tuple[int, Key, int]]] = defaultdict(list)
    for ci, members in enumerate(clusters):
        for pid, n in Counter(old[k] for k in members if k in old).items():
            holders[pid].append((-n, members[0], ci))
    won: dict[int, list[int]] = defaultdict(list)
    for pid, claims in holders.items():
        won[min(claims)[2]].append(pid)
    out: dict[Key, int] = {}
    fresh = max_ever
    for ci in sorted(range(len(clusters)), key=lambda i: clusters[i][0]):
        if won.get(ci):
            pid = min(won[ci])
        else:
            fresh += 1
            pid = fresh
        for k in clusters[ci]:
            out[k] = pid
    return out


def recluster(engine, who: str, reason: str) -> int:
    """Re-cluster from the stored pairs and decisions (no vault needed); returns the number of changed ids."""
    ensure_tables(engine)
    run_id = _next_run_id(engine)
    t0 = time.perf_counter()
    now = _now()
    with engine.transaction():
        changed, persons = _recluster(engine, run_id, now, reason)
        engine.load_arrow("empi_run", pa.table({
            "run_id": pa.array([run_id], pa.int64()), "recorded_at": pa.array([now], pa.timestamp("us")), "who": [who],
            "kind": ["recluster"], "persons": pa.array([persons], pa.int64()),
            "changed": pa.array([changed], pa.int64()), "seconds": [time.perf_counter() - t0]}))
    return changed


# -- decisions --------------------------------------------------------------------------------------------------
def decide(engine, kind: str, a: Key, b: Key, who: str, reason: str = "", recluster_now: bool = True) -> int:
    """Record accept | reject | merge | unmerge for a pair of identities; returns the number of changed ids."""
    if kind not in LINKING | SPLITTING:
        raise ValueError(f"unknown decision {kind!r}: use accept, reject, merge or unmerge")
    if a == b:
        raise ValueError(f"{a[0]}:{a[1]} is the same identity on both sides")
    ensure_tables(engine)
    for k in (a, b) if kind in ("accept", "reject") else ():  # a reviewer's typo would link or split an identity
        if person_id_for(engine, *k) is None:                     # that does not exist (and put it in the person map)
            raise ValueError(f"{k[0]}:{k[1]} is not an identity of the person map: check the source and id (`medlake "
                             "empi review` shows pairs), or run `medlake empi run` if it arrived since the last run")
    (sl, il), (sr, ir) = _order(a, b)
    seq = (engine.query("SELECT max(seq) FROM empi_decision").column(0)[0].as_py() or 0) + 1
    engine.execute("INSERT INTO empi_decision VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   [seq, _now(), who, kind, sl, il, sr, ir, reason or kind])
    return recluster(engine, who, f"{kind} {sl}:{il} ~ {sr}:{ir} by {who}" + (f": {reason}" if reason else "")) \
        if recluster_now else 0


def record_merges(engine, merges: list[dict], who: str = "adt") -> int:
    """ADT A40 merges {prior_source, prior_id, source, source_id, reason}: prior identity -> surviving identity.
    Idempotent per message: a merge whose pair and reason (the message) are already recorded is not recorded
    again — also when it was unmerged since, so a later run does not undo the unmerge; a new merge message for
    the pair is recorded. Returns how many were new."""
    ensure_tables(engine)
    done = {(((r["source_l"], r["id_l"]), (r["source_r"], r["id_r"])), r["reason"]) for r in engine.query(
        "SELECT source_l, id_l, source_r, id_r, reason FROM empi_decision WHERE kind = 'merge'").to_pylist()}
    new = 0
    for m in merges:
        a, b = _order((m["prior_source"], str(m["prior_id"])), (m["source"], str(m["source_id"])))
        reason = m.get("reason") or "ADT A40 merge"
        if a == b or ((a, b), reason) in done:
            continue
        decide(engine, "merge", a, b, who, reason, recluster_now=False)
        done.add(((a, b), reason))
        new += 1
    return new


def unmerge(engine, key: Key, who: str, reason: str = "") -> int:
    """Take one identity out of its person: every direct link of it (automatic, accepted or merged) is undone."""
    ensure_tables(engine)
    pid = person_id_for(engine, *key)
    if pid is None:
        raise ValueError(f"{key[0]}:{key[1]} is not in the person map: run `medlake empi run` first")
    links = set()
    for r in engine.query("SELECT source_l, id_l, source_r, id_r FROM empi_pair WHERE status = 'link' AND "
                          "((source_l = ? AND id_l = ?) OR (source_r = ? AND id_r = ?))", [*key, *key]).to_pylist():
        links.add(((r["source_l"], r["id_l"]), (r["source_r"], r["id_r"])))
    for pair, kind in _decisions(engine).items():
        if key in pair:
            (links.add if kind in LINKING else links.discard)(pair)
    if not links:
        raise ValueError(f"{key[0]}:{key[1]} is linked to nothing directly; nothing to unmerge")
    for a, b in sorted(links):
        decide(engine, "unmerge", a, b, who, reason, recluster_now=False)
    return recluster(engine, who, f"unmerge {key[0]}:{key[1]} by {who}" + (f": {reason}" if reason else ""))


# -- reading ----------------------------------------------------------------------------------------------------
def person_id_for(engine, source: str, source_id: str) -> int | None:
    t = engine.query("SELECT person_id FROM empi_person_map WHERE source = ? AND source_id = ?", [source, str(source_id)])
    return t.column(0)[0].as_py() if t.num_rows else None


def conflicts(engine) -> list[tuple[Key, Key]]:
    """Accepted or merged pairs (their latest decision) whose identities are in different persons: a later reject
    or unmerge keeps them apart (see `cluster`)."""
    pid = {(r["source"], r["source_id"]): r["person_id"]
           for r in engine.query("SELECT source, source_id, person_id FROM empi_person_map").to_pylist()}
    return [(a, b) for (a, b), kind in _decisions(engine).items()
            if kind in LINKING and a in pid and b in pid and pid[a] != pid[b]]


def review_queue(engine) -> list[dict]:
    """Pairs of the latest run between the thresholds with no decision since."""
    ensure_tables(engine)
    decided = _decisions(engine)
    rows = engine.query("SELECT * FROM empi_pair WHERE status = 'review' ORDER BY match_probability DESC, pair_id")
    return [r for r in rows.to_pylist()
            if ((r["source_l"], r["id_l"]), (r["source_r"], r["id_r"])) not in decided]


def pair(engine, pair_id: int) -> dict:
    t = engine.query("SELECT * FROM empi_pair WHERE pair_id = ?", [pair_id]).to_pylist()
    if not t:
        raise ValueError(f"no pair {pair_id} in the latest run: see `medlake empi review`")
    return t[0]


def status(engine) -> dict:
    if not set(TABLES) & set(engine.tables()):  # no EMPI run yet: nothing to count, nothing created
        return {k: 0 for k in ("identities", "persons", "pairs", "review_pending", "decisions",
                               "decision_conflicts", "id_changes")} | {"last": None}
    ensure_tables(engine)
    q = lambda sql: engine.query(sql).column(0)[0].as_py()  # noqa: E731
    last = engine.query("SELECT run_id, recorded_at, who, kind, identities, pairs, links, review, persons, changed, "
                        "link_threshold, review_threshold, trained, seconds FROM empi_run ORDER BY run_id DESC LIMIT 1")
    return {
        "identities": q("SELECT count(*) FROM empi_person_map"),
        "persons": q("SELECT count(DISTINCT person_id) FROM empi_person_map"),
        "pairs": q("SELECT count(*) FROM empi_pair"),
        "review_pending": len(review_queue(engine)),
        "decisions": q("SELECT count(*) FROM empi_decision"),
        "decision_conflicts": len(conflicts(engine)),
        "id_changes": q("SELECT count(*) FROM empi_person_history"),
        "last": last.to_pylist()[0] if last.num_rows else None,
    }


def explain(engine, vault: Vault, a: Key, b: Key, who: str) -> dict:
    """Why two identities are or are not linked: level and match weight per comparison (scored live with the
    model of the latest run), whether blocking put them together, the stored pair, decisions, person_ids."""
    ensure_tables(engine)
    settings = _latest_model(engine) or model_mod.default_settings()
    recs = {(r["source"], r["source_id"]): r for r in vault.read(who, "empi explain", [a, b])}
    for k in (a, b):
        if k not in recs:
            raise ValueError(f"{k[0]}:{k[1]} is not in the identity vault")
    bks = {(x["source"], x["source_id"]): x for x in vault.blocking() if (x["source"], x["source_id"]) in (a, b)}
    rows = []
    for i, k in enumerate((a, b)):
        cv = comparison_values(recs[k])
        row = {"unique_id": i, **{c: cv[c] for c in model_mod.COMPARISON_COLUMNS}}
        row.update({f"bk_{kind}": bks.get(k, {}).get(f"bk_{kind}") for kind in BLOCKING_KINDS})
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=pa.schema(
        [("unique_id", pa.int64())] + [(c, pa.bool_() if c == "id_valid" else pa.string())
                                       for c in model_mod.COMPARISON_COLUMNS]
        + [(f"bk_{k}", pa.string()) for k in BLOCKING_KINDS]))
    linker, db = _linker(table, settings)
    scored = db.duckdb_con.sql(
        f"SELECT * FROM {linker.inference.score_pair(rows[0], rows[1]).physical_name}").to_arrow_table().to_pylist()[0]
    lv = model_mod.levels(settings)
    per = []
    for c in settings["comparisons"]:
        n = c["output_column_name"]
        g = scored[f"gamma_{n}"]
        label, w = lv[n][g]
        per.append({"comparison": n, "level": label, "weight": w, "left": _shown(recs[a], n), "right": _shown(recs[b], n)})
    blocked = [r for r in model_mod.BLOCKING_RULES
               if (k := r.split(".")[1].split(" ")[0]) and rows[0][k] is not None and rows[0][k] == rows[1][k]]
    x, y = _order(a, b)
    stored = engine.query("SELECT pair_id, status, match_probability FROM empi_pair WHERE source_l = ? AND id_l = ? "
                          "AND source_r = ? AND id_r = ?", [*x, *y]).to_pylist()
    hist = engine.query("SELECT seq, recorded_at, who, kind, reason FROM empi_decision WHERE source_l = ? AND id_l = ? AND "
                        "source_r = ? AND id_r = ? ORDER BY seq", [*x, *y]).to_pylist()
    pa_, pb_ = person_id_for(engine, *a), person_id_for(engine, *b)
    return {"comparisons": per, "match_weight": scored["match_weight"],
            "match_probability": scored["match_probability"],
            "prior_weight": _prior_weight(settings), "blocking_rules": blocked, "stored_pair": stored[0] if stored else None,
            "decisions": hist, "person_ids": (pa_, pb_), "same_person": pa_ is not None and pa_ == pb_}


def _prior_weight(settings: dict) -> float:
    import math

    p = settings["probability_two_random_records_match"]
    return math.log2(p / (1 - p))


def _shown(rec: dict, comparison: str) -> str:
    fields = {"name": ("family", "given", "full_name"), "id_number": ("id_number",), "birth_date": ("birth_date",),
              "sex": ("sex",), "phone": ("phone",), "address": ("address",), "insurance": ("insurance",),
              "mrn": ("hospital", "mrn")}[comparison]
    return " / ".join(str(rec.get(f)) for f in fields if rec.get(f)) or "—"
