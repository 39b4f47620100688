"""Render errors as the core envelope (CONTRACT.md, "Core API"):

    {"error": <title>, "message": <sentence>, "code": <CODE>, "details": {...}, "request_id": "..."}

Validation failures are 400 `Invalid input` (never FastAPI's 422) with every failing field listed in
`details.fields`. Nothing about the server's internals (trace, SQL, driver message, path) is ever put
in a response; a 500 is logged with its request id instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.methods import allowed_methods
from api.nul_characters import NUL_ERROR_TYPE
from core.context import request_id_var
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


#: Every path of the store API starts with this (CONTRACT.md, "Store API").
STORE_PREFIX = "/api/"


def is_store_path(path: str) -> bool:
    """True for a path of the store API, whose errors use the nested envelope."""
    return path.startswith(STORE_PREFIX)


def store_envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The store API's error body (CONTRACT.md, "Store API"):
    `{"error": {"code": "INVALID_REQUEST", "message": "...", "details": {...}}}`. The request id is
    in the `X-Request-ID` header, not in the body."""
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_body(
    path: str, title: str, message: str, code: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The error body for `path`: the store envelope under `/api/`, the core envelope elsewhere."""
    if is_store_path(path):
        return store_envelope(code, message, details)
    return envelope(title, message, code, details)


def error_response(
    exc: DomainError, headers: dict[str, str] | None = None, *, path: str = "/"
) -> JSONResponse:
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": exc.challenge, **(headers or {})}
    body = error_body(path, exc.title, exc.message, exc.code, exc.details)
    return JSONResponse(body, exc.status, headers=headers)


def internal_error_body(path: str = "/") -> dict[str, Any]:
    return error_body(path, "Internal Server Error", INTERNAL_MESSAGE, "INTERNAL_ERROR")


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
    elif kind == NUL_ERROR_TYPE:
        text = f"{entity} {human} {msg}."
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
    fields: list[dict[str, Any]] = []
    for err in errors:
        dotted, text = _field_message(entity, err)
        source = str(err["loc"][0]) if err.get("loc") else "body"
        fields.append({"field": dotted, "in": source, "type": err.get("type"), "message": text})
    seen: list[str] = []
    for f in fields:
        if f["message"] not in seen:
            seen.append(f["message"])
    return " ".join(seen), {"fields": fields}


def store_field_path(loc: Sequence[int | str]) -> str:
    """A pydantic error location as the store API names fields: `products[0].price`; query
    parameters by their name (`status`)."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _store_field_message(field: str, err: dict[str, Any]) -> str:
    """One sentence for one pydantic error, naming the field as the store API does."""
    kind = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    msg = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
    if kind == "missing":
        return f"{field} is required."
    if kind == NUL_ERROR_TYPE:
        return f"{field} {msg}."
    if kind == "json_invalid":
        return "The request body is not valid JSON."
    if field == "body" and kind in {"model_attributes_type", "dict_type", "model_type"}:
        return "The request body must be a JSON object."
    if kind == "extra_forbidden":
        return f"Unknown field '{field}'."
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return f"{field} must be a whole number."
    if kind in {"decimal_type", "decimal_parsing", "float_type", "float_parsing"}:
        return f"{field} must be a number."
    if kind == "decimal_max_places":
        return f"{field} must have at most {ctx.get('decimal_places', 2)} decimal places."
    if kind == "decimal_max_digits":
        return f"{field} is too large."
    if kind == "string_type":
        return f"{field} must be a string."
    if kind == "string_too_short":
        return f"{field} must not be empty."
    if kind == "string_too_long":
        return f"{field} must be at most {ctx.get('max_length')} characters long."
    if kind == "string_pattern_mismatch":
        return f"{field} may only contain letters, digits, '_', '.', ':' and '-'."
    if kind == "greater_than_equal":
        bound = ctx.get("ge")
        return f"{field} cannot be negative." if bound in (0, "0") else f"{field} must be at least {bound}."
    if kind == "less_than_equal":
        return f"{field} must be at most {ctx.get('le')}."
    if kind == "too_short":
        least = ctx.get("min_length")
        return f"{field} must have at least {least} item{'' if least == 1 else 's'}."
    if kind == "too_long":
        return f"{field} must have at most {ctx.get('max_length')} items."
    if kind == "list_type":
        return f"{field} must be a list."
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return f"{field} must be an object."
    if kind == "bool_type":
        return f"{field} must be true or false."
    if kind == "enum":
        return f"{field} must be one of {ctx.get('expected', 'the documented values')}."
    if kind == "value_error":
        if field == "body":  # a rule across fields: the sentence stands alone
            return msg[:1].upper() + msg[1:]
        if msg.startswith("value is not a valid email address"):
            reason = msg.partition(": ")[2]
            reason = reason[:1].lower() + reason[1:]
            return f"{field} is not a valid email address" + (f": {reason}" if reason else ".")
        return f"{field} {msg}" if msg[:1].islower() else f"{field}: {msg}"
    return f"{field}: {msg[:1].lower() + msg[1:]}"


def store_validation_details(
    errors: list[dict[str, Any]], content_type: str | None = None
) -> tuple[str, dict[str, Any]]:
    """(message, details) of a store API validation failure: the message has a sentence per problem;
    `details.field` names the first field that failed (CONTRACT.md, "Store API") and
    `details.fields` lists each one as `{field, message, type}`. A body sent with another
    `Content-Type` than JSON is not read as JSON, and the message says so."""
    fields: list[dict[str, Any]] = []
    not_json = content_type is not None and "json" not in content_type.lower()
    for err in errors:
        kind = err.get("type")
        field = "body" if kind == "json_invalid" else store_field_path(err.get("loc", ()))
        text = _store_field_message(field, err)
        if field == "body" and not_json:
            text = (
                "The request body must be JSON, sent with Content-Type: application/json "
                f"(not {content_type})."
            )
        if not text.endswith("."):
            text += "."
        fields.append({"field": field, "message": text, "type": kind})
    if not fields:
        fields.append({"field": "body", "message": "The request is invalid.", "type": "invalid"})
    messages: list[str] = []
    for f in fields:
        if f["message"] not in messages:
            messages.append(f["message"])
    return " ".join(messages), {"field": fields[0]["field"], "fields": fields}


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
        return error_response(exc, path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        # FastAPI parses a JSON body before it solves the dependencies, and the NUL check
        # (`api.nul_characters`) runs before the route's own, so these two would be a 400 before
        # authentication. Without credentials on a protected route they are the 401 the contract
        # asks for instead.
        if (
            any(e.get("type") in ("json_invalid", NUL_ERROR_TYPE) for e in errors)
            and "authorization" not in request.headers
            and _needs_credentials(request.scope.get("route"))
        ):
            from api.auth import MISSING_MESSAGE

            return error_response(Unauthorized(MISSING_MESSAGE), path=request.url.path)
        if is_store_path(request.url.path):
            message, details = store_validation_details(errors, request.headers.get("content-type"))
            return JSONResponse(store_envelope("INVALID_REQUEST", message, details), 400)
        message, details = validation_details(request, errors)
        return JSONResponse(envelope("Invalid input", message, "INVALID_REQUEST", details), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title, code, message = _HTTP_TITLES.get(
            exc.status_code, ("Error", f"HTTP_{exc.status_code}", "The request failed.")
        )
        if exc.status_code == 400:
            title, code, message = "Invalid input", "INVALID_REQUEST", "The request is malformed."
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # RFC 9110, section 15.5.6: every method of the resource, not only the first route's.
            allow = allowed_methods(request.app.router.routes, request.scope["path"])
            headers["Allow"] = ", ".join(allow) or headers.get("Allow", "")
        return JSONResponse(
            error_body(request.url.path, title, message, code), exc.status_code, headers=headers or None
        )
