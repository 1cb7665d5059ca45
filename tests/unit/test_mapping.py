"""Mapping workbench: gap inventory from staging, ranked suggestions with evidence, review and the CSV round trip."""
import csv

import pyarrow as pa
import pytest

from medlake.cdm import store as cdm_store
from medlake.cdm import vocab
from medlake.engines import open_engine
from medlake.mapping import gaps, review, store, suggest

ICD10CN = "https://medlake.org/fhir/sid/icd-10-cn"
# A small LIS feed, a pharmacy export and EMR diagnoses, as staging holds them (patient ids are pseudonymous here).
OBS = [  # source, code, code_text, code_system, units, value_number, patient_id
    ("h1-lis", "1000", "GLU-F", "H1LIS", "mmol/L", 5.6, "p1"),
    ("h1-lis", "1000", "GLU-F", "H1LIS", "mmol/L", 6.1, "p2"),
    ("h1-lis", "1000", "GLU-F", "H1LIS", "mmol/L", 4.9, "p2"),
    ("h2-lis", "HBA1C", "糖化血红蛋白", "H2LIS", "％", 6.8, "q1"),
    ("h2-lis", "XLB-02", "红细胞聚集指数", "H2LIS", None, 2.1, "q1"),
    ("h3-lis", "2345-7", "Glucose", "http://loinc.org", "mg/dL", 101.0, "r1"),
]
RX = [("h1-pharmacy", "Y100000", "urn:medlake:h1:pharmacy", "二甲双胍片(0.5g)", "m1"),
      ("h1-pharmacy", "Y100000", "urn:medlake:h1:pharmacy", "二甲双胍片(0.5g)", "m2"),
      ("h1-pharmacy", "ZY0301", "urn:medlake:h1:pharmacy", "黄芪颗粒", "m2")]
DX = [("h1-emr", ICD10CN, "E11.900x001", "2型糖尿病", "Patient/a"),
      ("h1-emr", ICD10CN, "E11.900x009", "2型糖尿病(其他)", "Patient/b")]


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    e = open_engine(f"duckdb:{tmp_path_factory.mktemp('map') / 's.duckdb'}")
    cdm_store.init(e, "5.4")
    vocab.load(e, vocab.demo_vocabulary_dir(), "5.4")
    e.execute("CREATE TABLE stg_hl7_observation (source VARCHAR, code VARCHAR, code_text VARCHAR, code_system "
              "VARCHAR, units VARCHAR, units_text VARCHAR, value_number DOUBLE, patient_id VARCHAR)")
    e.load_arrow("stg_hl7_observation", pa.table({k: list(v) for k, v in zip(
        ["source", "code", "code_text", "code_system", "units", "value_number", "patient_id"], zip(*OBS))}))
    e.execute("CREATE TABLE stg_csv_pharmacy (source VARCHAR, drug_code VARCHAR, drug_code_system VARCHAR, "
              "drug_name VARCHAR, patient_id VARCHAR)")
    e.load_arrow("stg_csv_pharmacy", pa.table({k: list(v) for k, v in zip(
        ["source", "drug_code", "drug_code_system", "drug_name", "patient_id"], zip(*RX))}))
    e.execute("CREATE TABLE stg_fhir_condition (source VARCHAR, code_system VARCHAR, code VARCHAR, code_display "
              "VARCHAR, code_text VARCHAR, subject_ref VARCHAR)")
    e.load_arrow("stg_fhir_condition", pa.table({k: list(v) for k, v in zip(
        ["source", "code_system", "code", "code_display", "subject_ref"], zip(*DX))}))
    yield e
    e.close()


def cid(eng, vocabulary, code):
    return eng.query("SELECT concept_id FROM concept WHERE vocabulary_id = ? AND concept_code = ?",
                     [vocabulary, code]).column(0)[0].as_py()


def test_gap_inventory_counts_rows_people_units_and_status(eng):
    codes = {(c.code_system, c.code): c for c in gaps.refresh(eng)}
    glu = codes[("H1LIS", "1000")]
    assert (glu.status, glu.kind, glu.rows, glu.n_persons, glu.unit, glu.value_median, glu.display) == (
        "gap", "lab", 3, 2, "mmol/L", 5.6, "GLU-F")
    assert glu.sources == {"h1-lis": 3}
    assert codes[("http://loinc.org", "2345-7")].status == "mapped"
    assert codes[(ICD10CN, "E11.900x001")].status == "mapped"       # in the demo ICD10CN vocabulary
    assert codes[(ICD10CN, "E11.900x009")].status == "gap"          # an extension code it does not have
    assert codes[("urn:medlake:h1:pharmacy", "Y100000")].n_persons == 2
    rows = eng.query("SELECT gap_id, code, rows, persons, units FROM mapping_gap ORDER BY code").to_pylist()
    assert [r["code"] for r in rows] == ["1000", "E11.900x009", "HBA1C", "XLB-02", "Y100000", "ZY0301"]
    assert rows[0]["units"] == "mmol/L 3" and rows[0]["gap_id"] == store.gap_id("H1LIS", "1000")
    cov = gaps.coverage(list(codes.values()))
    assert cov["lab"]["rows"] == 6 and cov["lab"]["mapped_rows"] == 1


def test_suggestions_rank_the_true_concept_first_with_evidence(eng):
    idx = suggest.Index.from_engine(eng)
    s = suggest.Suggester(idx)
    top = s.suggest(suggest.Gap("H1LIS", "1000", "lab", "GLU-F", "mmol/L", 5.6))[0]
    assert top.concept_id == cid(eng, "LOINC", "1558-6")          # fasting glucose, not glucose or HbA1c
    assert any("fasting glucose" in e for e in top.evidence) and any("typical" in e for e in top.evidence)
    top = s.suggest(suggest.Gap("H2LIS", "HBA1C", "lab", "糖化血红蛋白", "％", 6.8))[0]
    assert top.concept_id == cid(eng, "LOINC", "4548-4") and top.score >= 0.95
    top = s.suggest(suggest.Gap("urn:x", "Y1", "drug", "二甲双胍片(0.5g)"))[0]
    assert top.concept_id == cid(eng, "RxNorm", "6809")
    # English abbreviation, no Chinese: the shipped dictionary gives "urea nitrogen"
    assert s.suggest(suggest.Gap("L", "1017", "lab", "BUN", "mmol/L", 5.0))[0].concept_id == cid(eng, "LOINC", "3094-0")


def test_unit_and_value_are_evidence(eng):
    s = suggest.Suggester(suggest.Index.from_engine(eng))
    hba1c = cid(eng, "LOINC", "4548-4")
    good = {x.concept_id: x for x in s.suggest(suggest.Gap("L", "X", "lab", "糖化血红蛋白", "%", 6.8))}[hba1c]
    bad = {x.concept_id: x for x in s.suggest(suggest.Gap("L", "X", "lab", "糖化血红蛋白", "mmol/L", 5.6))}[hba1c]
    assert bad.score < 0.6 < good.score
    assert any("impossible" in e for e in bad.evidence)


def test_icd10_clinical_extension_falls_back_to_the_longest_prefix(eng):
    s = suggest.Suggester(suggest.Index.from_engine(eng))
    top = s.suggest(suggest.Gap(ICD10CN, "E11.900x009", "diagnosis", None))[0]
    assert top.concept_id == cid(eng, "SNOMED", "44054006")
    assert any("falls back to" in e and "E11.900" in e for e in top.evidence)
    assert suggest._icd_prefixes("E11.900x001")[-4:] == ["E11.900", "E11.90", "E11.9", "E11"]


def test_truly_unmapped_local_terms_score_low(eng):
    s = suggest.Suggester(suggest.Index.from_engine(eng))
    for g in (suggest.Gap("L", "XLB-02", "lab", "红细胞聚集指数"), suggest.Gap("R", "ZY0301", "drug", "黄芪颗粒")):
        ss = s.suggest(g)
        assert not ss or ss[0].score < 0.8


def test_accept_reject_no_match_write_stcm_and_history(eng):
    gaps.refresh(eng)
    suggest.refresh(eng)
    g = store.gap_id("H1LIS", "1000")
    fasting = review.accept(eng, g, by="alice")
    assert fasting == cid(eng, "LOINC", "1558-6")
    stcm = eng.query("SELECT source_code, source_vocabulary_id, target_concept_id, target_vocabulary_id, "
                     "valid_end_date FROM source_to_concept_map WHERE source_code = '1000'").to_pylist()
    assert len(stcm) == 1 and stcm[0]["target_concept_id"] == fasting and stcm[0]["source_vocabulary_id"] == "H1LIS"
    assert str(stcm[0]["valid_end_date"]) == "2099-12-31"
    # a local code gets the site's own source concept (not standard, its source vocabulary), named in the map
    local = eng.query("SELECT c.concept_id, c.concept_name, c.domain_id, c.vocabulary_id, c.standard_concept, "
                      "m.source_concept_id FROM concept c JOIN source_to_concept_map m ON m.source_concept_id = "
                      "c.concept_id WHERE m.source_code = '1000'").to_pylist()
    assert len(local) == 1 and local[0]["concept_id"] >= 2_000_000_000
    assert (local[0]["concept_name"], local[0]["domain_id"], local[0]["vocabulary_id"], local[0]["standard_concept"]
            ) == ("GLU-F", "Measurement", "H1LIS", None)
    assert eng.query("SELECT count(*) FROM vocabulary WHERE vocabulary_id = 'H1LIS'").column(0)[0].as_py() == 1
    d = eng.query("SELECT decided_by, decision, how FROM mapping_decision WHERE source_code = '1000'").to_pylist()
    assert d == [{"decided_by": "alice", "decision": "accepted", "how": "cli"}]
    # the code is mapped now, not a gap; the transform finds it by the same source_vocabulary_id
    assert {c.code: c.status for c in gaps.refresh(eng)}["1000"] == "mapped"
    # rejecting the mapped concept takes the mapping away and it is not suggested again
    review.reject(eng, g, fasting, by="bob")
    assert eng.query("SELECT count(*) FROM source_to_concept_map WHERE source_code = '1000'").column(0)[0].as_py() == 0
    again = suggest.refresh(eng)[g]
    assert fasting not in [x.concept_id for x in again]
    review.reject(eng, store.gap_id("urn:medlake:h1:pharmacy", "ZY0301"), by="bob")
    assert eng.query("SELECT target_concept_id FROM source_to_concept_map WHERE source_code = 'ZY0301'"
                     ).column(0)[0].as_py() == 0
    # the same code decided again keeps its source concept; another code gets the next id
    review.accept(eng, g, fasting, by="carol")
    again = eng.query("SELECT source_concept_id FROM source_to_concept_map WHERE source_code = '1000'").to_pylist()
    assert again == [{"source_concept_id": local[0]["concept_id"]}]
    assert eng.query("SELECT source_concept_id FROM source_to_concept_map WHERE source_code = 'ZY0301'"
                     ).column(0)[0].as_py() > local[0]["concept_id"]
    with pytest.raises(ValueError, match="not in this store"):
        review.accept(eng, store.gap_id("H2LIS", "HBA1C"), 999999)
    with pytest.raises(ValueError, match="no gap"):
        review.accept(eng, "deadbeef")


def test_csv_round_trip_and_import_errors(eng, tmp_path):
    gaps.refresh(eng)
    suggest.refresh(eng)
    path = tmp_path / "review.csv"
    n = review.export_csv(eng, path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and {r["code"] for r in rows} >= {"HBA1C", "Y100000"}
    for r in rows:
        if r["code"] in ("HBA1C", "Y100000"):
            r["decision"], r["reviewer"] = "accept", "carol"
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        w = csv.DictWriter(f, review.EXPORT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    counts = review.import_csv(eng, path)
    assert counts["accepted"] == 2 and counts["unchanged"] == sum(1 for r in rows if r["decision"]) - 2
    got = {r["source_code"]: r["target_concept_id"] for r in eng.query(
        "SELECT source_code, target_concept_id FROM source_to_concept_map").to_pylist()}
    assert got["HBA1C"] == cid(eng, "LOINC", "4548-4") and got["Y100000"] == cid(eng, "RxNorm", "6809")
    decided = sum(1 for r in rows if r["decision"])                # incl. decisions exported already made
    assert review.import_csv(eng, path) == {"accepted": 0, "rejected": 0, "no_match": 0, "unchanged": decided}
    # a bad row: nothing applied, the error names file, line and column
    bad = [dict(r) for r in rows]
    bad[0]["decision"], bad[1]["decision"], bad[1]["concept_id"] = "accept", "accept", "abc"
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        w = csv.DictWriter(f, review.EXPORT_COLUMNS)
        w.writeheader()
        w.writerows(bad)
    before = eng.query("SELECT count(*) FROM mapping_decision").column(0)[0].as_py()
    with pytest.raises(ValueError, match=r"review\.csv:3: column concept_id.*nothing was imported"):
        review.import_csv(eng, path)
    assert eng.query("SELECT count(*) FROM mapping_decision").column(0)[0].as_py() == before


def test_a_sheet_saved_by_a_spreadsheet_imports_or_says_what_it_changed(eng, tmp_path):
    gaps.refresh(eng)
    suggest.refresh(eng)
    path = tmp_path / "review.csv"
    review.export_csv(eng, path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))

    def save(rows, delimiter=","):
        with open(path, "w", encoding="utf-8-sig", newline="") as f:
            w = csv.DictWriter(f, review.EXPORT_COLUMNS, delimiter=delimiter)
            w.writeheader()
            w.writerows(rows)

    def edited(which, **change):
        return [r | change if r["code"] == which else r for r in rows]
    # the code changed on the way (leading zeros dropped, 1.23E+11): nothing is imported, the row is named
    hba1c = next(i for i, r in enumerate(rows) if r["code"] == "HBA1C")
    save(edited("HBA1C", code="HBA1", decision="accept"))
    with pytest.raises(ValueError, match=rf"review\.csv:{hba1c + 2}: column code: 'HBA1' is not the code exported"):
        review.import_csv(eng, path)
    # an id that is no whole number; a note over two lines counts its lines
    save(edited("HBA1C", decision="accept", concept_id="4548.7", note="two\nlines")[:hba1c + 1]
         + [rows[hba1c + 1] | {"decision": "accept", "concept_id": "1e400"}] + rows[hba1c + 2:])
    with pytest.raises(ValueError, match=rf"review\.csv:{hba1c + 2}: column concept_id: '4548.7' is not a concept "
                                         r"id.*\(and 1 more\)"):
        review.import_csv(eng, path)
    # semicolons, as a spreadsheet in a decimal-comma locale saves CSV, and an id shown as 4548.0
    todo = next(r for r in rows if not r["decision"] and r["concept_id"])
    save(edited(todo["code"], decision="accept", concept_id=f"{todo['concept_id']}.0"), delimiter=";")
    got = review.import_csv(eng, path)
    assert got["accepted"] == 1, got
    assert eng.query("SELECT target_concept_id FROM source_to_concept_map WHERE source_code = ?", [todo["code"]]
                     ).column(0)[0].as_py() == int(todo["concept_id"])


def test_auto_accept_takes_only_confident_top_suggestions(eng):
    gaps.refresh(eng)
    suggest.refresh(eng)
    done = review.auto_accept(eng, 0.9, by="auto")
    codes = {r["code"] for r in done}
    assert "XLB-02" not in codes
    assert all(r["score"] >= 0.9 for r in done)
    assert review.auto_accept(eng, 0.9) == []                      # decided codes are not accepted twice
    with pytest.raises(ValueError, match="min-score"):
        review.auto_accept(eng, 1.5)


def test_source_vocabulary_ids_fit_the_cdm_column():
    assert store.source_vocabulary_id("http://loinc.org") == "LOINC"
    assert store.source_vocabulary_id("H1LIS") == "H1LIS"
    long = store.source_vocabulary_id("urn:medlake:hospital-number-one:pharmacy-dictionary")
    assert len(long) <= 20 and long == store.source_vocabulary_id("urn:medlake:hospital-number-one:pharmacy-dictionary")
