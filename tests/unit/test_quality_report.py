"""What the report says to do about a failed check: one next step per check type, filled with the check's own
names."""
from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import subprocess
import sys
from html import unescape
from types import SimpleNamespace

import pytest

from medlake.engines import open_engine
from medlake.quality import feeds, report, runner
from medlake.quality.checks import MEDLAKE_TYPES, check_types

from test_quality_checks import CO, world  # the small clean CDM of the check-type tests


def every_type() -> set[str]:
    return {*check_types("5.4"), *check_types("5.3"), *MEDLAKE_TYPES, *feeds.SOURCE_TYPES, *feeds.TYPES}


def test_every_check_type_has_a_next_step_and_no_step_names_a_type_that_does_not_exist():
    steps = set(report._steps()["steps"])
    assert every_type() - steps == set()
    assert steps - every_type() == set()  # a misspelt name would never be shown
    assert set(report._steps()["elsewhere"]) - every_type() == set()


@pytest.mark.parametrize("name", sorted({*check_types("5.4"), *check_types("5.3"), *MEDLAKE_TYPES}))
def test_a_cdm_medlake_did_not_make_is_not_sent_to_medlakes_pipeline(name):
    """An OHDSI database checked in place: its steps name no command of medlake's pipeline, which would write
    medlake's tables into it (`medlake transform`) or find nothing there (`trace`, `map`, `empi`)."""
    r = {"check_name": name, "check_id": f"id_of_{name}", "cdm_table": "measurement", "cdm_field": "unit_concept_id"}
    pipeline = r"medlake (trace|transform|map|empi|quarantine|vocab)"
    assert not re.search(pipeline, report.next_step(r, own=False)), name
    if re.search(pipeline, report.next_step(r)):  # medlake's own store is sent there
        assert name in report._steps()["elsewhere"]


@pytest.mark.parametrize("name", sorted(every_type()))
def test_each_step_fills_in_and_names_a_medlake_command_or_the_report(name):
    r = {"check_name": name, "check_id": f"id_of_{name}", "cdm_table": "measurement", "cdm_field": "unit_concept_id",
         "data_source": "h1-lis"}
    text = report.next_step(r)
    assert "{" not in text and "}" not in text
    assert "`medlake " in text or "in this report" in text or "ask" in text.lower(), text
    for cmd in re.findall(r"`medlake ([a-z-]+(?: [a-z-]+)?)", text):  # every command named is a real one
        assert cmd.split()[0] in {"init", "quality", "trace", "transform", "map", "empi", "vocab", "quarantine", "cdm"}


def test_a_site_check_type_without_a_step_has_none():
    assert report.next_step({"check_name": "site_rule", "check_id": "x", "cdm_table": "t", "cdm_field": None}) is None


@pytest.mark.parametrize("share, shown", [(0, "0.00%"), (1 / 26594, "0.00376%"), (1e-9, "0.0000001%"),
                                          (0.0001, "0.01%"), (0.1538, "15.38%"), (1 / 3, "33.33%"),
                                          (1 - 1e-5, "99.999%"), (1, "100.00%"), (None, "")])
def test_a_share_reads_as_what_it_is_a_tiny_one_never_as_0_percent(share, shown):
    assert report.percent(share) == shown


def check(check_id, status, name="isForeignKey", severity="fatal", violated=None, of=None):
    """A check's result as results.json has it, with the fields the report reads."""
    return {"check_id": check_id, "check_name": name, "check_level": "FIELD", "status": status,
            "category": "Conformance", "subcategory": "Relational", "context": "Verification", "severity": severity,
            "cdm_table": "measurement", "cdm_field": check_id, "concept_id": None, "unit_concept_id": None,
            "num_violated_rows": violated, "num_denominator_rows": of,
            "pct_violated_rows": violated / of if of else None, "threshold": 0, "description": "a rule",
            "examples": [], "error": "Conversion Error: '20220822'" if status == "error" else None}


def render(results, since=None, history=()):
    """The report of a run with these results (its counts from them), compared with `since` (since_last_run), after
    the runs of `history` (their run.json)."""
    count = {s: sum(r["status"] == s for r in results) for s in ("passed", "failed", "error", "not_applicable")}
    rate = count["passed"] / (count["passed"] + count["failed"] + count["error"])
    counts = {"passed": count["passed"], "failed": count["failed"], "errors": count["error"],
              "not_applicable": count["not_applicable"], "pass_rate": rate}
    summary = {"run_id": "20261207T053720226244Z", "started": "2026-12-07T05:37:20", "engine": "duckdb",
               "store": "duckdb:s.duckdb", "cdm_version": "5.4", "queries": 3, "seconds": 0.5, "rechecked_tables": [],
               "reused_tables": [], **counts, "by_category": {"Conformance": counts},
               "by_table": {"measurement": counts}, "since_last_run": since}
    return report.render(SimpleNamespace(summary=summary, results=results), [*history, summary])


def test_new_errors_are_said_beside_new_failures_and_marked_new():
    results = [check("provider_id", "failed", violated=1, of=26594), check("start_date", "error", "plausibleAfterBirth",
               "characterization"), check("unit", "passed")]
    html = render(results, {"run_id": "20261206T010000000000Z", "new_failures": [], "new_errors": ["start_date"],
                            "fixed": []})
    assert ("since run 20261206T010000000000Z: 0 new failure(s), 1 new error(s) (marked <span class=new>new</span>), "
            "0 fixed") in html
    errors = html.split("Checks that could not run (1)")[1].split("Failed checks")[0]
    assert errors.count("<span class=new>new</span>") == 1 and "plausibleAfterBirth" in errors
    assert html.count("<span class=new>new</span>") == 3  # the since line, the errors' table, the table of all checks
    failed = html.split("Failed checks (1)")[1].split("A check's query")[0]
    assert "class=new" not in failed and "0.00376%" in failed and "severity <b>fatal</b>" in failed
    assert "(1/3)" in html  # the category's passed of passed + failed + errors


def test_nothing_new_shows_no_new_mark():
    html = render([check("provider_id", "failed", violated=1, of=2), check("unit", "passed")],
                  {"run_id": "20261206T010000000000Z", "new_failures": [], "new_errors": [], "fixed": []})
    assert "0 new failure(s), 0 new error(s), 0 fixed" in html and "class=new" not in html


def test_checks_that_could_not_run_come_before_the_failures_and_are_counted_by_type():
    results = [check(f"f{i}", "failed", violated=1, of=10) for i in range(3)] + [
        check("e1", "error"), check("e2", "error", "plausibleAfterBirth"), *[check(f"p{i}", "passed") for i in range(1200)]]
    html = render(results)
    assert html.index("<h2 id='errors'>Checks that could not run (2)</h2>") < html.index("<h2 id='failed'>Failed checks")
    assert "<a class='card' href='#errors'><div class='big error'>2</div>" in html
    assert "<div class='big passed'>1,200</div>" in html
    types = re.findall(r"<tr><td><b>(\w+)</b>.*?<td class='num failed'>(\d+)</td><td class='num error'>(\d*)</td>",
                       html.split("id='types'")[1].split("</table>")[0].replace("<wbr>", ""))
    assert types == [("isForeignKey", "3", "1"), ("plausibleAfterBirth", "0", "1")]


def test_a_feeds_ongoing_incident_ranks_before_older_failures_and_its_counts_are_days():
    """A feed missing yesterday ranks first among the failures that are not fatal, though its share of the source's
    history (1 of 40 days) is the smallest: a retired feed (21 of 42) and a table's 30% came before it. The
    report and the CLI say days for a feed check (it said rows). Review-feeds F12."""
    def feed(name, src, marks, violated, of):
        r = check(f"source_{name.lower()}_landing_{src}", "failed", name, "feed", violated, of)
        return r | {"data_source": src, "cdm_table": "landing", "cdm_field": src, "daily_marks": marks,
                    "daily_counts": [5] * len(marks), "daily_from": "2026-10-26"}
    results = [check("value", "failed", "plausibleValueHigh", "plausibility", 3, 10),
               feed("feedTimeliness", "retired", "x" * 21 + "." * 21, 21, 42),
               feed("feedVolume", "retired", "x" * 21 + "." * 21, 0, 21) | {"status": "passed"},
               feed("feedTimeliness", "lis-b", "." * 39 + "x-~", 1, 40),
               feed("feedVolume", "lis-b", "." * 39 + "x-~", 0, 39) | {"status": "passed"},
               check("person_id", "failed", violated=1, of=100)]
    assert [r["check_id"] for r in report.failed_first(results)] == [
        "person_id", "source_feedtimeliness_landing_lis-b", "source_feedtimeliness_landing_retired", "value"]
    assert report.ongoing(results) == {"lis-b"}
    assert (report.counted(results[3]), report.counted(results[0]), report.counted(results[5], 1)) == (
        "1 day", "3 rows", "1 row")
    html = render(results)
    assert '<td class="num">1 day</td><td class="num">40 days</td>' in html
    assert '<td class="num">3</td><td class="num">10</td>' in html
    assert re.search(r"<b>feed<wbr>Timeliness</b>.*?<td class='num'>22 days</td>", html)


def test_a_feed_silent_up_to_its_last_day_is_said_first():
    """`quality run` says the sources silent now (their last judged days missing), apart from the failed checks
    ranked by their share of the source's history, where an old outage or a retired feed came first."""
    def feed(src, marks, counts):
        return {"check_name": "feedVolume", "data_source": src, "daily_from": "2026-12-01", "daily_marks": marks,
                "daily_counts": counts}
    results = [feed("lis-b", "..x.xx-~", [5, 6, 0, 4, 0, 0, 0, 0]),  # silent since the 4th (a day off between)
               feed("lis-a", "..x....~", [5, 6, 0, 4, 5, 5, 5, 2]),  # an old missing day: sending now
               feed("adt", "....xx~", [3, 3, 3, 3, 0, 0, 2]),        # silent two days, back today
               feed("rx", "xx~", [0, 0, 0])]                         # nothing in the chart's days
    assert report.silent_now(results) == ["lis-b: nothing since 2026-12-04 (2 day(s) missing)",
                                          "rx: nothing since before 2026-12-01 (2 day(s) missing)"]


def test_a_table_emptied_since_the_last_run_is_said_at_the_top_not_read_as_fixed():
    """Review-report #1: an ETL emptied drug_exposure; its checks, failed then, are not applicable now, so the pass
    rate rose and the failures fell. The report says which table, that its checks are not applicable now and that the
    rise is no fix, beside the cards and on the since line, and the fixed list says they are not among its own."""
    def empty(cid):
        return check(cid, "not_applicable") | {"cdm_table": "drug_exposure",
                                               "not_applicable_reason": "table drug_exposure empty"}
    results = [empty("drug_a"), empty("drug_b"), check("provider_id", "failed", violated=1, of=2),
               check("unit", "passed"), check("visit_date", "passed")]
    before = {"run_id": "20261206T010000000000Z", "pass_rate": 0.5, "by_table": {"drug_exposure": {
        "passed": 0, "failed": 2, "errors": 0, "not_applicable": 0, "pass_rate": 0.0}}}
    since = {"run_id": "20261206T010000000000Z", "new_failures": [], "new_errors": [], "fixed": ["visit_date"],
             "emptied": ["drug_exposure"]}
    html = render(results, since, history=[before])
    top = html.split("<h2>")[0]  # the header, warnings, cards and since line: before the first section
    warning = re.search(r"<p class='warning' id='emptied'>(.*?)</p>", top).group(1)
    assert ("table(s) emptied since run 20261206T010000000000Z: drug_exposure (rows then, none now): its 2 checks "
            "that read rows are not applicable now (its failed checks: 2 then, 0 now), so the pass rate rising and "
            "the failures falling are not a fix") in warning
    assert "1 fixed; table(s) emptied since: drug_exposure (its checks not applicable now, not fixed)" in top
    fixed = html.split("Fixed since run")[1].split("</table>")[0]
    assert "not counted as fixed" in fixed and "drug_exposure" in fixed
    # its point in the trend is hollow, titled with the table
    assert re.search(r'<circle [^>]*fill="#fff"[^>]*><title>20261207T053720226244Z, all checks: [^<]*; table\(s\) '
                     r'emptied since the run before: drug_exposure</title>', html)


def test_nothing_emptied_no_emptied_warning():
    html = render([check("unit", "passed")], {"run_id": "20261206T010000000000Z", "new_failures": [],
                                              "new_errors": [], "fixed": [], "emptied": []})
    assert "emptied" not in html


def test_the_reports_commands_work_pasted_in_another_folder(tmp_path):
    """Review-report #4: the step under a failure and the hint under the failures name the run's folder and store,
    so pasted into a shell anywhere (no medlake.toml, no MEDLAKE_STORE) they list the violating row."""
    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    world(eng).execute(CO + "person_id = 99 WHERE condition_occurrence_id = 200")
    run = runner.run(eng, "5.4", tmp_path / "quality")
    eng.close()
    html = (run.dir / "report.html").read_text()
    fk = "field_isforeignkey_condition_occurrence_person_id"
    step = re.search(rf"<code>(medlake quality show {fk} [^<]*)</code>", html).group(1)
    hint = re.search(r"<p class='hint'>.*?<code>(medlake quality show CHECK_ID[^<]*)</code>", html).group(1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDLAKE_")} | {"COLUMNS": "200"}
    for command in (step, hint.replace("CHECK_ID", fk)):
        words = shlex.split(unescape(command))
        p = subprocess.run([sys.executable, "-m", "medlake.cli", *words[1:]], env=env, cwd=elsewhere,
                           capture_output=True, text=True)
        assert p.returncode == 0, (command, p.stderr)
        assert ": failed — 1 of 4 rows (25%)" in p.stdout
        assert [x.split("│")[1].strip() for x in p.stdout.splitlines() if x.startswith("│")] == ["200"], p.stdout


def test_a_check_type_that_only_stopped_with_errors_reads_not_measured_not_0_rows():
    """Review-report #8: a type whose checks could only stop with an error measured nothing; "0 rows" read as clean."""
    html = render([check("f1", "failed", violated=3, of=10), check("e1", "error", "plausibleAfterBirth"),
                   check("p1", "passed")])
    types = html.split("id='types'")[1].split("</table>")[0].replace("<wbr>", "")
    cells = {m[0]: m[1:] for m in re.findall(r"<tr><td><b>(\w+)</b>.*?<td class='num'>([^<]*)</td>"
                                             r"<td class='num'>([^<]*)</td></tr>", types)}
    assert cells == {"isForeignKey": ("3 rows", "30.00%"), "plausibleAfterBirth": ("not measured", "")}


def test_the_charts_values_reach_a_screen_reader():
    """Review-report #10: role=img hides an SVG's text; the bars' values are in their label, and the trend's runs
    are in a table under it (a <details>, also for print)."""
    before = {"run_id": "20261206T010000000000Z", "pass_rate": 0.5,
              "by_category": {"Conformance": {"pass_rate": 0.5}}}
    html = render([check("f1", "failed", violated=3, of=10), check("p1", "passed")], history=[before])
    assert '<svg width="760" height="32" viewBox="0 0 760 32" role="img" aria-label="pass rates: Conformance 50.00% ' \
           '(1/2)">' in html
    table = html.split("<details class=trend>")[1].split("</details>")[0]
    rows = re.findall(r"<tr><td>(.*?)</td><td class='num'>(.*?)</td><td class='num'>(.*?)</td></tr>", table)
    assert rows == [("20261206T010000000000Z", "50.00%", "50.00%"), ("20261207T053720226244Z", "50.00%", "50.00%")]


def test_the_trends_axis_says_the_year_and_its_first_labels_do_not_run_into_each_other():
    """review-report #9: 400 nightly runs over 13 months were labelled 12-20 02:00 … 01-23 02:00 (no year), and the
    first two labels overlapped."""
    from medlake.quality.report import _trend, _when

    assert _when(["20261207T053310567293Z", "20261207T063310567293Z"]) == ["2026-12-07 05:33:10", "06:33:10"]
    assert _when(["20261207T053310567293Z", "20261209T063310567293Z"]) == ["2026-12-07 05:33", "12-09 06:33"]
    assert _when(["20251220T020000000000Z", "20270123T020000000000Z"]) == ["2025-12-20", "2027-01-23"]
    start = dt.datetime(2025, 12, 20, 2)
    runs = [{"run_id": (start + dt.timedelta(days=i)).strftime("%Y%m%dT%H%M%S000000Z"), "pass_rate": 0.9,
             "by_category": {}} for i in range(400)]
    svg = _trend(runs)
    labels = re.findall(r'<text x="([\d.]+)" y="186" font-size="11" text-anchor="(\w+)">([^<]+)</text>', svg)
    assert labels[0][2] == "2025-12-20" and labels[-1][2] == "2027-01-23"
    spans = [(float(x) - (0 if a == "start" else 6.5 * len(t) if a == "end" else 3.25 * len(t)),
              float(x) + (6.5 * len(t) if a == "start" else 0 if a == "end" else 3.25 * len(t))) for x, a, t in labels]
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])), labels  # (about 6.5 px a character at 11 px)
    assert "runs in order, by their start (UTC)" in svg
