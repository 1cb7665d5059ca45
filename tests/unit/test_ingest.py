"""The ingest pipeline on a small readable site: HL7 v2, FHIR NDJSON + manifest, a GBK pharmacy CSV."""
import json
import shutil

import pytest

from medlake.engines import open_engine
from medlake.engines.base import EngineError
from medlake.landing import Landing
from medlake.landing import ingest as ing
from medlake.landing.quarantine import Quarantine
from medlake.sources import config

SOURCES = """
[[source]]
name = "h1-his"
kind = "hl7v2"
hospital = "h1"
system = "his"
path = "h1/his"

[[source]]
name = "h1-emr"
kind = "fhir"
hospital = "h1"
system = "emr"
path = "h1/emr"

[[source]]
name = "h2-pharmacy"
kind = "csv"
hospital = "h2"
system = "pharmacy"
path = "h2/pharmacy"
encoding = "gbk"
[source.columns]
record_id = "发药单号"
patient_id = "病人ID"
drug_code = "药品编码"
quantity = "数量"
dispensed_at = "发药时间"
[source.formats]
dispensed_at = "%Y/%m/%d %H:%M"
[source.code_systems]
drug_code = "urn:medlake:h2:pharmacy"
"""


def adt(control_id: str, mrn: str = "MRN-1") -> bytes:
    return (f"MSH|^~\\&|HIS|H1|MEDLAKE|H1|20240301083000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r"
            f"EVN|A01|20240301083000\rPID|1||{mrn}^^^H1^MR||Wang^Xiuying||19800712|F\r"
            "PV1|1|I|W1^101^1||||||||||||||||V0001\r").encode()


def obs(i: int, **kw) -> dict:
    return {"resourceType": "Observation", "id": f"o{i}", "status": "final",
            "code": {"coding": [{"system": "urn:lab", "code": "GLU"}]}, "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-01T08:30:00", "valueQuantity": {"value": 5 + i, "unit": "mmol/L"}} | kw


def make_site(root):
    (root / "h1" / "his").mkdir(parents=True)
    (root / "h1" / "emr" / "bulk").mkdir(parents=True)
    (root / "h2" / "pharmacy").mkdir(parents=True)
    (root / "ground_truth").mkdir()
    (root / "sources.toml").write_text(SOURCES, encoding="utf-8")
    # 3 messages: the 2nd has an empty PID-3; garbage before the first
    (root / "h1" / "his" / "adt-001.hl7").write_bytes(b"NOT HL7 AT ALL\r\n" + adt("M1") + adt("M2", mrn="")
                                                       + adt("M3", mrn="MRN-3"))
    (root / "h1" / "his" / "adt-002.hl7").write_bytes(adt("M4", mrn="MRN-4"))
    bulk = root / "h1" / "emr" / "bulk"
    (bulk / "Patient.ndjson").write_text(json.dumps({"resourceType": "Patient", "id": "p1", "gender": "female",
                                                     "birthDate": "1980-07-12"}) + "\n")
    (bulk / "Observation.ndjson").write_text("\n".join([json.dumps(obs(1)), '{"resourceType": "Observ',
                                                        json.dumps(obs(3, status="done")), json.dumps(obs(4))]) + "\n")
    (bulk / "manifest.json").write_text(json.dumps({
        "transactionTime": "2024-03-02T00:00:00Z", "request": "https://h1/fhir/$export", "requiresAccessToken": True,
        "output": [{"type": "Patient", "url": "https://h1/bulk/Patient.ndjson", "count": 1},
                   {"type": "Observation", "url": "https://h1/bulk/Observation.ndjson", "count": 4}], "error": []}))
    csv_text = ("发药单号,病人ID,药品编码,数量,发药时间\n"
                "R1,MRN-1,D001,2,2024/03/01 08:30\n"
                "R2,MRN-2,,1,2024/03/01 09:00\n"
                "R3,MRN-3,D003,1,2024/03/01 10:00\n")
    (root / "h2" / "pharmacy" / "2024-03.csv").write_bytes(csv_text.encode("gbk"))
    (root / "ground_truth" / "defects.jsonl").write_text("{}\n")
    return config.load(root / "sources.toml")


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    sources = make_site(root)
    eng = open_engine(f"duckdb:{tmp_path / 'store.duckdb'}")
    land, q = Landing(tmp_path / "landing"), Quarantine(tmp_path / "landing")
    yield root, sources, eng, land, q
    eng.close()
    land.close()
    q.close()


def snapshot(eng) -> dict:
    return {t: sorted(map(repr, eng.read_arrow(t).to_pylist())) for t in eng.tables() if t.startswith("stg_")}


def test_ingest_accounts_for_every_file_and_record(site):
    root, sources, eng, land, q = site
    s = ing.ingest(eng, land, q, [root], sources)
    his, emr, pharmacy = s.sources["h1-his"], s.sources["h1-emr"], s.sources["h2-pharmacy"]
    assert (his.received, his.landed, his.duplicates, his.records) == (2, 2, 0, 3)
    assert (emr.received, emr.records) == (3, 4)  # Patient p1, observations o1 and o4, the manifest
    assert dict(his.quarantined) == {"malformed": 1, "missing_mandatory": 1}
    assert dict(emr.quarantined) == {"bad_json": 1, "invalid": 1}
    assert dict(pharmacy.quarantined) == {"missing_mandatory": 1}
    assert s.ignored == [str(root / "ground_truth" / "defects.jsonl")]
    locations = sorted((i.source, i.location, i.reason) for i in q.items())
    obs_lines = (root / "h1" / "emr" / "bulk" / "Observation.ndjson").read_bytes().split(b"\n")
    at2, at3 = len(obs_lines[0]) + 1, len(obs_lines[0]) + len(obs_lines[1]) + 2
    m2 = (root / "h1" / "his" / "adt-001.hl7").read_bytes().index(b"MSH|^~\\&|HIS|H1|MEDLAKE|H1|20240301083000||ADT^A01^ADT_A01|M2")
    assert locations == [
        ("h1-emr", f"bulk/Observation.ndjson, line 2, byte {at2}", "bad_json"),
        ("h1-emr", f"bulk/Observation.ndjson, line 3, byte {at3}, id o3, at Observation.status", "invalid"),
        ("h1-his", "adt-001.hl7, line 1, byte 0, at MSH", "malformed"),
        ("h1-his", f"adt-001.hl7, line 6, byte {m2}, id M2, at PID-3", "missing_mandatory"),
        ("h2-pharmacy", "2024-03.csv, line 3, id R2, at 药品编码", "missing_mandatory"),
    ]
    assert land.counts() == {"received": 6, "landed": 6, "duplicates": 0}
    got = eng.query("SELECT source, resource_id, record_location, value_number FROM stg_fhir_observation "
                    "ORDER BY resource_id").to_pylist()
    at4 = at3 + len(obs_lines[2]) + 1
    assert got == [{"source": "h1-emr", "resource_id": "o1", "record_location": "line 1 byte 0", "value_number": 6.0},
                   {"source": "h1-emr", "resource_id": "o4", "record_location": f"line 4 byte {at4}",
                    "value_number": 9.0}]
    assert eng.query("SELECT control_id FROM stg_hl7_patient ORDER BY 1").column(0).to_pylist() == ["M1", "M3", "M4"]
    assert eng.query("SELECT record_id, drug_code_system, line FROM stg_csv_pharmacy ORDER BY 1").to_pylist() == [
        {"record_id": "R1", "drug_code_system": "urn:medlake:h2:pharmacy", "line": 2},
        {"record_id": "R3", "drug_code_system": "urn:medlake:h2:pharmacy", "line": 4}]
    assert eng.query("SELECT count(*) FROM stg_fhir_bulk_manifest").column(0)[0].as_py() == 2
    assert eng.query("SELECT count(*) FROM ingest_log").column(0)[0].as_py() == 6


def test_rerun_is_a_noop_and_new_content_is_incremental(site):
    root, sources, eng, land, q = site
    ing.ingest(eng, land, q, [root], sources)
    before, items = snapshot(eng), len(q.items(status=None))
    again = ing.ingest(eng, land, q, [root], sources)
    t = again.total()
    assert (t.received, t.landed, t.unchanged, t.records, sum(t.quarantined.values())) == (0, 0, 6, 0, 0)
    assert snapshot(eng) == before and len(q.items(status=None)) == items
    assert land.counts()["received"] == 6
    # same content under another name: landed as a counted duplicate, not staged twice
    shutil.copy(root / "h1" / "his" / "adt-002.hl7", root / "h1" / "his" / "adt-002-resent.hl7")
    (root / "h1" / "his" / "adt-003.hl7").write_bytes(adt("M5", mrn="MRN-5"))
    third = ing.ingest(eng, land, q, [root / "h1" / "his"], sources)
    his = third.sources["h1-his"]
    assert (his.received, his.landed, his.duplicates, his.unchanged, his.records) == (2, 1, 1, 2, 1)
    assert land.counts() == {"received": 8, "landed": 7, "duplicates": 1}
    assert eng.query("SELECT count(*) FROM stg_hl7_patient").column(0)[0].as_py() == 4


def test_a_message_cut_off_then_sent_again_whole_resolves_the_parts_item(site):
    """A frame cut off in transit (the connection dropped) is landed and quarantined `truncated`; the sender sends
    the message again, whole: once it is staged, the part's item is resolved as superseded. A part no whole copy
    followed stays open."""
    root, sources, eng, land, q = site
    his = root / "h1" / "his"
    (his / "cut-m9.hl7").write_bytes(b"\x0b" + adt("M9")[:100])
    (his / "cut-m8.hl7").write_bytes(b"\x0b" + adt("M8")[:100])
    first = ing.ingest(eng, land, q, [his], sources)
    assert first.sources["h1-his"].superseded == 0
    cut = {x.message_id: x for x in q.items(reason="truncated")}
    assert sorted(cut) == ["M8", "M9"]
    (his / "m9.hl7").write_bytes(adt("M9"))
    again = ing.ingest(eng, land, q, [his], sources)
    assert again.sources["h1-his"].superseded == again.total().superseded == 1
    assert [x.message_id for x in q.items(reason="truncated")] == ["M8"]  # still open
    done = q.get(cut["M9"].id)
    assert done.status == "resolved" and done.resolution.startswith("superseded: message M9 arrived whole in receipt ")
    assert done.raw == adt("M9")[:100]  # kept
    assert ing.ingest(eng, land, q, [his], sources).total().superseded == 0


def test_replay_rebuilds_the_same_staging_from_landing(site):
    root, sources, eng, land, q = site
    ing.ingest(eng, land, q, [root], sources)
    before = snapshot(eng)
    shutil.rmtree(root)  # landing alone is enough
    for src in sources:
        s = ing.replay(eng, land, q, src)
        assert s.sources[src.name].receipts_staged == {"h1-his": 2, "h1-emr": 3, "h2-pharmacy": 1}[src.name]
    assert snapshot(eng) == before
    assert len(q.items(status=None)) == 5


def test_retry_after_a_mapping_fix_stages_the_file_and_resolves_the_item(site):
    root, sources, eng, land, q = site
    toml = root / "sources.toml"
    toml.write_text(SOURCES.replace('quantity = "数量"', 'quantity = "数 量"'), encoding="utf-8")
    s = ing.ingest(eng, land, q, [root / "h2"], config.load(toml))
    assert dict(s.sources["h2-pharmacy"].quarantined) == {"missing_column": 1}
    (item,) = q.items(source="h2-pharmacy")
    assert item.location == "2024-03.csv, line 1, at 数 量" and "数 量" in item.detail
    nothing = ing.retry(eng, land, q, {x.name: x for x in config.load(toml)})
    assert (nothing.resolved, nothing.still_failing) == (0, 1)
    assert q.get(item.id).attempts == 1 and q.get(item.id).status == "open"
    toml.write_text(SOURCES, encoding="utf-8")
    fixed = ing.retry(eng, land, q, {x.name: x for x in config.load(toml)}, source="h2-pharmacy")
    assert (fixed.resolved, fixed.still_failing, fixed.new_items) == (1, 0, 1)  # R2 still lacks its drug code
    assert q.get(item.id).status == "resolved"
    assert [i.location for i in q.items(source="h2-pharmacy")] == ["2024-03.csv, line 3, id R2, at 药品编码"]
    rows = eng.query("SELECT record_id, quantity FROM stg_csv_pharmacy ORDER BY 1").to_pylist()
    assert rows == [{"record_id": "R1", "quantity": 2.0}, {"record_id": "R3", "quantity": 1.0}]
    again = ing.retry(eng, land, q, {x.name: x for x in config.load(toml)}, source="h2-pharmacy")
    assert again.resolved == 0 and eng.query("SELECT count(*) FROM stg_csv_pharmacy").column(0)[0].as_py() == 2


def test_retry_of_one_record_replaces_only_that_record(site, monkeypatch):
    root, sources, eng, land, q = site
    monkeypatch.setitem(ing.fhir.STATUS, "Observation", ing.fhir.STATUS["Observation"] - {"final"})
    ing.ingest(eng, land, q, [root / "h1" / "emr"], sources)
    assert len(q.items(source="h1-emr", reason="invalid")) == 3  # o1, o3 ("done"), o4
    monkeypatch.undo()  # the parser is fixed
    r = ing.retry(eng, land, q, {s.name: s for s in sources}, source="h1-emr")
    assert (r.resolved, r.still_failing) == (2, 2)  # o3 and the broken line 2 still fail
    assert eng.query("SELECT resource_id FROM stg_fhir_observation ORDER BY 1").column(0).to_pylist() == ["o1", "o4"]


def test_staging_is_atomic_a_failed_group_leaves_nothing_and_the_rerun_completes(site, monkeypatch):
    root, sources, eng, land, q = site
    real = eng.load_arrow

    def failing(table, data):
        if table == ing.LOG_TABLE:
            raise EngineError("disk full (simulated)")
        return real(table, data)

    monkeypatch.setattr(eng, "load_arrow", failing)
    with pytest.raises(EngineError, match="simulated"):
        ing.ingest(eng, land, q, [root], sources)
    assert all(eng.read_arrow(t).num_rows == 0 for t in eng.tables())
    monkeypatch.setattr(eng, "load_arrow", real)
    s = ing.ingest(eng, land, q, [root], sources)
    assert s.total().unchanged == 6 and s.total().records == 3 + 4 + 2
    assert eng.query("SELECT count(*) FROM stg_hl7_patient").column(0)[0].as_py() == 3
    assert len(q.items()) == 5  # filed once although the first run read every file


def test_kinds_are_detected_by_content_without_a_config(site, tmp_path):
    root, sources, eng, land, q = site
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.txt").write_bytes(adt("X1"))
    (drop / "b.data").write_text(json.dumps(obs(1)))
    (drop / "c.json").write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                             "entry": [{"resource": obs(2)}]}, indent=1))
    (drop / "notes.bin").write_bytes(b"\x00\x01binary")
    s = ing.ingest(eng, land, q, [drop])
    assert s.sources["drop"].records == 3
    assert dict(s.sources["drop"].quarantined) == {"unknown_kind": 1}
    assert eng.query("SELECT count(*) FROM stg_fhir_observation").column(0)[0].as_py() == 2
    assert ing.known_sources(land.root)["drop"].kind == "auto"


@pytest.mark.postgres
def test_the_same_staging_on_postgresql(site, pg_cluster, tmp_path):
    root, sources, eng, land, q = site
    ing.ingest(eng, land, q, [root], sources)
    pg = open_engine(pg_cluster.create_database("ingest_site"))
    try:
        land2, q2 = Landing(tmp_path / "landing-pg"), Quarantine(tmp_path / "landing-pg")
        ing.ingest(pg, land2, q2, [root], sources)
        for t in ("stg_fhir_observation", "stg_hl7_patient", "stg_csv_pharmacy"):
            cols = "source, record_location, receipt_seq"
            assert pg.query(f"SELECT {cols} FROM {t} ORDER BY 1, 2").to_pylist() == \
                eng.query(f"SELECT {cols} FROM {t} ORDER BY 1, 2").to_pylist()
        ing.replay(pg, land2, q2, sources[1])
        assert pg.query("SELECT count(*) FROM stg_fhir_observation").column(0)[0].as_py() == 2
    finally:
        pg.close()


def _sloppy_observation(monkeypatch):
    real = ing.fhir._observation

    def sloppy(r, c):
        out = real(r, c)
        if r["id"] == "o4":
            out["value_number"] = "nine"  # a reader bug: a string where staging wants a number
        return out
    monkeypatch.setitem(ing.fhir.EXTRACT, "Observation", sloppy)


def test_a_reader_bug_quarantines_its_record_not_the_file(site, monkeypatch):
    root, sources, eng, land, q = site
    _sloppy_observation(monkeypatch)
    s = ing.ingest(eng, land, q, [root / "h1" / "emr"], sources)
    assert s.sources["h1-emr"].quarantined["invalid"] == 1  # o3 (status)
    (item,) = q.items(reason="parser_error")
    assert item.loc_key.startswith("line 4") and item.field == "Observation"
    assert "stg_fhir_observation.value_number = 'nine' is not a number" in item.detail
    assert "medlake quarantine retry" in item.detail
    assert eng.query("SELECT resource_id FROM stg_fhir_observation").column(0).to_pylist() == ["o1"]


def test_a_value_of_the_wrong_type_quarantines_its_row_not_the_batch(site, monkeypatch):
    """The last net, for a reader that does not check its rows: the batch's Arrow conversion."""
    root, sources, eng, land, q = site
    _sloppy_observation(monkeypatch)
    monkeypatch.setitem(ing.fhir.ROW_TYPES["stg_fhir_observation"], "value_number", (float, int, str))
    s = ing.ingest(eng, land, q, [root / "h1" / "emr"], sources)
    assert s.sources["h1-emr"].quarantined["invalid"] == 2  # o3 (status) and o4 (type)
    (item,) = [i for i in q.items(reason="invalid") if i.field == "stg_fhir_observation"]
    assert "value_number = 'nine'" in item.detail and item.loc_key.startswith("line 4")
    assert eng.query("SELECT resource_id FROM stg_fhir_observation").column(0).to_pylist() == ["o1"]


def test_a_number_staging_cannot_hold_quarantines_its_row_and_the_commit_goes_on(site, monkeypatch):
    """The last net again, with a value the quarantine's own JSON writer (orjson) cannot write: over 64 bits."""
    root, sources, eng, land, q = site
    real = ing.csvfile.read

    def sloppy(stream, name, source):
        for r in real(stream, name, source):
            if isinstance(r, ing.Staged) and r.loc.message_id == "R3":
                r.rows["stg_csv_pharmacy"][0]["quantity"] = 10**20  # a reader bug: no float64 takes it
            yield r
    monkeypatch.setattr(ing.csvfile, "read", sloppy)
    s = ing.ingest(eng, land, q, [root / "h2" / "pharmacy"], sources)
    assert s.sources["h2-pharmacy"].quarantined == {"missing_mandatory": 1, "invalid": 1}  # R2 (no code), R3
    (item,) = q.items(reason="invalid")
    assert "stg_csv_pharmacy.quantity = 100000000000000000000" in item.detail and item.loc_key == "line 4"
    assert json.loads(item.raw)["quantity"] == 10**20
    assert eng.query("SELECT record_id FROM stg_csv_pharmacy").column(0).to_pylist() == ["R1"]


def test_an_upload_goes_to_the_named_source_with_its_mapping(site, tmp_path):
    root, sources, eng, land, q = site
    (root / "sources.toml").write_text((root / "sources.toml").read_text(encoding="utf-8") + '''
[[source]]
name = "h2-pharmacy-upload"
kind = "csv"
hospital = "h2"
system = "pharmacy"
upload = true
encoding = "gbk"
[source.columns]
record_id = "发药单号"
patient_id = "病人ID"
drug_code = "药品编码"
quantity = "数量"
dispensed_at = "发药时间"
[source.formats]
dispensed_at = "%Y/%m/%d %H:%M"
''', encoding="utf-8")
    sources = config.load(root / "sources.toml")
    assert next(s for s in sources if s.name == "h2-pharmacy-upload").upload
    handed_in = tmp_path / "inbox" / "march.csv"
    handed_in.parent.mkdir()
    handed_in.write_bytes("发药单号,病人ID,药品编码,数量,发药时间\nU1,MRN-9,D009,3,2024/03/05 11:00\n".encode("gbk"))
    summary = ing.ingest(eng, land, q, [handed_in], sources, source_name="h2-pharmacy-upload")
    up = summary.sources["h2-pharmacy-upload"]
    assert (up.received, up.landed, up.records) == (1, 1, 1)
    rows = eng.query("SELECT record_id, patient_id, drug_code FROM stg_csv_pharmacy WHERE source = "
                     "'h2-pharmacy-upload'").to_pylist()
    assert rows == [{"record_id": "U1", "patient_id": "MRN-9", "drug_code": "D009"}]
    with pytest.raises(ValueError, match="no such source"):
        ing.ingest(eng, land, q, [handed_in], sources, source_name="nope")


def test_a_source_needs_a_folder_a_port_or_upload(tmp_path):
    f = tmp_path / "sources.toml"
    f.write_text('[[source]]\nname = "x"\nkind = "fhir"\n')
    with pytest.raises(config.SourceConfigError, match="upload = true"):
        config.load(f)
    f.write_text('[[source]]\nname = "x"\nkind = "fhir"\nupload = "yes"\n')
    with pytest.raises(config.SourceConfigError, match="must be true or false"):
        config.load(f)
