"""Review and record: accept, reject, no match; a CSV round trip for a spreadsheet; auto-accept above a score.

An accepted mapping is a valid SOURCE_TO_CONCEPT_MAP row (valid 2099-12-31); "no match" is a row with
target_concept_id 0 (reviewed: no standard concept exists). A local code (a code system that is no known
vocabulary) gets the site's own source concept (id >= 2,000,000,000, vocabulary = its source_vocabulary_id, not
standard) the first time it is decided, so the CDM's *_source_concept_id names it instead of 0 (what DQD's
sourceConceptRecordCompleteness asks for); a vocabulary reload keeps these concepts. Each decision is also appended to
`mapping_decision` with who and when (and how: cli, import, auto), since the CDM table has no such columns.
A later decision for the same code replaces its SOURCE_TO_CONCEPT_MAP row; the history stays.
The transform reads SOURCE_TO_CONCEPT_MAP and, on its next plain run, re-maps only the records whose code's mapping
changed since its last run (it keeps what it applied); `changed_since(engine, when)` names the codes decided after
a time.
"""
from __future__ import annotations

import csv
import datetime as dt
import getpass
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from medlake.cdm.vocab import LOCAL_CONCEPTS
from medlake.mapping import store

END = dt.date(2099, 12, 31)
EXPORT_COLUMNS = ["gap_id", "code_system", "source_vocabulary_id", "code", "display", "kind", "rows", "persons",
                  "units", "concept_id", "concept_name", "vocabulary_id", "score", "evidence", "alternatives",
                  "decision", "reviewer", "note"]
DECISIONS = {"accept": "accepted", "accepted": "accepted", "reject": "rejected", "rejected": "rejected",
             "no_match": "no_match", "no match": "no_match", "none": "no_match"}


def who(default: str | None = None) -> str:
    if default:
        return default
    try:
        return os.environ.get("MEDLAKE_USER") or getpass.getuser()
    except Exception:  # no login name (containers)
        return "unknown"


@dataclass
class Target:
    code_system: str | None
    source_vocabulary_id: str
    code: str
    description: str | None


def gap(engine, gap_id: str) -> Target:
    """The source code behind a gap id (from `medlake map gaps`)."""
    store.ensure(engine)
    rows = engine.query("SELECT code_system, source_vocabulary_id, code, display FROM mapping_gap WHERE gap_id = ?",
                        [gap_id]).to_pylist()
    if not rows:  # a code decided before (no longer a gap) keeps its id
        rows = [{"code_system": r["code_system"], "source_vocabulary_id": r["source_vocabulary_id"],
                 "code": r["source_code"], "display": r["source_code_description"]}
                for r in engine.query("SELECT DISTINCT code_system, source_vocabulary_id, source_code, "
                                      "source_code_description FROM mapping_decision").to_pylist()
                if store.gap_id(r["code_system"], r["source_code"]) == gap_id]
    if not rows:
        raise ValueError(f"no gap {gap_id!r}: run `medlake map gaps` and use an id from its first column")
    r = rows[0]
    return Target(r["code_system"], r["source_vocabulary_id"], r["code"], r["display"])


def _concept(engine, concept_id: int) -> dict:
    rows = engine.query("SELECT concept_id, concept_name, domain_id, vocabulary_id, standard_concept, invalid_reason "
                        "FROM concept "
                        "WHERE concept_id = ?", [int(concept_id)]).to_pylist()
    if not rows:
        raise ValueError(f"concept {concept_id} is not in this store's vocabulary")
    c = rows[0]
    if c["standard_concept"] != "S" or c["invalid_reason"]:
        raise ValueError(f"concept {concept_id} ({c['concept_name']}) is not a valid standard concept; map to the "
                         "standard concept it 'Maps to'")
    return c


def _concept_exists(engine, concept_id: int) -> None:
    if not engine.query("SELECT concept_id FROM concept WHERE concept_id = ?", [int(concept_id)]).num_rows:
        raise ValueError(f"concept {concept_id} is not in this store's vocabulary")


def decide(engine, t: Target, decision: str, concept_id: int | None = None, by: str | None = None,
           how: str = "cli", score: float | None = None, evidence: str | None = None,
           today: dt.date | None = None) -> None:
    """Record one decision: accepted (concept), rejected (concept) or no_match."""
    decide_many(engine, [(t, decision, concept_id, score, evidence)], by, how, today)


def decide_many(engine, items, by: str | None = None, how: str = "cli", today: dt.date | None = None) -> int:
    """Record decisions [(Target, decision, concept_id, score, evidence)] in one transaction (all or none)."""
    store.require_cdm(engine)
    store.ensure(engine)
    today = today or dt.date.today()
    now = dt.datetime.now().replace(microsecond=0)
    reviewer = who(by)
    checked: dict[int, dict] = {}
    stcm_rows, decisions, drop, unset, local_targets = [], [], [], [], []
    for t, decision, concept_id, score, evidence in items:
        decision = DECISIONS.get(decision, decision)
        if decision not in ("accepted", "rejected", "no_match"):
            raise ValueError(f"decision {decision!r}: use accept, reject or no_match")
        if decision == "accepted":
            if concept_id is None:
                raise ValueError("accept needs a concept id")
            c = checked.get(int(concept_id)) or checked.setdefault(int(concept_id), _concept(engine, concept_id))
        elif decision == "no_match":
            concept_id, c = 0, {"vocabulary_id": "None"}
        elif concept_id is None:
            raise ValueError("reject needs the concept id being rejected (use no_match when nothing fits)")
        else:
            _concept_exists(engine, concept_id)
        if decision == "rejected":
            unset.append((t.source_vocabulary_id, t.code, int(concept_id)))
        else:
            drop.append((t.source_vocabulary_id, t.code))
            local_targets.append((t, c.get("domain_id")))
            stcm_rows.append({
                "source_code": t.code[:50], "source_concept_id": 0, "source_vocabulary_id": t.source_vocabulary_id,
                "source_code_description": (t.description or "")[:255] or None, "target_concept_id": int(concept_id),
                "target_vocabulary_id": c["vocabulary_id"], "valid_start_date": today, "valid_end_date": END,
                "invalid_reason": None})
        decisions.append({
            "source_vocabulary_id": t.source_vocabulary_id, "source_code": t.code, "code_system": t.code_system,
            "source_code_description": t.description, "decision": decision, "target_concept_id": int(concept_id),
            "score": score, "evidence": evidence, "decided_by": reviewer, "decided_at": now, "how": how})
    with engine.transaction():
        local = local_concepts(engine, local_targets)
        for row in stcm_rows:
            row["source_concept_id"] = local.get((row["source_vocabulary_id"], row["source_code"]), 0)
        for svid, code in drop:
            engine.execute("DELETE FROM source_to_concept_map WHERE source_vocabulary_id = ? AND source_code = ?",
                           [svid, code])
        for svid, code, cid in unset:  # rejecting the concept currently mapped takes the mapping away
            engine.execute("DELETE FROM source_to_concept_map WHERE source_vocabulary_id = ? AND source_code = ? "
                           "AND target_concept_id = ?", [svid, code, cid])
        if stcm_rows:
            engine.load_arrow("source_to_concept_map", pa.Table.from_pylist(stcm_rows, schema=_stcm_schema()))
        store.append_rows(engine, "mapping_decision", decisions)
    systems = {t.code_system for t, *_ in items}
    store.remember_systems(engine, systems)
    store.register_with_transform(engine, systems)
    return len(decisions)


def local_concepts(engine, targets) -> dict[tuple[str, str], int]:
    """{(source_vocabulary_id, code): concept_id} of the site's own concept for each local code in `targets`
    [(Target, domain_id or None)], created where missing (next free id from 2,000,000,000; its vocabulary row too).
    Codes of a known vocabulary have their own concepts and are left out."""
    local = {}
    for t, domain in targets:
        if not store.vocabulary_of(t.code_system):
            local.setdefault((t.source_vocabulary_id[:20], t.code[:50]), (t, domain or "Observation"))
    if not local:
        return {}
    vocabs = sorted({v for v, _ in local})
    marks = ", ".join("?" for _ in vocabs)
    have = {(r["vocabulary_id"], r["concept_code"]): r["concept_id"] for r in engine.query(
        f"SELECT vocabulary_id, concept_code, concept_id FROM concept WHERE concept_id >= {LOCAL_CONCEPTS} "
        f"AND vocabulary_id IN ({marks})", vocabs).to_pylist()}
    new = [k for k in sorted(local) if k not in have]
    if new:
        top = engine.query(f"SELECT max(concept_id) AS m FROM concept WHERE concept_id >= {LOCAL_CONCEPTS}"
                           ).to_pylist()[0]["m"]
        first = (top or LOCAL_CONCEPTS - 1) + 1
        if first + len(new) > 2**31 - 1:
            raise ValueError("no free local concept ids left (2,000,000,000 .. 2,147,483,647)")
        rows = []
        for i, (v, code) in enumerate(new):
            t, domain = local[(v, code)]
            have[(v, code)] = first + i
            rows.append({"concept_id": first + i, "concept_name": ((t.description or code)[:255]),
                         "domain_id": domain, "vocabulary_id": v, "concept_class_id": "Undefined",
                         "standard_concept": None, "concept_code": code, "valid_start_date": dt.date(1970, 1, 1),
                         "valid_end_date": END, "invalid_reason": None})
        engine.load_arrow("concept", pa.Table.from_pylist(rows, schema=_concept_schema()))
        known = {r["vocabulary_id"] for r in engine.query(
            f"SELECT vocabulary_id FROM vocabulary WHERE vocabulary_id IN ({marks})", vocabs).to_pylist()}
        missing = [{"vocabulary_id": v, "vocabulary_name": f"Site-local codes {v} (medlake mapping workbench)",
                    "vocabulary_reference": "medlake map", "vocabulary_version": None, "vocabulary_concept_id": 0}
                   for v in vocabs if v not in known]
        if missing:
            engine.load_arrow("vocabulary", pa.Table.from_pylist(missing, schema=pa.schema([
                ("vocabulary_id", pa.string()), ("vocabulary_name", pa.string()),
                ("vocabulary_reference", pa.string()), ("vocabulary_version", pa.string()),
                ("vocabulary_concept_id", pa.int32())])))
    return {k: have[k] for k in local}


def _concept_schema() -> pa.Schema:
    return pa.schema([("concept_id", pa.int32()), ("concept_name", pa.string()), ("domain_id", pa.string()),
                      ("vocabulary_id", pa.string()), ("concept_class_id", pa.string()),
                      ("standard_concept", pa.string()), ("concept_code", pa.string()),
                      ("valid_start_date", pa.date32()), ("valid_end_date", pa.date32()),
                      ("invalid_reason", pa.string())])


def _stcm_schema() -> pa.Schema:
    return pa.schema([("source_code", pa.string()), ("source_concept_id", pa.int32()),
                      ("source_vocabulary_id", pa.string()), ("source_code_description", pa.string()),
                      ("target_concept_id", pa.int32()), ("target_vocabulary_id", pa.string()),
                      ("valid_start_date", pa.date32()), ("valid_end_date", pa.date32()),
                      ("invalid_reason", pa.string())])


def top_suggestion(engine, gap_id: str) -> dict | None:
    rows = engine.query("SELECT concept_id, score, evidence FROM mapping_suggestion WHERE gap_id = ? ORDER BY rank "
                        "LIMIT 1", [gap_id]).to_pylist()
    return rows[0] if rows else None


def accept(engine, gap_id: str, concept_id: int | None = None, by: str | None = None, how: str = "cli") -> int:
    """Accept a concept (default: the top suggestion) for a gap; returns the concept id."""
    t = gap(engine, gap_id)
    score = evidence = None
    if concept_id is None:
        s = top_suggestion(engine, gap_id)
        if s is None:
            raise ValueError(f"gap {gap_id} has no suggestion: run `medlake map suggest`, or give a CONCEPT_ID")
        concept_id, score, evidence = s["concept_id"], s["score"], s["evidence"]
    decide(engine, t, "accepted", concept_id, by, how, score, evidence)
    return int(concept_id)


def reject(engine, gap_id: str, concept_id: int | None = None, by: str | None = None) -> None:
    """Reject one suggested concept for a gap (it is not suggested again); without one: no standard concept."""
    t = gap(engine, gap_id)
    decide(engine, t, "rejected" if concept_id is not None else "no_match", concept_id, by)


def auto_accept(engine, min_score: float, by: str = "auto", dry_run: bool = False) -> list[dict]:
    """Accept the top suggestion of every undecided gap whose score is at least `min_score`."""
    if not 0 < min_score <= 1:
        raise ValueError(f"--min-score {min_score} must be in (0, 1]")
    store.ensure(engine)
    decided = {(r["source_vocabulary_id"], r["source_code"]) for r in engine.query(
        "SELECT source_vocabulary_id, source_code FROM mapping_decision WHERE decision <> 'rejected'").to_pylist()}
    rows = engine.query(
        "SELECT g.gap_id, g.code_system, g.source_vocabulary_id, g.code, g.display, s.concept_id, s.score, s.evidence "
        "FROM mapping_gap g JOIN mapping_suggestion s ON s.gap_id = g.gap_id AND s.rank = 1 WHERE s.score >= ? "
        "ORDER BY g.rows DESC, g.gap_id", [float(min_score)]).to_pylist()
    done = [r for r in rows if (r["source_vocabulary_id"], r["code"]) not in decided]
    if not dry_run and done:
        decide_many(engine, [(Target(r["code_system"], r["source_vocabulary_id"], r["code"], r["display"]),
                              "accepted", r["concept_id"], r["score"], r["evidence"]) for r in done], by, "auto")
    return done


def current(engine) -> dict[tuple, dict]:
    """Latest accept / no-match decision per (source_vocabulary_id, code) (rejections only exclude concepts)."""
    store.ensure(engine)
    latest: dict[tuple, dict] = {}
    for r in engine.query("SELECT * FROM mapping_decision WHERE decision <> 'rejected' ORDER BY decided_at"
                          ).to_pylist():
        latest[(r["source_vocabulary_id"], r["source_code"])] = r
    return latest


def changed_since(engine, when: dt.datetime) -> list[tuple[str, str]]:
    """(source_vocabulary_id, source_code) of every code whose mapping was decided after `when`."""
    store.ensure(engine)
    return [(r["source_vocabulary_id"], r["source_code"]) for r in engine.query(
        "SELECT DISTINCT source_vocabulary_id, source_code FROM mapping_decision WHERE decided_at > ? "
        "AND decision <> 'rejected' ORDER BY 1, 2", [when]).to_pylist()]


def export_csv(engine, path: Path) -> int:
    """One row per gap (top suggestion and alternatives), then the codes already decided; returns rows written.
    It only reads (a store without the mapping tables yet gives a file of the header alone)."""
    inventory = set(store.TABLES) <= set(engine.tables())
    gaps = engine.query("SELECT * FROM mapping_gap ORDER BY rows DESC, gap_id").to_pylist() if inventory else []
    sugg: dict[str, list] = {}
    for s in engine.query("SELECT * FROM mapping_suggestion ORDER BY gap_id, rank").to_pylist() if inventory else []:
        sugg.setdefault(s["gap_id"], []).append(s)
    dec = current(engine) if inventory else {}
    names = {}
    ids = sorted({d["target_concept_id"] for d in dec.values() if d["target_concept_id"]})
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        for r in engine.query("SELECT concept_id, concept_name, vocabulary_id FROM concept WHERE concept_id IN ("
                              + ", ".join("?" for _ in chunk) + ")", chunk).to_pylist():
            names[r["concept_id"]] = r
    n = 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8-sig", newline="") as f:  # BOM: spreadsheets then read Chinese right
        w = csv.DictWriter(f, EXPORT_COLUMNS)
        w.writeheader()
        for g in gaps:
            ss = sugg.get(g["gap_id"], [])
            top = ss[0] if ss else {}
            if (g["source_vocabulary_id"], g["code"]) in dec:
                continue  # decided since the inventory: written with the decisions below
            w.writerow({"gap_id": g["gap_id"], "code_system": g["code_system"],
                        "source_vocabulary_id": g["source_vocabulary_id"], "code": g["code"], "display": g["display"],
                        "kind": g["kind"], "rows": g["rows"], "persons": g["persons"], "units": g["units"],
                        "concept_id": top.get("concept_id", ""), "concept_name": top.get("concept_name", ""),
                        "vocabulary_id": top.get("vocabulary_id", ""), "score": top.get("score", ""),
                        "evidence": top.get("evidence", ""),
                        "alternatives": "; ".join(f"{s['concept_id']} {s['concept_name']} ({s['score']:.2f})"
                                                  for s in ss[1:]),
                        "decision": "", "reviewer": "", "note": ""})
            n += 1
        for (svid, code), d in sorted(dec.items()):
            c = names.get(d["target_concept_id"], {})
            w.writerow({"gap_id": store.gap_id(d["code_system"], code), "code_system": d["code_system"],
                        "source_vocabulary_id": svid, "code": code, "display": d["source_code_description"],
                        "concept_id": d["target_concept_id"], "concept_name": c.get("concept_name", ""),
                        "vocabulary_id": c.get("vocabulary_id", ""), "score": d["score"] if d["score"] is not None
                        else "", "evidence": d["evidence"] or "",
                        "decision": {"accepted": "accept", "no_match": "no_match"}[d["decision"]],
                        "reviewer": d["decided_by"], "note": f"decided {d['decided_at']} ({d['how']})"})
            n += 1
    return n


def import_csv(engine, path: Path, by: str | None = None) -> dict[str, int]:
    """Apply the decisions of a reviewed export. Every row is checked first; on any error nothing is applied and
    the error names the file, line and column. Rows whose decision is already current are skipped."""
    path = Path(path)
    store.require_cdm(engine)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            head = f.readline()
            f.seek(0)
            # a spreadsheet in a locale with the decimal comma saves its "CSV" with semicolons
            delim = next((d for d in (",", ";", "\t") if d in head), ",")
            reader = csv.DictReader(f, delimiter=delim)
            rows, first = [], (reader.fieldnames, reader.line_num)[1] + 1
            for r in reader:  # a row's first line: a note may hold line breaks
                rows.append((first, r))
                first = reader.line_num + 1
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}); save the sheet as CSV UTF-8") from e
    if rows and not {"code", "decision", "concept_id"} <= set(rows[0][1]):
        raise ValueError(f"{path}:1: the header needs at least code, decision and concept_id (and code_system or "
                         "source_vocabulary_id); export one with `medlake map export`")
    store.ensure(engine)
    known = {(g["code_system"], g["code"]) for g in engine.query("SELECT code_system, code FROM mapping_gap")
             .to_pylist()} | {(d["code_system"], c) for (_, c), d in current(engine).items()}
    errors, plan = [], []
    for line, r in rows:
        d = (r.get("decision") or "").strip().lower()
        if not d:
            continue
        if d not in DECISIONS:
            errors.append(f"{path}:{line}: column decision: {d!r} is not accept, reject or no_match")
            continue
        d = DECISIONS[d]
        cid = (r.get("concept_id") or "").strip()
        if d != "no_match":
            try:
                if not re.fullmatch(r"\d+(\.0*)?", cid):  # 4548.0: a spreadsheet's number; 4548.7 is no id
                    raise ValueError(f"{cid!r} is not a concept id" if cid else "empty")
                cid_int = int(cid.split(".")[0])
                _concept(engine, cid_int)
            except (ValueError, TypeError) as e:
                errors.append(f"{path}:{line}: column concept_id: {e}; give a standard concept id")
                continue
        else:
            cid_int = 0
        code = (r.get("code") or "").strip()
        if not code:
            errors.append(f"{path}:{line}: column code is empty")
            continue
        system = (r.get("code_system") or "").strip() or None
        gid = (r.get("gap_id") or "").strip()
        if gid and gid != store.gap_id(system, code) and (system, code) not in known:
            errors.append(f"{path}:{line}: column code: {code!r} is not the code exported in this row (gap {gid}) "
                          "nor one medlake has seen; a spreadsheet drops leading zeros and shows long numbers as "
                          "1.23E+11: import the column as text, or export again")
            continue
        svid = (r.get("source_vocabulary_id") or "").strip() or store.source_vocabulary_id(system)
        plan.append((Target(system, svid, code, r.get("display") or None), d, cid_int,
                     (r.get("reviewer") or "").strip() or by))
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ValueError(errors[0] + more + "; nothing was imported")
    now_ = current(engine)
    counts = {"accepted": 0, "rejected": 0, "no_match": 0, "unchanged": 0}
    by_reviewer: dict[str | None, list] = {}
    for t, d, cid, reviewer in plan:
        cur = now_.get((t.source_vocabulary_id, t.code))
        if cur and cur["decision"] == d and cur["target_concept_id"] == cid:
            counts["unchanged"] += 1
            continue
        by_reviewer.setdefault(reviewer, []).append((t, d, cid if d != "no_match" else None, None, None))
        counts[d] += 1
    for reviewer, items in by_reviewer.items():
        decide_many(engine, items, reviewer, "import")
    return counts
