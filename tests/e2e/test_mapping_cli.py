"""`medlake map` from a shell: gaps, suggest, accept, export/import, auto-accept, one-line errors."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa

from medlake.engines import open_engine

MEDLAKE = Path(sys.executable).with_name("medlake")


def run(tmp_path, *args, ok=True):
    env = {**os.environ, "MEDLAKE_STORE": f"duckdb:{tmp_path / 'store.duckdb'}", "COLUMNS": "250",
           "MEDLAKE_USER": "dana"}
    p = subprocess.run([str(MEDLAKE), *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def test_map_commands(tmp_path):
    run(tmp_path, "init")
    run(tmp_path, "vocab", "load", "--demo")
    empty = tmp_path / "empty.csv"  # nothing inventoried yet: the header alone
    assert run(tmp_path, "map", "export", empty).stdout.startswith("0 row(s)")
    assert list(csv.reader(open(empty, encoding="utf-8-sig")))[0][:2] == ["gap_id", "code_system"]
    eng = open_engine(f"duckdb:{tmp_path / 'store.duckdb'}")
    eng.execute("CREATE TABLE stg_csv_pharmacy (source VARCHAR, drug_code VARCHAR, drug_code_system VARCHAR, "
                "drug_name VARCHAR, patient_id VARCHAR)")
    eng.load_arrow("stg_csv_pharmacy", pa.table({
        "source": ["rx"] * 3, "drug_code": ["Y1", "Y1", "Y2"], "drug_code_system": ["urn:medlake:h9:pharmacy"] * 3,
        "drug_name": ["二甲双胍片(0.5g)", "二甲双胍片(0.5g)", "阿司匹林肠溶片 100mg"], "patient_id": ["a", "b", "a"]}))
    eng.close()
    p = run(tmp_path, "map", "gaps")
    assert "二甲双胍片(0.5g)" in p.stdout and "gaps (2)" in p.stdout
    p = run(tmp_path, "map", "suggest")
    assert "metformin" in p.stdout and "aspirin" in p.stdout
    gap = next(line.split("│")[1].strip() for line in p.stdout.splitlines() if "metformin" in line)
    assert "accepted" in run(tmp_path, "map", "accept", gap).stdout
    out = tmp_path / "r.csv"
    notebook = duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True)  # the export only reads: beside it
    run(tmp_path, "map", "export", out)
    notebook.close()
    rows = list(csv.DictReader(open(out, encoding="utf-8-sig")))
    assert {r["code"]: r["decision"] for r in rows} == {"Y2": "", "Y1": "accept"}
    assert next(r for r in rows if r["code"] == "Y1")["reviewer"] == "dana"
    p = run(tmp_path, "map", "auto-accept", "--min-score", "0.9")
    assert "accepted 1 mapping(s)" in p.stdout
    p = run(tmp_path, "map", "gaps", "--coverage")
    assert "100.0%" in p.stdout
    p = run(tmp_path, "map", "accept", "nosuchid", ok=False)
    assert p.returncode == 1 and p.stderr.startswith("error: no gap 'nosuchid'") and len(p.stderr.splitlines()) == 1
    p = run(tmp_path, "map", "auto-accept", "--min-score", "2", ok=False)
    assert p.returncode == 1 and "min-score" in p.stderr
