"""`/docs` renders in a real headless browser with no network beyond loopback (api/docs.py).

Debian's chromium (installed by `.ci/run`) is driven by Playwright through `executable_path`, so no
browser is downloaded. Every request to a host other than loopback is aborted and recorded: the page
must render Swagger UI from the API's own assets, list the operations of `/openapi.json`, and offer
both security schemes of the document (Basic and Bearer) in the Authorize dialog.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from tests.live_server import live_server

if TYPE_CHECKING:
    from playwright.sync_api import Route

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: `apt-get install chromium` (.ci/run installs it)")
    return path


@pytest.fixture
def server(tmp_path: Path):
    with live_server(tmp_path) as running:
        yield running


def test_docs_render_offline_with_the_operations_and_both_auth_schemes(server):
    document = httpx.get(f"{server.base_url}/openapi.json").json()
    methods = {"get", "post", "put", "patch", "delete"}
    operations = sum(1 for item in document["paths"].values() for method in item if method in methods)
    assert operations > 20

    blocked: list[str] = []
    served: list[str] = []

    def only_loopback(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOOPBACK:
            served.append(url)
            route.continue_()
        else:
            blocked.append(url)
            route.abort("internetdisconnected")

    # Imported here, not at the top: every test process collects this file, and only one runs it.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True)
        try:
            context = browser.new_context()
            context.route("**/*", only_loopback)
            page = context.new_page()
            page.goto(f"{server.base_url}/docs", wait_until="load")
            page.locator(".opblock").first.wait_for(timeout=20_000)
            shown = page.locator(".opblock").count()
            paths = page.locator(".opblock-summary-path").all_inner_texts()

            page.locator("button.authorize").first.click()
            dialog = page.locator(".dialog-ux .modal-ux")
            dialog.wait_for(timeout=5_000)
            dialog_text = dialog.inner_text()
            username_inputs = dialog.locator("input[type=text]").count()
            password_inputs = dialog.locator("input[type=password]").count()
        finally:
            browser.close()

    assert blocked == [], f"the page tried to leave the machine: {blocked}"
    assert any("/docs/assets/swagger-ui-bundle.js" in url for url in served), served
    assert shown == operations, (shown, operations)
    assert any(p.replace("\u200b", "") == "/api/orders/process" for p in paths), paths
    assert "basicAuth" in dialog_text and "Basic" in dialog_text, dialog_text
    assert "bearerAuth" in dialog_text and "Bearer" in dialog_text, dialog_text
    # Basic asks for a username (text) and a password; Bearer for the token (text).
    assert (username_inputs, password_inputs) == (2, 1)
