"""report.html in a real browser: headless Chromium renders it and the plain-language summary is visible.

scripts/test.sh installs Debian's chromium and chromium-driver where it can (root with apt-get);
elsewhere this test skips and says why.
"""

import shutil

import numpy as np
import pytest

from fedcredit.runner import run
from federation.config import RunConfig


def _browser_or_skip():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip(
            "headless Chromium is not installed (Debian packages chromium and chromium-driver; "
            "scripts/test.sh installs them when run as root with apt-get)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    return chromium, driver, webdriver


def test_report_summary_is_visible_in_headless_chromium(tmp_path):
    chromium, driver, webdriver = _browser_or_skip()
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    folder = run(
        RunConfig(records=2000, lenders=3, rounds=2, epsilon=2.0, engine="inprocess", output_dir=str(tmp_path / "run")),
        on_round=lambda s: None,
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # Flags for a closed network and a root sandbox-less container (see the machine notes).
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,1400",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        browser.get((folder / "report.html").as_uri())
        summary = browser.find_element(By.ID, "summary")
        assert summary.is_displayed()
        assert "All 3 lenders stayed within epsilon 2" in summary.text
        assert "0 raw records left any lender" in summary.text
        assert summary.location["y"] < 600  # first thing on the page, above the fold
        chart = browser.find_element(By.CSS_SELECTOR, "svg[role=img]")  # the epsilon chart, inline SVG
        assert chart.is_displayed() and chart.size["width"] > 300 and "3 lenders" in chart.get_attribute("aria-label")
        shot = tmp_path / "report.png"
        assert browser.save_screenshot(str(shot))
    finally:
        browser.quit()
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] > 500 and np.std(pixels) > 0.05  # a rendered page, not a blank one
