"""`medlake ingest`, `replay` and `quarantine` as a person uses them: a shell, a folder, a sources.toml."""
import json
import os
import signal
import socket
import subprocess

from e2e_cli import MEDLAKE, SHARED, run

from medlake.sources import mllp


def row(out: str, name: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
    return line.split()


def test_ingest_quarantine_retry_replay(tmp_path):
    site = tmp_path / "site"
    (site / "emr").mkdir(parents=True)
    (site / "pharmacy").mkdir()
    good = {"resourceType": "Patient", "id": "p1", "gender": "male"}
    (site / "emr" / "Patient.ndjson").write_text(json.dumps(good) + "\n" + '{"resourceType": "Patient", "id"\n')
    (site / "pharmacy" / "d.csv").write_bytes("单号,病人,药品,时间\nR1,M1,D1,2024-01-02 03:04\n".encode("gbk"))
    toml = site / "sources.toml"
    toml.write_text('[[source]]\nname = "emr"\nkind = "fhir"\npath = "emr"\n\n[[source]]\nname = "rx"\n'
                    'kind = "csv"\nsystem = "pharmacy"\npath = "pharmacy"\nencoding = "gbk"\n[source.columns]\n'
                    'record_id = "单号"\npatient_id = "病人"\ndrug_code = "药品X"\ndispensed_at = "时间"\n',
                    encoding="utf-8")
    p = run(tmp_path, "ingest", site, "--sources", toml)
    assert row(p.stdout, "emr") == ["emr", "1", "1", "0", "0", "1", "1", "1"]
    assert row(p.stdout, "rx")[1:] == ["1", "1", "0", "0", "0", "0", "1"]
    assert "quarantined by reason: bad_json 1, missing_column 1" in p.stdout
    assert (tmp_path / "data" / "landing" / "quarantine.sqlite").exists()

    p = run(tmp_path, "quarantine", "list")
    assert "Patient.ndjson, line 2" in p.stdout and "d.csv, line 1, at 药品X" in p.stdout
    raw = run(tmp_path, "quarantine", "show", "1", "--raw")
    assert raw.stdout == '{"resourceType": "Patient", "id"'
    assert "reason         bad_json" in run(tmp_path, "quarantine", "show", "1").stdout

    p = run(tmp_path, "ingest", site, "--sources", toml)  # nothing new
    assert row(p.stdout, "total") == ["total", "0", "0", "0", "2", "0", "0", "0"]

    toml.write_text(toml.read_text(encoding="utf-8").replace("药品X", "药品Y"), encoding="utf-8")  # a wrong fix
    p = run(tmp_path, "quarantine", "retry", "--sources", toml)
    assert "resolved 0, still failing 2" in p.stdout
    p = run(tmp_path, "quarantine", "list")           # the list says why it fails now, not why it failed first
    assert "retry 1: column(s) named in the source mapping are not in the header: drug_code → '药品Y'" in p.stdout
    assert "d.csv, line 1, at 药品Y" in p.stdout and "药品X" not in p.stdout
    toml.write_text(toml.read_text(encoding="utf-8").replace("药品Y", "药品"), encoding="utf-8")
    p = run(tmp_path, "quarantine", "retry", "--sources", toml)
    assert "resolved 1, still failing 1, rows staged 1" in p.stdout
    p = run(tmp_path, "quarantine", "list", "--all")
    assert "resolved" in p.stdout and "by reason: bad_json 1, missing_column 1" in p.stdout

    p = run(tmp_path, "replay", "--source", "rx")
    assert row(p.stdout, "rx")[5:] == ["1", "1", "0"]


def test_errors_are_one_line_and_exit_codes(tmp_path):
    bad = tmp_path / "sources.toml"
    bad.write_text('[[source]]\nname = "x"\nkind = "xml"\npath = "."\n')
    p = run(tmp_path, "ingest", tmp_path, "--sources", bad, ok=False)
    assert p.returncode == 1
    assert p.stderr.strip() == f"error: {bad}: [[source]] #1 (x) key `kind`: 'xml' is not one of hl7v2, fhir, csv"
    assert not (tmp_path / "data").exists()  # nothing ran
    assert run(tmp_path, "ingest", ok=False).returncode == 2
    p = run(tmp_path, "replay", "--source", "nope", ok=False)
    assert p.returncode == 1 and "unknown source 'nope'" in p.stderr


def test_every_shared_fhir_file_ingests(tmp_path):
    p = run(tmp_path, "ingest", SHARED / "fhir" / "r4-examples", SHARED / "fhir" / "synthea-bundles")
    r4, synthea = row(p.stdout, "r4-examples"), row(p.stdout, "synthea-bundles")
    assert r4[1:3] == ["14", "14"] and synthea[1:3] == ["4", "4"]
    assert "quarantined by reason: none" in p.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_listen_on_the_ports_of_sources_toml_then_stage_them(tmp_path):
    """`medlake listen --sources`: one port per source with an `mllp_port`, each message landed in its source;
    `medlake ingest --sources` then stages them under that source. A port in use is one line."""
    ports = {"h1-adt": free_port(), "h1-lab": free_port()}
    toml = tmp_path / "sources.toml"
    toml.write_text("".join(f'[[source]]\nname = "{n}"\nkind = "hl7v2"\nmllp_port = {p}\n\n' for n, p in ports.items())
                    + '[[source]]\nname = "files"\nkind = "fhir"\nupload = true\n', encoding="utf-8")
    msg = ("MSH|^~\\&|{app}|H1|MEDLAKE|DC|20240305101500||{kind}|{cid}|P|2.5.1\r"
           "PID|1||MRN{cid}^^^H1^MR||Wang^Fang||19900307|F\r"
           "PV1|1|I|W1^101^1\r")
    env = {**os.environ, "MEDLAKE_STORE": f"duckdb:{tmp_path / 'data' / 'store.duckdb'}"}
    p = subprocess.Popen([str(MEDLAKE), "listen", "--sources", str(toml)], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = [p.stderr.readline() for _ in ports]
        assert all(any(f":{port} -> landing" in s and f"as source {n}" in s for s in started)
                   for n, port in ports.items()), started
        acks = [mllp.send("127.0.0.1", ports["h1-adt"], [msg.format(app="ADT", kind="ADT^A01", cid=f"A{i}").encode()
                                                        for i in range(3)]),
                mllp.send("127.0.0.1", ports["h1-lab"], [msg.format(app="LIS", kind="ADT^A08", cid="L1").encode()])]
        busy = run(tmp_path, "listen", "--sources", toml, ok=False)          # the ports are taken
        assert busy.returncode == 1 and busy.stderr.count("\n") == 1
        assert busy.stderr.startswith("error: cannot listen: ") and "is another listener on that port?" in busy.stderr
    finally:
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
    assert [mllp.ack_code(a) for a in acks[0] + acks[1]] == ["AA"] * 4
    assert p.returncode == 0 and "h1-adt (port" in out and "h1-lab (port" in out
    assert out.splitlines()[-1].startswith("stopped; received 4: AA 4, AE 0, AR 0; landed 4 new, 0 duplicate(s)")
    staged = run(tmp_path, "ingest", "--sources", toml)
    assert row(staged.stdout, "h1-adt")[5] == "3" and row(staged.stdout, "h1-lab")[5] == "1"   # records staged


def test_a_record_staged_by_retry_or_replay_reaches_the_cdm_on_the_next_transform(tmp_path):
    """A row quarantined while the rest of its file was staged and mapped, then fixed and retried: the next plain
    `medlake transform` maps it (it lies below the transform's watermark; it was left out of the CDM without a
    word: "nothing new in staging"). After `replay` the transform maps the source again, without doubles."""
    site = tmp_path / "site"
    (site / "rx").mkdir(parents=True)
    (site / "rx" / "d.csv").write_text("rid,pid,drug,qty,days,time\nR1,M1,D1,2,30,2024-01-02 03:04\n"
                                       "R2,M2,D2,1.5,10,2024-01-03 03:04\n", encoding="utf-8")
    toml = site / "sources.toml"
    toml.write_text('[[source]]\nname = "rx"\nkind = "csv"\nsystem = "pharmacy"\npath = "rx"\n[source.columns]\n'
                    'record_id = "rid"\npatient_id = "pid"\ndrug_code = "drug"\ndispensed_at = "time"\n'
                    'days_supply = "qty"\n', encoding="utf-8")                  # the wrong column: 1.5 days
    run(tmp_path, "init")
    run(tmp_path, "vocab", "load", "--demo")

    def drugs() -> int:
        return int(row(run(tmp_path, "status").stdout.replace("│", " "), "drug_exposure")[1].replace(",", ""))

    assert "quarantined by reason: invalid 1" in run(tmp_path, "ingest", site, "--sources", toml).stdout
    run(tmp_path, "transform")
    assert drugs() == 1
    toml.write_text(toml.read_text(encoding="utf-8").replace('"qty"', '"days"'), encoding="utf-8")
    assert "resolved 1, still failing 0, rows staged 1" in run(tmp_path, "quarantine", "retry", "--sources",
                                                              toml).stdout
    assert "nothing new" not in run(tmp_path, "transform").stdout
    assert drugs() == 2
    assert "nothing new" in run(tmp_path, "transform").stdout
    run(tmp_path, "replay", "--source", "rx", "--sources", toml)
    assert "nothing new" not in run(tmp_path, "transform").stdout
    assert drugs() == 2
