"""simulate → ingest → transform on a small simulated hospital group, scored against its ground truth.

The site's mapping of its local codes (lab, pharmacy, procedure and unit codes) is what a mapping team would load
into SOURCE_TO_CONCEPT_MAP; here it comes from the simulator's code list (`codes.jsonl`). Recall and precision are
computed per CDM table on well-formed input: facts and rows from messages with an injected defect are left out.
"""
import collections
import datetime as dt
import hashlib
import json
import re

import pytest

from medlake.cdm import ddl, model, store, vocab
from medlake.engines import open_engine
from medlake.landing import Landing
from medlake.landing.ingest import ingest
from medlake.landing.quarantine import Quarantine
from medlake.simulate import simulate
from medlake.sources import config as source_config
from medlake.sources.records import is_identifying
from medlake.mapping import review
from medlake.mapping import store as map_store
from medlake.transform.run import transform

KIND_SQL = {
    "condition": "SELECT l.message_id, t.person_id, condition_start_date, condition_concept_id, NULL, NULL "
                 "FROM condition_occurrence t JOIN cdm_lineage l ON l.row_id = condition_occurrence_id "
                 "AND l.cdm_table = 'condition_occurrence'",
    "measurement": "SELECT l.message_id, t.person_id, measurement_date, measurement_concept_id, value_as_number, "
                   "unit_concept_id FROM measurement t JOIN cdm_lineage l ON l.row_id = measurement_id "
                   "AND l.cdm_table = 'measurement'",
    "drug": "SELECT l.message_id, t.person_id, drug_exposure_start_date, drug_concept_id, NULL, NULL FROM "
            "drug_exposure t JOIN cdm_lineage l ON l.row_id = drug_exposure_id AND l.cdm_table = 'drug_exposure'",
    "procedure": "SELECT l.message_id, t.person_id, procedure_date, procedure_concept_id, NULL, NULL FROM "
                 "procedure_occurrence t JOIN cdm_lineage l ON l.row_id = procedure_occurrence_id "
                 "AND l.cdm_table = 'procedure_occurrence'",
    "visit": "SELECT l.message_id, t.person_id, visit_start_date, visit_concept_id, NULL, NULL FROM visit_occurrence t "
             "JOIN cdm_lineage l ON l.row_id = visit_occurrence_id AND l.cdm_table = 'visit_occurrence' "
             "WHERE l.rule = 'hl7.visit'",
    "death": "SELECT l.message_id, t.person_id, death_date, 0, NULL, NULL FROM death t "
             "JOIN cdm_lineage l ON l.row_id = t.person_id AND l.cdm_table = 'death'",
    "observation": "SELECT l.message_id, t.person_id, observation_date, observation_concept_id, value_as_number, "
                   "unit_concept_id FROM observation t JOIN cdm_lineage l ON l.row_id = observation_id "
                   "AND l.cdm_table = 'observation'",
    "note": "SELECT l.message_id, t.person_id, note_date, note_class_concept_id, NULL, NULL FROM note t "
            "JOIN cdm_lineage l ON l.row_id = note_id AND l.cdm_table = 'note'",
}


def sid(text: str) -> int:
    return int(hashlib.md5(text.encode()).hexdigest()[:15], 16)


def jsonl(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def emr_resources(out) -> list[dict]:
    """Every FHIR resource the simulated EMRs sent in a Bundle or bulk line that parses (each version)."""
    found = []
    for f in sorted(out.glob("*/emr/bundles/*.json")) + sorted(out.glob("*/emr/bulk/*.ndjson")):
        for doc in ([f.read_bytes()] if f.suffix == ".json" else f.read_bytes().splitlines()):
            try:
                res = json.loads(doc)
            except ValueError:
                continue
            found += [e["resource"] for e in res.get("entry", [])] or [res]
    return found


def site_mapping(engine, truth) -> None:
    """The site's reviewed mappings of its local codes, recorded through the mapping workbench as a reviewer who
    accepts each code's true concept would (SOURCE_TO_CONCEPT_MAP, the codes' own source concepts, history), and
    its local unit spellings mapped to UCUM concepts."""
    items, units = [], {}
    for c in jsonl(truth / "codes.jsonl"):
        if c["kind"] == "unit":
            if c["concept_id"]:
                units[c["code"]] = c["concept_id"]
            continue
        if c["code_system"].startswith(("http", "https")):
            continue  # a standard code system: resolved through the vocabulary itself
        t = review.Target(c["code_system"], map_store.source_vocabulary_id(c["code_system"]), c["code"],
                          c.get("display"))
        items.append((t, "accepted" if c["concept_id"] else "no_match", c["concept_id"] or None, None,
                      "ground truth"))
    review.decide_many(engine, items, by="site reviewer", how="import")
    keys = sorted(units)
    engine.load_arrow("source_to_concept_map", ddl.arrow_table(model.load("5.4").table("source_to_concept_map"), dict(
        source_code=keys, source_concept_id=[0] * len(keys), source_vocabulary_id=["UCUM"] * len(keys),
        target_concept_id=[units[k] for k in keys], target_vocabulary_id=["UCUM"] * len(keys),
        valid_start_date=[dt.date(1970, 1, 1)] * len(keys), valid_end_date=[dt.date(2099, 12, 31)] * len(keys))))


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    simulate(root / "out", patients=40, hospitals=2, seed=11, correction_rate=0.3)  # every kind of correction
    engine = open_engine(f"duckdb:{root / 'store.duckdb'}")
    store.init(engine, "5.4")
    vocab.load(engine, vocab.demo_vocabulary_dir())
    sources = source_config.load(root / "out" / "sources.toml")
    land, q = Landing(root / "landing"), Quarantine(root / "landing")
    ingest(engine, land, q, (), sources)
    land.close()
    q.close()
    site_mapping(engine, root / "out" / "ground_truth")
    summary = transform(engine, namespaces={s.name: s.hospital for s in sources})
    yield engine, root / "out", summary
    engine.close()


def test_recall_and_precision_per_table_on_well_formed_input(hospital):
    engine, out, summary = hospital
    truth = out / "ground_truth"
    defective = {d["message_id"] for d in jsonl(truth / "defects.jsonl") if d["message_id"]}
    who = {}
    for d in jsonl(truth / "identities.jsonl"):
        ref = "Patient/" + d["source_id"] if d["id_type"] == "patient_resource" else d["source_id"]
        who[sid(f"{d['hospital']}|{ref}")] = d["person"]
    facts = collections.defaultdict(collections.Counter)
    for f in jsonl(truth / "facts.jsonl"):
        if f["source"]["message_id"] in defective:
            continue
        v = None if f["value_as_number"] is None else round(f["value_as_number"], 3)
        facts[f["kind"]][(f["person"], f["date"], f["concept_id"], v, f["unit_concept_id"])] += 1
    scores = {}
    for kind, sql in KIND_SQL.items():
        got = collections.Counter()
        for msg, person, day, concept, value, unit in zip(*(c.to_pylist() for c in engine.query(sql).columns)):
            ids = {msg, msg.split("/", 1)[-1]} if msg else set()
            if ids & defective:
                continue
            got[(who.get(person, person), day.isoformat(), concept, None if value is None else round(value, 3),
                 unit)] += 1
        hit = sum((facts[kind] & got).values())
        scores[kind] = (hit / max(sum(facts[kind].values()), 1), hit / max(sum(got.values()), 1),
                        sum(facts[kind].values()))
    assert sum(n for _, _, n in scores.values()) > 1000, scores
    low = {k: v for k, v in scores.items() if v[2] and (v[0] < 0.99 or v[1] < 0.99)}
    assert not low, f"recall/precision below 0.99 (recall, precision, facts): {low}"


def test_what_the_hospitals_system_took_back_leaves_no_trace(hospital):
    """The HIS's own corrections: an admission or registration in error cancelled by an A11 leaves no visit and no
    detail; an admission with a wrong admit time, cancelled and sent again, starts the visit at the right time; a
    death recorded in error, taken back by an A08 (PID-29 `""`, PID-30 `N`), leaves no DEATH row. The EMR's: an
    Encounter taken back (entered-in-error: in the next sync batch, or as the bulk export's current state) leaves no
    visit; a Patient version deceased and the next not leaves no DEATH row; a result amended (a slipped decimal) has
    the amended value — where the correcting version loaded."""
    engine, out, _ = hospital
    truth = out / "ground_truth"
    fixes = collections.defaultdict(list)
    for c in jsonl(truth / "corrections.jsonl"):
        fixes[c["kind"]].append(c)
    assert {k: len(v) > 0 for k, v in fixes.items()} == dict.fromkeys(
        ("cancelled_visit", "cancelled_admit_time", "retracted_death", "cancelled_transfer", "cancelled_discharge",
         "encounter_entered_in_error", "deceased_in_error", "amended_result"), True)
    sent = emr_resources(out)
    loaded = {(r["id"], r.get("meta", {}).get("versionId")) for r in sent}
    amended = {r["id"]: r["valueQuantity"]["value"] for r in sent if r.get("status") == "amended"}
    for kind in ("encounter_entered_in_error", "deceased_in_error", "amended_result"):
        fixes[kind] = [c for c in fixes[kind] if (c["message_ids"][0], "2") in loaded]
        assert fixes[kind], kind

    def visits(fixed):  # visit number -> start date of its row (the id of a visit number in its hospital)
        ids = {sid(f"visit_occurrence|{c['hospital']}|{c['visit']}"): c["visit"] for c in fixed}
        rows = engine.query("SELECT visit_occurrence_id, visit_start_date FROM visit_occurrence").to_pylist()
        return {ids[r["visit_occurrence_id"]]: r["visit_start_date"].isoformat() for r in rows
                if r["visit_occurrence_id"] in ids}

    assert len(visits(fixes["retracted_death"])) == len({c["visit"] for c in fixes["retracted_death"]})  # ids right
    assert visits(fixes["cancelled_visit"]) == {}
    assert visits(fixes["encounter_entered_in_error"]) == {}
    orphans = engine.query("SELECT count(*) FROM visit_detail d LEFT JOIN visit_occurrence v "
                           "ON v.visit_occurrence_id = d.visit_occurrence_id WHERE v.visit_occurrence_id IS NULL")
    assert orphans.column(0)[0].as_py() == 0
    again = {c["visit"]: c["start"][:10] for c in fixes["cancelled_admit_time"]}
    assert visits(fixes["cancelled_admit_time"]) == again  # the admission sent again, not the day before the cancelled one said
    dead = {p["person"] for p in jsonl(truth / "persons.jsonl") if p["death_date"]}
    retracted = {sid(f"{c['hospital']}|{c['mrn']}") for c in fixes["retracted_death"] if c["person"] not in dead}
    assert retracted
    retracted |= {sid(f"{c['hospital']}|{c['mrn']}") for c in fixes["deceased_in_error"]}
    deaths = {r["person_id"] for r in engine.query("SELECT person_id FROM death").to_pylist()}
    assert not retracted & deaths
    assert engine.query("SELECT count(*) FROM person").column(0)[0].as_py() and deaths  # deaths are kept
    ids = {c["message_ids"][0] for c in fixes["amended_result"]}
    values = {r["m"].split("/", 1)[-1]: r["v"] for r in engine.query(
        "SELECT l.message_id AS m, t.value_as_number AS v FROM measurement t JOIN cdm_lineage l ON "
        "l.row_id = t.measurement_id AND l.cdm_table = 'measurement'").to_pylist() if r["m"].split("/", 1)[-1] in ids}
    assert values == {i: amended[i] for i in ids}


def test_each_stay_has_its_units_from_when_to_when(hospital):
    """VISIT_DETAIL of every inpatient stay and emergency visit whose messages all loaded equals the true units of
    the stay (ground_truth/stays.jsonl: intensive care, then a ward from a transfer; the emergency department) to
    the minute the HL7 times carry, through the transfers, cancelled transfers (A12) and discharges (A13) taken
    back, cancelled admissions and deaths recorded in error. The bulk-exporting EMR gives the same stays' units as
    Encounter locations: those stays have the Encounter's stretches (its Locations, named as the HIS names the
    units), once — not a second set from the HIS."""
    engine, out, _ = hospital
    truth = out / "ground_truth"
    lost = {d["message_id"] for d in jsonl(truth / "defects.jsonl") if d["class"] in
            ("malformed_hl7", "missing_mandatory", "truncated_file", "wrong_encoding", "bad_json")}
    names = {r["id"]: r["name"] for r in emr_resources(out)  # the EMR's Locations
             if r["resourceType"] == "Location" and r["id"] not in lost}
    got, rules = collections.defaultdict(list), collections.defaultdict(set)
    for r in engine.query("SELECT d.visit_occurrence_id AS v, d.visit_detail_source_value AS unit, "
                          "d.visit_detail_start_datetime AS a, d.visit_detail_end_datetime AS b, l.rule FROM "
                          "visit_detail d JOIN cdm_lineage l ON l.cdm_table = 'visit_detail' AND "
                          "l.row_id = d.visit_detail_id ORDER BY 1, 3").to_pylist():
        got[r["v"]].append([names.get(r["unit"], r["unit"]), r["a"].isoformat()[:16], r["b"].isoformat()[:16]])
        rules[r["v"]].add(r["rule"])
    stays = [s for s in jsonl(truth / "stays.jsonl") if not lost & set(s["message_ids"])]
    assert sum(len(s["units"]) > 1 for s in stays) and sum(s["class"] == "ER" for s in stays)
    by = collections.Counter(min(rules[sid(f"visit_occurrence|{s['hospital']}|{s['visit']}")] or {""}) for s in stays)
    assert by["fhir.encounter_location"] and by["hl7.visit_detail"], by  # both systems' stretches are compared
    wrong = [(s["visit"], s["units"], got.get(sid(f"visit_occurrence|{s['hospital']}|{s['visit']}")))
             for s in stays
             if got.get(sid(f"visit_occurrence|{s['hospital']}|{s['visit']}")) != [[u, a[:16], b[:16]]
                                                                                  for u, a, b in s["units"]]]
    assert not wrong, f"{len(wrong)} of {len(stays)} stays: {wrong[:3]}"


def test_no_identifier_of_a_simulated_person_in_any_cdm_text_column(hospital):
    engine, out, _ = hospital
    truth = out / "ground_truth"
    needles = set()
    for p in jsonl(truth / "persons.jsonl"):
        needles |= {p["name"], p["pinyin"], p.get("id_number"), p.get("passport"), p["phone"]}
        addr = p["address"]
        needles |= set(addr.values()) if isinstance(addr, dict) else {addr}
    for d in jsonl(truth / "identities.jsonl"):
        if d["id_type"] == "mrn":
            needles.add(d["source_id"])
    needles = {n for n in needles if isinstance(n, str) and len(n) >= 4}
    cdm_tables = [t.name for t in model.load("5.4").tables if t.schema == "CDM"]
    found = []
    for t in cdm_tables:
        text_cols = [c.name for c in engine.columns(t) if c.type.startswith(("VARCHAR", "TEXT", "STRING"))]
        if not text_cols:
            continue
        data = engine.query("SELECT " + ", ".join(f'"{c}"' for c in text_cols) + f" FROM {t}")
        for col in data.column_names:
            values = {v for v in data.column(col).to_pylist() if v}
            for v in values:
                hit = next((n for n in needles if n in v), None)
                if hit:
                    found.append((t, col, hit))
    assert engine.query("SELECT count(*) FROM person").column(0)[0].as_py() > 0
    assert not found, f"identifiers in CDM text columns: {found[:5]}"


def test_staging_identifying_columns_are_declared(hospital):
    """The scan above relies on the parsers marking identifiers; the FHIR and HL7 patient tables must."""
    from medlake.landing.ingest import staging_schemas

    marked = {f.name for f in staging_schemas()["stg_fhir_patient"] if is_identifying(f)}
    assert {"family_name", "mrn", "telecom", "address_line"} <= marked


def test_rerun_changes_nothing_and_lineage_covers_every_row(hospital):
    engine, _, summary = hospital
    assert summary.run_id is not None and summary.skipped == 0
    counts = {t: engine.query(f"SELECT count(*) FROM {t}").column(0)[0].as_py() for t in summary.written}
    again = transform(engine)
    assert again.run_id is None
    assert counts == {t: engine.query(f"SELECT count(*) FROM {t}").column(0)[0].as_py() for t in summary.written}
    lin = {r["cdm_table"]: r["n"] for r in engine.query(
        "SELECT cdm_table, count(DISTINCT row_id) AS n FROM cdm_lineage GROUP BY cdm_table").to_pylist()}
    assert lin == counts
    # the HL7 visit and the FHIR Encounter of one stay (same visit number) are one row traced to both records
    both = engine.query("SELECT count(*) FROM (SELECT row_id FROM cdm_lineage WHERE cdm_table = 'visit_occurrence' "
                        "GROUP BY row_id HAVING count(DISTINCT rule) = 2) AS a").column(0)[0].as_py()
    assert both > 0.9 * counts["visit_occurrence"]


def test_a_site_that_connects_its_lab_before_its_his(hospital, tmp_path):
    """A site connects its LIS first: every result's visit has a row from the results (type Lab), and each result
    lies within it unless its time is a recorded defect. When the HIS follows, its ADT takes each visit over with the
    class the results gave it, admitted before the first result; the only visits left to the results are those
    whose every ADT message is a recorded defect (quarantined); and the store is the one a full run gives."""
    _, out, _ = hospital
    engine = open_engine(f"duckdb:{tmp_path / 'store.duckdb'}")
    store.init(engine, "5.4")
    vocab.load(engine, vocab.demo_vocabulary_dir())
    sources = source_config.load(out / "sources.toml")
    ns = {s.name: s.hospital for s in sources}
    land, q = Landing(tmp_path / "landing"), Quarantine(tmp_path / "landing")
    defective = {d["message_id"] for d in jsonl(out / "ground_truth" / "defects.jsonl") if d["message_id"]}
    visits = ("SELECT visit_occurrence_id, visit_concept_id, visit_start_datetime, visit_type_concept_id, "
              "visit_source_value FROM visit_occurrence")
    found = {}
    for system in ("lis", "his"):
        ingest(engine, land, q, (), [s for s in sources if s.name.endswith("-" + system)])
        transform(engine, namespaces=ns)
        found[system] = {r[0]: r[1:] for r in (tuple(x.values()) for x in engine.query(visits).to_pylist())}
    land.close()
    q.close()
    lab, adt = found["lis"], found["his"]
    assert len(lab) > 100 and {v[2] for v in lab.values()} == {32856}
    # every result points at a visit of the first run; the ones outside it are recorded defects
    placed = engine.query("SELECT l.message_id, m.visit_occurrence_id, m.measurement_datetime FROM measurement m "
                          "JOIN cdm_lineage l ON l.row_id = m.measurement_id AND l.cdm_table = 'measurement' "
                          "WHERE l.rule = 'hl7.observation'").to_pylist()
    assert placed and all(p["visit_occurrence_id"] in lab for p in placed)
    outside = {p["message_id"] for p in placed if lab[p["visit_occurrence_id"]][1] > p["measurement_datetime"]}
    assert outside <= defective
    # the HIS takes the visits over: the same class, admitted before the first result
    left = {v for v, row in adt.items() if row[2] == 32856}
    assert set(lab) <= set(adt) and len(left) < 0.05 * len(lab)
    assert all(adt[v][0] == lab[v][0] and adt[v][1] <= lab[v][1] for v in set(lab) - left)
    # a visit left to its results: the HIS sent it only in messages it quarantined
    his = "".join(f.read_text(encoding="utf-8", errors="replace") for f in sorted(out.glob("*/his/*.hl7")))
    for v in left:
        sent = [m.split("|")[9] for m in re.split(r"(?=MSH\|)", his) if "|" + adt[v][3] in m and "PV1|" in m]
        assert sent and set(sent) <= defective, (adt[v][3], sent)
    tables = ("visit_occurrence", "measurement", "person")
    before = {t: sorted(tuple(r.values()) for r in engine.query(f"SELECT * FROM {t}").to_pylist()) for t in tables}
    transform(engine, namespaces=ns, full=True)
    assert before == {t: sorted(tuple(r.values()) for r in engine.query(f"SELECT * FROM {t}").to_pylist())
                      for t in tables}
    engine.close()
