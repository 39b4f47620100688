"""HTTP method semantics of the routing (RFC 9110, section 15.5.6; CONTRACT.md, "Core API": a method
a path does not support is 405 with `Allow`).

- `allowed_methods(routes, path)`: every method of the resource at `path`, for the `Allow` header of
  a 405 (Starlette's own 405 names only the methods of the first route it tried).
- `install_fixed_path_methods(app)`: a fixed path (no parameters) such as `/products/below_requirement`
  or `/api/orders/process` is that resource for every method. Without this, a method it does not
  support would fall through to a neighbouring parameter route (`PUT /products/{product_id}`,
  `GET /api/orders/{order_id}`) and be a 400 about a bad id; with it, it is a 405 naming the methods
  the fixed path has.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

#: The order methods are listed in `Allow`; a fixed path answers 405 to those it does not have.
_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _sort_key(method: str) -> tuple[int, str]:
    return (_METHOD_ORDER.index(method) if method in _METHOD_ORDER else len(_METHOD_ORDER), method)


class _MethodNotAllowed:
    """An ASGI endpoint that answers 405 (the error handler adds `Allow`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise HTTPException(status_code=405)


def _routes(routes: Iterable[BaseRoute]) -> list[tuple[str, set[str], re.Pattern[str]]]:
    """(path template, methods, compiled path pattern) of every HTTP route of the app, through the
    included routers, leaving out the 405 routes added here."""
    found: list[tuple[str, set[str], re.Pattern[str]]] = []
    for context in iter_route_contexts(list(routes)):
        methods, path = context.methods, context.path
        if not methods or not path or isinstance(context.endpoint, _MethodNotAllowed):
            continue
        found.append((path, set(methods), context.path_regex))
    return found


def allowed_methods(routes: Iterable[BaseRoute], path: str) -> list[str]:
    """The methods of the resource at `path`, in a stable order: those of the routes whose template
    is exactly `path` when there are any (a fixed path wins over a parameter route that would also
    match it), else those of every route whose template matches it."""
    matching = [(template, methods) for template, methods, regex in _routes(routes) if regex.match(path)]
    fixed = [(template, methods) for template, methods in matching if template == path]
    allowed: set[str] = set()
    for _, methods in fixed or matching:
        allowed |= methods
    return sorted(allowed, key=_sort_key)


def install_fixed_path_methods(app: FastAPI) -> None:
    """After the routers are included: for each fixed path (no parameters) that a parameter route
    also matches, put first in the app's routes a route that answers 405 to the methods the fixed
    path does not have (Starlette takes the first route that matches path and method; for the
    fixed path's own methods this one matches only partly, so the real route is still found)."""
    routes = _routes(app.router.routes)
    fixed: dict[str, set[str]] = {}
    for template, methods, _ in routes:
        if "{" not in template:
            fixed.setdefault(template, set()).update(methods)
    for path, methods in fixed.items():
        if not any("{" in template and regex.match(path) for template, _, regex in routes):
            continue
        others = [m for m in _METHOD_ORDER if m not in methods]
        app.router.routes.insert(0, Route(path, _MethodNotAllowed(), methods=others, include_in_schema=False))
