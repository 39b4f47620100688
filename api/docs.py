"""Swagger UI at `/docs`, served from the installed package with no CDN (CONTRACT.md, "Runtime":
the API documents itself at `/docs` and `/openapi.json`).

FastAPI's default `/docs` page loads Swagger UI's JavaScript, CSS and favicon from a CDN, so on a
machine that cannot reach it the page stays blank. `install_docs` serves the same assets from the
`fastapi-offline` package (Swagger UI 5, which renders the OpenAPI 3.1 document FastAPI writes) under
`DOCS_ASSETS_PATH`, and the page itself from FastAPI's `get_swagger_ui_html`. Create the app with
`docs_url=None` and call `install_docs(app)`; `/openapi.json` is FastAPI's own.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: The page: the one route `install_docs` adds.
DOCS_PATH = "/docs"
#: Where the assets are mounted: `swagger-ui-bundle.js`, `swagger-ui.css`, `favicon.png`.
DOCS_ASSETS_PATH = "/docs/assets"
#: The directory of those files inside the installed `fastapi-offline` package.
ASSETS_DIRECTORY = files("fastapi_offline") / "static"


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at `/docs` (HTML) and its assets under `/docs/assets/` (static files, 404 for
    any other name), both public and left out of the OpenAPI document. The page reads the app's
    `openapi_url` under the request's `root_path`, so it also works behind a path prefix."""
    if app.openapi_url is None:
        raise ValueError("install_docs needs an app with an OpenAPI document (openapi_url is None)")
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=str(ASSETS_DIRECTORY)), name="swagger-ui-assets")
    openapi_url = app.openapi_url

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_PATH}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
