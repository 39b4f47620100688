"""The request context middleware (pure ASGI, outermost of the app's own middleware).

For every HTTP request it: takes the client's `X-Request-ID` when it is a sane token or makes one,
puts it in `core.context.request_id_var` and on the response; records the Prometheus request metrics;
writes one access log line; and turns any exception that escaped the handlers into the generic 500
envelope, logged with the request id and its traceback (which never leaves the process).
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import metrics
from api.errors import InternalError, send_error
from core.context import request_id_var

access_log = logging.getLogger("orderflow.access")
error_log = logging.getLogger("orderflow.api")

_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = header(scope, b"x-request-id")
        request_id = incoming if incoming and _SANE_ID.match(incoming) else os.urandom(16).hex()
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # noqa: BLE001 - the last line of defence: answer the generic 500
            error_log.exception("unhandled error request_id=%s", request_id)
            if not response_started:
                await send_error(send_with_id, scope["path"], InternalError())
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            method = scope["method"]
            metrics.http_requests.labels(method, route, str(status)).inc()
            metrics.http_latency.labels(method, route).observe(elapsed)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "request",
                    extra={
                        "request_id": request_id,
                        "method": method,
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "client": (scope.get("client") or ("-",))[0],
                        "user": _username(scope),
                        "manager_id": (scope.get("state") or {}).get("manager_id"),
                    },
                )
            request_id_var.reset(token)


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of request header `name` (lower-case bytes), or None."""
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _username(scope: Scope) -> str | None:
    """The authenticated user (set on `request.state` by `api.auth.authenticate`), if any."""
    principal = (scope.get("state") or {}).get("principal")
    return getattr(principal, "username", None)


def _route_template(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
