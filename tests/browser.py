"""Headless Debian Chromium for browser tests (the HTML report here, the Dash app later).

The fixtures (`browser`, `browser_factory`) are offered to every test by tests/conftest.py;
import the helpers::

    from tests.browser import console_errors, wait_for

    @pytest.mark.browser
    def test_page(browser):
        browser.get("file:///tmp/report.html")
        assert not console_errors(browser)

`browser` is module-scoped (one Chromium per test module); `browser_factory` starts more when a
test needs its own. Chromium runs with no network traffic of its own (no sync, updates,
component downloads) and logs the console (``console_errors``) and every request
(``requests_made``), so tests can assert that a page loads nothing from outside.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


def start_chromium(user_data_dir: str | Path):
    """A headless Chromium driven by chromedriver, logging console messages and network events."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            raise RuntimeError(f"{path} is missing: install Debian's chromium and chromium-driver "
                               "(apt-get install -y chromium chromium-driver; .ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.get("about:blank")  # leave the new-tab page, which loads chrome:// resources of its own
    return driver


@pytest.fixture
def browser_factory() -> Callable:
    """Call it to start a fresh headless Chromium; every one started is quit at teardown."""
    started = []

    def make():
        folder = tempfile.mkdtemp(prefix="wb-chromium-")
        driver = start_chromium(folder)
        started.append((driver, folder))
        return driver

    yield make
    for driver, folder in started:
        driver.quit()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for a whole test module."""
    folder = tempfile.mkdtemp(prefix="wb-chromium-")
    driver = start_chromium(folder)
    yield driver
    driver.quit()
    shutil.rmtree(folder, ignore_errors=True)


def console_errors(driver, level: str = "SEVERE") -> list[dict]:
    """Console entries of ``level`` logged since the last call (the log is drained on read)."""
    return [e for e in driver.get_log("browser") if e.get("level") == level]


def requests_made(driver, document: str | None = None) -> list[str]:
    """URLs requested since the last call (from the DevTools performance log); with ``document``,
    only those the page at that URL made (not the browser's own chrome:// pages)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            params = message["params"]
            if document is None or params.get("documentURL") == document:
                urls.append(params["request"]["url"])
    return urls


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy; return it, or the last value on timeout."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value
