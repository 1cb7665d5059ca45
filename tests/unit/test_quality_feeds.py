"""The feed (source-level) checks against the incidents of a feed engineer's review (/work/notes/review-feeds.md):
a site-wide silence, records rather than files, low-volume noise, retired and weekday feeds, a sender's clock
ahead, a mapping lost on new data, examples of records without a key, a site's [source_fields] that drops
medlake's rules."""
from __future__ import annotations

import datetime as dt
import random
import sqlite3
import statistics

import pytest

from medlake.engines import open_engine
from medlake.quality import site
from medlake.quality.feeds import feed_results, feed_run, run_sources
from medlake.quality.runner import result

TODAY = dt.date(2026, 12, 7)  # a Monday


def _days(n: int, end: dt.date, count=20) -> dict[dt.date, int]:
    """`n` days to `end`, `count` a day."""
    return {end - dt.timedelta(days=i): count for i in range(n)}


def _by(results: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["check_name"], r.get("data_source")): r for r in results}


def _warnings(results: list[dict]) -> list[str]:
    return [w for r in results for w in r.get("warnings") or ()]


# -- F1: every feed silent at once ---------------------------------------------------------------------------------

def test_a_site_wide_silence_is_missing_days_of_every_source_and_a_warning():
    """Nothing from any source for the 3 days before today (the interface engine down): each source's 3 days are
    missing, and a warning names the last day anything arrived. Before, the span ended at that last day: every
    feed passed, no warning."""
    last = TODAY - dt.timedelta(days=4)
    per = {"lis": _days(30, last), "adt": _days(30, last, 50)}
    got = feed_results(per, "landing", 0.5, result, today=TODAY)
    t = {src: (r["num_violated_rows"], r["examples"]) for (c, src), r in _by(got).items() if c == "feedTimeliness"}
    silent = [str(TODAY - dt.timedelta(days=d)) for d in (1, 2, 3)]  # the newest first
    assert t == {"lis": (3, silent), "adt": (3, silent)}
    assert _by(got)["feedVolume", "lis"]["daily_marks"].endswith(".xxx")
    assert _warnings(got) == [f"landing: nothing received from any source since {last} (4 days ago): the interface "
                              "engine, the listener or the ingest stopped? 2 source(s) are missing every day since "
                              "(adt, lis)"]


def test_a_store_that_stopped_receiving_long_ago_is_judged_to_its_last_day_with_a_warning():
    """A replay of history (or an archive) that ended 60 days ago: its feeds are judged to that day, not missing every
    day since for ever; the warning says so once."""
    last = TODAY - dt.timedelta(days=60)
    got = feed_results({"lis": _days(30, last)}, "landing", 0.5, result, today=TODAY)
    assert _by(got)["feedTimeliness", "lis"]["num_violated_rows"] == 0
    assert _warnings(got) == [f"landing: nothing received from any source since {last} (60 days ago): the feed checks "
                              "judge each source up to that day only (a store that no longer receives: an archive or "
                              "a replay of history); if it should be receiving, every feed is down"]


def test_a_weekend_with_only_weekday_feeds_silent_is_no_outage():
    """Every source sends Monday to Friday: on Monday nothing since Friday is their habit, not an outage."""
    fri = TODAY - dt.timedelta(days=3)
    per = {"clinic": {d: 20 for d in _days(40, fri) if d.weekday() < 5}}
    got = feed_results(per, "landing", 0.5, result, today=TODAY)
    assert _by(got)["feedTimeliness", "clinic"]["num_violated_rows"] == 0 and _warnings(got) == []


# -- F10: a sender's clock ahead ---------------------------------------------------------------------------------

def test_receipts_dated_after_today_are_the_senders_clock_not_the_day_in_progress():
    """A site's interface-engine log whose clock is a year ahead: not 'the day in progress, judged from tomorrow'
    for ever, but said; a source with its last two days ahead is judged on its others, its chart not drawn to
    next year. A receipt dated tomorrow is a clock a few hours ahead: the day in progress."""
    ahead = {d + dt.timedelta(days=365): 20 for d in _days(10, TODAY)}
    mixed = _days(20, TODAY - dt.timedelta(days=1)) | {TODAY + dt.timedelta(days=300): 5}
    got = feed_results({"eng-future": ahead, "lis": mixed, "tz": {TODAY + dt.timedelta(days=1): 3}},
                       "interface_message_log", 0.5, result, today=TODAY)
    future = _by(got)["feedTimeliness", "eng-future"]
    assert future["status"] == "not_applicable"
    assert future["not_applicable_reason"].startswith("eng-future has sent only receipts dated after today "
                                                      "(2027-11-28 to 2027-12-07): the sender's clock?")
    lis = _by(got)["feedVolume", "lis"]
    assert (lis["status"], len(lis["daily_counts"]), _by(got)["feedTimeliness", "lis"]["num_violated_rows"]) == \
        ("passed", 20, 0)
    assert "day in progress" in _by(got)["feedTimeliness", "tz"]["not_applicable_reason"]
    assert _warnings(got) == [
        "200 receipt(s) of eng-future in interface_message_log are dated after today, on 10 day(s) up to 2027-12-07 "
        "(365 days ahead): the sender's clock, or the interface engine's? They are not judged",
        "5 receipt(s) of lis in interface_message_log are dated after today, on 1 day(s) up to 2027-10-03 (300 days "
        "ahead): the sender's clock, or the interface engine's? They are not judged"]


# -- F5: low-volume noise ----------------------------------------------------------------------------------------

def test_a_low_volume_feed_is_not_a_drop_by_chance_but_a_real_drop_is():
    """1 to 3 messages a day at random is noise (1 against a median of 3 comes by chance one day in five); 6 against
    ~20 does not. Before, the small feed failed feedVolume on 1-message days."""
    rnd = random.Random(7)
    days = sorted(_days(40, TODAY - dt.timedelta(days=1)))
    per = {"small": {d: rnd.randint(1, 3) for d in days},
           "lis": {d: 6 if d == days[20] else 18 + rnd.randint(0, 4) for d in days}}
    assert 1 in per["small"].values()
    got = _by(feed_results(per, "landing", 0.5, result, today=TODAY))
    assert (got["feedVolume", "small"]["status"], got["feedVolume", "small"]["num_violated_rows"]) == ("passed", 0)
    assert got["feedVolume", "lis"]["examples"] == [days[20].isoformat()]


def test_a_burst_is_marked_and_said_but_not_a_failure_and_chance_is_no_burst():
    """F7: lis-a sent 60 records one Sunday against its usual ~14 (a resend storm, a replay after an outage, a
    message loop): marked `^` in its series, listed with its usual in `bursts`, drawn and said in `quality show`'s
    text, not a failure (feedVolume fails on drops: a backlog after an outage is no defect). A 1-to-3 a day feed's 3
    is chance, not a burst."""
    from medlake.quality.report import _feeds, daily_text

    rnd = random.Random(3)
    days = sorted(_days(40, TODAY - dt.timedelta(days=1)))
    burst = days[30]
    per = {"lis-a": {d: 60 if d == burst else 12 + rnd.randint(0, 4) for d in days},
           "small": {d: rnd.randint(1, 3) for d in days},
           "resent": {d: 5 if d == burst else 0 for d in days}}  # re-sent files only, then a first new record
    got = _by(feed_results(per, "landing", 0.5, result, today=TODAY))
    assert got["feedVolume", "resent"]["bursts"] == []  # against a usual of nothing: no ratio to judge by
    r = got["feedVolume", "lis-a"]
    assert (r["status"], r["num_violated_rows"]) == ("passed", 0)
    usual = statistics.median(per["lis-a"][d] for d in days[23:30])  # its 7 days before
    assert r["bursts"] == [f"{burst.isoformat()}: 60 against a usual {usual:g}"]
    start = dt.date.fromisoformat(r["daily_from"])
    assert [start + dt.timedelta(days=i) for i, m in enumerate(r["daily_marks"]) if m == "^"] == [burst]
    assert got["feedVolume", "small"]["bursts"] == [] and "^" not in got["feedVolume", "small"]["daily_marks"]
    text = daily_text(r)
    assert "^: a burst" in text[0] and text[2].strip() == "^" and text[3].startswith("bursts (more than 3× the usual")
    html = "".join(_feeds([r]))
    assert f"{burst.isoformat()}: 60 (a burst" in html and "1 burst(s)" in html


# -- F6, F11: a retired feed, a planned start, declared weekdays ------------------------------------------------

def test_a_sources_declared_span_and_weekdays():
    """[feed.sources.NAME]: `until` ends a retired feed's span (it was missing every day since); `from` starts a
    feed's span at its go-live (test messages before are not judged; a go-live that did not happen is missing days);
    `weekdays` a new clinic feed's cadence from its first day (its weekends were missing for three weeks). A go-live
    from which nothing at all came is missing every day since (it was not applicable: review-docs #4); without a
    `from`, or one not over yet, a source that never sent is not applicable, saying why."""
    yesterday = TODAY - dt.timedelta(days=1)
    retired_on = TODAY - dt.timedelta(days=22)
    clinic = {d: 25 for d in _days(16, yesterday) if d.weekday() < 5}
    per = {"retired": _days(20, retired_on), "clinic": clinic, "lis": _days(40, yesterday),
           "new": {TODAY - dt.timedelta(days=30): 2, TODAY - dt.timedelta(days=29): 1}}  # test messages
    text = ("[feed.sources.retired]\nuntil = %s\n[feed.sources.clinic]\nweekdays = ['Mon', 'Tue', 'Wed', 'Thu', "
            "'Friday']\n[feed.sources.new]\nfrom = '%s'\n[feed.sources.never]\nfrom = %s\n[feed.sources.soon]\n"
            "from = %s\n[feed.sources.named]\nweekdays = ['Mon']\n" % (
                retired_on, TODAY - dt.timedelta(days=5), TODAY - dt.timedelta(days=3), TODAY))
    plain = _by(feed_run(per, "landing", site.feed_config("[feed]\ndrop = 0.5"), result, TODAY))
    got = _by(feed_run(per, "landing", site.feed_config(text), result, TODAY))

    def t(g, src):
        return g["feedTimeliness", src]["num_violated_rows"], g["feedTimeliness", src]["num_denominator_rows"]
    assert (t(plain, "retired"), t(got, "retired")) == ((22 - 1, 41), (0, 20))
    assert t(plain, "clinic")[0] == 4 and t(got, "clinic") == (0, 10)  # two weekends, 10 weekdays
    assert "Saturdays and Sundays: the site says it does not send on them" in got["feedTimeliness", "clinic"][
        "description"]
    assert t(got, "new") == (5, 5)  # from 5 days ago to yesterday: nothing came
    assert t(got, "never") == (3, 3) and got["feedTimeliness", "never"]["examples"] == [
        str(TODAY - dt.timedelta(days=n)) for n in (1, 2, 3)]
    assert got["feedVolume", "never"]["status"] == "not_applicable"
    assert got["feedTimeliness", "soon"]["not_applicable_reason"] == (
        f"soon has sent nothing to landing yet and goes live on {TODAY} ([feed.sources.soon] from): each day from "
        "then is judged once it is over")
    assert got["feedTimeliness", "named"]["not_applicable_reason"] == (
        "source named (named in [feed.sources]) sent nothing to landing; give its go-live ([feed.sources.named] from) "
        "to judge each day since")
    assert got["feedTimeliness", "lis"] == plain["feedTimeliness", "lis"]
    for text, message in (("[feed.sources.x]\nuntil = 'soon'", r"\[feed.sources.x\] until must be a date"),
                          ("[feed.sources.x]\nfrom = 2026-12-01\nuntil = 2026-11-01", "from 2026-12-01 is after until"),
                          ("[feed.sources.x]\nweekdays = ['Mon', 'Funday']", "weekdays must be a list of the days"),
                          ("[feed.sources.x]\nretired = true", "takes country, subdivision, holidays, "
                                                               "sends_on_holidays, from, until and weekdays")):
        with pytest.raises(ValueError, match=message):
            site.feed_config(text, "site.toml")


# -- the landing: records, not files (F3); examples of records without a key (F8) ---------------------------------

def _landing(tmp_path, receipts: list[tuple[int, str, dt.datetime, int]]):
    """A landing folder with `receipts` (seq, source, received at, duplicate)."""
    from medlake.landing import Landing

    Landing(tmp_path / "landing").close()
    db = sqlite3.connect(tmp_path / "landing" / "landing.sqlite")
    db.executemany("INSERT INTO receipt (seq, sha256, source, received_at, size, duplicate) VALUES (?, ?, ?, ?, 1, ?)",
                   [(seq, f"h{seq}", src, at.isoformat(), dup) for seq, src, at, dup in receipts])
    db.commit()
    db.close()
    return tmp_path / "landing"


def test_a_file_feeds_volume_is_its_records_and_a_resent_file_is_no_volume(tmp_path):
    """A pharmacy CSV export, one file a day of 40 rows: the day its file held 12 rows is a drop (it counted 1 file,
    as every day), and so is the day its file held the header only (it sent: not a missing day); the day it sent
    its file twice counts 40 rows, not 80; yesterday's file, landed but not staged yet, counts the feed's usual 40.
    Before, volume counted files, duplicates included."""
    today = dt.datetime.now(dt.timezone.utc).date()
    days = [today - dt.timedelta(days=i) for i in range(20, 0, -1)]
    rows = {d: 40 for d in days}
    rows[days[14]], rows[days[11]] = 12, 0
    receipts, log = [], []
    for seq, d in enumerate(days, start=1):
        receipts.append((seq, "rx", dt.datetime.combine(d, dt.time(6), dt.timezone.utc), 0))
        if d != days[-1]:  # yesterday's: not staged yet
            log.append(f"('rx', {seq}, {rows[d] - 1 if rows[d] else 0}, {1 if rows[d] else 0})")  # a row quarantined
    receipts.append((100, "rx", dt.datetime.combine(days[9], dt.time(7), dt.timezone.utc), 1))  # the file re-sent
    landing = _landing(tmp_path, receipts)
    eng = open_engine("duckdb::memory:")
    eng.execute("CREATE TABLE ingest_log (source VARCHAR, receipt_seq BIGINT, records BIGINT, quarantined BIGINT)")
    eng.execute("INSERT INTO ingest_log VALUES " + ", ".join(log))
    got = _by([r for r in run_sources(eng, result, landing) if r["check_name"].startswith("feed")])
    eng.close()
    vol = got["feedVolume", "rx"]
    assert (vol["status"], vol["examples"]) == ("failed", [days[14].isoformat(), days[11].isoformat()])
    assert vol["daily_counts"] == [rows[d] for d in days]
    assert got["feedTimeliness", "rx"]["num_violated_rows"] == 0


def test_records_missing_a_field_in_a_table_without_a_key_are_named_with_their_day(engine, tmp_path):
    """On DuckDB, PostgreSQL and Spark: stg_hl7_observation has no record key: its examples are the messages
    (control ids), each once however many observations it holds, the first received first, with the day the
    landing received them. Before: none."""
    landing = _landing(tmp_path, [(5, "lis-a", dt.datetime(2026, 12, 3, 10, tzinfo=dt.timezone.utc), 0),
                                  (7, "lis-a", dt.datetime(2026, 12, 4, 9, tzinfo=dt.timezone.utc), 0),
                                  (9, "lis-a", dt.datetime(2026, 12, 4, 11, tzinfo=dt.timezone.utc), 0)])
    eng = engine
    eng.execute("CREATE TABLE stg_hl7_observation (control_id VARCHAR, code VARCHAR, observation_time TIMESTAMP, "
                "value_type VARCHAR, value_number DOUBLE, source VARCHAR, receipt_seq BIGINT)")
    eng.execute("INSERT INTO stg_hl7_observation VALUES "
                "('M9', 'GLU', NULL, 'NM', 5.1, 'lis-a', 9), ('M9', 'NA', NULL, 'NM', 140, 'lis-a', 9), "
                "('M5', 'GLU', NULL, 'NM', 5.2, 'lis-a', 5), ('M5', 'K', NULL, 'NM', 4.1, 'lis-a', 5), "
                "('M5', 'NA', NULL, 'NM', 139, 'lis-a', 5), ('M7', 'GLU', TIMESTAMP '2026-12-04 08:00:00', 'NM', NULL, "
                "'lis-a', 7)")
    got = {(r["check_name"], r["cdm_field"]): r for r in run_sources(eng, result, landing)
           if r["cdm_table"] == "stg_hl7_observation"}
    late = got["sourceMandatoryCompleteness", "observation_time"]
    assert (late["num_violated_rows"], late["num_denominator_rows"]) == (5, 6)
    assert (late["examples"], late["example_field"]) == (
        ["M5 (received 2026-12-03)", "M9 (received 2026-12-04)"], "control_id")
    assert got["sourceMandatoryCompleteness", "value_number"]["examples"] == ["M7 (received 2026-12-04)"]


# -- F4: a mapping lost on new data ------------------------------------------------------------------------------

def test_a_code_unmapped_in_the_last_days_is_seen_though_the_whole_history_dilutes_it(engine, tmp_path):
    """A LIS renames its creatinine code (C1016, new, 12 rows) and glucose loses its mapping (3 rows to concept 0):
    1.9% of the source's whole history, under sourceMappingCoverage's 5%, but sourceNewUnmappedCodes counts them of
    the rows received in the last 7 days; an old unmapped code (Q) is not new. A source whose rows are all recent,
    or mostly, is judged by sourceMappingCoverage alone. Before, nothing failed. On DuckDB, PostgreSQL and Spark."""
    from medlake.cdm import store

    today = dt.datetime.now(dt.timezone.utc).date()
    old, new = (dt.datetime.combine(today - dt.timedelta(days=n), dt.time(10), dt.timezone.utc) for n in (30, 2))
    landing = _landing(tmp_path, [(1, "lis", old, 0), (2, "lis", new, 0), (3, "pacs", new, 0)])
    eng = engine
    store.init(eng, "5.4")
    eng.execute("INSERT INTO concept VALUES (3016723, 'Creatinine', 'Measurement', 'LOINC', 'Lab Test', 'S', "
                "'2160-0', DATE '1970-01-01', DATE '2099-12-31', NULL), (3004501, 'Glucose', 'Measurement', 'LOINC', "
                "'Lab Test', 'S', '2345-7', DATE '1970-01-01', DATE '2099-12-31', NULL)")
    eng.execute("CREATE TABLE cdm_lineage (cdm_table VARCHAR, row_id BIGINT, source VARCHAR, code_system VARCHAR, "
                "code VARCHAR, concept_id INTEGER, receipt_seq BIGINT)")
    rows = ([("lis", "1016", 3016723, 1)] * 1000 + [("lis", "GLU", 3004501, 1)] * 50 + [("lis", "Q", 0, 1)] * 5
            + [("lis", "1016", 3016723, 2)] * 20 + [("lis", "C1016", 0, 2)] * 12 + [("lis", "GLU", 0, 2)] * 3
            + [("lis", "Q", 0, 2)] + [("pacs", "XR", 0, 3)] * 4 + [("ris", "CT", 0, 1)] + [("ris", "MR", 0, 2)] * 2)
    eng.execute("INSERT INTO cdm_lineage VALUES " + ", ".join(
        f"('measurement', {i}, '{s}', 'H1LIS', '{c}', {cid}, {seq})" for i, (s, c, cid, seq) in enumerate(rows)))
    got = {(r["check_name"], r["data_source"]): r for r in run_sources(eng, result, landing)
           if "Mapping" in r["check_name"] or "Unmapped" in r["check_name"]}
    whole, recent = got["sourceMappingCoverage", "lis"], got["sourceNewUnmappedCodes", "lis"]
    assert (whole["status"], whole["num_violated_rows"], whole["num_denominator_rows"]) == ("passed", 21, 1091)
    assert (recent["status"], recent["num_violated_rows"], recent["num_denominator_rows"]) == ("failed", 15, 36)
    assert recent["examples"] == ["H1LIS|C1016 (12, new)", "H1LIS|GLU (3, mapped before)"]
    assert recent["check_id"] == "source_sourcenewunmappedcodes_lis_measurement"
    assert got["sourceNewUnmappedCodes", "pacs"]["status"] == "not_applicable"
    assert "every row of measurement from pacs is from its receipts of the last 7 days" in got[
        "sourceNewUnmappedCodes", "pacs"]["not_applicable_reason"]
    assert got["sourceMappingCoverage", "pacs"]["status"] == "failed"
    young = got["sourceNewUnmappedCodes", "ris"]  # 1 row before the 7 days, 2 in them: too young to tell
    assert young["status"] == "not_applicable" and "too young to tell a new code" in young["not_applicable_reason"]


# -- F9: a sender's or a device's clock ahead ---------------------------------------------------------------------

def test_rows_dated_after_their_receipt_are_a_sources_future_dates(engine, tmp_path):
    """An analyser's clock a year ahead, a result dated two days after it was received, a row of no receipt dated
    after tomorrow: sourceFutureDates of the source, each row named with its date and receipt day; a day later is
    the local day (passes), and a visit the source spoke of again after it began (a pre-admit, then the admission:
    its lineage holds the record's latest version) is judged by the admission's message. Before, only DQD's
    table-wide plausibleValueHigh (1%) saw dates after today, no source named, and a skew since past not at all. On
    DuckDB, PostgreSQL and Spark."""
    from medlake.cdm import store

    today = dt.datetime.now(dt.timezone.utc).date()
    day = lambda n: today + dt.timedelta(days=n)  # noqa: E731
    at = lambda n: dt.datetime.combine(day(n), dt.time(10), dt.timezone.utc)  # noqa: E731
    landing = _landing(tmp_path, [(1, "lis", at(-10), 0), (2, "lis", at(-5), 0), (3, "lis", at(-1), 0),
                                  (4, "adt", at(-5), 0), (5, "adt", at(-2), 0)])
    eng = engine
    store.init(eng, "5.4")
    eng.execute("CREATE TABLE cdm_lineage (cdm_table VARCHAR, row_id BIGINT, source VARCHAR, receipt_seq BIGINT, "
                "code_system VARCHAR, code VARCHAR, concept_id INTEGER)")
    measured = {1: (-10, 1), 2: (-9, 1), 3: (-8, 1), 4: (365, 2), 5: (2, None), 6: (0, 3)}
    eng.execute("INSERT INTO measurement (measurement_id, person_id, measurement_concept_id, measurement_date, "
                "measurement_type_concept_id) VALUES " + ", ".join(
                    f"({i}, 1, 0, DATE '{day(n)}', 32817)" for i, (n, _) in measured.items()))
    eng.execute("INSERT INTO visit_occurrence (visit_occurrence_id, person_id, visit_concept_id, visit_start_date, "
                f"visit_end_date, visit_type_concept_id) VALUES (10, 1, 9201, DATE '{day(-3)}', DATE '{day(-1)}', "
                f"32817), (11, 1, 9201, DATE '{day(-3)}', DATE '{day(-1)}', 32817)")
    eng.execute("INSERT INTO cdm_lineage VALUES " + ", ".join(
        [f"('measurement', {i}, 'lis', {seq if seq else 'NULL'}, NULL, NULL, NULL)"
         for i, (_, seq) in measured.items()]
        + [f"('visit_occurrence', {i}, 'adt', {seq}, NULL, NULL, NULL)" for i, seq in ((10, 5), (11, 4))]))
    got = {(r["data_source"], r["cdm_table"]): r for r in run_sources(eng, result, landing, today=today)
           if r["check_name"] == "sourceFutureDates"}
    lis, adt = got["lis", "measurement"], got["adt", "visit_occurrence"]
    assert (lis["status"], lis["num_violated_rows"], lis["num_denominator_rows"]) == ("failed", 3, 6)
    assert (lis["examples"], lis["example_field"], lis["cdm_field"]) == (
        [f"4 ({day(365)}, received {day(-5)})", f"5 ({day(2)})", f"3 ({day(-8)}, received {day(-10)})"],
        "measurement_id", "measurement_date")
    assert (adt["num_violated_rows"], adt["num_denominator_rows"], adt["examples"]) == (
        1, 2, [f"11 ({day(-3)}, received {day(-5)})"])
    assert lis["check_id"] == "source_sourcefuturedates_lis_measurement_measurement_date"
    # without the landing, a row is late only when dated after tomorrow
    alone = {(r["data_source"], r["cdm_table"]): r for r in run_sources(eng, result, tmp_path / "elsewhere",
                                                                        today=today)
             if r["check_name"] == "sourceFutureDates"}
    assert (alone["lis", "measurement"]["num_violated_rows"], alone["adt", "visit_occurrence"]["status"]) == (
        2, "passed")


# -- test traffic on the production interface -----------------------------------------------------------------

def test_hl7_messages_marked_for_training_or_debugging_are_a_sources_test_messages(engine, tmp_path):
    """MSH-11 T (training) and D (debugging) messages staged with the patient data: sourceTestMessages of their
    source, named by control id, processing id and day received, the first received first; P and an empty MSH-11
    are production. On DuckDB, PostgreSQL and Spark."""
    landing = _landing(tmp_path, [(1, "adt", dt.datetime(2026, 12, 3, 10, tzinfo=dt.timezone.utc), 0),
                                  (2, "adt", dt.datetime(2026, 12, 4, 10, tzinfo=dt.timezone.utc), 0)])
    engine.execute("CREATE TABLE stg_hl7_message (control_id VARCHAR, message_type VARCHAR, processing_id VARCHAR, "
                   "source VARCHAR, receipt_seq BIGINT)")
    engine.execute("INSERT INTO stg_hl7_message VALUES ('A3', 'ADT^A01', 'T', 'adt', 2), ('A1', 'ADT^A01', 'P', "
                   "'adt', 1), ('A2', 'ADT^A08', 'd', 'adt', 1), ('A4', 'ADT^A01', NULL, 'adt', 2), "
                   "('L1', 'ORU^R01', 'P', 'lis', 3)")
    got = {r["data_source"]: r for r in run_sources(engine, result, landing)
           if r["check_name"] == "sourceTestMessages"}
    adt, lis = got["adt"], got["lis"]
    assert (adt["status"], adt["num_violated_rows"], adt["num_denominator_rows"]) == ("failed", 2, 4)
    assert (adt["examples"], adt["example_field"], adt["cdm_field"]) == (
        ["A2 (d, received 2026-12-03)", "A3 (T, received 2026-12-04)"], "control_id", "processing_id")
    assert (lis["status"], lis["num_violated_rows"], lis["examples"]) == ("passed", 0, [])


# -- F13: a site's [source_fields] that drops medlake's rules, or names a table that is not there -----------------

def test_a_sites_source_fields_say_what_they_stop_checking_and_a_misspelt_table(tmp_path):
    """A site that adds `units` writes mandatory = ["code", "units"] and a [when] for it: medlake's observation_time
    and its value_number rule are no longer checked, said in a warning; a misspelt table gets a did-you-mean.
    Before, both went unsaid (the failing observation_time check vanished from the run)."""
    eng = open_engine("duckdb::memory:")
    eng.execute("CREATE TABLE stg_hl7_observation (control_id VARCHAR, code VARCHAR, observation_time TIMESTAMP, "
                "value_type VARCHAR, value_number DOUBLE, units VARCHAR, source VARCHAR)")
    eng.execute("INSERT INTO stg_hl7_observation VALUES ('M1', 'GLU', NULL, 'NM', 5.0, NULL, 'lis')")
    fields = site.fields_config("[source_fields.stg_hl7_observation]\nmandatory = ['code', 'units']\n"
                                "[source_fields.stg_hl7_observation.when]\nunits = \"value_type = 'NM'\"\n"
                                "[source_fields.stg_hl7_observaton]\nmandatory = ['code']\n"
                                "[source_fields.stg_hl7_message]\nmandatory = ['control_id', 'message_type', "
                                "'message_time', 'sending_facility', 'receiving_facility']\n")
    got = run_sources(eng, result, tmp_path / "none", fields=fields)
    eng.close()
    assert _warnings(got) == [
        "[source_fields.stg_hl7_observation] replaces medlake's rules for stg_hl7_observation: observation_time, "
        "value_number (when value_type = 'NM') no longer checked (name them in its mandatory list or its [when] "
        "table to keep them)",
        "[source_fields.stg_hl7_observaton] not checked: stg_hl7_observaton is not in the store (did you mean "
        "stg_hl7_observation?)"]
    typo = next(r for r in got if r["check_id"] == "source_sourcemandatorycompleteness_site_stg_hl7_observaton")
    assert typo["not_applicable_reason"].endswith("did you mean stg_hl7_observation?")


# -- review-src #1: one failing query stops no other source-level check --------------------------------------------

def test_a_when_condition_the_database_refuses_is_its_fields_error_and_every_other_check_runs(tmp_path):
    """A site's [source_fields.stg_csv_lab.when] unit = "result_time > 'notadate'" parses but fails in the database:
    that field's check is an `error` naming the condition, the database's words and what to fix; the table's other
    fields, its duplicates, another staging table and the feed checks are counted. Before, run_sources raised and
    the runner reported one mislabelled sourceMappingCoverage error in place of every source-level check."""
    yesterday = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    landing = _landing(tmp_path, [(i, "lab", dt.datetime.combine(yesterday - dt.timedelta(days=i), dt.time(9),
                                                                  dt.timezone.utc), 0) for i in range(1, 6)])
    eng = open_engine("duckdb::memory:")
    eng.execute("CREATE TABLE stg_csv_lab (source VARCHAR, order_id VARCHAR, result_time TIMESTAMP, unit VARCHAR)")
    eng.execute("INSERT INTO stg_csv_lab VALUES ('lab', 'O1', NULL, NULL), ('lab', 'O1', NULL, 'mg')")
    eng.execute("CREATE TABLE stg_hl7_observation (control_id VARCHAR, code VARCHAR, observation_time TIMESTAMP, "
                "value_type VARCHAR, value_number DOUBLE, source VARCHAR)")
    eng.execute("INSERT INTO stg_hl7_observation VALUES ('M1', NULL, NULL, 'NM', 5.0, 'lis')")
    fields = site.fields_config("[source_fields.stg_csv_lab]\nkey = ['order_id']\n"
                                "mandatory = ['order_id', 'result_time']\n[source_fields.stg_csv_lab.when]\n"
                                "unit = \"result_time > 'notadate'\"\n")
    got = {r["check_id"]: r for r in run_sources(eng, result, landing, fields=fields)}
    eng.close()
    bad = got["source_sourcemandatorycompleteness_stg_csv_lab_unit"]
    assert bad["status"] == "error"
    assert bad["error"].startswith("the condition of unit ([source_fields.stg_csv_lab.when] unit = \"result_time > "
                                   "'notadate'\") fails in the database: Conversion Error: invalid timestamp field")
    assert bad["error"].endswith("fix it (a SQL condition on one row of stg_csv_lab) in the site checks file")
    counted = {k: (r["status"], r["num_violated_rows"]) for k, r in got.items() if r["status"] != "error"}
    assert counted["source_sourcemandatorycompleteness_lab_stg_csv_lab_result_time"] == ("failed", 2)
    assert counted["source_sourceduplicaterecords_lab_stg_csv_lab_order_id"] == ("failed", 1)
    assert counted["source_sourcemandatorycompleteness_lis_stg_hl7_observation_code"] == ("failed", 1)
    assert {"source_feedtimeliness_landing_lab", "source_feedvolume_landing_lab"} <= set(got)
    assert [k for k, r in got.items() if r["status"] == "error"] == [bad["check_id"]]


# -- review-src #9, #10, #11: rows a feed check cannot read are counted and said, not a crash ------------------------

def test_a_feed_tables_rows_without_a_source_or_a_readable_time_are_said_and_the_rest_judged():
    """A site's message log with one row of no source and one of a time not in ISO form (07/12/2026 10:00): each is
    a warning naming the table, the source, how many and an example, and every source is judged on its other rows;
    a source with no readable row is not applicable, saying why. Before, the NULL source stopped the run with a
    TypeError, and the unreadable time was the error of both feed checks of every source."""
    from medlake.quality.feeds import run_feeds

    yesterday = dt.date.today() - dt.timedelta(days=1)
    eng = open_engine("duckdb::memory:")
    eng.execute("CREATE TABLE interface_message_log (source VARCHAR, received_at VARCHAR)")
    eng.execute("INSERT INTO interface_message_log VALUES " + ", ".join(
        [f"('adt', '{yesterday - dt.timedelta(days=i)} 08:00:00')" for i in range(30) if i != 3]
        + ["(NULL, '2026-12-01 10:00:00')", "('adt', '07/12/2026 10:00')", "('adt', NULL)", "('lab', '')"]))
    got = run_feeds(eng, site.feed_config('[feed]\ntable = "interface_message_log"'), result)
    eng.close()
    adt = _by(got)["feedTimeliness", "adt"]
    assert (adt["status"], adt["num_violated_rows"], adt["examples"]) == (
        "failed", 1, [str(yesterday - dt.timedelta(days=3))])
    assert _by(got)["feedTimeliness", "lab"]["not_applicable_reason"] == (
        "no row of lab in interface_message_log has a received_at that is a date ('')")
    fix = "write received_at as a date and time (2026-12-07 10:00:00), or make the column a timestamp"
    assert _warnings(got) == [
        "interface_message_log: 1 row(s) without a source (NULL): not judged by the feed checks; give each row the "
        "system it came from",
        f"interface_message_log: 2 row(s) of adt whose received_at is not a date ('07/12/2026'): not counted by the "
        f"feed checks; {fix}",
        f"interface_message_log: 1 row(s) of lab whose received_at is not a date (''): not counted by the feed "
        f"checks; {fix}"]


def test_a_landing_receipt_without_a_readable_time_is_said_and_stops_no_check(tmp_path):
    """A receipt with an empty received_at (a landing restored from elsewhere): a warning naming the source, how many
    and how to find them; the source's other receipts are judged, and the future-date check (which reads each day's
    first receipt) runs. Before, `Invalid isoformat string: ''` stopped the whole run."""
    yesterday = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    landing = _landing(tmp_path, [(i, "lis", dt.datetime.combine(yesterday - dt.timedelta(days=i), dt.time(9),
                                                                  dt.timezone.utc), 0) for i in range(1, 10)])
    db = sqlite3.connect(landing / "landing.sqlite")
    db.execute("INSERT INTO receipt (seq, sha256, source, received_at, size, duplicate) VALUES (20, 'h', 'lis', '', 1, "
               "0)")
    db.commit()
    db.close()
    eng = open_engine("duckdb::memory:")
    eng.execute("CREATE TABLE visit_occurrence (visit_occurrence_id BIGINT, visit_start_date DATE)")
    eng.execute("CREATE TABLE cdm_lineage (cdm_table VARCHAR, row_id BIGINT, source VARCHAR, receipt_seq BIGINT)")
    eng.execute(f"INSERT INTO visit_occurrence VALUES (1, DATE '{yesterday}')")
    eng.execute("INSERT INTO cdm_lineage VALUES ('visit_occurrence', 1, 'lis', 20)")
    got = run_sources(eng, result, landing)
    eng.close()
    lis = _by(got)["feedTimeliness", "lis"]
    assert (lis["status"], lis["num_violated_rows"], lis["num_denominator_rows"]) == ("failed", 1, 10)  # yesterday
    assert [r["status"] for r in got if r["status"] == "error"] == []
    assert _by(got)["sourceFutureDates", "lis"]["status"] == "passed"
    assert _warnings(got)[0].startswith("landing: 1 row(s) of lis whose received_at is not a date (empty, or no "
                                        "date-time): not counted by the feed checks; the landing writes it itself")


# -- review-src #2: the newest missing days first, and a silence going on said ------------------------------------

def test_a_feeds_examples_are_its_newest_days_and_a_silence_going_on_is_said():
    """A LIS with 12 missing Mondays early in the year, an outage last week and nothing for its last 3 days: the
    examples are the 10 newest missing days (the silence and last week's outage first), and the description says
    since when it is silent (`silent_since`); its volume examples too are the newest drops. Before, the examples
    were the 10 oldest days: the outage going on was not among them."""
    yesterday = TODAY - dt.timedelta(days=1)
    mondays = [dt.date(2026, 1, 5) + dt.timedelta(weeks=i) for i in range(12)]
    outage = TODAY - dt.timedelta(days=6)
    days = {d: 30 for d in _days(400, TODAY - dt.timedelta(days=4)) if d not in mondays and d != outage}
    days |= {dt.date(2026, 2, 3): 2, dt.date(2026, 11, 3): 3}  # two drops
    got = _by(feed_results({"lis": days}, "landing", 0.5, result, today=TODAY))
    t = got["feedTimeliness", "lis"]
    newest = [yesterday - dt.timedelta(days=i) for i in range(3)] + [outage] + mondays[::-1][:6]
    assert (t["num_violated_rows"], t["examples"]) == (16, [str(d) for d in newest])
    assert t["silent_since"] == str(TODAY - dt.timedelta(days=3))
    assert t["description"].endswith(f"Silent since {TODAY - dt.timedelta(days=3)}: nothing on its last 3 day(s) "
                                     f"judged, to {yesterday}. Retired on purpose? Give its last day: "
                                     f"[feed.sources.lis] until = {TODAY - dt.timedelta(days=4)}.")
    assert got["feedVolume", "lis"]["examples"] == ["2026-11-03", "2026-02-03"]
    assert "silent_since" not in _by(feed_results({"lis": days | {yesterday: 30}}, "landing", 0.5, result,
                                                  today=TODAY))["feedTimeliness", "lis"]


# -- review-src #12: what to do fits the case --------------------------------------------------------------------

def test_what_to_do_about_missing_days_fits_a_retired_feed_and_a_young_weekday_feed():
    """A feed retired 17 days ago is told its `until` (its last day); a two-week-old feed whose missing days are all
    Saturdays and Sundays (its habit is learnt after three weeks) is told `weekdays`; an outage on scattered days is
    told neither, and the next step (next_steps.toml) names the outage and each setting. Before, all three were only
    told to look for an outage and ask for a resend."""
    from medlake.quality.report import next_step

    yesterday = TODAY - dt.timedelta(days=1)
    retired = _days(40, TODAY - dt.timedelta(days=18))
    young = {d: 20 for d in _days(14, yesterday) if d.weekday() < 5}
    flaky = {d: 20 for d in _days(40, yesterday) if d not in (TODAY - dt.timedelta(days=5), TODAY - dt.timedelta(
        days=12), TODAY - dt.timedelta(days=30))}
    got = _by(feed_results({"old": retired, "clinic": young, "flaky": flaky, "lis": _days(40, yesterday)},
                           "landing", 0.5, result, today=TODAY))
    assert got["feedTimeliness", "old"]["description"].endswith(
        f"Retired on purpose? Give its last day: [feed.sources.old] until = {TODAY - dt.timedelta(days=18)}.")
    assert got["feedTimeliness", "clinic"]["description"].endswith(
        "All on Saturdays and Sundays: if it does not send on them, list the days it sends on: "
        "[feed.sources.clinic] weekdays.")
    flaky = got["feedTimeliness", "flaky"]
    assert flaky["status"] == "failed" and flaky["description"].endswith("between its first day and the feed's last "
                                                                         "day.")
    step = next_step(flaky)
    assert "ask for a resend" in step and "[feed.sources.flaky]" in step
    assert all(k in step for k in ("(until)", "(weekdays)", "(from)"))


# -- review-src #4, #5: holidays of a feed that sends every day ----------------------------------------------------

def test_a_feed_that_sends_on_weekends_is_not_excused_on_holidays_and_its_holiday_volume_is_a_weekends():
    """A LIS sending every day (200 on weekdays, 80 on weekends) silent on a public holiday: a missing day (a 24/7
    feed's holiday outage is the one nobody sees); a weekday-only clinic silent on it is excused. An ED feed declared
    sends_on_holidays with its weekend volume on the holiday is no drop. Before, the LIS's silent holiday passed, and
    the ED's holiday was a volume drop against its weekdays."""
    holiday = dt.date(2026, 11, 18)  # a Wednesday
    span = sorted(_days(56, TODAY - dt.timedelta(days=1)))
    lis = {d: 80 if d.weekday() >= 5 else 200 for d in span if d != holiday}
    clinic = {d: 20 for d in span if d.weekday() < 5 and d != holiday}
    ed = {d: 40 if d.weekday() >= 5 or d == holiday else 200 for d in span}
    cfg = site.feed_config(f"[feed]\nholidays = [{holiday}]\n[feed.sources.ed]\nsends_on_holidays = true\n")
    got = _by(feed_run({"lis": lis, "clinic": clinic, "ed": ed}, "landing", cfg, result, TODAY))
    assert (got["feedTimeliness", "lis"]["num_violated_rows"], got["feedTimeliness", "lis"]["examples"]) == (
        1, [str(holiday)])
    assert got["feedTimeliness", "clinic"]["num_violated_rows"] == 0
    assert "1 holiday(s)" in got["feedTimeliness", "clinic"]["description"]
    assert (got["feedVolume", "ed"]["status"], got["feedVolume", "ed"]["num_violated_rows"]) == ("passed", 0)
    assert (got["feedVolume", "lis"]["status"], got["feedTimeliness", "ed"]["num_violated_rows"]) == ("passed", 0)
