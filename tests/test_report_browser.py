"""A real browser opens a generated report: no console errors, no broken images, and a screenshot to look at.

Headless Chromium from the Debian packages ``chromium`` and ``chromium-driver`` (.ci/run installs them).
The screenshot goes to pytest's temporary folder; to refresh the README's picture of a real report, run
``CNNCLINIC_REPORT=runs/<run>/report.html pytest tests/test_report_browser.py`` and the full-page screenshot
of that report is written to docs/img/report.png.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = "/usr/bin/chromedriver"
README_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "report.png"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or not Path(CHROMEDRIVER).is_file(),
    reason="needs Debian packages chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="cnnclinic-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1200,900",
        ):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def _full_page_screenshot(driver, path: Path) -> None:
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def test_report_opens_in_chromium_without_errors_or_broken_images(browser, tmp_path):
    given = os.environ.get("CNNCLINIC_REPORT")
    if given:
        report, screenshot = Path(given).resolve(), README_SCREENSHOT
    else:
        from cnnclinic.report import write_report
        from test_report import make_run_dir

        report, screenshot = write_report(make_run_dir(tmp_path)), tmp_path / "report.png"
    browser.get(report.as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);"
    )
    assert len(images) >= 4
    broken = [alt for alt, complete, width in images if not complete or width == 0]
    assert broken == [], f"broken images: {broken}"
    severe = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], f"console errors: {severe}"
    # Verdict first: the findings are the first thing on the page below the headline.
    headings = browser.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent);")
    assert headings[0] == "Verdict"
    _full_page_screenshot(browser, screenshot)
    assert screenshot.stat().st_size > 10_000
