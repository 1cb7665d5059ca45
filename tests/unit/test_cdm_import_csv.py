"""`medlake cdm import` of CSV files as exports write them where they go wrong: blank lines before the header,
files not in UTF-8, quotes not closed, Athena vocabulary files, re-imports into a store that holds data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medlake.cdm import importer
from medlake.engines import open_engine

PERSON = "person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id"


def _rows(eng, sql: str) -> list[tuple]:
    return [tuple(r.values()) for r in eng.query(sql).to_pylist()]


def _cli_import(tmp_path: Path, folder: Path) -> subprocess.CompletedProcess:
    """`medlake cdm import FOLDER` into the store tmp_path/s.duckdb, as a person runs it (its warnings on stderr)."""
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}", COLUMNS="300")
    return subprocess.run([sys.executable, "-m", "medlake.cli", "cdm", "import", str(folder)], env=env, cwd=tmp_path,
                          capture_output=True, text=True)


@pytest.mark.parametrize("blank", ["\r\n", "\n\n", " \r\n\t\r\n", "\r\n\ufeff"])
def test_blank_lines_before_the_header_are_skipped_and_lines_still_counted_as_the_file_has_them(tmp_path, blank):
    """SQL*Plus SPOOL and `echo > f; bcp ... >> f` write a blank first line: the rows below it are the table's (they
    read as an empty table before, and a re-import emptied the store's), and a bad row's line is the file's."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    lines = blank.count("\n")  # (a byte-order mark after them: a blank line put before a UTF-8 file's)
    (folder / "person.csv").write_text(blank + PERSON + "\r\n1,8507,1980,0,0\r\n2,8507,19x0,0,0\r\n3,8507,1982,0,0\r\n",
                                       newline="")
    aside = []
    report = importer.import_folder(eng := open_engine("duckdb::memory:"), folder, "5.4",
                                    set_aside=lambda f, b: aside.extend(b))
    assert (report["person"].rows, report["person"].bad) == (2, 1)
    assert _rows(eng, "SELECT person_id, year_of_birth FROM person ORDER BY 1") == [(1, 1980), (3, 1982)]
    [bad] = aside
    assert (bad.line, bad.field) == (lines + 3, "year_of_birth")
    with pytest.raises(importer.CdmImportError, match=rf"person.csv:{lines + 3}: field year_of_birth: cannot read"):
        importer.import_folder(open_engine("duckdb::memory:"), folder, "5.4", strict=True)


def test_a_file_of_blank_lines_alone_is_an_empty_table(tmp_path):
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "person.csv").write_text("\n\r\n  \n")
    assert importer.import_folder(open_engine("duckdb::memory:"), folder, "5.4")["person"].rows == 0


def test_a_file_not_in_utf8_beyond_strict_or_max_bad_rows_is_said_with_its_file_line_field_and_the_option(tmp_path):
    """A latin-1 export: --strict, or more such rows than --max-bad-rows, stopped with `Invalid UTF8 payload`."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    rows = [PERSON + ",person_source_value"] + [f"{i},8507,1980,0,0,Müller{i}" for i in range(1, 11)]
    (folder / "person.csv").write_text("\n".join(rows) + "\n", encoding="latin-1")
    said = (r"person.csv:2: field person_source_value: byte 2 \(b'\\xfclle'\) is not UTF-8; give the file's encoding "
            r"with --encoding \(e.g. cp1252, latin-1\)")
    with pytest.raises(importer.CdmImportError, match=said):
        importer.import_folder(open_engine("duckdb::memory:"), folder, "5.4", strict=True)
    with pytest.raises(importer.CdmImportError, match=r"person.csv: more than 3 rows cannot be imported \(the first: .*"
                       + said):
        importer.import_folder(open_engine("duckdb::memory:"), folder, "5.4", max_bad=3)
    eng = open_engine("duckdb::memory:")
    assert importer.import_folder(eng, folder, "5.4", max_bad=10)["person"].bad == 10
    assert importer.import_folder(eng, folder, "5.4", encoding="latin-1")["person"].rows == 10
    assert _rows(eng, "SELECT person_source_value FROM person WHERE person_id = 1") == [("Müller1",)]


def test_cli_reimport_says_which_tables_not_in_the_folder_keep_the_rows_of_before(tmp_path):
    """Next month's export with PERSON.csv alone: the store's death and cdm_source rows of the earlier import are kept
    (as before), and said so, not called empty."""
    first, second = tmp_path / "jan", tmp_path / "feb"
    for folder in (first, second):
        folder.mkdir()
        (folder / "person.csv").write_text(PERSON + "\n1,8507,1980,0,0\n2,8507,1981,0,0\n")
    (first / "death.csv").write_text("person_id,death_date,death_type_concept_id\n1,2020-01-01,32817\n")
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}", COLUMNS="300")
    cli = [sys.executable, "-m", "medlake.cli", "cdm", "import"]
    p = subprocess.run(cli + [str(first)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and "warning" not in p.stderr, p.stderr
    p = subprocess.run(cli + [str(second)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out, said = " ".join(p.stdout.split()), " ".join(p.stderr.split())
    empty = out.split("not in the folder, so empty in the store:")[1]  # (the last the import prints)
    assert "death" not in empty and "measurement" in empty
    assert (f"warning: not in the folder, kept as the store held them before this import (imported from "
            f"{first.resolve()}): death 1 row; the store now mixes them with this import's tables: to empty one, put "
            "an empty file of it (e.g. death.csv) in the folder and import again") in said
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    assert _rows(eng, "SELECT count(*) FROM death") == [(1,)]


NOTE = ("note_id,person_id,note_date,note_type_concept_id,note_class_concept_id,note_title,note_text,"
        "encoding_concept_id,language_concept_id\n")


@pytest.mark.parametrize("between", [0, 2])
def test_a_quote_not_closed_accounts_for_every_line_the_row_where_it_closes_too(tmp_path, between):
    """Note 1's title opens a quote that note 4's `5" tube` closes: notes 2 to 4 are inside its value. Note 4, whose
    line the quote closes in, was neither loaded nor counted (loaded + set aside + swallowed fell one short of the
    file); with no whole row between them (`between` 0) the two rows were read as one, and loaded."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    rows = ['1,1,2019-01-31,32817,0,"Unclosed title,text1,0,0']
    rows += [f"{i},1,2019-01-31,32817,0,T{i},text{i},0,0" for i in range(2, 2 + between)]
    rows += [f'{2 + between},1,2019-01-31,32817,0,5" tube,text,0,0', f"{3 + between},1,2019-01-31,32817,0,T,t,0,0"]
    (folder / "note.csv").write_text(NOTE + "\n".join(rows) + "\n")
    got = []
    [report] = importer.import_folder(open_engine("duckdb::memory:"), folder, "5.4",
                                      set_aside=lambda f, b: got.extend(b)).values()
    assert (report.rows, report.bad) == (1, 1)
    assert report.notes == {("note_title", "swallowed"): (between + 1, f"{folder / 'note.csv'}:2")}
    assert report.rows + report.bad + report.notes["note_title", "swallowed"][0] == len(rows)
    [b] = got
    assert (b.line, b.reason, b.field) == (2, "unclosed_quote", "note_title")
    assert f"runs over {between + 2} lines, {between + 1} of them a row of the file" in b.detail


def test_a_note_whose_text_runs_over_lines_with_commas_loads(tmp_path):
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "note.csv").write_text(NOTE + '1,1,2020-01-01,32817,0,"Labs, today","Na 140, K 4.1, Cl 101\n'
                                     'plan: recheck, call, write, see, ask, rest\nok",0,0\n2,1,2020-01-01,32817,0,t,x,0,0\n')
    [report] = importer.import_folder(eng := open_engine("duckdb::memory:"), folder, "5.4").values()
    assert (report.rows, report.bad, report.notes) == (2, 0, {})
    assert _rows(eng, "SELECT note_text FROM note WHERE note_id = 1") == [
        ("Na 140, K 4.1, Cl 101\nplan: recheck, call, write, see, ask, rest\nok",)]


CONCEPT = [("concept_id", "concept_name", "domain_id", "vocabulary_id", "concept_class_id", "standard_concept",
            "concept_code", "valid_start_date", "valid_end_date", "invalid_reason"),
           ("8507", "MALE", "Gender", "Gender", "Gender", "S", "M", "19700101", "20991231", ""),
           ("1002", '"Dry" cough', "Condition", "SNOMED", "Clinical Finding", "S", "222", "19700101", "20991231", ""),
           ("1003", '"Hello world', "Observation", "SNOMED", "Clinical Finding", "S", "333", "19700101", "20991231",
            ""),
           ("1004", "Normal concept A", "Observation", "SNOMED", "Clinical Finding", "S", "444", "19700101",
            "20991231", ""),
           ("1006", 'Pipe 5" tube', "Device", "SNOMED", "Physical Object", "S", "666", "19700101", "20991231", ""),
           ("1007", "Last one", "Observation", "SNOMED", "Clinical Finding", "", "777", "19700101", "20991231", "D")]


def test_athena_vocabulary_files_in_the_folder_are_read_as_vocab_load_reads_them(tmp_path):
    """Athena's CONCEPT.csv (tab-separated, never quoted: a `"` is part of a name) read with CSV quoting lost the
    quotes of `"Dry" cough` and swallowed the concepts after `"Hello world`; it is read as `medlake vocab load` reads
    the same file, and a bad value stops the import naming its file, line and field."""
    from medlake.cdm import store, vocab

    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "CONCEPT.csv").write_text("".join("\t".join(r) + "\n" for r in CONCEPT))
    (folder / "person.csv").write_text(PERSON + "\n1,8507,1980,0,0\n")
    [concept, person] = importer.import_folder(eng := open_engine("duckdb::memory:"), folder, "5.4").values()
    assert (concept.rows, concept.bad, concept.notes, person.rows) == (6, 0, {}, 1)
    sql = "SELECT * FROM concept ORDER BY concept_id"
    loaded = open_engine("duckdb::memory:")
    store.init(loaded, "5.4")
    vocab.load(loaded, folder, "5.4")
    assert _rows(eng, sql) == _rows(loaded, sql)
    assert _rows(eng, "SELECT concept_name FROM concept WHERE concept_id IN (1002, 1003, 1006) ORDER BY 1") == [
        ('"Dry" cough',), ('"Hello world',), ('Pipe 5" tube',)]
    (folder / "CONCEPT.csv").write_text("".join("\t".join(r) + "\n" for r in CONCEPT[:3])
                                        + "1003\tX\tDrug\tRxNorm\tClinical Drug\tS\t1\t1970013\t20991231\t\n")
    with pytest.raises(importer.CdmImportError, match=r"CONCEPT.csv: line 4, field valid_start_date: '1970013' is not "
                       r"a valid date \(expected YYYYMMDD\)"):
        importer.import_folder(open_engine("duckdb::memory:"), folder, "5.4")


def test_a_tab_separated_concept_export_with_iso_dates_is_read_as_csv(tmp_path):
    """A concept table exported from a CDM database with its dates as YYYY-MM-DD is no Athena file: read as the
    other CSV files (quoted values unquoted)."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "concept.tsv").write_text("\t".join(CONCEPT[0]) + "\n"
                                        + '8507\t"MALE"\tGender\tGender\tGender\tS\tM\t1970-01-01\t2099-12-31\t\n')
    [concept] = importer.import_folder(eng := open_engine("duckdb::memory:"), folder, "5.4").values()
    assert (concept.rows, concept.bad) == (1, 0)
    assert _rows(eng, "SELECT concept_name, CAST(valid_start_date AS VARCHAR) FROM concept") == [("MALE", "1970-01-01")]


def test_empty_texts_of_a_file_that_quotes_its_header_and_texts_are_counted_in_a_warning(tmp_path):
    """pandas' to_csv(quoting=QUOTE_NONNUMERIC) writes None as "": loaded as an empty text (present to the quality
    checks), which the import now says per field; a file that does not quote its header is not warned of."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    header = '"' + PERSON.replace(",", '","') + '","person_source_value","gender_source_value"\n'
    (folder / "person.csv").write_text(header + '1,8507,1980,0,0,"a",""\n2,8507,1980,0,0,"",""\n3,8507,19x0,0,0,"",""\n')
    [report] = importer.import_folder(eng := open_engine("duckdb::memory:"), folder, "5.4").values()
    where = f"{folder / 'person.csv'}"
    assert (report.rows, report.bad) == (2, 1)
    assert report.notes == {("person_source_value", "quoted_empty"): (1, f"{where}:3"),
                            ("gender_source_value", "quoted_empty"): (2, f"{where}:2")}
    assert _rows(eng, "SELECT gender_source_value FROM person") == [("",), ("",)]  # (loaded as they are)
    (folder / "person.csv").write_text(PERSON + ',person_source_value\n1,8507,1980,0,0,""\n')
    assert importer.import_folder(eng, folder, "5.4")["person"].notes == {}
    (folder / "person.csv").write_text(header + '1,8507,1980,0,0,"a",""\n')
    p = _cli_import(tmp_path, folder)
    assert p.returncode == 0, p.stderr
    assert (f'warning: person.gender_source_value: 1 value(s) "" (the first: {where}:2), in a file that quotes its '
            "header, as pandas and Python's csv write NULL with QUOTE_ALL or QUOTE_NONNUMERIC: loaded as empty texts, "
            "which the quality checks count as present; if they mean NULL, export them unquoted (pandas: to_csv "
            "without quoting=)") in " ".join(p.stderr.split())


def test_blank_lines_inside_the_file_are_skipped_and_counted_in_the_lines_of_the_rows_after_them(tmp_path):
    """The reader skipped a blank line without counting it: a bad row on line 5 was said to be on line 4. A line of
    delimiters alone (no value in any field) is no blank line: set aside, on its own line."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "person.csv").write_text(PERSON + ",person_source_value\n1,8507,1980,0,0,\"two\n\nlines\"\n\n"
                                       "2,8507,19x0,0,0,a\r\n\r\n3,8507,1982,0,0\n,,,,,\n4,8507,1983,0,0,b\n\n\n",
                                       newline="")
    aside = []
    report = importer.import_folder(eng := open_engine("duckdb::memory:"), folder, "5.4",
                                    set_aside=lambda f, b: aside.extend(b))
    assert (report["person"].rows, report["person"].bad) == (2, 3)
    assert _rows(eng, "SELECT person_id FROM person ORDER BY 1") == [(1,), (4,)]
    assert sorted((b.line, b.reason, b.field) for b in aside) == [
        (6, "invalid", "year_of_birth"), (8, "malformed", None), (9, "missing_mandatory", "person_id")]
    with pytest.raises(importer.CdmImportError, match=r"person.csv:6: field year_of_birth: cannot read"):
        importer.import_folder(open_engine("duckdb::memory:"), folder, "5.4", strict=True)


def test_identical_part_files_have_their_bad_rows_each_in_quarantine_and_a_reimport_reopens_them(tmp_path):
    """Items were keyed on (source, the file's content hash, line): two identical part files gave "2 quarantined" and
    one item. Each file's bad row is its own item; importing the same files again reopens them, not files twice."""
    from medlake.landing.quarantine import Quarantine

    folder = tmp_path / "cdm" / "person"
    folder.mkdir(parents=True)
    for name in ("part-00000.csv", "part-00001.csv"):
        (folder / name).write_text(PERSON + "\n1,8507,1980,0,0\n2,8507,19x0,0,0\n")
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}", MEDLAKE_DATA_DIR=str(tmp_path / "data"),
               COLUMNS="300")
    for _ in range(2):
        p = subprocess.run([sys.executable, "-m", "medlake.cli", "cdm", "import", str(folder.parent)], env=env,
                           cwd=tmp_path, capture_output=True, text=True)
        assert p.returncode == 0 and "2 row(s) could not be imported" in p.stdout, p.stdout + p.stderr
        q = Quarantine(tmp_path / "data" / "landing")
        items = q.items(source="cdm:person", status=None)
        q.close()
        assert sorted((Path(i.file).name, i.line, i.status) for i in items) == [
            ("part-00000.csv", 3, "open"), ("part-00001.csv", 3, "open")]


def test_a_folder_of_files_of_both_cdm_versions_is_said_in_one_line_naming_the_files_of_each(tmp_path):
    """Half-way through a v5.3 to v5.4 migration: --version 5.4 said 'give --version 5.3' (visit_occurrence's
    admitting_source_concept_id), and --version 5.3 said 'give --version 5.4' (episode)."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "person.csv").write_text(PERSON + "\n1,8507,1980,0,0\n")
    (folder / "visit_occurrence.csv").write_text(
        "visit_occurrence_id,person_id,visit_concept_id,visit_start_date,visit_end_date,visit_type_concept_id,"
        "admitting_source_concept_id\n1,1,9201,2019-01-31,2019-02-02,32817,0\n")
    (folder / "episode.csv").write_text("episode_id,person_id,episode_concept_id,episode_start_date,"
                                        "episode_object_concept_id,episode_type_concept_id\n1,1,32533,2019-01-01,0,32817\n")
    said = (r"cdm: files of two OMOP CDM versions: v5.3 visit_occurrence.csv; v5.4 episode.csv: export every table "
            r"of one version \(or move the other's files out of the folder\) and import again")
    for version in ("5.3", "5.4"):
        with pytest.raises(importer.CdmImportError, match=said):
            importer.import_folder(open_engine("duckdb::memory:"), folder, version)


def test_a_quote_inside_a_quoted_value_that_is_not_doubled_is_counted_in_a_warning_with_its_line(tmp_path):
    """review-import #2: the reader goes on past a quote that is not doubled (`"a"b` read as `ab`, MySQL's `\\"`
    mangled) and said nothing; a quote inside a value that is not quoted (`5" tube`) is kept and not counted, nor are
    doubled quotes."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    header = PERSON + ",person_source_value,gender_source_value\n"
    (folder / "person.csv").write_text(header + '1,8507,1980,0,0,"a"b,x\n2,8507,1981,0,0,5" tube,"He said ""hi"""\n'
                                       '3,8507,1982,0,0,"two\nlines",y\n4,8507,1983,0,0,"5\\" tube",z\n')
    [report] = importer.import_folder(eng := open_engine("duckdb::memory:"), folder, "5.4").values()
    assert report.rows == 4 and report.notes == {("", "stray_quote"): (2, f"{folder / 'person.csv'}:2")}
    assert _rows(eng, "SELECT person_source_value FROM person ORDER BY person_id") == [
        ("ab",), ('5" tube',), ("two\nlines",), ('5\\ tube"',)]  # (read as the reader reads them: said, not changed)
    (folder / "person.csv").write_text(header + '1,8507,1980,0,0,"a ""b""",x\n')
    assert importer.import_folder(eng, folder, "5.4")["person"].notes == {}
    (folder / "person.csv").write_text(header + '1,8507,1980,0,0,"a"b,x\n')
    p = _cli_import(tmp_path, folder)
    assert p.returncode == 0, p.stderr
    assert (f"warning: person: 1 line(s) where a quoted value holds a quote that is not doubled (the first: "
            f"{folder / 'person.csv'}:2)") in " ".join(p.stderr.split())


def test_a_file_that_begins_with_a_utf8_byte_order_mark_is_read_as_utf8_whatever_encoding_the_folder_has(tmp_path):
    """review-import #13: --encoding cp1252 for a folder of Windows exports, one of them saved as UTF-8 with a BOM:
    its first column was `ï»¿person_id`, no field of the table, and its names were mangled."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "person.csv").write_bytes(b"\xef\xbb\xbf" + (PERSON + ",person_source_value\n1,8507,1980,0,0,Zoë\n").encode())
    (folder / "death.csv").write_bytes("person_id,death_date,death_type_concept_id,cause_source_value\n"
                                       "1,2020-01-31,32817,Müller\n".encode("cp1252"))
    report = importer.import_folder(eng := open_engine("duckdb::memory:"), folder, "5.4", encoding="cp1252")
    assert {k: (r.rows, r.bad) for k, r in report.items()} == {"person": (1, 0), "death": (1, 0)}
    assert _rows(eng, "SELECT p.person_source_value, d.cause_source_value FROM person p JOIN death d USING "
                      "(person_id)") == [("Zoë", "Müller")]
