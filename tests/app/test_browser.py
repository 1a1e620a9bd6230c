"""A real browser (Debian's headless Chromium, driven by Playwright) uses the Explain tab.

Playwright's own browser download cannot work offline, so the test drives /usr/bin/chromium.
When it is missing the test installs it (as root with apt-get) or is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import running_app

from cnnviz.app import settings as core
from scripts.chromium import CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.app]

CHROMIUM = Path("/usr/bin/chromium")
SETTINGS = core.AppSettings(weights="random", allow_any_model=True, default_model="test_resnet")


def ensure_chromium() -> None:
    """Install Debian's chromium if it is missing and we may; otherwise skip, saying why."""
    if CHROMIUM.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            f"BROWSER TEST NOT RUN: {CHROMIUM} is missing and cannot be installed here (needs root and "
            "apt-get). Install it with `apt-get install chromium` or run scripts/run_tests.sh as root."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            pytest.skip(f"BROWSER TEST NOT RUN: `{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")


@pytest.fixture(scope="module")
def app_url():
    with running_app(SETTINGS) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    ensure_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def gallery_captions(page) -> list[str]:
    return [c.strip() for c in page.locator("#cnnviz-gallery .caption-label").all_inner_texts()]


def test_upload_explain_shows_one_overlay_per_method(app_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url, wait_until="domcontentloaded")
    page.locator("#cnnviz-anatomy").get_by_text("CAM exact").wait_for(timeout=60_000)  # load event ran

    checked = page.locator("#cnnviz-methods label:has(input:checked)").all_inner_texts()
    assert len(checked) >= 2, checked
    page.locator("#cnnviz-image input[type=file]").set_input_files(str(core.EXAMPLES_DIR / "chelsea.jpg"))
    page.locator("#cnnviz-image img").first.wait_for(timeout=30_000)
    page.locator("#cnnviz-explain").click()
    page.wait_for_function(
        "n => document.querySelectorAll('#cnnviz-gallery img').length == n", arg=len(checked), timeout=90_000
    )
    captions = gallery_captions(page)
    assert [c.split(" · ")[0] for c in captions] == [c.strip() for c in checked]
    assert all(c.endswith("random weights") for c in captions), captions
    assert page.locator("#cnnviz-banner").is_visible()
    page.locator("#cnnviz-predictions").get_by_text("Top-5 predictions · random weights").wait_for(
        timeout=30_000
    )
    shot = tmp_path / "explain.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"browser screenshot: {shot}")

    # Clicking the third prediction makes it the target and explains it again.
    third = page.locator("#cnnviz-predictions button, #cnnviz-predictions .confidence-set").nth(2)
    third_name = third.inner_text().split("\n")[0].strip()
    third.click()
    page.wait_for_function(
        "name => [...document.querySelectorAll('#cnnviz-gallery .caption-label')]"
        ".every(c => c.textContent.includes(' · ' + name + ' · '))",
        arg=third_name,
        timeout=90_000,
    )
    page.close()


def test_choosing_an_early_layer_marks_cam_not_applicable(app_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url, wait_until="domcontentloaded")
    page.locator("#cnnviz-anatomy").get_by_text("CAM exact").wait_for(timeout=60_000)
    cam = page.locator("#cnnviz-methods label", has=page.locator("input[name=cam]"))
    assert cam.inner_text().strip() == "CAM"
    page.get_by_text("Target, layer and colours").click()
    page.get_by_label("Layer (CAM family)").click()
    page.get_by_role("option", name="layer3", exact=True).click()
    cam.get_by_text("CAM (n/a)").wait_for(timeout=30_000)
    assert not page.locator("#cnnviz-methods input[name=cam]").is_checked()
    assert "CAM" in page.locator("#cnnviz-refused").inner_text()
    page.close()


TILES = """() => [...document.querySelectorAll('#cnnviz-gallery .thumbnail-lg')].map(t => {
  const i = t.querySelector('img').getBoundingClientRect();
  const c = t.querySelector('.caption-label').getBoundingClientRect();
  return {img: [i.left, i.top, i.right, i.bottom], cap: [c.left, c.top, c.right, c.bottom]};
})"""
GRID = """() => { const i = document.querySelector('#cnnviz-grid img'); const r = i.getBoundingClientRect();
  const c = document.createElement('canvas'); c.width = i.naturalWidth; c.height = i.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(i, 0, 0);
  const h = Math.min(200, i.naturalHeight); const d = g.getImageData(0, i.naturalHeight - h, c.width, h).data;
  let bar = 0;  // the most distinct colours on one row of the bottom 200 px: a colour bar has ~hundreds
  for (let y = 0; y < h; y++) { const seen = new Set();
    for (let x = 0; x < c.width; x++) {
      const k = 4 * (y * c.width + x); seen.add((d[k] << 16) | (d[k + 1] << 8) | d[k + 2]); }
    bar = Math.max(bar, seen.size); }
  return {natural: [i.naturalWidth, i.naturalHeight], shown: [r.left, r.right, r.width, r.height],
          page: document.documentElement.scrollWidth, bar: bar}; }"""


@pytest.mark.parametrize("width", [1400, 390])
def test_captions_sit_under_the_pictures_and_the_colour_bar_fits(app_url, browser, width):
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.goto(app_url, wait_until="domcontentloaded")
    page.locator("#cnnviz-anatomy").get_by_text("CAM exact").wait_for(timeout=60_000)
    page.locator("#cnnviz-image input[type=file]").set_input_files(str(core.EXAMPLES_DIR / "chelsea.jpg"))
    page.locator("#cnnviz-image img").first.wait_for(timeout=30_000)
    page.locator("#cnnviz-explain").click()
    page.wait_for_function(
        "() => document.querySelectorAll('#cnnviz-gallery .thumbnail-lg img').length >= 2", timeout=90_000
    )
    page.wait_for_timeout(500)  # layout settles after the images load
    tiles = page.evaluate(TILES)
    for t in tiles:
        (il, _, ir, ib), (cl, ct, cr, cb) = t["img"], t["cap"]
        assert ct >= ib - 0.5 and cb > ct, t  # the caption is below the picture, not on it
        assert cl >= il - 0.5 and cr <= ir + 0.5, t  # ... and no wider than it
        assert ir <= width and ir - il >= min(200, width * 0.6), t  # a picture one can read
    # No label drawn on the first picture ("Overlays" used to sit on it).
    first = tiles[0]["img"]
    labels = page.locator("#cnnviz-gallery [data-testid=block-label]")
    for k in range(labels.count()):
        box = labels.nth(k).bounding_box()
        assert box is None or box["y"] + box["height"] <= first[1] or box["y"] >= first[3], box

    # Compare on one shared colour scale: the grid, its colour bar included, fits the page.
    page.get_by_role("tab", name="Compare").click()
    page.locator("#cnnviz-compare-image input[type=file]").set_input_files(
        str(core.EXAMPLES_DIR / "chelsea.jpg")
    )
    page.locator("#cnnviz-compare-image img").first.wait_for(timeout=30_000)
    page.get_by_label("One colour scale per method across models").check()
    page.locator("#cnnviz-compare").click()
    page.locator("#cnnviz-grid img").wait_for(timeout=180_000)
    page.wait_for_function("() => document.querySelector('#cnnviz-grid img').naturalHeight > 0")
    grid = page.evaluate(GRID)
    left, right, shown_w, shown_h = grid["shown"]
    natural_w, natural_h = grid["natural"]
    assert left >= 0 and right <= width + 0.5 and grid["page"] <= width, grid  # no sideways scrolling
    assert abs(shown_h / shown_w - natural_h / natural_w) < 0.02, grid  # scaled, not cropped
    assert grid["bar"] >= 100, grid  # a colour bar under the grid (a caption row has a few colours)
    page.close()


def test_evaluate_shows_the_curves_and_the_score_table(app_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url, wait_until="domcontentloaded")
    page.locator("#cnnviz-anatomy").get_by_text("CAM exact").wait_for(timeout=60_000)
    page.locator("#cnnviz-image input[type=file]").set_input_files(str(core.EXAMPLES_DIR / "chelsea.jpg"))
    page.locator("#cnnviz-image img").first.wait_for(timeout=30_000)
    assert not page.locator("#cnnviz-evaluate").is_visible()  # off by default: the panel is closed
    page.get_by_text("Evaluate the maps: deletion, insertion, Average Drop").click()
    page.locator("#cnnviz-evaluate").click()
    page.locator("#cnnviz-eval-curves img").wait_for(timeout=120_000)
    table = page.locator("#cnnviz-eval-table table")
    table.wait_for(timeout=30_000)
    checked = page.locator("#cnnviz-methods label:has(input:checked)").all_inner_texts()
    rows = table.locator("tbody tr").all_inner_texts()
    assert [r.split("\t")[0].strip() for r in rows] == [f"{c.strip()} (RANDOM WEIGHTS)" for c in checked]
    assert "(lower is better)" in table.locator("thead").inner_text()
    assert "RANDOM WEIGHTS" in page.locator("#cnnviz-eval-table").inner_text()
    page.wait_for_function("() => document.querySelectorAll('#cnnviz-gallery img').length > 0")
    page.locator("#cnnviz-methods label:has(input:checked)").first.click()  # other maps: old scores go
    table.wait_for(state="detached", timeout=30_000)
    assert page.locator("#cnnviz-eval-curves img").count() == 0
    page.close()


def test_sanity_check_tab_shows_the_strip_the_curves_and_the_reading(app_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url, wait_until="domcontentloaded")
    page.get_by_role("tab", name="Sanity check").click()
    page.locator("#cnnviz-sanity-image input[type=file]").set_input_files(
        str(core.EXAMPLES_DIR / "chelsea.jpg")
    )
    page.locator("#cnnviz-sanity-image img").first.wait_for(timeout=30_000)
    page.locator("#cnnviz-sanity").click()
    page.locator("#cnnviz-sanity-curves img").wait_for(timeout=120_000)
    assert page.locator("#cnnviz-sanity-strip img").first.is_visible()
    text = page.locator("#cnnviz-sanity-text")
    text.locator("table").wait_for(timeout=30_000)
    assert "RANDOM WEIGHTS" in text.inner_text() and "classifier" in text.locator("thead").inner_text()
    page.locator("#cnnviz-sanity-methods label:has(input:checked)").first.click()  # other inputs
    text.locator("table").wait_for(state="detached", timeout=30_000)
    assert page.locator("#cnnviz-sanity-strip img").count() == 0
    page.close()
