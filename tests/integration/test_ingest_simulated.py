"""Ingest the simulated hospital group and account for everything against its ground truth.

Done when: landed + duplicates = received; every injected malformed record is in quarantine with a location
naming it (same file, and its message id, line or byte offset); no well-formed record is quarantined.
"""
import json
from collections import Counter, defaultdict

import pytest

from medlake.engines import open_engine
from medlake.landing import Landing
from medlake.landing import ingest as ing
from medlake.landing.quarantine import Quarantine
from medlake.sources import config

MALFORMED = {"malformed_hl7", "bad_json", "truncated_file", "wrong_encoding", "missing_mandatory"}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    simulate = pytest.importorskip("medlake.simulate").simulate
    tmp = tmp_path_factory.mktemp("sim")
    out = tmp / "hospital"
    simulate(out, patients=100, hospitals=3, seed=11, defect_rate=0.05)
    sources = config.load(out / "sources.toml")
    eng = open_engine(f"duckdb:{tmp / 'store.duckdb'}")
    land, q = Landing(tmp / "landing"), Quarantine(tmp / "landing")
    summary = ing.ingest(eng, land, q, [out], sources)
    yield out, sources, eng, land, q, summary
    eng.close()
    land.close()
    q.close()


def test_every_file_is_accounted_for(ingested):
    out, sources, eng, land, q, summary = ingested
    t = summary.total()
    c = land.counts()
    assert c["landed"] + c["duplicates"] == c["received"] == t.received
    data_files = [f for s in sources for f in s.path.rglob("*") if f.is_file()]
    assert t.received == len(data_files) and t.receipts_staged == t.landed
    assert {f.split("/")[-2] for f in summary.ignored} == {"ground_truth"}  # and sources.toml is not data
    staged = eng.query("SELECT sum(records), sum(quarantined) FROM ingest_log").to_pylist()[0]
    assert staged["sum(records)"] == t.records and staged["sum(quarantined)"] == sum(t.quarantined.values())


def test_every_malformed_record_is_quarantined_at_its_location_and_nothing_else(ingested):
    out, sources, eng, land, q, summary = ingested
    folder = {s.name: s.path.relative_to(out.resolve()).as_posix() for s in sources}
    items = defaultdict(list)
    for it in q.items(status=None):
        items[f"{folder[it.source]}/{it.file}"].append(it)
    defects = [json.loads(line) for line in (out / "ground_truth" / "defects.jsonl").read_text().splitlines()]
    malformed = [d for d in defects if d["class"] in MALFORMED]
    assert Counter(d["class"] for d in malformed).keys() == MALFORMED  # the simulator injected every class
    found, missing = set(), []
    for d in malformed:
        hits = [it for it in items[d["file"]]
                if (d["message_id"] is not None and it.message_id == d["message_id"])
                or (d["line"] is not None and it.line == d["line"])
                or (d["byte_offset"] is not None and it.byte_offset == d["byte_offset"])]
        if not hits:
            missing.append(d)
        found.update(it.id for it in hits)
    assert missing == []
    wrongly = [(it.source, it.location, it.reason, it.detail) for its in items.values() for it in its
               if it.id not in found]
    assert wrongly == []  # no well-formed record is quarantined


def test_a_rerun_changes_nothing(ingested):
    out, sources, eng, land, q, summary = ingested
    before = {t: eng.query(f'SELECT count(*) FROM "{t}"').column(0)[0].as_py() for t in eng.tables()}
    again = ing.ingest(eng, land, q, [out], sources)
    t = again.total()
    assert (t.received, t.records, sum(t.quarantined.values())) == (0, 0, 0)
    assert t.unchanged == summary.total().received
    assert {t: eng.query(f'SELECT count(*) FROM "{t}"').column(0)[0].as_py() for t in eng.tables()} == before
