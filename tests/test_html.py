"""The HTML report in a real headless Chromium (Debian's chromium and chromium-driver): it loads
without console errors or any fetch, sorts when a header is clicked, filters as one types, and
shows the whitelisted findings with their reasons."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from samples import clean_result, debian_result
from scanner import formats

CHROMEDRIVER = "/usr/bin/chromedriver"
OPTIONS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1100",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if not Path(CHROMEDRIVER).exists() or not shutil.which("chromium"):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for option in OPTIONS:
        options.add_argument(option)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_report(browser, tmp_path: Path, *results) -> Path:
    page = tmp_path / "report.html"
    page.write_bytes(formats.get("html").render(list(results)))
    browser.get(page.as_uri())
    return page


def column(section, index: int) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = section.find_elements(By.CSS_SELECTOR, "table.findings tbody tr")
    return [r.find_elements(By.TAG_NAME, "td")[index].text for r in rows if r.is_displayed()]


def test_report_loads_cleanly_sorts_filters_and_shows_reasons(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_report(browser, tmp_path, debian_result(), clean_result())
    assert browser.title == "clair-scan: 2 images"
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0

    first, clean = browser.find_elements(By.CSS_SELECTOR, "section.image")
    assert "3 UNAPPROVED" in first.find_element(By.CSS_SELECTOR, ".verdict").text.upper()
    assert clean.find_element(By.CSS_SELECTOR, ".verdict").text.upper() == "PASSED"
    bars = first.find_elements(By.CSS_SELECTOR, "svg.chart rect")
    assert bars and all(b.size["width"] >= 0 for b in bars)
    assert first.find_element(By.CSS_SELECTOR, "svg.chart").size["height"] > 100

    # Most severe first as written; clicking Package sorts by it, again reverses it.
    assert column(first, 0) == ["Defcon1", "Critical", "High", "Medium", "Negligible"]
    package = first.find_element(By.XPATH, ".//table[@class='findings']//th[text()='Package']")
    package.click()
    assert (
        column(first, 3) == sorted(column(first, 3)) == ["bash", "e2fsprogs", "glibc", "libidn2", "openssl"]
    )
    assert package.get_attribute("aria-sort") == "ascending"
    package.click()
    assert column(first, 3) == ["openssl", "libidn2", "glibc", "e2fsprogs", "bash"]
    cvss = first.find_element(By.XPATH, ".//table[@class='findings']//th[text()='CVSS']")
    cvss.click()
    cvss.click()  # descending: numbers, not text, and findings without a score last
    assert column(first, 1) == ["9.8", "7.4", "", "", ""]

    shown = first.find_element(By.CSS_SELECTOR, ".shown")
    assert shown.text == "showing 5 of 5"
    box = first.find_element(By.CSS_SELECTOR, "input.filter")
    box.send_keys("openssl")
    assert column(first, 2) == ["CVE-2019-1543"]
    assert shown.text == "showing 1 of 5"
    box.clear()
    box.send_keys("deb10u1 2.0")  # every word must match
    assert column(first, 2) == ["CVE-2019-18224"]
    box.clear()
    box.send_keys(" ")  # an input event with nothing to match: every row again
    assert len(column(first, 2)) == 5
    Select(first.find_element(By.CSS_SELECTOR, "select.status-filter")).select_by_value("whitelisted")
    assert column(first, 2) == ["CVE-2019-18224"]
    assert clean.find_element(By.CSS_SELECTOR, ".shown").text == ""  # its own table untouched: none

    reasons = [td.text for td in first.find_elements(By.CSS_SELECTOR, ".whitelisted td.reason")]
    assert reasons == ["not reachable (whitelist.yml, expires 2099-01-01)"]
    assert "No finding is whitelisted." in clean.find_element(By.CSS_SELECTOR, ".whitelisted").text
    Select(first.find_element(By.CSS_SELECTOR, "select.status-filter")).select_by_value("")
    assert len(column(first, 2)) == 5
    # Outside text stays text: the description's markup is shown, not run.
    assert "<script>alert(1)</script>" in first.text
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []

    png = browser.get_screenshot_as_png()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
