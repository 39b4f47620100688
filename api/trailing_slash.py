"""One rule for a trailing slash on every route: `/products/` is served as `/products`.

Starlette's default answers a path that only matches with a slash added or removed with a 307 redirect
to an absolute URL; a client that does not follow redirects on POST (or that drops the body when it
does) then fails, and the redirect costs a store rate-limit slot of its own. The app is built with
`redirect_slashes=False`, and `StripTrailingSlashMiddleware`, outermost, removes one trailing slash
from the path before anything else sees it (the request log, the rate limit, routing). "/" is left
alone, and so is a path ending in two slashes (it stays unmatched: 404 in the surface's envelope).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


def strip_trailing_slash(path: str) -> str:
    """`/a/b/` -> `/a/b`; `/`, `/a/b` and `/a/b//` unchanged."""
    if len(path) > 1 and path.endswith("/") and not path.endswith("//"):
        return path[:-1]
    return path


class StripTrailingSlashMiddleware:
    """Pure ASGI: rewrites `path` and `raw_path` of HTTP requests with one trailing slash."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            stripped = strip_trailing_slash(path)
            if stripped != path:
                scope = dict(scope)
                scope["path"] = stripped
                raw = scope.get("raw_path")
                if raw is not None and raw.endswith(b"/"):
                    scope["raw_path"] = raw[:-1]
        await self.app(scope, receive, send)
