"""`medlake simulate` as a person uses it: a real process, its summary, its exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

MEDLAKE = [sys.executable, "-m", "medlake.cli"]


def run(*args, cwd: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDLAKE_")}
    env["COLUMNS"] = "200"
    return subprocess.run([*MEDLAKE, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_simulate_writes_the_group_and_prints_a_summary(tmp_path):
    r = run("simulate", "--patients", "40", "--hospitals", "2", "--seed", "3", "--out", "hosp",
            "--start", "2020-01-01", "--end", "2024-12-31", "--defect-rate", "0.05", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "hosp"
    assert "simulated 40 patients in 2 hospital(s)" in r.stdout
    for word in ("HL7 v2 messages", "FHIR resources", "CSV rows", "defects by class:"):
        assert word in r.stdout
    persons = (out / "ground_truth" / "persons.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(persons) == 40
    facts = [json.loads(x) for x in (out / "ground_truth" / "facts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert facts and all("2020-01-01" <= f["date"] <= "2024-12-31" for f in facts if f["kind"] == "visit")
    assert (out / "sources.toml").exists() and (out / "h2" / "emr" / "bulk" / "manifest.json").exists()
    # running again replaces the former output
    r = run("simulate", "--patients", "5", "--hospitals", "1", "--out", "hosp", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (out / "h2").exists()


def test_discard_counts_the_bytes_of_a_written_run_and_writes_nothing(tmp_path):
    r = run("simulate", "--patients", "20", "--hospitals", "2", "--seed", "5", "--out", "hosp", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    written = sum(f.stat().st_size for f in (tmp_path / "hosp").rglob("*") if f.is_file())
    r = run("simulate", "--patients", "20", "--hospitals", "2", "--seed", "5", "--out", "gone", "--discard",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{written / 1e6:,.0f} MB counted and discarded" in r.stdout
    assert not (tmp_path / "gone").exists()


def test_simulate_errors_are_one_line_and_usage_errors_exit_2(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = run("simulate", "--patients", "5", "--out", "mine", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "mine" / "notes.txt").exists()
    r = run("simulate", "--patients", "5", "--start", "2020-02-30", "--out", "x", cwd=tmp_path)
    assert r.returncode == 2 and "YYYY-MM-DD" in r.stderr
    r = run("simulate", "--patients", "0", "--out", "x", cwd=tmp_path)
    assert r.returncode == 2
    r = run("simulate", "--patients", "5", "--start", "2024-01-01", "--end", "2020-01-01", "--out", "x", cwd=tmp_path)
    assert r.returncode == 1 and "must be after" in r.stderr
    r = run("simulate", "--patients", "5", "--correction-rate", "0.9", "--out", "x", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == "error: --correction-rate must be between 0 and 0.5"
