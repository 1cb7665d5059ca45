"""Sex and year/month of birth kept for the CDM, by majority over a person's identities."""
import pyarrow as pa

from medlake.identity import demographics


def test_codes_from_every_system():
    assert [demographics.sex_code(v) for v in ("M", "female", "女", "1", "U", "", None, "x")] == \
        ["M", "F", "F", "M", "U", None, None, None]
    assert demographics.year_month("1980-02-29") == (1980, 2)
    assert demographics.year_month("19800229") == (1980, 2)
    assert demographics.year_month("1980") == (1980, None)
    assert demographics.year_month("garbage") == (None, None)


def test_majority_per_person_follows_the_person_map(duck):
    demographics.record(duck, [
        {"source": "h1-his", "source_id": "A1", "sex": "F", "birth_date": "1980-02-03"},
        {"source": "h2-emr", "source_id": "p9", "sex": "female", "birth_date": "1980-02-03"},
        {"source": "h3-his", "source_id": "Z7", "sex": "M", "birth_date": "1980-03-02"},  # a day/month swap, a typo
        {"source": "h1-his", "source_id": "B2", "sex": "M", "birth_date": "1955-11-30"},
    ])
    # a later record of the same identity replaces the earlier one; one without the values keeps them (a second
    # `empi run` sees the identities whose staging rows it cleared: their birth dates were year_of_birth NULL)
    demographics.record(duck, [{"source": "h1-his", "source_id": "B2", "sex": "M", "birth_date": "1956-11-30"}])
    demographics.record(duck, [{"source": "h1-his", "source_id": "A1", "sex": None, "birth_date": None},
                               {"source": "h2-emr", "source_id": "p9", "sex": None, "birth_date": "1980"},
                               {"source": "h3-his", "source_id": "Z7", "sex": "M", "birth_date": None}])
    assert sorted(tuple(r.values()) for r in duck.query(f"SELECT * FROM {demographics.TABLE}").to_pylist()) == [
        ("h1-his", "A1", "F", 1980, 2), ("h1-his", "B2", "M", 1956, 11), ("h2-emr", "p9", "F", 1980, None),
        ("h3-his", "Z7", "M", 1980, 3)]
    duck.execute("CREATE TABLE empi_person_map (source VARCHAR, source_id VARCHAR, person_id BIGINT)")
    duck.load_arrow("empi_person_map", pa.table({"source": ["h1-his", "h2-emr", "h3-his", "h1-his"],
                                                 "source_id": ["A1", "p9", "Z7", "B2"],
                                                 "person_id": pa.array([1, 1, 1, 2], pa.int64())}))
    got = sorted(tuple(r.values()) for r in duck.query(demographics.person_sql()).to_pylist())
    assert got == [(1, "F", 1980, 2), (2, "M", 1956, 11)]
