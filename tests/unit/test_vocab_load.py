import shutil

import pytest

from medlake.cdm import store, vocab

HEAD = "concept_id\tconcept_name\tdomain_id\tvocabulary_id\tconcept_class_id\tstandard_concept\tconcept_code\t" \
       "valid_start_date\tvalid_end_date\tinvalid_reason\n"


def write_vocab(folder, concepts, version="v5.0 01-JAN-24"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "CONCEPT.csv").write_text(HEAD + "".join("\t".join(map(str, r)) + "\n" for r in concepts),
                                        encoding="utf-8")
    (folder / "VOCABULARY.csv").write_text(
        "vocabulary_id\tvocabulary_name\tvocabulary_reference\tvocabulary_version\tvocabulary_concept_id\n"
        f"None\tOMOP Standardized Vocabularies\tOMOP generated\t{version}\t44819096\n", encoding="utf-8")
    return folder


ROWS = [
    (8507, "MALE", "Gender", "Gender", "Gender", "S", "M", "19700101", "20991231", ""),
    (45756805, 'Pediatric "quoted" name', "Provider", "ABMS", "Specialty", "S", "NA", "19700101", "20991231", ""),
    (201826, "Type 2 diabetes mellitus", "Condition", "SNOMED", "Disorder", "S", "44054006", "19700101",
     "20991231", ""),
]


def test_loads_strictly_and_keeps_na_as_text(duck, tmp_path):
    store.init(duck)
    report = vocab.load(duck, write_vocab(tmp_path / "v1", ROWS))
    assert report.files == {"vocabulary": 1, "concept": 3} and report.verified
    assert report.version == "v5.0 01-JAN-24"
    rows = duck.query("SELECT concept_id, concept_name, concept_code, standard_concept, invalid_reason, "
                      "valid_start_date FROM concept ORDER BY concept_id").to_pylist()
    by_id = {r["concept_id"]: r for r in rows}
    assert by_id[45756805]["concept_code"] == "NA"  # the text "NA" stays text
    assert by_id[45756805]["concept_name"] == 'Pediatric "quoted" name'  # Athena does not quote
    assert by_id[8507]["invalid_reason"] is None and str(by_id[8507]["valid_start_date"]) == "1970-01-01"


@pytest.mark.parametrize("bad,where", [
    ((1, "x", "Gender", "Gender", "Gender", "S", "M", "1970-01-01", "20991231", ""), "line 3, field valid_start_date"),
    ((1, "x", "Gender", "Gender", "Gender", "S", "M", "19701301", "20991231", ""), "line 3, field valid_start_date"),
    (("12a", "x", "Gender", "Gender", "Gender", "S", "M", "19700101", "20991231", ""), "line 3, field concept_id"),
    ((1, "", "Gender", "Gender", "Gender", "S", "M", "19700101", "20991231", ""), "line 3, field concept_name"),
    ((1, "x", "Gender", "Gender"), "line 3: expected 10 tab-separated fields, found 4"),
])
def test_malformed_row_stops_the_load_and_leaves_the_store_as_it_was(duck, tmp_path, bad, where):
    store.init(duck)
    vocab.load(duck, write_vocab(tmp_path / "good", ROWS))
    folder = write_vocab(tmp_path / "bad", [ROWS[0], bad, ROWS[2]], version="v5.0 NEWER")
    with pytest.raises(vocab.VocabError) as e:
        vocab.load(duck, folder)
    assert "CONCEPT.csv" in str(e.value) and where in str(e.value)
    assert duck.query("SELECT count(*) FROM concept").column(0)[0].as_py() == 3
    assert duck.query("SELECT vocabulary_version FROM vocabulary").column(0)[0].as_py() == "v5.0 01-JAN-24"


def test_a_concept_id_repeated_stops_the_load_and_leaves_the_store_as_it_was(duck, tmp_path):
    """Two rows of one concept_id (two releases concatenated, a file edited by hand) would map every record coded
    with it twice: the load stops, naming the id, and the store keeps the release it had."""
    store.init(duck)
    vocab.load(duck, write_vocab(tmp_path / "good", ROWS))
    twice = (201826, "Type 2 diabetes", "Condition", "SNOMED", "Disorder", "S", "44054006", "19700101", "20991231", "")
    with pytest.raises(vocab.VocabError) as e:
        vocab.load(duck, write_vocab(tmp_path / "bad", [*ROWS, twice], version="v5.0 NEWER"))
    assert str(e.value).startswith("CONCEPT.csv: concept_id 201826 (2 rows) repeated; CONCEPT has one row per")
    assert duck.query("SELECT count(*) FROM concept").column(0)[0].as_py() == 3
    assert duck.query("SELECT vocabulary_version FROM vocabulary").column(0)[0].as_py() == "v5.0 01-JAN-24"


@pytest.mark.parametrize("line,where", [
    (b"1\tCaf\xe9\tGender\tGender\tGender\tS\tM\t19700101\t20991231\t\n", "line 3, field concept_name: byte 6"),
    (b"1\tCaf\xe9\tGender\n", "line 3, field concept_name: byte 6"),  # and the wrong number of fields: pyarrow fails before us
    (HEAD.replace("concept_name", "concept_n\xe4me").encode("latin-1"), "the header: byte 21"),
])
def test_bytes_that_are_not_utf8_stop_the_load_in_one_line(duck, tmp_path, capfd, line, where):
    """A file a spreadsheet saved in its own encoding; before, a header raised UnicodeDecodeError, a short line
    printed Python's "Exception ignored" traceback and pyarrow's parse error, a field pyarrow's column number."""
    store.init(duck)
    folder = write_vocab(tmp_path / "bad", ROWS)
    lines = (folder / "CONCEPT.csv").read_bytes().splitlines(keepends=True)
    at = 0 if line.startswith(b"concept_id") else 2
    (folder / "CONCEPT.csv").write_bytes(b"".join(lines[:at] + [line] + lines[at + 1:]))
    with pytest.raises(vocab.VocabError) as e:
        vocab.load(duck, folder)
    assert str(e.value).startswith(f"CONCEPT.csv: {where}") and "is not UTF-8" in str(e.value)
    assert "Exception ignored" not in capfd.readouterr().err


def test_rows_and_lines_that_differ_say_which_line(duck, tmp_path):
    store.init(duck)
    folder = write_vocab(tmp_path / "v", ROWS)
    lines = (folder / "CONCEPT.csv").read_bytes().splitlines(keepends=True)
    (folder / "CONCEPT.csv").write_bytes(b"".join(lines[:2] + [b"\n"] + lines[2:]))  # an empty line 3
    with pytest.raises(vocab.VocabError, match=r"^CONCEPT.csv: 4 rows in the file but 3 loaded \(line 3 is empty\); "
                                               "download the file again"):
        vocab.load(duck, folder)


def test_a_nul_in_a_name_is_left_out(duck, tmp_path):
    """PostgreSQL cannot store a NUL; every engine loads the name without it."""
    store.init(duck)
    vocab.load(duck, write_vocab(tmp_path / "v", [(8507, "MA\x00LE", *ROWS[0][2:])]))
    assert duck.query("SELECT concept_name FROM concept").column(0).to_pylist() == ["MALE"]


def test_newer_release_replaces_older(duck, tmp_path):
    store.init(duck)
    vocab.load(duck, write_vocab(tmp_path / "v1", ROWS))
    newer = ROWS[:1] + [(4000000, "New concept", "Condition", "SNOMED", "Disorder", "S", "1", "20240101",
                         "20991231", "")]
    report = vocab.load(duck, write_vocab(tmp_path / "v2", newer, version="v5.0 01-JUL-24"))
    assert report.version == "v5.0 01-JUL-24"
    ids = duck.query("SELECT concept_id FROM concept ORDER BY 1").column(0).to_pylist()
    assert ids == [8507, 4000000]


def test_a_reload_keeps_the_sites_own_concepts(duck, tmp_path):
    store.init(duck)
    vocab.load(duck, write_vocab(tmp_path / "v1", ROWS))
    duck.execute("INSERT INTO concept VALUES (2000000007, 'GLU-F', 'Measurement', 'H1LIS', 'Undefined', NULL, "
                 "'1000', DATE '1970-01-01', DATE '2099-12-31', NULL)")
    duck.execute("INSERT INTO vocabulary VALUES ('H1LIS', 'Site-local codes H1LIS', 'medlake map', NULL, 0)")
    report = vocab.load(duck, write_vocab(tmp_path / "v2", ROWS, version="v5.0 01-JUL-24"))
    assert report.verified and report.kept == {"vocabulary": 1, "concept": 1}
    assert duck.query("SELECT concept_id FROM concept ORDER BY 1").column(0).to_pylist() == [
        8507, 201826, 45756805, 2000000007]
    assert sorted(duck.query("SELECT vocabulary_id FROM vocabulary").column(0).to_pylist()) == ["H1LIS", "None"]


def test_large_file_is_streamed_in_batches(duck, tmp_path, monkeypatch):
    monkeypatch.setattr(vocab, "BLOCK", 4096)
    rows = [(i, f"concept {i}", "Condition", "SNOMED", "Disorder", "S", str(i), "19700101", "20991231", "")
            for i in range(1, 5001)]
    folder = write_vocab(tmp_path / "big", rows)
    batches = list(vocab.read_batches(folder / "CONCEPT.csv", __import__("medlake.cdm", fromlist=["load"])
                                      .load("5.4").table("concept")))
    assert len(batches) > 10 and sum(b.num_rows for _, b in batches) == 5000
    assert batches[1][0] == 2 + batches[0][1].num_rows  # first line number of each batch is tracked
    store.init(duck)
    assert vocab.load(duck, folder).loaded["concept"] == 5000


def test_demo_vocabulary_loads_and_is_labelled(duck):
    store.init(duck)
    report = vocab.load(duck, vocab.demo_vocabulary_dir())
    assert report.verified and "demo" in report.version.lower()
    assert report.loaded["concept"] > 100
    gender = duck.query("SELECT concept_name FROM concept WHERE concept_id = 8532").column(0).to_pylist()
    assert gender == ["FEMALE"]


def test_missing_folder_or_concept_file_is_a_clear_error(duck, tmp_path):
    store.init(duck)
    with pytest.raises(vocab.VocabError, match="not a folder"):
        vocab.load(duck, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(vocab.VocabError, match="no CONCEPT.csv"):
        vocab.load(duck, tmp_path / "empty")
    shutil.rmtree(tmp_path / "empty")
