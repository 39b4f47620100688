"""`/docs` serves Swagger UI from the installed package (api/docs.py): the page names no host, and
its assets are served by the API itself."""

from __future__ import annotations

import re


async def test_the_docs_page_loads_only_the_apis_own_assets(anon):
    page = await anon.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert re.findall(r"https?://", html) == [], "the page must not load anything from another host"
    assert "/docs/assets/swagger-ui-bundle.js" in html
    assert "/docs/assets/swagger-ui.css" in html
    assert "'/openapi.json'" in html or '"/openapi.json"' in html
    for asset, kind in [
        ("swagger-ui-bundle.js", "javascript"),
        ("swagger-ui.css", "text/css"),
        ("favicon.png", "image/png"),
    ]:
        served = await anon.get(f"/docs/assets/{asset}")
        assert served.status_code == 200, asset
        assert kind in served.headers["content-type"], (asset, served.headers["content-type"])


async def test_docs_assets_serve_only_the_packaged_files(anon):
    assert (await anon.get("/docs/assets/nothing.js")).status_code == 404
    assert (await anon.get("/docs/assets/../../core/config.py")).status_code == 404
    assert (await anon.get("/redoc")).status_code == 404


async def test_the_openapi_document_is_unchanged_by_the_docs_page(anon):
    document = (await anon.get("/openapi.json")).json()
    assert not any(path.startswith("/docs") for path in document["paths"])
    assert set(document["components"]["securitySchemes"]) == {"basicAuth", "bearerAuth"}
