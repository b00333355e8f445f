"""Headless Chromium for the tests: the distribution's package, driven through Selenium and the
distribution's chromedriver; nothing is downloaded (Selenium Manager is never called)."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def chromium() -> tuple[str, str]:
    """Paths of Chromium and its driver; the test fails (not skips) without them."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail(
            "Chromium and chromedriver are needed for this test: "
            "apt-get install chromium chromium-driver (.ci/run installs them)"
        )
    return browser, driver


# Every request that leaves the machine goes to a closed port: a page that needs the network
# (a script from a CDN) fails as it would offline. file:// and loopback pages are unaffected.
OFFLINE = ("--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>")


@contextmanager
def headless_chromium(*extra: str) -> Iterator[object]:
    from selenium import webdriver

    binary, driver_path = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1400",
        *extra,
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=driver_path)
    )
    try:
        yield driver
    finally:
        driver.quit()


# How many of the Vega charts `ids` have drawn (vega-embed replaces each chart's element's
# content with a canvas or an svg), and how many of the page's images have loaded.
_RENDERED = """
const ids = arguments[0];
const drawn = ids.filter(id => document.querySelector(`#${CSS.escape(id)} :is(canvas, svg)`));
const images = [...document.images];
return [drawn.length, images.length, images.filter(i => i.naturalWidth > 0).length];
"""


def render_dvc_plots(page: Path, timeout_s: float = 60) -> dict[str, int]:
    """Open `dvc plots show`'s page offline; how many Vega charts (DVC writes
    `vegaEmbed('#<id>', spec)` for each) and images it has, and how many of each rendered
    (waiting up to `timeout_s` for the charts to draw). A screenshot lands beside the page."""
    ids = re.findall(r"vegaEmbed\('#([^']+)'", page.read_text())
    with headless_chromium(*OFFLINE) as browser:
        browser.get(page.resolve().as_uri())
        deadline = time.monotonic() + timeout_s
        while True:
            drawn, images, loaded = browser.execute_script(_RENDERED, ids)
            if (drawn == len(ids) and loaded == images) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        browser.save_screenshot(str(page.with_suffix(".png")))
    return {"charts": len(ids), "drawn": drawn, "images": images, "loaded": loaded}
