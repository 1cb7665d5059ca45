"""The quality report as a reader opens it: the file in headless Chromium (Debian's, driven by Playwright), offline."""
from __future__ import annotations

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
        failed = page.locator("h2:has-text('Failed checks') ~ table tbody tr").first
        assert "isForeignKey" in failed.inner_text() and "200" in failed.inner_text()
        assert "What to do: Rows point at a row that does not exist" in failed.inner_text()  # the next step
        assert failed.locator(".new").inner_text() == "new"  # it did not fail in the run before
        assert "What to do" not in page.locator("#all tbody tr", has_text="passed").first.inner_text()
        assert "What to do" not in page.locator("#all tbody tr", has_text="isForeignKey").first.inner_text()
        # the kinds of problem at a glance: one line per failed check type, where, how many rows
        types = [r.split("\t") for r in page.locator("#types tbody tr").all_inner_texts()]
        want = Counter(r["check_name"] for r in report.results if r["status"] == "failed")
        got = {t[0].split("\n")[0]: int(t[1]) for t in types}
        assert got == want and list(got) == sorted(want, key=lambda n: (-want[n], n))  # most failed checks first
        fk = next(t for t in types if t[0].startswith("isForeignKey"))
        assert fk[2:4] == ["condition_occurrence.person_id", "1"]
        # the charts are drawn: category bars and the pass rate across the two runs
        trend = page.locator("svg[aria-label='pass rate across runs'] polyline")  # all checks, each Kahn category
        assert [trend.nth(i).get_attribute("data-series") for i in range(trend.count())] == [
            "all checks", "Completeness", "Conformance", "Plausibility"]
        assert trend.first.bounding_box()["width"] > 100
        assert page.locator("svg[aria-label='pass rates'] rect").count() >= 6
        # what the LIS sent per day, its last 90: one bar a day, the silent day red, the low day orange
        lis = page.locator("svg[aria-label='LIS per day']")
        assert lis.locator("rect").count() == 90 and lis.bounding_box()["width"] >= 90 * 5
        assert [lis.locator(f"rect.{k}").count() for k in ("missing", "low", "sent")] == [1, 1, 88]
        assert lis.locator("rect.missing title").text_content() == "2024-02-10: 0 (nothing: a missing day)"
        low = lis.locator("rect.low")
        assert low.locator("title").text_content() == "2024-03-11: 2 (volume drop)"
        assert 0 < low.bounding_box()["height"] < lis.locator("rect.sent").first.bounding_box()["height"] / 2
        # laid out to be read on a laptop screen: nothing wider than the window, no chart label cut by its chart
        for width in (1280, 1024):
            page.set_viewport_size({"width": width, "height": 800})
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            assert page.evaluate("""[...document.querySelectorAll('svg text')].every(t => {
                const s = t.ownerSVGElement.getBoundingClientRect(), b = t.getBoundingClientRect();
                return b.right <= s.right + 0.5 && b.left >= s.left - 0.5 })""")

        # the filter box narrows the table of all checks to the rows that match (shown: laid out by the browser)
        shown = "() => [...document.querySelectorAll('#all tbody tr')].filter(r => r.offsetParent).map(r => r.innerText)"
        total = len(page.evaluate(shown))
        assert total == len(report.results)
        page.fill("#q", "isforeignkey")
        visible = page.evaluate(shown)
        assert 0 < len(visible) < total and all("isForeignKey" in r for r in visible)
        page.fill("#q", "")
        assert len(page.evaluate(shown)) == total
        browser.close()
    assert errors == []
