"""The HTML report as a reader sees it: opened offline in a real headless Chromium.

Drives Debian's `chromium` (which `.ci/run` installs) with Playwright; Playwright's own browser
downloads are never used. Without Chromium these tests fail, unless QUAD_DOCTOR_SKIP_BROWSER=1.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_support import run, sets
from playwright.sync_api import Browser, Page, sync_playwright

from quad_doctor.trainer.config import SyntheticConfig
from quad_doctor.trainer.synthetic import write_dataset

INJECTED = "<script>alert(1)</script>"
# One page holding every chart as inline SVG; a megabyte or two is plenty (the report's contract).
MAX_PAGE_BYTES = 5_000_000
# class counts, the sampler's batches and the LR range test's curve, at least
MIN_CHARTS = 3
DESKTOP, PHONE = 1280, 390
# rounding of sub-pixel layout; anything wider is a real sideways scroll
OVERFLOW_SLACK_PX = 4
# For the failure message: the first elements that reach past the screen's right edge.
WIDER_THAN_THE_SCREEN = """[...document.querySelectorAll("body *")]
    .filter((e) => e.getBoundingClientRect().right > innerWidth)
    .slice(0, 5)
    .map((e) => `<${e.tagName.toLowerCase()} class="${e.getAttribute("class") ?? ""}">`
                + ` right=${Math.round(e.getBoundingClientRect().right)}`)"""


@dataclass
class Visit:
    """An opened page and what it tried behind the reader's back."""

    page: Page
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    """`diagnose --html` on the original failure (one class per batch), over a dataset whose
    class names include a script tag."""
    data = write_dataset(SyntheticConfig(num_samples=240), tmp_path_factory.mktemp("d") / "data")
    names = json.loads((data / "classes.json").read_text())
    names[2] = INJECTED
    (data / "classes.json").write_text(json.dumps(names))
    out = tmp_path_factory.mktemp("html") / "report.html"
    code, stdout, stderr = run(
        "diagnose",
        *sets([f'data.path="{data}"', "train.sampler=sequential", "train.batch_size=16"]),
        "--html", str(out), "--run-dir", str(tmp_path_factory.mktemp("run")),
    )  # fmt: skip
    assert code == 1, stdout + stderr  # the sampler's critical finding
    return out


def chromium_executable() -> str:
    """Debian's Chromium, or a failure saying how to get it."""
    found = shutil.which("chromium") or shutil.which("chromium", path="/usr/bin")
    if found:
        return found
    if os.environ.get("QUAD_DOCTOR_SKIP_BROWSER") == "1":
        pytest.skip("chromium not installed and QUAD_DOCTOR_SKIP_BROWSER=1")
    pytest.fail(
        "chromium not found on PATH: the HTML report's browser tests need Debian's chromium, "
        "which .ci/run installs (apt-get install chromium); set QUAD_DOCTOR_SKIP_BROWSER=1 to "
        "skip them",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module."""
    executable = chromium_executable()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        yield browser
        browser.close()


@contextmanager
def offline_visit(
    browser: Browser, path: Path, width: int = DESKTOP, javascript: bool = True
) -> Iterator[Visit]:
    """Open the file with every request but the file itself aborted and recorded."""
    own_url = path.as_uri()
    context = browser.new_context(
        viewport={"width": width, "height": 900}, java_script_enabled=javascript
    )
    visit = Visit(context.new_page())

    def only_the_file(route):
        url = route.request.url
        if url == own_url or url.startswith("data:"):
            route.continue_()
        else:
            visit.blocked.append(url)
            route.abort()

    def on_console(message):
        if message.type == "error":
            visit.errors.append(message.text)

    def on_dialog(dialog):
        visit.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    context.route("**/*", only_the_file)
    visit.page.on("console", on_console)
    visit.page.on("pageerror", lambda error: visit.errors.append(str(error)))
    visit.page.on("dialog", on_dialog)
    try:
        visit.page.goto(own_url, wait_until="load")
        yield visit
    finally:
        context.close()


def test_the_page_stays_offline_and_shows_a_script_class_name_as_text(browser, report_html):
    assert report_html.stat().st_size < MAX_PAGE_BYTES
    with offline_visit(browser, report_html) as visit:
        assert INJECTED in visit.page.locator("body").inner_text()
        assert INJECTED not in visit.page.content()  # as a text node it serialises escaped
        assert visit.blocked == []
        assert visit.errors == []
        assert visit.dialogs == []


@pytest.mark.parametrize("javascript", [True, False], ids=["js", "no-js"])
def test_at_least_three_captioned_charts_are_drawn(browser, report_html, javascript):
    with offline_visit(browser, report_html, javascript=javascript) as visit:
        figures = visit.page.locator("figure.chart")
        charts = visit.page.locator("figure.chart svg")
        assert charts.count() >= MIN_CHARTS
        for index in range(charts.count()):
            box = charts.nth(index).bounding_box()
            assert charts.nth(index).is_visible() and box["width"] > 0 and box["height"] > 0, index
        for index in range(figures.count()):
            assert figures.nth(index).locator("figcaption").inner_text().strip(), index
        assert visit.blocked == []
        assert visit.errors == []


def test_a_full_page_screenshot_is_1280_px_wide(browser, report_html, tmp_path):
    shot = tmp_path / "report.png"
    with offline_visit(browser, report_html) as visit:
        visit.page.screenshot(path=shot, full_page=True)
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert int.from_bytes(png[16:20], "big") == DESKTOP  # the IHDR's width


def test_a_phone_never_scrolls_sideways(browser, report_html):
    with offline_visit(browser, report_html, width=PHONE) as visit:
        page_width = visit.page.evaluate("document.documentElement.scrollWidth")
        assert page_width <= PHONE + OVERFLOW_SLACK_PX, visit.page.evaluate(WIDER_THAN_THE_SCREEN)
        assert visit.errors == []
