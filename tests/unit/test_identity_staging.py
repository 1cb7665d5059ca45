"""From staging to the vault: real HL7 v2 and FHIR files through ingest, identities and A40 merges into the vault,
identifying staging columns cleared, the store rewritten — and no name or ID number left in the store's file."""
from __future__ import annotations

import base64
import json

import pytest

from medlake.engines import open_engine
from medlake.identity import empi, keys, staging
from medlake.identity.vault import Vault

ingest_mod = pytest.importorskip("medlake.landing.ingest")
from medlake.landing.quarantine import Quarantine  # noqa: E402
from medlake.landing.store import Landing  # noqa: E402
from medlake.sources import config  # noqa: E402

MSH = "MSH|^~\\&|HIS|H1|MEDLAKE|MEDLAKE|{ts}||ADT^{ev}^ADT_A01|{cid}|P|2.5.1|||||||UNICODE UTF-8\r"
PIDS = {
    "M001": "PID|1||M001^^^H1^MR~110101198003050016^^^CHN^NNCHN~310100000001^^^H1INS^HC||张^伟||19800305|M|||"
            "建国路1号^^北京市^朝阳区^100000^CN||13800000001\r",
    "M002": "PID|1||M002^^^H1^MR~310104195001100027^^^CHN^NNCHN||欧阳^娜娜||19500110|F|||漕溪北路8号^^上海市^徐汇区^200000^CN"
            "||13900000002\r",
    "M003": "PID|1||M003^^^H1^MR||欧阳^娜||19500110|F\r",
}


def hl7(n: int, ev: str, pid: str, extra: str = "") -> str:
    return MSH.format(ts=f"2024010{n}120000", ev=ev, cid=f"MSG{n:04d}") + f"EVN|{ev}|2024010{n}120000\r" + pid + extra


SOURCES = """
[[source]]
name = "h1-his"
kind = "hl7v2"
hospital = "h1"
system = "his"
path = "h1/his"

[[source]]
name = "h2-emr"
kind = "fhir"
hospital = "h2"
system = "emr"
path = "h2/emr"
"""
PATIENT = {"resourceType": "Patient", "id": "h2-pat-1",
           "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                           "system": "urn:medlake:h2:mrn", "value": "X77"},
                          {"system": "urn:oid:2.16.156.10011.1.1", "value": "110101198003050016"}],
           "name": [{"family": "Zhang", "given": ["Wei"], "text": "Wei Zhang"}], "gender": "male",
           "birthDate": "1980-03-05", "telecom": [{"system": "phone", "value": "13800000001"}]}
RING = keys.KeyRing([base64.b64decode(keys.new_key())], origin="test")
SECRETS = ["张", "欧阳", "娜娜", "建国路", "漕溪北路", "110101198003050016", "310104195001100027", "13800000001", "Zhang"]


@pytest.fixture
def site(tmp_path):
    (tmp_path / "h1/his").mkdir(parents=True)
    (tmp_path / "h2/emr").mkdir(parents=True)
    (tmp_path / "h1/his/adt.hl7").write_bytes("".join([
        hl7(1, "A01", PIDS["M001"], "PV1|1|I|W1^101^1\r"),
        hl7(2, "A01", PIDS["M002"], "PV1|1|I|W1^102^1\r"),
        hl7(3, "A01", PIDS["M003"], "PV1|1|I|W1^103^1\r"),
        hl7(4, "A08", PIDS["M001"].replace("13800000001", "13800000009"), "PV1|1|I|W1^101^1\r"),
        hl7(5, "A40", PIDS["M002"], "MRG|M003^^^H1^MR\r"),
    ]).encode())
    (tmp_path / "h2/emr/Patient.ndjson").write_text(json.dumps(PATIENT, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "sources.toml").write_text(SOURCES)
    return tmp_path


def runs(site, name: str, folder: str, batches: list[list[str]], key: tuple[str, str]) -> tuple[list[dict], list]:
    """A site's runs: each batch of messages written into `folder`, then ingest and `vault_staging`. The vault's
    record of `key` after each run, and the store's `identity_demographics` rows of it at the end."""
    srcs = config.load(site / "sources.toml")
    where = {s.name: (s.hospital, s.system) for s in srcs}
    ext = ".ndjson" if "emr" in folder else ".hl7"
    eng = open_engine(f"duckdb:{site / name}.duckdb")
    seen = []
    with Vault.open(site / name, RING) as v:
        for i, batch in enumerate(batches):
            for j, text in enumerate(batch):
                (site / folder / f"{name}-{i}-{j}{ext}").write_bytes(text.encode())
            ingest_mod.ingest(eng, Landing(site / name / "landing"), Quarantine(site / name / "quarantine"),
                              [site / folder], sources=srcs)
            staging.vault_staging(eng, v, where)
            seen.append(v.read("test", "compare", [key])[0])
    demo = eng.query("SELECT gender_source_value, year_of_birth, month_of_birth FROM identity_demographics "
                     "WHERE source_id = ?", [key[1]]).to_pylist()
    eng.close()
    for f in (site / folder).glob(f"{name}-*"):
        f.unlink()
    return seen, demo


def test_staging_into_the_vault_and_nothing_left_in_the_store(site):
    srcs = config.load(site / "sources.toml")
    store = site / "data" / "store.duckdb"
    eng = open_engine(f"duckdb:{store}")
    summary = ingest_mod.ingest(eng, Landing(site / "data/landing"), Quarantine(site / "data/quarantine"),
                                [site / "h1/his", site / "h2/emr"], sources=srcs)
    assert sum(s.quarantined.total() for s in summary.sources.values()) == 0
    eng.close()
    assert any(s.encode() in store.read_bytes() for s in SECRETS)  # control: staging holds plaintext

    ring = keys.KeyRing([base64.b64decode(keys.new_key())], origin="test")
    eng = open_engine(f"duckdb:{store}")
    with Vault.open(site / "data", ring) as v:
        got = staging.vault_staging(eng, v, {s.name: (s.hospital, s.system) for s in srcs})
        assert got["identities"] == 4 and got["merges"] == 1
        assert got["rows_cleared"]["stg_hl7_patient"] == 5
        recs = {r["source_id"]: r for r in v.read("test", "check staging move")}
        assert recs["M001"]["phone"] == "13800000009"  # the A08 update wins
        assert recs["M001"]["insurance"] == "310100000001" and recs["M001"]["id_number"] == "110101198003050016"
        assert (recs["M001"]["family"], recs["M001"]["given"], recs["M001"]["hospital"]) == ("张", "伟", "h1")
        assert recs["h2-pat-1"]["mrn"] == "X77" and recs["h2-pat-1"]["id_number"] == "110101198003050016"
        # staging keeps the patient ids (the transform's join key) and nothing identifying
        pat = eng.query("SELECT patient_id, family_name, national_id, phone_home, birth_date FROM stg_hl7_patient "
                        "ORDER BY control_id").to_pylist()
        assert [p["patient_id"] for p in pat] == ["M001", "M002", "M003", "M001", "M002"]
        assert all(p[c] is None for p in pat for c in ("family_name", "national_id", "phone_home", "birth_date"))
        assert eng.query("SELECT count(family_name) FROM stg_fhir_patient").column(0)[0].as_py() == 0
        # a second move finds nothing to clear, and the vault keeps its values
        assert staging.vault_staging(eng, v, {s.name: (s.hospital, s.system) for s in srcs})["rows_cleared"] == {}
        assert v.read("test", "again", [("h1-his", "M001")])[0]["family"] == "张"
        # and so do the demographics the CDM keeps (they were year_of_birth NULL after a second `empi run`: the
        # persons of the first batch lost their PERSON rows)
        assert sorted(tuple(r.values()) for r in eng.query("SELECT source_id, gender_source_value, year_of_birth, "
                                                           "month_of_birth FROM identity_demographics").to_pylist()) \
            == [("M001", "M", 1980, 3), ("M002", "F", 1950, 1), ("M003", "F", 1950, 1), ("h2-pat-1", "M", 1980, 3)]

        empi.run(eng, v, who="test")
        pid = {k: empi.person_id_for(eng, "h1-his", k) for k in ("M001", "M002", "M003")}
        assert pid["M002"] == pid["M003"] != pid["M001"]  # the A40 merge
        assert empi.person_id_for(eng, "h2-emr", "h2-pat-1") == pid["M001"]  # same ID number and phone, pinyin
        eng.close()
    staging.compact_duckdb(store)
    raw = store.read_bytes() + (site / "data/identity/vault.sqlite").read_bytes()
    assert [s for s in SECRETS if s.encode() in raw] == []
    eng = open_engine(f"duckdb:{store}")  # the rewritten store is whole
    assert eng.query("SELECT count(*) FROM empi_person_map").column(0)[0].as_py() == 4
    assert eng.query("SELECT count(*) FROM stg_hl7_patient").column(0)[0].as_py() == 5
    eng.close()


def test_completeness_of_fields_moved_into_the_vault_counts_what_the_source_sent(site):
    """After the vault run staging holds NULL in place of every birth date and name; the source-level completeness
    check counts the values the source did send (recorded per receipt as they move), so only the patient sent
    without a birth date is missing — before and after the move, and again after a replay moves them once more."""
    from medlake.quality.feeds import run_sources
    from medlake.quality.runner import result

    (site / "h1/his/more.hl7").write_bytes(hl7(6, "A01", "PID|1||M004^^^H1^MR||王^五|||M\r", "PV1|1|I|W1^104^1\r")
                                           .encode())
    srcs = config.load(site / "sources.toml")
    eng = open_engine(f"duckdb:{site / 'store.duckdb'}")
    ingest_mod.ingest(eng, Landing(site / "data/landing"), Quarantine(site / "data/quarantine"),
                      [site / "h1/his", site / "h2/emr"], sources=srcs)

    def birth_dates():
        got = {(x["cdm_table"], x["cdm_field"], x["data_source"]): (x["num_violated_rows"], x["num_denominator_rows"])
               for x in run_sources(eng, result) if x["check_name"] == "sourceMandatoryCompleteness"}
        return got[("stg_hl7_patient", "birth_date", "h1-his")], got[("stg_fhir_patient", "birth_date", "h2-emr")]

    assert birth_dates() == ((1, 6), (0, 1))
    ring = keys.KeyRing([base64.b64decode(keys.new_key())], origin="test")
    with Vault.open(site / "data", ring) as v:
        staging.vault_staging(eng, v, {s.name: (s.hospital, s.system) for s in srcs})
        assert eng.query("SELECT count(birth_date) FROM stg_hl7_patient").column(0)[0].as_py() == 0
        assert birth_dates() == ((1, 6), (0, 1))
        staging.vault_staging(eng, v, {s.name: (s.hospital, s.system) for s in srcs})  # nothing left: no change
        assert birth_dates() == ((1, 6), (0, 1))
        ingest_mod.replay(eng, Landing(site / "data/landing"), Quarantine(site / "data/quarantine"),
                          next(s for s in srcs if s.name == "h1-his"))
        assert eng.query("SELECT count(birth_date) FROM stg_hl7_patient").column(0)[0].as_py() == 5
        staging.vault_staging(eng, v, {s.name: (s.hospital, s.system) for s in srcs})
        assert birth_dates() == ((1, 6), (0, 1))  # the replayed receipts' counts replace theirs, not added
    eng.close()


def test_a_later_run_that_brings_an_older_message_keeps_the_newer_values(site):
    """Per field the latest value by event time, whether the messages came in one run or in several: a run that
    brings a message older than the ones already in the vault fills the fields they left empty and changes no
    other (it replaced them: two patients' messages under one mistyped MRN gave the identity, and so its person,
    the demographics of whichever came last — found by the at-once vs batches fuzz, HL7 seed 45)."""
    (site / "h1/his/adt.hl7").unlink()
    newer = hl7(8, "A08", "PID|1||M001^^^H1^MR||张^伟||19800305|M|||建国路1号^^北京市^朝阳区^100000^CN||13800000009\r")
    older = hl7(2, "A01", "PID|1||M001^^^H1^PI~310100000001^^^H1INS^HC||李^娜||19910717|F|||"
                          "漕溪北路8号^^上海市^徐汇区^200000^CN||13900000002\r", "PV1|1|I|W1^101^1\r")

    def load(name: str, batches: list[list[str]]) -> tuple[dict, list]:
        seen, demo = runs(site, name, "h1/his", batches, ("h1-his", "M001"))
        return seen[-1], demo

    at_once = load("once", [[newer, older]])
    assert (at_once[0]["family"], at_once[0]["phone"], at_once[0]["sex"]) == ("张", "13800000009", "M")
    assert at_once[0]["insurance"] == "310100000001"  # only the older message has it
    assert at_once[0]["id_type"] == "mrn"  # the older one says PI
    assert at_once[1] == [{"gender_source_value": "M", "year_of_birth": 1980, "month_of_birth": 3}]
    assert load("newer-first", [[newer], [older]]) == at_once
    assert load("older-first", [[older], [newer]]) == at_once


def test_a_value_a_later_fhir_patient_version_removes_leaves_the_vault(site):
    """A FHIR Patient version is the whole resource: a phone the later version no longer has was removed, in one
    run or in two; a version older than both, brought by a later run, does not bring it back, and a run with
    nothing new keeps the vault as it is (the moved, NULL staging values say nothing)."""
    (site / "h1/his/adt.hl7").unlink()
    (site / "h2/emr/Patient.ndjson").unlink()

    def version(day: int, **change) -> str:
        return json.dumps({**PATIENT, "meta": {"lastUpdated": f"2024-02-0{day}T10:00:00Z"}, **change},
                          ensure_ascii=False) + "\n"

    v1 = version(2)
    v2 = version(3, telecom=[], address=[{"city": "Suzhou"}])
    v0 = version(1, telecom=[{"system": "phone", "value": "13700000007"}])

    def load(name: str, batches: list[list[str]]) -> list[tuple]:
        return [(r["phone"], r["address"], r["family"], r["id_number"])
                for r in runs(site, name, "h2/emr", batches, ("h2-emr", "h2-pat-1"))[0]]

    assert load("one", [[v1]]) == [("13800000001", None, "Zhang", "110101198003050016")]
    assert load("once", [[v1 + v2]])[-1] == (None, "Suzhou", "Zhang", "110101198003050016")
    assert load("runs", [[v1], [v2], [v0], []]) == [("13800000001", None, "Zhang", "110101198003050016")] + [
        (None, "Suzhou", "Zhang", "110101198003050016")] * 3


def test_an_hl7_explicit_null_takes_the_value_out_of_the_vault(site):
    """HL7's `""` tells the receiver to delete the value: an A08 with PID-13 `""` removes the phone and one with
    PID-11 `""` the address, whether it comes in the same run or a later one; an A08 that leaves the field empty
    changes nothing, and an older message brought later does not bring the value back."""
    (site / "h1/his/adt.hl7").unlink()
    (site / "h2/emr/Patient.ndjson").unlink()
    a01 = hl7(1, "A01", PIDS["M001"], "PV1|1|I|W1^101^1\r")
    silent = hl7(2, "A08", "PID|1||M001^^^H1^MR||张^伟||19800305|M\r")                     # PID-11, -13 not sent
    nulls = hl7(3, "A08", 'PID|1||M001^^^H1^MR||张^伟||19800305|M|||""||""\r')           # PID-11, -13 deleted
    late = hl7(2, "A08", "PID|1||M001^^^H1^MR||张^伟||19800305|M|||西路2号^^北京市||13800000002\r")

    def load(name: str, batches: list[list[str]]) -> list[tuple]:
        return [(r["phone"], r["address"], r["family"])
                for r in runs(site, name, "h1/his", batches, ("h1-his", "M001"))[0]]

    kept = ("13800000001", "朝阳区 北京市 建国路1号", "张")
    assert load("silent", [[a01, silent]]) == [kept]
    gone = (None, None, "张")
    assert load("once", [[a01, silent, nulls]]) == [gone]
    assert load("runs", [[a01], [silent], [nulls], [late], []]) == [kept, kept, gone, gone, gone]


def test_a_run_reads_only_what_came_since_the_last(site):
    """An identity run reads the patient rows received since the last run (a watermark per staging table and
    source) and any that still hold an identifying value (a receipt staged again): the vault is written for those
    identities only — the others are neither decrypted nor written again — and a PID carrying no identifying value
    (an A08 changing only the sex) still counts. Before, every run folded and re-wrote every identity it had."""
    (site / "h2/emr/Patient.ndjson").unlink()
    srcs = config.load(site / "sources.toml")
    where = {s.name: (s.hospital, s.system) for s in srcs}
    eng = open_engine(f"duckdb:{site / 'w.duckdb'}")

    def ingest_and_vault(v):
        ingest_mod.ingest(eng, Landing(site / "w/landing"), Quarantine(site / "w/quarantine"), [site / "h1/his"],
                          sources=srcs)
        return staging.vault_staging(eng, v, where)

    def stamps(v):
        return dict(v.con.execute("SELECT source_id, updated_at FROM identity").fetchall())

    with Vault.open(site / "w", RING) as v:
        assert ingest_and_vault(v)["identities"] == 3
        before = stamps(v)
        (site / "h1/his/sex.hl7").write_bytes(hl7(6, "A08", "PID|1||M001^^^H1^MR|||||F\r").encode())
        assert ingest_and_vault(v)["identities"] == 1
        after = stamps(v)
        assert {k for k in after if after[k] != before[k]} == {"M001"}
        assert v.access_log()[-1]["what"].startswith("1 identity h1-his:M001;")  # the only one decrypted
        assert v.read("test", "check", [("h1-his", "M001")])[0]["sex"] == "F"
        assert v.read("test", "check", [("h1-his", "M001")])[0]["family"] == "张"
        assert ingest_and_vault(v)["identities"] == 0 and stamps(v) == after  # nothing new: nothing written
        # a receipt staged again (a replay) below the watermark, still holding its values: read and moved
        eng.execute("INSERT INTO stg_hl7_patient (source, receipt_seq, record_location, control_id, patient_id, "
                    "family_name, event_time) VALUES ('h1-his', 1, 'message 9', 'R9', 'M009', '赵', "
                    "TIMESTAMP '2024-01-09 12:00:00')")
        got = staging.vault_staging(eng, v, where)
        assert got["identities"] == 1 and got["rows_cleared"] == {"stg_hl7_patient": 1}
        assert v.read("test", "check", [("h1-his", "M009")])[0]["family"] == "赵"
    eng.close()


def test_a_vault_older_than_the_store_is_refused_until_a_replay_stages_what_it_lacks(site):
    """The vault is its own file, backed up on its own: restored from before the EMR's patient moved into it, it
    lacks values the store no longer holds. The run says so, names the source, and changes nothing; after
    `replay` of that source the same run brings them back."""
    import shutil

    from medlake.identity.vault import VaultError, vault_path

    srcs = config.load(site / "sources.toml")
    where = {s.name: (s.hospital, s.system) for s in srcs}
    eng = open_engine(f"duckdb:{site / 'data' / 'store.duckdb'}")
    land, q = Landing(site / "data/landing"), Quarantine(site / "data/quarantine")
    path, backup = vault_path(site / "data"), site / "vault-backup.sqlite"
    ingest_mod.ingest(eng, land, q, [site / "h1/his"], sources=srcs)
    with Vault.open(site / "data", RING) as v:
        staging.vault_staging(eng, v, where)
    shutil.copy(path, backup)  # closed: its WAL is in the file
    ingest_mod.ingest(eng, land, q, [site / "h2/emr"], sources=srcs)
    with Vault.open(site / "data", RING) as v:
        staging.vault_staging(eng, v, where)
        assert v.read("test", "check", [("h2-emr", "h2-pat-1")])[0]["mrn"] == "X77"
    for f in path.parent.glob(path.name + "*"):
        f.unlink()
    shutil.copy(backup, path)
    with Vault.open(site / "data", RING) as v:
        with pytest.raises(VaultError, match=r"lacks the identifying values of 1 receipt\(s\).*\(h2-emr: receipts "
                                             r"\d+–\d+ of stg_fhir_patient\).*`medlake replay --source h2-emr`, then"):
            staging.vault_staging(eng, v, where)
        assert {s for s, _ in v.keys_of()} == {"h1-his"}  # nothing changed
        ingest_mod.replay(eng, land, q, next(s for s in srcs if s.name == "h2-emr"))
        assert staging.vault_staging(eng, v, where)["identities"] == 1
        rec = v.read("test", "check", [("h2-emr", "h2-pat-1")])[0]
        assert (rec["mrn"], rec["family"], rec["birth_date"]) == ("X77", "Zhang", "1980-03-05")
        assert staging.vault_staging(eng, v, where)["rows_cleared"] == {}  # and the next run is quiet
    # a vault of before 2026-12-06 keeps no record of the receipts it read: it cannot be told older, and its next
    # run writes the record
    with Vault.open(site / "data", RING) as v:
        v.con.execute("DELETE FROM staging_read")
        assert staging.missing_in_vault(eng, v) == [] and v.read_up_to() == {}
        staging.vault_staging(eng, v, where)
        assert {s for _, s in v.read_up_to()} == {"h1-his", "h2-emr"}
    # a vault that lost the file altogether lacks both sources
    for f in path.parent.glob(path.name + "*"):
        f.unlink()
    with Vault.open(site / "data", RING) as v, pytest.raises(VaultError, match="replay --source h1-his`, `medlake "
                                                                             "replay --source h2-emr`"):
        staging.vault_staging(eng, v, where)
    eng.close()


def test_patient_rows_staged_after_a_run_took_its_marks_keep_their_values(site):
    """A patient message staged while an identity run reads (`medlake listen`, an ingest beside it) is not in what
    the run put into the vault: the run clears only rows up to the receipts it took as its marks."""
    srcs = config.load(site / "sources.toml")
    eng = open_engine(f"duckdb:{site / 'data' / 'store.duckdb'}")
    ingest_mod.ingest(eng, Landing(site / "data/landing"), Quarantine(site / "data/quarantine"), [site / "h1/his"],
                      sources=srcs)
    seq = eng.query("SELECT max(receipt_seq) FROM stg_hl7_patient").column(0)[0].as_py()
    cols = [c for c in staging.identifying_columns("stg_hl7_patient") if c not in staging.KEEP]
    assert staging.clear_columns(eng, "stg_hl7_patient", cols, [("h1-his", seq - 1), ("h2-emr", seq)]) == 0
    assert eng.query("SELECT count(family_name) FROM stg_hl7_patient").column(0)[0].as_py() == 5
    assert staging.clear_columns(eng, "stg_hl7_patient", cols, [("h1-his", seq)]) == 5
    assert eng.query("SELECT count(family_name) FROM stg_hl7_patient").column(0)[0].as_py() == 0
    eng.close()
