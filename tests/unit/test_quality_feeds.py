"""The feed (source-level) checks against the incidents of a feed engineer's review (/work/notes/review-feeds.md):
a site-wide silence, records rather than files, low-volume noise, retired and weekday feeds, a sender's clock
ahead, a mapping lost on new data, examples of records without a key, a site's [source_fields] that drops
medlake's rules."""
from __future__ import annotations

import datetime as dt
import random
import sqlite3

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
    return {(r["check_name"], r["data_source"]): r for r in results}


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
    silent = [str(TODAY - dt.timedelta(days=d)) for d in (3, 2, 1)]
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


# -- F6, F11: a retired feed, a planned start, declared weekdays ------------------------------------------------

def test_a_sources_declared_span_and_weekdays():
    """[feed.sources.NAME]: `until` ends a retired feed's span (it was missing every day since); `from` starts a
    feed's span at its go-live (test messages before are not judged; a go-live that did not happen is missing days);
    `weekdays` a new clinic feed's cadence from its first day (its weekends were missing for three weeks)."""
    yesterday = TODAY - dt.timedelta(days=1)
    retired_on = TODAY - dt.timedelta(days=22)
    clinic = {d: 25 for d in _days(16, yesterday) if d.weekday() < 5}
    per = {"retired": _days(20, retired_on), "clinic": clinic, "lis": _days(40, yesterday),
           "new": {TODAY - dt.timedelta(days=30): 2, TODAY - dt.timedelta(days=29): 1}}  # test messages
    text = ("[feed.sources.retired]\nuntil = %s\n[feed.sources.clinic]\nweekdays = ['Mon', 'Tue', 'Wed', 'Thu', "
            "'Friday']\n[feed.sources.new]\nfrom = '%s'\n" % (retired_on, TODAY - dt.timedelta(days=5)))
    plain = _by(feed_run(per, "landing", site.feed_config("[feed]\ndrop = 0.5"), result, TODAY))
    got = _by(feed_run(per, "landing", site.feed_config(text), result, TODAY))

    def t(g, src):
        return g["feedTimeliness", src]["num_violated_rows"], g["feedTimeliness", src]["num_denominator_rows"]
    assert (t(plain, "retired"), t(got, "retired")) == ((22 - 1, 41), (0, 20))
    assert t(plain, "clinic")[0] == 4 and t(got, "clinic") == (0, 10)  # two weekends, 10 weekdays
    assert "Saturdays and Sundays: the site says it does not send on them" in got["feedTimeliness", "clinic"][
        "description"]
    assert t(got, "new") == (5, 5)  # from 5 days ago to yesterday: nothing came
    assert got["feedTimeliness", "lis"] == plain["feedTimeliness", "lis"]
    for text, message in (("[feed.sources.x]\nuntil = 'soon'", r"\[feed.sources.x\] until must be a date"),
                          ("[feed.sources.x]\nfrom = 2026-12-01\nuntil = 2026-11-01", "from 2026-12-01 is after until"),
                          ("[feed.sources.x]\nweekdays = ['Mon', 'Funday']", "weekdays must be a list of the days"),
                          ("[feed.sources.x]\nretired = true", "takes country, subdivision, holidays, "
                                                               "sends_on_holidays, from, until and weekdays")):
        with pytest.raises(ValueError, match=message):
            site.feed_config(text, "site.toml")
