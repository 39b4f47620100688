"""How routes declare their dependencies (api/deps.py): the user is read with the request's own
session wherever a route has one, and only `POST /orders` authenticates through the one-node
`request_principal`, whose OpenAPI security the route states itself."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.routing import APIRoute

from api.deps import get_session, optional_principal, request_principal
from api.main import create_app
from core.config import settings

pytestmark = pytest.mark.pure


def solved_in_order(route: APIRoute) -> list[Callable[..., Any]]:
    """The dependency callables of `route` in the order FastAPI solves them (depth first)."""
    order: list[Callable[..., Any]] = []

    def visit(node: Any) -> None:
        for sub in node.dependencies:
            visit(sub)
            order.append(sub.call)

    visit(route.dependant)
    return order


def routes() -> list[APIRoute]:
    """Every `APIRoute` of the app, those of the included routers too."""
    found: list[APIRoute] = []
    pending: list[Any] = list(create_app(settings, start_embedded_worker=False).routes)
    while pending:
        route = pending.pop()
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):  # FastAPI's included router
            pending.extend(route.original_router.routes)
    assert len(found) > 20
    return found


def test_a_route_with_a_session_solves_it_before_the_user_so_authentication_shares_it():
    """`optional_principal` reads the user with the request's session only when `get_session` was
    solved first; otherwise it opens a read session of its own (a second pooled connection)."""
    late = []
    for route in routes():
        calls = solved_in_order(route)
        both = get_session in calls and optional_principal in calls
        if both and calls.index(optional_principal) < calls.index(get_session):
            late.append(f"{sorted(route.methods)} {route.path}")
    assert late == []
    assert any(
        get_session in solved_in_order(r) and optional_principal in solved_in_order(r) for r in routes()
    )


def test_only_post_orders_authenticates_in_one_node_and_it_declares_its_security():
    one_node = [r for r in routes() if request_principal in solved_in_order(r)]
    assert [(sorted(r.methods), r.path) for r in one_node] == [(["POST"], "/orders")]
    assert one_node[0].openapi_extra == {"security": [{"basicAuth": []}, {"bearerAuth": []}]}


def runs_on_the_event_loop(call: Any) -> bool:
    """Whether FastAPI awaits `call` (a coroutine function, an async generator function, or an
    object whose `__call__` is one, such as a security scheme) instead of running it in its thread
    pool. A class is called in the thread pool."""
    if inspect.isclass(call):
        return False
    target = call if inspect.isroutine(call) else type(call).__call__
    return inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)


def test_no_route_runs_an_endpoint_or_a_dependency_in_the_thread_pool():
    """FastAPI runs a plain function (or a class) in its thread pool: a thread hop per request, for
    code that never blocks. Every endpoint and dependency is awaited on the event loop."""
    blocking = [
        f"{sorted(route.methods)} {route.path}: {getattr(call, '__qualname__', call)!r}"
        for route in routes()
        for call in [route.endpoint, *solved_in_order(route)]
        if not runs_on_the_event_loop(call)
    ]
    assert blocking == []
