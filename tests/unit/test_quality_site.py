"""Site-defined checks (TOML): what a site writes in a predicate runs as it reads — a trailing comment, the checked
table's own name in a correlated subquery — and what cannot run is refused before the run, saying what to fix."""
from __future__ import annotations

import pytest

from medlake.engines import open_engine
from medlake.quality import runner, site

from test_quality_checks import FEMALE_ONLY, world  # the small clean CDM of the check-type tests


@pytest.fixture
def store():
    eng = open_engine("duckdb::memory:")
    yield world(eng)
    eng.close()


def check(name: str, violation: str, table: str = "condition_occurrence", **more) -> str:
    lines = [f"name = '{name}'", f"table = '{table}'", f"violation = '''{violation}'''"]
    return "[[check]]\n" + "\n".join(lines + [f"{k} = '''{v}'''" for k, v in more.items()]) + "\n"


def site_results(store, tmp_path, text: str) -> dict[str, dict]:
    r = runner.run(store, "5.4", tmp_path / "q", site_checks=site.parse(text, "site.toml"),
                   only=["condition_occurrence"])
    return {x["check_name"]: x for x in r.results if x["source"] == "site"}


def counted(result: dict) -> tuple:
    return result["status"], result["num_violated_rows"], result["num_denominator_rows"], result.get("error")


# condition_occurrence: 100 (person 1, 2020-01-02), 200 and 300 (person 2, both 2021-01-01), 400 (person 1,
# 2020-01-01); 300 is the FEMALE_ONLY condition; 300 and 400 have no end date.

def test_a_comment_in_a_predicate_is_no_part_of_the_query(store, tmp_path):
    """A `-- note` after a predicate swallowed the rest of the one-line scan (a parser error about "0" at run time);
    comments, at the end or inside, are taken out and the check counts its rows."""
    got = site_results(store, tmp_path, check("early", "condition_start_date < DATE '2021-01-01' -- before 2021")
                       + check("earlyOfEnded", "condition_start_date /* the start */ < DATE '2021-01-01'",
                               denominator="condition_end_date IS NOT NULL -- ended ones only")
                       + check("noteInText", "condition_source_value = 'E11 -- not a comment'"))
    assert counted(got["early"]) == ("failed", 2, 4, None)
    assert counted(got["earlyOfEnded"]) == ("failed", 1, 2, None)
    assert counted(got["noteInText"]) == ("passed", 0, 4, None)  # a '--' in a string stays the string's
    parsed = site.parse(check("early", "condition_start_date < DATE '2021-01-01' -- before 2021"), "site.toml")[0][0]
    assert parsed.param("violation") == "condition_start_date < DATE '2021-01-01'"
    assert parsed.description == "condition_start_date < DATE '2021-01-01' -- before 2021"  # the site's words


def test_the_checked_tables_own_name_reads_the_checked_row(store, tmp_path):
    """The checked table is `t` in the scan; a predicate that names it (a correlated subquery's
    `condition_occurrence.person_id`) was "Referenced table not found". It reads the checked row now, as `t` does;
    a subquery's own unaliased `FROM condition_occurrence` keeps its name for its own rows."""
    same_day = ("EXISTS (SELECT 1 FROM condition_occurrence c2 WHERE c2.person_id = {0}.person_id AND "
                "c2.condition_occurrence_id <> {0}.condition_occurrence_id AND "
                "c2.condition_start_date = {0}.condition_start_date)")
    inner = ("person_id IN (SELECT condition_occurrence.person_id FROM condition_occurrence "
             f"WHERE condition_occurrence.condition_concept_id = {FEMALE_ONLY})")
    got = site_results(store, tmp_path, check("sameDayByName", same_day.format("condition_occurrence"))
                       + check("sameDayByT", same_day.format("t"))
                       + check("sameDayQuoted", same_day.format('"Condition_Occurrence"'))
                       + check("personsWithIt", inner))
    assert counted(got["sameDayByName"]) == ("failed", 2, 4, None)  # 200 and 300
    assert counted(got["sameDayByT"]) == ("failed", 2, 4, None)
    assert counted(got["sameDayQuoted"]) == ("failed", 2, 4, None)
    assert counted(got["personsWithIt"]) == ("failed", 2, 4, None)  # person 2's rows, not 300 alone
    parsed = site.parse(check("a", same_day.format("condition_occurrence")) + check("b", inner), "site.toml")
    assert parsed[0][0].param("violation") == same_day.format("t")
    assert parsed[1][0].param("violation") == inner  # the subquery's own rows keep their name


@pytest.mark.parametrize("text,message", [
    (check("a", ""), r"check #1 \(a\): violation is empty: give a SQL condition, TRUE for a bad row \(or a 'rule'\)$"),
    (check("a", "   "), "violation is empty"),
    (check("a", "-- negative values"), "violation is only a comment: give a SQL condition"),
    (check("a", "condition_concept_id = 0", denominator=""),
     "denominator is empty: give a SQL condition, or leave it out to count every row$"),
    (check("a", "condition_concept_id < 0 /* negative"),
     r"violation has a /\* comment that is not closed: end it with \*/ \(or put the note in description\)$"),
    (check("a", "condition_concept_id = 0", denominator="condition_end_date IS NULL /* open"),
     r"denominator has a /\* comment that is not closed"),
    (check("a", "condition_source_value = 'E11"), "violation is not valid SQL: a quote or comment is not closed$"),
    (check("a", "count(*) > 1"), r"violation is a condition on each row of condition_occurrence: COUNT\(\*\) is "
     r"computed over many rows, allowed only in a subquery"),
    (check("a", "sum(condition_concept_id) OVER () > 1"), "allowed only in a subquery"),
    (check("a", "person.year_of_birth > 2000"), r"violation reads person.year_of_birth, but no FROM around it "
     r"reads person by that name: a predicate reads its own table's columns \(condition_occurrence's, as t.x or x\); "
     r"read person in a subquery \(EXISTS \(SELECT 1 FROM person AS o WHERE o.person_id = t.person_id AND …\)\)$"),
    (check("a", "EXISTS (SELECT 1 FROM person AS p WHERE p.person_id = t.person_id AND person.year_of_birth > 1)"),
     "reads person.year_of_birth, but no FROM around it reads person by that name"),
    (check("a", "x", rule="pattern").replace("violation = '''x'''\n", "field = 'condition_source_value'\n")
     .replace("rule = '''pattern'''", "rule = 'pattern'\nregex = '([A-Z'"),
     r"regex '\(\[A-Z' is not a regular expression: missing \]: \[A-Z$"),
], ids=["empty", "blank", "only-comment", "empty-denominator", "open-comment", "open-comment-denominator",
        "open-quote", "aggregate", "window", "other-table", "other-table-aliased", "regex"])
def test_a_predicate_that_cannot_run_is_refused_before_the_run(text, message):
    """Each was accepted and then the check's error at run time, in DuckDB's or sqlglot's words (`violation = ""`:
    "Unimplemented type for cast (TUPLE -> BOOLEAN)"; an open /*: "Error tokenizing 'SELECT 1 WHERE …'")."""
    with pytest.raises(ValueError, match=message) as e:
        site.parse(text, "site.toml")
    assert str(e.value).startswith("site.toml: check #1 (a): ") and "\n" not in str(e.value)
    assert "Error tokenizing" not in str(e.value)


def test_what_a_subquery_may_do_is_not_refused():
    """An aggregate inside a subquery (a duplicate key), a rule's own subquery and a valid pattern are fine."""
    dup = ("condition_source_value IN (SELECT condition_source_value FROM condition_occurrence "
           "GROUP BY condition_source_value HAVING count(*) > 1)")
    text = (check("dup", dup) + "[[check]]\nname = 'u'\ntable = 'person'\nfield = 'person_id'\nrule = 'unique'\n"
            "[[check]]\nname = 'p'\ntable = 'person'\nfield = 'person_source_value'\nrule = 'pattern'\n"
            "regex = '^[A-Z]{2}\\d+$'\n")
    text += check("inSubquery", "person_id IN (SELECT person.person_id FROM person WHERE person.year_of_birth > 2000)")
    got = {c.name: c.param("violation") for c, _ in site.parse(text, "site.toml")}
    assert got["dup"] == dup
    assert got["inSubquery"] == "person_id IN (SELECT person.person_id FROM person WHERE person.year_of_birth > 2000)"
    assert got["u"].startswith('"person_id" IN (SELECT "person_id" FROM "person"')
    assert got["p"].endswith("'^[A-Z]{2}\\d+$')")


def test_a_site_check_that_scans_for_ever_is_stopped_at_its_limit_and_the_run_goes_on(store, tmp_path):
    """--site-timeout: a predicate that would scan for ever (here 10^10 pairs) is its check's error, saying so; the
    site's other checks of the table, and every DQD check, are counted."""
    slow = ("(SELECT count(*) FROM range(100000) AS a, range(100000) AS b WHERE (a.range * b.range) % 7 = 3) < 0 "
            "AND condition_occurrence_id > 0")
    text = check("forever", slow) + check("early", "condition_start_date < DATE '2021-01-01'")
    r = runner.run(store, "5.4", tmp_path / "q", site_checks=site.parse(text, "site.toml"),
                   only=["condition_occurrence"], site_timeout=0.5)
    got = {x["check_name"]: x for x in r.results if x["source"] == "site"}
    assert (got["forever"]["status"], got["forever"]["error"]) == (
        "error", "stopped after 0.5 s, its time limit for a site check (--site-timeout): its predicate reads too "
                 "much; rewrite it, or raise the limit")
    assert counted(got["early"]) == ("failed", 2, 4, None)
    dqd = [x for x in r.results if x["source"] == "dqd" and x["cdm_table"] == "condition_occurrence"]
    assert dqd and not [x for x in dqd if x["status"] == "error"]


def test_a_source_fields_when_condition_is_read_as_a_predicate_and_refused_before_the_run(tmp_path):
    """[source_fields.T.when] conditions as site checks' violations (review-src #1): a `-- note` is taken out (it
    swallowed the rest of the one-line scan: every mandatory field of the table was an error) and the table's own
    name reads the checked row; an aggregate, two statements or a condition not in quotes are refused naming the
    key. Before, the note and the aggregate were accepted and failed in the database."""
    from medlake.quality.feeds import run_sources

    text = ("[source_fields.stg_csv_lab]\nkey = ['order_id']\n[source_fields.stg_csv_lab.when]\n"
            "unit = \"stg_csv_lab.result_type = 'numeric'  -- numeric results carry a unit\"\n")
    when = site.fields_config(text, "site.toml")["stg_csv_lab"]["when"]
    assert when == {"unit": "t.result_type = 'numeric'"}
    eng = open_engine("duckdb::memory:")
    eng.execute("CREATE TABLE stg_csv_lab (source VARCHAR, order_id VARCHAR, result_type VARCHAR, unit VARCHAR)")
    eng.execute("INSERT INTO stg_csv_lab VALUES ('lab', 'O1', 'numeric', NULL), ('lab', 'O2', 'text', NULL)")
    got = {r["cdm_field"]: r for r in run_sources(eng, runner.result, tmp_path / "none",
                                                  fields=site.fields_config(text))}
    eng.close()
    assert (got["unit"]["status"], got["unit"]["num_violated_rows"], got["unit"]["num_denominator_rows"]) == (
        "failed", 1, 1)
    assert got["unit"]["examples"] == ["O1"]
    for cond, message in (('"count(*) > 1"', r"when.unit is a condition on each row of stg_csv_lab: COUNT\(\*\) is "
                                             "computed over many rows"),
                          ('"unit = \'x\'; DROP TABLE stg_csv_lab"', "when.unit is one condition, not statements"),
                          ("3", "when.unit must be a SQL condition in quotes, not 3")):
        with pytest.raises(ValueError, match=r"^site.toml: \[source_fields.stg_csv_lab\]: " + message):
            site.fields_config(f"[source_fields.stg_csv_lab.when]\nunit = {cond}\n", "site.toml")
