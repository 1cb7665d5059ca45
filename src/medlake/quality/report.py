"""The HTML report: one self-contained file (inline CSS, JS and SVG; nothing fetched from the network)."""
from __future__ import annotations

import datetime as dt
import math
import re
import shlex
import tomllib
from functools import cache
from html import escape
from importlib import resources
from pathlib import Path

from medlake.quality.feeds import FEED_BURST, TYPES as FEED_TYPES

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}td,th{padding:3px 6px;border-bottom:1px solid #eee;text-align:left;
vertical-align:top}th{background:#f6f6f6}.num{text-align:right;font-variant-numeric:tabular-nums}
td.num{white-space:nowrap}.num small{white-space:normal}.wrap{overflow-x:auto}svg[viewBox]{max-width:100%;height:auto}
.big{font-size:2.4em;font-weight:600}.failed{color:#b00020}.passed{color:#1b7a2f}.error{color:#a15c00}
.not_applicable{color:#666}.cards{display:flex;gap:2em;flex-wrap:wrap}.card{padding:.6em 1em;background:#f6f6f6;
border-radius:6px;color:inherit;text-decoration:none}a.card:hover{outline:1px solid #999}
code{font-size:12px}small{color:#666}input[type=search]{padding:4px;width:22em;max-width:90%}
.filters{display:flex;flex-wrap:wrap;gap:.4em 1.2em;align-items:center}#n{font-weight:600}
.warning{background:#fff4e0;border-left:4px solid #a15c00;padding:.5em 1em}
table.checks,#types{table-layout:fixed}table.checks td{overflow-wrap:anywhere}table.checks td.num{overflow-wrap:normal}
@media (max-width:1000px),print{table.checks,table.checks>*{display:block}table.checks colgroup,table.checks th:last-child
{display:none}table.checks tr{display:grid;grid-template-columns:6.5em minmax(0,1fr) minmax(0,1fr) 5.5em 6.5em 5.5em 6.5em;
border-bottom:1px solid #ddd}table.checks td{border:0}table.checks td:last-child{grid-column:1/-1}}
@media screen and (max-width:720px){table.checks thead,#types thead,#types colgroup{display:none}
#types,#types tbody{display:block}table.checks tr,#types tr{display:flex;flex-wrap:wrap;column-gap:.5em;
border-bottom:1px solid #ddd}table.checks td,#types td{border:0;padding:2px 0;text-align:left}td:empty{display:none}
table.checks td:nth-child(2){flex:1 1 12em}table.checks td:nth-child(3),#types td:first-child{flex:1 1 100%}
#types td:nth-child(4){flex:1 1 100%;order:9}table.checks td:nth-child(5)::before{content:"of "}
table.checks td:nth-child(6)::before{content:"("}table.checks td:nth-child(6)::after{content:")"}
table.checks td:nth-child(7)::before{content:"· threshold "}#types td:nth-child(2)::after{content:" failed"}
#types td:nth-child(3)::after{content:" could not run"}#types td:nth-child(5)::before{content:"violated "}
#types td:nth-child(6)::before{content:"worst "}table.checks td:nth-child(2) b{overflow-wrap:normal}}
.remark{color:#5a3e00}.new{font-size:11px;color:#fff;background:#b00020;border-radius:3px;padding:0 4px}
p.next{margin:.3em 0 0;padding:.2em .5em;background:#f3f7ff;border-left:3px solid #3a6fd8}.print{display:none}
@media print{body{margin:0;max-width:none;font-size:11px;padding:0}code{font-size:10px}.wrap{overflow:visible}
table.checks{min-width:0}#all-checks,.ex{display:none}.print{display:block}tr,.card,svg{break-inside:avoid}
h2{break-after:avoid}a{color:inherit;text-decoration:none}}
"""

JS = """
let rows, timer;
function filt(){const $=id=>document.getElementById(id), q=$('q').value.toLowerCase().trim(), s=$('st').value,
t=$('tb').value, nw=$('nw')&&$('nw').checked;
rows=rows||[...document.querySelectorAll('#all tbody tr[data-s]')].map(tr=>[tr,(tr.textContent+' '+
tr.dataset.s.replace('_',' ')).toLowerCase()]);
let n=0;for(const [tr,text] of rows){const ok=(!s||tr.dataset.s===s)&&(!t||tr.dataset.t===t)&&(!nw||tr.hasAttribute(
'data-n'))&&text.includes(q);tr.style.display=ok?'':'none';n+=ok}
const f=x=>x.toLocaleString('en');$('n').textContent=n===rows.length?`all ${f(n)} checks`:n?`${f(n)} of ${f(rows.length)}`
+' checks':'no check matches'}
function later(){clearTimeout(timer);timer=setTimeout(filt,150)}
function newOnly(){document.getElementById('nw').checked=true;filt()}
"""


def percent(x) -> str:
    """A share as a percentage, two decimals; a share under 0.01% (or just under all) with as many as it takes to
    read as what it is, never 0.00% (or 100.00%)."""
    if x is None:
        return ""
    v = 100 * x
    if 0 < v < 0.01 or 99.99 < v < 100:
        return f"{v:.{2 - math.floor(math.log10(min(v, 100 - v)))}f}".rstrip("0") + "%"
    return f"{v:.2f}%"


def _bars(rows: list[tuple[str, float | None, str]]) -> str:
    """Horizontal bars (SVG) of pass rates."""
    h = 22 * len(rows) + 10
    said = "; ".join(f"{label} {percent(rate) or 'n/a'} {extra}".strip() for label, rate, extra in rows)
    out = [f'<svg width="760" height="{h}" viewBox="0 0 760 {h}" role="img" aria-label="pass rates: {escape(said)}">']
    for i, (label, rate, extra) in enumerate(rows):
        y = 5 + 22 * i
        w = 0 if rate is None else 360 * rate
        out.append(f'<text x="0" y="{y + 14}" font-size="12">{escape(label)}</text>'
                   f'<rect x="170" y="{y}" width="360" height="16" fill="#eee"/>'
                   f'<rect x="170" y="{y}" width="{w:.1f}" height="16" fill="#3b7dd8"/>'
                   f'<text x="540" y="{y + 14}" font-size="12">{percent(rate) or "n/a"} {escape(extra)}</text>')
    out.append("</svg>")
    return "".join(out)


TREND = (("all checks", "#3b7dd8", 3, ""), ("Completeness", "#1b7a2f", 1.5, "7 3"),
         ("Conformance", "#a15c00", 1.5, "2 3"), ("Plausibility", "#7b3fb0", 1.5, "10 3 2 3"))


def _when(run_ids: list[str]) -> list[str]:
    """Runs' ids (their UTC start, 20261207T053310567293Z) as short axis labels: 12-07 05:33, or 05:33:10 when
    the runs are of one day, or 2026-12-07 when they span years; the first says its year (and day) either way."""
    try:
        times = [dt.datetime.strptime(r, "%Y%m%dT%H%M%S%fZ") for r in run_ids]
    except ValueError:
        return run_ids
    one_day, one_year = times[0].date() == times[-1].date(), times[0].year == times[-1].year
    form = "%H:%M:%S" if one_day else "%m-%d %H:%M" if one_year else "%Y-%m-%d"
    first = "%Y-%m-%d %H:%M:%S" if one_day else "%Y-%m-%d %H:%M" if one_year else "%Y-%m-%d"
    return [t.strftime(first if i == 0 else form) for i, t in enumerate(times)]


def _trend(history: list[dict]) -> str:
    """The pass rate of each run, of all checks and per Kahn category, as lines over the store's runs: a y axis of
    round steps with grid lines, a dash pattern per line (lines of equal rates stay told apart), the latest rates
    in the legend and, for a few runs, each run's rate of all checks written at its point."""
    runs = [h for h in history if h.get("pass_rate") is not None]
    if len(runs) < 2:
        return "<p><small>Trends appear after two or more runs.</small></p>"

    def rate(h, name):
        return h["pass_rate"] if name == "all checks" else (h.get("by_category") or {}).get(name, {}).get("pass_rate")

    emptied = {h["run_id"]: (h.get("since_last_run") or {}).get("emptied") for h in runs}
    series = [(name, color, width, dash, [rate(h, name) for h in runs]) for name, color, width, dash in TREND]
    series = [x for x in series if any(r is not None for r in x[4])]
    w, h, top, bottom, left, right = 700, 230, 16, 170, 44, 30
    low = 100 * min(r for *_, rs in series for r in rs if r is not None)
    step = next(s for s in (0.5, 1, 2, 5, 10, 20, 25) if 100 - low <= 4 * s)  # four steps down from 100%
    lo = 100 - 4 * step
    xs = [left + (w - left - right) * i / (len(runs) - 1) for i in range(len(runs))]

    def y(r):
        return bottom - (bottom - top) * (100 * r - lo) / (100 - lo)

    latest = [f"{name} {percent(next(r for r in rs[::-1] if r is not None))}" for name, *_, rs in series]
    out = [f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="pass rate across runs">'
           f'<desc>{len(runs)} runs, {escape(runs[0]["run_id"])} to {escape(runs[-1]["run_id"])}; the latest: '
           f'{escape("; ".join(latest))}</desc>']
    for i in range(5):  # the y axis: 100% and four round steps down, a grid line each
        gy = y((100 - i * step) / 100)
        grid = "#999" if i == 4 else "#e4e4e4"  # (the lowest line is the axis)
        out.append(f'<line x1="{left}" y1="{gy:.1f}" x2="{w - right}" y2="{gy:.1f}" stroke="{grid}"/>'
                   f'<text x="{left - 4}" y="{gy + 4:.1f}" font-size="11" text-anchor="end">{100 - i * step:g}%</text>')
    every = math.ceil(len(runs) / 6)  # the x axis: about six runs named by their start (UTC), the last always
    named = list(range(0, len(runs) - 1, every))
    if (len(runs) - 1 - named[-1]) * (xs[1] - xs[0]) < 110:  # the last, right-aligned, would run into it
        named.pop()
    if len(named) > 1 and named[1] * (xs[1] - xs[0]) < 170:  # the first (with its year), left-aligned, too
        named.pop(1)
    labels = _when([r["run_id"] for r in runs])
    out.append(f'<text x="{w - right}" y="{bottom + 30}" font-size="10" fill="#555" text-anchor="end">'
               "runs in order, by their start (UTC)</text>")

    def anchor(i, n):
        return "start" if i == 0 else "end" if i == n - 1 else "middle"

    for i in [*named, len(runs) - 1]:
        out.append(f'<line x1="{xs[i]:.1f}" y1="{bottom}" x2="{xs[i]:.1f}" y2="{bottom + 4}" stroke="#999"/>'
                   f'<text x="{xs[i]:.1f}" y="{bottom + 16}" font-size="11" text-anchor="{anchor(i, len(runs))}">'
                   f'{escape(labels[i])}</text>')
    for name, color, width, dash, rs in series:
        pts = [(x, y(r), run["run_id"], r) for x, r, run in zip(xs, rs, runs) if r is not None]
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="{width}" stroke-dasharray="{dash}" '
                   f'data-series="{escape(name)}" points="{" ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in pts)}"/>')
        out += [f'<circle cx="{px:.1f}" cy="{py:.1f}" ' + (  # a run after a table was emptied: hollow, said
                    f'r="4" fill="#fff" stroke="{color}"' if emptied.get(rid) and name == "all checks" else
                    f'r="{2.5 if len(runs) <= 60 else 1.2}" fill="{color}"')
                + f'><title>{escape(rid)}, {escape(name)}: {percent(r)}'
                + (f"; table(s) emptied since the run before: {escape(', '.join(emptied[rid]))}"
                   if emptied.get(rid) else "") + '</title></circle>' for px, py, rid, r in pts]
    if len(runs) <= 8:  # a few runs: each one's rate of all checks written under its point, over the lines
        out += [f'<text class="value" x="{x:.1f}" y="{y(r) + 14:.1f}" font-size="10" stroke="#fff" stroke-width="3" '
                f'paint-order="stroke" text-anchor="{anchor(i, len(runs))}">{percent(r)}</text>'
                for i, (x, r) in enumerate(zip(xs, series[0][4]))]
    x = 4
    for (name, color, width, dash, _), label in zip(series, latest):  # the legend under the chart, latest rates
        out.append(f'<line x1="{x}" y1="{h - 12}" x2="{x + 22}" y2="{h - 12}" stroke="{color}" stroke-width="{width}" '
                   f'stroke-dasharray="{dash}"/><text x="{x + 26}" y="{h - 8}" font-size="11">{escape(label)}</text>')
        x += 32 + 6.8 * len(label)
    out.append("</svg>")
    head = "".join(f"<th class='num'>{escape(name)}</th>" for name, *_ in series)  # the values as a table too
    body = "".join(f"<tr><td>{escape(run['run_id'])}</td>" + "".join(f"<td class='num'>{percent(rs[i])}</td>"
                                                                      for *_, rs in series) + "</tr>"
                   for i, run in enumerate(runs))
    out.append(f"<details class=trend><summary><small>the pass rates as a table</small></summary><div class=wrap><table>"
               f"<thead><tr><th>run</th>{head}</tr></thead><tbody>{body}</tbody></table></div></details>")
    return "".join(out)


@cache
def _steps() -> dict[str, dict[str, str]]:
    return tomllib.loads(resources.files("medlake.quality").joinpath("next_steps.toml").read_text("utf-8"))


def run_at(out: Path | None = None, store: str | None = None) -> str:
    """The options of `medlake quality show` that find a run: its folder (`--out`, unless the default) and its store
    (`--store`, the run's own without its password: the command works pasted anywhere)."""
    at = "" if out is None or Path(out) == Path("quality") else f" --out {shlex.quote(str(out))}"
    return at + (f" --store {shlex.quote(store)}" if store else "")


def next_step(r: dict, own: bool = True, out: Path | None = None, store: str | None = None) -> str | None:
    """What to do about a failed check of this type (next_steps.toml), with its own id, table, field and source;
    None for a type without one (a site's own check). `own`: the store's CDM is medlake's (else the steps that name
    medlake's pipeline are said for the site's own ETL: its `[elsewhere]`). `out`, `store`: the folder and store of
    the run (the command that lists the rows names them: `run_at`)."""
    steps = _steps()
    text = (not own and steps["elsewhere"].get(r["check_name"])) or steps["steps"].get(r["check_name"])
    names = {"check_id": r["check_id"], "table": r["cdm_table"], "field": r["cdm_field"] or "the field",
             "source": r.get("data_source") or "the source",
             "show": f"medlake quality show {r['check_id']} --rows 50{run_at(out, store)}"}
    return text.format(**names) if text else None


FEED_CHECKS = tuple(FEED_TYPES)  # they count days, the other checks rows (records, receipts)


def counted(r: dict, n: int | None = None) -> str:
    """`n` (the check's violated rows by default) in what the check counts: "3 days" for a feed check, "1 row"."""
    n = r["num_violated_rows"] if n is None else n
    return f"{n:,} {'day' if r['check_name'] in FEED_CHECKS else 'row'}{'s' * (n != 1)}"


def failed_first(results: list[dict]) -> list[dict]:
    """The failed checks, fatal ones first, then a feed's ongoing incident (`ongoing`: a share of the source's whole
    history would rank it below a feed retired weeks ago), then by the share of rows they find (as the report lists
    them)."""
    now = ongoing(results)
    return sorted((r for r in results if r["status"] == "failed"),
                  key=lambda r: (r["severity"] != "fatal", not (r["check_name"] in FEED_CHECKS and r.get(
                      "data_source") in now), -(r["pct_violated_rows"] or 0)))


def ongoing(results: list[dict]) -> set[str]:
    """The sources whose last judged day is missing or a drop (feedVolume's `daily_marks`; days off and the day in
    progress aside)."""
    return {r["data_source"] for r in results if r.get("check_name") == "feedVolume" and r.get("daily_marks")
            and _tail(r)[0] in ("x", "v")}


def _tail(r: dict) -> tuple[str, int, int]:
    """A feedVolume's tail, days off and the day in progress aside: its last judged day's mark ('' for none), the
    missing days its series ends with (none when the day in progress has data) and the index of the day before them
    (-1 for none)."""
    marks = r["daily_marks"]
    judged = marks.rstrip("~-")
    before = len(judged.rstrip("x-"))
    sent_today = marks.endswith("~") and r["daily_counts"][-1]
    return judged[-1:], 0 if sent_today else judged[before:].count("x"), before - 1


def where(r: dict) -> str:
    """Where a check looks: table.field, its source, concept and unit."""
    w = r["cdm_table"] + (f".{r['cdm_field']}" if r["cdm_field"] else "")
    if r.get("data_source"):
        w = f"source {r['data_source']}: {w}"
    if r["concept_id"] is not None:
        w += f" [concept {r['concept_id']}" + (f", unit {r['unit_concept_id']}" if r["unit_concept_id"] else "") + "]"
    return w


def _code(text: str) -> str:
    """`command` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _by_type(checks: list[dict]) -> str:
    """One line per check type that failed or could not run: how many of its checks failed, how many could not run,
    where (table.field, source, concept), the rows the failed ones find and the worst share — the kinds of problem
    at a glance, before the checks one by one."""
    by: dict[str, list[dict]] = {}
    for r in checks:
        by.setdefault(r["check_name"], []).append(r)
    rows = []
    for name, rs in sorted(by.items(), key=lambda kv: (-sum(r["status"] == "failed" for r in kv[1]), -len(kv[1]),
                                                       kv[0])):
        failed = [r for r in rs if r["status"] == "failed"]
        errors = len(rs) - len(failed)
        places = [where(r) for r in rs]
        more = f" <small>(+{len(places) - 6} more)</small>" if len(places) > 6 else ""
        # checks that could only stop with an error measured nothing: not "0 rows"
        violated = counted(rs[0], sum(r["num_violated_rows"] or 0 for r in failed)) if failed else "not measured"
        rows.append(
            # a long type name may break before a capital (measure<wbr>Condition…), not over its counts in print
            f"<tr><td><b>{re.sub(r'(?<=[a-z])(?=[A-Z])', '<wbr>', escape(name))}</b><br><small>{escape(rs[0]['category'])} / "
            f"{escape(rs[0]['subcategory'] or '-')}</small></td><td class='num failed'>{len(failed)}</td>"
            f"<td class='num error'>{errors or ''}</td>"
            f"<td style='overflow-wrap:anywhere'><small>{escape(', '.join(places[:6]))}</small>{more}</td>"
            f"<td class='num'>{violated}</td>"
            f"<td class='num'>{percent(max(r['pct_violated_rows'] or 0 for r in failed)) if failed else ''}</td></tr>")
    return ("<div class=wrap><table id='types'><colgroup><col style='width:22%'><col style='width:5em'>"
            "<col style='width:6em'><col><col style='width:8em'><col style='width:6em'></colgroup><thead><tr>"
            "<th>check type</th><th class='num'>failed</th><th class='num'>could not run</th><th>where</th>"
            "<th class='num'>violated</th><th class='num'>worst %</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _row(r: dict, new: frozenset = frozenset(), steps: bool = True, own: bool = True, out: Path | None = None,
         store: str | None = None) -> str:
    """A check as a table row; `steps`: with what to do under a failed check (the failures' table, not the list
    of all checks, which would repeat it), for medlake's own store or (`own` False) another CDM, its run in `out`
    of `store`."""
    note = r.get("error") or r.get("not_applicable_reason") or r.get("answered_by") or ""
    step = next_step(r, own, out, store) if steps and r["status"] == "failed" else None
    step = f"<p class=next><small><b>What to do:</b> {_code(escape(step))}</small></p>" if step else ""
    ex = ", ".join(r.get("examples") or [])
    if ex:
        ex = f"<small class=ex><br>examples ({escape(r.get('example_field') or 'id')}): {escape(ex)}</small>"
    vr, dr = ("" if n is None else counted(r, n) if r["check_name"] in FEED_CHECKS else f"{n:,}"
              for n in (r["num_violated_rows"], r["num_denominator_rows"]))  # (a feed check's: days)
    badge = "<br><span class=new>new</span>" if r["check_id"] in new else ""
    site = f"<br><small>the site's; the check's own {r['default_threshold']:g}%</small>" if "default_threshold" in r \
        else ""
    remark = f"<br><small class=remark><b>Note:</b> {escape(r['notes'])}</small>" if r.get("notes") else ""
    severity = r.get("severity") or "-"
    severity = "<b>fatal</b>" if severity == "fatal" else escape(severity)
    return (f'<tr data-s={r["status"]} data-t="{escape(r["cdm_table"] or "")}"{" data-n" if badge else ""}>'
            f'<td class="{r["status"]}">{r["status"].replace("_", "_<wbr>")}{badge}</td>'
            f'<td><b>{escape(r["check_name"])}</b><br><small>{escape(r["category"])} / '
            f'{escape(r["subcategory"] or "-")} / {escape(r["context"])} · severity {severity}'
            + (" · the site's check" if r.get("source") == "site" else "") + '</small>'
            f'<br><small><code>{escape(r["check_id"])}</code></small></td>'
            f'<td>{escape(where(r))}</td><td class="num">{vr}</td><td class="num">{dr}</td>'
            f'<td class="num">{percent(r["pct_violated_rows"])}</td><td class="num">{r["threshold"]:g}%{site}</td>'
            f'<td><small>{escape(r["description"])}</small>{remark}{ex}'
            f'{"<br><small>" + escape(note) + "</small>" if note else ""}{step}</td></tr>')


def _checks(rows: str, id: str = "") -> str:
    """A table of checks, one `_row` each, in a box that scrolls sideways in a narrow window."""
    return (f"<div class=wrap><table{f' id={id}' if id else ''} class='checks'>{HEAD}<tbody>"
            f"{rows or '<tr><td colspan=8>none</td></tr>'}</tbody></table></div>")


HEAD = ('<colgroup><col style="width:6.5em"><col style="width:20%"><col style="width:16%"><col style="width:5.5em">'
        '<col style="width:6.5em"><col style="width:5.5em"><col style="width:6.5em"><col></colgroup>'
        '<thead><tr><th>status</th><th>check</th><th>where</th><th class="num">violated</th><th class="num">of</th>'
        '<th class="num">%</th><th class="num">threshold</th><th>details</th></tr></thead>')


def _folder(run) -> Path | None:
    """The folder of the run's folder (`--out`), where there is one."""
    return run.dir.parent if getattr(run, "dir", None) else None


def render(run, history: list[dict]) -> str:
    from medlake.quality.runner import partial

    s = run.summary
    results = run.results
    failed = failed_first(results)
    since = s.get("since_last_run")
    new = frozenset(since["new_failures"]) | frozenset(since["new_errors"]) if since else frozenset()
    emptied = (since or {}).get("emptied") or []
    errors = [r for r in results if r["status"] == "error"]
    order = {"failed": 0, "error": 1, "passed": 2, "not_applicable": 3}
    cats = [(k, v["pass_rate"], f"({v['passed']:,}/{v['passed'] + v['failed'] + v['errors']:,})")
            for k, v in s["by_category"].items()]
    tables = "".join(
        f'<tr><td>{escape(t)}</td><td class="num">{v["passed"]:,}</td><td class="num failed">{v["failed"]:,}</td>'
        f'<td class="num">{v["errors"]:,}</td><td class="num">{v["not_applicable"]:,}</td>'
        f'<td class="num">{percent(v["pass_rate"])}</td></tr>'
        for t, v in sorted(s["by_table"].items(), key=lambda kv: (-kv[1]["failed"], kv[0])))

    def card(n, label, cls, href=None):  # a count at the top; a link to its section when there is one
        tag = f"a class='card' href='#{href}'" if href else "div class='card'"
        return f"<{tag}><div class='big {cls}'>{n:,}</div>{label}</{tag.split()[0]}>"

    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>medlake data quality — {escape(s['run_id'])}</title><style>{CSS}</style><script>{JS}</script></head><body>",
        f"<h1>Data quality report</h1><p><small>run {escape(s['run_id'])} · {escape(s['started'])} · "
        f"{escape(s['engine'])} store {escape(s['store'])} · OMOP CDM v{escape(s['cdm_version'])} ({escape(s.get('cdm_version_from', ''))}) · "
        f"{s['queries']} queries, {s['seconds']} s · rechecked {len(s['rechecked_tables'])} table(s), "
        f"reused {len(s['reused_tables'])}"
        + (f", resumed {len(s['resumed_tables'])} from the interrupted run" if s.get("resumed_tables") else "")
        + (f" · not checked: {escape(', '.join(s['excluded_tables']))}" if s.get("excluded_tables") else "")
        + (f" · only the tables {escape(', '.join(s['tables']))}" if s.get("tables") else "")
        + (f" · DQD's rules and thresholds from the site's files {escape(', '.join(Path(f).name for f in s['dqd_thresholds']))}"
           if s.get("dqd_thresholds") else "")
        + (f" · only the check types {escape(', '.join(s['check_names']))}" if s.get("check_names") else "")
        + (f" · only the check levels {escape(', '.join(s['check_levels']))}" if s.get("check_levels") else "")
        + (f" · only the check severities {escape(', '.join(s['check_severity']))}" if s.get("check_severity") else "")
        + (f" · only the rows of cohort {s['cohort']['cohort_definition_id']}'s {s['cohort']['subjects']:,} person(s) "
           f"({escape(s['cohort']['table'])})" if s.get("cohort") else "")
        + "</small></p>",
        *(f"<p class='warning'>warning: {escape(w)}</p>" for w in s.get("warnings", [])),
        "<div class='cards'>",
        f"<div class='card'><div class='big'>{percent(s['pass_rate']) or 'n/a'}</div>pass rate "
        "(passed / (passed + failed + errors))</div>",
        card(s["passed"], "passed", "passed"), card(s["failed"], "failed", "failed", "failed" if failed else None),
        card(s["errors"], "errors: could not run", "error", "errors" if errors else None),
        card(s["not_applicable"], "not applicable", "not_applicable"), "</div>",
        *([f"<p><small>since run {escape(since['run_id'])}: {len(since['new_failures'])} new failure(s), "
           f"{len(since['new_errors'])} new error(s)"
           + (" (marked <span class=new>new</span>)" if new else "")
           + (f", {len(since['more_days'])} feed check(s) with more days" if since.get("more_days") else "")
           + f", {len(since['fixed'])} fixed"
           + (f"; table(s) emptied since: {escape(', '.join(emptied))} (its checks not applicable now, not fixed)"
              if emptied else "")
           + (" · <a href='#all-checks' onclick='newOnly()'>list the new ones</a>" if new else "")
           + "</small></p>"] if since else []),
        *_emptied(results, since, history),
        "<h2>Pass rate by Kahn category</h2>", _bars(cats),
        "<h2>Pass rate across runs</h2>", _trend(history),
        *(["<p><small>Runs of the same tables and check types as this one only.</small></p>"]
          if partial(s) else []),
        *([f"<h2>Failures by check type ({len({r['check_name'] for r in failed + errors})})</h2>",
           _by_type(failed + errors)] if failed or errors else []),
    ]
    if errors:  # before the failures: where a check could not run, the run measured nothing
        parts += [f"<h2 id='errors'>Checks that could not run ({len(errors)})</h2>",
                  _checks("".join(_row(r, new) for r in errors))]
    parts += [
        f"<h2 id='failed'>Failed checks ({len(failed)})</h2>",
        "<p><small>Fatal ones first (their severity is under the check's name), then a feed whose last day is missing "
        "or low, then by the share of rows (a feed check's: days) they find."
        "</small></p>" if failed else "",
        _checks("".join(_row(r, new, own=s.get("medlake_store", True), out=_folder(run), store=s["store"])
                        for r in failed), "failures"),
        "<p class='hint'><small>A check's query and its violating rows: <code>medlake quality show CHECK_ID"
        f"{escape(run_at(_folder(run), s['store']))}</code></small></p>",
        *_fixed(results, since),
    ]
    parts += _sources(results)
    parts += _feeds(results)
    parts += [
        "<h2>By table</h2><div class=wrap><table><thead><tr><th>table</th><th class='num'>passed</th>"
        "<th class='num'>failed</th><th class='num'>errors</th><th class='num'>not applicable</th>"
        f"<th class='num'>pass rate</th></tr></thead><tbody>{tables}</tbody></table></div>",
        f"<p class='print'>The list of all {len(results):,} checks is left out of the printout: open report.html to "
        "read and filter it.</p>",
        f"<section id='all-checks'><h2>All checks ({len(results)})</h2>", _filters(results, since, new),
        _checks("".join(_row(r, new, steps=False) for r in sorted(results, key=lambda r: order.get(r["status"], 9))),
                "all"),
        "</section></body></html>",
    ]
    return "".join(parts)


def _emptied(results: list[dict], since: dict | None, history: list[dict]) -> list[str]:
    """A warning beside the cards of the tables emptied since the last run (`since_last_run.emptied`): their checks
    are not applicable now, which raises the pass rate and lowers the failures with nothing fixed."""
    emptied = (since or {}).get("emptied")
    if not emptied:
        return []
    n = sum(r["status"] == "not_applicable" and r["cdm_table"] in emptied for r in results)
    then = next((h for h in history if h.get("run_id") == since["run_id"]), None)
    failed = sum(((then or {}).get("by_table") or {}).get(t, {}).get("failed", 0) for t in emptied)
    now = sum(r["status"] == "failed" and r["cdm_table"] in emptied for r in results)
    its = "its" if len(emptied) == 1 else "their"
    return [f"<p class='warning' id='emptied'>warning: table(s) emptied since run {escape(since['run_id'])}: "
            f"{escape(', '.join(emptied))} (rows then, none now): {its} {n:,} checks that read rows are not applicable "
            "now" + (f" ({its} failed checks: {failed:,} then, {now:,} now)" if then else "")
            + ", so the pass rate rising and the failures falling are not a fix: load the table(s) again, or find "
            "the step that emptied them</p>"]


def _filters(results: list[dict], since: dict | None, new: frozenset) -> str:
    """The filter over all checks: words, a status, a table, only the new failures and errors since the last run;
    how many checks match (said to a screen reader as it changes)."""
    count = {s: sum(r["status"] == s for r in results) for s in ("failed", "error", "not_applicable", "passed")}
    words = {"failed": "failed", "error": "could not run (error)", "not_applicable": "not applicable",
             "passed": "passed"}
    status = "".join(f"<option value={s}>{words[s]} ({n:,})</option>" for s, n in count.items())
    tables = "".join(f"<option>{escape(t)}</option>" for t in sorted({r["cdm_table"] for r in results if r["cdm_table"]}))
    only = (f"<label><input id='nw' type='checkbox' onchange='filt()'> only the {len(new):,} new since run "
            f"{escape(since['run_id'])} (failures and errors)</label> " if new else "")
    return ("<p class=filters><span><label for='q'>Filter the checks: </label><input id='q' type='search' oninput='later()' "
            "placeholder='table, check, status…'></span> <label>status <select id='st' onchange='filt()'><option value=''>"
            f"any</option>{status}</select></label> <label>table <select id='tb' onchange='filt()'><option value=''>"
            f"any</option>{tables}</select></label> {only}<output id='n' aria-live='polite'>all {len(results):,} "
            "checks</output></p>")


def _fixed(results: list[dict], since: dict | None) -> list[str]:
    """The checks that failed in the store's previous run and pass now, with where they look (those of a table
    emptied since are not among them: not applicable now, said so)."""
    if not since or not since["fixed"]:
        return []
    by_id = {r["check_id"]: r for r in results}
    rows = "".join(_row(by_id[c]) for c in since["fixed"] if c in by_id)
    emptied = since.get("emptied")
    note = (f"<p><small>The failed checks of the table(s) emptied since, {escape(', '.join(emptied))}, are not "
            "applicable now: not counted as fixed.</small></p>" if emptied else "")
    return [f"<h2>Fixed since run {escape(since['run_id'])} ({len(since['fixed'])})</h2>", note,
            _checks(rows, "fixed")]


def _sources(results: list[dict]) -> list[str]:
    """One line per data source: completeness, duplicates, quarantine, mapping coverage, units, its days."""
    by: dict[str, list[dict]] = {}
    for r in results:
        if r.get("data_source"):
            by.setdefault(r["data_source"], []).append(r)
    if not by:
        return []

    def rate(rs, name):
        v = sum(r["num_violated_rows"] or 0 for r in rs if r["check_name"] == name)
        d = sum(r["num_denominator_rows"] or 0 for r in rs if r["check_name"] == name)
        return f"{percent(v / d)} <small>({v:,} of {d:,})</small>" if d else "<small>n/a</small>"

    names = [("sourceMandatoryCompleteness", "missing mandatory fields"), ("sourceDuplicateRecords", "duplicate records"),
             ("sourceDuplicateReceipts", "duplicate receipts"), ("sourceQuarantined", "quarantined (open)"),
             ("sourceMappingCoverage", "rows without a standard concept"),
             ("sourceUnitConsistency", "results in an unusual unit"), ("feedTimeliness", "days without data"),
             ("feedVolume", "days of low volume")]
    head = "".join(f"<th>{escape(label)}</th>" for _, label in names)
    rows = "".join(
        f"<tr><td><b>{escape(src)}</b></td><td class='num failed'>{sum(r['status'] == 'failed' for r in rs)}</td>"
        + "".join(f"<td class='num'>{rate(rs, n)}</td>" for n, _ in names) + "</tr>"
        for src, rs in sorted(by.items()))
    return [f"<h2>By source ({len(by)})</h2><div class=wrap><table><thead><tr><th>source</th><th class='num'>failed "
            f"checks</th>{head}</tr></thead><tbody>{rows}</tbody></table></div>"]


def silent_now(results: list[dict]) -> list[str]:
    """The sources whose last judged days are missing (feedVolume's `daily_marks`: its days off and the day in
    progress aside), each as "SOURCE: nothing since DAY (N day(s) missing)": the incident a feed's engineer acts on
    first, which a check's share of the source's whole history ranks low. A source that sent today is not silent."""
    out = []
    for r in sorted((r for r in results if r.get("check_name") == "feedVolume" and r.get("daily_marks")),
                    key=lambda r: r["data_source"]):
        _, missing, i = _tail(r)
        if missing:
            last = next((j for j in range(i, -1, -1) if r["daily_counts"][j]), None)
            since = (dt.date.fromisoformat(r["daily_from"]) + dt.timedelta(days=last)).isoformat() if last is not None \
                else f"before {r['daily_from']}"
            out.append(f"{r['data_source']}: nothing since {since} ({missing} day(s) missing)")
    return out


MARKS = {".": ("sent", "#7a94c4", "sent"), "v": ("low", "#e08a00", "volume drop"),
         "^": ("burst", "#6a3d9a", f"a burst (more than {FEED_BURST:g}× the usual: a resend, a replay, a loop?)"),
         "x": ("missing", "#b00020", "nothing: a missing day"), "-": ("off", "#c8c8c8", "a day off (not expected)"),
         "~": ("today", "#b8c8e4", "the day in progress (not judged)")}


def _days(r: dict) -> tuple[dt.date, dt.date]:
    """The first and last day of a feed's series (feedVolume's `daily_from`, `daily_counts`)."""
    start = dt.date.fromisoformat(r["daily_from"])
    return start, start + dt.timedelta(days=len(r["daily_counts"]) - 1)


def _feeds(results: list[dict]) -> list[str]:
    """Per source, what it sent each of its last days (feedVolume's `daily_counts`): one bar a day, a missing day
    a pale red band, a volume drop orange, a day off grey; each bar titled with its day and count."""
    feeds = sorted((r for r in results if r["check_name"] == "feedVolume" and r.get("daily_counts")),
                   key=lambda r: r["data_source"])
    if not feeds:
        return []
    rows = []
    for r in feeds:
        (start, end), counts, marks = _days(r), r["daily_counts"], r["daily_marks"]
        top, w, h = max(counts) or 1, 6, 40
        bars = []
        for i, (n, m) in enumerate(zip(counts, marks)):
            # a day with nothing: a grey tick if a day off; a missing day a pale red band the chart's height
            bh = h if m == "x" else max(2, round(h * n / top))
            day = (start + dt.timedelta(days=i)).isoformat()
            kind, color, label = MARKS[m]
            pale = ' fill-opacity=".45"' if m == "x" else ""
            bars.append(f'<rect class="{kind}" x="{i * w}" y="{h - bh}" width="{w - 1}" height="{bh}" fill="{color}"'
                        f'{pale}><title>{day}: {n:,} ({label})</title></rect>')
        svg = (f'<svg width="{len(counts) * w}" height="{h}" role="img" aria-label="{escape(r["data_source"])} per day">'
               + "".join(bars) + "</svg>")
        rows.append(f"<tr><td><b>{escape(r['data_source'])}</b><br><small>{escape(r['cdm_table'])}</small></td>"
                    f"<td>{svg}<br><small>{start.isoformat()} to {end.isoformat()}"
                    f" · most in a day {max(counts):,} · {marks.count('x')} missing, {marks.count('v')} low"
                    + (f", {marks.count('^')} burst(s)" if "^" in marks else "") + "</small></td></tr>")
    legend = " · ".join(f"<span style='color:{c}'>■</span> {escape(label)}" for _, c, label in MARKS.values())
    return [f"<h2>Feeds: what each source sent per day (its last {max(len(r['daily_counts']) for r in feeds)} days)</h2>",
            f"<p><small>{legend}</small></p><div class=wrap><table class='feeds'><tbody>{''.join(rows)}</tbody></table></div>"]


def daily_text(r: dict) -> list[str]:
    """A feed's days (feedVolume's series) as text for a terminal: a heading, a block a day scaled to its most in
    a day (a blank for nothing), and under it the days that are not ordinary (`x` missing, `v` drop, `^` burst,
    `-` off), then the bursts (feedVolume's `bursts`: said, not failed)."""
    (start, end), counts, marks = _days(r), r["daily_counts"], r["daily_marks"]
    top = max(counts) or 1
    bars = "".join(" " if not n else "▁▂▃▄▅▆▇█"[min(7, (8 * n - 1) // top)] for n in counts)
    return [f"what {r['data_source']} sent, {start.isoformat()} to {end.isoformat()}, a character a day (most "
            f"{max(counts):,}); under it x: missing, v: volume drop, ^: a burst, -: a day off, ~: the day in "
            "progress", bars, marks.replace(".", " ").rstrip()] + (
        [f"bursts (more than {FEED_BURST:g}× the usual: a resend, a replay after an outage, a message loop?): "
         + "; ".join(r["bursts"])] if r.get("bursts") else [])


def write_html(run, history: list[dict]) -> None:
    (run.dir / "report.html").write_text(render(run, history), encoding="utf-8")


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(p.capitalize() for p in rest)


def dqd_results(run, queries: dict[str, str] | None = None) -> dict:
    """The run's DQD checks as DQD (2.1 and later) writes its results JSON — `CheckResults`, `Metadata` (the
    store's cdm_source row), `Overview` — so DQD's own viewer and the tools that read its files (ARES) take them.
    medlake's own and the site's checks are left out. The Overview counts as DQD's does (a check not applicable or
    in error is not failed, so counted as passed; run.json's pass rate leaves them out). `queries`: check id -> its
    query alone (`queryText`)."""
    from medlake.quality.checks import check_types

    s = run.summary
    types = check_types(s["cdm_version"])
    rows = []
    for r in run.results:
        if r["source"] != "dqd":
            continue
        st = r["status"]
        counts = (r["num_violated_rows"], r["pct_violated_rows"], r["num_denominator_rows"])
        if st == "not_applicable" and counts[2] is None and NOTHING_TO_COUNT.match(r["not_applicable_reason"] or ""):
            counts = (0, 0.0, 0)  # (DQD counts an empty table's rows, or a missing concept's, and reads them as NA)
        elif counts[2] == 0:
            counts = (counts[0], 0.0, 0)  # (DQD's templates: 0% of no rows)
        rows.append({
            "numViolatedRows": counts[0], "pctViolatedRows": counts[1], "numDenominatorRows": counts[2],
            "executionTime": None, "queryText": (queries or {}).get(r["check_id"], ""),
            "checkName": r["check_name"], "checkLevel": r["check_level"], "checkDescription": r["description"],
            "cdmTableName": (r["cdm_table"] or "").upper(), "cdmFieldName": (r["cdm_field"] or "").upper() or None,
            "conceptId": _text(r["concept_id"]), "unitConceptId": _text(r["unit_concept_id"]),
            "sqlFile": getattr(types.get(r["check_name"]), "sql_file", ""), "category": r["category"],
            "subcategory": r["subcategory"] or None, "context": r["context"], "warning": None, "error": r["error"],
            "checkId": r["check_id"], "failed": int(st == "failed"), "passed": int(st == "passed"),
            "isError": int(st == "error"), "notApplicable": int(st == "not_applicable"),
            "notApplicableReason": _dqd_reason(r),
            # (DQD's threshold files have no column for cdmTable and cdmField: no threshold, not 0)
            "thresholdValue": None if r["check_name"] in ("cdmTable", "cdmField") else r["threshold"],
            "notesValue": r.get("notes"),
        })

    def count(flag=None, category=None):
        return sum(1 for x in rows if (category is None or x["category"] == category) and (flag is None or x[flag]))

    failed, total = count("failed"), len(rows)  # DQD's summarizeResults
    overview = {"countTotal": total, "countPassed": total - failed, "countErrorFailed": count("isError"),
                "countThresholdFailed": failed, "countOverallFailed": failed,
                "percentPassed": round(100 * (total - failed) / total, 2) if total else None,
                "percentFailed": round(100 * failed / total, 2) if total else None}
    for cat in ("Plausibility", "Conformance", "Completeness"):
        overview |= {f"countTotal{cat}": count(None, cat), f"countFailed{cat}": count("failed", cat),
                     f"countPassed{cat}": count("passed", cat)}
    # every key of DQD's Metadata (cdm_source's columns), null where the store has no cdm_source row: ARES reads
    # cdmSourceAbbreviation, vocabularyVersion and cdmReleaseDate by name (DQD refuses to run without the row)
    meta = {_camel(k): None for k in CDM_SOURCE_COLUMNS} | {
        _camel(k): (v if v is None or isinstance(v, int) else str(v)) for k, v in (s.get("cdm_source") or {}).items()}
    meta["cdmVersion"] = meta["cdmVersion"] or s["cdm_version"]
    from medlake import __version__

    meta["dqdVersion"] = f"medlake {__version__}"
    start, end = (s[k].replace("T", " ")[:19] for k in ("started", "finished"))
    return {"startTimestamp": start, "endTimestamp": end, "executionTime": f"{s['seconds']} secs",
            "executionTimeSeconds": s["seconds"], "CheckResults": rows, "Metadata": [meta], "Overview": overview}


CDM_SOURCE_COLUMNS = ("cdm_source_name", "cdm_source_abbreviation", "cdm_holder", "source_description",
                      "source_documentation_reference", "cdm_etl_reference", "source_release_date", "cdm_release_date",
                      "cdm_version", "cdm_version_concept_id", "vocabulary_version")
# a not-applicable check whose counts are known though not queried: 0 rows (DQD's results carry them)
NOTHING_TO_COUNT = re.compile(r"table \S+ empty$|no records with concept ")


def _text(v) -> str | None:
    """An id as DQD's results write it (text: DQD reads its threshold files' rows as text)."""
    return None if v is None else str(v)


def _dqd_reason(r: dict) -> str | None:
    """A not-applicable check's reason in DQD's words (calculateNotApplicableStatus), where DQD has one for it."""
    why, table, fld = r["not_applicable_reason"], (r["cdm_table"] or "").upper(), (r["cdm_field"] or "").upper()
    if why is None or r["status"] != "not_applicable":
        return why
    if re.fullmatch(r"table \S+ absent", why):
        return f"Table {table} does not exist."
    if re.fullmatch(r"table \S+ empty", why):
        return f"Table {table} is empty."
    if re.fullmatch(r"field \S+ absent", why):
        return f"Field {table}.{fld} does not exist."
    if re.fullmatch(r"field \S+ has no values", why):
        return f"Field {table}.{fld} is not populated."
    if why.startswith("no records with concept "):
        if r["unit_concept_id"] is not None:
            return (f"Combination of {fld}={r['concept_id']}, unitConceptId={r['unit_concept_id']} and "
                    f"VALUE_AS_NUMBER IS NOT NULL is missing from the {table} table.")
        return f"{fld}={r['concept_id']} is missing from the {table} table."
    return why


# DQD's results table (DataQualityDashboard's result_dataframe_ddl.sql: what `executeDqChecks(writeToTable = TRUE)`
# writes to `dqdashboard_results`), column by column from dqd.json's CheckResults; threshold_value is a DOUBLE
# here (DQD: integer), so a site's fractional threshold is kept
DQD_TABLE = (("num_violated_rows", "BIGINT", "numViolatedRows"), ("pct_violated_rows", "DOUBLE", "pctViolatedRows"),
             ("num_denominator_rows", "BIGINT", "numDenominatorRows"), ("execution_time", "VARCHAR", "executionTime"),
             ("query_text", "VARCHAR", "queryText"), ("check_name", "VARCHAR", "checkName"),
             ("check_level", "VARCHAR", "checkLevel"), ("check_description", "VARCHAR", "checkDescription"),
             ("cdm_table_name", "VARCHAR", "cdmTableName"), ("cdm_field_name", "VARCHAR", "cdmFieldName"),
             ("concept_id", "VARCHAR", "conceptId"), ("unit_concept_id", "VARCHAR", "unitConceptId"),
             ("sql_file", "VARCHAR", "sqlFile"), ("category", "VARCHAR", "category"),
             ("subcategory", "VARCHAR", "subcategory"), ("context", "VARCHAR", "context"),
             ("warning", "VARCHAR", "warning"), ("error", "VARCHAR", "error"), ("checkid", "VARCHAR", "checkId"),
             ("is_error", "INTEGER", "isError"), ("not_applicable", "INTEGER", "notApplicable"),
             ("failed", "INTEGER", "failed"), ("passed", "INTEGER", "passed"),
             ("not_applicable_reason", "VARCHAR", "notApplicableReason"),
             ("threshold_value", "DOUBLE", "thresholdValue"), ("notes_value", "VARCHAR", "notesValue"))
TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def dqd_table_exists(engine, name: str) -> bool:
    """Whether the store has results table `name` in DQD's layout already; ValueError if `name` is not a plain table
    name or a table of that name has other columns (it is left alone)."""
    if len(name) > 63 and TABLE_NAME.fullmatch(name[:63]):
        raise ValueError(f"{name!r} is {len(name)} characters long: a table name has at most 63 (PostgreSQL's "
                         "limit); give a shorter one")
    if not TABLE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a table name (letters, digits, _): name the results table plainly, "
                         "e.g. dqdashboard_results; it is written in the store's first schema, so on PostgreSQL "
                         "name DQD's results schema first on the search path "
                         "(?options=-csearch_path%3Dresults,cdm in the store URL)")
    if name.lower() not in {t.lower() for t in engine.tables()}:
        return False
    if engine.name == "postgres":  # found on the search path; written to its first schema
        where = engine.query("SELECT n.nspname AS s, current_schema() AS f FROM pg_class AS c JOIN pg_namespace AS "
                             "n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(quote_ident(?))", [name.lower()])
        at, first = where.column(0)[0].as_py(), where.column(1)[0].as_py()
        if at != first:
            raise ValueError(f"table {name.lower()} is in schema {at}, but the rows are written to the first schema "
                             f"on the search path, {first}: name {at} first (?options=-csearch_path%3D{at},… in "
                             "the store URL)")
    have = [c.name.lower() for c in engine.columns(name.lower())]
    if have != [c for c, _, _ in DQD_TABLE]:
        raise ValueError(f"table {name.lower()} exists with other columns than DQD's results table "
                         f"({', '.join(have[:4])}{', …' if len(have) > 4 else ''}): give another name, or drop that "
                         "table first")
    return True


def write_dqd_table(engine, name: str, dqd: dict) -> int:
    """Replace the rows of table `name` in the store (created if absent) with `dqd`'s CheckResults in DQD's
    results-table layout; the number of rows written."""
    import pyarrow as pa

    if not dqd_table_exists(engine, name):
        engine.execute(f'CREATE TABLE "{name.lower()}" ({", ".join(f"{c} {t}" for c, t, _ in DQD_TABLE)})')
    types = {"BIGINT": pa.int64(), "DOUBLE": pa.float64(), "VARCHAR": pa.string(), "INTEGER": pa.int32()}
    schema = pa.schema([(c, types[t]) for c, t, _ in DQD_TABLE])
    rows = [{c: (str(x[k]) if t == "VARCHAR" and x[k] is not None else x[k]) for c, t, k in DQD_TABLE}
            for x in dqd["CheckResults"]]
    with engine.transaction():
        engine.execute(f'DELETE FROM "{name.lower()}"')
        if rows:
            engine.load_arrow(name.lower(), pa.Table.from_pylist(rows, schema=schema))
    return len(rows)
