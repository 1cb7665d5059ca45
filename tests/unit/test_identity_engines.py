"""The EMPI and the staging move on every engine (fixture `engine`: DuckDB, PostgreSQL, Spark).

Linkage runs with Splink on the store's engine — Splink's Spark backend for a Spark store, an in-memory DuckDB
otherwise — and gives the same pairs, match probabilities, levels and persons as DuckDB on the same identities.
Decisions (reject keeps a chained pair apart, accept undoes it) and the move of identifying staging values into
the vault (no UPDATE: Spark's Parquet tables have none) work on every engine."""
from __future__ import annotations

import base64

import pyarrow.parquet as pq
import pytest
from test_empi import EXPECTED, IDENTITIES, clusters
from test_identity_staging import SECRETS, ingest_mod, site  # noqa: F401  (site: the fixture)

from medlake.engines import open_engine
from medlake.identity import empi, keys, staging
from medlake.identity.vault import Vault, VaultError
from medlake.landing.quarantine import Quarantine
from medlake.landing.store import Landing
from medlake.sources import config


def _ring():
    return keys.KeyRing([base64.b64decode(keys.new_key())], origin="test")


@pytest.fixture
def vault(tmp_path):
    v = Vault(tmp_path / "identity" / "vault.sqlite", _ring())
    v.put(IDENTITIES)
    yield v
    v.close()


def _pairs(engine) -> list[dict]:
    rows = engine.query("SELECT * FROM empi_pair ORDER BY source_l, id_l, source_r, id_r").to_pylist()
    for r in rows:
        r.pop("run_id")
        r.pop("pair_id")
    return rows


def test_linkage_on_the_stores_engine_gives_the_same_results_as_duckdb(engine, vault, tmp_path):
    rep = empi.run(engine, vault, who="test")
    assert rep.backend == ("spark" if engine.name == "spark" else "duckdb")
    assert clusters(engine) == sorted(EXPECTED, key=min)
    ref = open_engine(f"duckdb:{tmp_path / 'reference.duckdb'}")
    try:
        assert empi.run(ref, vault, who="test").backend == "duckdb"
        got, want = _pairs(engine), _pairs(ref)
        assert [{k: v for k, v in r.items() if not k.startswith("match_")} for r in got] == \
               [{k: v for k, v in r.items() if not k.startswith("match_")} for r in want]
        for g, w in zip(got, want):
            assert g["match_probability"] == pytest.approx(w["match_probability"], rel=1e-9, abs=1e-12)
            assert g["match_weight"] == pytest.approx(w["match_weight"], rel=1e-9)
        # the saved model is stored in DuckDB's SQL whatever the engine, so either store can reuse it
        model = engine.query("SELECT model FROM empi_run ORDER BY run_id DESC LIMIT 1").column(0)[0].as_py()
        assert "jaro_winkler_similarity(" in model and "jaro_winkler(" not in model and "`" not in model
    finally:
        ref.close()

    # decisions on this engine: a reject splits the A1 ~ L1 ~ E1 triangle, an accept undoes it; both survive a run
    a1, l1 = ("h1-his", "A1"), ("h1-lis", "L1")
    pid = empi.person_id_for(engine, *a1)
    assert empi.decide(engine, "reject", a1, l1, who="bob") == 1
    assert empi.person_id_for(engine, *l1) != pid == empi.person_id_for(engine, "h2-emr", "E1")
    assert empi.decide(engine, "accept", a1, l1, who="alice") == 1
    assert empi.person_id_for(engine, *l1) == pid
    empi.unmerge(engine, ("h2-emr", "E1"), who="carol")
    assert empi.run(engine, vault, who="test").changed == 0
    assert empi.person_id_for(engine, *l1) == pid != empi.person_id_for(engine, "h2-emr", "E1")


def _secrets_in(folder) -> list[str]:
    """Secrets in any file under `folder`: raw bytes, and every text cell of every Parquet file (compressed pages)."""
    found = set()
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        raw = p.read_bytes()
        found |= {s for s in SECRETS if s.encode() in raw}
        if p.suffix == ".parquet":
            text = str(pq.read_table(p).to_pylist())
            found |= {s for s in SECRETS if s in text}
    return sorted(found)


def test_staging_moves_into_the_vault_on_every_engine(engine, site, tmp_path):  # noqa: F811
    srcs = config.load(site / "sources.toml")
    ingest_mod.ingest(engine, Landing(site / "data/landing"), Quarantine(site / "data/quarantine"),
                      [site / "h1/his", site / "h2/emr"], sources=srcs)
    if engine.name == "spark":
        assert _secrets_in(engine.warehouse)  # control: staging holds plaintext
    with Vault.open(site / "data", _ring()) as v:
        got = staging.vault_staging(engine, v, {s.name: (s.hospital, s.system) for s in srcs})
        assert got["identities"] == 4 and got["merges"] == 1
        assert got["rows_cleared"]["stg_hl7_patient"] == 5 and got["rows_cleared"]["stg_fhir_patient"] == 1
        pat = engine.query("SELECT patient_id, family_name, national_id, phone_home, birth_date FROM stg_hl7_patient "
                           "ORDER BY control_id").to_pylist()
        assert [p["patient_id"] for p in pat] == ["M001", "M002", "M003", "M001", "M002"]
        assert all(p[c] is None for p in pat for c in ("family_name", "national_id", "phone_home", "birth_date"))
        kept = engine.query("SELECT count(*) AS n, count(resource_id) AS ids, count(raw) AS raws "
                            "FROM stg_fhir_patient").to_pylist()[0]
        assert kept == {"n": 1, "ids": 1, "raws": 0}
        # what moved, counted per source and receipt for the completeness checks (all 5 HL7 patients had a birth date)
        moved = "SELECT stg_table, field, CAST(sum(present) AS BIGINT) AS n FROM identity_vaulted GROUP BY 1, 2"
        counts = {(r["stg_table"], r["field"]): int(r["n"]) for r in engine.query(moved).to_pylist()}
        assert counts[("stg_hl7_patient", "birth_date")] == 5 and counts[("stg_fhir_patient", "birth_date")] == 1
        assert staging.vault_staging(engine, v, {s.name: (s.hospital, s.system) for s in srcs})["rows_cleared"] == {}
        assert {(r["stg_table"], r["field"]): int(r["n"]) for r in engine.query(moved).to_pylist()} == counts
        assert {r["source_id"] for r in v.read("test", "check")} == {"M001", "M002", "M003", "h2-pat-1"}
        empi.run(engine, v, who="test")
        pid = {k: empi.person_id_for(engine, "h1-his", k) for k in ("M001", "M002", "M003")}
        assert pid["M002"] == pid["M003"] != pid["M001"]  # the A40 merge
        assert empi.person_id_for(engine, "h2-emr", "h2-pat-1") == pid["M001"]
    # a new vault file beside a store whose staging has moved its values: refused, naming what it lacks
    with Vault.open(tmp_path / "new", _ring()) as v:
        with pytest.raises(VaultError, match=r"lacks the identifying values of 2 receipt\(s\).*h1-his: receipts "
                                             r"\d+–\d+ of stg_hl7_patient; h2-emr: receipts \d+–\d+ of stg_fhir_pat"):
            staging.vault_staging(engine, v, {s.name: (s.hospital, s.system) for s in srcs})
        assert v.count() == 0
        if engine.name != "spark":  # replay deletes staging rows: DuckDB and PostgreSQL
            for s in srcs:
                ingest_mod.replay(engine, Landing(site / "data/landing"), Quarantine(site / "data/quarantine"), s)
            assert staging.vault_staging(engine, v, {s.name: (s.hospital, s.system) for s in srcs})["identities"] == 4
    if engine.name == "spark":  # the old Parquet files are gone, not just hidden
        assert _secrets_in(engine.warehouse) == []


def test_a_patient_row_staged_while_the_move_reads_keeps_its_values(engine, site, tmp_path):  # noqa: F811
    """Another process stages a patient row (a `quarantine retry` at its old receipt) after the move has read
    staging and before it clears it: the row was not read, so it is not cleared, and the next move puts it into the
    vault. (PostgreSQL, the engine where two processes write at once.)"""
    if engine.name != "postgres":
        pytest.skip("one writer on DuckDB (a file lock) and on Spark")
    from medlake.engines import open_engine as reopen

    srcs = config.load(site / "sources.toml")
    where = {s.name: (s.hospital, s.system) for s in srcs}
    ingest_mod.ingest(engine, Landing(site / "data/landing"), Quarantine(site / "data/quarantine"),
                      [site / "h1/his"], sources=srcs)
    other = reopen(engine.url)
    read = staging.source_identities

    def read_then_another_process_stages(eng, srcs_):
        out = read(eng, srcs_)
        other.execute("INSERT INTO stg_hl7_patient (source, receipt_seq, record_location, patient_id, family_name) "
                      "SELECT source, receipt_seq, 'retried', 'M009', 'Retried' FROM stg_hl7_patient LIMIT 1")
        return out

    try:
        with Vault.open(site / "data", _ring()) as v:
            staging.source_identities = read_then_another_process_stages
            try:
                staging.vault_staging(engine, v, where)
            finally:
                staging.source_identities = read
            assert engine.query("SELECT family_name FROM stg_hl7_patient WHERE patient_id = 'M009'").to_pylist() \
                == [{"family_name": "Retried"}]  # not read, not cleared
            assert staging.vault_staging(engine, v, where)["identities"] == 1
            assert v.read("test", "check", [("h1-his", "M009")])[0]["family"] == "Retried"
            assert engine.query("SELECT count(family_name) FROM stg_hl7_patient").column(0)[0].as_py() == 0
    finally:
        other.close()
