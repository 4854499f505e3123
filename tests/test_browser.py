"""The HTML report in a real browser: headless Chromium renders it without errors.

Skipped (with the reason) only when no Chromium binary is installed; CI installs Debian's
``chromium`` (see scripts/install-browser.sh), and SANITAS_REQUIRE_BROWSER=1 turns the skip into
a failure there.
"""

from __future__ import annotations

import os

import pytest

from _browser import Browser, find_chromium

CHROMIUM = find_chromium()
pytestmark = pytest.mark.browser

if CHROMIUM is None and os.environ.get("SANITAS_REQUIRE_BROWSER") == "1":
    raise RuntimeError("SANITAS_REQUIRE_BROWSER=1 but no Chromium found: run scripts/install-browser.sh "
                       "or set SANITAS_CHROMIUM=/path/to/chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium, "
                                                             "or set SANITAS_CHROMIUM)")

PAGE_STATE = """JSON.stringify({
  title: document.title,
  h1: document.querySelector("h1").innerText,
  claims: Array.from(document.querySelectorAll("table.claims tbody tr")).map(r => r.cells[0].innerText),
  verdicts: Array.from(document.querySelectorAll("table.claims tbody tr")).map(r => r.cells[5].innerText),
  images: document.images.length,
  broken: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
  sections: Array.from(document.querySelectorAll("section h2")).map(h => h.innerText),
  overflow: document.documentElement.scrollWidth - window.innerWidth
})"""


@needs_chromium
def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    import json

    report = tiny_run.out / "report.html"
    with Browser(CHROMIUM) as browser:
        session = browser.open(report.resolve().as_uri())
        state = json.loads(browser.evaluate(session, PAGE_STATE))
        shot = browser.screenshot(session, tmp_path / "report.png", full_page=True)
        # sorting a table by clicking its header works and raises nothing
        browser.evaluate(session, 'document.querySelector("table.claims th").click(); 1')
        phone = browser.open(report.resolve().as_uri(), width=390, height=844, mobile=True)
        phone_state = json.loads(browser.evaluate(phone, PAGE_STATE))
        browser.screenshot(phone, tmp_path / "report-phone.png")
        errors = browser.errors()
    assert state["title"].startswith("sanitas reproduce") and "Tiny test study" in state["title"]
    assert state["claims"] == ["t1", "t2", "t3", "t4"]
    assert state["verdicts"][1] == "does not hold" and state["verdicts"][2] == "not run"
    assert state["images"] >= 4 and state["broken"] == []          # every embedded figure decoded
    assert "Claims" in state["sections"]
    assert errors == []                                             # no console errors, no exceptions
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert phone_state["overflow"] <= 1                             # no sideways scrolling at phone width
    assert phone_state["broken"] == []


@needs_chromium
def test_browser_driver_reports_console_errors(tmp_path):
    """The error collection itself can fail: a page with a broken script and a missing image."""
    import json

    page = tmp_path / "bad.html"
    page.write_text('<html><head><title>bad</title></head><body><img src="missing.png" alt="m">'
                    '<script>console.error("boom"); undefined_function();</script></body></html>')
    with Browser(CHROMIUM) as browser:
        session = browser.open(page.as_uri())
        state = json.loads(browser.evaluate(session, PAGE_STATE.replace('document.querySelector("h1").innerText',
                                                                         '""')))
        errors = browser.errors()
    assert state["broken"] == ["m"]
    assert any("boom" in e for e in errors) and any("exception" in e for e in errors)
