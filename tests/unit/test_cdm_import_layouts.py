"""`medlake cdm import` of the table layouts Spark leaves in a warehouse: Hive partition folders (`partitionBy`), a
Delta table (`_delta_log/`, part files it removed kept until VACUUM), and a table emptied at the site (a folder without
data files). Written with pyarrow as Spark writes them (no Spark needed)."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medlake.cdm import importer
from medlake.engines import open_engine


def _measurement(ids: list[int], **more) -> pa.Table:
    """Measurement rows as a part file of `partitionBy(...)` holds them: the partition columns are not in it."""
    n = len(ids)
    return pa.table({"measurement_id": ids, "person_id": [1] * n, "measurement_concept_id": [0] * n,
                     "measurement_date": pa.array([dt.date(2020, 3, 1)] * n), **more})


def _part(folder: Path, table: pa.Table, name: str = "part-00000-abc.c000.snappy.parquet") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name)
    (folder / f".{name}.crc").write_bytes(b"\0")
    return folder / name


def _count(eng, table: str) -> int:
    return eng.query(f"SELECT count(*) AS n FROM {table}").column(0)[0].as_py()


def test_import_reads_hive_partition_folders_with_their_values(tmp_path):
    """`measurement/measurement_type_concept_id=32856/measurement_date_year=2020/part-….parquet`: every part file is
    read (they were left out: 0 rows, no word); a partition column that is a CDM field takes its value from the folder
    name (escaped as Hive does: `10%3A30%3A00`; `__HIVE_DEFAULT_PARTITION__` empty, so a required field's rows are
    set aside); one that is no field (Spark's derived year) is left out and counted, the rows loaded."""
    cdm = tmp_path / "cdm"
    m = cdm / "measurement"
    _part(m / "measurement_type_concept_id=32856" / "measurement_date_year=2020", _measurement([1, 2]))
    _part(m / "measurement_type_concept_id=32817" / "measurement_date_year=2021", _measurement([3]))
    bad_part = _part(m / "measurement_type_concept_id=__HIVE_DEFAULT_PARTITION__" / "measurement_date_year=2021",
                     _measurement([4]))
    (m / "_SUCCESS").write_text("")
    _part(cdm / "observation" / "OBSERVATION_DATETIME=2020-01-02 10%3A30%3A00",
          pa.table({"observation_id": [7], "person_id": [1], "observation_concept_id": [0],
                    "observation_date": pa.array([dt.date(2020, 1, 2)]), "observation_type_concept_id": [32817]}))
    eng = open_engine("duckdb::memory:")
    aside = []
    report = importer.import_folder(eng, cdm, "5.4", set_aside=lambda files, bad: aside.extend(bad))
    assert {t: (r.rows, r.bad) for t, r in report.items()} == {"measurement": (3, 1), "observation": (1, 0)}
    got = eng.query("SELECT measurement_id, measurement_type_concept_id FROM measurement ORDER BY 1").to_pylist()
    assert [tuple(r.values()) for r in got] == [(1, 32856), (2, 32856), (3, 32817)]
    assert eng.query("SELECT observation_datetime FROM observation").column(0).to_pylist() == [
        dt.datetime(2020, 1, 2, 10, 30)]
    [b] = aside
    assert (b.path, b.line, b.field, b.reason) == (bad_part, 1, "measurement_type_concept_id", "missing_mandatory")
    assert json.loads(b.raw)["measurement_id"] == 4  # the row as read, kept in quarantine
    n, first = report["measurement"].notes["measurement_date_year", "skipped"]
    assert n == 4 and first.endswith("=32817/measurement_date_year=2021/part-00000-abc.c000.snappy.parquet: row 1")
    assert importer.import_folder(eng, cdm, "5.4")["measurement"].rows == 3  # twice: the same rows
    assert _count(eng, "measurement") == 3


def test_import_refuses_a_sub_folder_of_data_files_that_is_no_partition(tmp_path):
    """Part files in a sub-folder not named column=value would be left out: refused, nothing imported."""
    cdm = tmp_path / "cdm"
    _part(cdm / "measurement", _measurement([1]))
    _part(cdm / "measurement" / "2020", _measurement([2]))
    with pytest.raises(ValueError, match=r"measurement/2020: a sub-folder of data files that is no Hive partition "
                                         r"folder \(column=value\); move its files"):
        importer.import_folder(open_engine("duckdb::memory:"), cdm, "5.4")


def test_import_refuses_a_delta_table_and_leaves_the_store_as_it_was(tmp_path):
    """A Delta table keeps the part files its log removed until VACUUM: reading the folder would read them too
    (duplicated rows). Refused in one line saying what to give instead; the store keeps its rows."""
    cdm = tmp_path / "cdm"
    typed = {"measurement_type_concept_id": [32817, 32817]}
    _part(cdm / "measurement", _measurement([1, 2], **typed))
    eng = open_engine("duckdb::memory:")
    importer.import_folder(eng, cdm, "5.4")
    _part(cdm / "measurement", _measurement([1, 2], **typed), "part-00000-stale.snappy.parquet")  # removed by the log
    (cdm / "measurement" / "_delta_log").mkdir()
    (cdm / "measurement" / "_delta_log" / "00000000000000000001.json").write_text(
        json.dumps({"remove": {"path": "part-00000-stale.snappy.parquet"}}) + "\n")
    for given in (cdm, cdm / "measurement"):  # the folder of tables, or the Delta table's own folder
        with pytest.raises(ValueError, match=r"measurement: a Delta table \(_delta_log/\): which of its part files are "
                                             r"current only its log says.*export the table as Parquet .*\.write\."
                                             r"parquet\(\.\.\.\)\) or give a snapshot folder"):
            importer.import_folder(eng, given, "5.4")
    assert _count(eng, "measurement") == 2


@pytest.mark.parametrize("left", [[], ["_SUCCESS", "._SUCCESS.crc"], ["_SUCCESS", "zero-rows"]])
def test_import_of_a_table_folder_without_rows_empties_the_table(tmp_path, left):
    """A table the site emptied (TRUNCATE, CREATE TABLE, an overwrite with no rows) is a folder with no part files,
    only `_SUCCESS` and `.crc` files, or a part file of no rows: the folder replaces the table, which is then empty
    (it kept last month's rows). A folder named after no table of the version, without data, is still no table."""
    cdm = tmp_path / "cdm"
    death = pa.table({"person_id": [1, 2], "death_date": pa.array([dt.date(2020, 1, 1)] * 2)})
    _part(cdm / "death", death)
    _part(cdm / "measurement", _measurement([1], measurement_type_concept_id=[32817]))
    eng = open_engine("duckdb::memory:")
    importer.import_folder(eng, cdm, "5.4")
    assert _count(eng, "death") == 2
    for p in (cdm / "death").iterdir():
        p.unlink()
    for name in left:
        if name == "zero-rows":
            _part(cdm / "death", death.slice(0, 0))
        else:
            (cdm / "death" / name).write_bytes(b"")
    (cdm / "docs").mkdir()  # no table, no data: not read
    (cdm / "episode").mkdir()  # a v5.4 table's empty folder in a v5.3 import: nothing to empty
    report = importer.import_folder(eng, cdm, "5.4")
    assert {t: (r.path.name, r.rows) for t, r in report.items()} == {
        "death": ("death", 0), "episode": ("episode", 0), "measurement": ("measurement", 1)}
    assert _count(eng, "death") == 0
    eng3 = open_engine("duckdb::memory:")
    assert set(importer.import_folder(eng3, cdm, "5.3")) == {"death", "measurement"}


def test_cli_import_says_a_delta_table_in_one_line_and_warns_of_a_partition_column_left_out(tmp_path):
    cdm = tmp_path / "cdm"
    _part(cdm / "measurement" / "measurement_type_concept_id=32856" / "measurement_date_year=2020",
          _measurement([1, 2]))
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}")
    cli = [sys.executable, "-m", "medlake.cli", "cdm", "import", str(cdm)]
    p = subprocess.run(cli, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "measurement/" in p.stdout and "2" in p.stdout
    assert ("warning: measurement.measurement_date_year: not a field of measurement in OMOP CDM v5.4: left out "
            "(2 value(s)") in " ".join(p.stderr.split())
    (cdm / "measurement" / "_delta_log").mkdir()
    p = subprocess.run(cli, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 1 and p.stdout == ""
    [line] = p.stderr.strip().splitlines()
    assert line.startswith(f"error: {cdm / 'measurement'}: a Delta table (_delta_log/)") and "snapshot" in line


def test_a_parquet_file_with_a_corrupt_page_is_named_with_what_to_do(tmp_path):
    """A damaged part file stopped the import with `Corrupt snappy compressed data.` alone: which of the files?"""
    folder = tmp_path / "cdm" / "person"
    folder.mkdir(parents=True)
    n = 20000
    pq.write_table(pa.table({"person_id": list(range(n)), "gender_concept_id": [8507] * n,
                             "year_of_birth": [1980] * n, "race_concept_id": [0] * n,
                             "ethnicity_concept_id": [0] * n}), folder / "part-00001.parquet")
    data = bytearray((folder / "part-00001.parquet").read_bytes())
    for k in range(100, 400):
        data[k] ^= 0x5A
    (folder / "part-00001.parquet").write_bytes(bytes(data))
    with pytest.raises(importer.CdmImportError, match=r"part-00001.parquet: cannot read row group 1 as Parquet "
                       r"\(.+\): the file is damaged; export it again and import again"):
        importer.import_folder(open_engine("duckdb::memory:"), folder.parent, "5.4")


def test_parquet_nanoseconds_are_cut_to_the_microsecond_as_csv_fractions_are(tmp_path):
    """pandas writes timestamp[ns]: a time with a part below the microsecond set its row aside ("not a value of this
    type"); it is cut to the microsecond, as SQL Server's seven digits in a CSV file are (before 1970 too)."""
    import numpy as np

    folder = tmp_path / "cdm"
    folder.mkdir()
    times = np.array(["2019-01-31T10:00:00.123456789", "1969-12-31T23:59:59.999999999", "2019-01-31T10:00:00"],
                     dtype="datetime64[ns]")
    pq.write_table(pa.table({"measurement_id": [1, 2, 3], "person_id": [1, 1, 1], "measurement_concept_id": [1, 1, 1],
                             "measurement_date": pa.array(times), "measurement_datetime": pa.array(times),
                             "measurement_type_concept_id": [32817] * 3}), folder / "measurement.parquet",
                   coerce_timestamps=None, version="2.6")
    [report] = importer.import_folder(eng := open_engine("duckdb::memory:"), folder, "5.4").values()
    assert (report.rows, report.bad) == (3, 0)
    got = eng.query("SELECT measurement_date, measurement_datetime FROM measurement ORDER BY measurement_id").to_pylist()
    assert [tuple(r.values()) for r in got] == [
        (dt.date(2019, 1, 31), dt.datetime(2019, 1, 31, 10, 0, 0, 123456)),
        (dt.date(1969, 12, 31), dt.datetime(1969, 12, 31, 23, 59, 59, 999999)),
        (dt.date(2019, 1, 31), dt.datetime(2019, 1, 31, 10, 0))]


def test_parquet_text_columns_read_empty_and_null_texts_as_csv_files_do(tmp_path):
    """Spark's CSV-to-Parquet without inferSchema writes every column as text: '' in a number set its row aside, and
    the hint "give --null 'NULL'" did nothing for Parquet. '' in a field that is no text is empty, as in CSV, and
    --null applies to Parquet text columns; '' in a text field stays an empty text (as a quoted "" in CSV)."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    pq.write_table(pa.table({"person_id": ["1", "2", "3"], "gender_concept_id": ["8507"] * 3,
                             "year_of_birth": ["1980", "1981", "1982"], "month_of_birth": ["1", "NULL", " "],
                             "race_concept_id": ["0"] * 3, "ethnicity_concept_id": ["0"] * 3,
                             "person_source_value": ["a", "NULL", ""]}), folder / "person.parquet")
    aside = []
    [report] = importer.import_folder(open_engine("duckdb::memory:"), folder, "5.4",
                                      set_aside=lambda f, b: aside.extend(b)).values()
    assert (report.rows, report.bad) == (2, 1)
    assert "give --null 'NULL'" in aside[0].detail
    [report] = importer.import_folder(eng := open_engine("duckdb::memory:"), folder, "5.4", nulls=("NULL",)).values()
    assert (report.rows, report.bad) == (3, 0)
    got = eng.query("SELECT month_of_birth, person_source_value FROM person ORDER BY person_id").to_pylist()
    assert [tuple(r.values()) for r in got] == [(1, "a"), (None, None), (None, "")]
