"""The report in a real browser: headless Chromium (Debian's ``chromium`` package) via Playwright.

Checks what only a browser can: no request leaves the file (every other request is routed to an
abort and recorded), every image decodes, the page logs no error, the sections are there, the
slide grid's filter and sort work, print styles apply, and a screenshot is not blank.
Without a Chromium on the machine the tests are skipped with one line saying how to install one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from brcatool.report import ReportConfig, run_report
from brcatool.report.collect import SECTIONS

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
CARDS = "Array.from(document.querySelectorAll('#slide-grid .slide'))"
INSTALL = ("no Chromium found: install Debian's browser with `sudo apt-get install chromium` "
           "(or set BRCATOOL_CHROMIUM=/path/to/chromium)")


def chromium() -> str | None:
    """BRCATOOL_CHROMIUM, else the first Chromium/Chrome on the machine."""
    env = os.environ.get("BRCATOOL_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    exe = chromium()
    if exe is None:
        pytest.skip(INSTALL)
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playwright package is missing: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=ARGS)
        try:
            yield b
        finally:
            b.close()


class Opened:
    """A page opened from file:// with every other request aborted and recorded."""

    def __init__(self, browser, path: Path, width: int = 1280) -> None:
        self.url = path.resolve().as_uri()
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": width, "height": 900})
        self.page.route("**/*", self._route)
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(self.url, wait_until="load")

    def _route(self, route) -> None:
        if route.request.url == self.url:
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def broken_images(self) -> list[str]:
        return self.page.evaluate(
            "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
            ".map(i => i.alt || i.src.slice(0, 40))")


def _not_blank(png: bytes) -> None:
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 100
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    assert gray.std() > 12, "screenshot is (nearly) one colour"
    assert len(np.unique(img.reshape(-1, 3) // 8, axis=0)) > 50, "screenshot has too few colours"


def test_demo_report_in_chromium(browser, mini_demo, tmp_path: Path) -> None:
    path = mini_demo.results["report"].path
    html = path.read_text()
    opened = Opened(browser, path)
    page = opened.page
    assert opened.blocked == [], f"requests left the file: {opened.blocked[:5]}"
    assert opened.errors == [], f"console errors: {opened.errors[:5]}"
    n_images = page.evaluate("document.images.length")
    assert n_images == html.count('src="data:image/') == mini_demo.results["report"].images > 10
    assert opened.broken_images() == []
    assert page.evaluate("Array.from(document.images).every(i => i.alt.length > 0)")
    heads = page.evaluate("Array.from(document.querySelectorAll('main section > h2'))"
                          ".map(h => h.textContent)")
    assert heads == [title for _, title in SECTIONS]
    for sid, _ in SECTIONS:
        assert page.locator(f"nav a[href='#{sid}']").count() == 1
    assert page.evaluate("Array.from(document.querySelectorAll('thead th')).every(t => t.scope === 'col')")
    png = page.screenshot(full_page=False)
    _not_blank(png)
    (tmp_path / "demo.png").write_bytes(png)


def test_slide_grid_filters_and_sorts(browser, mini_demo) -> None:
    page = Opened(browser, mini_demo.results["report"].path).page
    cards = page.locator("#slide-grid .slide")
    total = cards.count()
    patients = page.evaluate(CARDS + ".map(c => c.dataset.patient)")
    assert total == len(patients) > 1
    one = patients[0]
    page.fill("#slide-filter", one.lower())
    visible = page.evaluate(CARDS + ".filter(c => !c.hidden).map(c => c.dataset.patient)")
    assert visible == [one] * patients.count(one)
    assert page.locator("#slide-shown").text_content() == f"{len(visible)} of {total} slides shown"
    page.fill("#slide-filter", "")
    page.select_option("#slide-sort", "patches:desc")
    shown = page.evaluate(CARDS + ".map(c => +c.dataset.patches)")
    assert shown == sorted(shown, reverse=True) and len(shown) == total
    options = page.evaluate("Array.from(document.querySelectorAll('#slide-status option')).map(o => o.value)")
    assert options[0] == "" and "ok" in options  # "all", then the statuses found
    page.fill("#slide-filter", "no-such-slide")
    assert page.evaluate(CARDS + ".every(c => c.hidden)")
    assert page.locator("#slide-shown").text_content() == f"0 of {total} slides shown"


def test_print_styles(browser, mini_demo) -> None:
    page = Opened(browser, mini_demo.results["report"].path).page
    page.emulate_media(media="print")
    assert page.evaluate("getComputedStyle(document.querySelector('nav.toc')).display") == "none"
    assert page.evaluate("getComputedStyle(document.querySelector('.controls')).display") == "none"
    page.evaluate("window.dispatchEvent(new Event('beforeprint'))")
    assert page.evaluate("Array.from(document.querySelectorAll('details')).every(d => d.open)")
    page.evaluate("window.dispatchEvent(new Event('afterprint'))")
    assert not page.evaluate("Array.from(document.querySelectorAll('details')).every(d => d.open)")


def test_partial_workdir_in_chromium(browser, tmp_path: Path) -> None:
    """A workdir where only tile ran, with a slide without tissue and an unreadable one."""
    from brcatool.artifacts import Workdir
    from brcatool.synth import make_cohort
    from brcatool.tiling import TileConfig, run_tile

    files = make_cohort(tmp_path / "c", patients=2, seed=4, slide_size=(1024, 768), genes=60,
                        no_tissue_slides=1, progress=False)
    bad = files.slides_dir / "TCGA-ZZ-0000-01Z-00-DX1.tiff"
    shutil.copy(Path(__file__).parent / "data" / "unopenable.tiff", bad)
    wd = Workdir(tmp_path / "w")
    run_tile(wd, TileConfig(slides=[str(files.slides_dir)], patches=3, seed=0, workers=1), progress=False)
    res = run_report(wd, ReportConfig())
    opened = Opened(browser, res.path, width=820)
    assert opened.blocked == [] and opened.errors == [] and opened.broken_images() == []
    page = opened.page
    assert page.locator(".notrun").count() == 4
    assert page.locator("#slide-grid .slide.failed .err").count() == 1
    assert page.locator("#slide-grid .slide.no_tissue").count() >= 1
    page.select_option("#slide-status", "failed")
    assert page.evaluate(CARDS + ".filter(c => !c.hidden).map(c => c.dataset.status)") == ["failed"]
    _not_blank(page.screenshot(full_page=True))
