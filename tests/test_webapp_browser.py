"""End to end in a real browser: `resnetlab app` started as a user starts it, on a free loopback
port, and driven by headless Chromium (`tests/browser.py`). A real CIFAR-10 test image is
uploaded and the predicted class must appear on the page, as `resnetlab predict` prints it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_project import free_port, healthy, start_app, wait_for
from browser import headless_chromium
from conftest import SHARED_CIFAR
from PIL import Image

from resnetlab.cli import main
from resnetlab.data.archive import read_archive
from resnetlab.data.datasets import CIFAR10

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 120  # a busy, shared 2-core CI machine; the page itself needs about 3 s
RESULT_TIMEOUT_S = 120


@pytest.fixture
def browser() -> Iterator[object]:
    with headless_chromium() as driver:
        yield driver


def cifar_test_image(folder: Path, tiny_archive: tuple[Path, str]) -> tuple[Path, str]:
    """The first image of the real CIFAR-10 test batch (from ../shared/data/cifar10 beside the
    checkout; the tiny generated archive's where that is absent) as a PNG, and its label."""
    if SHARED_CIFAR.is_dir():
        assembled = subprocess.run(
            [str(SHARED_CIFAR / "assemble.sh"), str(folder / "mirror")],
            capture_output=True,
            text=True,
            check=True,
        )
        archive, source = Path(assembled.stdout.strip()), "cifar10"
    else:
        archive, source = tiny_archive[0], "tiny"
    data = read_archive(archive, CIFAR10)
    label = data.classes[int(data.test_labels[0])]
    path = folder / f"{source}-test-0-{label}.png"
    Image.fromarray(data.test_images[0]).save(path)
    return path, label


@pytest.fixture
def cifar_image(tiny_archive, tmp_path: Path) -> tuple[Path, str]:
    return cifar_test_image(tmp_path, tiny_archive)


@pytest.fixture
def running_app(app_project: Path, tmp_path: Path) -> Iterator[tuple[str, float, Path]]:
    """`resnetlab app` on a free loopback port; yields its URL, start time and log file."""
    port = free_port()
    log = tmp_path / "app.log"
    started = time.perf_counter()
    proc = start_app(app_project, port, log)
    try:
        url = wait_for(
            lambda: (m := re.search(r"resnetlab app: (http://\S+)", log.read_text())) and m[1],
            START_TIMEOUT_S,
            "the app to print its URL",
            log,
        )
        assert url == f"http://127.0.0.1:{port}"
        yield url, started, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_upload_a_cifar10_image_in_a_real_browser(
    cifar_image, browser, running_app, app_project: Path, tmp_path: Path, capsys
):
    # Fixtures in order: the image and the browser are ready before the app starts, so the
    # time to interactive measured below is the app's own.
    from selenium.webdriver.common.by import By

    url, started, log = running_app
    image, label = cifar_image

    wait_for(lambda: healthy(url), START_TIMEOUT_S, "the app to answer", log)
    browser.get(url)
    upload = wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, "input[type=file]"),
        START_TIMEOUT_S,
        "the file uploader",
        log,
    )[0]
    interactive_s = time.perf_counter() - started

    # What `resnetlab predict` says about the image with the variant the page starts with.
    best = (app_project / "reports/leaderboard.csv").read_text().splitlines()[1].split(",")[0]
    argv = ["predict", "--models-dir", str(app_project / "models"), "--variant", best]
    assert main([*argv, "--top-k", "1", str(image)]) == 0
    expected = capsys.readouterr().out.strip().replace(str(image), image.name)

    clicked = time.perf_counter()
    upload.send_keys(str(image))

    def result_text() -> str | None:
        # One script per poll: a WebDriver call per element would dominate the timing.
        return browser.execute_script(
            "const found = Array.from(document.querySelectorAll('[data-testid=stMarkdown]'))"
            "  .map(e => e.innerText.trim()).find(t => t.startsWith(arguments[0]));"
            "return found || null;",
            f"{image.name}:",
        )

    seen = wait_for(result_text, RESULT_TIMEOUT_S, "the prediction on the page", log)
    result_s = time.perf_counter() - clicked
    # The run is over and its picture and bar chart are drawn before the screenshot.
    wait_for(
        lambda: browser.execute_script(
            "return !document.querySelector('[data-testid=stStatusWidget]')"
            " && document.querySelector('[data-testid=stVegaLiteChart] canvas,"
            " [data-testid=stVegaLiteChart] svg') !== null"
            " && Array.from(document.images).every(i => i.complete && i.naturalWidth > 0);"
        ),
        RESULT_TIMEOUT_S,
        "the result to be drawn",
        log,
    )
    shot = tmp_path / "classify.png"
    assert browser.save_screenshot(str(shot))

    assert seen == expected
    predicted = seen.split(": ", 1)[1].rsplit(" ", 1)[0]
    assert predicted in browser.page_source
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.width >= 1000
    with capsys.disabled():
        print(
            f"\nbrowser saw {seen!r} for a CIFAR-10 test image labelled {label!r}; "
            f"interactive {interactive_s:.1f} s after `resnetlab app` started, "
            f"result {result_s:.1f} s after the upload; screenshot {shot}"
        )
