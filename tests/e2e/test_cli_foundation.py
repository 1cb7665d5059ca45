"""The CLI as a person uses it: a real `medlake` process, exit codes and output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MEDLAKE = [sys.executable, "-m", "medlake.cli"]


def run(*args, cwd: Path, env: dict | None = None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("MEDLAKE_")}
    e.update({"COLUMNS": "200", **(env or {})})
    return subprocess.run([*MEDLAKE, *args], cwd=cwd, capture_output=True, text=True, env=e, timeout=300)


def test_init_vocab_status_on_the_default_duckdb_store(tmp_path):
    r = run("init", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "39 table(s) created" in r.stdout
    assert (tmp_path / "medlake-data" / "medlake.duckdb").exists()  # the default location
    r = run("vocab", "load", "--demo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "row counts verified" in r.stdout
    r = run("status", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "OMOP v5.4" in r.stdout and "DEMO" in r.stdout and "duckdb" in r.stdout
    assert "concept " in r.stdout or "concept│" in r.stdout.replace(" ", "")


def test_config_file_and_environment_name_the_store(tmp_path):
    (tmp_path / "medlake.toml").write_text('[store]\nurl = "duckdb:from-config.duckdb"\ncdm_version = "5.3"\n')
    assert run("init", cwd=tmp_path).returncode == 0
    assert (tmp_path / "from-config.duckdb").exists()
    r = run("status", cwd=tmp_path)
    assert "OMOP v5.3" in r.stdout
    r = run("init", cwd=tmp_path, env={"MEDLAKE_STORE": "duckdb:from-env.duckdb"})
    assert r.returncode == 0 and (tmp_path / "from-env.duckdb").exists()
    r = run("--store", "duckdb:from-flag.duckdb", "init", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "from-flag.duckdb").exists()


def test_the_store_and_config_options_go_after_the_command_too(tmp_path):
    """`medlake quality run --store URL`, as people write it: the root's options are taken wherever they stand."""
    (tmp_path / "site.toml").write_text('[store]\nurl = "duckdb:from-config.duckdb"\ncdm_version = "5.3"\n')
    assert run("init", "--store", "duckdb:after.duckdb", cwd=tmp_path).returncode == 0
    assert run("init", "--store=duckdb:after-eq.duckdb", "--cdm-version", "5.3", cwd=tmp_path).returncode == 0
    assert {p.name for p in tmp_path.glob("*.duckdb")} == {"after.duckdb", "after-eq.duckdb"}
    r = run("quality", "run", "--store", "duckdb:after-eq.duckdb", "--out", "q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    done = json.loads(next((tmp_path / "q").glob("*/run.json")).read_text())
    # the store named after (by its full path: one store however a command spells it)
    assert (done["store"], done["cdm_version"]) == (f"duckdb:{(tmp_path / 'after-eq.duckdb').resolve()}", "5.3")
    r = run("status", "--config", "site.toml", cwd=tmp_path)
    assert r.returncode == 1 and "no DuckDB store at from-config.duckdb" in r.stderr  # the config's store
    r = run("quality", "run", "--store", cwd=tmp_path)
    assert r.returncode == 2 and "'--store': requires a value" in r.stderr
    r = run("--store", "duckdb:after.duckdb", "status", "--store=duckdb:after-eq.duckdb", cwd=tmp_path)
    assert r.returncode == 2 and "'--store': given twice, as 'duckdb:after.duckdb' and 'duckdb:after-eq.duckdb'" \
        in r.stderr  # which was meant cannot be told
    r = run("--store", "duckdb:after.duckdb", "status", "--store", "duckdb:after.duckdb", cwd=tmp_path)
    assert r.returncode == 0 and "after.duckdb" in r.stdout  # the same store twice is the one store


@pytest.mark.parametrize("args,code,text", [
    (["--store", "mysql://x", "status"], 1, "unknown store"),
    (["vocab", "load", "does-not-exist"], 1, "not a folder"),
    (["vocab", "load"], 2, "give a FOLDER or --demo"),
    (["no-such-command"], 2, "No such command"),
    (["listen", "--port", "0"], 2, "give one of --source S, --routes FILE or --sources FILE"),
    (["init", "--cdm-version", "6.0"], 1, "unknown OMOP CDM version"),
    (["quality", "run", "--out", "/proc/medlake-q"], 1, "error: /proc/medlake-q: no such file or directory"),
    (["cdm", "import", ".", "--encoding", "base64"], 1, "error: 'base64' is not a text encoding"),
    (["--store", "duckdb:nowhere/s.duckdb", "quality", "run"], 1,
     "error: no DuckDB store at nowhere/s.duckdb: run `medlake init` there, or name the store with --store"),
    # a config file named that is not there was passed over for the defaults (another store than meant)
    (["--config", "site.toml", "status"], 1, "error: site.toml: no such config file"),
    (["quarantine", "show", "99"], 1, "error: no quarantine item 99: see `medlake quarantine list`"),  # no quotes
])
def test_errors_are_one_line_and_exit_codes_are_right(tmp_path, args, code, text):
    if (args[:2] == ["vocab", "load"] and len(args) == 3) or args[:3] == ["quality", "run", "--out"]:
        assert run("init", cwd=tmp_path).returncode == 0
    r = run(*args, cwd=tmp_path)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert text in r.stderr
    if code == 1:
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_a_store_another_process_holds_is_named_with_what_to_do(tmp_path):
    """DuckDB lets one process at a time open a file to write: a transform or a notebook holding the store stops a
    command with the holder's PID and what to do; a quality run (and show, and status) only reads, so it runs beside
    a notebook reading; the list of quality runs and their diff read only the runs' files, beside a transform too."""
    store = tmp_path / "s.duckdb"
    assert run("--store", f"duckdb:{store}", "init", cwd=tmp_path).returncode == 0
    for _ in range(2):
        assert run("--store", f"duckdb:{store}", "quality", "run", cwd=tmp_path).returncode == 0
    for read_only in (False, True):
        holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect("
                                   f"{str(store)!r}, read_only={read_only}); print('open', flush=True); "
                                   "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "open"
            r = run("--store", f"duckdb:{store}", "quality", "run", cwd=tmp_path)
            w = run("--store", f"duckdb:{store}", "quality", "run", "--write-table", "dq", cwd=tmp_path)
            if read_only:  # and the check's rows, from the report to the store
                shown = run("--store", f"duckdb:{store}", "quality", "show", "table_cdmtable_person", cwd=tmp_path)
                assert shown.returncode == 0 and "table_cdmtable_person" in shown.stdout, shown.stderr
                s = run("--store", f"duckdb:{store}", "status", cwd=tmp_path)
                assert s.returncode == 0 and "OMOP v5.4" in s.stdout, s.stderr
            runs = run("--store", f"duckdb:{store}", "quality", "runs", cwd=tmp_path)
            assert runs.returncode == 0, runs.stderr
            n = 2 + read_only  # the quality run beside a reader finished
            assert f"quality runs of duckdb:{store} ({n} of {n})" in " ".join(runs.stdout.split())
            diff = run("--store", f"duckdb:{store}", "quality", "diff", cwd=tmp_path)
            assert diff.returncode == 0 and "0 newly failing" in diff.stdout, diff.stderr
        finally:
            holder.kill()
        if read_only:
            assert r.returncode == 0, r.stderr
        for p in ((w,) if read_only else (r, w)):
            assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
            assert "another process has it open (" in p.stderr and f"PID {holder.pid}: a transform, a notebook?); " \
                "let it finish or close it, and run again" in p.stderr


def test_status_of_an_existing_ohdsi_cdm_medlake_did_not_create(tmp_path):
    """A v5.3 CDM created by other tools (no medlake record): status reads the version and counts, and does not ask
    for `medlake init` (which would write to that database)."""
    from medlake.cdm import model
    from medlake.engines import open_engine

    eng = open_engine(f"duckdb:{tmp_path / 'ohdsi.duckdb'}")
    for t in model.load("5.3").tables:
        eng.create_table(t)
    eng.execute("INSERT INTO person (person_id, gender_concept_id, year_of_birth, race_concept_id, "
                "ethnicity_concept_id) VALUES (1, 8507, 1980, 0, 0)")
    eng.close()
    r = run("--store", f"duckdb:{tmp_path / 'ohdsi.duckdb'}", "status", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "OMOP v5.3 (from visit_occurrence.admitting_source_concept_id" in r.stdout and "init" not in r.stdout
    assert "person" in r.stdout
    assert "vocabulary not loaded" in " ".join(r.stdout.split())
    eng = open_engine(f"duckdb:{tmp_path / 'ohdsi.duckdb'}")
    assert "medlake_info" not in eng.tables()  # nothing written
    # its concepts imported without their VOCABULARY file: loaded, its version unknown (not "not loaded")
    eng.execute("INSERT INTO concept VALUES (8507, 'MALE', 'Gender', 'Gender', 'Gender', 'S', 'M', DATE '1970-01-01', "
                "DATE '2099-12-31', NULL)")
    eng.close()
    r = run("--store", f"duckdb:{tmp_path / 'ohdsi.duckdb'}", "status", cwd=tmp_path)
    assert "vocabulary 1 concept(s), its version not recorded (no vocabulary row 'None')" in " ".join(r.stdout.split())


def test_bad_config_names_file_and_reason(tmp_path):
    (tmp_path / "medlake.toml").write_text('[store]\ncdm_version = "7"\n')
    r = run("status", cwd=tmp_path)
    assert r.returncode == 1 and "medlake.toml" in r.stderr and "cdm_version" in r.stderr


def test_every_command_has_help(tmp_path):
    for args in (["--help"], ["init", "--help"], ["vocab", "--help"], ["vocab", "load", "--help"],
                 ["status", "--help"]):
        r = run(*args, cwd=tmp_path)
        assert r.returncode == 0 and "Usage" in r.stdout, args


def test_a_usage_error_is_one_line_and_exit_2(tmp_path):
    """A wrong option or command: one `error:` line naming it and the help to read (not a box), exit 2; flags show
    no value in help (typer 0.29 wrote `--full <bool>`)."""
    for args, said in ((["quality", "run", "--bogus"], "error: No such option: --bogus"),
                       (["quality", "run", "--fail-on", "150"], "error: Invalid value for '--fail-on': '150' is not a "
                                                                "percent from 0 to 100"),
                       (["nosuch"], "error: No such command 'nosuch'.")):
        r = run(*args, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.startswith(said) and r.stderr.count("\n") == 1, (args, r.stderr)
        assert "--help" in r.stderr and "╭" not in r.stderr
    r = run("quality", "run", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "--full " in r.stdout and "<bool>" not in r.stdout
