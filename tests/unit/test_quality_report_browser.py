"""The quality report as a reader opens it: the file in headless Chromium (Debian's, driven by Playwright), offline."""
from __future__ import annotations

import re
import shutil
from collections import Counter

import pytest

from medlake.engines import open_engine
from medlake.quality import runner, site

from test_quality_checks import CO, world  # the small clean CDM of the check-type tests

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# as root Chromium needs --no-sandbox; the others keep it from reaching for Google's hosts on a closed network
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture
def report(tmp_path):
    """Two runs on the small CDM, the second with a person_id that points nowhere: a failure and a trend."""
    eng = open_engine("duckdb::memory:")
    world(eng)
    runner.run(eng, "5.4", tmp_path / "quality")
    eng.execute(CO + "person_id = 99 WHERE condition_occurrence_id = 200")
    # an interface engine's log: the LIS sends 10 a day for 100 days, none on day 40, 2 on day 70
    eng.execute("CREATE TABLE msg_log AS SELECT 'LIS' AS source, TIMESTAMP '2024-01-01 10:00:00' + d * INTERVAL 1 DAY "
                "AS received_at FROM range(100) AS r(d), range(10) AS k(i) WHERE d <> 40 AND (d <> 70 OR i < 2)")
    run = runner.run(eng, "5.4", tmp_path / "quality", feed=site.feed_config("[feed]\ntable = 'msg_log'"))
    eng.close()
    return run


@pytest.mark.browser
def test_the_report_reads_offline_in_a_browser(report):
    from playwright.sync_api import sync_playwright

    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((report.dir / "report.html").as_uri())

        assert page.title().startswith("medlake data quality")
        assert [u for u in requests if not u.startswith("file://")] == []  # nothing fetched: self-contained
        # the failed check comes first, with its example row
        failed = page.locator("#failures tbody tr").first
        assert "isForeignKey" in failed.inner_text() and "200" in failed.inner_text()
        assert "severity fatal" in failed.inner_text()  # what puts it first
        assert "What to do: Rows point at a row that does not exist" in failed.inner_text()  # the next step
        assert failed.locator(".new").inner_text() == "new"  # it did not fail in the run before
        assert "What to do" not in page.locator("#all tbody tr", has_text="passed").first.inner_text()
        assert "What to do" not in page.locator("#all tbody tr", has_text="isForeignKey").first.inner_text()
        # the kinds of problem at a glance: one line per failed check type, where, how many rows
        types = [r.split("\t") for r in page.locator("#types tbody tr").all_inner_texts()]  # type, failed, errors, …
        want = Counter(r["check_name"] for r in report.results if r["status"] == "failed")
        got = {t[0].split("\n")[0]: int(t[1]) for t in types}
        assert got == want and list(got) == sorted(want, key=lambda n: (-want[n], n))  # most failed checks first
        fk = next(t for t in types if t[0].startswith("isForeignKey"))
        assert fk[2:5] == ["", "condition_occurrence.person_id", "1 row"]  # (a feed type's: days)
        # the charts are drawn: category bars and the pass rate across the two runs
        trend = page.locator("svg[aria-label='pass rate across runs'] polyline")  # all checks, each Kahn category
        assert [trend.nth(i).get_attribute("data-series") for i in range(trend.count())] == [
            "all checks", "Completeness", "Conformance", "Plausibility"]
        assert trend.first.bounding_box()["width"] > 100
        chart = page.locator("svg[aria-label='pass rate across runs']")  # a y axis of round steps, values shown
        assert chart.locator("text[text-anchor=end]").all_text_contents()[0] == "100%"
        assert chart.locator("text.value").all_text_contents() == [
            f"{100 * h['pass_rate']:.2f}%" for h in runner.history(report.dir.parent)]
        assert [trend.nth(i).get_attribute("stroke-dasharray") for i in range(4)] == ["", "7 3", "2 3", "10 3 2 3"]
        assert page.locator("svg[aria-label^='pass rates: Completeness'] rect").count() >= 6
        # what the LIS sent per day, its last 90: one bar a day, the silent day red, the low day orange
        lis = page.locator("svg[aria-label='LIS per day']")
        assert lis.locator("rect").count() == 90 and lis.bounding_box()["width"] >= 90 * 5
        assert [lis.locator(f"rect.{k}").count() for k in ("missing", "low", "sent")] == [1, 1, 88]
        assert lis.locator("rect.missing title").text_content() == "2024-02-10: 0 (nothing: a missing day)"
        low = lis.locator("rect.low")
        assert low.locator("title").text_content() == "2024-03-11: 2 (volume drop)"
        assert 0 < low.bounding_box()["height"] < lis.locator("rect.sent").first.bounding_box()["height"] / 2
        # laid out to be read on a laptop screen: nothing wider than the window, no chart label cut by its chart
        # and on a small one: a table wider than the window scrolls in its box; no header, status or number is
        # cut or broken across lines
        for width in (1280, 1024, 800):
            page.set_viewport_size({"width": width, "height": 800})
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            assert page.evaluate("""[...document.querySelectorAll('th, td.num, .checks td:first-child')].filter(
                c => c.offsetParent).every(c => c.scrollWidth <= c.clientWidth)""")
            assert page.evaluate("""[...document.querySelectorAll('.checks td:first-child')].every(c => {
                const r = document.createRange(); r.selectNodeContents(c.firstChild);
                return r.getClientRects().length === 1 })""")  # "failed" on one line
            assert page.evaluate("""[...document.querySelectorAll('svg text')].every(t => {
                const s = t.ownerSVGElement.getBoundingClientRect(), b = t.getBoundingClientRect();
                return b.right <= s.right + 0.5 && b.left >= s.left - 0.5 })""")

        # on a phone (390 px) and a small tablet (600 px): each check a block — status and name on a line, then
        # where, then its counts as one line — no word broken a letter a line, no taller than a few times the
        # desktop's page; wide tables (by source) scroll in their box (review-report #2)
        page.set_viewport_size({"width": 1280, "height": 800})
        desktop = page.evaluate("document.documentElement.scrollHeight")
        for width in (600, 390):
            page.set_viewport_size({"width": width, "height": 844})
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            assert page.evaluate("document.documentElement.scrollHeight") < 2.5 * desktop
            words = """sel => [...document.querySelectorAll(sel)].filter(c => c.offsetParent).map(c => {
                const r = document.createRange(); r.selectNodeContents(c);  // the lines: the text's boxes' tops
                return new Set([...r.getClientRects()].map(b => Math.round(b.top))).size })"""
            for sel in (".checks td:nth-child(2) b", "#types td:first-child b", ".checks td.num", "#types td.num"):
                lines = page.evaluate(words, sel)  # a check's name, a count: on one line
                assert lines and max(lines) == 1, (width, sel, lines)
            assert max(page.evaluate(words, ".checks td:nth-child(2) code")) <= 3  # a long id: a few lines at most
            assert min(page.evaluate("""() => [...document.querySelectorAll('.checks td:nth-child(2)')].filter(
                c => c.offsetParent).map(c => c.getBoundingClientRect().width)""")) > 150
            failed = page.locator("#failures tbody tr").first
            assert failed.bounding_box()["height"] < 700  # (2,500 px, a letter a line)
            box = page.evaluate("""() => { const [s, n] = document.querySelectorAll('#failures tbody tr:first-child td');
                return [s.getBoundingClientRect().top, n.getBoundingClientRect().top, n.getBoundingClientRect().width] }""")
            assert box[0] == box[1] and box[2] > 150  # the status beside the check's name, the name wide enough
            tops = page.evaluate("""() => [...document.querySelectorAll('#failures tbody tr:first-child td')].map(
                c => Math.round(c.getBoundingClientRect().top))""")
            assert len(set(tops[3:7])) == 1 and tops[2] < tops[3] < tops[7]  # where, the counts on a line, details

        # the filter box narrows the table of all checks to the rows that match (shown: laid out by the browser),
        # as the reader stops typing; how many match is said
        page.set_viewport_size({"width": 1280, "height": 800})
        shown = "() => [...document.querySelectorAll('#all tbody tr')].filter(r => r.offsetParent).map(r => r.innerText)"
        total = len(page.evaluate(shown))
        assert total == len(report.results)
        assert page.locator("#n").inner_text() == f"all {total:,} checks"

        def matching(text):  # the rows shown once the count says `text`
            page.wait_for_function("t => document.getElementById('n').textContent === t", arg=text)
            return page.evaluate(shown)

        count = Counter(r["status"] for r in report.results)
        page.get_by_label("Filter the checks").fill("isforeignkey")
        fks = sum(r["check_name"] == "isForeignKey" for r in report.results)
        visible = matching(f"{fks:,} of {total:,} checks")
        assert 0 < len(visible) < total and all("isForeignKey" in r for r in visible)
        page.fill("#q", "not applicable")  # as the cards say it (the rows: not_applicable)
        assert len(matching(f"{count['not_applicable']:,} of {total:,} checks")) == count["not_applicable"]
        page.fill("#q", "no such check")
        assert matching("no check matches") == []
        page.fill("#q", "")
        assert len(matching(f"all {total:,} checks")) == total
        # by status and table (review-report #6)
        page.get_by_label("status").select_option("failed")
        assert all(r.startswith("failed") for r in matching(f"{count['failed']:,} of {total:,} checks"))
        page.get_by_label("table").select_option("condition_occurrence")
        both = sum(r["status"] == "failed" and r["cdm_table"] == "condition_occurrence" for r in report.results)
        assert all("condition_occurrence" in r for r in matching(f"{both:,} of {total:,} checks"))
        page.get_by_label("status").select_option("")
        page.get_by_label("table").select_option("")
        # only the new failures and errors, from the since line's link (review-report #5)
        since = report.summary["since_last_run"]
        new = {*since["new_failures"], *since["new_errors"]}
        page.get_by_role("link", name="list the new ones").click()
        assert page.get_by_label(re.compile("only the .* new since run")).is_checked()
        ids = page.evaluate("() => [...document.querySelectorAll('#all tbody tr')].filter(r => r.offsetParent).map("
                            "r => r.querySelector('code').textContent)")
        assert set(ids) == new and len(ids) == len(new) > 0
        assert page.locator("#n").inner_text() == f"{len(new):,} of {total:,} checks"
        page.get_by_label(re.compile("only the .* new since run")).uncheck()
        assert len(matching(f"all {total:,} checks")) == total
        grey = page.eval_on_selector("#all td.not_applicable", "c => getComputedStyle(c).color")
        assert contrast(grey, "rgb(255, 255, 255)") >= 4.5  # WCAG AA for text of 14 px

        # printed: the list of all checks left out (said so), nothing wider than an A4 page, a few pages
        page.emulate_media(media="print")
        page.set_viewport_size({"width": 718, "height": 1000})  # A4's printable width
        assert page.locator("#all").is_hidden() and page.locator("p.print").is_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 718
        assert page.evaluate("""[...document.querySelectorAll('#types td')].every(c => {  // no name over its count
            const r = document.createRange(); r.selectNodeContents(c);
            return [...r.getClientRects()].every(b => b.right <= c.getBoundingClientRect().right + 0.5) })""")
        pdf = page.pdf(format="A4")
        assert 1 <= len(re.findall(rb"/Type\s*/Page[^s]", pdf)) <= 4
        browser.close()
    assert errors == []


def contrast(a: str, b: str) -> float:
    """WCAG's contrast ratio of two CSS colours rgb(r, g, b)."""
    def lum(c):
        s = [int(x) / 255 for x in re.findall(r"\d+", c)[:3]]
        r, g, b = (x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in s)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)
