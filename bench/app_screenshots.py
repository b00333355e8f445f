"""Screenshots of the web app's three pages for the README, taken from a real run of
`resnetlab app` in a real project, and the app's timings on this machine.

    python bench/app_screenshots.py --project PATH [--out docs]

PATH is a project folder as `dvc repro` leaves it: trained and evaluated variants, prepared data,
reports (the leaderboard and figures). Needs Chromium and chromedriver from the distribution
(Debian: apt-get install chromium chromium-driver) and selenium (the `dev` extra); nothing is
downloaded. Writes <out>/app_classify.png, app_mistakes.png and app_compare.png, and prints:

- time to interactive: from starting `resnetlab app` to the Classify page's file uploader in
  the browser (the browser itself is started before, as a user's already runs);
- classifying 10 real CIFAR-10 test images uploaded at once: the first time (loading the model
  included), then again with the model cached, as the app measures it (reading the uploads,
  preprocessing, one forward pass) and as the browser sees it (until every result is drawn).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from resnetlab.data.prepared import load_prepared

TIMEOUT_S = 180
MAX_PNG_BYTES = 300_000
WIDTH = 1280
# The first test image of each of these classes is uploaded for the Classify screenshot.
SHOWCASE = ("cat", "ship", "airplane")


def wait_for(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


@contextmanager
def chromium() -> Iterator[Any]:
    from selenium import webdriver

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        sys.exit("needs chromium and chromedriver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={WIDTH},1000")
    chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))
    try:
        yield chrome
    finally:
        chrome.quit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def app(project: Path, port: int) -> Iterator[str]:
    """`resnetlab app` in `project`, as a user starts it; stopped (it and Streamlit) on exit."""
    cmd = [sys.executable, "-m", "resnetlab", "app", "--port", str(port), "--project", str(project)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"(http://\S+)", line)
        if not match:
            raise RuntimeError(f"resnetlab app printed no URL: {line!r}")
        yield match[1]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def idle(chrome: Any) -> bool:
    """The script run is over (no status widget), and every image on the page has loaded."""
    return chrome.execute_script(
        "return !document.querySelector('[data-testid=stStatusWidget]')"
        " && Array.from(document.images).every(i => i.complete && i.naturalWidth > 0);"
    )


def results(chrome: Any, names: list[str]) -> bool:
    from selenium.webdriver.common.by import By

    texts = [e.text for e in chrome.find_elements(By.CSS_SELECTOR, "[data-testid=stMarkdown]")]
    charts = chrome.find_elements(By.CSS_SELECTOR, "[data-testid=stVegaLiteChart]")
    done = all(any(t.startswith(f"{n}:") for t in texts) for n in names)
    return done and len(charts) >= len(names) and idle(chrome)


def upload(chrome: Any, url: str, files: list[Path]) -> tuple[float, float]:
    """Open the Classify page afresh, upload `files`; (seconds until every result is drawn,
    seconds the app reports for classifying them)."""
    from selenium.webdriver.common.by import By

    chrome.get(url)
    field = wait_for(lambda: chrome.find_elements(By.CSS_SELECTOR, "input[type=file]"), "uploader")
    wait_for(lambda: idle(chrome), "the page to settle")
    start = time.perf_counter()
    field[0].send_keys("\n".join(str(f) for f in files))
    wait_for(lambda: results(chrome, [f.name for f in files]), "the results")
    drawn = time.perf_counter() - start
    caption = wait_for(
        lambda: re.search(r"classified by \S+ in (\d+\.\d+) s", chrome.page_source), "caption"
    )
    return drawn, float(caption[1])


def screenshot(chrome: Any, path: Path, max_height: int = 2200) -> None:
    """The whole page (Streamlit scrolls inside its main block, so the window is made as tall
    as that block), reduced to a palette PNG that stays under MAX_PNG_BYTES."""
    wait_for(lambda: idle(chrome), "the page to settle")
    height = chrome.execute_script(
        "return document.querySelector('[data-testid=stMain]').scrollHeight;"
    )
    chrome.set_window_size(WIDTH, min(int(height) + 40, max_height))
    time.sleep(1.0)  # charts and the data grid redraw for the new size
    wait_for(lambda: idle(chrome), "the page to settle")
    with Image.open(io.BytesIO(chrome.get_screenshot_as_png())) as shot:
        rgb = shot.convert("RGB")
    for colours in (256, 128, 64):
        out = io.BytesIO()
        rgb.quantize(colours, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
        if out.tell() <= MAX_PNG_BYTES:
            break
    path.write_bytes(out.getvalue())
    chrome.set_window_size(WIDTH, 1000)
    print(f"{path}: {out.tell() / 1000:.0f} kB")


def test_images(project: Path, folder: Path) -> tuple[list[Path], list[Path]]:
    """The first 10 test images, and the first of each SHOWCASE class the data has, as PNG files
    named after their dataset, index and label."""
    test = load_prepared(project / "data" / "prepared", splits=("test",))
    images, labels, classes = test.images["test"], test.labels["test"], test.classes

    def save(i: int) -> Path:
        path = folder / f"{test.dataset}-test-{i}-{classes[labels[i]]}.png"
        Image.fromarray(images[i]).save(path)
        return path

    shown = [c for c in SHOWCASE if c in classes] or list(classes[:5])
    showcase = [next(i for i, y in enumerate(labels) if classes[y] == c) for c in shown]
    return [save(i) for i in range(10)], [save(i) for i in showcase]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, required=True, help="a project folder")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs")
    args = parser.parse_args()
    project, out = args.project.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp, chromium() as chrome:
        ten, showcase = test_images(project, Path(tmp))
        from selenium.webdriver.common.by import By

        started = time.perf_counter()
        with app(project, free_port()) as url:
            wait_for(lambda: healthy(url), "the server")
            chrome.get(url)
            wait_for(lambda: chrome.find_elements(By.CSS_SELECTOR, "input[type=file]"), "page")
            interactive = time.perf_counter() - started
            first = upload(chrome, url, ten)
            again = upload(chrome, url, ten)

            upload(chrome, url, showcase)
            screenshot(chrome, out / "app_classify.png")
            chrome.get(f"{url}/mistakes")
            wait_for(lambda: chrome.find_elements(By.CSS_SELECTOR, "[data-testid=stImage]"), "grid")
            screenshot(chrome, out / "app_mistakes.png")
            chrome.get(f"{url}/compare")
            wait_for(lambda: len(chrome.find_elements(By.TAG_NAME, "img")) > 3, "figures")
            screenshot(chrome, out / "app_compare.png")

    print(f"time to interactive: {interactive:.2f} s after `resnetlab app` started")
    print(f"10 images, first upload (model loaded): {first[0]:.2f} s drawn, app {first[1]:.2f} s")
    print(f"10 images, model cached: {again[0]:.2f} s drawn, app {again[1]:.2f} s")
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
