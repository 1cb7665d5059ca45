"""The spec suite for the foundation: the same CDM, the same data, on every engine."""
from __future__ import annotations

import datetime as dt
import random

import pyarrow as pa
import pytest

from medlake.cdm import ddl, model, store
from medlake.engines import EngineError, open_engine, store_url

# What each engine must report for each logical kind of the spec.
EXPECTED = {
    "duckdb": {"bigint": "BIGINT", "integer": "INTEGER", "float": "DOUBLE", "date": "DATE",
               "datetime": "TIMESTAMP", "varchar": "VARCHAR"},
    "postgres": {"bigint": "BIGINT", "integer": "INTEGER", "float": "DOUBLE PRECISION", "date": "DATE",
                 "datetime": "TIMESTAMP WITHOUT TIME ZONE", "varchar": ("CHARACTER VARYING", "TEXT")},
    "spark": {"bigint": "BIGINT", "integer": "INT", "float": "DOUBLE", "date": "DATE",
              "datetime": "TIMESTAMP_NTZ", "varchar": "STRING"},
}


def test_the_url_a_store_is_known_by_is_known_without_opening_it(engine, tmp_path, monkeypatch):
    """`quality runs` and `quality diff` find a store's runs by the URL it names itself by once open, without opening
    it (no lock, connection or Spark session): a relative path and options as given on the command line."""
    monkeypatch.chdir(tmp_path)
    if engine.name == "duckdb":
        other = open_engine("duckdb:sub/other.duckdb?memory_limit=1GB")
        assert (store_url("duckdb:sub/other.duckdb?memory_limit=1GB"), store_url("duckdb:")) == (other.url,
                                                                                               "duckdb::memory:")
        other.close()
    assert store_url("spark:warehouse" if engine.name == "spark" else engine.url) == engine.url
    with pytest.raises(EngineError, match="unknown store 'mysql://x': use duckdb:PATH"):
        store_url("mysql://x")


def test_a_mistyped_spark_store_is_said_not_made_by_a_command_that_reads(tmp_path):
    """`medlake quality run --store spark:/data/omp` made the folder and then found no CDM in it; as for DuckDB, a
    command that only reads says there is no store there (before any Spark session starts)."""
    with pytest.raises(EngineError, match=r"no Spark store at .*omp: run `medlake init` there"):
        open_engine(f"spark:{tmp_path / 'omp'}", read_only=True)
    assert not (tmp_path / "omp").exists()


@pytest.mark.spark
def test_a_spark_store_is_not_made_over_tables_another_tool_wrote(tmp_path):
    """A site's CDM as Spark wrote it (Parquet part files, no medlake definition): `medlake init` there declared
    medlake's types over the site's files (every read of a column of another type then failed) and wrote into the
    site's folders; it is refused before any table is made, saying to import the CDM."""
    import pyarrow.parquet as pq

    site = tmp_path / "omop"
    (site / "person").mkdir(parents=True)
    pq.write_table(pa.table({"person_id": pa.array([1], pa.int64())}), site / "person" / "part-00000.parquet")
    eng = open_engine(f"spark:{site}")
    try:
        with pytest.raises(EngineError, match=r"holds tables medlake did not write \(person: Spark or another tool "
                                              r"wrote them\): .*medlake cdm import"):
            store.init(eng, "5.4")
    finally:
        eng.close()
    assert sorted(p.name for p in site.iterdir()) == ["person"]
    assert sorted(p.name for p in (site / "person").iterdir()) == ["part-00000.parquet"]


@pytest.mark.parametrize("version", ["5.4", "5.3"])
def test_cdm_created_exactly_per_spec(engine, version):
    store.init(engine, version)
    cdm = model.load(version)
    expected_tables = {t.name for t in cdm.tables} | {store.INFO_TABLE}
    assert set(engine.tables()) == expected_tables
    lengths = {}
    if engine.name == "postgres":
        rows = engine.query(
            "SELECT table_name, column_name, character_maximum_length AS n FROM information_schema.columns "
            "WHERE table_schema = current_schema()").to_pylist()
        lengths = {(r["table_name"], r["column_name"]): r["n"] for r in rows}
    checked = 0
    for table in cdm.tables:
        cols = engine.columns(table.name)
        assert [c.name for c in cols] == table.field_names, table.name
        for f, c in zip(table.fields, cols):
            want = EXPECTED[engine.name][f.kind]
            assert c.type in (want if isinstance(want, tuple) else (want,)), (table.name, f.name, c.type)
            assert c.nullable == (not f.required), (table.name, f.name)
            if engine.name == "postgres" and f.kind == "varchar":
                assert lengths[(table.name, f.name)] == f.length, (table.name, f.name)
            checked += 1
    assert checked == {"5.4": 432, "5.3": 396}[version]


def test_init_is_idempotent_and_keeps_its_version(engine):
    assert len(store.init(engine, "5.4")) == 39
    assert store.init(engine, "5.4") == []
    with pytest.raises(ValueError, match="holds OMOP CDM v5.4"):
        store.init(engine, "5.3")


def sample_rows(table: model.Table, n: int, seed: int) -> pa.Table:
    """Rows of every type with edge values: 64-bit ids, extremes of dates, microseconds, Chinese text, ''."""
    rnd = random.Random(seed)
    cols = {}
    for f in table.fields:
        vals = []
        for i in range(n):
            if not f.required and i == n - 1:
                vals.append(None)
                continue
            if f.kind == "bigint":
                vals.append(rnd.choice([2**62 + i, 1, 9_007_199_254_740_993 + i]))
            elif f.kind == "integer":
                vals.append(rnd.choice([2**31 - 1, -(2**31), 0, 8507]))
            elif f.kind == "float":
                vals.append(rnd.choice([0.1, -1e-9, 123456.789, 5.6]))
            elif f.kind == "date":
                vals.append(rnd.choice([dt.date(1900, 1, 1), dt.date(2099, 12, 31), dt.date(2024, 2, 29)]))
            elif f.kind == "datetime":
                vals.append(dt.datetime(2024, 2, 29, 23, 59, 59, rnd.randrange(1, 999_999)))
            else:
                limit = f.length or 200
                vals.append(rnd.choice(["血糖(空腹)", "GLU-F", "", "O'Brien \"x\"\t|", "NA"])[:limit])
        cols[f.name] = pa.array(vals, ddl.ARROW_TYPES[f.kind])
    return pa.Table.from_pydict(cols, schema=ddl.arrow_schema(table))


def test_arrow_round_trip_of_every_cdm_table(engine):
    store.init(engine, "5.4")
    for i, table in enumerate(model.load("5.4").tables):
        data = sample_rows(table, 3, seed=i)
        assert engine.load_arrow(table.name, data) == 3
        back = engine.read_arrow(table.name)
        assert back.schema.names == data.schema.names
        key = table.field_names
        got = sorted(back.cast(ddl.arrow_schema(table)).to_pylist(), key=repr)
        want = sorted(data.to_pylist(), key=repr)
        assert got == want, table.name
        assert all(back.column(f.name).type == ddl.ARROW_TYPES[f.kind] for f in table.fields), (table.name, key)


def test_required_field_refuses_null(engine):
    store.init(engine, "5.4")
    with pytest.raises(EngineError):
        engine.load_arrow("person", pa.table({"person_id": pa.array([1], pa.int64()),
                                              "gender_concept_id": pa.array([None], pa.int32())}))


def test_transaction_rolls_back_on_error(engine):
    store.init(engine, "5.4")
    loc = pa.table({"location_id": pa.array([1, 2], pa.int64()), "city": ["Beijing", "Boston"]})
    engine.load_arrow("location", loc)
    with pytest.raises(RuntimeError, match="boom"):
        with engine.transaction():
            engine.load_arrow("location", pa.table({"location_id": pa.array([3], pa.int64()), "city": ["x"]}))
            engine.execute("INSERT INTO care_site (care_site_id, care_site_name) VALUES (7, 'ward')")
            raise RuntimeError("boom")
    assert sorted(engine.query("SELECT location_id FROM location").column(0).to_pylist()) == [1, 2]
    assert engine.query("SELECT count(*) AS n FROM care_site").column(0)[0].as_py() == 0
    # a failing statement inside the transaction also leaves everything as it was
    with pytest.raises(EngineError):
        with engine.transaction():
            engine.load_arrow("location", pa.table({"location_id": pa.array([4], pa.int64())}))
            engine.load_arrow("person", pa.table({"person_id": pa.array([1], pa.int64())}))
    assert engine.query("SELECT count(*) AS n FROM location").column(0)[0].as_py() == 2
    # and a transaction that ends well keeps its work
    with engine.transaction():
        engine.load_arrow("location", pa.table({"location_id": pa.array([5], pa.int64())}))
    assert engine.query("SELECT count(*) AS n FROM location").column(0)[0].as_py() == 3


def test_sql_written_once_runs_everywhere(engine):
    store.init(engine, "5.4")
    engine.load_arrow("person", pa.table({
        "person_id": pa.array([1, 2, 3], pa.int64()), "gender_concept_id": pa.array([8507, 8532, 8532], pa.int32()),
        "year_of_birth": pa.array([1950, 1980, 2001], pa.int32()), "race_concept_id": pa.array([0, 0, 0], pa.int32()),
        "ethnicity_concept_id": pa.array([0, 0, 0], pa.int32()),
    }))
    got = engine.query(
        "SELECT gender_concept_id AS g, count(*) AS n, max(year_of_birth) AS y FROM person "
        "WHERE year_of_birth > ? GROUP BY gender_concept_id ORDER BY gender_concept_id", [1960]).to_pylist()
    assert [(r["g"], r["n"], r["y"]) for r in got] == [(8532, 2, 2001)]


def test_stable_id_is_the_same_on_every_engine(engine):
    import hashlib

    store.init(engine, "5.4")
    keys = ["h1-lis|MSG0001|OBX-1", "甲状腺|2024", "", "x" * 50]
    engine.load_arrow("location", pa.table({"location_id": pa.array(range(1, 5), pa.int64()), "address_1": keys}))
    got = engine.query("SELECT address_1 AS k, stable_id(address_1) AS id FROM location").to_pylist()
    want = {k: int(hashlib.md5(k.encode()).hexdigest()[:15], 16) for k in keys}
    assert {r["k"]: r["id"] for r in got} == want


def test_demo_vocabulary_loads_and_status_reports_it(engine):
    from medlake.cdm import vocab

    store.init(engine, "5.4")
    first = vocab.load(engine, vocab.demo_vocabulary_dir())
    again = vocab.load(engine, vocab.demo_vocabulary_dir())  # a second release over the first replaces it
    assert first.verified and again.loaded == first.loaded
    s = store.status(engine)
    assert s.cdm_version == "5.4" and "demo" in s.vocabulary_version.lower()
    assert s.counts["concept"] == first.files["concept"] and s.counts["person"] == 0


def test_work_tables_can_be_created_filled_and_dropped(engine):
    engine.execute("CREATE TABLE IF NOT EXISTS work_t (a INTEGER, b VARCHAR)")
    engine.execute("INSERT INTO work_t VALUES (1, 'x'), (2, 'y')")
    engine.execute("DELETE FROM work_t WHERE a = 1")
    assert engine.query("SELECT a, b FROM work_t").to_pylist() == [{"a": 2, "b": "y"}]
    engine.execute("DROP TABLE IF EXISTS work_t")
    engine.execute("DROP TABLE IF EXISTS never_was")
    assert "work_t" not in engine.tables()


def test_a_temporary_work_table_holds_the_rows_it_was_made_with(engine):
    """`CREATE TEMP TABLE … AS` (derived.work): rows to write again are copied, deleted from their table, then
    inserted from the copy. The copy keeps them after the DELETE (Spark's temporary view computed its query again
    and was empty: the rows were lost)."""
    engine.execute("CREATE TABLE IF NOT EXISTS work_t (a INTEGER, b VARCHAR)")
    engine.execute("INSERT INTO work_t VALUES (1, 'x'), (2, 'y')")
    engine.execute("CREATE TEMP TABLE tx_copy AS SELECT a, b || '!' AS b FROM work_t WHERE a = 1")
    engine.execute("DELETE FROM work_t WHERE a IN (SELECT a FROM tx_copy)")
    engine.execute("INSERT INTO work_t SELECT a, b FROM tx_copy")
    assert sorted(engine.query("SELECT a, b FROM work_t").to_pylist(), key=lambda x: x["a"]) == [
        {"a": 1, "b": "x!"}, {"a": 2, "b": "y"}]
    engine.execute("DROP TABLE tx_copy")
    engine.execute("DROP TABLE work_t")


def test_cdm_import_sets_bad_rows_aside_and_a_failed_import_leaves_the_store_as_it_was(engine, tmp_path):
    from medlake.cdm import importer

    folder = tmp_path / "cdm"
    folder.mkdir()
    long = "é" * 49 + "überlang"  # 57 characters where the spec gives person_source_value 50 (PostgreSQL's DDL too)
    (folder / "person.csv").write_text(
        "person_id,gender_concept_id,year_of_birth,birth_datetime,race_concept_id,ethnicity_concept_id,"
        f"person_source_value\n1,8507,1980,1980-05-01 10:20:30,0,0,p1\n2,8532,19x0,,0,0,\n3,8532,1990,,0,0,{long}\n"
        "4,8507\n")
    (folder / "death.csv").write_text("person_id,death_date,death_type_concept_id\n1,2020-02-30,32817\n"
                                      "3,20200101,32817\n")
    (folder / "visit_occurrence.csv").write_text("visit_occurrence_id,shoe_size\n1,42\n")
    with pytest.raises(importer.CdmImportError, match="shoe_size are not fields of visit_occurrence"):
        importer.import_folder(engine, folder, "5.3")
    assert "person" not in engine.tables()  # a new store stays new: not made of the version tried (5.4 goes in)
    (folder / "visit_occurrence.csv").unlink()
    aside = []
    report = importer.import_folder(engine, folder, "5.4", set_aside=lambda files, bad: aside.extend(bad))
    assert {t: (r.rows, r.bad) for t, r in report.items()} == {"death": (1, 1), "person": (2, 2)}
    assert report["person"].notes == {("person_source_value", "cut"): (1, f"{folder / 'person.csv'}:4")}
    assert engine.query("SELECT person_source_value AS v FROM person WHERE person_id = 3").column(0).to_pylist() == [
        "é" * 49 + "ü"]
    assert sorted((b.table, b.line, b.reason) for b in aside) == [
        ("death", 2, "invalid"), ("person", 3, "invalid"), ("person", 5, "malformed")]
    rows = engine.query("SELECT person_id, year_of_birth, birth_datetime FROM person ORDER BY person_id").to_pylist()
    assert rows == [{"person_id": 1, "year_of_birth": 1980, "birth_datetime": dt.datetime(1980, 5, 1, 10, 20, 30)},
                    {"person_id": 3, "year_of_birth": 1990, "birth_datetime": None}]
    assert engine.query("SELECT death_date FROM death").to_pylist() == [{"death_date": dt.date(2020, 1, 1)}]
    # a second import whose last file is not a CDM table: nothing of it lands, the first import's rows stay
    (folder / "person.csv").write_text("person_id,gender_concept_id,year_of_birth,race_concept_id,"
                                       "ethnicity_concept_id\n9,8507,1999,0,0\n")
    (folder / "visit_occurrence.csv").write_text("visit_occurrence_id,shoe_size\n1,42\n")
    with pytest.raises(importer.CdmImportError, match="shoe_size are not fields of visit_occurrence"):
        importer.import_folder(engine, folder, "5.4")
    assert engine.query("SELECT person_id FROM person ORDER BY person_id").column(0).to_pylist() == [1, 3]


@pytest.mark.postgres
def test_a_cdm_made_by_ohdsis_postgresql_ddl_takes_imports_and_vocabularies(pg_cluster, tmp_path):
    """OHDSI's DDL for PostgreSQL makes the CDM's floats NUMERIC (value_as_number, range_low, quantity,
    drug_strength's amounts). COPY cannot fill NUMERIC from doubles: `cdm import` and `vocab load` into such a
    database stopped at the first table with one ('COPY Writer from Arrow type string to PostgreSQL numeric is
    not implemented'). Now they load, each value as its shortest decimal; the quality run reads them as numbers."""
    from medlake.cdm import importer, vocab
    from medlake.quality import runner

    eng = open_engine(pg_cluster.create_database("ohdsi_ddl"))
    try:
        store.init(eng, "5.4")
        floats = [(t.name, f.name) for t in model.load("5.4").tables for f in t.fields if f.kind == "float"]
        assert ("measurement", "value_as_number") in floats and ("drug_strength", "amount_value") in floats
        for table, field in floats:
            eng.execute_native(f'ALTER TABLE "{table}" ALTER COLUMN "{field}" TYPE NUMERIC')
        assert vocab.load(eng, vocab.demo_vocabulary_dir()).verified
        folder = tmp_path / "cdm"
        folder.mkdir()
        (folder / "measurement.csv").write_text(
            "measurement_id,person_id,measurement_concept_id,measurement_date,measurement_type_concept_id,"
            "value_as_number,range_low,unit_concept_id\n1,1,3004410,2020-01-01,32817,6.5,0.1,8554\n"
            "2,1,3004410,2020-01-02,32817,123456789.123,1e-12,8554\n3,1,3004410,2020-01-03,32817,-4,,8554\n")
        (folder / "drug_strength.csv").write_text(
            "drug_concept_id,ingredient_concept_id,amount_value,amount_unit_concept_id,valid_start_date,"
            "valid_end_date\n19019073,1125315,0.5,8576,2000-01-01,2099-12-31\n")
        report = importer.import_folder(eng, folder, "5.4")
        assert {t: (r.rows, r.bad) for t, r in report.items()} == {"drug_strength": (1, 0), "measurement": (3, 0)}
        got = eng.query("SELECT CAST(value_as_number AS TEXT) AS v, CAST(range_low AS TEXT) AS r FROM measurement "
                        "ORDER BY measurement_id").to_pylist()
        assert got == [{"v": "6.5", "r": "0.1"}, {"v": "123456789.123", "r": "0.000000000001"}, {"v": "-4", "r": None}]
        assert eng.query("SELECT CAST(amount_value AS TEXT) AS a FROM drug_strength").to_pylist() == [{"a": "0.5"}]
        run = runner.Runner(eng, "5.4", tmp_path / "q", only=["measurement"], incremental=False, resume=False).run()
        got = {x["check_id"]: x for x in run.results}
        for name, violated in (("low", 1), ("high", 1)):  # HbA1c in %: 2 to 25
            r = got[f"concept_plausiblevalue{name}_measurement_measurement_concept_id_3004410_8554"]
            assert (r["status"], r["num_violated_rows"], r["num_denominator_rows"]) == ("failed", violated, 3)
        assert not [x for x in run.results if x["status"] == "error"]
    finally:
        eng.close()


def test_sums_and_averages_come_back_as_numbers_on_every_engine(engine):
    """A sum of integers is NUMERIC on PostgreSQL, which ADBC gives as text: `f"{n:,}"` of it failed — `medlake
    transform` on PostgreSQL ended 'error: Cannot specify ',' with 's'' after every transform that left a mapping
    gap (its count of gap rows). Every engine gives numbers: whole sums as integers, averages as fractions."""
    rows = "(VALUES (CAST(1 AS BIGINT)), (CAST(2 AS BIGINT)), (CAST(4000000 AS BIGINT))) AS v(x)"
    got = engine.query(f"SELECT count(*) AS c, sum(x) AS s, COALESCE(sum(x), 0) AS z, avg(x) AS a FROM {rows}"
                       ).to_pylist()[0]
    assert (f"{got['c']:,}", f"{got['s']:,}", f"{got['z']:,}", float(got["a"])) == ("3", "4,000,003", "4,000,003",
                                                                                     4000003 / 3)
    none = engine.query(f"SELECT sum(x) AS s FROM {rows} WHERE x < 0").to_pylist()[0]
    assert none["s"] is None


def test_a_query_past_its_time_limit_is_stopped_and_the_next_runs(engine):
    """Engine.limited: a query that would run for minutes (10^10 pairs) stops at the limit with an EngineError
    saying so (a site check's predicate that scans for ever: `quality run --site-timeout`); the session goes on."""
    from medlake.engines.base import EngineError

    pairs = ("generate_series(1, 100000) AS a(x) CROSS JOIN generate_series(1, 100000) AS b(y)"
             if engine.name == "postgres" else  # (a set-returning function there; a list to unnest elsewhere)
             "(SELECT unnest(range(100000)) AS x) AS a CROSS JOIN (SELECT unnest(range(100000)) AS y) AS b")
    slow = f"SELECT count(*) AS n FROM {pairs} WHERE (CAST(a.x AS BIGINT) * b.y) % 7 = 3"
    with engine.limited(2):
        with pytest.raises(EngineError, match=r"^stopped after 2 s, its time limit$"):
            engine.query(slow)
    assert engine.query("SELECT 2 AS x").column(0)[0].as_py() == 2  # (Spark: once the cancelled tasks end)
    with engine.limited(None):  # no limit: nothing set
        assert engine.query("SELECT 3 AS x").column(0)[0].as_py() == 3
