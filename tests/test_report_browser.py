"""report.html in a real browser: headless Chromium renders it, and what a regulator reads first is visible: the run's
facts (run id, date, versions, dataset, consent, the one guarantee epsilon), the summary, the plain-language box,
the fields x lenders matrix; and a 100-lender chart keeps its legend off the data.

scripts/test.sh installs Debian's chromium and chromium-driver where it can (root with apt-get);
elsewhere this test skips and says why.
"""

import importlib.metadata
import json
import shutil

import numpy as np
import pytest

from fedcredit.runner import run
from federation.audit_trail.report import render_html
from federation.config import RunConfig
from tests.test_report_content import report_of


def _browser_or_skip():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip(
            "headless Chromium is not installed (Debian packages chromium and chromium-driver; "
            "scripts/test.sh installs them when run as root with apt-get)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    return chromium, driver, webdriver


def _open(webdriver, chromium, driver, tmp_path):
    from selenium.webdriver.chrome.service import Service

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
    return webdriver.Chrome(service=Service(driver), options=options)


def test_report_facts_summary_and_explanations_are_visible_in_headless_chromium(tmp_path):
    chromium, driver, webdriver = _browser_or_skip()
    from selenium.webdriver.common.by import By

    folder = run(
        RunConfig(records=2000, lenders=3, rounds=2, epsilon=2.0, engine="inprocess", output_dir=str(tmp_path / "run")),
        on_round=lambda s: None,
    )
    report = json.loads((folder / "report.json").read_text())
    browser = _open(webdriver, chromium, driver, tmp_path)
    try:
        browser.get((folder / "report.html").as_uri())
        facts = browser.find_element(By.ID, "facts")
        assert facts.is_displayed() and facts.location["y"] < 200  # the first thing on the page
        for fact in (
            f"Run id {report['run']}",
            "Date " + report["created"].replace("T", " ").replace("Z", " UTC"),
            f"Code version {report['code_version']}; Flower (flwr) {importlib.metadata.version('flwr')}",
            "Dataset synthetic: card synthetic (SHA-256",
            # the synthetic market has a consent column: consent is checked and the count is stated
            "Consent checked by every lender: "
            f"{sum(d['records_without_consent'] for d in report['lender_details']):,} records without consent",
        ):
            assert fact in facts.text, (fact, facts.text)
        top = max(d["epsilon"] for d in report["lender_details"])
        (guarantee,) = browser.find_elements(By.ID, "guarantee")  # one epsilon is the guarantee
        assert guarantee.is_displayed() and guarantee.text == f"epsilon {top:.3f}"
        assert "(RDP accountant, which enforced the budgets; budget 2.000)" in facts.text
        summary = browser.find_element(By.ID, "summary")
        assert summary.is_displayed()
        assert "All 3 lenders stayed within epsilon 2" in summary.text
        assert "0 raw records left any lender" in summary.text
        explain = browser.find_element(By.ID, "explain")
        assert explain.is_displayed()
        assert "At epsilon 1 that factor is at most 2.72; at epsilon 8 it is 2,981" in explain.text
        assert f"This run: epsilon {top:.3f}" in explain.text and "AUC: how well the model ranks" in explain.text
        assert "KS: how well the scores separate" in explain.text
        matrix = browser.find_element(By.ID, "fields")
        assert matrix.is_displayed()
        header = [th.text for th in matrix.find_elements(By.CSS_SELECTOR, "thead th")]
        assert header == ["field", "category", "lenders 0-2", "reason"]  # one column: the lenders share a card
        refused = {d["name"] for d in report["lender_details"][0]["fields_refused"]}
        shown = {
            row.find_element(By.TAG_NAME, "th").text: row.find_elements(By.TAG_NAME, "td")[1].text
            for row in matrix.find_elements(By.CSS_SELECTOR, "tbody tr")
        }
        assert refused and {name for name, state in shown.items() if state == "refused"} == refused
        assert len(browser.find_elements(By.CSS_SELECTOR, "#parameters tbody tr")) == 3
        chart = browser.find_element(By.CSS_SELECTOR, "svg[role=img]")  # the epsilon chart, inline SVG
        assert chart.is_displayed() and chart.size["width"] > 300 and "3 lenders" in chart.get_attribute("aria-label")
        shot = tmp_path / "report.png"
        assert browser.save_screenshot(str(shot))
    finally:
        browser.quit()
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] > 500 and np.std(pixels) > 0.05  # a rendered page, not a blank one


def test_a_hundred_lender_report_without_consent_field_reads_in_chromium(tmp_path):
    chromium, driver, webdriver = _browser_or_skip()
    from selenium.webdriver.common.by import By

    report = report_of(100)
    for d in report["lender_details"]:
        d["consent_checked"], d["records_without_consent"] = False, 0
    page = tmp_path / "report.html"
    page.write_text(render_html(report))
    browser = _open(webdriver, chromium, driver, tmp_path)
    try:
        browser.get(page.as_uri())
        consent = browser.find_element(By.ID, "consent")
        assert consent.is_displayed() and consent.text.startswith("not checked: the dataset has no consent field")
        chart = browser.find_element(By.CSS_SELECTOR, "svg[role=img]")
        assert chart.is_displayed() and "100 lenders" in chart.get_attribute("aria-label")
        drawn = chart.find_elements(By.CSS_SELECTOR, "polyline, polygon.band")
        assert len(drawn) == 3  # the band, the median and the highest lender: not 100 lines
        data_bottom = max(el.rect["y"] + el.rect["height"] for el in drawn)
        legend = chart.find_element(By.CSS_SELECTOR, "g.legend")
        assert legend.rect["y"] > data_bottom  # the legend lies below every line and the band, covering none
        assert len(browser.find_elements(By.CSS_SELECTOR, "#parameters tbody tr")) == 100
        assert not browser.find_element(By.CSS_SELECTOR, "#lender-7 table").is_displayed()  # folded: one click away
    finally:
        browser.quit()
