"""Render errors as the core envelope (CONTRACT.md, "Core API"):

    {"error": <title>, "message": <sentence>, "code": <CODE>, "details": {...}, "request_id": "..."}

Validation failures are 400 `Invalid input` (never FastAPI's 422) with every failing field listed in
`details.fields`. Nothing about the server's internals (trace, SQL, driver message, path) is ever put
in a response; a 500 is logged with its request id instead.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.context import request_id_var
from core.errors import DomainError, Unauthorized

log = logging.getLogger("orderflow.api")

INTERNAL_MESSAGE = "An unexpected error occurred, please try again later."

_HTTP_TITLES = {
    404: ("Not found", "NOT_FOUND", "No resource at this path."),
    405: ("Method not allowed", "METHOD_NOT_ALLOWED", "This method is not allowed on this path."),
    413: ("Payload too large", "PAYLOAD_TOO_LARGE", "The request body is too large."),
    415: ("Unsupported media type", "UNSUPPORTED_MEDIA_TYPE", "Send the body as application/json."),
}


def envelope(title: str, message: str, code: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "error": title,
        "message": message,
        "code": code,
        "details": details or {},
        "request_id": request_id_var.get(),
    }


def error_response(exc: DomainError, headers: dict[str, str] | None = None) -> JSONResponse:
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": exc.challenge, **(headers or {})}
    return JSONResponse(envelope(exc.title, exc.message, exc.code, exc.details), exc.status, headers=headers)


def internal_error_body() -> dict[str, Any]:
    return envelope("Internal Server Error", INTERNAL_MESSAGE, "INTERNAL_ERROR")


# --- validation messages -------------------------------------------------------------------------

_ENTITY_BY_SEGMENT = {"products": "Product", "orders": "Order", "users": "User"}


def _entity(request: Request) -> str:
    segment = request.url.path.strip("/").split("/", 1)[0]
    return _ENTITY_BY_SEGMENT.get(segment, "Request")


def _field_message(entity: str, err: dict[str, Any]) -> tuple[str, str]:
    """(dotted location, sentence) for one pydantic error."""
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    where = err["loc"][0] if err.get("loc") else "body"
    field = loc[-1] if loc else "body"
    dotted = ".".join(loc) if loc else str(where)
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    msg = str(err.get("msg", "is invalid"))
    human = field.replace("_", " ")
    if kind == "missing":
        text = f"{entity} {human} is required."
    elif kind == "json_invalid":
        text = "The request body is not valid JSON."
        dotted = "body"
    elif kind == "extra_forbidden":
        text = f"Unknown field '{field}'."
    elif kind in {"greater_than_equal", "greater_than"} and ctx.get("ge", ctx.get("gt")) in (
        0,
        "0",
    ):
        text = (
            f"Cannot set {human} to a negative value."
            if kind == "greater_than_equal"
            else f"{entity} {human} must be greater than 0."
        )
    elif kind == "value_error":
        text = msg.removeprefix("Value error, ")
    elif kind == "model_attributes_type" or (kind == "dict_type" and not loc):
        text = "The request body must be a JSON object."
    else:
        text = f"{entity} {human}: {msg[0].lower() + msg[1:] if msg else 'is invalid'}."
        text = text.replace("..", ".")
    if not text.endswith("."):
        text += "."
    return dotted, text


def validation_details(request: Request, errors: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    entity = _entity(request)
    fields = []
    for err in errors:
        dotted, text = _field_message(entity, err)
        source = str(err["loc"][0]) if err.get("loc") else "body"
        fields.append({"field": dotted, "in": source, "type": err.get("type"), "message": text})
    seen: list[str] = []
    for f in fields:
        if f["message"] not in seen:
            seen.append(f["message"])
    return " ".join(seen), {"fields": fields}


def _needs_credentials(route: Any) -> bool:
    """True when the route requires credentials: it depends on `api.deps.current_principal` or
    `api.deps.current_role`, directly or through a role guard."""
    from api.deps import current_principal, current_role

    dependant = getattr(route, "dependant", None)
    pending = [dependant] if dependant is not None else []
    while pending:
        node = pending.pop()
        if node.call in (current_principal, current_role):
            return True
        pending.extend(node.dependencies)
    return False


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        # FastAPI parses a JSON body before it solves the dependencies, so a body that is not JSON
        # would be a 400 before authentication. Without credentials on a protected route it is the
        # 401 the contract asks for instead.
        if (
            any(e.get("type") == "json_invalid" for e in errors)
            and "authorization" not in request.headers
            and _needs_credentials(request.scope.get("route"))
        ):
            from api.auth import MISSING_MESSAGE

            return error_response(Unauthorized(MISSING_MESSAGE))
        message, details = validation_details(request, errors)
        return JSONResponse(envelope("Invalid input", message, "INVALID_REQUEST", details), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title, code, message = _HTTP_TITLES.get(
            exc.status_code, ("Error", f"HTTP_{exc.status_code}", "The request failed.")
        )
        if exc.status_code == 400:
            title, code, message = "Invalid input", "INVALID_REQUEST", "The request is malformed."
        return JSONResponse(
            envelope(title, message, code), exc.status_code, headers=getattr(exc, "headers", None)
        )
