"""A whole quality run: results.json and the HTML report, incremental and resumable runs, site and feed
checks, the DQD-vs-spec list, `medlake cdm import` and `medlake quality run` (DuckDB)."""
from __future__ import annotations

from html import escape
import bz2
import csv
import datetime as dt
import decimal
import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from medlake.cdm import importer
from medlake.engines import open_engine
from medlake.quality import runner, site
from medlake.quality.checks import checks, differences_markdown
from medlake.quality.compile import key_unique_sql, primary_key_sql

from test_quality_checks import CO, world  # the small clean CDM of the check-type tests

REPO = Path(__file__).resolve().parents[2]
# DQD's default: the vocabulary tables are not checked (runner.VOCABULARY_TABLES)
SUITE = [c for c in checks("5.4") if c.table not in runner.VOCABULARY_TABLES]
REQUIRED_FIELDS = {"check_name", "category", "subcategory", "context", "cdm_table", "cdm_field", "concept_id",
                   "status", "num_violated_rows", "num_denominator_rows", "pct_violated_rows", "threshold", "failed"}


@pytest.fixture
def store():
    eng = open_engine("duckdb::memory:")
    yield world(eng)
    eng.close()


def test_results_json_and_self_contained_report(store, tmp_path):
    store.execute(CO + "person_id = 99 WHERE condition_occurrence_id = 200")
    r = runner.run(store, "5.4", tmp_path / "quality")
    rows = json.loads((r.dir / "results.json").read_text())
    assert len(rows) == len(SUITE)
    assert all(REQUIRED_FIELDS <= set(x) for x in rows)
    assert {x["status"] for x in rows} <= {"passed", "failed", "not_applicable", "error"}
    fk = next(x for x in rows if x["check_id"] == "field_isforeignkey_condition_occurrence_person_id")
    assert (fk["status"], fk["num_violated_rows"], fk["examples"]) == ("failed", 1, ["200"])
    html = (r.dir / "report.html").read_text()
    assert "isForeignKey" in html and "<svg" in html
    assert "http://" not in html.replace("http://www.w3", "") and "https://" not in html  # nothing fetched
    assert "<script src" not in html and "<link" not in html
    summary = json.loads((r.dir / "run.json").read_text())
    assert summary["failed"] == sum(x["status"] == "failed" for x in rows)
    assert set(summary["by_category"]) >= {"Conformance", "Completeness", "Plausibility"}


def test_an_empty_vocabulary_is_a_warning_not_a_quiet_pass(store, tmp_path):
    """With the concept table empty (a vocabulary not loaded, or hidden by the CDM schema's empty one on a search
    path) every concept check is not applicable: the run says how many, in run.json, the report and the CLI."""
    # (a source's CDM rows with their codes, as the transform's lineage records them: its mapping coverage)
    store.execute("CREATE TABLE cdm_lineage (source VARCHAR, cdm_table VARCHAR, row_id BIGINT, code_system VARCHAR, "
                  "code VARCHAR, concept_id INTEGER)")
    store.execute("INSERT INTO cdm_lineage VALUES ('lis', 'measurement', 1000, 'LN', '4548-4', 3004410)")
    coverage = "source_sourcemappingcoverage_lis_measurement"
    first = runner.run(store, "5.4", tmp_path / "a")
    assert first.summary["warnings"] == []
    assert next(x for x in first.results if x["check_id"] == coverage)["status"] == "passed"
    store.execute("DELETE FROM concept")
    r = runner.run(store, "5.4", tmp_path / "b")
    assert next(x for x in r.results if x["check_id"] == coverage)["status"] == "not_applicable"  # not 100% unmapped
    silenced = [x for x in r.results if x["status"] == "not_applicable"
                and x["not_applicable_reason"].startswith("concept table empty")]
    assert len(silenced) > 50 and {x["check_name"] for x in silenced} >= {"isForeignKey", "fkDomain", "isStandardValidConcept"}
    [w] = json.loads((r.dir / "run.json").read_text())["warnings"]
    assert f"the concept table is empty ({len(silenced):,} checks)" in w
    assert "medlake vocab load" in w and "search_path" not in w  # the PostgreSQL hint only on PostgreSQL
    assert "warning: " + escape(w) in (r.dir / "report.html").read_text()


def test_a_gender_rule_reads_no_vocabulary_and_runs_without_concept_ancestor(store, tmp_path):
    """plausibleGender matches its concept ids as they are: a vocabulary loaded without concept_ancestor (a trimmed
    one) leaves only plausibleGenderUseDescendants not applicable, not every gender rule of the table with it."""
    from test_quality_checks import FEMALE_ONLY, MALE_TREE

    store.execute("INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, "
                  f"condition_start_date, condition_type_concept_id) VALUES (301, 1, {FEMALE_ONLY}, DATE '2020-01-01', "
                  "32817)")  # person 1 is male
    store.execute("DELETE FROM concept_ancestor")
    r = {x["check_id"]: x for x in runner.run(store, "5.4", tmp_path / "q", only=["condition_occurrence"]).results}
    direct = r[f"concept_plausiblegender_condition_occurrence_condition_concept_id_{FEMALE_ONLY}"]
    assert (direct["status"], direct["num_violated_rows"], direct["num_denominator_rows"]) == ("failed", 1, 2)
    tree = r[f"concept_plausiblegenderusedescendants_condition_occurrence_condition_concept_id_{MALE_TREE}"]
    assert (tree["status"], tree["not_applicable_reason"]) == (
        "not_applicable", "concept_ancestor table empty (descendants)")


def test_rerun_sees_a_change_that_keeps_every_column_total(store, tmp_path):
    """Two rows swap their end dates: the row count, every column's values (as a multiset), sums and ranges stay the
    same, but condition 200 now ends before it starts. The table's fingerprint hashes whole rows, so the re-run
    re-checks it and sees the violation."""
    out = tmp_path / "quality"
    runner.run(store, "5.4", out)
    store.execute(CO + "condition_end_date = CASE condition_occurrence_id WHEN 100 THEN DATE '2021-01-02' "
                  "ELSE DATE '2020-01-05' END WHERE condition_occurrence_id IN (100, 200)")
    again = runner.run(store, "5.4", out)
    assert "condition_occurrence" in again.rechecked
    r = next(x for x in again.results
             if x["check_id"] == "field_plausiblestartbeforeend_condition_occurrence_condition_start_date")
    assert (r["status"], r["num_violated_rows"], r["examples"]) == ("failed", 1, ["200"])


def test_rerun_sees_columns_renamed_or_their_names_swapped(store, tmp_path):
    """review-incr #1: the fingerprint hashed each row's values in order, not the columns' names: year_of_birth and
    month_of_birth swapped by name (an ETL's mistake) kept every hash, and the run re-used the table's results."""
    out = tmp_path / "quality"
    runner.run(store, "5.4", out, only=["person"])
    for sql in ("ALTER TABLE person RENAME COLUMN year_of_birth TO y", "ALTER TABLE person RENAME COLUMN "
                "month_of_birth TO year_of_birth", "ALTER TABLE person RENAME COLUMN y TO month_of_birth"):
        store.execute(sql)  # (the months were empty: every year is now empty, the values unchanged)
    again = runner.run(store, "5.4", out, only=["person"])
    assert again.rechecked == ["person"]
    empty = next(x for x in again.results if x["check_id"] == "field_measurevaluecompleteness_person_year_of_birth")
    assert (empty["status"], empty["num_violated_rows"]) == ("failed", 2)
    store.execute("ALTER TABLE person RENAME COLUMN gender_source_value TO gender_source_text")
    renamed = runner.run(store, "5.4", out, only=["person"])
    assert renamed.rechecked == ["person"]
    assert next(x for x in renamed.results if x["check_id"] == "field_cdmfield_person_gender_source_value")[
        "status"] == "failed"


def test_results_whose_examples_could_not_be_read_are_not_reused(store, tmp_path, monkeypatch):
    """review-incr #5: a failed check whose examples query failed (a cancelled query, a dropped connection) was saved
    and re-used without examples until the data changed."""
    from medlake.quality import compile as cp

    store.execute(CO + "person_id = 99 WHERE condition_occurrence_id = 200")
    fk = "field_isforeignkey_condition_occurrence_person_id"
    examples = cp.examples_sql
    monkeypatch.setattr(cp, "examples_sql", lambda *a, **k: "SELECT no_such_column FROM person")
    first = runner.run(store, "5.4", tmp_path / "q", only=["condition_occurrence"])
    got = {x["check_id"]: x for x in first.results}[fk]
    assert got["examples"] == [] and "no_such_column" in got["example_error"]
    monkeypatch.setattr(cp, "examples_sql", examples)
    again = runner.run(store, "5.4", tmp_path / "q", only=["condition_occurrence"])
    assert again.rechecked == ["condition_occurrence"] and {x["check_id"]: x for x in again.results}[fk][
        "examples"] == ["200"]
    assert runner.run(store, "5.4", tmp_path / "q", only=["condition_occurrence"]).reused == ["condition_occurrence"]


def test_a_table_without_a_fingerprint_is_always_checked(store, tmp_path, monkeypatch):
    """If the engine cannot compute a table's fingerprint (e.g. no hash function), the run does not stop: that
    table's results are never reused, the others' are."""
    out = tmp_path / "quality"
    runner.run(store, "5.4", out)
    fingerprint = runner._fingerprint_sql
    monkeypatch.setattr(runner, "_fingerprint_sql", lambda table, cols: fingerprint(table, cols).replace(
        "hash(", "no_such_hash(") if table == "drug_era" else fingerprint(table, cols))
    again = runner.run(store, "5.4", out)
    assert again.rechecked == ["drug_era"]
    assert [x for x in again.results if x["status"] == "error"] == []
    assert runner.run(store, "5.4", out).rechecked == ["drug_era"]


def test_rerun_rechecks_only_changed_tables(store, tmp_path):
    out = tmp_path / "quality"
    first = runner.run(store, "5.4", out)
    assert len(first.rechecked) == len({c.table for c in SUITE})
    second = runner.run(store, "5.4", out)
    assert second.rechecked == [] and second.summary["queries"] < first.summary["queries"] / 2
    store.execute(CO + "condition_end_date = DATE '2019-12-01' WHERE condition_occurrence_id = 100")
    third = runner.run(store, "5.4", out)
    # condition_era's completeness check reads condition_occurrence, so it is re-checked too
    assert set(third.rechecked) == {"condition_occurrence", "condition_era"}
    ids = {x["check_id"]: x for x in third.results}
    assert ids["field_plausiblestartbeforeend_condition_occurrence_condition_start_date"]["status"] == "failed"
    fresh = runner.Runner(store, "5.4", tmp_path / "fresh", incremental=False).run()
    key = lambda rs: sorted((x["check_id"], x["status"], x["num_violated_rows"]) for x in rs)  # noqa: E731
    assert key(third.results) == key(fresh.results)
    # runs of one table or of some check types in between: the next whole run still re-uses the others' results,
    # from the last run that checked them all, and re-checks the one changed since
    assert runner.run(store, "5.4", out, only=["person"]).rechecked == []
    assert runner.run(store, "5.4", out, check_names=["isRequired"]).rechecked == sorted(
        {c.table for c in SUITE if c.name == "isRequired"}, key=[c.table for c in SUITE].index)
    store.execute("INSERT INTO cohort VALUES (7, 1, DATE '2020-01-01', DATE '2020-12-31')")
    assert "person" in runner.run(store, "5.4", out, cohort=("cohort", 7)).rechecked  # (its rows: other data)
    store.execute("UPDATE drug_era SET drug_exposure_count = 3")
    fourth = runner.run(store, "5.4", out)
    assert fourth.rechecked == ["drug_era"] and len(fourth.reused) == len({c.table for c in SUITE}) - 1


def test_a_crashed_run_resumes_where_it_stopped(store, tmp_path):
    out = tmp_path / "quality"

    def crash(name, done, total):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.Runner(store, "5.4", out, progress=crash).run()
    unfinished = [d for d in out.glob("[!.]*") if not (d / "run.json").exists()]
    assert len(unfinished) == 1 and len(list((unfinished[0] / "tables").glob("*.json"))) == 5
    done = runner.Runner(store, "5.4", out).run()
    assert done.dir == unfinished[0] and len(done.resumed) == 5
    assert len(done.results) == len(SUITE)
    assert ", resumed 5 from the interrupted run" in (done.dir / "report.html").read_text()


def test_a_cdm_without_rows_says_its_pass_rate_is_of_its_structure(store, tmp_path):
    from medlake.cdm import store as cdm_store

    empty = open_engine("duckdb::memory:")
    cdm_store.init(empty, "5.4")
    run = runner.run(empty, "5.4", tmp_path / "empty")
    assert run.summary["failed"] == 0 and run.summary["passed"] > 0  # the tables are there, as the spec says
    assert run.summary["warnings"] == [
        "the 31 CDM table(s) checked hold no rows: only their structure was checked, and the pass rate is of that; "
        "load data first (medlake transform, or medlake cdm import DIR)"]
    assert "hold no rows" in (run.dir / "report.html").read_text()
    assert not any("hold no rows" in w for w in runner.run(store, "5.4", tmp_path / "full").summary["warnings"])


def test_vocabulary_tables_are_excluded_as_dqd_does_unless_asked(store, tmp_path):
    store.execute("INSERT INTO concept SELECT * FROM concept WHERE concept_id = 8507")  # a duplicate key
    cid = "field_isprimarykey_concept_concept_id"
    default = runner.run(store, "5.4", tmp_path / "a")
    assert "concept" in default.summary["excluded_tables"] and cid not in {x["check_id"] for x in default.results}
    assert "concept" not in default.summary["rechecked_tables"]
    assert "not checked: " in (default.dir / "report.html").read_text()
    every = runner.run(store, "5.4", tmp_path / "b", exclude=())
    assert len(every.results) == len(checks("5.4")) and every.summary["excluded_tables"] == []
    assert {x["check_id"]: x for x in every.results}[cid]["status"] == "failed"
    named = runner.run(store, "5.4", tmp_path / "c", only=["concept"])  # naming a table checks it
    assert {x["check_id"]: x for x in named.results}[cid]["status"] == "failed"
    twice = runner.run(store, "5.4", tmp_path / "c", only=["PERSON", "person"])  # any case, once each
    assert twice.summary["tables"] == ["person"] and {x["cdm_table"] for x in twice.results} == {"person"}
    # a table the CDM version does not have would quietly check nothing (or skip nothing): refused before the run
    with pytest.raises(ValueError, match=r"--tables: no table persn in OMOP CDM v5.4 \(nor in --checks\); did you "
                                         r"mean person\?"):
        runner.run(store, "5.4", tmp_path / "d", only=["person", "persn"])
    with pytest.raises(ValueError, match="--exclude: no table episode in OMOP CDM v5.3"):
        runner.run(store, "5.3", tmp_path / "d", exclude=["episode"])
    assert not (tmp_path / "d").exists()


def test_site_checks_from_toml(store, tmp_path):
    toml = """
[[check]]
name = "conditionAfter2020"
table = "condition_occurrence"
field = "condition_start_date"
violation = "condition_start_date < DATE '2021-01-01'"
threshold = 0

[[check]]
name = "labValueRange"
table = "measurement"
field = "value_as_number"
rule = "range"
min = 0
max = 5

[[check]]
name = "brokenPredicate"
table = "measurement"
violation = "no_such_column > 1"

[[check]]
name = "earlyOfTheLater"
table = "condition_occurrence"
violation = "condition_start_date < DATE '2021-01-01'"
denominator = "condition_start_date >= DATE '2021-01-01'"
"""
    extra = site.parse(toml + '[[check]]\nname = "loud"\ntable = "person"\nviolation = "false"\nseverity = "Fatal"\n'
                       'category = "conformance"\n[[check]]\nname = "misspelt"\ntable = "measurment"\n'
                       'violation = "value_as_number < 0"\n[[check]]\nname = "noSuchField"\ntable = "measurement"\n'
                       'field = "value_as_numbr"\nviolation = "measurement_id < 0"\n[[check]]\nname = "misspeltColumn"\n'
                       'table = "measurement"\nviolation = "value_as_numbr < 0"\n', "site.toml")
    loud = extra[-4][0]  # its words as --check-severity and the report's categories spell them
    assert (loud.severity, loud.category, loud.context) == ("fatal", "Conformance", "Validation")
    r = runner.run(store, "5.4", tmp_path / "q", site_checks=extra,
                   only=["condition_occurrence", "measurement", "measurment"])
    got = {x["check_name"]: x for x in r.results if x["source"] == "site"}
    said = "table measurment absent (did you mean measurement?)"  # a check of no table is said, with the one meant
    assert (got["misspelt"]["status"], got["misspelt"]["not_applicable_reason"]) == ("not_applicable", said)
    assert f"site check misspelt not applicable: {said}" in r.summary["warnings"]
    said = "field measurement.value_as_numbr absent (did you mean value_as_number?)"  # not passed: its field is not
    assert (got["noSuchField"]["status"], got["noSuchField"]["not_applicable_reason"]) == ("not_applicable", said)
    assert f"site check noSuchField not applicable: {said}" in r.summary["warnings"]
    assert (got["conditionAfter2020"]["status"], got["conditionAfter2020"]["num_violated_rows"]) == ("failed", 2)
    assert got["conditionAfter2020"]["examples"]
    assert (got["labValueRange"]["status"], got["labValueRange"]["num_violated_rows"]) == ("failed", 1)  # 6.5 > 5
    assert got["brokenPredicate"]["status"] == "error" and "no_such_column" in got["brokenPredicate"]["error"]
    # the database's suggestion kept with its error (review-site #9: only the first line was)
    assert '(Candidate bindings: "value_as_number", ' in got["misspeltColumn"]["error"]
    html = (r.dir / "report.html").read_text()  # a site check says so in the report (its search finds "site")
    assert "severity site · the site's check" in html
    s = r.summary  # a check that could not run is no pass (DQD's percentPassed): a broken check lowers the rate
    assert s["errors"] >= 1 and s["pass_rate"] == s["passed"] / (s["passed"] + s["failed"] + s["errors"])
    # the violations are counted among the denominator's rows (the two early ones are not of them)
    later = got["earlyOfTheLater"]
    assert (later["status"], later["num_violated_rows"]) == ("passed", 0) and later["num_denominator_rows"] > 0


def test_a_site_checks_query_alone_counts_its_denominator_and_lists_the_fields_it_reads(store, tmp_path):
    """review-site #2, #6: `quality show`'s query of a site check with a `denominator` counts that denominator, as the
    run did (it counted the whole table), and its rows carry the fields the rule reads, named bare as site rules
    name them (only the row id was listed), and the check's field."""
    extra = site.parse('[[check]]\nname = "earlyOfTheLater"\ntable = "condition_occurrence"\n'
                       'field = "condition_end_date"\nviolation = "condition_start_date < DATE \'2021-01-01\'"\n'
                       'denominator = "visit_occurrence_id = 20 OR condition_occurrence_id = 100"\n', "site.toml")
    r = runner.run(store, "5.4", tmp_path / "q", site_checks=extra, only=["condition_occurrence"])
    got = next(x for x in r.results if x["check_name"] == "earlyOfTheLater")
    total = store.query("SELECT count(*) AS n FROM condition_occurrence").column(0)[0].as_py()
    assert (got["num_violated_rows"], got["num_denominator_rows"], total) == (1, 3, 4)  # (100 of 100, 200, 300)
    _, count, listed = runner.Runner(store, "5.4", tmp_path / "q", site_checks=extra).check_queries(
        got["check_id"], rows=50)
    [row] = store.query(count).to_pylist()
    assert (row["v0"], row["d0"]) == (got["num_violated_rows"], got["num_denominator_rows"])
    rows = store.query(listed).to_pylist()
    assert list(rows[0]) == ["condition_occurrence_id", "condition_start_date", "condition_end_date",
                             "visit_occurrence_id"] and len(rows) == got["num_violated_rows"]


@pytest.mark.parametrize("text,message", [
    ("[[check]]\ntable = 'person'\nviolation = 'x'", "missing 'name'"),
    ("[[check]]\nname = 'a'\ntable = 'person'", "give 'violation'"),
    ("[[check]]\nname = 'a'\ntable = 'person'\nfield = 'x'\nrule = 'shiny'", "unknown rule 'shiny'"),
    ("[[check]]\nname = 'a'\ntable = 'person'\nviolation = 'x >'", "violation is not valid SQL"),
    # where in the predicate, not the parser's class names ("Required keyword: 'this' missing for <class …Paren>")
    ("[[check]]\nname = 'a'\ntable = 'person'\nviolation = 'year_of_birth = = 1'",
     r"violation is not valid SQL: it does not parse \(at character 17\)$"),
    ("[[check", "not valid TOML"),
    ("[[check]]\nname = 5\ntable = 'person'\nfield = 'person_id'\nrule = 'not_null'",
     r"check #1 \(5\): name must be text \(in quotes\), not 5"),
    ("[[check]]\nname = 'a'\ntable = 'person'\nfield = 'year_of_birth'\nrule = 'range'\nmin = 'x'",
     r"min must be a number or a date \(1900, 2.5, 2020-01-01\), not 'x'"),
    ("[[check]]\nname = 'a'\ntable = 'person'\nfield = 'person_source_value'\nrule = 'pattern'",
     "rule 'pattern' needs regex = "),
    ("[feed]\ndrop = 'x'", r"\[feed\] drop must be a share between 0 and 1 \(0.5: a day below half the usual volume\), "
     "not 'x'"),
    ("[feed]\ntable = 5", r"\[feed\] table must be text \(in quotes\), not 5"),
    # nothing the site writes is dropped or taken quietly
    ("[[check]]\nname = 'a'\ntable = 'person'\nviolation = 'true'\ntreshold = 50", "unknown key 'treshold'"),
    ("[[checks]]\nname = 'a'\ntable = 'person'\nviolation = 'true'", "unknown section 'checks'"),
    ("[threshold]\nisForeignKey = 50", "unknown section 'threshold'"),
    ("[[check]]\nname = 'bigYear'\ntable = 'person'\nviolation = 'true'\n[[check]]\nname = 'bigyear'\n"
     "table = 'person'\nviolation = 'false'", r"check #2 \(bigyear\): duplicate check name 'bigyear'"),
    ("[[check]]\nname = 'isRequired'\ntable = 'person'\nfield = 'person_id'\nviolation = 'true'",
     "'isRequired' is the name of a check medlake runs itself"),
    ("[[check]]\nname = 'feedVolume'\ntable = 'person'\nviolation = 'true'", "is the name of a check medlake runs"),
    ("[[check]]\nname = 'a'\ntable = 'person'\nviolation = 'true'\nthreshold = 150",
     "threshold must be a percent from 0 to 100, not 150"),
    ("[[check]]\nname = 'a'\ntable = 'person'\nviolation = 'true'\nthreshold = -1", "not -1"),
    ("[[check]]\nname = 'a'\ntable = 'person'\nfield = 'year_of_birth'\nrule = 'range'\nmin = 10\nmax = 1",
     "min 10 is above max 1"),
    # review-site #12: a name that makes an id to quote in a shell
    ("[[check]]\nname = 'Lab Value Negative'\ntable = 'person'\nviolation = 'true'",
     "name 'Lab Value Negative' must be letters, digits and _"),
    ("[[check]]\nname = '  '\ntable = 'person'\nviolation = 'true'", "name '  ' must be letters"),
    # review-site #4, #7: bounds of two kinds; keys no rule of the check reads, said rather than left unread
    ("[[check]]\nname = 'a'\ntable = 'person'\nfield = 'birth_datetime'\nrule = 'range'\nmin = 2020-06-01\nmax = 12",
     r"min datetime.date\(2020, 6, 1\) and max 12 are not of one kind"),
    ("[[check]]\nname = 'a'\ntable = 'person'\nfield = 'year_of_birth'\nrule = 'range'\nmin = 0\n"
     "violation = 'year_of_birth < 0'", "give 'violation' .* or 'rule', not both"),
    ("[[check]]\nname = 'a'\ntable = 'person'\nfield = 'year_of_birth'\nrule = 'not_null'\nmin = 0",
     "'min' is not read by rule 'not_null'$"),
    ("[[check]]\nname = 'a'\ntable = 'person'\nfield = 'year_of_birth'\nrule = 'range'\nmin = 0\nvalues = [1]",
     "'values' is not read by rule 'range'; it takes min, max"),
    ("[[check]]\nname = 'a'\ntable = 'person'\nviolation = 'year_of_birth < 1900'\nmax = 2000",
     r"'max' is not read by a violation \(write the bounds in its SQL\)"),
    ("[[check]]\nname = 'a'\ntable = 'person'\nviolation = 'true'\ncategory = 'Plausability'",
     "category must be one of Conformance, Completeness, Plausibility, not 'Plausability'"),
    ("[[check]]\nname = 'a'\ntable = 'person'\nviolation = 'true'\nseverity = 'urgent'",
     "severity must be one of fatal, convention, characterization, site, not 'urgent'"),
    ("[[check]]\nname = 'a'\ntable = 'person'\nviolation = 'year_of_birth > 1; DELETE FROM person'",
     "violation is one condition, not statements: remove its ';' and what follows"),
])
def test_site_check_errors_name_file_and_check(text, message):
    with pytest.raises(ValueError, match=message) as e:
        site.parse(text, "site.toml") if "[feed]" not in text else site.feed_config(text, "site.toml")
    assert str(e.value).startswith("site.toml")


def test_a_site_check_of_the_vocabulary_runs_and_a_date_time_bound_keeps_its_time(store, tmp_path):
    """review-site #3: a site check of the concept table (left out by default, as DQD leaves the vocabulary) runs,
    without DQD's checks of it; #4: a range bound written as a TOML date-time compares with its time of day."""
    store.execute("INSERT INTO concept VALUES (2000000001, '', 'Measurement', 'Local', 'Lab Test', NULL, 'X1', "
                  "DATE '2020-01-01', DATE '2099-12-31', NULL)")
    store.execute("UPDATE person SET birth_datetime = TIMESTAMP '2020-01-01 10:00:00' WHERE person_id = 1")
    extra = site.parse('[[check]]\nname = "localConceptsNamed"\ntable = "concept"\n'
                       'violation = "concept_id >= 2000000000 AND trim(concept_name) = \'\'"\n'
                       '[[check]]\nname = "bornAfterNoon"\ntable = "person"\nfield = "birth_datetime"\n'
                       'rule = "range"\nmin = 2020-01-01T12:00:00\n', "site.toml")
    r = runner.run(store, "5.4", tmp_path / "q", site_checks=extra)
    got = {x["check_name"]: x for x in r.results if x["source"] == "site"}
    assert (got["localConceptsNamed"]["status"], got["localConceptsNamed"]["num_violated_rows"]) == ("failed", 1)
    assert not [x for x in r.results if x["cdm_table"] == "concept" and x["source"] != "site"]  # not DQD's
    assert "concept" not in r.summary["excluded_tables"]
    before = lambda bound: store.query(  # noqa: E731
        f"SELECT count(*) AS n FROM person WHERE birth_datetime < {bound}").column(0)[0].as_py()
    # person 1's 10:00 is before 12:00 of that day: counted (cut to the day, it was not)
    assert got["bornAfterNoon"]["num_violated_rows"] == before("TIMESTAMP '2020-01-01 12:00:00'") \
        == before("DATE '2020-01-01'") + 1
    assert got["bornAfterNoon"]["description"] == "birth_datetime below 2020-01-01 12:00:00"  # (not its SQL)
    only = runner.run(store, "5.4", tmp_path / "q2", site_checks=extra, check_names=["localConceptsNamed"])
    assert [x["check_name"] for x in only.results] == ["localConceptsNamed"]


def test_site_thresholds_and_notes_decide_and_annotate_any_check(store, tmp_path):
    """[thresholds] and [notes], as DQD's threshold files carry them: by check id (which wins) or by type; the status
    decided again with the site's threshold, the check's own kept; re-used results tuned afresh on each run; an
    entry no check has is a warning, not silence."""
    fk = "field_isforeignkey_condition_occurrence_person_id"
    store.execute(CO + "person_id = 99 WHERE condition_occurrence_id = 200")  # 1 of 4 rows: 25%
    tuning = site.tuning_config(f"[thresholds]\n{fk} = 30\nisForeignKey = 10\nisRequired = 5\n"
                                f"field_measurevaluecompleteness_person_month_of_birth = 0\n"
                                f"[notes]\n{fk} = \"person 99 is a visitor: known\"\nnoSuchCheck = \"x\"\n"
                                "isforeignkey = \"y\"\n", "site.toml")
    r = runner.run(store, "5.4", tmp_path / "q", tuning=tuning)
    got = {x["check_id"]: x for x in r.results}
    assert (got[fk]["status"], got[fk]["threshold"], got[fk]["default_threshold"], got[fk]["notes"]) == \
        ("passed", 30.0, 0.0, "person 99 is a visitor: known")  # 25% <= 30%: the id's threshold, not the type's
    other_fk = next(x for x in r.results if x["check_name"] == "isForeignKey" and x["status"] == "passed"
                    and x["check_id"] != fk)
    assert other_fk["threshold"] == 10.0 and other_fk["notes"] is None
    month = got["field_measurevaluecompleteness_person_month_of_birth"]  # both persons lack it: 100% > 0%
    assert (month["status"], month["examples"], month["example_field"]) == ("failed", ["1", "2"], "person_id")
    required = [x for x in r.results if x["check_name"] == "isRequired" and x["status"] in ("passed", "failed")]
    assert required and all(x["threshold"] == 5.0 for x in required)
    assert all(x["threshold"] == 0 for x in r.results if x["check_name"] == "isRequired" and x["status"] == "error")
    assert r.summary["warnings"] == ["[notes] noSuchCheck: no check of this run has that id or name (a typo, or a "
                                     "table not checked)",  # (matched as written: review-site #12)
                                     "[notes] isforeignkey: no check of this run has that id or name (did you mean "
                                     "isForeignKey?) (a typo, or a table not checked)"]
    dqd = {x["checkId"]: x for x in json.loads((r.dir / "dqd.json").read_text())["CheckResults"]}
    assert (dqd[fk]["passed"], dqd[fk]["thresholdValue"], dqd[fk]["notesValue"]) == (1, 30.0, "person 99 is a visitor: known")
    html = (r.dir / "report.html").read_text()
    assert "<b>Note:</b> person 99 is a visitor: known" in html and "the site's; the check's own 0%" in html
    again = runner.run(store, "5.4", tmp_path / "q")  # no site file: the tables' results re-used, untuned
    assert again.reused and {x["check_id"]: x for x in again.results}[fk]["status"] == "failed"
    own = {c.id: c.notes or None for c in checks("5.4")}  # DQD's files' own notes (its unit lists have one)
    assert all(x["notes"] == own.get(x["check_id"]) and "default_threshold" not in x for x in again.results)


def test_check_names_run_only_those_types(store, tmp_path):
    """DQD's checkNames: only the named check types (any spelling of case), the source-level ones too; a name that
    is no check type is refused before the run."""
    store.execute(CO + "person_id = 99 WHERE condition_occurrence_id = 200")
    r = runner.run(store, "5.4", tmp_path / "q", check_names=["isforeignkey", "measurePersonCompleteness"])
    assert {x["check_name"] for x in r.results} == {"isForeignKey", "measurePersonCompleteness"}
    assert len(r.results) == len([c for c in checks("5.4") if c.name in ("isForeignKey", "measurePersonCompleteness")
                                  and c.table not in runner.VOCABULARY_TABLES])
    assert {x["check_id"]: x["status"] for x in r.results}["field_isforeignkey_condition_occurrence_person_id"] == "failed"
    assert r.summary["check_names"] == ["isForeignKey", "measurePersonCompleteness"]
    assert "only the check types isForeignKey, measurePersonCompleteness" in (r.dir / "report.html").read_text()
    with pytest.raises(ValueError, match="no check type isForeignKy in OMOP CDM v5.4"):
        runner.run(store, "5.4", tmp_path / "q", check_names=["isForeignKy"])


def test_check_levels_run_only_those_levels(store, tmp_path):
    """DQD's checkLevels: only checks of these levels (any case), with --check-names both must hold; a level that
    is none is refused before the run."""
    r = runner.run(store, "5.4", tmp_path / "q", check_levels=["concept"])
    assert {x["check_level"] for x in r.results} == {"CONCEPT"}
    assert len(r.results) == len([c for c in SUITE if c.level == "CONCEPT"])
    assert r.summary["check_levels"] == ["CONCEPT"] and "only the check levels CONCEPT" in (r.dir / "report.html").read_text()
    r = runner.run(store, "5.4", tmp_path / "q", check_levels=["FIELD", "table"], check_names=["plausibleValueLow"])
    assert len(r.results) == len([c for c in SUITE if c.name == "plausibleValueLow" and c.level == "FIELD"]) > 0
    with pytest.raises(ValueError, match="no check level ROW: the levels are TABLE, FIELD, CONCEPT, SOURCE"):
        runner.run(store, "5.4", tmp_path / "q", check_levels=["row"])
    # DQD's checkSeverity: fatal only (any case), with a level; a severity that is none refused
    r = runner.run(store, "5.4", tmp_path / "q", check_severity=["Fatal"], check_levels=["FIELD"])
    assert len(r.results) == len([c for c in SUITE if c.severity == "fatal" and c.level == "FIELD"]) > 0
    assert r.summary["check_severity"] == ["fatal"] and "only the check severities fatal" in (
        r.dir / "report.html").read_text()
    with pytest.raises(ValueError, match="no check severity fatl: the severities are characterization, convention, "
                                         "fatal, feed, site, source"):
        runner.run(store, "5.4", tmp_path / "q", check_severity=["fatl"])


@pytest.mark.parametrize("read,text,message", [
    (site.fields_config, "[source_fields.stg_x]\nmandatory = 'a'",
     r"\[source_fields.stg_x\]: mandatory must be a list of field names"),
    (site.fields_config, "[source_fields.stg_x]\nrequired = ['a']",
     r"\[source_fields.stg_x\]: unknown key 'required'; give key = \[...\], mandatory"),
    (site.fields_config, "[source_fields.stg_x.when]\na = 'b >'",
     r"\[source_fields.stg_x\]: when.a is not a valid SQL condition"),
    (site.tuning_config, "[thresholds]\nisRequired = 150",
     r"\[thresholds\] isRequired must be a percent from 0 to 100, not 150"),
    (site.tuning_config, "[thresholds]\nisRequired = 'five'", r"\[thresholds\] isRequired must be a percent"),
    (site.tuning_config, "[notes]\nisRequired = 5", r"\[notes\] isRequired must be a text"),
    # a key where a table belongs: it raised AttributeError or TypeError
    (site.parse, "check = {name = 'a'}", r"checks are tables, each written \[\[check\]\]"),
    (site.fields_config, "source_fields = ['stg_x']", r"source_fields is a table, written \[source_fields.<staging"),
    (site.fields_config, "[source_fields.stg_x]\nwhen = 'a > 1'", r"\[source_fields.stg_x\]: when is a table"),
    (site.tuning_config, "thresholds = 5", r"thresholds is a table, written \[thresholds\]"),
])
def test_site_file_errors_name_file_and_entry(read, text, message):
    """The site's [source_fields], [thresholds] and [notes] entries: a mistake names the file and the entry."""
    with pytest.raises(ValueError, match=message) as e:
        read(text, "site.toml")
    assert str(e.value).startswith("site.toml")


def test_feed_checks_flag_missing_days_and_volume_drops(store, tmp_path):
    days = [f"2024-01-{d:02d}" for d in range(1, 11)]
    lis = [d for d in days if d != "2024-01-05"]  # LIS silent on the 5th
    his = days
    rows = [("LIS", d) for d in lis for _ in range(10)] + [("HIS", d) for d in his for _ in range(10 if d != "2024-01-09" else 2)]
    store.execute("CREATE TABLE feed (source VARCHAR, received_at TIMESTAMP)")
    store.load_arrow("feed", pa.table({"source": [s for s, _ in rows],
                                       "received_at": pa.array([f"{d} 10:00:00" for _, d in rows]).cast(pa.timestamp("us"))}))
    cfg = site.feed_config("[feed]\ntable = 'feed'\n")
    r = runner.run(store, "5.4", tmp_path / "q", feed=cfg, only=["person"])
    got = {(x["check_name"], x["cdm_field"]): x for x in r.results if x["check_level"] == "SOURCE"}
    assert got["feedTimeliness", "LIS"]["status"] == "failed" and got["feedTimeliness", "LIS"]["examples"] == ["2024-01-05"]
    assert got["feedTimeliness", "HIS"]["status"] == "passed"
    assert got["feedVolume", "HIS"]["examples"] == ["2024-01-09"]
    assert got["feedVolume", "LIS"]["status"] == "passed"


def test_a_feed_silent_again_is_new_though_its_check_failed_before(store, tmp_path):
    """--fail-on-new: one more silent day of a source whose feed check failed already (an old outage) is new."""
    rows = [("LIS", f"2024-01-{d:02d}") for d in range(1, 21) if d != 5 for _ in range(10)]
    store.execute("CREATE TABLE feed (source VARCHAR, received_at TIMESTAMP)")
    store.load_arrow("feed", pa.table({"source": [s for s, _ in rows], "received_at": pa.array(
        [f"{d} 10:00:00" for _, d in rows]).cast(pa.timestamp("us"))}))
    cfg = site.feed_config("[feed]\ntable = 'feed'\n")
    first = runner.run(store, "5.4", tmp_path / "q", feed=cfg, only=["person"], fail_on_new=True)
    tid = next(x["check_id"] for x in first.results if x["check_name"] == "feedTimeliness")
    assert next(x["num_violated_rows"] for x in first.results if x["check_id"] == tid) == 1
    again = runner.run(store, "5.4", tmp_path / "q", feed=cfg, only=["person"], fail_on_new=True)
    assert again.summary["since_last_run"]["more_days"] == [] and not again.summary["refused_new"]
    store.execute("DELETE FROM feed WHERE CAST(received_at AS DATE) = DATE '2024-01-15'")  # silent again
    later = runner.run(store, "5.4", tmp_path / "q", feed=cfg, only=["person"], fail_on_new=True)
    # not a new failure (it failed then: run.json, the report and `quality runs` would say it did not), a feed check
    # with more days (review-docs #2), refused all the same
    since = later.summary["since_last_run"]
    assert (since["new_failures"], since["more_days"], later.summary["refused_new"]) == ([], [tid], True)
    assert ": 0 new failure(s), 0 new error(s), 1 feed check(s) with more days, 0 fixed" in (
        later.dir / "report.html").read_text()


def test_dqd_vs_spec_document_is_current():
    assert (REPO / "docs" / "dqd-vs-spec.md").read_text() == differences_markdown()


def test_spec_wins_over_dqd():
    """DQD marks condition_era dates as datetime and cohort_definition_id as a foreign key; the spec does not."""
    cs = {c.id for c in checks("5.4")}
    assert "field_isforeignkey_cohort_definition_cohort_definition_id" not in cs
    text = differences_markdown()
    assert "| condition_era | condition_era_start_date | cdmDatatype | datetime | date | the spec wins |" in text


# -- cdm import ------------------------------------------------------------------------------------------------

def _write_cdm(folder: Path):
    folder.mkdir()
    (folder / "PERSON.csv").write_text(
        "PERSON_ID,GENDER_CONCEPT_ID,YEAR_OF_BIRTH,BIRTH_DATETIME,RACE_CONCEPT_ID,ETHNICITY_CONCEPT_ID\n"
        "1,8507,1980,1980-05-01 00:00:00,0,0\n2,8532,1990,,0,0\n")
    pq.write_table(pa.table({"condition_occurrence_id": [1, 2], "person_id": [1, 2],
                             "condition_concept_id": [201826, 201826],
                             "condition_start_date": pa.array(["2020-01-02", "2021-01-01"]).cast(pa.date32()),
                             "condition_type_concept_id": [32817, 32817]}), folder / "condition_occurrence.parquet")


def test_import_csv_and_parquet_twice_is_a_no_op(tmp_path):
    _write_cdm(tmp_path / "cdm")
    (tmp_path / "cdm" / "death.csv").write_text("")  # an empty table as some exports write it: no header either
    # a delimiter ending every line; and another delimiter than the others' (the file's, as its header splits)
    (tmp_path / "cdm" / "care_site.csv").write_text("care_site_id;care_site_name;\n1;ICU, north;\n")
    eng = open_engine("duckdb::memory:")
    seen = []
    for _ in range(2):
        report = importer.import_folder(eng, tmp_path / "cdm", "5.4", progress=lambda *a: seen.append(a))
    assert ("person (2 rows)", 0, 4) in seen and seen[-1] == ("done", 4, 4)  # rows as they load, table by table
    assert eng.query("SELECT care_site_name AS n FROM care_site").column(0).to_pylist() == ["ICU, north"]
    assert {k: (r.rows, r.bad) for k, r in report.items()} == {
        "care_site": (1, 0), "condition_occurrence": (2, 0), "death": (0, 0), "person": (2, 0)}
    assert eng.query("SELECT count(*) AS n FROM person").column(0)[0].as_py() == 2
    rows = eng.query("SELECT year_of_birth, birth_datetime FROM person ORDER BY person_id").to_pylist()
    assert rows[0]["year_of_birth"] == 1980 and rows[1]["birth_datetime"] is None


def test_import_reads_a_quoted_empty_field_as_an_empty_text(tmp_path):
    """"" is an empty text, an empty field nothing (NULL), as DuckDB, PostgreSQL and pandas write and read them: a
    note without text (medlake's transform writes note_text '', a required field) comes back as it went; in a field
    that is no text (every field quoted, as Python's QUOTE_ALL writes them) "" is empty."""
    (tmp_path / "cdm").mkdir()
    (tmp_path / "cdm" / "note.csv").write_text(
        "note_id,person_id,note_date,note_type_concept_id,note_class_concept_id,note_title,note_text,"
        "encoding_concept_id,language_concept_id,provider_id\n"
        '1,1,2020-09-02,32817,3041851,"","",32678,4182948,\n'
        '"2","1","2020-09-03","32817","3041851",,"x","32678","4182948",""\n'
        "3,1,2020-09-04,32817,3041851,t,x,32678,4182948,  \n")  # a blank number: empty, as fixed-width files write it
    eng = open_engine("duckdb::memory:")
    report = importer.import_folder(eng, tmp_path / "cdm", "5.4")
    assert (report["note"].rows, report["note"].bad) == (3, 0)
    got = eng.query("SELECT note_id, note_title, note_text, provider_id FROM note ORDER BY note_id").to_pylist()
    assert [tuple(r.values()) for r in got] == [(1, "", "", None), (2, None, "x", None), (3, "t", "x", None)]


def test_import_sets_aside_numbers_and_dates_no_export_means_and_reads_decimals_exactly(tmp_path):
    """NaN, an infinity, a number too large for a double (1e400) or written in hexadecimal (Arrow reads 0x7a8 as 1960)
    is no measured value; a spreadsheet's two-digit year read with a four-digit --date-format (9/3/22) no date of
    the year 22: their rows are set aside, saying why. A Parquet DECIMAL (as Spark and Hive write) is read as the
    double nearest its digits: 49.3000 is 49.3, not 49.300000000000004."""
    (tmp_path / "cdm").mkdir()
    (tmp_path / "cdm" / "observation.csv").write_text(
        "observation_id,person_id,observation_concept_id,observation_date,observation_type_concept_id,value_as_number\n"
        + "".join(f"{i},1,0,2020-01-01,32817,{v}\n" for i, v in enumerate(["nan", "inf", "-Infinity", "1e400", "0x10",
                                                                          "7.25", "1e3"], 1)))
    (tmp_path / "cdm" / "person.csv").write_text(
        "person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id\n1,8507,0x7a8,0,0\n"
        "2,8532,1960,0,0\n")
    (tmp_path / "cdm" / "death.csv").write_text(
        "person_id,death_date,death_type_concept_id\n1,9/3/22,32817\n2,1/31/2020,32817\n")
    values = ["49.3000", "38.8000", "0.1000", "69.6000"]
    pq.write_table(pa.table({
        "measurement_id": pa.array(range(1, 5), pa.int64()), "person_id": pa.array([2] * 4, pa.int64()),
        "measurement_concept_id": pa.array([3025315] * 4, pa.int32()),
        "measurement_date": pa.array([dt.date(2020, 1, 1)] * 4), "measurement_type_concept_id": pa.array([32817] * 4),
        "value_as_number": pa.array([decimal.Decimal(v) for v in values], pa.decimal128(18, 4))}),
        tmp_path / "cdm" / "measurement.parquet")
    eng = open_engine("duckdb::memory:")
    aside = []
    report = importer.import_folder(eng, tmp_path / "cdm", "5.4", dates="%m/%d/%Y",
                                    set_aside=lambda files, rows: aside.extend(rows))
    assert {k: (r.rows, r.bad) for k, r in report.items()} == {
        "death": (1, 1), "measurement": (4, 0), "observation": (2, 5), "person": (1, 1)}
    assert eng.query("SELECT value_as_number AS v FROM observation ORDER BY 1").column(0).to_pylist() == [7.25, 1000.0]
    assert eng.query("SELECT value_as_number AS v FROM measurement ORDER BY measurement_id").column(0).to_pylist() == [
        49.3, 38.8, 0.1, 69.6]
    why = " ".join(str(r) for r in aside)
    assert "cannot read 'nan' as float (not a finite decimal number" in why and "'9/3/22' as date" in why
    assert "cannot read '0x7a8' as integer" in why


def test_import_reads_a_parquet_float32_as_its_digits(tmp_path):
    """review-import #13: a float32 column (pandas' and Spark's `float`) was loaded as its binary value, 98.6 as
    98.5999984741211: a range's bound of 98.6 then flipped. It is read as the double its digits name, as a DECIMAL."""
    (tmp_path / "cdm").mkdir()
    pq.write_table(pa.table({
        "measurement_id": pa.array([1, 2, 3], pa.int64()), "person_id": pa.array([2] * 3, pa.int64()),
        "measurement_concept_id": pa.array([3020891] * 3, pa.int32()),
        "measurement_date": pa.array([dt.date(2020, 1, 1)] * 3), "measurement_type_concept_id": pa.array([32817] * 3),
        "value_as_number": pa.array([98.6, 0.1, None], pa.float32())}), tmp_path / "cdm" / "measurement.parquet")
    eng = open_engine("duckdb::memory:")
    importer.import_folder(eng, tmp_path / "cdm", "5.4")
    assert eng.query("SELECT value_as_number FROM measurement ORDER BY measurement_id").column(0).to_pylist() == [
        98.6, 0.1, None]


def test_import_reads_dates_and_times_as_exports_write_them(tmp_path):
    """SQL Server's '2020-12-31 00:00:00.000' in a date field, and its datetime2's seven digits after the second
    (.1234567, to the microsecond), 20201231, a time after the day; a zone after a time
    (Z, +02:00, -0500) dropped, the time as written kept; a day or month that does not exist set aside, saying so."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "observation_period.csv").write_text(
        "observation_period_id,person_id,observation_period_start_date,observation_period_end_date,"
        "period_type_concept_id\n1,1,2010-01-01 00:00:00.000,20201231,32817\n2,2,2015-01-01T13:45:00,2016-01-01,32817\n"
        "3,3,2015-01-01,2016-02-30 00:00:00,32817\n4,4,2017-01-01 00:00:00.0000000,2017-12-31,32817\n"
        "5,5,0000-01-01,2016-01-01,32817\n")  # year 0: Arrow reads 1 BC, which no R, Python or SQL Server holds
    (folder / "person.csv").write_text(
        "person_id,gender_concept_id,year_of_birth,birth_datetime,race_concept_id,ethnicity_concept_id\n"
        "1,8507,1950,1950-03-04 10:00:00.250,0,0\n2,8507,1950,1950-03-04T10:00:00Z,0,0\n"
        "3,8507,1950,1950-03-04T10:00:00+02:00,0,0\n4,8507,1950,1950-03-04 10:00-0500,0,0\n"
        "5,8507,1950,1950-13-04 10:00:00,0,0\n6,8507,1950,19500304,0,0\n7,8507,1950,1950-03-04 10:00:00.1234567,0,0\n")
    # a day as a number in Parquet (an export's YYYYMMDD): read as in a CSV file, not as days since 1970
    pq.write_table(pa.table({"person_id": [1, 2, 3], "death_date": pa.array([20200131, 18262, 20200229], pa.int32()),
                             "death_datetime": pa.array([20200131.0, None, None]),
                             "death_type_concept_id": [32817] * 3}), folder / "death.parquet")
    eng = open_engine("duckdb::memory:")
    aside = []
    report = importer.import_folder(eng, folder, "5.4", set_aside=lambda f, b: aside.extend(b))
    assert {k: (r.rows, r.bad) for k, r in report.items()} == {
        "death": (2, 1), "observation_period": (3, 2), "person": (6, 1)}
    assert eng.query("SELECT death_date AS d, death_datetime AS t FROM death ORDER BY 1").to_pylist() == [
        {"d": dt.date(2020, 1, 31), "t": dt.datetime(2020, 1, 31)}, {"d": dt.date(2020, 2, 29), "t": None}]
    assert [b.detail for b in aside if b.table == "death"] == [
        "field death_date: cannot read 18262 as date (a date is read as YYYY-MM-DD or YYYYMMDD); fix the value in the "
        "file and import again"]
    aside = [b for b in aside if b.table != "death"]
    # a time with its zone (pandas' tz-aware column): the clock's time there, the day beside it the same day
    local = pc.assume_timezone(pa.array([dt.datetime(2020, 1, 1, 0, 30)], pa.timestamp("us")), "Europe/Paris")
    pq.write_table(pa.table({"visit_occurrence_id": [1], "person_id": [1], "visit_concept_id": [9201],
                             "visit_start_date": local, "visit_start_datetime": local, "visit_end_date": local,
                             "visit_type_concept_id": [32817]}), folder / "visit_occurrence.parquet")
    # a Parquet time in a text field (measurement_time) as a CSV file writes it, not Arrow's 08:00:00.000000 cut
    pq.write_table(pa.table({"measurement_id": [1, 2], "person_id": [1, 1], "measurement_concept_id": [0, 0],
                             "measurement_date": [dt.date(2020, 1, 1)] * 2, "measurement_type_concept_id": [32817] * 2,
                             "measurement_time": pa.array([dt.time(8, 0), dt.time(8, 0, 5)], pa.time64("us"))}),
                   folder / "measurement.parquet")
    report = importer.import_folder(eng, folder, "5.4")
    assert eng.query("SELECT visit_start_date AS d, visit_start_datetime AS t FROM visit_occurrence").to_pylist() == [
        {"d": dt.date(2020, 1, 1), "t": dt.datetime(2020, 1, 1, 0, 30)}]
    assert eng.query("SELECT measurement_time FROM measurement ORDER BY 1").column(0).to_pylist() == [
        "08:00:00", "08:00:05"] and not report["measurement"].notes
    (folder / "measurement.parquet").unlink()
    periods = eng.query("SELECT observation_period_start_date AS s, observation_period_end_date AS e "
                        "FROM observation_period ORDER BY 1").to_pylist()
    assert periods == [{"s": dt.date(2010, 1, 1), "e": dt.date(2020, 12, 31)},
                       {"s": dt.date(2015, 1, 1), "e": dt.date(2016, 1, 1)},
                       {"s": dt.date(2017, 1, 1), "e": dt.date(2017, 12, 31)}]
    births = eng.query("SELECT birth_datetime AS b FROM person ORDER BY person_id").column(0).to_pylist()
    assert births == [dt.datetime(1950, 3, 4, 10, 0, 0, 250000)] + [dt.datetime(1950, 3, 4, 10, 0)] * 3 + [
        dt.datetime(1950, 3, 4), dt.datetime(1950, 3, 4, 10, 0, 0, 123456)]
    why = sorted(b.detail for b in aside)
    assert len(why) == 3 and "month must be in 1..12" in why[0] and "day is out of range for month" in why[1], why
    assert why[2] == ("field observation_period_start_date: cannot read '0000-01-01' as date (year 0 is out of range)"
                      "; fix the value in the file and import again")


PERSON_HEADER = "person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id\n"


@pytest.mark.parametrize("name,content,message,strict", [
    ("person.csv", PERSON_HEADER + "1,8507,19x0,0,0\n",
     r"person.csv:2: field year_of_birth: cannot read '19x0' as integer", True),
    ("person.csv", PERSON_HEADER + "1,8507,1980,0,0\n2,,1990,0,0\n",
     r"person.csv:3: field gender_concept_id is required in person but empty", True),
    ("person.csv", PERSON_HEADER + "1,8507,1980,0,0\n2,8507\n", r"person.csv:3: 2 fields where the header has 5", True),
    # --strict names the first bad line of the file, whichever check finds it
    ("person.csv", PERSON_HEADER + "1,8507,19x0,0,0\n2,8507\n", r"person.csv:2: field year_of_birth: cannot read", True),
    ("person.csv", PERSON_HEADER + "1,8507\n2,8507,19x0,0,0\n", r"person.csv:2: 2 fields where the header has 5", True),
    ("person.csv", "person_id,shoe_size\n1,42\n", r"column\(s\) shoe_size are not fields of person", False),
    ("person.csv", "person_id,year_of_birth\n1,1980\n", r"no column gender_concept_id, .*required in person", False),
    ("patients.csv", "a\n1\n", r"no table 'patients' in OMOP CDM v5.4", False),
    ("person.csv", PERSON_HEADER.replace("\n", ",\n") + "1,8507,1980,0,0,x\n",
     "person.csv: a column without a name in the header holds values; name it or remove it", False),
    ("person.csv", '"",' + PERSON_HEADER + '"1",1,8507,1980,0,0\n"2",2,8507,1981,0,0\n',
     r"person.csv: a column without a name in the header holds values \(R's write.csv writes its row names so: give "
     r"it row.names = FALSE\); name it or remove it", False),
    ("attribute_definition.csv", "attribute_definition_id\n1\n", r"attribute_definition is a table of OMOP CDM v5.3, "
     r"not v5.4: give --version 5.3 if the files are v5.3", False),
    ("visit_occurrence.csv", "visit_occurrence_id,person_id,visit_concept_id,visit_start_date,visit_end_date,"
     "visit_type_concept_id,admitting_source_concept_id\n1,1,9201,2020-01-01,2020-01-02,32817,0\n",
     r"visit_occurrence.csv: column\(s\) admitting_source_concept_id are fields of visit_occurrence in OMOP CDM v5.3, "
     r"not v5.4: give --version 5.3 if the files are v5.3", False),
    ("person.csv", "person_id,PERSON_ID\n1,2\n", r"person.csv: column\(s\) person_id appear more than once", False),
    # one row exported without a header (bcp, \copy without HEADER), and a header alone, are read as headers are
    ("cdm_source.csv", "Review Hospital,RH,Review,,,,2020-12-31,2021-01-15,v5.4,v5.0 20-MAY-22,756265\n",
     r"cdm_source.csv: its first line \(Review Hospital, RH, Review, 2020-12-31, …\) names no field of cdm_source: a "
     r"file without a header row \(as bcp, or \\copy without HEADER, writes one\)\? Export it with the fields' names",
     False),
    ("person.csv", "person_id,year_of_birth\n", r"person.csv: no column gender_concept_id, .*required in person", False),
    ("cdm_source.csv", "cdm_source_name,cdm_source_abbreviation,cdm_holder,source_release_date,cdm_release_date,"
     "cdm_version,vocabulary_version\nH,H,H,2020-12-31,2021-01-15,v5.3.1,v5.0\n",
     r"cdm_source.csv: no column cdm_version_concept_id, required in cdm_source in OMOP CDM v5.4, not in v5.3: give "
     r"--version 5.3 if the files are v5.3", False),
    ("Person.txt", PERSON_HEADER + "1,8507,1980,0,0\n", r"Person.txt: not a kind of file the import reads \(.csv "
     r"\(any --delimiter\), .tsv, .parquet, or .csv/.tsv compressed as .gz, .bz2 or .zst\); convert or rename it", False),
])
def test_import_errors_name_file_line_and_field_and_load_nothing(tmp_path, name, content, message, strict):
    """A file that is not a CDM table stops the import; with `strict`, so does the first bad row."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "death.csv").write_text("person_id,death_date,death_type_concept_id\n1,2020-01-01,32817\n")
    (folder / name).write_text(content)
    eng = open_engine("duckdb::memory:")
    aside = []
    with pytest.raises(ValueError, match=message):
        importer.import_folder(eng, folder, "5.4", strict=strict, set_aside=lambda f, b: aside.append(b))
    if "death" in eng.tables():
        assert eng.query("SELECT count(*) FROM death").column(0)[0].as_py() == 0  # all or nothing
    assert aside == []


@pytest.mark.parametrize("wrong_fields,bad_year", [(30, 20), (20, 30), (5, 60), (60, 5)])
def test_strict_import_names_the_first_bad_line_across_batches(tmp_path, monkeypatch, wrong_fields, bad_year):
    """The CSV reader skips a line with the wrong number of fields as it reads (maybe ahead of the batch being
    loaded); a value that cannot be read is found when its batch is loaded: --strict names whichever comes first in
    the file."""
    monkeypatch.setattr(importer, "BATCH_BYTES", 128)
    (tmp_path / "cdm").mkdir()
    lines = [f"{i},8507,{'19x0' if i + 1 == bad_year else 1980},0,0" if i + 1 != wrong_fields else f"{i},8507"
             for i in range(1, 80)]
    (tmp_path / "cdm" / "person.csv").write_text(PERSON_HEADER + "\n".join(lines) + "\n")
    first = min(wrong_fields, bad_year)
    said = "2 fields where the header has 5" if first == wrong_fields else "field year_of_birth: cannot read '19x0'"
    with pytest.raises(ValueError, match=rf"person.csv:{first}: {said}"):
        importer.import_folder(open_engine("duckdb::memory:"), tmp_path / "cdm", "5.4", strict=True)


@pytest.mark.parametrize("name,content,told,hints,query,rows", [
    # SQL Server writes NULL, R writes NA: without --null an integer's NULL is set aside saying to give it
    ("person.csv", "person_id,gender_concept_id,year_of_birth,month_of_birth,race_concept_id,ethnicity_concept_id,"
     "person_source_value\n1,8507,1980,NULL,0,0,NULL\n2,8507,1980,NA,0,0,p2\n3,8507,1980,4,0,0,NA\n",
     {"nulls": ("NULL", "NA")}, ["if it means empty, give --null 'NULL'", "if it means empty, give --null 'NA'"],
     "SELECT month_of_birth AS m, person_source_value AS v FROM person ORDER BY person_id",
     [{"m": None, "v": None}, {"m": None, "v": "p2"}, {"m": 4, "v": None}]),
    # a European export: 7,5 with ';' between fields
    ("measurement.csv", "measurement_id;person_id;measurement_concept_id;measurement_date;measurement_type_concept_id;"
     "value_as_number;range_high\n1;1;3004410;2020-01-01;32817;7,5;8\n2;1;3004410;2020-01-02;32817;-0,25;\n",
     {"delimiter": ";", "decimal": ","}, ["if it is a decimal comma, give --decimal ','"] * 2,
     "SELECT value_as_number AS v, range_high AS h FROM measurement ORDER BY 1",
     [{"v": -0.25, "h": None}, {"v": 7.5, "h": 8.0}]),
    # a file saved by a spreadsheet in the US: month first, a time with AM/PM; ISO dates beside them still read
    ("measurement.csv", "measurement_id,person_id,measurement_concept_id,measurement_date,measurement_datetime,"
     "measurement_type_concept_id\n1,1,3004410,1/31/2020,1/31/2020 10:05 PM,32817\n2,1,3004410,2020-02-01,,32817\n"
     "3,1,3004410,3/4/2020,3/4/2020 7:30,32817\n",
     {"dates": "%m/%d/%Y"}, ["if the file writes its dates so, give --date-format '%m/%d/%Y'",
                             "if the file writes its dates so, give --date-format '%m/%d/%Y' or '%d/%m/%Y' (which is "
                             "the day?)"],
     "SELECT measurement_date AS d, measurement_datetime AS t FROM measurement ORDER BY measurement_id",
     [{"d": dt.date(2020, 1, 31), "t": dt.datetime(2020, 1, 31, 22, 5)}, {"d": dt.date(2020, 2, 1), "t": None},
      {"d": dt.date(2020, 3, 4), "t": dt.datetime(2020, 3, 4, 7, 30)}]),
])
def test_import_reads_the_forms_exports_write_when_told(tmp_path, name, content, told, hints, query, rows):
    """Without the option, the rows it would read are set aside saying which option to give; with it, read."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / name).write_text(content)
    eng = open_engine("duckdb::memory:")
    got = []
    importer.import_folder(eng, folder, "5.4", delimiter=told.get("delimiter", ","),
                           set_aside=lambda f, b: got.extend(b))
    assert [b.detail.split("; ")[-1] for b in got] == hints
    [report] = importer.import_folder(eng, folder, "5.4", **told).values()
    assert (report.rows, report.bad, report.notes) == (len(rows), 0, {})
    assert eng.query(query).to_pylist() == rows
    if "decimal" in told:  # the same numbers quoted in a comma-separated file: the quotes tell the two apart
        (folder / name).write_text(content.replace(";", ",").replace("7,5", '"7,5"').replace("-0,25", '"-0,25"'))
        [report] = importer.import_folder(eng, folder, "5.4", decimal=",").values()
        assert (report.rows, report.bad) == (len(rows), 0) and eng.query(query).to_pylist() == rows


def test_import_with_a_decimal_comma_sets_aside_a_number_with_a_point(tmp_path):
    """Told the decimal mark is ',', a '.' in a number is a thousands separator or another decimal mark: 1.234 is
    neither read as 1.234 nor as 1234 but set aside saying so; a value is shown as the file holds it, and the
    option to give as a shell takes it (\\N, not repr's doubled backslash)."""
    (tmp_path / "cdm").mkdir()
    (tmp_path / "cdm" / "observation.csv").write_text(
        "observation_id;person_id;observation_concept_id;observation_date;observation_type_concept_id;value_as_number\n"
        + "".join(f"{i};1;0;2020-01-01;32817;{v}\n" for i, v in enumerate(["1.234", "7,5", "1.234,5", "\\N", "1,234,5"],
                                                                           1)))
    eng = open_engine("duckdb::memory:")
    aside = []
    [report] = importer.import_folder(eng, tmp_path / "cdm", "5.4", delimiter=";", decimal=",",
                                      set_aside=lambda f, rows: aside.extend(rows)).values()
    assert (report.rows, report.bad) == (1, 4)
    assert eng.query("SELECT value_as_number AS v FROM observation").column(0).to_pylist() == [7.5]
    said = {b.line: b.detail for b in aside}
    assert said[2].startswith("field value_as_number: cannot read '1.234' as float (a '.' in a number of a file whose "
                              "decimal mark is ','") and "'1.234,5'" in said[4]
    assert said[5].endswith("if it means empty, give --null '\\N'")
    assert said[6].startswith("field value_as_number: cannot read '1,234,5' as float")  # as written, not 1.234.5


def test_import_leaves_out_a_sites_own_columns_when_told(tmp_path, monkeypatch):
    """A site's own column (an ETL batch id) stops the import saying what to give; with --skip-unknown-columns it is
    left out, named with its values and the first one's line (in a later batch than the first), and a field of the
    other CDM version says so."""
    monkeypatch.setattr(importer, "BATCH_BYTES", 256)
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "person.csv").write_text(PERSON_HEADER.replace("\n", ",etl_batch\n") + "".join(
        f"{i},8507,1980,0,0,{'b7' if i > 12 else ''}\n" for i in range(1, 21)))
    (folder / "visit_occurrence.csv").write_text("visit_occurrence_id,person_id,visit_concept_id,visit_start_date,"
                                                 "visit_end_date,visit_type_concept_id,admitting_source_concept_id\n"
                                                 "1,1,9201,2020-01-01,2020-01-02,32817,\n")
    eng = open_engine("duckdb::memory:")
    with pytest.raises(ValueError, match=r"person.csv: column\(s\) etl_batch are not fields of person \(fields: .*\); "
                                         r"give --skip-unknown-columns to leave them out"):
        importer.import_folder(eng, folder, "5.4")
    report = importer.import_folder(eng, folder, "5.4", skip_unknown=True)
    assert (report["person"].rows, report["person"].notes) == (20, {("etl_batch", "skipped"): (8, f"{folder}/person.csv:14")})
    assert report["visit_occurrence"].notes == {("admitting_source_concept_id", "skipped"): (0, f"{folder}/visit_occurrence.csv:2")}
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}")
    p = subprocess.run([sys.executable, "-m", "medlake.cli", "cdm", "import", str(folder), "--skip-unknown-columns"],
                       env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines() == [
        f"warning: person.etl_batch: not a field of person in OMOP CDM v5.4: left out (8 value(s), the first: "
        f"{folder}/person.csv:14)",
        "warning: visit_occurrence.admitting_source_concept_id: not a field of visit_occurrence in OMOP CDM v5.4: "
        "left out (0 value(s)); a field of v5.3: give --version 5.3 if the files are v5.3"]


def test_import_of_the_other_versions_files_into_a_store_that_holds_one_says_to_use_another_store(tmp_path):
    """`medlake init` made the store v5.4: --version 5.3 cannot change it, so the import says where v5.3 files go."""
    from medlake.cdm import store as cdm_store

    (tmp_path / "cdm").mkdir()
    (tmp_path / "cdm" / "visit_occurrence.csv").write_text(
        "visit_occurrence_id,person_id,visit_concept_id,visit_start_date,visit_end_date,visit_type_concept_id,"
        "admitting_source_concept_id\n1,1,9201,2020-01-01,2020-01-02,32817,0\n")
    eng = open_engine("duckdb::memory:")
    cdm_store.init(eng, "5.4")
    with pytest.raises(ValueError, match=r"fields of visit_occurrence in OMOP CDM v5.3, not v5.4: this store holds "
                                         r"v5.4: v5.3 files go into a v5.3 store \(a new --store: the import makes it"):
        importer.import_folder(eng, tmp_path / "cdm", "5.4")
    with pytest.raises(ValueError, match="it cannot be initialised as v5.3: give another --store for a v5.3 CDM"):
        importer.import_folder(eng, tmp_path / "cdm", "5.3")


def test_import_stops_on_a_parquet_column_of_lists_or_structs(tmp_path):
    """A nested column (a list, a struct) has no value that reads as the field's: the import stops in one line (a
    traceback from pyarrow's cast before); so does a true or a time where a number is (read as 1, or as a count of
    milliseconds, before). Text as Parquet's large or view strings is read as text."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    base = {"person_id": [1, 2], "gender_concept_id": [8507] * 2, "year_of_birth": [1980] * 2,
            "race_concept_id": [0] * 2, "ethnicity_concept_id": [0] * 2}
    for extra, message in [({"person_id": pa.array([[1], [2]])}, "column person_id holds list<element: int64> "
                            "values, which cannot be read as the bigint of person.person_id: convert the column to "
                            "bigint values, or to text as a CSV file holds them"),
                           ({"year_of_birth": pa.array([True, False])}, "column year_of_birth holds bool values, which "
                            "cannot be read as the integer"),  # (the cast would read true as 1)
                           ({"person_id": pa.array([dt.datetime(2020, 1, 1)] * 2, pa.timestamp("ms"))},
                            "column person_id holds timestamp[ms] values"),  # (the cast: milliseconds since 1970)
                           ({"person_source_value": pa.array([{"a": 1}, {"a": 2}])}, "column person_source_value "
                            "holds struct<a: int64> values, which cannot be read as the varchar of "
                            "person.person_source_value")]:
        pq.write_table(pa.table({**base, **extra}), folder / "person.parquet")
        eng = open_engine("duckdb::memory:")
        with pytest.raises(importer.CdmImportError, match=re.escape(f"{folder / 'person.parquet'}: {message}")):
            importer.import_folder(eng, folder, "5.4")
        assert "person" not in eng.tables()  # nothing loaded, nor the store made
    pq.write_table(pa.table({**base, "birth_datetime": pa.array(["2020-01-01 10:00"] * 2, pa.large_string())}),
                   folder / "person.parquet")
    eng = open_engine("duckdb::memory:")
    importer.import_folder(eng, folder, "5.4")
    assert eng.query("SELECT birth_datetime FROM person").column(0).to_pylist() == [dt.datetime(2020, 1, 1, 10)] * 2


def test_import_names_a_header_inside_the_file(tmp_path):
    """Two exports joined one after the other (cat): the second one's header is a row, set aside saying so."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "person.csv").write_text(PERSON_HEADER + "1,8507,1980,0,0\n" + PERSON_HEADER + "2,8532,1990,0,0\n")
    got = []
    [report] = importer.import_folder(open_engine("duckdb::memory:"), folder, "5.4",
                                      set_aside=lambda f, b: got.extend(b)).values()
    assert [(b.line, b.field, b.reason, b.detail) for b in got] == [
        (3, "person_id", "header_row", "the file's header again, inside it (files joined one after the other?): "
                                       "remove the line and import again")]
    assert report.rows == 2 and got[0].raw == PERSON_HEADER.strip().encode()


def test_import_date_format_is_checked_and_a_date_not_in_it_set_aside(tmp_path):
    for form, message in [("%m/%d/%y", r"has a two-digit year \(%y\): 1/31/45 is 1945 or 2045\?"),
                          ("%m/%Y", r"needs a day \(%d\), a month \(%m, or %b for Jan\) and a year \(%Y\)")]:
        with pytest.raises(ValueError, match=message):
            importer.csv_format(dates=form)
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "death.csv").write_text("person_id,death_date,death_type_concept_id\n1,31.01.2020,32817\n"
                                      "2,2020-01-31,32817\n3,31/01/2020,32817\n")
    got = []
    eng = open_engine("duckdb::memory:")
    [report] = importer.import_folder(eng, folder, "5.4", dates="%d.%m.%Y",
                                      set_aside=lambda f, b: got.extend(b)).values()
    assert eng.query("SELECT death_date FROM death ORDER BY 1").column(0).to_pylist() == [dt.date(2020, 1, 31)] * 2
    assert [(b.line, b.detail) for b in got] == [(4, "field death_date: cannot read '31/01/2020' as date (a date is "
                                                  "read as %d.%m.%Y (--date-format) or YYYY-MM-DD, a time after it "
                                                  "as HH:MM[:SS] [AM/PM]); fix the value in the file and import again")]


@pytest.mark.parametrize("parquet", [False, True])
def test_import_reads_integers_pandas_wrote_as_floats(tmp_path, parquet):
    """pandas writes an integer column with empty values as floats (12.0, in CSV and Parquet), R's write.csv writes
    100000 as 1e+05 (readr 1e5, Java 1.0E10): read as the integer; a fraction, or a long number as a spreadsheet
    shows it (1.23457E+11, its last digits lost), is set aside saying so."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    n = 8
    cols = {"person_id": [float(i) for i in range(1, n + 1)], "gender_concept_id": [8507.0] * n,
            "year_of_birth": [1980.0] * n, "race_concept_id": [0.0] * n, "ethnicity_concept_id": [0.0] * n,
            "provider_id": [12.0, None, 12.5, 1.23457e11] + [1e5, 1e5, 1e10, 1.2e11] if parquet else
            ["12.0", None, "12.5", "1.23457E+11", "1e+05", "1e5", "1.0E10", "1.2E+11"]}
    if parquet:
        pq.write_table(pa.table(cols), folder / "person.parquet")
    else:
        (folder / "person.csv").write_text(",".join(cols) + "\n" + "".join(
            ",".join("" if v is None else str(v) for v in row) + "\n" for row in zip(*cols.values())))
    eng = open_engine("duckdb::memory:")
    got = []
    importer.import_folder(eng, folder, "5.4", set_aside=lambda f, b: got.extend(b))
    assert eng.query("SELECT person_id AS p, provider_id AS v FROM person ORDER BY 1").to_pylist() == [
        {"p": 1, "v": 12}, {"p": 2, "v": None}] + ([{"p": 4, "v": 123_457_000_000}] if parquet else []) + [
        {"p": 5, "v": 100_000}, {"p": 6, "v": 100_000}, {"p": 7, "v": 10_000_000_000}, {"p": 8, "v": 120_000_000_000}]
    assert [(b.line, b.field, b.detail.split(" (", 1)[1].split(")")[0]) for b in got] == [
        (3 if parquet else 4, "provider_id", "not a whole number")] + ([] if parquet else [
            (5, "provider_id", "a long number as a spreadsheet shows it, six digits kept: the others are lost; "
                               "export the column with all its digits")])


def test_the_version_the_files_are_of(tmp_path):
    """Without --version: the store's version, else the one the files' tables and columns are of, else the
    configured one."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "person.csv").write_text(PERSON_HEADER + "1,8507,1980,0,0\n")
    assert importer.files_version(folder) is None  # person is the same in both
    (folder / "visit_occurrence.csv").write_text("visit_occurrence_id;person_id;visit_concept_id;visit_start_date;"
                                                 "visit_end_date;visit_type_concept_id;ADMITTING_SOURCE_CONCEPT_ID\n")
    assert importer.files_version(folder) == "5.3"
    (folder / "visit_occurrence.csv").unlink()
    (folder / "cdm_source.csv").write_text("cdm_source_name,cdm_source_abbreviation,cdm_holder,source_release_date,"
                                           "cdm_release_date,cdm_version,vocabulary_version\n")
    assert importer.files_version(folder) == "5.3"  # without v5.4's required cdm_version_concept_id
    eng = open_engine("duckdb::memory:")
    with pytest.raises(ValueError, match="give --version 5.3 if the files are v5.3"):
        importer.import_folder(eng, folder, "5.4")  # (the store is new: the import that stopped left it so)
    assert importer.import_folder(eng, folder, "5.3")["cdm_source"].rows == 0
    (folder / "cdm_source.csv").unlink()
    (folder / "cohort.csv").write_text("cohort_definition_id,subject_id,cohort_start_date,cohort_end_date\n")
    with pytest.raises(ValueError, match="cohort.csv: cohort is a results table of OMOP CDM v5.4, which v5.3 has not: "
                                         "move it out of the folder"):
        importer.import_folder(open_engine("duckdb::memory:"), folder, "5.3")
    (folder / "cohort.csv").unlink()
    (folder / "episode").mkdir()
    pq.write_table(pa.table({"episode_id": [1]}), folder / "episode" / "part-0.parquet")
    assert importer.files_version(folder) == "5.4"
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}")
    cli = [sys.executable, "-m", "medlake.cli"]
    assert subprocess.run(cli + ["init", "--cdm-version", "5.3"], env=env, cwd=tmp_path).returncode == 0
    (folder / "episode" / "part-0.parquet").unlink()
    p = subprocess.run(cli + ["cdm", "import", str(folder)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and "OMOP CDM v5.3 imported" in " ".join(p.stdout.split()), p.stderr  # the store's


def test_import_delimiter_is_one_character(tmp_path):
    _write_cdm(tmp_path / "cdm")
    with pytest.raises(ValueError, match=r"the delimiter must be one character .*, not ';;'"):
        importer.import_folder(open_engine("duckdb::memory:"), tmp_path / "cdm", "5.4", delimiter=";;")


def test_import_sets_bad_rows_aside_with_where_and_why_and_loads_the_rest(tmp_path):
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "person.csv").write_text(
        PERSON_HEADER + "1,8507,1980,0,0\n2,8532,19x0,0,0\n3,,1990,0,0\n4,8507\n5,8507,1970,0,0\n"
        "6,8507,3000000000,x,0\n7,8507,1975,0,0\n")
    (folder / "death.tsv").write_text("person_id\tdeath_date\tdeath_type_concept_id\n1\t2020-02-30\t32817\n"
                                      "5\t20200101\t32817\n7\t2020-03-01 00:00:00\t32817\n")
    pq.write_table(pa.table({"observation_period_id": ["1", "2", "3"], "person_id": ["1", "5", "7"],
                             "observation_period_start_date": ["2019-01-01", "2019-13-01", "2019-01-01"],
                             "observation_period_end_date": ["2020-01-01", "2020-01-01", "2020-01-01"],
                             "period_type_concept_id": ["32817", "32817", "32817"]}),
                   folder / "observation_period.parquet")
    eng = open_engine("duckdb::memory:")
    got = {}
    report = importer.import_folder(eng, folder, "5.4", set_aside=lambda files, bad: got.update(files=files, bad=bad))
    assert {t: (r.rows, r.bad) for t, r in report.items()} == {
        "death": (2, 1), "observation_period": (2, 1), "person": (3, 4)}
    assert sorted(eng.query("SELECT person_id FROM person").column(0).to_pylist()) == [1, 5, 7]
    assert sorted(eng.query("SELECT person_id FROM death").column(0).to_pylist()) == [5, 7]
    assert set(got["files"]) == {"death", "observation_period", "person"}
    bad = {(b.table, b.line): b for b in got["bad"]}
    assert {k: (b.field, b.reason) for k, b in bad.items()} == {
        ("person", 3): ("year_of_birth", "invalid"),
        ("person", 4): ("gender_concept_id", "missing_mandatory"),
        ("person", 5): (None, "malformed"),
        ("person", 7): ("year_of_birth", "invalid"),  # and race_concept_id: both said
        ("death", 2): ("death_date", "invalid"),
        ("observation_period", 2): ("observation_period_start_date", "invalid"),
    }
    assert "out of range for a 32-bit integer" in bad["person", 7].detail and "race_concept_id" in bad["person", 7].detail
    assert bad["person", 7].raw == b"6,8507,3000000000,x,0" and bad["person", 5].raw == b"4,8507"
    assert "2 fields where the header has 5" in bad["person", 5].detail
    assert bad["death", 2].raw == b"1\t2020-02-30\t32817" and "day is out of range" in bad["death", 2].detail
    assert bad["death", 2].where.endswith("death.tsv:2")
    assert json.loads(bad["observation_period", 2].raw)["observation_period_start_date"] == "2019-13-01"
    assert bad["observation_period", 2].where.endswith("observation_period.parquet: row 2")


@pytest.mark.parametrize("block", [importer.BATCH_BYTES, 256])
def test_import_names_the_file_line_of_rows_after_a_value_written_over_several_lines(tmp_path, monkeypatch, block):
    """A note's text quoted over several lines (CRLF or LF) moves the lines of the rows after it, in its batch and the
    next ones; a row with the wrong number of fields spanning lines is found by its first line."""
    monkeypatch.setattr(importer, "BATCH_BYTES", block)
    folder = tmp_path / "cdm"
    folder.mkdir()
    head = "note_id,person_id,note_date,note_type_concept_id,note_class_concept_id,note_title,note_text," \
           "encoding_concept_id,language_concept_id\n"
    rows = ['1,1,2020-01-01,32817,0,t,"one\ntwo\r\nthree",0,0',  # lines 2-4
            "2,1,2020-01-0x,32817,0,t,plain,0,0",  # line 5
            '3,1,2020-01-02,32817,0,t,"a\nb",0',  # lines 6-7: 8 fields
            '4,1,2020-01-03,32817,0,t,"' + "x" * 100 + '\n\n",0,0',  # lines 8-10
            "5,1,2020-13-01,32817,0,t,plain,0,0"]  # line 11
    (folder / "note.csv").write_text(head + "\n".join(rows) + "\n", newline="")
    got = []
    report = importer.import_folder(open_engine("duckdb::memory:"), folder, "5.4",
                                    set_aside=lambda files, bad: got.extend(bad))
    assert (report["note"].rows, report["note"].bad) == (2, 3)
    assert sorted((b.line, b.reason, b.field) for b in got) == [
        (5, "invalid", "note_date"), (6, "malformed", None), (11, "invalid", "note_date")]


def test_import_stops_at_a_quote_not_closed_naming_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(importer, "BATCH_BYTES", 256)
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "person.csv").write_text(PERSON_HEADER.replace("\n", ",person_source_value\n") + "".join(
        f"{i},8507,1980,0,0,{'p' if i != 12 else chr(34) + 'p'}{i}\n" for i in range(1, 60)))  # 34: a quote
    with pytest.raises(ValueError, match=r"person.csv:13: the row runs on for more than 0 MB \(a quote that is not "
                                         r"closed\?\): fix the quoting there"):
        importer.import_folder(open_engine("duckdb::memory:"), folder, "5.4")


def test_import_sets_aside_a_row_whose_quote_not_closed_swallowed_the_rows_after_it(tmp_path):
    """A quote opened in a short field and closed again rows later reads those rows as one value: the row is set
    aside (the rows it swallowed kept in it), not loaded as a person with a 4-line source value and three persons
    fewer; a note whose text runs over lines, one of them with commas, loads."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "person.csv").write_text(PERSON_HEADER.replace("\n", ",person_source_value\n") + "".join(
        f"{i},8507,1980,0,0,{'p' if i not in (2, 5) else chr(34) + 'p'}{i}{chr(34) if i == 5 else ''}\n"
        for i in range(1, 8)))  # 34: a quote; person 2's is not closed, person 5's closes it
    (folder / "note.csv").write_text("note_id,person_id,note_date,note_type_concept_id,note_class_concept_id,"
                                     "note_title,note_text,encoding_concept_id,language_concept_id\n"
                                     '1,1,2020-01-01,32817,0,t,"Na 140, K 4.1, Cl 101\nplan: recheck, call",0,0\n')
    got = []
    report = importer.import_folder(open_engine("duckdb::memory:"), folder, "5.4",
                                    set_aside=lambda files, bad: got.extend(bad))
    assert (report["person"].rows, report["person"].bad, report["note"].rows, report["note"].bad) == (3, 1, 1, 0)
    # the rows it swallowed are counted: 3 loaded + 1 set aside + 3 inside it = the file's 7
    assert report["person"].notes == {("person_source_value", "swallowed"): (3, f"{folder / 'person.csv'}:3")}
    assert report["note"].notes == {}
    (b,) = got
    assert (b.line, b.reason, b.field) == (3, "unclosed_quote", "person_source_value")
    assert "runs over 4 lines, 3 of them a row of the file (a quote opened there and not closed?)" in b.detail
    assert b"3,8507,1980,0,0,p3" in b.raw and b"4,8507,1980,0,0,p4" in b.raw


def test_import_reads_a_table_from_a_folder_of_part_files(tmp_path):
    """As Spark writes a table (`measurement.parquet/part-*.parquet`, `_SUCCESS`, `.crc`), or CSV parts each with its
    header: one table, its rows from every part, a bad row named by its part file and line."""
    folder = tmp_path / "cdm"
    (folder / "measurement.parquet").mkdir(parents=True)
    for k in range(2):
        pq.write_table(pa.table({"measurement_id": [10 * k + 1, 10 * k + 2], "person_id": [1, 2],
                                 "measurement_concept_id": [0, 0], "measurement_type_concept_id": [32817, 32817],
                                 "measurement_date": pa.array([dt.date(2020, 1, 1)] * 2)}),
                       folder / "measurement.parquet" / f"part-0000{k}-abc.snappy.parquet")
    (folder / "measurement.parquet" / "_SUCCESS").write_text("")
    (folder / "measurement.parquet" / ".part-00000-abc.snappy.parquet.crc").write_bytes(b"\0")
    (folder / "PERSON").mkdir()
    (folder / "PERSON" / "part-00000.csv").write_text(PERSON_HEADER + "1,8507,1980,0,0\n")
    (folder / "PERSON" / "part-00001.csv").write_text(PERSON_HEADER + "2,8532,1990,0,0\n3,8532,19x0,0,0\n")
    (folder / "docs").mkdir()
    (folder / "docs" / "readme.txt").write_text("not data")  # a folder without data files: not a table
    eng = open_engine("duckdb::memory:")
    got = []
    report = importer.import_folder(eng, folder, "5.4", set_aside=lambda files, bad: got.extend(bad))
    assert {t: (r.path.name, r.rows, r.bad) for t, r in report.items()} == {
        "measurement": ("measurement.parquet", 4, 0), "person": ("PERSON", 2, 1)}
    assert sorted(eng.query("SELECT measurement_id FROM measurement").column(0).to_pylist()) == [1, 2, 11, 12]
    assert [b.where for b in got] == [f"{folder / 'PERSON' / 'part-00001.csv'}:3"]
    (folder / "PERSON" / "part-00002.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="PERSON: holds both CSV and Parquet files; keep one kind per table"):
        importer.import_folder(eng, folder, "5.4")
    (folder / "PERSON" / "part-00002.parquet").unlink()
    (folder / "measurment").mkdir()
    (folder / "measurment" / "part-0.csv").write_text("x\n1\n")
    with pytest.raises(ValueError, match=r"measurment: no table 'measurment' in OMOP CDM v5.4; name each file \(or "
                                         r"folder of part files\) after its table"):
        importer.import_folder(eng, folder, "5.4")


@pytest.mark.parametrize("suffix,compress", [(".csv.gz", gzip.compress), (".csv.bz2", bz2.compress),
                                             (".tsv.gz", gzip.compress), (".tsv.bz2", bz2.compress),
                                             (".csv.GZ", gzip.compress)])  # (names in any case)
def test_import_reads_compressed_files_and_names_their_lines(tmp_path, suffix, compress):
    folder = tmp_path / "cdm"
    folder.mkdir()
    text = PERSON_HEADER + "1,8507,1980,0,0\n2,8507\n3,8532,19x0,0,0\n4,8532,1990,0,0\n"
    (folder / f"person{suffix}").write_bytes(compress((text.replace(",", "\t") if "tsv" in suffix else text).encode()))
    got = []
    report = importer.import_folder(open_engine("duckdb::memory:"), folder, "5.4", set_aside=lambda f, b: got.extend(b))
    assert (report["person"].rows, report["person"].bad) == (2, 2)
    assert sorted((b.line, b.reason) for b in got) == [(3, "malformed"), (4, "invalid")]


def test_import_sets_aside_values_not_in_the_files_encoding_and_reads_the_encoding_given(tmp_path):
    folder = tmp_path / "cdm"
    folder.mkdir()
    lines = [b"Person_Id,Gender_Concept_Id,Year_Of_Birth,Race_Concept_Id,Ethnicity_Concept_Id,Person_Source_Value",
             b"1,8507,1980,0,0,M\xfcller", b"2,85\xe907,1990,0,0,00123", b"3,8532,1990,0,0,Fran\xe7oise"]
    (folder / "person.csv").write_bytes(b"\r\n".join(lines) + b"\r\n")  # Windows' cp1252, as Excel saves it
    eng = open_engine("duckdb::memory:")
    got = []
    report = importer.import_folder(eng, folder, "5.4", set_aside=lambda f, b: got.extend(b))
    assert (report["person"].rows, report["person"].bad) == (0, 3)
    bad = {b.line: b for b in got}
    assert {k: (b.reason, b.field) for k, b in bad.items()} == {
        2: ("wrong_encoding", "person_source_value"), 3: ("wrong_encoding", "gender_concept_id"),
        4: ("wrong_encoding", "person_source_value")}
    assert bad[3].detail == ("field gender_concept_id: byte 3 (b'\\xe907') is not UTF-8; give the file's encoding "
                             "with --encoding (e.g. cp1252, latin-1) or export it as UTF-8, and import again")
    assert bad[2].raw == lines[1]  # the bytes as read
    report = importer.import_folder(eng, folder, "5.4", encoding="cp1252")
    assert (report["person"].rows, report["person"].bad) == (2, 1)  # 85é07 is no integer in any encoding
    assert eng.query("SELECT person_source_value AS v FROM person ORDER BY person_id").column(0).to_pylist() == [
        "Müller", "Françoise"]
    (folder / "person.csv").write_bytes(("person_id\tgender_concept_id\tyear_of_birth\trace_concept_id\t"
                                         "ethnicity_concept_id\tperson_source_value\n1\t8507\t1980\t0\t0\t"
                                         "00123 Zoë\n").encode("utf-16"))  # Excel's "Unicode text": UTF-16, tabs
    report = importer.import_folder(eng, folder, "5.4", encoding="utf-16", delimiter="\t")
    assert eng.query("SELECT person_source_value AS v FROM person").column(0).to_pylist() == ["00123 Zoë"]
    (folder / "person.csv").write_bytes(lines[0] + b"\n1,8507,1980,0,0,007\n")  # a header in mixed case: no guessing
    importer.import_folder(eng, folder, "5.4")
    assert eng.query("SELECT person_source_value AS v FROM person").column(0).to_pylist() == ["007"]
    pq.write_table(pa.table({"person.person_id": [5], "person.gender_concept_id": [8507], "Person.Year_Of_Birth": [1980],
                             "person.race_concept_id": [0], "person.ethnicity_concept_id": [0]}), tmp_path / "p.parquet")
    (folder / "person.csv").unlink()  # Hive's and Spark SQL clients' header: the table's name before each column
    shutil.move(tmp_path / "p.parquet", folder / "person.parquet")
    assert importer.files_version(folder) is None and importer.import_folder(eng, folder, "5.4")["person"].rows == 1
    with pytest.raises(ValueError, match="'base64' is not a text encoding"):
        importer.import_folder(eng, folder, "5.4", encoding="base64")


def test_a_line_or_header_not_in_utf8_stops_in_one_line_and_is_read_with_the_encoding(tmp_path, capsys):
    """pyarrow decodes a line with the wrong number of fields as UTF-8 before the import sees it: a cp1252 line
    stopped the import with pyarrow's parse error and Python's "Exception ignored" traceback; now one sentence naming
    --encoding, and with it the line is set aside as malformed."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "person.csv").write_bytes(PERSON_HEADER.replace("\n", ",person_source_value\n").encode() +
                                        b"1,8507,1980,0,0,a\n2,8507,1980,0,0,M\xfcller,extra\n3,8507,1980,0,0,c\n")
    eng = open_engine("duckdb::memory:")
    with pytest.raises(importer.CdmImportError, match=r"person.csv: a line with the wrong number of fields holds bytes "
                       r"that are not UTF-8 \(CSV parse error: Expected 6 columns, got 7: 2,8507,1980,0,0,M.ller,extra\); "
                       r"give the file's encoding with --encoding \(e.g. cp1252, latin-1\), or fix that line"):
        importer.import_folder(eng, folder, "5.4")
    assert "Exception ignored" not in capsys.readouterr().err
    got = []
    report = importer.import_folder(eng, folder, "5.4", encoding="cp1252", set_aside=lambda f, b: got.extend(b))
    assert (report["person"].rows, [(b.line, b.reason) for b in got]) == (2, [(3, "malformed")])
    assert got[0].raw.decode() == "2,8507,1980,0,0,Müller,extra"
    (folder / "person.csv").write_bytes(PERSON_HEADER.replace("\n", ",pr\xe9nom\n").encode("cp1252") +
                                        b"1,8507,1980,0,0,a\n")  # a header not in UTF-8: pyarrow's traceback before
    with pytest.raises(importer.CdmImportError, match=r"person.csv: its header is not in utf-8 \(…'.*,pr.nom'\): "
                       r"give the file's encoding with --encoding"):
        importer.import_folder(eng, folder, "5.4")
    with pytest.raises(importer.CdmImportError, match=r"column\(s\) prénom are not fields of person"):
        importer.import_folder(eng, folder, "5.4", encoding="cp1252")
    # a spreadsheet's "Unicode text": its byte-order mark names the encoding to give
    (folder / "person.csv").write_bytes((PERSON_HEADER + "1,8507,1980,0,0\n").replace(",", "\t").encode("utf-16"))
    with pytest.raises(importer.CdmImportError, match="its byte-order mark says UTF-16: give --encoding utf-16"):
        importer.import_folder(eng, folder, "5.4")
    assert importer.import_folder(eng, folder, "5.4", encoding="utf-16", delimiter="\t")["person"].rows == 1


def test_import_with_more_bad_rows_than_allowed_loads_nothing(tmp_path):
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "person.csv").write_text(PERSON_HEADER + "".join(f"{i},8507,19{i}x,0,0\n" for i in range(10)))
    eng = open_engine("duckdb::memory:")
    aside = []
    with pytest.raises(ValueError, match=r"more than 5 rows cannot be imported \(the first: .*person.csv:2: field "
                                         r"year_of_birth.*nothing was imported"):
        importer.import_folder(eng, folder, "5.4", max_bad=5, set_aside=lambda f, b: aside.append(b))
    assert aside == [] and "person" not in eng.tables()  # nothing loaded, nor the store made
    report = importer.import_folder(eng, folder, "5.4", max_bad=10)
    assert (report["person"].rows, report["person"].bad) == (0, 10)
    (folder / "person.csv").write_text(PERSON_HEADER + "".join(f"{i};8507;1980;0;0\n" for i in range(10)))
    with pytest.raises(ValueError, match=r"more than 5 rows .*10 CSV lines with the wrong number of fields"):
        importer.import_folder(eng, folder, "5.4", max_bad=5)
    assert eng.query("SELECT count(*) FROM person").column(0)[0].as_py() == 0


def test_transform_refuses_a_cdm_loaded_by_cdm_import(tmp_path):
    """`medlake cdm import` records the folder in medlake_info, the table whose absence alone made `transform` refuse
    a CDM medlake did not make: an imported CDM (a site's, to be checked) was transformed, medlake's own tables
    written into it and its persons' rows exposed to a rebuild. Now refused, naming the folder; nothing written."""
    from medlake.transform.run import transform

    _write_cdm(tmp_path / "cdm")
    eng = open_engine(f"duckdb:{tmp_path / 'site.duckdb'}")
    importer.import_folder(eng, tmp_path / "cdm", "5.4")
    before = sorted(eng.tables())
    with pytest.raises(ValueError, match=r"this store's CDM was loaded by `medlake cdm import` \(from .*cdm\): "
                                         r"`medlake transform` would write medlake's own tables into it"):
        transform(eng)
    assert sorted(eng.tables()) == before
    assert eng.query("SELECT count(*) AS n FROM person").column(0)[0].as_py() == 2


def test_a_database_medlake_did_not_create_is_told_to_fix_its_etl_and_is_not_written_to(tmp_path):
    """An OHDSI database checked in place: a failed check's next step (report, `quality show`) is said for the
    site's ETL, not medlake's pipeline; `medlake transform` there is refused (it wrote 28 tables of medlake's into
    the site's CDM schema) and `medlake trace` says there is no lineage to follow, not to run `transform`."""
    from medlake.transform.run import transform
    from medlake.transform.trace import trace

    eng = open_engine(f"duckdb:{tmp_path / 'ohdsi.duckdb'}")
    world(eng).execute("DROP TABLE medlake_info")  # the same CDM, not made by medlake
    eng.execute("INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, "
                "condition_start_date, condition_type_concept_id) VALUES (900, 999, 0, DATE '2020-01-01', 32817)")
    before = sorted(eng.tables())
    with pytest.raises(ValueError, match=r"this store's CDM was not made by medlake \(it has no medlake_info table\)"):
        transform(eng)
    with pytest.raises(ValueError, match=r"this store's CDM was not made by medlake: its rows have no lineage"):
        trace(eng, "condition_occurrence", 900)
    assert sorted(eng.tables()) == before  # nothing written
    eng.close()
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 'ohdsi.duckdb'}", COLUMNS="200")
    cli = [sys.executable, "-m", "medlake.cli", "quality"]
    p = subprocess.run(cli + ["run"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    [run_dir] = list((tmp_path / "quality").glob("[!.]*"))
    assert json.loads((run_dir / "run.json").read_text())["medlake_store"] is False
    fk = "field_isforeignkey_condition_occurrence_person_id"
    p = subprocess.run(cli + ["show", fk], env=env, cwd=tmp_path, capture_output=True, text=True)
    [step] = [x for x in p.stdout.splitlines() if x.startswith("what to do:")]
    assert "the ETL did not load" in step and "medlake trace" not in step and "medlake transform" not in step
    html = (run_dir / "report.html").read_text()
    assert "the ETL did not load" in html and "medlake empi run" not in html
    own = open_engine(f"duckdb:{tmp_path / 'own.duckdb'}")  # medlake's own store: its pipeline, as before
    world(own)
    assert runner.run(own, "5.4", tmp_path / "own").summary["medlake_store"] is True
    own.close()
    _write_cdm(tmp_path / "cdm")  # a CDM the site's ETL made, imported into a store medlake made: the site's steps
    imported = open_engine(f"duckdb:{tmp_path / 'imported.duckdb'}")
    importer.import_folder(imported, tmp_path / "cdm", "5.4")
    assert runner.run(imported, "5.4", tmp_path / "imported").summary["medlake_store"] is False
    imported.close()


def test_the_cdm_version_of_a_database_medlake_did_not_create(tmp_path):
    """An existing OHDSI CDM has no medlake record of its version: it is read from its tables (v5.4 renamed
    visit_occurrence.admitting_source_concept_id), else from cdm_source.cdm_version; `--cdm-version` overrides."""
    from medlake.cdm import model, store as cdm_store

    eng = open_engine(f"duckdb:{tmp_path / 'ohdsi.duckdb'}")
    for t in model.load("5.3").tables:
        eng.create_table(t)
    assert "medlake_info" not in eng.tables()
    assert cdm_store.detect_version(eng) == ("5.3", "from visit_occurrence.admitting_source_concept_id")
    eng.execute("INSERT INTO cdm_source (cdm_source_name, cdm_version) VALUES ('site', 'v5.3.1')")
    eng.execute("DROP TABLE visit_occurrence")
    assert cdm_store.detect_version(eng) == ("5.3", "from cdm_source.cdm_version 'v5.3.1'")
    eng.execute("UPDATE cdm_source SET cdm_version = 'OMOP CDM v5.3.0'")  # as sites write it
    assert cdm_store.detect_version(eng) == ("5.3", "from cdm_source.cdm_version 'OMOP CDM v5.3.0'")
    eng.execute("UPDATE cdm_source SET cdm_version = 'v5.40'")  # no version of the CDM
    assert cdm_store.detect_version(eng)[0] == "5.4" and "the default" in cdm_store.detect_version(eng)[1]
    eng.execute("DELETE FROM cdm_source")
    assert cdm_store.detect_version(eng)[0] == "5.4"  # nothing says: the default
    eng.execute("INSERT INTO cdm_source (cdm_source_name, cdm_version) VALUES ('site', '5.3')")
    eng.close()
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 'ohdsi.duckdb'}")
    cli = [sys.executable, "-m", "medlake.cli", "quality", "run"]
    p = subprocess.run(cli, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    [run_dir] = list((tmp_path / "quality").glob("[!.]*"))
    summary = json.loads((run_dir / "run.json").read_text())
    assert (summary["cdm_version"], summary["cdm_version_from"]) == ("5.3", "from cdm_source.cdm_version '5.3'")
    rows = json.loads((run_dir / "results.json").read_text())
    assert len(rows) == len([c for c in checks("5.3") if c.table not in runner.VOCABULARY_TABLES])
    p = subprocess.run(cli + ["--cdm-version", "5.4", "--out", "q54"], env=env, cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 0 and "OMOP CDM v5.4, as given" in " ".join(p.stdout.split()), p.stderr


def test_cli_import_then_quality_run(tmp_path):
    _write_cdm(tmp_path / "cdm")
    (tmp_path / "cdm" / "death.csv").write_text("person_id,death_date,death_type_concept_id,cause_source_value\n"
                                                f"1,2020-01-01,32817,{'x' * 51}\n2,2021-01-01,32817,{'y' * 60}\n"
                                                "3,2021-01-01,32817,NULL\n")
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}")
    cli = [sys.executable, "-m", "medlake.cli"]
    p = subprocess.run(cli + ["cdm", "import", str(tmp_path / "cdm"), "--version", "5.4"], env=env, cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines() == [  # text longer than the spec's length: cut, said
        f"warning: death.cause_source_value: 2 value(s) longer than the 50 characters OMOP CDM v5.4 gives the field, "
        f"cut to 50 (the first: {tmp_path / 'cdm' / 'death.csv'}:2); shorten them in the file to choose what is kept",
        f"warning: death.cause_source_value: 1 value(s) NULL or \\N kept as text (the first: "
        f"{tmp_path / 'cdm' / 'death.csv'}:4); give --null NULL (or --null '\\N') if they mean empty"]
    p = subprocess.run(cli + ["quality", "run"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr  # failed checks are reported, not an exit code
    assert "pass rate" in p.stdout and (tmp_path / "quality").is_dir()
    # no vocabulary in this CDM: the checks it silences are counted and the fix named
    [w] = [x for x in p.stderr.splitlines() if x.startswith("warning: ")]
    assert "because the store's vocabulary is missing: the concept table is empty" in w, p.stderr
    [run_dir] = list((tmp_path / "quality").glob("[!.]*"))
    assert (run_dir / "results.json").exists() and (run_dir / "report.html").exists()
    p = subprocess.run(cli + ["quality", "run", "--fail-on", "0%"], env=env, cwd=tmp_path, capture_output=True,
                       text=True)  # (a percent as the README writes it)
    assert p.returncode == 3 and "above --fail-on 0%" in p.stderr  # (3: the run was made; the data did not pass)
    assert [x for x in p.stderr.strip().splitlines() if not x.startswith("warning:")] == [p.stderr.strip().splitlines()[-1]]
    p = subprocess.run(cli + ["quality", "run", "--fail-on", "101"], env=env, cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 2 and "is not a percent from 0 to 100" in p.stderr
    # DQD's results table (writeToTable), and a name that would overwrite a CDM table refused in one line
    p = subprocess.run(cli + ["quality", "run", "--write-table", "dqdashboard_results"], env=env, cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0 and "table:   dqdashboard_results (" in p.stdout, p.stderr
    p = subprocess.run(cli + ["quality", "run", "--write-table", "person"], env=env, cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("error: table person exists with other")
    p = subprocess.run(cli + ["quality", "run", "--write-table", "results.dqdashboard_results"], env=env, cwd=tmp_path,
                       capture_output=True, text=True)  # DQD's resultsDatabaseSchema: the search path's first schema
    assert p.returncode == 1 and "first on the search path (?options=-csearch_path%3Dresults,cdm" in p.stderr
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    n = eng.query("SELECT count(*) AS n, sum(failed) AS f FROM dqdashboard_results").to_pylist()[0]
    eng.close()
    assert n["n"] > 0 and n["f"] > 0
    p = subprocess.run(cli + ["quality", "run", "--tables", "person"], env=env, cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 0 and "only the tables (--tables): person" in p.stdout, p.stderr
    # the store's runs, oldest first, with their failures (the refused run left none); the run of one table marked
    p = subprocess.run(cli + ["quality", "runs"], env=dict(env, COLUMNS="200"), cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    runs = sorted(d.name for d in (tmp_path / "quality").glob("[!.]*"))
    lines = [x.split() for x in p.stdout.splitlines() if x.strip().startswith("2")]  # the rows: run ids are dates
    assert [x[0] for x in lines] == runs[:3] + [runs[3] + "*"] and "(4 of 4)" in " ".join(p.stdout.split())  # the title wraps with the path
    failed = json.loads((tmp_path / "quality" / runs[-2] / "run.json").read_text())["failed"]
    assert [x[3] for x in lines] == [str(failed)] * 3 + ["0"]
    assert [x[5] for x in lines] == ["-", "0", "0", "0"]  # new failures: none after the first run
    p = subprocess.run(cli + ["quality", "runs", "--out", "elsewhere"], env=env, cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 1 and "no finished quality run of duckdb:" in p.stderr
    p = subprocess.run(cli + ["quality", "runs"], env=dict(env, MEDLAKE_STORE=f"duckdb:{tmp_path / 'other.duckdb'}"),
                       cwd=tmp_path, capture_output=True, text=True)  # the runs there are of another store: said
    assert p.returncode == 1 and f"(the folder holds runs of duckdb:{tmp_path / 's.duckdb'}: give --store)" in \
        " ".join(p.stderr.split()), p.stderr


def test_cli_import_quarantines_bad_rows_the_quality_run_counts_them_a_fixed_file_resolves_them(tmp_path):
    folder = tmp_path / "cdm"
    _write_cdm(folder)
    (folder / "PERSON.csv").write_text(PERSON_HEADER + "1,8507,1980,0,0\n2,8532,19x0,0,0\n3,8507,1990,0,0\n")
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}", COLUMNS="200")
    cli = [sys.executable, "-m", "medlake.cli"]

    def run(*args):
        p = subprocess.run(cli + list(args), env=env, cwd=tmp_path, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return " ".join(p.stdout.split())

    text = run("cdm", "import", str(folder))
    assert "1 row(s) could not be imported and are in quarantine (source cdm:person)" in text
    assert "cdm:person" in run("quarantine", "list")
    shown = run("quarantine", "show", "1")
    assert "PERSON.csv, line 3, at year_of_birth" in shown and "'19x0'" in shown and shown.endswith("2,8532,19x0,0,0")
    assert "cdm:person: rows of a CDM import; fix the file and run `medlake cdm import` again" in run("quarantine",
                                                                                                     "retry")
    run("quality", "run", "--out", "q1")
    [rows] = [json.loads(p.read_text()) for p in (tmp_path / "q1").glob("*/results.json")]
    [r] = [r for r in rows if r["check_name"] == "sourceQuarantined"]
    assert (r["data_source"], r["num_violated_rows"], r["num_denominator_rows"], r["failed"]) == ("cdm:person", 1, 3, True)
    (folder / "PERSON.csv").write_text(PERSON_HEADER + "1,8507,1980,0,0\n2,8532,1960,0,0\n3,8507,1990,0,0\n")
    assert "quarantine" not in run("cdm", "import", str(folder)).replace(str(tmp_path), "")
    assert "0 open" in run("quarantine", "list") and "table re-imported from" in run("quarantine", "show", "1")
    run("quality", "run", "--out", "q2")
    [rows] = [json.loads(p.read_text()) for p in (tmp_path / "q2").glob("*/results.json")]
    assert [r for r in rows if r["check_name"] == "sourceQuarantined"] == []  # nothing held: no import source
    # every row of a table set aside (R's NA without --null NA): said as the export's form, not only counted
    (folder / "PERSON.csv").write_text(PERSON_HEADER + "1,8507,NA,0,0\n2,8532,NA,0,0\n")
    p = subprocess.run(cli + ["cdm", "import", str(folder)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and "warning: person: none of its 2 row(s) could be imported (the table is empty)" \
        in p.stderr, p.stderr


def test_cli_a_table_emptied_since_the_last_run_breaks_the_gate(tmp_path):
    """An ETL that emptied a table and stopped: its checks, not applicable now, raised the pass rate, and
    --fail-on-new passed; it is refused, naming the table. A misspelt check id is answered with the one meant."""
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng)
    eng.close()
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}")
    cli = [sys.executable, "-m", "medlake.cli", "quality"]
    assert subprocess.run(cli + ["run"], env=env, cwd=tmp_path, capture_output=True).returncode == 0
    assert list((tmp_path / "quality").glob(".run-*.lock"))  # (the one-run-at-a-time lock: in the runs' folder)
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    eng.execute("DELETE FROM condition_occurrence")
    eng.close()
    p = subprocess.run(cli + ["run", "--fail-on-new"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 3 and "table(s) condition_occurrence held rows in run " in p.stderr, p.stderr
    assert "emptied since: condition_occurrence" in p.stdout
    p = subprocess.run(cli + ["show", "field_isforeignkey_condition_occurence_person_id"], env=env, cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 1 and "did you mean field_isforeignkey_condition_occurrence_person_id?" in p.stderr, p.stderr


def test_cli_fail_on_new_breaks_a_pipeline_only_on_a_new_failure(tmp_path):
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng)
    eng.close()
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}")
    cli = [sys.executable, "-m", "medlake.cli", "quality", "run", "--fail-on-new"]
    p = subprocess.run(cli, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and "since run: none to compare with" in p.stdout  # a first run: nothing new, said
    p = subprocess.run(cli + ["--cohort-table", "results.cohort"], env=env, cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 2 and "--cohort-table names where the cohort of --cohort-id is" in p.stderr
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    eng.execute(CO + "person_id = 99 WHERE condition_occurrence_id = 200")
    eng.close()
    for _ in range(2):  # a pipeline's retry, nothing fixed: refused again (the refused run is no baseline)
        p = subprocess.run(cli, env=env, cwd=tmp_path, capture_output=True, text=True)
        assert p.returncode == 3 and p.stderr.strip().splitlines()[-1].startswith(
            "error: 2 check(s) failed that did not fail in run "), p.stderr
        assert "field_isforeignkey_condition_occurrence_person_id" in p.stderr
    assert subprocess.run(cli[:-1], env=env, cwd=tmp_path, capture_output=True).returncode == 0  # a run accepts them
    assert subprocess.run(cli, env=env, cwd=tmp_path, capture_output=True).returncode == 0  # known now: not new
    # a check that cannot run any more (a column renamed by an ETL change; here the site's file edited) broke too
    site = tmp_path / "site.toml"
    late = '[[check]]\nname = "late"\ntable = "person"\nviolation = "{} > 3000"\n'
    site.write_text(late.format("year_of_birth"))
    assert subprocess.run(cli + ["--checks", "site.toml"], env=env, cwd=tmp_path, capture_output=True).returncode == 0
    site.write_text(late.format("year_of_brth"))
    p = subprocess.run(cli + ["--checks", "site.toml"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 3 and p.stderr.strip().splitlines()[-1].startswith(
        "error: 1 check(s) could not run that could in run "), p.stderr
    assert "table_late_person" in p.stderr and "1 new error(s)" in p.stdout
    # the check that could not run is named with its error (the summary only counted it), on one line in a log
    [line] = [x for x in p.stdout.splitlines() if "table_late_person" in x]
    assert "year_of_brth" in line, p.stdout


def test_cli_the_hint_under_the_failures_works_pasted_in_another_folder(tmp_path):
    """`make demo` names its store with --store: the hint `medlake quality show CHECK_ID --out …` then named no store,
    and pasted it found none (the default store's)."""
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng).execute(CO + "person_id = 99 WHERE condition_occurrence_id = 200")
    eng.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDLAKE_")} | {"COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "medlake.cli", "quality", "run", "--store", "duckdb:s.duckdb", "--out",
                        "q"], env=env, cwd=tmp_path, capture_output=True, text=True)
    [hint] = [x for x in p.stdout.splitlines() if x.startswith("a check's rows and what to do: ")]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = shlex.split(hint.split(": ", 1)[1].replace("CHECK_ID", "field_isforeignkey_condition_occurrence_person_id"))
    command = [x.replace("q", str(tmp_path / "q")) if x == "q" else x for x in command]  # (the folder is relative)
    shown = subprocess.run([sys.executable, "-m", "medlake.cli", *command[1:]], env=env, cwd=elsewhere,
                           capture_output=True, text=True)
    assert shown.returncode == 0 and "200" in shown.stdout.split("violating rows (up to")[-1], (hint, shown.stderr)


def test_a_stores_runs_are_one_history_however_a_pipeline_spells_it_or_fills_the_folder(tmp_path):
    """A nightly job names the store by its full path, a person by a relative one: one store, one history (the
    second found no earlier run, and --fail-on-new passed a new failure). A `latest` link in the runs' folder is not
    another run, and a run whose files a copy cut short is passed over, said, not the end of every later run."""
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng)
    eng.close()
    cli = [sys.executable, "-m", "medlake.cli", "quality"]
    relative, absolute = ["--store", "duckdb:s.duckdb"], ["--store", f"duckdb:{tmp_path}/./s.duckdb"]
    assert subprocess.run(cli + ["run"] + relative, cwd=tmp_path, capture_output=True).returncode == 0
    [first] = [d for d in (tmp_path / "quality").glob("[!.]*")]
    (tmp_path / "quality" / "latest").symlink_to(first.name)
    cut = tmp_path / "quality" / "20000101T000000000000Z"  # an older run, cut short by a copy
    shutil.copytree(first, cut)
    (cut / "run.json").write_text('{"run_id": "x", "store"')
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    eng.execute(CO + "person_id = 99 WHERE condition_occurrence_id = 200")
    eng.close()
    p = subprocess.run(cli + ["run", "--fail-on-new"] + absolute, cwd=tmp_path / "quality", capture_output=True,
                       text=True)  # (elsewhere: its --out is the default, quality, there)
    assert p.returncode == 0 and "none to compare with" in p.stdout  # another folder: no runs there
    p = subprocess.run(cli + ["run", "--fail-on-new", "--out", str(tmp_path / "quality")] + absolute, cwd="/",
                       capture_output=True, text=True)
    assert p.returncode == 3 and f"failed that did not fail in run {first.name}" in p.stderr, p.stderr
    assert "warning: run 20000101T000000000000Z in" in p.stderr and "is passed over: its run.json cannot be read" \
        in p.stderr
    p = subprocess.run(cli + ["runs"] + relative, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and "(2 of 2)" in p.stdout and first.name in p.stdout, p.stdout
    assert "latest" not in p.stdout and "20000101" not in p.stdout
    p = subprocess.run(cli + ["runs", "--json", "--last", "1"] + relative, cwd=tmp_path, capture_output=True, text=True)
    [latest] = json.loads(p.stdout)  # (a pipeline's way to the latest run: its folder, counts, what is new)
    assert latest["dir"] == f"quality/{latest['run_id']}" and latest["run_id"] != first.name and latest["refused_new"]
    # a pipeline's unset variable is refused, not a run of everything; a site file saved with a byte-order mark reads
    p = subprocess.run(cli + ["run", "--tables", ""] + relative, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 2 and "--tables is empty: give a value, or leave the option out" in p.stderr
    # an option that names nothing there is exits 2 as a wrong option does (it exited 1, as a run that could not be
    # made: review-docs #3), its one line pointing at the command's help
    for opt, said in ((["--tables", "persn"], "--tables: no table persn in OMOP CDM v5.4 (nor in --checks); did you "
                                                "mean person?"),
                      (["--check-levels", "COLUMN"], "no check level COLUMN: the levels are"),
                      (["--check-severity", "fatl"], "no check severity fatl"),
                      (["--check-names", "isForeignKy"], "no check type isForeignKy"),
                      (["--cdm-version", "5.5"], "--cdm-version: no OMOP CDM version 5.5: the versions are 5.4, 5.3"),
                      (["--check-levels", "TABLE", "--check-names", "isForeignKey"], "the options select no check")):
        p = subprocess.run(cli + ["run", *opt] + relative, cwd=tmp_path, capture_output=True, text=True)
        assert (p.returncode, p.stderr.count("\n")) == (2, 1) and said in p.stderr, (opt, p.stderr)
        assert p.stderr.rstrip().endswith("(see 'medlake quality run --help')"), p.stderr
    (tmp_path / "bom.toml").write_text('\ufeff[[check]]\nname = "late"\ntable = "person"\nviolation = '
                                       '"year_of_birth > 3000"\n', encoding="utf-8")
    p = subprocess.run(cli + ["run", "--checks", "bom.toml"] + relative, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_a_tables_saved_results_are_reused_only_whole_readable_and_without_errors(store, tmp_path):
    """A check that stopped with an error (a cancelled query, a dropped connection) is tried again, not carried into
    every later run; a table's saved file cut short or missing results is checked again, not a stop or a gap."""
    site = tmp_path / "site.toml"
    site.write_text('[[check]]\nname = "late"\ntable = "person"\nviolation = "year_of_brth > 3000"\n')
    from medlake.quality.site import load as load_site

    extra = load_site(site)[0]
    run = lambda: runner.Runner(store, "5.4", tmp_path / "q", only=["person", "death"], site_checks=extra).run()  # noqa: E731
    first = run()
    assert [x["status"] for x in first.results if x["check_id"] == "table_late_person"] == ["error"]
    second = run()
    assert second.rechecked == ["person"] and second.reused == ["death"]  # person has an error: tried again
    saved = second.dir / "tables" / "death.json"
    saved.write_text(saved.read_text()[:100])  # cut short
    third = run()
    assert "death" in third.rechecked and len(third.results) == len(first.results)
    data = json.loads((third.dir / "tables" / "death.json").read_text())
    (third.dir / "tables" / "death.json").write_text(json.dumps(dict(data, results=data["results"][:3])))
    fourth = run()
    assert "death" in fourth.rechecked and len(fourth.results) == len(first.results)


def test_a_site_check_is_reused_only_while_the_tables_it_reads_and_the_date_are_the_same(store, tmp_path):
    """A site check of person that reads death: a change of death checks person again (only the predicate's text
    was in the key, so its result was re-used stale); one that asks for the date has today's date in its key."""
    from medlake.quality.compile import CLOCK, NOW
    from medlake.quality.site import _reads_of, load as load_site

    site = tmp_path / "site.toml"
    site.write_text('[[check]]\nname = "deadAlive"\ntable = "person"\nviolation = "person_id IN (SELECT person_id '
                    'FROM death)"\n')
    extra = load_site(site)[0]
    run = lambda: runner.Runner(store, "5.4", tmp_path / "q", only=["person"], site_checks=extra).run()  # noqa: E731
    before = {x["check_id"]: x["num_violated_rows"] for x in run().results}["table_deadalive_person"]
    assert run().reused == ["person"]
    store.execute("DELETE FROM death")
    again = run()
    assert again.rechecked == ["person"]
    assert {x["check_id"]: x["num_violated_rows"] for x in again.results}["table_deadalive_person"] == 0 < before
    assert _reads_of("visit_occurrence", "visit_start_date > current_date - 400", None) == (CLOCK,)
    # the time of day (review-incr #2: localtimestamp and PostgreSQL's clocks were not seen; now() was keyed by
    # the date): a result no later run re-uses
    for clock in ("now()", "current_timestamp", "localtimestamp", "current_localtimestamp()", "clock_timestamp()",
                  "transaction_timestamp()", "statement_timestamp()", "get_current_timestamp()"):
        assert _reads_of("visit_occurrence", f"visit_start_datetime > {clock}", None) == (NOW,), clock
    for other in ("site.excl", "other.main.excl", "read_csv('excl.csv')", "'excl.parquet'"):  # no fingerprint here
        assert _reads_of("person", f"person_id IN (SELECT person_id FROM {other})", None) == (NOW,), other
    site.write_text('[[check]]\nname = "ahead"\ntable = "person"\nviolation = "birth_datetime > now()"\n')
    ahead = lambda: runner.Runner(store, "5.4", tmp_path / "q", only=["person"],  # noqa: E731
                                  site_checks=load_site(site)[0]).run()
    assert ahead().rechecked == ahead().rechecked == ["person"]


def test_an_edited_site_rule_is_judged_anew_and_a_full_run_leaves_results_to_reuse(store, tmp_path):
    """review-site #1: a site rule's threshold (or severity, description…) edited, the data unchanged: its table is
    checked again with the new rule (only its id and predicate were in the key, so the old verdict, threshold and
    severity were reused). #5: the run after a --full run reuses its results (it had saved no key)."""
    from medlake.quality.site import load as load_site

    site = tmp_path / "site.toml"
    rule = '[[check]]\nname = "oldBirth"\ntable = "person"\nviolation = "year_of_birth < 2100"\nseverity = "fatal"\n'
    site.write_text(rule + "threshold = 1\n")
    run = lambda **kw: runner.Runner(store, "5.4", tmp_path / "q", only=["person"],  # noqa: E731
                                     site_checks=load_site(site)[0], **kw).run()
    first = {x["check_id"]: x for x in run().results}["table_oldbirth_person"]
    assert first["status"] == "failed" and first["threshold"] == 1 and first["severity"] == "fatal"
    assert run().reused == ["person"]
    site.write_text(rule.replace('"fatal"', '"convention"') + "threshold = 100\n")
    again = run()
    now = {x["check_id"]: x for x in again.results}["table_oldbirth_person"]
    assert again.rechecked == ["person"]
    assert (now["status"], now["threshold"], now["severity"]) == ("passed", 100, "convention")
    assert now["num_violated_rows"] == first["num_violated_rows"]
    # #8: its fix is said to be of its rule, not of the data (the site's file changed)
    since = again.summary["since_last_run"]
    assert since["fixed"] == since["rule_changed"] == ["table_oldbirth_person"]
    [change] = runner.compare([first], [now])
    assert (change["change"], change["rule_changed"]) == ("fixed", True)
    assert runner.compare([first], [first | {"status": "passed"}])[0]["rule_changed"] is False
    assert run(incremental=False, resume=False).rechecked == ["person"]  # --full
    assert run().reused == ["person"]


def test_a_run_with_the_sites_checks_compares_with_runs_of_the_same_files_not_an_ad_hoc_run_without(store, tmp_path):
    """A nightly run with `--checks` and `--fail-on-new`, after an ad-hoc run without the file: compared with the
    ad-hoc run, the site's checks failing for weeks were new (not run then) and the gate refused the night; and the
    trend drew the two kinds of run as one line."""
    from medlake.quality.site import load as load_site

    site = tmp_path / "site.toml"
    site.write_text('[[check]]\nname = "oldBirth"\ntable = "person"\nviolation = "year_of_birth < 2100"\n'
                    "threshold = 1\n")
    nightly = lambda: runner.Runner(store, "5.4", tmp_path / "q", only=["person"], fail_on_new=True,  # noqa: E731
                                    site_checks=load_site(site)[0], site_file=site).run()
    first = nightly()
    assert {x["check_id"]: x["status"] for x in first.results}["table_oldbirth_person"] == "failed"
    assert first.summary["site_checks"] == str(site.resolve())
    ad_hoc = runner.Runner(store, "5.4", tmp_path / "q", only=["person"]).run()
    assert ad_hoc.summary["site_checks"] is None and ad_hoc.summary["since_last_run"] is None
    again = nightly()
    assert again.summary["since_last_run"]["run_id"] == first.run_id
    assert again.summary["since_last_run"]["new_failures"] == [] and not again.summary["refused_new"]
    html = (again.dir / "report.html").read_text()
    assert first.run_id in html and ad_hoc.run_id not in html
    from medlake.cli import _scope_words  # (quality diff of the two: "the runs checked different things (…)")

    assert [_scope_words(r.summary) for r in (first, ad_hoc)] == [
        "v5.4: tables person; the site's files site.toml", "v5.4: tables person"]


def test_options_that_select_no_check_are_refused_before_the_run(store, tmp_path):
    with pytest.raises(ValueError, match=r"the options select no check \(--check-names, --check-levels together\)"):
        runner.Runner(store, "5.4", tmp_path / "q", check_levels=["TABLE"], check_names=["isForeignKey"]).run()
    assert not [d for d in (tmp_path / "q").glob("*") if d.is_dir()]  # no run recorded


def test_a_second_run_of_a_store_into_one_folder_stops_while_the_first_runs(store, tmp_path):
    """It would take the running one's unfinished folder for a stopped run's, resume it and write beside it."""
    first = runner.Runner(store, "5.4", tmp_path / "q", only=["person"])
    with first.alone():
        with pytest.raises(ValueError, match=f"another quality run of this store is writing to {tmp_path / 'q'} "
                                             rf"\(PID {os.getpid()}\): wait for it to end, or give another --out"):
            runner.Runner(store, "5.4", tmp_path / "q", only=["person"]).run()
        assert runner.Runner(store, "5.4", tmp_path / "other", only=["person"]).run().results  # another folder
    assert runner.Runner(store, "5.4", tmp_path / "q", only=["person"]).run().results  # after it


def test_a_failed_check_among_twenty_thousand_is_no_100_percent_pass_rate():
    """The pass rate is kept whole in run.json (rounded to 4 decimals it was 1.0) and written as what it is."""
    from medlake.quality.report import percent

    s = runner.summarize([{"status": "passed", "category": "Plausibility", "cdm_table": "measurement"}] * 20_000
                         + [{"status": "failed", "category": "Plausibility", "cdm_table": "measurement"}])
    assert s["pass_rate"] < 1 and s["by_category"]["Plausibility"]["pass_rate"] < 1
    assert percent(s["pass_rate"]) == "99.995%"


def test_a_run_of_no_dqd_check_writes_no_dqd_json_and_leaves_the_dqd_table(store, tmp_path):
    """A run of the site's checks alone (`--check-severity site --write-table …`): an empty dqd.json breaks ARES,
    and the table lost the last run's rows (DQD stops where no check is to run)."""
    from medlake.quality.site import parse

    full = runner.Runner(store, "5.4", tmp_path / "q", only=["person"], write_table="dqdashboard_results").run()
    rows = full.summary["dqd_table"]["rows"]
    assert rows > 0 and (full.dir / "dqd.json").exists()
    site = parse('[[check]]\nname = "late"\ntable = "person"\nviolation = "year_of_birth > 3000"\n')
    alone = runner.Runner(store, "5.4", tmp_path / "q", only=["person"], write_table="dqdashboard_results",
                          site_checks=site, check_severity=["site"]).run()
    assert [x["check_id"] for x in alone.results] == ["table_late_person"]
    assert not (alone.dir / "dqd.json").exists() and "dqd_table" not in alone.summary
    assert alone.summary["warnings"][-1] == ("no DQD check ran (--check-severity, --check-levels or --check-names "
                                             "chose none): no dqd.json, and table dqdashboard_results is left as it was")
    assert json.loads((alone.dir / "run.json").read_text())["warnings"] == alone.summary["warnings"]
    assert store.query("SELECT count(*) FROM dqdashboard_results").column(0)[0].as_py() == rows


def test_a_cohorts_dqd_results_go_to_their_own_table_as_dqd_names_it(store, tmp_path):
    """DQD writes a cohort's results to `<writeTableName>_<cohortDefinitionId>` (writeResultsTo): a site's SQL
    for a cohort's run reads them there, and the whole CDM's table keeps its rows."""
    store.execute("INSERT INTO cohort VALUES (7, 2, DATE '2020-01-01', DATE '2020-12-31')")
    whole = runner.Runner(store, "5.4", tmp_path / "q", only=["person"], write_table="dqdashboard_results").run()
    seven = runner.Runner(store, "5.4", tmp_path / "q", only=["person"], write_table="dqdashboard_results",
                          cohort=("cohort", 7)).run()
    assert seven.summary["dqd_table"]["table"] == "dqdashboard_results_7"
    for table, run in (("dqdashboard_results", whole), ("dqdashboard_results_7", seven)):
        assert store.query(f"SELECT count(*) FROM {table}").column(0)[0].as_py() == run.summary["dqd_table"]["rows"]


def test_compare_two_runs_worst_change_first():
    def r(cid, status, v=None):
        return {"check_id": cid, "status": status, "num_violated_rows": v}

    before = [r("a", "passed", 0), r("b", "failed", 3), r("c", "failed", 5), r("d", "failed", 5), r("e", "passed", 0),
              r("f", "passed", 0), r("g", "failed", 2)]
    after = [r("a", "failed", 1), r("b", "passed", 0), r("c", "failed", 9), r("d", "failed", 4), r("e", "passed", 0),
             r("f", "error"), r("h", "failed", 1)]
    got = [(c["check_id"], c["change"], c["before"], c["after"]) for c in runner.compare(before, after)]
    assert got == [("a", "newly failing", "passed", "failed"), ("h", "newly failing", "not run", "failed"),
                   ("b", "fixed", "failed", "passed"), ("c", "more rows", "failed", "failed"),
                   ("d", "fewer rows", "failed", "failed"), ("f", "other", "passed", "error"),
                   ("g", "other", "failed", "not run")]


def test_cli_diff_two_runs(tmp_path):
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng)
    eng.close()
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}", COLUMNS="200")
    cli = [sys.executable, "-m", "medlake.cli", "quality"]
    assert subprocess.run(cli + ["run"], env=env, cwd=tmp_path, capture_output=True).returncode == 0
    p = subprocess.run(cli + ["diff"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 1 and "fewer than two finished quality runs" in p.stderr
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    eng.execute(CO + "person_id = 99 WHERE condition_occurrence_id = 200")
    eng.close()
    assert subprocess.run(cli + ["run"], env=env, cwd=tmp_path, capture_output=True).returncode == 0
    first, second = sorted(d.name for d in (tmp_path / "quality").glob("[!.]*"))
    p = subprocess.run(cli + ["diff"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert f"from run {first} to run {second}: 2 newly failing, 0 fixed, 0 more rows, 0 fewer rows, 1 other" in p.stdout
    assert "field_isforeignkey_condition_occurrence_person_id" in p.stdout and "passed: 0 rows" in p.stdout
    assert "(condition_occurrence.person_id)" in p.stdout and "failed: 1 row" in p.stdout
    p = subprocess.run(cli + ["diff", second, first], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert "0 newly failing, 2 fixed" in p.stdout
    p = subprocess.run(cli + ["diff", "nosuchrun"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 1 and "no finished run nosuchrun" in p.stderr
    # after a run of one table, a whole run's diff goes back to the whole run before it, as its run.json did
    for args in (["--tables", "person"], []):
        assert subprocess.run(cli + ["run", *args], env=env, cwd=tmp_path, capture_output=True).returncode == 0
    p = subprocess.run(cli + ["diff"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert f"from run {second} to run " in p.stdout and "0 newly failing, 0 fixed" in p.stdout, p.stdout
    # named runs of another scope: the checks both ran, said so (not the whole run's other checks as 'not run')
    one, whole = [d.name for d in sorted((tmp_path / "quality").glob("[!.]*"))][-2:]
    p = subprocess.run(cli + ["diff", whole, one], env=env, cwd=tmp_path, capture_output=True, text=True)
    said = " ".join(p.stdout.split())
    assert "note: the runs checked different things (v5.4: the whole suite; v5.4: tables person)" in said, said
    assert f"note: run {whole} is the later one" in said and "0 other" in said


def test_cli_show_a_feed_check_draws_its_days(tmp_path):
    """quality show of a feed check prints what its source sent per day, a character a day, and under it the
    missing day and the drop; the chart is the same for the source's two feed checks."""
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng)
    eng.execute("CREATE TABLE msg_log AS SELECT 'LIS' AS source, TIMESTAMP '2024-01-01 10:00:00' + d * INTERVAL 1 DAY "
                "AS received_at FROM range(20) AS r(d), range(8) AS k(i) WHERE d <> 12 AND (d <> 15 OR i < 2)")
    eng.close()
    (tmp_path / "site.toml").write_text("[feed]\ntable = 'msg_log'\n")
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}", COLUMNS="200")
    cli = [sys.executable, "-m", "medlake.cli", "quality"]
    assert subprocess.run(cli + ["run", "--checks", "site.toml"], env=env, cwd=tmp_path, capture_output=True).returncode == 0
    shown = []
    for check in ("source_feedtimeliness_msg_log_LIS", "source_feedvolume_msg_log_LIS"):
        p = subprocess.run(cli + ["show", check], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert p.returncode == 0 and ": failed — 1 of " in p.stdout, p.stdout + p.stderr
        lines = p.stdout.splitlines()
        i = next(i for i, x in enumerate(lines) if x.startswith("what LIS sent, 2024-01-01 to 2024-01-20"))
        shown.append(lines[i + 1:i + 3])
    bars, marks = shown[0]
    assert shown[0] == shown[1] and bars == "█" * 12 + " " + "█" * 2 + "▂" + "█" * 4
    assert marks == " " * 12 + "x" + " " * 2 + "v"


def test_cli_show_rows_with_dates_past_9999(tmp_path):
    """An OHDSI database can hold a date Python has no day for (PostgreSQL and DuckDB go past 9999): the rows of
    the check that finds it are shown, not a traceback (OverflowError: date value out of range)."""
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng).execute(CO + "condition_end_date = DATE '10000-01-05' WHERE condition_occurrence_id = 200")
    eng.close()
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}", COLUMNS="200")
    cli = [sys.executable, "-m", "medlake.cli", "quality"]
    assert subprocess.run(cli + ["run"], env=env, cwd=tmp_path, capture_output=True).returncode == 0
    check = "field_plausiblevaluehigh_condition_occurrence_condition_end_date"
    p = subprocess.run(cli + ["show", check], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and ": failed — 1 of " in p.stdout, p.stdout + p.stderr
    [row] = [x for x in p.stdout.splitlines() if x.startswith("│")]
    assert "200" in row and "10000-01-05" in row, p.stdout


def test_cli_show_a_failed_check_its_query_and_rows(tmp_path):
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng).execute(CO + "person_id = 99 WHERE condition_occurrence_id = 200")
    eng.close()
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}", COLUMNS="200")
    cli = [sys.executable, "-m", "medlake.cli", "quality"]
    fk = "field_isforeignkey_condition_occurrence_person_id"
    p = subprocess.run(cli + ["show", fk], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and "no run in quality has checked it yet" in p.stdout, p.stderr
    assert subprocess.run(cli + ["run"], env=env, cwd=tmp_path, capture_output=True).returncode == 0
    p = subprocess.run(cli + ["show", fk], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "isForeignKey on condition_occurrence.person_id" in p.stdout and ": failed — 1 of 4 rows (25%)" in p.stdout
    assert "violated_rows" in p.stdout  # the query alone, in DQD's shape
    assert f"what to do: Rows point at a row that does not exist. List them (`medlake quality show {fk} --rows 50`) " \
           "and trace one (`medlake trace condition_occurrence ROW_ID` names what the row refers to" \
           in " ".join(p.stdout.split())
    [row] = [x for x in p.stdout.splitlines() if x.startswith("│")]  # the one violating row: its id, its person
    assert [x.strip() for x in row.split("│")[1:-1]] == ["200", "99", ""], p.stdout  # person 99 not in person
    p = subprocess.run(cli + ["show", "field_isrequired_nowhere_x"], env=env, cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 1 and p.stderr.startswith("error: no check field_isrequired_nowhere_x")
    assert "nor in its runs in quality: the check ids are in results.json" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    # a source-level check is known from the runs only: a wrong --out says that it found none to look in
    p = subprocess.run(cli + ["show", "source_feedtimeliness_landing_lis", "--out", "elsewhere"], env=env, cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 1 and "no finished run of this store in elsewhere to look in (--out names" in p.stderr
    # with the site's threshold and note: passed under 30%, the note and both thresholds shown
    (tmp_path / "site.toml").write_text(f"[thresholds]\n{fk} = 30\n[notes]\n{fk} = \"person 99: a visitor\"\n")
    assert subprocess.run(cli + ["run", "--checks", "site.toml"], env=env, cwd=tmp_path).returncode == 0
    p = subprocess.run(cli + ["show", fk, "--rows", "0"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert "threshold 30% (the site's; the check's own 0%)" in p.stdout and "note: person 99: a visitor" in p.stdout
    assert ": passed — 1 of 4 rows (25%)" in p.stdout and "what to do" not in p.stdout
    # a site check of a whole table (no field): its own predicate, counted and listed; without its file, said so
    (tmp_path / "late.toml").write_text('[[check]]\nname = "lateCondition"\ntable = "condition_occurrence"\n'
                                        'violation = "condition_start_date > DATE \'2020-06-01\'"\n')
    assert subprocess.run(cli + ["run", "--checks", "late.toml"], env=env, cwd=tmp_path).returncode == 0
    site_id = "table_latecondition_condition_occurrence"
    p = subprocess.run(cli + ["show", site_id, "--checks", "late.toml"], env=env, cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 0 and "violated_rows" in p.stdout and "condition_start_date > DATE" in p.stdout, p.stderr
    assert [x.split("│")[1].strip() for x in p.stdout.splitlines() if x.startswith("│")] == ["200", "300"]
    p = subprocess.run(cli + ["show", site_id], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert "a check of the site's: give its file with --checks" in " ".join(p.stdout.split()), p.stdout


def test_cli_show_of_a_check_that_stopped_says_which_column_is_not_of_its_type(tmp_path):
    """A CDM loaded from CSV as it came: condition_end_date held as text, one value '20200105'. The checks that
    compare it stop with an error; the run warns once, and `quality show` of such a check says what to do."""
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng).execute("ALTER TABLE condition_occurrence ALTER COLUMN condition_end_date TYPE VARCHAR")
    eng.execute(CO + "condition_end_date = '20200105' WHERE condition_occurrence_id = 100")
    eng.close()
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}", COLUMNS="200")
    cli = [sys.executable, "-m", "medlake.cli", "quality"]
    p = subprocess.run(cli + ["run", "--tables", "condition_occurrence"], env=env, cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 0 and "warning: 1 column(s) not of their CDM type in the store: condition_occurrence." \
        "condition_end_date is VARCHAR (the CDM: date)" in p.stderr, p.stderr
    cid = "field_plausiblestartbeforeend_condition_occurrence_condition_start_date"
    p = subprocess.run(cli + ["show", cid, "--rows", "0"], env=env, cwd=tmp_path, capture_output=True, text=True)
    text = " ".join(p.stdout.split())
    assert p.returncode == 0 and ": error — Conversion Error" in text, p.stderr
    assert "what to do: 1 column(s) not of their CDM type in the store: condition_occurrence.condition_end_date is " \
           "VARCHAR (the CDM: date); a value not of the CDM's type ('20200101' for a date) is an error" in text


def test_cli_site_rules_for_a_staging_table_of_its_own(tmp_path):
    """A site's CSV feed of lab orders (stg_csv_lab): its mandatory fields and record key declared in the site's
    checks file are checked per source, like medlake's own staging tables."""
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng).execute("CREATE TABLE stg_csv_lab (order_id VARCHAR, test_code VARCHAR, source VARCHAR)")
    eng.execute("INSERT INTO stg_csv_lab VALUES ('O1', 'HB', 'lab'), (NULL, 'HB', 'lab'), ('O1', 'HB', 'lab'), "
                "('O2', NULL, 'lab')")
    eng.close()
    (tmp_path / "site.toml").write_text("[source_fields.stg_csv_lab]\nmandatory = ['order_id', 'test_code']\n"
                                        "key = ['order_id', 'test_code']\n")
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}")
    p = subprocess.run([sys.executable, "-m", "medlake.cli", "quality", "run", "--checks", "site.toml"],
                       env=dict(env, COLUMNS="200"), cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    [run_dir] = list((tmp_path / "quality").glob("[!.]*"))
    got = {x["check_id"]: x for x in json.loads((run_dir / "results.json").read_text())}
    missing = got["source_sourcemandatorycompleteness_lab_stg_csv_lab_order_id"]
    assert (missing["status"], missing["num_violated_rows"], missing["num_denominator_rows"]) == ("failed", 1, 4)
    assert missing["examples"] == []  # a row without its id cannot be named by it
    code = got["source_sourcemandatorycompleteness_lab_stg_csv_lab_test_code"]  # named by the record's id
    assert (code["status"], code["examples"], code["example_field"]) == ("failed", ["O2"], "order_id")
    dup = got["source_sourceduplicaterecords_lab_stg_csv_lab_order_id+test_code"]
    assert (dup["num_violated_rows"], dup["examples"]) == (1, ["O1"])
    # the run's summary lists the worst failures; quality show gives a source-level one's result, examples and
    # what to do (it has no query of its own)
    assert "failed checks, worst first" in p.stdout
    assert "source_sourcemandatorycompleteness_lab_stg_csv_lab_order_id" in p.stdout
    assert "what to do: medlake quality show CHECK_ID\n" in p.stdout  # the default folder: no --out to name
    p = subprocess.run([sys.executable, "-m", "medlake.cli", "quality", "show", dup["check_id"]], env=dict(
        env, COLUMNS="200"), cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "sourceDuplicateRecords on source lab: stg_csv_lab.order_id+test_code" in p.stdout
    assert ": failed — 1 of 4 rows" in p.stdout and "examples (order_id): O1" in p.stdout
    assert "what to do: Source lab sent the same record (the same key) more than once" in p.stdout
    p = subprocess.run([sys.executable, "-m", "medlake.cli", "quality", "run", "--checks", "site.toml"],
                       env=dict(env, COLUMNS="200"), cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and f"since run {run_dir.name}: 0 new failure(s), 0 fixed" in p.stdout, p.stdout
    # only one source-level check type (DQD's checkNames): the others, DQD's included, not run
    p = subprocess.run([sys.executable, "-m", "medlake.cli", "quality", "run", "--checks", "site.toml", "--out", "dups",
                        "--check-names", "sourceDuplicateRecords"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "what to do: medlake quality show CHECK_ID --out dups\n" in p.stdout  # where `show` finds the run
    [rows] = [json.loads(x.read_text()) for x in (tmp_path / "dups").glob("*/results.json")]
    assert {x["check_name"] for x in rows} == {"sourceDuplicateRecords"} and dup["check_id"] in {x["check_id"] for x in rows}
    assert "only the check types (--check-names): sourceDuplicateRecords" in p.stdout
    # only the source level (beside DQD's checkLevels): every source-level check, none of DQD's
    p = subprocess.run([sys.executable, "-m", "medlake.cli", "quality", "run", "--checks", "site.toml", "--out", "src",
                        "--check-levels", "source"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and "only the check levels (--check-levels): SOURCE" in p.stdout, p.stderr
    [rows] = [json.loads(x.read_text()) for x in (tmp_path / "src").glob("*/results.json")]
    assert {x["check_id"] for x in rows} == {k for k, x in got.items() if x["check_level"] == "SOURCE"}  # as the whole run's
    p = subprocess.run([sys.executable, "-m", "medlake.cli", "quality", "run", "--checks", "site.toml", "--out", "sev",
                        "--check-severity", "source"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and "only the check severities (--check-severity): source" in p.stdout, p.stderr
    [rows] = [json.loads(x.read_text()) for x in (tmp_path / "sev").glob("*/results.json")]
    assert {x["check_id"] for x in rows} == {k for k, x in got.items() if x["severity"] == "source"} != set()


def test_a_checks_file_with_nothing_in_it_is_said(tmp_path):
    """review-site #13: an empty or all-commented checks file ran as if none were given, unsaid."""
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng)
    eng.close()
    (tmp_path / "site.toml").write_text("# [[check]]\n# name = \"later\"\n")
    p = subprocess.run([sys.executable, "-m", "medlake.cli", "quality", "run", "--tables", "person", "--checks",
                        "site.toml"], env=dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}"),
                       cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and "warning: site.toml holds no [[check]], [feed], [source_fields], [thresholds] or " \
        "[notes]: nothing of it is used" in p.stderr, p.stderr


def test_show_says_when_the_checks_file_changed_a_rule_since_the_run(tmp_path):
    """review-site #13: `quality show --checks` with an edited file printed the file's query beside the run's counts
    of the old rule, as if they were one."""
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng)
    eng.close()
    for name, year in (("a.toml", 2100), ("b.toml", 1950)):
        (tmp_path / name).write_text(f'[[check]]\nname = "oldBirth"\ntable = "person"\n'
                                     f'violation = "year_of_birth < {year}"\n')
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}", COLUMNS="300")
    cli = [sys.executable, "-m", "medlake.cli", "quality"]
    assert subprocess.run(cli + ["run", "--tables", "person", "--checks", "a.toml"], env=env, cwd=tmp_path,
                          capture_output=True).returncode == 0
    shown = {f: subprocess.run(cli + ["show", "table_oldbirth_person", "--checks", f], env=env, cwd=tmp_path,
                               capture_output=True, text=True).stdout for f in ("a.toml", "b.toml")}
    assert "has changed this check's rule" not in shown["a.toml"] and "year_of_birth < 2100" in shown["a.toml"]
    assert "note: b.toml has changed this check's rule since run " in shown["b.toml"], shown["b.toml"]


def test_in_a_narrow_terminal_the_failed_checks_ids_are_whole_lines(tmp_path):
    """In a narrow terminal the summary's failed checks are listed an id to a line, not as a table whose id
    column folds `field_isforeignkey_procedure_occurrence_visit_detail_id` mid-word (it could not be copied into
    `medlake quality show`); a wide terminal, or a pipe, gets the table."""
    import pty

    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng).execute(CO + "condition_end_date = DATE '1999-01-01' WHERE condition_occurrence_id = 100")
    eng.close()
    cmd = [sys.executable, "-m", "medlake.cli", "quality", "run", "--tables", "condition_occurrence", "--out"]

    def terminal(columns: int, out: str) -> str:
        main, sub = pty.openpty()
        p = subprocess.Popen(cmd + [out], env=dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}",
                             COLUMNS=str(columns), TERM="xterm"), cwd=tmp_path, stdout=sub, stderr=sub)
        os.close(sub)
        text = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the run ended: its side of the terminal closed
                break
            if not chunk:
                break
            text += chunk
        os.close(main)
        assert p.wait() == 0, text
        return re.sub(r"\x1b\[[0-9;]*m", "", text.decode()).replace("\r\n", "\n")  # (styles aside)

    narrow = terminal(60, "narrow")
    ids = [x["check_id"] for x in json.loads(next((tmp_path / "narrow").glob("*/results.json")).read_text())
           if x["status"] == "failed"]
    assert ids and "failed checks, worst first" in narrow
    lines = narrow.splitlines()
    assert all(i in lines for i in ids), narrow  # each id a whole line of its own
    assert "│" not in narrow.split("failed checks, worst first")[1].split("a check's rows")[0]
    wide = terminal(200, "wide")
    assert "┃ check" in wide and all(f"│ {i} " in wide for i in ids), wide  # the table, its ids whole


def test_a_version_the_store_contradicts_is_said_and_compared_with_its_own_runs_only(store, tmp_path):
    """--cdm-version 5.3 on a store recorded as 5.4: the run says so (a warning, the version's origin) and is not
    compared with the 5.4 runs (their checks are others), nor is the next 5.4 run compared with it."""
    out = tmp_path / "q"
    first = runner.run(store, None, out, only=["person"])
    other = runner.run(store, "5.3", out, only=["person"])
    assert other.summary["cdm_version_from"] == "as given; the store says v5.4 (from the store's record)"
    assert any(w.startswith("checked as OMOP CDM v5.3 (--cdm-version), but the store says v5.4")
               for w in other.summary["warnings"])
    assert other.summary["since_last_run"] is None  # not the 5.4 run's
    again = runner.run(store, None, out, only=["person"])
    assert again.summary["since_last_run"]["run_id"] == first.run_id and not again.summary["warnings"]


def test_v53_suite_runs_with_results_on_a_v53_store(tmp_path):
    """CDM v5.3 has its own spec and DQD files (e.g. death has no death_id, visit_occurrence has
    admitting_source_concept_id); the whole suite runs on a v5.3 store and finds a v5.3 defect."""
    from medlake.cdm import store as cdm_store

    eng = open_engine("duckdb::memory:")
    cdm_store.init(eng, "5.3")
    eng.execute("INSERT INTO person (person_id, gender_concept_id, year_of_birth, race_concept_id, "
                "ethnicity_concept_id) VALUES (1, 8507, 1980, 0, 0), (2, 8532, 1849, 0, 0)")
    eng.execute("INSERT INTO visit_occurrence (visit_occurrence_id, person_id, visit_concept_id, visit_start_date, "
                "visit_end_date, visit_type_concept_id, admitting_source_concept_id) VALUES "
                "(10, 1, 9201, DATE '2020-01-05', DATE '2020-01-01', 32817, 0)")
    r = runner.run(eng, None, tmp_path / "q")
    assert r.summary["cdm_version"] == "5.3"
    got = {x["check_id"]: x for x in r.results}
    assert len(got) == len([c for c in checks("5.3") if c.table not in runner.VOCABULARY_TABLES])
    assert [x for x in r.results if x["status"] == "error"] == []
    assert got["field_plausiblevaluelow_person_year_of_birth"]["status"] == "failed"
    assert got["field_plausiblestartbeforeend_visit_occurrence_visit_start_date"]["num_violated_rows"] == 1
    assert got["field_cdmfield_visit_occurrence_admitting_source_concept_id"]["status"] == "passed"
    assert "table_measureobservationperiodoverlap_observation_period" in got


@pytest.mark.parametrize("keys, dups", [([1, 2, 3], 0), ([1, 1, 2], 2), ([None, None, 1], 0), ([None, 1], 0),
                                        ([None, None, 1, 1, 1, 2, 2, 3], 5)])
def test_primary_key_by_sorting_counts_what_group_by_counts(keys, dups):
    """isPrimaryKey on DuckDB sorts (a row equal to its neighbour) instead of grouping: the same rows count; NULL
    keys are no key value, as in DQD's template (isRequired counts them), however many there are."""
    eng = open_engine("duckdb::memory:")
    eng.execute("CREATE TABLE t (id BIGINT)")
    eng.load_arrow("t", pa.table({"id": pa.array(keys, pa.int64())}))
    got = [eng.query(primary_key_sql("t", "id", sort=s)[0]).column(0)[0].as_py() for s in (False, True)]
    assert got == [dups, dups]
    # the quick test run first (a bitmap of the key range): 0 exactly when there is nothing to count
    assert (eng.query(key_unique_sql("t", "id", bitmap=True)).column(0)[0].as_py() == 0) == (dups == 0)


def test_primary_keys_too_sparse_for_a_bitmap_are_counted_exactly(store, tmp_path):
    """Keys spread too far for a bitmap (or not integers): the quick test fails on the engine, and the exact
    query counts the duplicates; where there are none, that sort is the whole test (no DISTINCT count first)."""
    from medlake.engines.base import EngineError

    ids = [r["person_id"] for r in store.query("SELECT person_id FROM person ORDER BY 1").to_pylist()]
    store.execute(f"UPDATE person SET person_id = 10 ** 15 WHERE person_id IN ({ids[0]}, {ids[1]})")
    with pytest.raises(EngineError, match="too large"):
        store.query(key_unique_sql("person", "person_id", bitmap=True))
    r = runner.Runner(store, "5.4", tmp_path / "q", only=["person"]).run()
    pk = next(x for x in r.results if x["check_id"] == "field_isprimarykey_person_person_id")
    assert (pk["status"], pk["num_violated_rows"], pk["examples"]) == ("failed", 2, [str(10 ** 15)])
    # sparse and distinct (as medlake's own ids, hashed): the sort is the test, no DISTINCT count before it
    store.execute("UPDATE person SET person_id = 10 ** 15 + 1 WHERE rowid = (SELECT min(rowid) FROM person WHERE "
                  "person_id = 10 ** 15)")
    run = runner.Runner(store, "5.4", tmp_path / "q2", only=["person"], incremental=False, resume=False)
    pk = next(x for x in run.run().results if x["check_id"] == "field_isprimarykey_person_person_id")
    assert (pk["status"], pk["num_violated_rows"]) == ("passed", 0)
    issued = [sql for _, sql in run.eng.log]
    assert issued.count(primary_key_sql("person", "person_id", sort=True)[0]) == 1
    assert key_unique_sql("person", "person_id") not in issued


def test_store_urls_in_reports_and_messages_have_no_password():
    from medlake.config import redact

    assert redact("postgresql://me:pw@db:5432/cdm?options=-csearch_path%3Dcdm") == \
        "postgresql://me@db:5432/cdm?options=-csearch_path%3Dcdm"
    assert redact("postgresql://db/cdm?user=me&password=pw&sslmode=require") == \
        "postgresql://db/cdm?user=me&password=***&sslmode=require"
    assert redact("duckdb:/data/store.duckdb") == "duckdb:/data/store.duckdb"


def test_dqd_results_file_in_dqd_format(store, tmp_path):
    """dqd.json: the DQD checks as DQD 2.x writes its results (camelCase CheckResults, Metadata from cdm_source,
    Overview), the fields DQD's viewer reads, the same outcomes as results.json."""
    store.execute("INSERT INTO cdm_source (cdm_source_name, cdm_source_abbreviation, cdm_holder, source_release_date, "
                  "cdm_release_date, cdm_version, cdm_version_concept_id, vocabulary_version) VALUES "
                  "('Test hospital', 'TH', 'medlake', DATE '2026-01-01', DATE '2026-01-02', '5.4', 756265, 'v5.0')")
    store.execute(CO + "person_id = 99 WHERE condition_occurrence_id = 200")
    r = runner.run(store, "5.4", tmp_path / "quality")
    dqd = json.loads((r.dir / "dqd.json").read_text())
    assert set(dqd) == {"startTimestamp", "endTimestamp", "executionTime", "executionTimeSeconds", "CheckResults",
                        "Metadata", "Overview"}
    # results.csv: results.json for a spreadsheet, row for row
    import csv

    with open(r.dir / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [x["check_id"] for x in rows] == [x["check_id"] for x in r.results]
    row = next(x for x in rows if x["check_id"] == "field_isforeignkey_condition_occurrence_person_id")
    assert (row["status"], row["num_violated_rows"], row["examples"]) == ("failed", "1", "200")
    ours = {x["check_id"]: x for x in r.results if x["source"] == "dqd"}
    assert len(dqd["CheckResults"]) == len(ours) and any(x["source"] != "dqd" for x in r.results)
    viewer = {"cdmTableName", "cdmFieldName", "checkName", "category", "subcategory", "checkLevel", "notesValue",
              "checkDescription", "thresholdValue", "pctViolatedRows", "isError", "notApplicable", "failed", "passed",
              "numViolatedRows", "numDenominatorRows", "executionTime", "notApplicableReason", "queryText", "error",
              "checkId", "conceptId", "unitConceptId", "sqlFile", "context", "warning"}
    assert all(viewer <= set(x) for x in dqd["CheckResults"])
    fk = next(x for x in dqd["CheckResults"] if x["checkId"] == "field_isforeignkey_condition_occurrence_person_id")
    assert (fk["failed"], fk["passed"], fk["numViolatedRows"], fk["cdmTableName"], fk["cdmFieldName"]) == \
        (1, 0, 1, "CONDITION_OCCURRENCE", "PERSON_ID")
    assert fk["sqlFile"] == "is_foreign_key.sql"  # DQD's template for the check type
    # a failed check's query alone (what `quality show` prints) counts it; the checks that passed share queries
    assert store.query(fk["queryText"]).to_pylist() == [
        {"num_violated_rows": 1, "pct_violated_rows": 0.25, "num_denominator_rows": 4}]  # DQD's columns
    assert all(x["queryText"] == "" for x in dqd["CheckResults"] if not (x["failed"] or x["isError"]))
    for x in dqd["CheckResults"]:  # exactly one status each, the one results.json has
        flags = {"failed": x["failed"], "passed": x["passed"], "error": x["isError"], "not_applicable": x["notApplicable"]}
        assert sum(flags.values()) == 1 and flags[ours[x["checkId"]]["status"]] == 1
    # review-dqdjson: the Overview as DQD's summarizeResults counts (ARES adds countPassed and countOverallFailed
    # up to the total): a check not applicable or in error is not failed
    o = dqd["Overview"]
    failed = sum(x["status"] == "failed" for x in ours.values())
    assert (o["countTotal"], o["countOverallFailed"], o["countThresholdFailed"]) == (len(ours), failed, failed)
    assert o["countPassed"] + o["countOverallFailed"] == o["countTotal"] > sum(x["status"] == "passed" for x in ours.values())
    assert o["percentPassed"] == round(100 * o["countPassed"] / o["countTotal"], 2)
    # a not-applicable check's counts where they are known (an empty table: 0 rows), in DQD's words
    empty = next(x for x in dqd["CheckResults"] if x["checkId"] == "field_isrequired_specimen_specimen_id")
    assert (empty["numViolatedRows"], empty["numDenominatorRows"], empty["notApplicableReason"]) == (
        0, 0, "Table SPECIMEN is empty.")
    unvalued = next(x for x in dqd["CheckResults"] if x["checkId"] == "field_isforeignkey_condition_occurrence_provider_id")
    assert (unvalued["numDenominatorRows"], unvalued["notApplicableReason"]) == (
        None, "Field CONDITION_OCCURRENCE.PROVIDER_ID is not populated.")
    nothing = next(x for x in dqd["CheckResults"] if x["checkId"] == "field_plausiblevaluelow_person_month_of_birth")
    assert (nothing["numViolatedRows"], nothing["pctViolatedRows"], nothing["numDenominatorRows"]) == (0, 0.0, 0)
    cdm_table = next(x for x in dqd["CheckResults"] if x["checkName"] == "cdmTable")
    assert cdm_table["thresholdValue"] is None and fk["thresholdValue"] == 0  # DQD's files have no cdmTable column
    assert all(isinstance(x["conceptId"], str) for x in dqd["CheckResults"] if x["conceptId"] is not None)
    meta = dqd["Metadata"][0]
    assert (meta["cdmSourceName"], meta["cdmSourceAbbreviation"], meta["cdmVersion"]) == ("Test hospital", "TH", "5.4")
    assert (meta["cdmVersionConceptId"], meta["cdmReleaseDate"], meta["sourceDescription"]) == (
        756265, "2026-01-02", None)
    assert meta["dqdVersion"].startswith("medlake")
    store.execute("DELETE FROM cdm_source")  # no row: every key of DQD's Metadata still there (ARES reads them)
    meta = json.loads((runner.run(store, "5.4", tmp_path / "quality").dir / "dqd.json").read_text())["Metadata"][0]
    assert {"cdmSourceName", "cdmSourceAbbreviation", "cdmReleaseDate", "vocabularyVersion"} <= set(meta)
    assert (meta["cdmSourceName"], meta["cdmVersion"]) == (None, "5.4")  # (not the store's URL)


def test_each_run_says_what_failed_anew_and_what_was_fixed_since_the_stores_last_run(tmp_path):
    """run.json's since_last_run, the report's 'new' marks and the CLI line compare with the same store's previous
    finished run of the same scope or of everything (another store's runs in the same folder, or a run of one
    table, do not count)."""
    fk = "field_isforeignkey_condition_occurrence_person_id"
    out = tmp_path / "quality"
    other = open_engine(f"duckdb:{tmp_path / 'other.duckdb'}")
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng)
    first = runner.run(eng, "5.4", out)
    assert first.summary["since_last_run"] is None
    world(other).execute(CO + "person_id = 99 WHERE condition_occurrence_id = 200")
    assert runner.run(other, "5.4", out).summary["since_last_run"] is None  # its first run, in a folder with one
    eng.execute(CO + "person_id = 99 WHERE condition_occurrence_id = 200")
    second = runner.run(eng, "5.4", out)
    both = [fk, "table_measureconditioneracompleteness_condition_era"]  # person 99's condition has no era either
    assert second.summary["since_last_run"] == {"run_id": first.run_id, "new_failures": both, "more_days": [],
                                                "new_errors": [], "fixed": [], "emptied": []}
    html = (second.dir / "report.html").read_text()
    assert "2 new failure(s)" in html and html.count("<span class=new>new</span>") == 5  # legend; failed; all
    # a run of one table between two whole runs: the next whole run compares with the whole run before (a check
    # the run of one table did not run is not new), and its trend leaves the run of one table out
    one = runner.run(eng, "5.4", out, only=["person"])
    assert one.summary["since_last_run"] == {"run_id": second.run_id, "new_failures": [], "more_days": [],
                                             "new_errors": [], "fixed": [], "emptied": []}
    assert one.summary["tables"] == ["person"] and "Runs of the same tables and check types" in (
        one.dir / "report.html").read_text()
    eng.execute(CO + "person_id = 1 WHERE condition_occurrence_id = 200")
    third = runner.run(eng, "5.4", out)
    assert third.summary["since_last_run"] == {"run_id": second.run_id, "new_failures": [], "more_days": [],
                                               "new_errors": [], "fixed": both, "emptied": []}
    html = (third.dir / "report.html").read_text()
    assert f"<h2>Fixed since run {second.run_id} (2)</h2>" in html and f"<code>{fk}</code>" in html.split("Fixed since")[1]
    assert f"<title>{second.run_id}, all checks" in html and one.run_id not in html
    assert [h["run_id"] for h in runner.history(out, third.summary["store"])] == [
        first.run_id, second.run_id, one.run_id, third.run_id]
    eng.execute(CO + "person_id = 99 WHERE condition_occurrence_id = 200")  # broken again, seen by a run of one table
    assert runner.run(eng, "5.4", out, only=["condition_occurrence"]).summary["since_last_run"] == {
        "run_id": third.run_id, "new_failures": [fk], "more_days": [], "new_errors": [], "fixed": [], "emptied": []}
    assert runner.run(eng, "5.4", out).summary["since_last_run"] == {  # new since the last whole run, still
        "run_id": third.run_id, "new_failures": both, "more_days": [], "new_errors": [], "fixed": [], "emptied": []}
    eng.close()
    other.close()


def _dqd_copy(tmp_path, level: str, change) -> Path:
    """The site's own copy of one of DQD's threshold files (as shipped with medlake), changed row by row."""
    src = REPO / "src" / "medlake" / "quality" / "dqd" / f"OMOP_CDMv5.4_{level}.csv"
    with src.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        cols, rows = reader.fieldnames, list(reader)
    out = tmp_path / f"site_{level.lower()}.csv"
    with out.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(r for r in rows if change(r) is not False)
    return out


def test_a_sites_own_dqd_threshold_files_set_rules_thresholds_and_notes(store, tmp_path):
    """A site's copies of DQD's Field_Level and Concept_Level files: a plausibility value, threshold and note of
    its own, a plausibility check switched off, a threshold on a check the spec decides; concept rules only as
    its file lists them. The next run without them is DQD's defaults again (the tables re-checked)."""
    def field(r):
        key = (r["cdmTableName"].lower(), r["cdmFieldName"].lower())
        if key == ("person", "year_of_birth"):
            r.update(plausibleValueLow="1985", plausibleValueLowThreshold="40",
                     plausibleValueLowNotes="births before 1985: the paper archive, known")
        elif key == ("condition_occurrence", "condition_start_date"):
            r["plausibleDuringLife"] = "No"
        elif key == ("person", "gender_concept_id"):
            r["isRequiredThreshold"] = "5"

    fl = _dqd_copy(tmp_path, "Field_Level", field)
    cl = _dqd_copy(tmp_path, "Concept_Level", lambda r: r["conceptId"].strip() == "3013721")  # one concept's rules
    r = runner.run(store, "5.4", tmp_path / "q", dqd_thresholds=[str(fl), str(cl)])
    got = {x["check_id"]: x for x in r.results}
    low = got["field_plausiblevaluelow_person_year_of_birth"]
    assert (low["num_violated_rows"], low["num_denominator_rows"], low["threshold"], low["status"]) == (1, 2, 40, "failed")
    assert low["notes"] == "births before 1985: the paper archive, known"
    assert "field_plausibleduringlife_condition_occurrence_condition_start_date" not in got
    assert "field_plausibleduringlife_drug_exposure_drug_exposure_start_date" in got  # the rest as DQD's file
    assert got["field_isrequired_person_gender_concept_id"]["threshold"] == 5
    dqd_concepts = {x["concept_id"] for x in r.results if x["check_level"] == "CONCEPT" and x["source"] == "dqd"}
    assert dqd_concepts == {3013721}
    assert r.summary["dqd_thresholds"] == [str(fl.resolve()), str(cl.resolve())]
    dqd = json.loads((r.dir / "dqd.json").read_text())
    [row] = [x for x in dqd["CheckResults"] if x["checkId"] == low["check_id"]]
    assert row["notesValue"] == low["notes"] and row["thresholdValue"] == 40
    again = runner.run(store, "5.4", tmp_path / "q")  # DQD's own files again: person's checks differ, re-checked
    assert "person" in again.rechecked and "condition_occurrence" in again.rechecked
    low = {x["check_id"]: x for x in again.results}["field_plausiblevaluelow_person_year_of_birth"]
    default = next(c.threshold for c in checks("5.4") if c.id == low["check_id"])  # DQD's 1%
    assert (low["num_violated_rows"], low["threshold"], low["notes"]) == (0, default, None)


@pytest.mark.parametrize("text,message", [
    ("cdmTableName,cdmFieldName,isRequired,isRequiredThreshold\nperson,person_id,Yes,abc\n",
     r"site\.csv:2: isRequiredThreshold must be empty, NA or a percent from 0 to 100, not 'abc'"),
    ("cdmTableName,cdmFieldName,isRequired,isRequiredThreshold\nperson,person_id,Maybe,0\n",
     r"site\.csv:2: isRequired must be Yes, No or empty, not 'Maybe'"),
    # the file's line, where a note above runs over two lines (as DQD's descriptions do), not the record's number
    ("cdmTableName,cdmFieldName,isRequired,isRequiredThreshold,isRequiredNotes\nperson,year_of_birth,Yes,0,\"a note\n"
     "over two lines\"\nperson,person_id,Yes,150,\n", r"site\.csv:4: isRequiredThreshold must be empty, NA or a "
     r"percent from 0 to 100, not '150'"),
    ("table,field\nperson,person_id\n", r"site\.csv: not one of DQD's threshold files"),
    ("cdmTableName,cdmFieldName,conceptId,conceptName,plausibleGender,plausibleGenderThreshold\n"
     "measurement,measurement_concept_id,4000,x,Both,5\n", r"site\.csv:2: plausibleGender must be Male or Female"),
    ("cdmTableName,cdmFieldName,plausibleValueLow,plausibleValueLowThreshold\nperson,year_of_birth,old,1\n",
     r"site\.csv:2: plausibleValueLow cannot be read: 'old' is not what the column holds"),
    ("cdmTableName,cdmFieldName,conceptId,conceptName,unitConceptId,plausibleValueLow,plausibleValueLowThreshold\n"
     "measurement,measurement_concept_id,3013721,x,8840,five,5\n", r"site\.csv:2: plausibleValueLow cannot be read"),
    ("cdmTableName,cdmFieldName,conceptId,conceptName\nmeasurement,measurement_concept_id,30x,x\n",
     r"site\.csv:2: conceptId cannot be read: '30x'"),
    # a row of a table or field the CDM has not (its rules were left out unsaid), a second row for one (one was)
    ("cdmTableName,cdmFieldName,isRequired\nperson,person_id,Yes\nmeasurment,measurement_id,Yes\n",
     r"site\.csv:3: no table 'measurment' in OMOP CDM v5.4 \(did you mean measurement\?\); fix or remove the row"),
    ("cdmTableName,cdmFieldName,isRequired\nperson,year_of_brith,Yes\n",
     r"site\.csv:2: no field 'year_of_brith' in person \(OMOP CDM v5.4\) \(did you mean year_of_birth\?\)"),
    # DQD's file of the other version: said as such (it suggested a field of this version)
    ("cdmTableName,cdmFieldName,isRequired\nvisit_occurrence,admitting_source_concept_id,No\n",
     r"site\.csv:2: visit_occurrence.admitting_source_concept_id is of OMOP CDM v5.3, not v5.4: the file is of the "
     r"other version \(DQD's OMOP_CDMv5.3_Field_Level.csv\?\); give the v5.4 one"),
    ("cdmTableName,measurePersonCompleteness\nPERSON,No\nvisit_occurrence,Yes\nperson,Yes\n",
     r"site\.csv:4: a second row for person \(the first: line 2\); keep one"),
    ("cdmTableName,cdmFieldName,conceptId,conceptName,unitConceptId,plausibleValueLow,plausibleValueLowThreshold\n"
     "measurement,measurement_concept_id,3013721,x,8840,5,5\nmeasurement,measurement_concept_id,3013721,x,8713,5,5\n"
     "measurement,measurement_concept_id,3013721,x,8840,6,5\n",
     r"site\.csv:4: a second row for measurement.measurement_concept_id, concept 3013721, unit 8840 \(the first: "
     r"line 2\); keep one"),
])
def test_a_mistake_in_a_sites_dqd_threshold_file_names_file_line_and_column(store, tmp_path, text, message):
    (tmp_path / "site.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        runner.run(store, "5.4", tmp_path / "q", dqd_thresholds=[str(tmp_path / "site.csv")])
    assert not list((tmp_path / "q").glob("[!.]*"))  # refused before any run folder (the folder's lock aside)


def test_two_dqd_threshold_files_of_one_level_are_refused(store, tmp_path):
    a = _dqd_copy(tmp_path, "Field_Level", lambda r: None)
    b = tmp_path / "b.csv"
    b.write_text(a.read_text())
    with pytest.raises(ValueError, match=r"two DQD Field_Level threshold files: .*site_field_level\.csv and .*b\.csv"):
        runner.run(store, "5.4", tmp_path / "q", dqd_thresholds=[str(a), str(b)])


def test_cli_runs_with_a_sites_dqd_files_and_shows_their_threshold_and_note(tmp_path):
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng)
    eng.close()

    def field(r):
        if (r["cdmTableName"].lower(), r["cdmFieldName"].lower()) == ("person", "year_of_birth"):
            r.update(plausibleValueLow="1985", plausibleValueLowThreshold="40", plausibleValueLowNotes="the archive")

    fl = _dqd_copy(tmp_path, "Field_Level", field)
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}", COLUMNS="200")
    cli = [sys.executable, "-m", "medlake.cli", "quality"]
    p = subprocess.run(cli + ["run", "--dqd-thresholds", str(fl)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and f"from the site's files (--dqd-thresholds): {fl.resolve()}" in p.stdout, p.stderr
    p = subprocess.run(cli + ["show", "field_plausiblevaluelow_person_year_of_birth"], env=env, cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0 and "threshold 40%" in p.stdout and "note: the archive" in p.stdout, p.stderr
    assert ": failed — 1 of 2 rows (50%)" in p.stdout and "1985" in p.stdout  # the query has the site's value
    fl.write_text("table,field\n")
    p = subprocess.run(cli + ["run", "--dqd-thresholds", str(fl)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("error: ") and \
        "not one of DQD's threshold files" in p.stderr


def test_cli_runs_on_a_cohort_and_shows_its_rows(tmp_path):
    """--cohort-id (DQD's cohortDefinitionId): person 1's condition ends before it starts; a run of cohort 7
    (person 2) passes the check, of cohort 8 (person 1) fails it, and quality show lists that person's row."""
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng).execute(CO + "condition_end_date = DATE '1999-01-01' WHERE condition_occurrence_id = 100")
    eng.execute("INSERT INTO cohort VALUES (7, 2, DATE '2020-01-01', DATE '2020-12-31'), "
                "(8, 1, DATE '2020-01-01', DATE '2020-12-31')")
    eng.close()
    env = dict(os.environ, MEDLAKE_STORE=f"duckdb:{tmp_path / 's.duckdb'}", COLUMNS="200")
    cli = [sys.executable, "-m", "medlake.cli", "quality"]
    check = "field_plausiblestartbeforeend_condition_occurrence_condition_start_date"

    def status(out):
        [d] = [x for x in (tmp_path / out).glob("[!.]*")]
        return {r["check_id"]: r for r in json.loads((d / "results.json").read_text())}[check]

    p = subprocess.run(cli + ["run", "--cohort-id", "7", "--out", "c7"], env=env, cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 0 and "only the rows of cohort 7's 1 person(s) (cohort; no source-level" in p.stdout, p.stderr
    assert (status("c7")["status"], status("c7")["num_denominator_rows"]) == ("passed", 1)
    p = subprocess.run(cli + ["run", "--cohort-id", "8", "--out", "c8"], env=env, cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 0 and (status("c8")["status"], status("c8")["num_violated_rows"]) == ("failed", 1)
    assert "only the rows of cohort 8's 1 person(s) (cohort)" in next((tmp_path / "c8").glob("[!.]*")).joinpath(
        "report.html").read_text()
    # after it in the same folder: cohort 7's run is not compared with cohort 8's, and a whole run neither
    for args in (["--cohort-id", "7"], []):
        p = subprocess.run(cli + ["run", "--out", "c8", *args], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert p.returncode == 0 and "since run" not in p.stdout, p.stdout
    p = subprocess.run(cli + ["show", check, "--out", "c8"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert "(run of cohort" not in p.stdout  # the latest run of c8 is the whole one
    [c8] = [d for d in (tmp_path / "c8").glob("[!.]*") if json.loads((d / "run.json").read_text())["cohort"] == {
        "table": "cohort", "cohort_definition_id": 8, "subjects": 1}]
    for d in (tmp_path / "c8").glob("[!.]*"):
        if d != c8:
            shutil.rmtree(d)  # (show reads the latest run that has the check)
    p = subprocess.run(cli + ["show", check, "--out", "c8"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and "(run of cohort 8 of cohort:" in p.stdout, p.stderr
    table = p.stdout.split("violating rows (up to 10)")[1]
    assert "100" in table and "200" not in table
    for args, message in ((["--cohort-id", "9"], "error: cohort 9 has no subjects in cohort"),
                          (["--cohort-id", "7", "--cohort-table", "results.nope"], "error: cohort table results.nope:"),
                          (["--cohort-id", "7", "--cohort-table", "x;drop"], "error: cohort table 'x;drop' is not a")):
        p = subprocess.run(cli + ["run", "--out", "bad", *args], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith(message), p.stderr
    assert not (tmp_path / "bad").exists()
