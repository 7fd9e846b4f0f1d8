"""Make docs/html_report.png, the README's picture of the HTML report.

Diagnoses the original failure on the embedded default (`--set train.sampler=sequential`), writes
the HTML report to /tmp/qd_sequential.html and photographs the top of the page, 1280 px wide, in
Debian's Chromium driven by Playwright, with every request but the file itself blocked:

    .venv/bin/python docs/make_screenshot.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

HTML = Path("/tmp/qd_sequential.html")
PNG = Path(__file__).resolve().parent / "html_report.png"
# The top of the page: the header, the first finding and its first charts.
WIDTH, HEIGHT = 1280, 1600


def diagnose() -> None:
    """Write the HTML report of the original failure (exit 1: it has findings)."""
    # Keep the embedded dataset out of the home directory, as in the tests.
    env = os.environ | {"QUAD_DOCTOR_CACHE": os.environ.get("QUAD_DOCTOR_CACHE", "/tmp/qdcache")}
    command = [
        str(Path(sys.executable).parent / "quad-doctor"), "diagnose",
        "--set", "train.sampler=sequential",
        "--html", str(HTML), "--run-dir", tempfile.mkdtemp(prefix="qd_sequential_run."),
    ]  # fmt: skip
    code = subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode
    if code not in (0, 1) or not HTML.exists():
        sys.exit(f"quad-doctor diagnose exited {code} without writing {HTML}")


def screenshot() -> None:
    """Photograph the top of the page; fail on any request that would leave it."""
    chromium = shutil.which("chromium") or sys.exit("chromium not found: apt-get install chromium")
    own_url = HTML.as_uri()
    blocked: list[str] = []

    def only_the_file(route):
        if route.request.url == own_url:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.route("**/*", only_the_file)
        page.goto(own_url, wait_until="load")
        page.screenshot(path=PNG)
        browser.close()
    if blocked:
        sys.exit(f"the page asked for {blocked}")
    print(f"{PNG} ({PNG.stat().st_size / 1000:.0f} kB)")


if __name__ == "__main__":
    diagnose()
    screenshot()
