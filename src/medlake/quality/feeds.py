"""Source-level (feed) checks: is every source sending every day, and in its usual volume?

They run over any table with one row per received message or file: a source column and a received-at
timestamp (the landing layer's record of what arrived). One query counts rows per source and day; the
rest is arithmetic on that small result:

- `feedTimeliness`: days with nothing from a source between its first day and the last day seen in the
  feed (any source) — a silent feed is flagged; threshold 0 (any missing day fails). The weekdays a source
  does not send on (learnt from three weeks of it: a weekday-only feed's weekends) are not missing days.
  Nor are its holidays (the site's `[feed] holidays` and its `country`'s public holidays, python-holidays'
  calendars; or a calendar of the source's own, `[feed.sources.NAME]`), unless it sends on weekends (learnt) or
  on holidays (declared): then a holiday is judged, its volume as its quiet days'.
- `feedVolume`: days whose count is below `drop` × the median of the source's previous 7 days with data of
  the same kind: its quiet weekdays (learnt: a lighter weekend) against its quiet days, the others against
  the others.

Results have the same shape as every other check (cdm_table = the feed table, cdm_field = the source).

`run_sources` adds the source-level checks every full run gets (no configuration): mandatory fields and
duplicate records per staging table (`source_fields.toml`, and the site's `[source_fields]`), landing duplicates
and open quarantine (the site folder's SQLite files, read-only), mapping coverage per CDM table and unit
consistency of numeric results (through `cdm_lineage`). Each result names its `data_source`.
"""
from __future__ import annotations

import datetime as dt
import difflib
import math
import sqlite3
import statistics
import tomllib
from collections.abc import Callable, Iterable
from contextlib import closing, suppress
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, partial
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

from medlake import config
from medlake.cdm.importer import QUARANTINE_PREFIX
from medlake.engines.base import EngineError
from medlake.identity.staging import VAULTED
from medlake.quality.checks import Check, example_ids
from medlake.quality.compile import inline_rows, lit, q

TYPES = {
    "feedTimeliness": ("Plausibility", "Temporal", "Validation",
                       "Days without any data from source @source between its first day and the feed's last day."),
    "feedVolume": ("Plausibility", "Atemporal", "Validation",
                   "Days on which source @source sent less than @drop of the median of its previous 7 days."),
}


def feed_checks(table: str, source: str, drop: float, off: tuple[int, ...] = (), quiet: tuple[int, ...] = (),
                holidays: int = 0, declared: bool = False) -> list[Check]:
    """The two feed checks of one source; `off` and `quiet` are its learnt weekdays (see `cadence`; `declared`: its
    off days are the site's, [feed.sources.NAME] weekdays), `holidays` the number of its holidays (`days_off`) on
    other days of its span."""
    hol = f"{holidays} holiday(s)" if holidays else ""
    why = "the site says it does not send on them" if declared else "it sends on fewer than 1 in 5 of them"
    not_counted = [f"{_weekdays(off)}: {why}" if off else "", hol]
    words = {"feedTimeliness": f" (not counting {'; nor '.join(x for x in not_counted if x)})" if off or hol else "",
             "feedVolume": f" ({_weekdays(quiet)}, its quiet days, are judged against its previous quiet days)"
             if quiet else ""}
    out = []
    for name, (cat, sub, ctx, desc) in TYPES.items():
        desc = desc.replace("@source", source).replace("@drop", f"{drop:g}")
        out.append(Check(name, "SOURCE", table, source, threshold=0.0, category=cat, subcategory=sub, context=ctx,
                         severity="feed", description=desc[:-1] + words[name] + ".", source="medlake"))
    return out


WEEKDAYS = ("Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays", "Sundays")
CADENCE_WEEKS = 3  # a source's habit on a weekday is learnt once it has 3 of that weekday behind it


def _weekdays(days: tuple[int, ...]) -> str:
    names = [WEEKDAYS[d] for d in days]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def cadence(days: dict[dt.date, int], drop: float, holidays: frozenset = frozenset(),
            weekdays: tuple[int, ...] | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A source's weekly habit, learnt from its own span (its first to its last day with data, so a feed that
    went silent does not teach that silence): the weekdays it does not send on (data on fewer than 1 in 5 of at
    least `CADENCE_WEEKS` of them; never all seven) and its quiet weekdays (those, and the weekdays with data on at
    least `CADENCE_WEEKS` days whose median volume is below `drop` x the median of all its days). Holidays are
    not weekdays of the source's habit. `weekdays`: the weekdays the site says it sends on ([feed.sources.NAME]
    weekdays), the others off from its first day, not learnt."""
    first, last = (min(days), max(days)) if days else (None, None)
    seen, sent = [0] * 7, [[] for _ in range(7)]
    for i in range((last - first).days + 1 if days else 0):
        d = first + dt.timedelta(days=i)
        if d in holidays:
            continue
        seen[d.weekday()] += 1
        if d in days:
            sent[d.weekday()].append(days[d])
    off = tuple(w for w in range(7) if seen[w] >= CADENCE_WEEKS and 5 * len(sent[w]) < seen[w])
    off = () if len(off) == 7 else off
    if weekdays is not None:
        off = tuple(w for w in range(7) if w not in weekdays)
    usual = statistics.median(days.values()) if days else 0
    low = {w for w in range(7) if len(sent[w]) >= CADENCE_WEEKS and statistics.median(sent[w]) < drop * usual}
    return off, tuple(sorted(low | set(off)))


SPAN_KEYS = ("from", "until", "weekdays")  # [feed.sources.NAME]: its span and its weekdays, declared
WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def source_span(spec: dict, where: str) -> dict:
    """A [feed.sources.NAME] table's `from` and `until` (dates: a planned start, a retired feed's last day) and
    `weekdays` (the days it sends on, ["Mon", "Tue", ...] or full names), checked; `where` names it in a message."""
    out: dict = {}
    for key in ("from", "until"):
        if key in spec:
            d = spec[key]
            try:
                out[key] = d if isinstance(d, dt.date) and not isinstance(d, dt.datetime) else dt.date.fromisoformat(d)
            except (TypeError, ValueError):
                raise ValueError(f"{where} {key} must be a date (2026-11-15 or \"2026-11-15\"), not {d!r}") from None
    if "from" in out and "until" in out and out["from"] > out["until"]:
        raise ValueError(f"{where} from {out['from']} is after until {out['until']}")
    if "weekdays" in spec:
        days = spec["weekdays"]
        names = [str(d).strip().lower()[:3] for d in days] if isinstance(days, list) else None
        if not names or any(n not in WEEKDAY_NAMES for n in names):
            raise ValueError(f"{where} weekdays must be a list of the days it sends on, such as [\"Mon\", \"Tue\", "
                             f"\"Wed\", \"Thu\", \"Fri\"], not {days!r}")
        out["weekdays"] = tuple(sorted({WEEKDAY_NAMES.index(n) for n in names}))
    return out


def run_feeds(engine, cfg: dict, result) -> list[dict]:
    """Results of the feed checks for every source in `cfg['table']` (see `site.feed_config`)."""
    table, scol, tcol, drop = cfg["table"], cfg["source"], cfg["received_at"], cfg["drop"]
    if table not in [t.lower() for t in engine.tables()]:
        c = feed_checks(table, "*", drop)
        return [result(x, "not_applicable", reason=f"feed table {table} absent") for x in c]
    # its days read here, not cast by the database: one row whose time is not a date (07/12/2026) failed the cast
    # and so the feed checks of every source (and TRY_CAST is no PostgreSQL's)
    rows = engine.query(
        f"SELECT CAST({q(scol)} AS VARCHAR) AS s, substr(CAST({q(tcol)} AS VARCHAR), 1, 10) AS d, count(*) AS n "
        f"FROM {q(table)} GROUP BY 1, 2").to_pylist()
    if not rows:
        return [result(x, "not_applicable", reason=f"feed table {table} empty") for x in feed_checks(table, "*", drop)]
    per: dict[str, dict[dt.date, int]] = {}
    skipped: dict[str | None, list] = {}  # {source: [rows, an example]} of the rows not counted
    for r in rows:
        try:
            d = dt.date.fromisoformat(r["d"]) if r["s"] is not None else None
        except (TypeError, ValueError):
            d = None
        if d is None:
            skip = skipped.setdefault(r["s"], [0, None])
            skip[0] += _int(r["n"])
            skip[1] = skip[1] or (repr(r["d"]) if r["d"] is not None else "NULL")
            continue
        per.setdefault(r["s"], {})[d] = _int(r["n"])
    out = feed_run(per, table, cfg, result, dt.date.today()) if per else [
        result(x, "not_applicable", reason=f"no row of feed table {table} has a source and a {tcol} that is a date")
        for x in feed_checks(table, "*", drop)]  # (the site's own times: the machine's day)
    fix = f"write {tcol} as a date and time (2026-12-07 10:00:00), or make the column a timestamp"
    return _skipped(out, per, skipped, table, drop, result, tcol, fix)


def _skipped(out: list[dict], per: dict, skipped: dict, table: str, drop: float, result, tcol: str, fix: str
             ) -> list[dict]:
    """`out` with a warning (on its first result) for each source's rows the feed checks did not count (`skipped`:
    {source: [rows, an example value]}): rows without a source (None) or whose `tcol` is not a date; a source with
    no other row gets its two checks not applicable, saying why."""
    warnings = []
    for src, (n, example) in sorted(skipped.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
        if src is None:
            warnings.append(f"{table}: {n:,} row(s) without a source (NULL): not judged by the feed checks; give "
                            "each row the system it came from")
            continue
        example = example or "empty, or no date-time"
        warnings.append(f"{table}: {n:,} row(s) of {src} whose {tcol} is not a date ({example}): not counted by the "
                        f"feed checks; {fix}")
        if src not in per:
            out += _unjudged(table, src, drop, result, f"no row of {src} in {table} has a {tcol} that is a date "
                                                       f"({example})")
    if warnings and out:
        out[0]["warnings"] = warnings + list(out[0].get("warnings") or [])
    return out


def feed_run(per: dict[str, dict[dt.date, int]], table: str, feed: dict, result, today: dt.date | None = None
             ) -> list[dict]:
    """The feed checks of every source in `per` ({source: {day: count}}) under the site's [feed] settings
    (`site.feed_config`); a source named in [feed.sources] that sent nothing is missing every day since its `from`
    (a go-live that did not happen), or without one a not_applicable pair (nothing says when it should have sent).
    `today`: the day in progress on the feed's clock, not judged (see `feed_results`)."""
    drop = feed.get("drop", FEED_DROP)
    named = feed.get("sources", {})
    per = per | {src: {} for src, spec in named.items() if src not in per and spec.get("from")}
    out = feed_results(per, table, drop, result, days_off(feed, per), today, named)
    for src in sorted(set(named) - set(per)):
        out += _unjudged(table, src, drop, result, f"source {src} (named in [feed.sources]) sent nothing to {table}; "
                                                   f"give its go-live ([feed.sources.{src}] from) to judge each day "
                                                   "since")
    return out


def _unjudged(table: str, src: str, drop: float, result, reason: str) -> list[dict]:
    """The feed checks of a source that cannot be judged (yet), not applicable for `reason`."""
    out = []
    for c in feed_checks(table, src, drop):
        r = result(c, "not_applicable", reason=reason)
        r["data_source"] = src
        out.append(r)
    return out


def days_off(feed: dict, per: dict[str, dict[dt.date, int]]) -> dict[str, frozenset]:
    """Each source's days it is not expected to send on: its calendar's `holidays` and its country's (and
    subdivision's) public holidays, including the days they are observed on, in the years of the feed; the site's
    calendar ([feed]) unless [feed.sources.NAME] gives the source its own (`feed_results` judges them for a source
    that sends on holidays: declared, or learnt from its weekends)."""
    seen = [d for days in per.values() for d in days]
    years = range(min(seen).year, max(seen).year + 1) if seen else range(0)
    out, cals = {}, {}
    for src in per:
        spec = feed.get("sources", {}).get(src, feed)
        key = (spec.get("country"), spec.get("subdivision"))
        if key[0] and key not in cals:
            import holidays  # ~0.1 s to import, only for a calendar with a country
            cals[key] = frozenset(holidays.country_holidays(key[0], subdiv=key[1], years=years))
        out[src] = frozenset(spec.get("holidays", ())) | cals.get(key, frozenset())
    return out


SILENCE_DAYS = 14  # a site-wide silence up to this many days before today: missing days; longer: an archive
FUTURE_DAYS = 1  # receipts dated after tomorrow on the feed's clock are the sender's clock, not the day in progress
FEED_CHANCE = 0.02  # a low day is a drop only if a Poisson count of its baseline's median is that low less often
FEED_BURST = 3.0  # a day with more than this times its baseline's median (and unlikely by chance) is a burst


def _by_chance(n: int, mean: float) -> float:
    """P(X <= n) for X ~ Poisson(mean): how often a day this low comes by chance alone (1 vs a median of 3: 0.2;
    6 vs 20: 0.0006). Above a mean of 200 any day below half of it is far below 1e-9."""
    if mean > 200:
        return 0.0
    term = total = math.exp(-mean)
    for k in range(1, n + 1):
        term *= mean / k
        total += term
    return total


def _burst(n: int, mean: float) -> bool:
    """Whether `n` is more than FEED_BURST x `mean` and a Poisson count of `mean` that high comes less often than
    FEED_CHANCE (3 against a usual 1 is chance: 0.08; 4 is not: 0.019). No day is a burst against a usual of
    nothing (days of re-sent files only): no ratio to judge by."""
    return mean > 0 and n > FEED_BURST * mean and (mean > 200 or 1 - _by_chance(n - 1, mean) < FEED_CHANCE)


def feed_results(per: dict[str, dict[dt.date, int]], table: str, drop: float, result,
                 days_off: dict[str, frozenset] | None = None, today: dt.date | None = None,
                 sources: dict[str, dict] | None = None) -> list[dict]:
    """feedTimeliness and feedVolume per source from what it sent per day ({source: {day: count}}).

    A day the source does not send on (a weekend for a weekday feed, learnt by `cadence` or declared in
    `sources[src]['weekdays']`) is not a missing day; a quiet weekday's volume is judged against the source's
    previous quiet days, the others against its other days, so a lighter weekend is not a volume drop. A day is a
    drop when below `drop` x the median of its baseline and unlikely by chance (`_by_chance` < FEED_CHANCE: 1 message
    against a usual 3 is noise). A source's holidays (`days_off`: {source: days}) are neither missing days nor
    judged for volume, nor part of any day's baseline. The day in progress (`today`, and the day after it: a
    clock a few hours ahead) is not over: neither missing nor low, nor learnt from (a run at 01:00 saw an hour of
    it). Days after that are the sender's clock: not judged, and said in a warning. The feed's last day is
    yesterday when the whole feed has been silent for up to SILENCE_DAYS (an outage of the interface engine, the
    listener or the ingest: each source's silent days are missing days, and a warning says since when); after a
    longer silence it is the last day anything arrived (a store that no longer receives: an archive, a replay of
    history), also said in a warning. `sources`: per source, `from` and `until` (its span, declared: days before
    and after are not judged; a retired feed is not missing every day since) and `weekdays`."""
    sources = sources or {}
    ahead = (today + dt.timedelta(days=FUTURE_DAYS)) if today else None
    whole = {src: {d: n for d, n in days.items() if today is None or d < today} for src, days in per.items()}
    seen_last = max((d for days in whole.values() for d in days), default=None)
    last, warnings = seen_last, []
    if today is not None and seen_last is not None and seen_last < today - dt.timedelta(days=1):
        ago = (today - seen_last).days
        if ago - 1 <= SILENCE_DAYS:
            last = today - dt.timedelta(days=1)
        else:
            warnings.append(f"{table}: nothing received from any source since {seen_last} ({ago} days ago): the "
                            f"feed checks judge each source up to that day only (a store that no longer receives: an "
                            f"archive or a replay of history); if it should be receiving, every feed is down")
    out, silent = [], []
    for src, all_days in sorted(per.items()):
        spec = sources.get(src, {})
        start, until, weekdays = spec.get("from"), spec.get("until"), spec.get("weekdays")
        future = {d: n for d, n in all_days.items() if ahead and d > ahead}
        if future:
            far = max(future)
            warnings.append(f"{sum(future.values()):,} receipt(s) of {src} in {table} are dated after today, on "
                            f"{len(future)} day(s) up to {far} ({(far - today).days} days ahead): the sender's clock, "
                            "or the interface engine's? They are not judged")
        days = {d: n for d, n in whole[src].items() if (start is None or d >= start) and (until is None or d <= until)}
        end = min(last, until) if last and until else last
        if until is not None and any(d > until for d in whole[src]):
            n = sum(n for d, n in whole[src].items() if d > until)
            warnings.append(f"{src} in {table} sent {n:,} receipt(s) after its until date {until} ([feed.sources."
                            f"{src}]): not judged; is it retired?")
        if not days and not (start and end and start <= end):
            if whole[src]:
                why = f"{src} sent nothing between its from and until dates ([feed.sources.{src}])"
            elif not all_days:  # (named with a go-live, `from`, not over yet; or nothing arrived from any source)
                why = (f"{src} has sent nothing to {table}, nor has any other source: nothing to judge its go-live "
                       f"{start} against" if end is None else f"{src} has sent nothing to {table} yet and goes live "
                       f"on {start} ([feed.sources.{src}] from): each day from then is judged once it is over")
            elif future and len(future) == len(all_days):
                why = (f"{src} has sent only receipts dated after today ({min(future)} to {max(future)}): the "
                       "sender's clock? judged once they are not")
            else:
                why = f"{src} has sent on the day in progress only ({today.isoformat()}): judged from tomorrow"
            out += _unjudged(table, src, drop, result, why)
            continue
        calendar = (days_off or {}).get(src, frozenset())
        off, quiet = cadence(days, drop, calendar, weekdays)
        # a source that sends on weekends (3 of each, learnt) sends on holidays too, as one declared so: a silent
        # holiday is a missing day, and its holiday's volume is judged as its quiet days' (a lighter weekend's)
        weekend = [sum(d.weekday() == w and d not in calendar for d in days) >= CADENCE_WEEKS for w in (5, 6)]
        sends = spec.get("sends_on_holidays") or (all(weekend) and not {5, 6} & set(off))
        holidays = frozenset() if sends else calendar
        first = start or min(days)
        on = [first + dt.timedelta(days=i) for i in range((end - first).days + 1)]
        on = [d for d in on if d.weekday() not in off]  # the weekdays it sends on
        span = [d for d in on if d not in holidays]
        timely, volume = feed_checks(table, src, drop, off, quiet, len(on) - len(span), weekdays is not None)
        missing = [d for d in span if d not in days]
        if seen_last and last > seen_last and any(d > seen_last for d in missing):
            silent.append(src)
        r = result(timely, "counted", len(missing), len(span))
        # the newest first: an outage going on, or last week's, is what to look at (the oldest could fill the ten)
        r["examples"], r["example_field"], r["data_source"] = [d.isoformat() for d in missing[::-1][:10]], "day", src
        # every missing day on one or two weekdays, each at least twice: a habit not learnt yet (a young feed)?
        odd = tuple(sorted({d.weekday() for d in missing}))
        habit = weekdays is None and 0 < len(odd) <= 2 and all(
            sum(d.weekday() == w for d in missing) >= 2 for w in odd)
        gone = next((i for i, d in enumerate(reversed(span)) if d not in missing), len(span))  # its last days missing
        if gone:
            since = span[-gone]
            r["silent_since"] = since.isoformat()
            r["description"] += f" Silent since {since}: nothing on its last {gone} day(s) judged, to {span[-1]}."
            if not habit:
                r["description"] += (f" Retired on purpose? Give its last day: [feed.sources.{src}] until = "
                                     f"{max(days) if days else since - dt.timedelta(days=1)}.")
        if habit:
            r["description"] += (f" All on {_weekdays(odd)}: if it does not send on them, list the days it sends on: "
                                 f"[feed.sources.{src}] weekdays.")
        out.append(r)
        seen = sorted(d for d in days if d not in holidays)
        low, high, judged = [], [], 0
        for i, d in enumerate(seen):
            kind = d.weekday() in quiet or (bool(quiet) and d in calendar)
            prev = [days[x] for x in seen[:i] if (x.weekday() in quiet) == kind][-7:]
            if len(prev) >= 3:
                judged += 1
                usual = statistics.median(prev)
                if days[d] < drop * usual and _by_chance(days[d], usual) < FEED_CHANCE:
                    low.append(d)
                elif _burst(days[d], usual):
                    high.append((d, days[d], usual))
        r = result(volume, "counted", len(low), judged,
                   reason=f"{len(seen)} day(s) with data from {src}: a day is judged against at least 3 before it")
        r["examples"], r["example_field"], r["data_source"] = [d.isoformat() for d in low[::-1][:10]], "day", src
        # bursts are said, not failed: a replay after an outage is one, and so are a message loop and a resend
        r["bursts"] = [f"{d.isoformat()}: {n:,} against a usual {usual:g}" for d, n, usual in high[-10:]]
        shown = [d for d in all_days if not ahead or d <= ahead]
        r.update(daily(all_days, first, max([end, *shown]), set(missing), set(low), off, holidays, today,
                       {d for d, *_ in high}))
        out.append(r)
    if silent:
        ago = (today - seen_last).days
        warnings.insert(0, f"{table}: nothing received from any source since {seen_last} ({ago} days ago): the "
                           f"interface engine, the listener or the ingest stopped? {len(silent)} source(s) are "
                           f"missing every day since ({', '.join(silent[:5])}{', …' if len(silent) > 5 else ''})")
    if warnings and out:
        out[0]["warnings"] = warnings
    return out


FEED_CHART_DAYS = 90  # the report draws a source's last 90 days


def daily(days: dict[dt.date, int], first: dt.date, last: dt.date, missing: set, low: set, off: tuple[int, ...],
          holidays: frozenset, today: dt.date | None = None, high: set = frozenset()) -> dict:
    """A source's last `FEED_CHART_DAYS` days to the feed's last day (from its first): `daily_from` (the first
    day), `daily_counts` (what it sent, 0 for nothing) and `daily_marks`, a letter a day: `x` a missing day, `v` a
    volume drop, `^` a burst (`high`), `-` a day off (a weekday it does not send on, a holiday), `~` the day in
    progress (not judged), `.` any other."""
    start = max(first, last - dt.timedelta(days=FEED_CHART_DAYS - 1))
    span = [start + dt.timedelta(days=i) for i in range((last - start).days + 1)]
    marks = "".join("x" if d in missing else "v" if d in low else "^" if d in high else "~" if today and d >= today
                    else "-" if d.weekday() in off or d in holidays else "." for d in span)
    return {"daily_from": start.isoformat(), "daily_counts": [days.get(d, 0) for d in span], "daily_marks": marks}


def landing_feed(db: sqlite3.Connection, timezone: str | None = None, records: Records | None = None,
                 skipped: dict | None = None) -> dict[str, dict[dt.date, int]]:
    """What each source sent per day, as the landing received it, by UTC day, or by the local day of `timezone`
    (the receipts, in UTC, counted per quarter of an hour, as every zone's offset is a whole number of quarters,
    then each quarter given its local day). A day with a receipt is a day the source sent on (feedTimeliness);
    what it counts is its volume: a receipt of content the source had already landed (a re-sent file or message,
    `duplicate`) counts 0; with `records` (`receipt_records`, from the store's ingest log) each staged receipt counts
    its records (staged and quarantined: an MLLP message 1, a CSV file its rows, a FHIR bundle its resources) and a
    receipt not staged yet its source's usual records per receipt; without it, a receipt counts 1. So a day of an
    export with its header only, or of a re-sent file only, is a day of volume 0 (a drop), not a missing day.
    A receipt whose received_at is empty or no date-time (a landing restored or migrated from elsewhere: the landing
    writes it itself) is not counted, but added to `skipped` ({source: [receipts, None]}, see `_skipped`)."""
    per: dict[str, dict[dt.date, int]] = {}
    day = "substr(r.received_at, 1, 10)" if timezone is None else (
        "substr(r.received_at, 1, 14) || printf('%02d', CAST(substr(r.received_at, 15, 2) AS INTEGER) / 15 * 15)")
    n = "1"
    if records is not None:
        db.execute("CREATE TEMP TABLE IF NOT EXISTS feed_records (seq INTEGER PRIMARY KEY, n INTEGER)")
        db.execute("CREATE TEMP TABLE IF NOT EXISTS feed_staged (source TEXT PRIMARY KEY, upto INTEGER, per INTEGER)")
        db.execute("DELETE FROM temp.feed_records")
        db.execute("DELETE FROM temp.feed_staged")
        db.executemany("INSERT OR REPLACE INTO temp.feed_records VALUES (?, ?)", records.counts.items())
        db.executemany("INSERT OR REPLACE INTO temp.feed_staged VALUES (?, ?, ?)",
                       [(src, upto, per_) for src, (upto, per_) in records.staged.items()])
        n = ("CASE WHEN s.upto IS NULL THEN 1 WHEN r.seq <= s.upto THEN coalesce(f.n, 1) ELSE s.per END")
        joins = ("LEFT JOIN temp.feed_records f ON f.seq = r.seq LEFT JOIN temp.feed_staged s ON s.source = r.source")
    rows = db.execute(f"SELECT r.source, {day}, sum(CASE WHEN r.duplicate = 0 THEN {n} ELSE 0 END), count(*) "
                      f"FROM receipt r {joins if records is not None else ''} GROUP BY 1, 2")
    local = _local_day(timezone) if timezone else dt.date.fromisoformat
    for src, at, n, receipts in rows:
        try:
            d = local(at)
        except (TypeError, ValueError):
            if skipped is not None:
                skipped.setdefault(src, [0, None])[0] += receipts
            continue
        days = per.setdefault(src, {})
        days[d] = days.get(d, 0) + n
    return per


@dataclass(frozen=True)
class Records:
    """What the store's ingest log says of the landing's receipts: `counts`, {receipt seq: records} of the staged
    receipts that did not hold exactly one record; `staged`, {source: (its last staged receipt's seq, its usual
    records per receipt)}."""
    counts: dict[int, int]
    staged: dict[str, tuple[int, int]]


def receipt_records(engine, tables: set[str]) -> Records | None:
    """The records of each staged receipt, from the store's `ingest_log` (None without one)."""
    if "ingest_log" not in tables or not {"source", "receipt_seq", "records", "quarantined"} <= {
            c.name.lower() for c in engine.columns("ingest_log")}:
        return None
    n = "coalesce(records, 0) + coalesce(quarantined, 0)"
    many = engine.query(f"SELECT CAST(source AS VARCHAR) AS s, receipt_seq AS seq, sum({n}) AS n FROM ingest_log "
                        f"WHERE receipt_seq IS NOT NULL GROUP BY 1, 2 HAVING sum({n}) <> 1").to_pylist()
    counts = {int(r["seq"]): _int(r["n"]) for r in many}
    staged = {}
    for r in engine.query("SELECT CAST(source AS VARCHAR) AS s, max(receipt_seq) AS upto, count(*) AS k FROM "
                          "ingest_log WHERE receipt_seq IS NOT NULL GROUP BY 1").to_pylist():
        sizes = [_int(x["n"]) for x in many if x["s"] == r["s"]]
        sizes += [1] * (_int(r["k"]) - len(sizes))  # (the receipts of one record each)
        staged[r["s"]] = (int(r["upto"]), max(1, round(statistics.median(sizes))))
    return Records(counts, staged)


def _local_day(timezone: str):
    zone = ZoneInfo(timezone)

    @cache
    def day(quarter: str) -> dt.date:  # "YYYY-MM-DDTHH:MM", UTC
        return dt.datetime.fromisoformat(quarter + "+00:00").astimezone(zone).date()
    return day


# -- source-level checks beyond the feed: completeness, duplicates, quarantine, mapping coverage -----------------

SOURCE_TYPES = {
    # name: (category, subcategory, context, threshold %, description)
    "sourceMandatoryCompleteness": (
        "Completeness", "Mandatory fields", "Verification", 0.0,
        "Staged records of @table from source @source without @field, a field the source must send."),
    "sourceDuplicateRecords": (
        "Plausibility", "Uniqueness", "Verification", 0.0,
        "Staged records of @table from source @source that repeat a record already staged (same @field)."),
    "sourceDuplicateReceipts": (
        "Plausibility", "Uniqueness", "Verification", 5.0,
        "Messages or files from source @source received again with content already landed (landing duplicates)."),
    "sourceTestMessages": (
        "Plausibility", "Atemporal", "Verification", 0.0,
        "HL7 messages from source @source marked for training or debugging (MSH-11 processing id T or D, not P: "
        "production), staged with the patient data."),
    "sourceQuarantined": (
        "Conformance", "Value", "Verification", 0.0,
        "Records from source @source held in quarantine (malformed, missing a mandatory field, bad encoding, …) "
        "and not yet resolved, of all records received from it."),
    "sourceMappingCoverage": (
        "Completeness", "Mapping", "Verification", 5.0,
        "Rows of @table from source @source whose source code is not mapped to a standard, valid concept."),
    "sourceNewUnmappedCodes": (
        "Completeness", "Mapping", "Verification", 0.0,
        "Rows of @table from source @source received in the last 7 days whose source code is not mapped to a "
        "standard, valid concept and was not unmapped in the rows received before (a code new to the source, or a "
        "mapping lost)."),
    "sourceFutureDates": (
        "Plausibility", "Temporal", "Verification", 0.0,
        "Rows of @table from source @source dated (@field) more than a day after the landing received their record "
        "(a sender's or device's clock ahead, a mistyped year)."),
    "sourceUnitConsistency": (
        "Plausibility", "Atemporal", "Validation", 0.0,
        "Numeric results from source @source in a unit other than the one the source uses for at least "
        "95% of that measurement's results (a label from another unit system, or a unit switch)."),
}

FEED_DROP = 0.5  # a day below half the median of the source's previous 7 days with data is a volume drop
UNIT_DOMINANT = 0.95  # a source's usual unit for a measurement: at least this share of its results
RECENT_DAYS = 7  # sourceNewUnmappedCodes: the rows of the receipts of the last 7 days (today included)
# sourceFutureDates: a CDM table's event date and the id its cdm_lineage rows name (a death's is its person's)
EVENT_DATES = {"visit_occurrence": ("visit_occurrence_id", "visit_start_date"),
               "visit_detail": ("visit_detail_id", "visit_detail_start_date"),
               "condition_occurrence": ("condition_occurrence_id", "condition_start_date"),
               "drug_exposure": ("drug_exposure_id", "drug_exposure_start_date"),
               "procedure_occurrence": ("procedure_occurrence_id", "procedure_date"),
               "device_exposure": ("device_exposure_id", "device_exposure_start_date"),
               "measurement": ("measurement_id", "measurement_date"),
               "observation": ("observation_id", "observation_date"),
               "note": ("note_id", "note_date"), "specimen": ("specimen_id", "specimen_date"),
               "death": ("person_id", "death_date")}


@cache
def source_fields() -> dict:
    """Per staging table: its record key and the fields its sources must send (source_fields.toml)."""
    text = resources.files("medlake.quality").joinpath("source_fields.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def source_check(name: str, table: str, field: str | None, src: str) -> Check:
    cat, sub, ctx, thr, desc = SOURCE_TYPES[name]
    desc = desc.replace("@table", table).replace("@source", src).replace("@field", field or "")
    return Check(name, "SOURCE", table, field, threshold=thr, category=cat, subcategory=sub, context=ctx,
                 severity="source", description=desc, source="medlake")


def _int(x) -> int:
    """A count from a query: PostgreSQL returns numeric sums (as text through ADBC)."""
    return int(Decimal(str(x or 0)))


def _counted(result, name, table, field, src, violated, denominator, examples=(), example_field=None) -> dict:
    violated, denominator = _int(violated), _int(denominator)
    r = result(source_check(name, table, field, src), "counted", violated, denominator)
    r["check_id"] = "_".join(["source", name.lower(), src, table] + ([field] if field else []))
    r["data_source"] = src
    r["examples"], r["example_field"] = example_ids(list(examples)[:10]), example_field
    return r


RECORD_IDS = ("control_id", "resource_id", "record_location")  # a record's id in a staging table without a key


def _missing_examples(engine, table: str, key: str, missing: set[tuple[str, str]], when: dict, cols: dict,
                      landing: Path | None = None) -> dict[tuple[str, str], list[str]]:
    """Up to 10 records per (source, field) of `missing`, the rows that leave the field empty, in one query (not of a
    field moved to the identity vault: its staged value is empty by design): each record once (an HL7 message's id,
    not once per observation), the first received first, with the day the landing received it ("M2 (received
    2026-12-03)": since when), when the table has its receipts and the landing is found."""
    if not missing:
        return {}
    seq = "min(receipt_seq)" if "receipt_seq" in cols else "NULL"
    parts = []
    for src, f in sorted(missing):
        quoted = src.replace("'", "''")
        parts.append(f"SELECT '{quoted}' AS s, '{f}' AS f, k, q, row_number() OVER (ORDER BY q, k) AS n FROM (SELECT "
                     f"CAST({q(key)} AS VARCHAR) AS k, {seq} AS q FROM {q(table)} AS t "
                     f"WHERE CAST(source AS VARCHAR) = '{quoted}' AND {_blank(f, cols[f])}"
                     + (f" AND ({when[f]})" if f in when else "")
                     + f" GROUP BY {q(key)}) AS g{len(parts)}")
    rows = engine.query(f"SELECT s, f, k, q FROM ({' UNION ALL '.join(parts)}) AS x WHERE n <= 10 ORDER BY s, f, n"
                        ).to_pylist()
    received = _received_on(landing, (r["q"] for r in rows))
    out: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        day = received(r["q"])
        out.setdefault((r["s"], r["f"]), []).append(r["k"] if day is None else f"{r['k']} (received {day})")
    return out


def _replaced(table: str, spec: dict) -> list[str]:
    """What a site's [source_fields.T] (`spec`) stops checking of medlake's own rules for T: its `mandatory` list
    replaces medlake's, its [when] table medlake's (a site adding a field drops the others without a word)."""
    base = source_fields().get(table, {})
    named = set(spec.get("mandatory", [])) | set(spec.get("when", {}))
    gone = [f for f in base.get("mandatory", []) if "mandatory" in spec and f not in named]
    gone += [f"{f} (when {c})" for f, c in base.get("when", {}).items() if "when" in spec and f not in named]
    if not gone:
        return []
    return [f"[source_fields.{table}] replaces medlake's rules for {table}: {', '.join(gone)} no longer checked "
            "(name them in its mandatory list or its [when] table to keep them)"]


def _site_field_problems(result, table: str, spec: dict, cols: dict, tables: set[str] = frozenset()) -> list[dict]:
    """A site's [source_fields] entry that cannot be checked, said rather than skipped: its table not in the store
    yet (not applicable; a name close to a staging table's is likely a typo: a `warning` saying which) or without a
    source column, or a field it names not in the table (errors)."""
    def res(field, status, **kw):
        r = result(source_check("sourceMandatoryCompleteness", table, field, "*"), status, **kw)
        r["check_id"] = "_".join(["source", "sourcemandatorycompleteness", "site", table] + ([field] if field else []))
        return r

    if not cols:
        known = sorted(set(source_fields()) | {t for t in tables if t.startswith("stg_")})
        near = [] if table in known else difflib.get_close_matches(table, known, n=1, cutoff=0.8)
        r = res(None, "not_applicable", reason=f"{table} is not in the store (no data from its feed yet)"
                + (f"; did you mean {near[0]}?" if near else ""))
        if near:
            r["warning"] = f"[source_fields.{table}] not checked: {table} is not in the store (did you mean {near[0]}?)"
        return [r]
    if "source" not in cols:
        return [res(None, "error", error=f"{table} has no source column: not a staging table")]
    named = dict.fromkeys(list(spec.get("mandatory", [])) + list(spec.get("when", {})) + list(spec.get("key", [])))
    return [res(f, "error", error=f"{f} is not a field of {table} ([source_fields.{table}] in the site checks): "
                "fix the name") for f in named if f not in cols]


def run_sources(engine, result, landing_dir: str | Path | None = None, fields: dict | None = None,
                feeds: bool = True, feed: dict | None = None, today: dt.date | None = None) -> list[dict]:
    """Source-level checks for every source in the store: mandatory fields and duplicate records in the
    staging tables, landing duplicates, the feed checks on what the landing received per day (`feeds`; a site's
    [feed] table replaces them; `feed`: the site's [feed] `timezone` and `drop`, site.feed_config) and open
    quarantine (from the landing folder, when it is found), mapping coverage
    per source and CDM table and unit consistency of numeric results (through `cdm_lineage`).
    A store without medlake's staging and lineage tables (an imported OHDSI database) gets none of them.
    `fields`: the site's [source_fields] (site.fields_config): per staging table, a key given replaces medlake's
    (what it no longer checks said in a warning). `today`: the landing's UTC day (the recent window's end)."""
    tables = {t.lower() for t in engine.tables()}
    landing = _landing_dir(engine, landing_dir)
    today = today or dt.datetime.now(dt.timezone.utc).date()
    out: list[dict] = []
    warned: list[str] = []  # said on the run's command line (a result's `warnings`)
    specs = {t: dict(v) for t, v in source_fields().items()}
    for table, spec in (fields or {}).items():
        specs.setdefault(table, {}).update(spec)
    for table, spec in specs.items():
        cols = {c.name.lower(): c.type for c in engine.columns(table)} if table in tables else {}
        when = spec.get("when", {})
        first = len(out)
        if table in (fields or {}):
            out += _site_field_problems(result, table, spec, cols, tables)
            warned += [r.pop("warning") for r in out[first:] if r.get("warning")]
            warned += _replaced(table, fields[table]) if "source" in cols else []
        if "source" not in cols:
            continue
        mandatory = [f for f in dict.fromkeys(list(spec.get("mandatory", [])) + list(when)) if f in cols]
        if mandatory:
            out += _mandatory_guarded(engine, result, table, spec, cols, mandatory, tables, landing)
        key = spec.get("key", [])
        if key and set(key) <= cols.keys():  # (a key with a field missing would count other duplicates)
            _guarded(out, result, source_check("sourceDuplicateRecords", table, "+".join(key), "*"),
                     f"the query of {table}'s duplicate records", partial(_duplicates, engine, result, table, key))
    if "processing_id" in ({c.name.lower() for c in engine.columns("stg_hl7_message")}
                           if "stg_hl7_message" in tables else ()):
        _guarded(out, result, source_check("sourceTestMessages", "stg_hl7_message", "processing_id", "*"),
                 "the query of test messages", partial(_test_messages, engine, result, landing))
    out += _landing_checks(engine, result, tables, landing, feeds, feed or {})
    if {"cdm_lineage", "measurement"} <= tables:
        _guarded(out, result, source_check("sourceUnitConsistency", "measurement", "unit_concept_id", "*"),
                 "the query of the sources' units", partial(_units, engine, result))
    if "cdm_lineage" in tables:
        _guarded(out, result, source_check("sourceFutureDates", "cdm_lineage", None, "*"),
                 "the query of rows dated after their receipt",
                 partial(_future_dates, engine, result, tables, landing, today))
    if "cdm_lineage" in tables and "concept" in tables:
        receipts = "receipt_seq" in {c.name.lower() for c in engine.columns("cdm_lineage")}
        _guarded(out, result, source_check("sourceMappingCoverage", "cdm_lineage", None, "*"),
                 "the query of the sources' mapping coverage",
                 lambda: _mapping(engine, result, _recent_from(landing, today) if receipts else None))
    if warned and out:
        out[0].setdefault("warnings", []).extend(warned)
    return out


def _mandatory(engine, result, table: str, spec: dict, cols: dict, mandatory: list[str], tables: set[str],
               landing: Path | None) -> list[dict]:
    """sourceMandatoryCompleteness of `mandatory`, the fields of staging table `table` (`cols`: its columns and
    types) its sources must send (`spec`: its key and [when] conditions), per source and field, in one scan."""
    when, out = spec.get("when", {}), []
    sums = ", ".join(
        f"sum(CASE WHEN ({when[f]}) AND {_blank(f, cols[f])} THEN 1 ELSE 0 END) AS v{i}, "
        f"sum(CASE WHEN ({when[f]}) THEN 1 ELSE 0 END) AS d{i}" if f in when else
        f"sum(CASE WHEN {_blank(f, cols[f])} THEN 1 ELSE 0 END) AS v{i}, count(*) AS d{i}"
        for i, f in enumerate(mandatory))
    vaulted = _vaulted(engine, table) if VAULTED in tables else {}
    counts = engine.query(f"SELECT CAST(source AS VARCHAR) AS s, {sums} FROM {q(table)} AS t GROUP BY 1 "
                          "ORDER BY 1").to_pylist()
    # the record's id, to name the rows: its key's first part, else its message's or resource's id
    record = next((c for c in [*(spec.get("key") or [])[:1], *RECORD_IDS] if c in cols), None)
    missing = {(r["s"], f) for r in counts for i, f in enumerate(mandatory) if r[f"v{i}"]
               and f != record and not (f not in when and vaulted.get((r["s"], f)))}
    examples = _missing_examples(engine, table, record, missing, when, cols, landing) if record else {}
    for r in counts:
        for i, f in enumerate(mandatory):
            moved = 0 if f in when else vaulted.get((r["s"], f), 0)  # sent, now in the identity vault
            out.append(_counted(result, "sourceMandatoryCompleteness", table, f, r["s"],
                                max(_int(r[f"v{i}"] or 0) - moved, 0), r[f"d{i}"] or 0,
                                examples.get((r["s"], f), ()), record))
    return out


def _mandatory_guarded(engine, result, table: str, spec: dict, cols: dict, mandatory: list[str], tables: set[str],
                       landing: Path | None) -> list[dict]:
    """`_mandatory`, a query the database refuses said rather than stopping every source-level check: each [when]
    condition that fails alone (a site's `dispensed_at > 'notadate'`) is its field's `error`, with the database's
    words and what to fix, and the other fields are counted; any other failure is the table's error."""
    try:
        return _mandatory(engine, result, table, spec, cols, mandatory, tables, landing)
    except EngineError as e:
        failed = e
    out, when = [], spec.get("when", {})
    for f in [f for f in mandatory if f in when]:
        try:
            engine.query(f"SELECT sum(CASE WHEN ({when[f]}) THEN 1 ELSE 0 END) AS n FROM {q(table)} AS t")
        except EngineError as e:
            mandatory = [m for m in mandatory if m != f]
            out.append(result(source_check("sourceMandatoryCompleteness", table, f, "*"), "error", error=(
                f"the condition of {f} ([source_fields.{table}.when] {f} = {when[f]!r}) fails in the database: "
                f"{_first_line(e)}; fix it (a SQL condition on one row of {table}) in the site checks file")))
    whole = source_check("sourceMandatoryCompleteness", table, None, "*")
    what = f"the query of {table}'s mandatory fields"
    if not out:  # no condition of its own fails alone: the table's error
        out.append(_error(result, whole, what, failed))
    elif mandatory:  # the fields left, without the conditions that failed
        _guarded(out, result, whole, what, partial(_mandatory, engine, result, table, spec, cols, mandatory, tables,
                                                   landing))
    return out


def _duplicates(engine, result, table: str, key: list[str]) -> list[dict]:
    """sourceDuplicateRecords of staging table `table` per source: records repeating `key` (all its fields there)."""
    out = []
    k = ", ".join(q(c) for c in key)
    # one GROUP BY of the record key: per source its totals (kind 0) and the duplicated keys (kind 1)
    g = f"SELECT CAST(source AS VARCHAR) AS s, {k}, count(*) AS n FROM {q(table)} GROUP BY source, {k}"
    # records without their id (the key's first part) repeat none: they miss a mandatory field, counted
    # there; a later part may be absent (a FHIR resource sent twice without meta.versionId repeats)
    keyed = f"{q(key[0])} IS NOT NULL"
    rows = engine.query(
        f"WITH g AS ({g}) SELECT 0 AS kind, s, sum(n) AS n, sum(CASE WHEN {keyed} THEN n - 1 ELSE 0 END) "
        f"AS dups, NULL AS k FROM g GROUP BY s UNION ALL SELECT 1 AS kind, s, n, NULL AS dups, "
        f"CAST({q(key[0])} AS VARCHAR) AS k FROM g WHERE n > 1 AND {keyed}"
    ).to_pylist()
    examples: dict[str, list[str]] = {}
    for r in sorted((r for r in rows if r["kind"] == 1), key=lambda r: (r["s"], r["k"] is None, r["k"])):
        if len(examples.setdefault(r["s"], [])) < 10:
            examples[r["s"]].append(r["k"])
    for r in sorted((r for r in rows if r["kind"] == 0), key=lambda r: r["s"]):
        out.append(_counted(result, "sourceDuplicateRecords", table, "+".join(key), r["s"], r["dups"] or 0,
                            r["n"] or 0, examples.get(r["s"], ()), key[0]))
    return out


def _guarded(out: list[dict], result, checks: Check | list[Check], what: str, run: Callable[[], list[dict]]) -> None:
    """`run()`'s results added to `out`, or, when the database refuses its query or a landing file cannot be read,
    the `_error` of `checks`, so that one section's failure stops no other source-level check."""
    try:
        out += run()
    except (EngineError, sqlite3.Error) as e:
        out += [_error(result, c, what, e) for c in (checks if isinstance(checks, list) else [checks])]


def _error(result, check: Check, what: str, e: Exception) -> dict:
    """`check` (of every source) could not run: `what` failed, in the database's words."""
    return result(check, "error", error=f"{what} failed: {_first_line(e)}. The other source-level checks ran; fix "
                                        "what the message names (a column of another type than medlake's, a file "
                                        "that cannot be read) and run again")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _units(engine, result) -> list[dict]:
    """sourceUnitConsistency per source (`_unit_counts`), the odd units named with their concept and rows."""
    rows, odd = _unit_counts(engine)
    examples: dict[str, list[str]] = {}
    for (src, cid, unit), n in sorted(odd.items()):
        examples.setdefault(src, []).append(f"concept {cid} in unit {unit} ({n})")
    return [_counted(result, "sourceUnitConsistency", "measurement", "unit_concept_id", src,
                     sum(n for (s, *_), n in odd.items() if s == src), rows[src], examples.get(src, ()),
                     "concept in unit (rows)") for src in sorted(rows)]


_UNITS = ("SELECT l.source AS s, m.measurement_concept_id AS c, m.unit_concept_id AS u, count(*) AS n "
          "FROM measurement AS m JOIN cdm_lineage AS l ON l.cdm_table = 'measurement' AND l.row_id = m.measurement_id "
          "WHERE m.value_as_number IS NOT NULL AND m.unit_concept_id IS NOT NULL AND m.unit_concept_id <> 0 "
          "AND m.measurement_concept_id IS NOT NULL "
          "AND l.source IS NOT NULL GROUP BY 1, 2, 3")


def _unit_counts(engine) -> tuple[dict[str, int], dict[tuple, int]]:
    """(numeric results with a unit per source, {(source, concept, unit): rows} for units off the source's usual
    one: a unit other than one holding >= UNIT_DOMINANT of the source's results of that concept)."""
    per: dict[tuple, dict[int, int]] = {}
    for r in engine.query(_UNITS).to_pylist():
        per.setdefault((r["s"], r["c"]), {})[r["u"]] = int(r["n"])
    rows: dict[str, int] = {}
    odd: dict[tuple, int] = {}
    for (src, cid), units in per.items():
        total = sum(units.values())
        rows[src] = rows.get(src, 0) + total
        usual = max(units, key=units.get)
        if len(units) > 1 and units[usual] >= UNIT_DOMINANT * total:
            odd.update({(src, cid, u): n for u, n in units.items() if u != usual})
    return rows, odd


def odd_unit_rows(engine) -> dict[str, list[int]]:
    """Every measurement row `sourceUnitConsistency` counts, per source (for tracing)."""
    _, odd = _unit_counts(engine)
    out: dict[str, list[int]] = {}
    for src, cid, unit in odd:
        for r in engine.query(
                "SELECT m.measurement_id AS id FROM measurement AS m JOIN cdm_lineage AS l ON l.cdm_table = "
                f"'measurement' AND l.row_id = m.measurement_id WHERE l.source = {lit(src)} AND "
                f"m.measurement_concept_id = {int(cid)} AND m.unit_concept_id = {int(unit)} "
                "AND m.value_as_number IS NOT NULL").to_pylist():
            out.setdefault(src, []).append(r["id"])
    return out


def _blank(f: str, type_: str) -> str:
    """A field sent empty: NULL, or for text only spaces (a date or number is blank only as NULL: casting every
    value to text to trim it cost 20x the scan)."""
    if any(t in type_ for t in ("CHAR", "TEXT", "STRING", "?")):
        return f"({q(f)} IS NULL OR trim({q(f)}) = '')"
    return f"{q(f)} IS NULL"


def _vaulted(engine, table: str) -> dict[tuple[str, str], int]:
    """{(source, field): values the EMPI run moved from `table` into the identity vault} (identity.staging records
    them per receipt; only receipts still staged count)."""
    return {(r["s"], r["f"]): _int(r["n"]) for r in engine.query(
        f"SELECT v.source AS s, v.field AS f, CAST(sum(v.present) AS BIGINT) AS n FROM {VAULTED} v "
        f"WHERE v.stg_table = {lit(table)} AND EXISTS (SELECT 1 FROM {q(table)} x WHERE x.source = v.source "
        "AND x.receipt_seq = v.receipt_seq) GROUP BY v.source, v.field").to_pylist()}


def _mapping(engine, result, recent: int | None) -> list[dict]:
    """sourceMappingCoverage per source and CDM table, and (`recent`: the first receipt of the last RECENT_DAYS
    days) sourceNewUnmappedCodes: of the rows from the receipts since, those whose code is unmapped and was not
    unmapped in the rows before (new to the source, or its mapping lost), judged when the source sent at least as
    many rows of the table before as since; a loss the whole history dilutes below 5% is seen the day it starts."""
    # lineage grouped by source code first (a few thousand codes, millions of rows), then the concepts of
    # just those looked up: one pass, and no join of every row to a vocabulary of millions of concepts
    bad = ("c.concept_id IS NULL OR g.concept_id = 0 OR coalesce(c.standard_concept, '') <> 'S' "
           "OR c.invalid_reason IS NOT NULL")
    new = f"coalesce(receipt_seq >= {int(recent)}, FALSE)" if recent is not None else "FALSE"
    codes = (f"SELECT source AS s, cdm_table AS t, code_system AS sys, code, concept_id, {new} AS r, count(*) AS n "
             "FROM cdm_lineage WHERE code IS NOT NULL AND source IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6")
    per: dict[tuple, list[int]] = {}
    examples: dict[tuple, list[tuple]] = {}
    split: dict[tuple, dict[tuple, list[int]]] = {}  # (source, table): {(system, code): [old bad, old, new bad, new]}
    for r in engine.query(f"SELECT g.s, g.t, g.sys, g.code, g.r, sum(CASE WHEN {bad} THEN g.n ELSE 0 END) AS v, "
                          f"sum(g.n) AS d FROM ({codes}) AS g LEFT JOIN concept AS c ON c.concept_id = "
                          "g.concept_id GROUP BY 1, 2, 3, 4, 5").to_pylist():
        v, d, tot = _int(r["v"]), _int(r["d"]), per.setdefault((r["s"], r["t"]), [0, 0])
        tot[0] += v
        tot[1] += d
        # (a code without a system, as an HL7 CE without its coding system, sorts and reads as the code)
        code, i = split.setdefault((r["s"], r["t"]), {}).setdefault((r["sys"] or "", r["code"]), [0, 0, 0, 0]), \
            2 if r["r"] else 0
        code[i] += v
        code[i + 1] += d
    for key, codes_ in split.items():
        examples[key] = sorted((-(c[0] + c[2]), sys, code) for (sys, code), c in codes_.items() if c[0] + c[2])
    vocabulary = bool(per) and engine.query("SELECT count(*) AS n FROM (SELECT 1 FROM concept LIMIT 1) AS c"
                                            ).column(0)[0].as_py()
    out = []
    for (src, table), (v, d) in sorted(per.items()):
        ex = [f"{sys + '|' if sys else ''}{code} ({-n})" for n, sys, code in examples.get((src, table), [])[:10]]
        rs = [_counted(result, "sourceMappingCoverage", table, None, src, v, d, ex, "code (rows)")]
        if recent is not None:
            codes_ = split[src, table]
            lost = sorted((-c[2], sys, code) for (sys, code), c in codes_.items() if c[2] and not c[0])
            ex = [f"{sys + '|' if sys else ''}{code} ({-n}{', mapped before' if codes_[sys, code][1] else ', new'})"
                  for n, sys, code in lost[:10]]
            r = _counted(result, "sourceNewUnmappedCodes", table, None, src, sum(-n for n, *_ in lost),
                         sum(c[3] for c in codes_.values()), ex, "code (rows)")
            before = sum(c[1] for c in codes_.values())
            if before < r["num_denominator_rows"] and r["status"] != "not_applicable":
                # (a young source: a code of its second week is new only for want of a first)
                r.update(result(source_check("sourceNewUnmappedCodes", table, None, src), "not_applicable",
                                reason=(f"every row of {table} from {src} is from its receipts of the last "
                                        f"{RECENT_DAYS} days" if not before else f"{src} sent fewer rows of {table} "
                                        f"before its last {RECENT_DAYS} days ({before:,}) than in them: too young to "
                                        "tell a new code") + ": sourceMappingCoverage judges them"),
                         check_id=r["check_id"], data_source=src)
            elif r["status"] == "not_applicable":
                r["not_applicable_reason"] = f"no row of {table} from {src} received in the last {RECENT_DAYS} days"
            rs.append(r)
        for r in rs:
            if not vocabulary:  # no code is mapped without one: not applicable, as every check looking up concepts
                r.update(result(source_check(r["check_name"], table, None, src), "not_applicable",
                                reason="concept table empty (vocabulary not loaded)"), check_id=r["check_id"],
                         data_source=src)
        out += rs
    return out


def _test_messages(engine, result, landing: Path | None) -> list[dict]:
    """sourceTestMessages per source: its staged HL7 messages whose MSH-11 is T (training) or D (debugging) — a
    sender's test traffic on the production interface; examples: the first received, control id, processing id and
    day received. A message without MSH-11 is no test message (v2.1's senders may leave it empty)."""
    test = "upper(trim(processing_id)) IN ('T', 'D')"
    counts = engine.query(f"SELECT CAST(source AS VARCHAR) AS s, count(*) AS d, sum(CASE WHEN {test} THEN 1 ELSE 0 "
                          "END) AS v FROM stg_hl7_message GROUP BY 1 ORDER BY 1").to_pylist()
    examples: dict[str, list[str]] = {}
    if any(_int(r["v"]) for r in counts):
        found = engine.query(
            "SELECT s, c, p, seq FROM (SELECT CAST(source AS VARCHAR) AS s, control_id AS c, processing_id AS p, "
            "receipt_seq AS seq, row_number() OVER (PARTITION BY source ORDER BY receipt_seq, control_id) AS rn "
            f"FROM stg_hl7_message WHERE {test}) AS x WHERE rn <= 10 ORDER BY s, rn").to_pylist()
        received = _received_on(landing, (r["seq"] for r in found))
        for r in found:
            on = received(r["seq"])
            examples.setdefault(r["s"], []).append(f"{r['c']} ({r['p']}{', received ' + on if on else ''})")
    return [_counted(result, "sourceTestMessages", "stg_hl7_message", "processing_id", r["s"], r["v"], r["d"],
                     examples.get(r["s"], ()), "control_id") for r in counts]


def _future_dates(engine, result, tables: set[str], landing: Path | None, today: dt.date) -> list[dict]:
    """sourceFutureDates per source and CDM table (`_dated_rows`), each late row named with its date and the day its
    record was received."""
    dated = _dated_rows(engine, tables, landing, today)
    if dated is None:
        return []
    rows, late = dated
    counts = engine.query(f"SELECT r.s, r.tb, count(*) AS d, sum(CASE WHEN {late} THEN 1 ELSE 0 END) AS v "
                          f"FROM ({rows}) AS r GROUP BY 1, 2 ORDER BY 1, 2").to_pylist()
    examples: dict[tuple, list[str]] = {}
    if any(_int(r["v"]) for r in counts):
        found = engine.query(
            f"SELECT s, tb, id, e, seq FROM (SELECT r.*, row_number() OVER (PARTITION BY r.s, r.tb ORDER BY r.e DESC, "
            f"r.id) AS rn FROM ({rows}) AS r WHERE {late}) AS x WHERE rn <= 10 ORDER BY s, tb, rn").to_pylist()
        received = _received_on(landing, (r["seq"] for r in found))
        for r in found:
            on = received(r["seq"])
            examples.setdefault((r["s"], r["tb"]), []).append(
                f"{r['id']} ({r['e']}, received {on})" if on else f"{r['id']} ({r['e']})")
    return [_counted(result, "sourceFutureDates", r["tb"], EVENT_DATES[r["tb"]][1], r["s"], r["v"], r["d"],
                     examples.get((r["s"], r["tb"]), ()), EVENT_DATES[r["tb"]][0]) for r in counts]


def future_date_rows(engine, landing_dir: Path | None = None, today: dt.date | None = None
                     ) -> dict[tuple[str, str], list[int]]:
    """Every row `sourceFutureDates` counts, {(source, CDM table): row ids} (for tracing)."""
    tables = {t.lower() for t in engine.tables()}
    dated = _dated_rows(engine, tables, _landing_dir(engine, landing_dir),
                        today or dt.datetime.now(dt.timezone.utc).date()) if "cdm_lineage" in tables else None
    out: dict[tuple[str, str], list[int]] = {}
    for r in engine.query(f"SELECT s, tb, id FROM ({dated[0]}) AS r WHERE {dated[1]} ORDER BY 1, 2, 3"
                          ).to_pylist() if dated else ():
        out.setdefault((r["s"], r["tb"]), []).append(r["id"])
    return out


def _dated_rows(engine, tables: set[str], landing: Path | None, today: dt.date) -> tuple[str, str] | None:
    """(a query of the CDM rows with an event date (EVENT_DATES) per record of a source that made them (cdm_lineage:
    one row per CDM row and record; a record's receipt is its latest version's): `s`, `tb`, `id`, `e` the date,
    `seq` the receipt; the condition, on alias `r`, that the row is late) or None without them. A row is late when
    dated more than a day after the UTC day the landing received its record (a day either way: the date is the
    hospital's local day; a visit's record pre-admitted, then admitted, is of the admission's message). The landing
    numbers its receipts as they come, so a record received before day D has a seq below the first of D: one small
    inline table, {event date e: the first seq of day e - 1}, tells every row's verdict in one join, whatever the
    number of receipts. A row dated after tomorrow is late whatever its receipt; without the landing (or a row
    without its receipt) that is the whole test."""
    have = [(t, i, d) for t, (i, d) in EVENT_DATES.items()
            if t in tables and {i, d} <= {c.name.lower() for c in engine.columns(t)}]
    if not have or "receipt_seq" not in {c.name.lower() for c in engine.columns("cdm_lineage")}:
        return None
    events = " UNION ALL ".join(f"SELECT {lit(t)} AS tb, {q(i)} AS id, CAST({q(d)} AS DATE) AS e FROM {q(t)}"
                                for t, i, d in have)
    rows = (f"SELECT l.source AS s, x.tb, x.id, x.e, l.receipt_seq AS seq FROM ({events}) AS x JOIN cdm_lineage AS l "
            "ON l.cdm_table = x.tb AND l.row_id = x.id WHERE l.source IS NOT NULL AND x.e IS NOT NULL")
    late = f"r.e > {lit(today + dt.timedelta(days=1))}"
    firsts = _first_receipts(landing, today)
    if not firsts:
        return rows, late
    return (f"SELECT r.*, f.seq AS f_seq FROM ({rows}) AS r LEFT JOIN ({inline_rows(firsts)}) AS f ON f.e = r.e",
            late + " OR r.seq < r.f_seq")


def _first_receipts(landing_dir: Path | None, today: dt.date) -> list[dict]:
    """Rows {e: an event date, seq: the first receipt the landing received on day e - 1 or later} for the dates
    from the landing's second day to tomorrow (a row of date e is late when its receipt's seq is below), as
    inline_rows takes them; [] without the landing. A day without receipts takes the next day's first; after the
    last, none was received yet (the last seq + 1)."""
    path = landing_dir / "landing.sqlite" if landing_dir else None
    if path is None or not path.exists():
        return []
    with closing(_ro(path)) as db:
        days = db.execute("SELECT substr(received_at, 1, 10), min(seq) FROM receipt GROUP BY 1 ORDER BY 1"
                          ).fetchall()
        top = db.execute("SELECT max(seq) FROM receipt").fetchone()[0]
    first = {}
    for d, s in days:
        with suppress(TypeError, ValueError):  # (a receipt without a readable time: the feed checks warn of it)
            first[dt.date.fromisoformat(d)] = s
    if not first:
        return []
    out, nxt = [], top + 1
    day = max(today, max(first))
    while day > min(first):  # from the last day back: each day's first seq, or the next day's
        nxt = first.get(day, nxt)
        out.append({"e": (day + dt.timedelta(days=1), "DATE"), "seq": (nxt, "BIGINT")})
        day -= dt.timedelta(days=1)
    return out[::-1]


def _landing_checks(engine, result, tables: set[str], landing_dir: Path | None, feeds: bool = True,
                    feed: dict | None = None) -> list[dict]:
    """Landing duplicates, the feed checks (`feeds`) and open quarantine per source, read (read-only) from the
    landing folder's SQLite files (`_landing_dir`); none when the folder is not found (a store checked without its
    landing, e.g. `--store postgresql://…`). Rows a `medlake cdm import` set aside are a source per CDM table
    (`cdm:<table>`), of the rows imported."""
    if landing_dir is None:
        return []
    out, path, feed = [], Path(landing_dir) / "landing.sqlite", feed or {}
    if path.exists():
        _guarded(out, result, source_check("sourceDuplicateReceipts", "landing", None, "*"),
                 f"reading the landing's receipts ({path})", partial(_receipts, result, path))
        if feeds:
            _guarded(out, result, feed_checks("landing", "*", feed.get("drop", FEED_DROP)),
                     f"counting the landing's receipts per day ({path})",
                     partial(_landing_feeds, engine, result, tables, path, feed))
    if (Path(landing_dir) / "quarantine.sqlite").exists():
        _guarded(out, result, source_check("sourceQuarantined", "quarantine", None, "*"),
                 f"reading the quarantine ({Path(landing_dir) / 'quarantine.sqlite'})",
                 partial(_quarantined, engine, result, tables, Path(landing_dir) / "quarantine.sqlite"))
    return out


def _receipts(result, path: Path) -> list[dict]:
    """sourceDuplicateReceipts per source, from the landing's receipts (`path`, read-only)."""
    with closing(_ro(path)) as db:
        return [_counted(result, "sourceDuplicateReceipts", "landing", None, src, dups, n) for src, n, dups in
                db.execute("SELECT source, count(*), coalesce(sum(duplicate), 0) FROM receipt GROUP BY source "
                           "ORDER BY source")]


def _landing_feeds(engine, result, tables: set[str], path: Path, feed: dict) -> list[dict]:
    """The feed checks of every source on what the landing (`path`) received per day, by the site's [feed]."""
    skipped: dict = {}
    with closing(_ro(path)) as db:
        per = landing_feed(db, feed.get("timezone"), receipt_records(engine, tables), skipped)
    now = dt.datetime.now(ZoneInfo(feed.get("timezone") or "UTC"))  # the landing's days: UTC or the site's
    out = feed_run(per, "landing", feed, result, now.date()) if per else []
    return _skipped(out, per, skipped, "landing", feed.get("drop", FEED_DROP), result, "received_at",
                    f"the landing writes it itself: one restored or migrated from elsewhere? Find them in {path}: "
                    "SELECT seq, source, received_at FROM receipt WHERE coalesce(received_at, '') NOT GLOB "
                    "'[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'")


def _quarantined(engine, result, tables: set[str], qpath: Path) -> list[dict]:
    """sourceQuarantined per source: its open quarantine items (`qpath`, read-only) of all records it sent."""
    out = []
    held: dict[str, dict[str, int]] = {}
    with closing(_ro(qpath)) as db:
        for src, reason, n in db.execute("SELECT source, reason, count(*) FROM item WHERE status = 'open' "
                                         "GROUP BY 1, 2 ORDER BY 1, 3 DESC"):
            held.setdefault(src, {})[reason] = n
    records = {r["s"]: r["n"] for r in engine.query(
        "SELECT CAST(source AS VARCHAR) AS s, CAST(sum(records + quarantined) AS BIGINT) AS n FROM ingest_log "
        "GROUP BY 1").to_pylist()} if "ingest_log" in tables else {}
    for src in held:
        table = src[len(QUARANTINE_PREFIX):]
        if src.startswith(QUARANTINE_PREFIX) and table in tables:
            records[src] = _int(engine.query(f"SELECT count(*) AS n FROM {q(table)}").column(0)[0].as_py()) \
                + sum(held[src].values())
    for src in sorted(set(records) | (set(held) if "ingest_log" in tables else set())):
        reasons = held.get(src, {})
        out.append(_counted(result, "sourceQuarantined", "quarantine", None, src, sum(reasons.values()),
                            records.get(src) or 0, [f"{k}: {v}" for k, v in reasons.items()], "reason"))
    return out


def _landing_dir(engine, landing_dir=None) -> Path | None:
    """The landing folder given, or the one of the store's site (None when not found: a store checked alone)."""
    if landing_dir is None:
        try:
            url = getattr(getattr(engine, "engine", engine), "url", None)
            landing_dir = config.load(store=url).landing_dir if url else None
        except (config.ConfigError, OSError):
            landing_dir = None
    return None if landing_dir is None else Path(landing_dir)


def _recent_from(landing_dir: Path | None, today: dt.date) -> int | None:
    """The first receipt (its seq) the landing received in the last RECENT_DAYS days to `today` (UTC days; the
    landing numbers its receipts as they come), None if it received none or is not found."""
    path = landing_dir / "landing.sqlite" if landing_dir else None
    if path is None or not path.exists():
        return None
    since = (today - dt.timedelta(days=RECENT_DAYS - 1)).isoformat()
    with closing(_ro(path)) as db:
        return db.execute("SELECT min(seq) FROM receipt WHERE received_at >= ?", (since,)).fetchone()[0]


def _received_on(landing_dir: Path | None, seqs: Iterable) -> Callable[[object], str | None]:
    """The UTC day each receipt seq of `seqs` (a few examples; None for a row without one) was received, as a lookup
    giving None for None, a seq not found, or without the landing."""
    wanted = sorted({int(s) for s in seqs if s is not None})
    path = landing_dir / "landing.sqlite" if landing_dir else None
    days: dict[int, str] = {}
    if wanted and path is not None and path.exists():
        with closing(_ro(path)) as db:
            days = {seq: (at or "")[:10] or None for seq, at in db.execute(
                f"SELECT seq, received_at FROM receipt WHERE seq IN ({', '.join('?' * len(wanted))})", wanted)}
    return lambda seq: None if seq is None else days.get(int(seq))


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
