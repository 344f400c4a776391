"""The web page at / in a real browser (Debian's Chromium driven by Playwright).

Skipped where no Chromium is installed; the test command installs it where it can.
"""

import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lorif_serve.server.app import create_app
from lorif_serve.server.loading import load_service
from lorif_serve.server.metrics import ServerMetrics
from lorif_serve.server.settings import ServerSettings
from tests.builders import LiveServer, build_small_index

CHROMIUM = os.environ.get("LORIF_CHROMIUM") or shutil.which("chromium")
KEY = "page-test-key"
# The flags a sandboxed, offline, headless run needs (no background connections).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def page_app(model_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "page.h5"
    index = build_small_index(model_dir, data_file, out, "--factor-rank", "2")
    settings = ServerSettings(index=index, device="cpu", api_keys=KEY)
    return create_app(settings, load_service(settings, ServerMetrics()))


def test_page_and_assets_are_served_with_a_strict_policy(page_app):
    with TestClient(page_app) as client:
        page = client.get("/")
        script = client.get("/ui/app.js")
        missing = client.get("/ui/secrets.txt")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/ui/app.js"' in page.text
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert missing.status_code == 404 and missing.json()["status"] == 404


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium here (scripts/test.sh installs Debian's where it can)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


def test_a_query_in_the_browser(page_app, browser, tmp_path):
    with LiveServer(page_app) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url + "/")
        # Without the key the index cannot be read: the problem is shown, readably.
        page.wait_for_selector("#error:not([hidden])")
        assert "401" in page.inner_text("#error")
        page.fill("#api-key", KEY)
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector("#filters select")  # the topic menu from /v1/index
        assert page.is_hidden("#error")
        # A query that the server refuses: its problem details appear, nothing else.
        page.click("#ask")
        page.wait_for_selector("#error:not([hidden])")
        assert "422" in page.inner_text("#error") and "completion" in page.inner_text("#error")
        page.fill("#prompt", "the market")
        page.fill("#completion", "shares rose more")
        page.fill("#top-k", "5")
        page.click("#ask")
        page.wait_for_selector("#proponents .result")
        assert page.is_hidden("#error")
        assert page.locator("#proponents .result").count() == 5
        assert page.locator("#opponents-list .result").count() == 5
        tokens = page.locator("#proponents .result").first.locator(".tok")
        assert tokens.count() > 0  # the example's text, token by token, coloured by score
        colours = {tokens.nth(i).evaluate("n => n.style.backgroundColor") for i in range(3)}
        assert all(c.startswith("rgba(") for c in colours)
        completion = page.locator("#completion-tokens .tok")
        assert [completion.nth(i).inner_text() for i in range(completion.count())] == [
            "shares",
            "rose",
            "more",
        ]
        before = completion.first.evaluate("n => n.style.backgroundColor")
        page.locator("#opponents-list .result").first.click()  # another example: new colours
        assert completion.first.evaluate("n => n.style.backgroundColor") != before
        page.locator("#proponents .result details.layers summary").first.click()
        assert page.locator("#proponents .result details.layers tr").first.is_visible()
        # A filter from the menu: every result has that topic.
        assert page.locator("#filters select").count() == 1  # topic; chunk bookkeeping is not
        page.select_option("#filters select[data-field=topic]", label="t1")
        page.click("#ask")
        page.wait_for_function(
            "() => document.querySelector('#query-meta').textContent.includes('match')"
        )
        metas = page.locator("#proponents .result .meta").all_inner_texts()
        assert metas and all("topic: t1" in m for m in metas)
        shot = Path(os.environ.get("LORIF_SCREENSHOT_DIR", tmp_path)) / "page-test.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
