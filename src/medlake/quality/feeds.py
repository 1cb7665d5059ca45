"""Source-level (feed) checks: is every source sending every day, and in its usual volume?

They run over any table with one row per received message or file: a source column and a received-at
timestamp (the landing layer's record of what arrived). One query counts rows per source and day; the
rest is arithmetic on that small result:

- `feedTimeliness`: days with nothing from a source between its first day and the last day seen in the
  feed (any source) — a silent feed is flagged; threshold 0 (any missing day fails).
- `feedVolume`: days whose count is below `drop` × the median of the source's previous 7 days with data.

Results have the same shape as every other check (cdm_table = the feed table, cdm_field = the source).
"""
from __future__ import annotations

import datetime as dt
import statistics

from medlake.quality.checks import Check
from medlake.quality.compile import q

TYPES = {
    "feedTimeliness": ("Plausibility", "Temporal", "Validation",
                       "Days without any data from source @source between its first day and the feed's last day."),
    "feedVolume": ("Plausibility", "Atemporal", "Validation",
                   "Days on which source @source sent less than @drop of the median of its previous 7 days."),
}


def feed_checks(table: str, source: str, drop: float) -> list[Check]:
    out = []
    for name, (cat, sub, ctx, desc) in TYPES.items():
        out.append(Check(name, "SOURCE", table, source, threshold=0.0, category=cat, subcategory=sub, context=ctx,
                         severity="feed", description=desc.replace("@source", source).replace("@drop", f"{drop:g}"),
                         source="medlake"))
    return out


def run_feeds(engine, cfg: dict, result) -> list[dict]:
    """Results of the feed checks for every source in `cfg['table']` (see `site.feed_config`)."""
    table, scol, tcol, drop = cfg["table"], cfg["source"], cfg["received_at"], cfg["drop"]
    if table not in [t.lower() for t in engine.tables()]:
        c = feed_checks(table, "*", drop)
        return [result(x, "not_applicable", reason=f"feed table {table} absent") for x in c]
    rows = engine.query(
        f"SELECT CAST({q(scol)} AS VARCHAR) AS s, CAST({q(tcol)} AS DATE) AS d, count(*) AS n FROM {q(table)} "
        f"WHERE {q(tcol)} IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2").to_pylist()
    if not rows:
        return [result(x, "not_applicable", reason=f"feed table {table} empty") for x in feed_checks(table, "*", drop)]
    last = max(r["d"] for r in rows)
    per: dict[str, dict[dt.date, int]] = {}
    for r in rows:
        per.setdefault(r["s"], {})[r["d"]] = r["n"]
    out = []
    for src, days in sorted(per.items()):
        timely, volume = feed_checks(table, src, drop)
        first = min(days)
        span = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
        missing = [d for d in span if d not in days]
        r = result(timely, "counted", len(missing), len(span))
        r["examples"], r["example_field"] = [d.isoformat() for d in missing[:10]], "day"
        out.append(r)
        seen = sorted(days)
        low, judged = [], 0
        for i, d in enumerate(seen):
            prev = [days[x] for x in seen[max(0, i - 7):i]]
            if len(prev) >= 3:
                judged += 1
                if days[d] < drop * statistics.median(prev):
                    low.append(d)
        r = result(volume, "counted", len(low), judged)
        r["examples"], r["example_field"] = [d.isoformat() for d in low[:10]], "day"
        out.append(r)
    return out
