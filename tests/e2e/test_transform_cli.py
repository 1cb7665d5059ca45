"""`medlake transform`, `trace` and `conformance fhir2omop` as a person uses them."""
import re
import shutil

from medlake.simulate import simulate

from e2e_cli import SHARED, run


def test_transform_then_trace_then_rerun(tmp_path):
    simulate(tmp_path / "sim", patients=8, hospitals=1, seed=3)
    # a dispensing for an MRN no feed describes: its person has no PERSON row (isForeignKey), and trace says why
    csv = tmp_path / "sim" / "h1" / "pharmacy" / "dispense_00001.csv"
    first = csv.read_text(encoding="utf-8").splitlines()[1].split(",")
    csv.write_text(csv.read_text(encoding="utf-8") + ",".join(["RX999999999", "99999999", "H1V99999999"] + first[3:])
                   + "\n", encoding="utf-8")
    run(tmp_path, "init")
    run(tmp_path, "vocab", "load", "--demo")
    run(tmp_path, "ingest", "--sources", tmp_path / "sim" / "sources.toml")
    out = run(tmp_path, "transform").stdout
    assert "transform run 1" in out and "measurement" in out and "mapping gaps:" in out
    import duckdb

    con = duckdb.connect(str(tmp_path / "data" / "store.duckdb"), read_only=True)
    mid = con.sql("SELECT measurement_id FROM measurement ORDER BY measurement_id LIMIT 1").fetchall()[0][0]
    orphan = con.sql("SELECT d.drug_exposure_id FROM drug_exposure AS d WHERE d.person_id NOT IN (SELECT person_id "
                     "FROM person)").fetchall()
    period = con.sql("SELECT observation_period_id FROM observation_period WHERE person_id NOT IN (SELECT person_id "
                     "FROM person)").fetchall()
    con.close()
    chain = run(tmp_path, "trace", "measurement", mid).stdout
    assert f"measurement {mid}" in chain and "landing receipt" in chain and "received" in chain
    assert re.search(r"sha256 [0-9a-f]{64}", chain.replace("\n", " ")) and "no PERSON row" not in chain
    assert len(orphan) == 1
    chain = " ".join(run(tmp_path, "trace", "drug_exposure", orphan[0][0]).stdout.split())
    assert "record rx|RX999999999" in chain and "has no PERSON row: no record of this patient" in chain
    assert "No open quarantine item names this patient (99999999)" in chain
    assert "`medlake quarantine list`" in chain and "`medlake transform`" in chain
    assert "names no VISIT_OCCURRENCE row" in chain  # its visit number, which no feed sent either
    # the person's observation period, computed from its events: no source record of its own, and the same person
    chain = " ".join(run(tmp_path, "trace", "observation_period", period[0][0]).stdout.split())
    assert "computed by `medlake transform` from the events of person" in chain and "has no PERSON row" in chain
    assert "<- source" not in chain
    assert "nothing new in staging" in run(tmp_path, "transform").stdout
    # the HIS sends the patient, broken (no message type): trace names the quarantined message, not a count
    (tmp_path / "sim" / "h1" / "his" / "ADT_000099.hl7").write_bytes(
        b"MSH|^~\\&|HIS|H1|MEDLAKE|DC|20160207142141|||H1A999999999|P|2.5.1\rEVN|A04|20160207142141\r"
        b"PID|1||99999999^^^H1^MR||DOE^JANE||19800130|F\r"  # the patient's MRN
        b"MSH|^~\\&|HIS|H1|MEDLAKE|DC|20160207142141|||H1A999999998|P|2.5.1\rEVN|A04|20160207142141\r"
        b"PID|1||999999991^^^H1^MR||DOE^JOHN||19800130|M\r")  # another MRN that starts with it: not named
    run(tmp_path, "ingest", "--sources", tmp_path / "sim" / "sources.toml")
    chain = " ".join(run(tmp_path, "trace", "drug_exposure", orphan[0][0]).stdout.split())
    named = re.search(r"Open quarantine item\(s\) naming this patient \(99999999\): (.*?)\. A patient record", chain)
    assert named and "malformed, h1-his, ADT_000099.hl7, line 1" in named.group(1), chain
    assert "H1A999999998" not in named.group(1) and named.group(1).count("h1-his") == 1
    bad = run(tmp_path, "trace", "measurement", "1", ok=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: no lineage for measurement 1")
    assert run(tmp_path, "trace", "nosuchtable", "1", ok=False).returncode == 1


def test_conformance_prints_per_variant_and_totals(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(SHARED / "fhir2omop" / "cases" / "allergyintolerance--observation--core.json", cases)
    p = run(tmp_path, "conformance", "fhir2omop", cases, ok=False)
    lines = [x for x in p.stdout.splitlines() if x.startswith(("pass", "FAIL"))]
    assert len(lines) == 4
    total = re.search(r"(\d+) of 4 variant\(s\) passed", p.stdout)
    assert total and p.returncode == (0 if total.group(1) == "4" else 1)
