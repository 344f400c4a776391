"""Screenshot of the web page answering a held-out demo query (docs/page.png).

    .venv/bin/python scripts/page_screenshot.py --url http://127.0.0.1:8000 --out docs/page.png

Needs a running server on the demo index (``python -m examples.bbc --keep-serving``),
Debian's Chromium and Playwright (both installed by the test command).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", type=Path, default=Path("docs/page.png"))
    parser.add_argument("--held-out", type=Path, default=Path(".cache/bbc/held_out.jsonl"))
    parser.add_argument("--article", type=int, default=0)
    args = parser.parse_args()
    line = args.held_out.read_text(encoding="utf-8").splitlines()[args.article]
    article = json.loads(line)
    lines = [x.strip() for x in article["text"].splitlines() if x.strip()]
    words = " ".join(lines[1:]).split()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(args.url + "/")
        page.fill("#prompt", lines[0] + "\n\n" + " ".join(words[:12]))
        page.fill("#completion", " " + " ".join(words[12:30]))
        page.fill("#top-k", "4")
        page.click("#ask")
        page.wait_for_selector("#proponents .result", timeout=60_000)
        page.locator("#proponents .result details.layers summary").first.click()
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
