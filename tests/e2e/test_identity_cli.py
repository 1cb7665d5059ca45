"""The identity vault and the EMPI from a shell: ingest, empi run/status/review/accept/reject/explain/unmerge, key
rotation; and the EMPI on a Spark store (`--store spark:DIR`), linked by Splink's Spark backend."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

MEDLAKE = [sys.executable, "-m", "medlake.cli"]
MSH = "MSH|^~\\&|HIS|H1|MEDLAKE|MEDLAKE|2024010{n}120000||ADT^{ev}^ADT_A01|MSG{n:04d}|P|2.5.1|||||||UNICODE UTF-8\r"
PIDS = [
    "PID|1||M001^^^H1^MR~110101198003050016^^^CHN^NNCHN||张^伟||19800305|M|||建国路1号^^北京市^朝阳区^100000^CN||13800000001\r",
    "PID|1||M002^^^H1^MR||欧阳^娜娜||19500110|F\r",
    "PID|1||M003^^^H1^MR||欧阳^娜||19500110|F\r",
    "PID|1||M004^^^H1^MR||陈^静||19900101|F\r",
]
PATIENTS = [
    {"resourceType": "Patient", "id": "p1", "name": [{"family": "Zhang", "given": ["Wei"]}], "gender": "male",
     "birthDate": "1980-03-05", "identifier": [{"system": "urn:resident-id", "value": "110101198003050016"}]},
    {"resourceType": "Patient", "id": "p2", "name": [{"family": "陈", "given": ["静"]}], "gender": "female",
     "birthDate": "1990-01-07"},
    # a third registration of 张伟: M001, p1 and p3 are linked pairwise (a chain for the reject below)
    {"resourceType": "Patient", "id": "p3", "name": [{"family": "张", "given": ["伟"]}], "gender": "male",
     "birthDate": "1980-03-05", "identifier": [{"system": "urn:resident-id", "value": "110101198003050016"}]},
]
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


def run(*args, cwd: Path, env: dict | None = None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("MEDLAKE_")}
    e.update({"COLUMNS": "200", "MEDLAKE_USER": "tester", **(env or {})})
    return subprocess.run([*MEDLAKE, *args], cwd=cwd, capture_output=True, text=True, env=e, timeout=300)


def test_identity_and_empi_commands_end_to_end(tmp_path):
    (tmp_path / "h1/his").mkdir(parents=True)
    (tmp_path / "h2/emr").mkdir(parents=True)
    msgs = [MSH.format(n=i + 1, ev="A01") + f"EVN|A01|2024010{i + 1}120000\r" + p + "PV1|1|I|W1\r"
            for i, p in enumerate(PIDS)]
    msgs.append(MSH.format(n=5, ev="A40") + "EVN|A40|20240105120000\r" + PIDS[1] + "MRG|M003^^^H1^MR\r")
    (tmp_path / "h1/his/adt.hl7").write_bytes("".join(msgs).encode())
    (tmp_path / "h2/emr/Patient.ndjson").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PATIENTS),
                                                    encoding="utf-8")
    (tmp_path / "sources.toml").write_text(SOURCES)
    key_file = tmp_path / "secret" / "vault.keys"
    env = {"MEDLAKE_VAULT_KEY_FILE": str(key_file)}

    r = run("empi", "run", cwd=tmp_path)
    assert r.returncode == 1 and "no vault key" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("identity", "new-key", "--key-file", str(key_file), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run("ingest", "--sources", "sources.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run("empi", "status", cwd=tmp_path, env=env)  # before any run: nothing counted, nothing created
    assert r.returncode == 0 and re.search(r"identities\s+0\b", r.stdout), r.stdout + r.stderr

    r = run("empi", "run", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "7 identit(ies) into the vault, 1 new merge(s)" in r.stdout
    assert re.search(r"7 identities, .* 4 persons", r.stdout) and "Splink on duckdb" in r.stdout, r.stdout
    store = (tmp_path / "medlake-data" / "medlake.duckdb").read_bytes()
    assert "欧阳".encode() not in store and b"110101198003050016" not in store

    r = run("empi", "status", cwd=tmp_path, env=env)
    assert r.returncode == 0 and re.search(r"persons\s+4", r.stdout) and re.search(r"review pending\s+1", r.stdout)

    r = run("empi", "review", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    pair = re.search(r"pair (\d+): match probability", r.stdout).group(1)
    assert "h1-his:M004" in r.stdout and "h2-emr:p2" in r.stdout and "1990-01-07" in r.stdout and "陈" in r.stdout
    r = run("empi", "accept", pair, "--reason", "same person on the phone", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "1 person_id change(s)" in r.stdout, r.stdout + r.stderr
    assert "review queue empty" in run("empi", "review", cwd=tmp_path, env=env).stdout

    r = run("empi", "explain", "h1-his:M001", "h2-emr:p1", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "same ID number" in r.stdout and "pinyin" in r.stdout and "linked (same person)" in r.stdout

    r = run("empi", "unmerge", "h1-his:M003", "--reason", "merged in error", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "1 person_id change(s)" in r.stdout, r.stdout + r.stderr

    # a reject splits the pair although p3 still links to both; an accept undoes it (the history keeps both)
    r = run("empi", "reject", "h1-his:M001", "h2-emr:p1", "--reason", "twins", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "1 person_id change(s)" in r.stdout, r.stdout + r.stderr
    r = run("empi", "explain", "h1-his:M001", "h2-emr:p1", cwd=tmp_path, env=env)
    assert "not linked" in r.stdout and "reject by tester (twins)" in r.stdout, r.stdout
    r = run("empi", "run", cwd=tmp_path, env=env)  # the reject holds over a new run
    assert r.returncode == 0 and re.search(r"7 identities, .* 5 persons", r.stdout), r.stdout
    r = run("empi", "accept", "h1-his:M001", "h2-emr:p1", "--reason", "checked the ID card", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "1 person_id change(s)" in r.stdout, r.stdout + r.stderr
    r = run("empi", "explain", "h1-his:M001", "h2-emr:p1", cwd=tmp_path, env=env)
    assert "linked (same person)" in r.stdout and "reject by tester (twins); accept by tester" in r.stdout, r.stdout

    r = run("identity", "rotate-key", "--generate", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "8 row(s) re-encrypted" in r.stdout  # 7 identities + the matching secret
    r = run("identity", "status", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "(active) 8 row(s)" in r.stdout and "hash chain intact" in r.stdout, r.stdout

    r = run("empi", "accept", "999", cwd=tmp_path, env=env)
    assert r.returncode == 1 and "no pair 999" in r.stderr
    r = run("empi", "explain", "nocolon", "h1-his:M001", cwd=tmp_path, env=env)
    assert r.returncode == 1 and "SOURCE:SOURCE_ID" in r.stderr
    # a typo in an identity: refused (it was recorded, and the phantom identity put in the person map)
    r = run("empi", "accept", "h1-his:M0001", "h2-emr:p1", cwd=tmp_path, env=env)
    assert r.returncode == 1 and "h1-his:M0001 is not an identity of the person map" in r.stderr, r.stderr
    r = run("empi", "status", cwd=tmp_path, env=env)
    assert re.search(r"identities\s+7\b", r.stdout), r.stdout

    # the vault file lost (restored from before the first run): refused in one line, until a replay
    assert "every value the store moved is in the vault (patient receipts read: h1-his up to 1, h2-emr up to 2)" \
        in run("identity", "status", cwd=tmp_path, env=env).stdout
    for f in (tmp_path / "medlake-data" / "identity").glob("vault.sqlite*"):
        f.unlink()
    r = run("identity", "status", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "lacks the identifying values of 2 receipt(s)" in r.stdout, r.stdout + r.stderr
    r = run("empi", "run", cwd=tmp_path, env=env)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
    assert "lacks the identifying values of 2 receipt(s)" in r.stderr and "`medlake replay --source h2-emr`" in r.stderr
    for src in ("h1-his", "h2-emr"):
        assert run("replay", "--source", src, cwd=tmp_path, env=env).returncode == 0
    r = run("empi", "run", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "7 identit(ies) into the vault" in r.stdout, r.stdout + r.stderr
    assert "every value the store moved is in the vault" in run("identity", "status", cwd=tmp_path, env=env).stdout


@pytest.mark.spark
def test_empi_on_a_spark_store_links_with_splinks_spark_backend(tmp_path):
    """`--store spark:DIR`: staging is cleared without UPDATE, Splink links on Spark, no plaintext left."""
    (tmp_path / "h1/his").mkdir(parents=True)
    (tmp_path / "h2/emr").mkdir(parents=True)
    (tmp_path / "h1/his/adt.hl7").write_bytes((MSH.format(n=1, ev="A01") + "EVN|A01|20240101120000\r" + PIDS[0]
                                               + "PV1|1|I|W1\r").encode())
    (tmp_path / "h2/emr/Patient.ndjson").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n"
                                                            for p in (PATIENTS[0], PATIENTS[2])), encoding="utf-8")
    (tmp_path / "sources.toml").write_text(SOURCES)
    key_file = tmp_path / "secret" / "vault.keys"
    env = {"MEDLAKE_VAULT_KEY_FILE": str(key_file)}
    store = ["--store", f"spark:{tmp_path / 'warehouse'}"]
    assert run("identity", "new-key", "--key-file", str(key_file), cwd=tmp_path).returncode == 0
    r = run(*store, "ingest", "--sources", "sources.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # Spark's driver says nothing of its own start (medlake's log4j2 configuration: errors only)
    spark_notes = [x for x in r.stderr.splitlines() if re.search(r"log level|log4j| WARN |NativeCodeLoader", x)]
    assert not spark_notes, r.stderr
    r = run(*store, "empi", "run", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert re.search(r"3 identities, 3 scored pair\(s\), 3 linked, .* 1 persons", r.stdout), r.stdout
    assert "Splink on spark" in r.stdout and "3 staging row(s) cleared" in r.stdout, r.stdout
    raw = b"".join(p.read_bytes() for p in (tmp_path / "warehouse").rglob("*") if p.is_file())
    assert "张".encode() not in raw and b"110101198003050016" not in raw
    # decisions on Spark: tests/unit/test_identity_engines.py (each command here starts a JVM)
