"""The one place errors become HTTP (STYLE.md rule 11): both envelopes, their statuses and headers.

- The core envelope (CONTRACT.md, "Core API"):
  `{"error": <title>, "message": <sentence>, "code": <CODE>, "details": {...}, "request_id": "..."}`.
- The store envelope, for every path under `/api/` (CONTRACT.md, "Store API"):
  `{"error": {"code": <CODE>, "message": <sentence>, "details": {...}}}`, ids written as public ids
  (`prod_001`, `ord_789`) from the error's values (`core.errors.ID_KINDS`).

Every error is a `core.errors.DomainError` (the edge's own, 404/405/413/415/429/500, are defined
here); `error_body` renders one for a path, `error_response` as a response, `send_error` on a raw
ASGI channel (the middlewares). Validation failures are 400 `Invalid input` (never FastAPI's 422)
with every failing field listed in `details.fields`, translated by `validation_error`. Nothing about
the server's internals (trace, SQL, driver message, path) is ever put in a response; a 500 is logged
with its request id instead. How to add an error: docs/errors.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from api.methods import allowed_methods
from api.nul_characters import NUL_ERROR_TYPE
from core.context import request_id_var
from core.errors import (
    ID_KINDS,
    CredentialsRequired,
    DomainError,
    InvalidInput,
    NotFound,
    Unauthorized,
    template_fields,
    templated_class,
)
from core.store.ids import format_order_id, format_product_id

log = logging.getLogger("orderflow.api")

INTERNAL_MESSAGE = "An unexpected error occurred, please try again later."

#: Every path of the store API starts with this (CONTRACT.md, "Store API").
STORE_PREFIX = "/api/"


def is_store_path(path: str) -> bool:
    """True for a path of the store API, whose errors use the nested envelope."""
    return path.startswith(STORE_PREFIX)


# --- the edge's own errors ------------------------------------------------------------------------


class InternalError(DomainError):
    """500: anything unexpected (the cause is logged, never sent)."""

    status = 500
    code = "INTERNAL_ERROR"
    title = "Internal Server Error"
    template = INTERNAL_MESSAGE
    example_name = "internal"


class MalformedRequest(InvalidInput):
    """400 from the HTTP layer itself (a request Starlette could not read)."""

    template = "The request is malformed."


class MethodNotAllowed(DomainError):
    """405, with `Allow` (RFC 9110, section 15.5.6)."""

    status = 405
    code = "METHOD_NOT_ALLOWED"
    title = "Method not allowed"
    template = "This method is not allowed on this path."


class PayloadTooLarge(DomainError):
    """413: a body larger than the server reads (`limit` bytes, when known)."""

    status = 413
    code = "PAYLOAD_TOO_LARGE"
    title = "Payload too large"

    def __init__(self, max_bytes: int | None = None) -> None:
        if max_bytes is None:
            super().__init__("The request body is too large.")
        else:
            super().__init__(
                f"The request body is larger than {max_bytes} bytes ({max_bytes / 1048576:g} MiB).",
                {"max_bytes": max_bytes},
            )

    @classmethod
    def example(cls) -> DomainError:
        return cls(1048576)


class UnsupportedMediaType(DomainError):
    status = 415
    code = "UNSUPPORTED_MEDIA_TYPE"
    title = "Unsupported media type"
    template = "Send the body as application/json."


class RateLimitExceeded(DomainError):
    """429 of the store API (CONTRACT.md, "Store API"); `retry_after` seconds go in `Retry-After`
    (RFC 9110, section 10.2.3). The limit is counted per `manager_id` when `per_manager`, else per
    client address."""

    status = 429
    code = "RATE_LIMIT_EXCEEDED"
    title = "Too many requests"
    template = (
        "Rate limit exceeded: the store API allows {limit} for {who}. Retry in {retry_after_seconds} {unit}."
    )
    example_name = "rate_limited"

    def __init__(self, limit: str, manager_id: str | None, retry_after: int, *, per_manager: bool) -> None:
        params = {
            "limit": limit,
            "who": f"manager {manager_id}" if per_manager else "this client address",
            "retry_after_seconds": retry_after,
            "unit": "second" if retry_after == 1 else "seconds",
        }
        super().__init__(
            self.sentence(**params),
            {"limit": limit, "manager_id": manager_id, "retry_after_seconds": retry_after},
            params=params,
        )
        self.retry_after = retry_after

    @classmethod
    def example(cls) -> DomainError:
        return cls("100 per 1 hour", "mgr_123", 1312, per_manager=True)


#: The error of each HTTP status Starlette raises by itself.
_HTTP_ERRORS: dict[int, Callable[[], DomainError]] = {
    400: MalformedRequest,
    404: NotFound.example,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


@cache
def _other_status(status: int) -> type[DomainError]:
    """An error class for an HTTP status nothing else names (`HTTP_<status>`)."""
    return type(
        f"HTTPError{status}",
        (DomainError,),
        {"status": status, "code": f"HTTP_{status}", "title": "Error", "__module__": __name__},
    )


def http_error(status: int) -> DomainError:
    """The error for a Starlette `HTTPException` of `status` (an unknown path, a wrong method...)."""
    make = _HTTP_ERRORS.get(status)
    if make is not None:
        return make()
    return _other_status(status)("The request failed.")


# --- rendering ------------------------------------------------------------------------------------


def public_value(key: str, value: Any) -> Any:
    """`value` as the store API writes it: an integer id under a key of `ID_KINDS` becomes its public
    id (`product_id` 7 -> `"prod_007"`, `order_id` 7 -> `"ord_007"`); anything else is unchanged."""
    kind = ID_KINDS.get(key)
    if kind is None or not isinstance(value, int) or isinstance(value, bool):
        return value
    return format_product_id(value) if kind == "product" else format_order_id(value)


def _public_sentence(template: str | None, params: Mapping[str, Any] | None, message: str) -> str:
    if template is None or not params or not template_fields(template) <= params.keys():
        return message
    return template.format(**{key: public_value(key, value) for key, value in params.items()})


def store_message(code: str, message: str, params: Mapping[str, Any] | None) -> str:
    """The sentence of a stored error with `code` as the store API writes it: its class's template
    filled from `params` with public ids. An error given its sentence (no template), or one whose
    values are not all known, keeps `message`."""
    cls = templated_class(code)
    return _public_sentence(cls.template if cls is not None else None, params, message)


def _store_details(details: Mapping[str, Any]) -> dict[str, Any]:
    return {key: public_value(key, value) for key, value in details.items()}


def _store_body(code: str, message: str, details: Mapping[str, Any]) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": dict(details)}}


def core_envelope(error: DomainError) -> dict[str, Any]:
    """The core envelope of `error`, with this request's id."""
    return {
        "error": error.title,
        "message": error.message,
        "code": error.code,
        "details": error.details,
        "request_id": request_id_var.get(),
    }


def store_envelope(error: DomainError) -> dict[str, Any]:
    """The store envelope of `error`, ids written as public ids. The request id is in the
    `X-Request-ID` header, not in the body."""
    message = _public_sentence(error.template, error.params, error.message)
    return _store_body(error.code, message, _store_details(error.details))


def error_body(path: str, error: DomainError) -> dict[str, Any]:
    """The error body for `path`: the store envelope under `/api/`, the core envelope elsewhere."""
    return store_envelope(error) if is_store_path(path) else core_envelope(error)


def error_headers(error: DomainError) -> dict[str, str]:
    """The headers an error carries: `WWW-Authenticate` for a 401 (RFC 9110, section 11.6.1),
    `Retry-After` for a 429."""
    if isinstance(error, Unauthorized):
        return {"WWW-Authenticate": error.challenge}
    if isinstance(error, RateLimitExceeded):
        return {"Retry-After": str(error.retry_after)}
    return {}


def error_response(error: DomainError, path: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """`error` as the response for `path` (its envelope, status and headers, then `headers`)."""
    merged = {**error_headers(error), **(headers or {})}
    return JSONResponse(error_body(path, error), error.status, headers=merged or None)


async def send_error(
    send: Send, path: str, error: DomainError, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Send `error` as the whole response for `path` on an ASGI channel (for the middlewares, which
    answer before or outside the app); `headers` are added to the error's own."""
    raw = json.dumps(error_body(path, error)).encode()
    own = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in error_headers(error).items()
    ]
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                *headers,
                *own,
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


def rejection_response(error: Mapping[str, Any], order_id: int, *, failed: bool = False) -> JSONResponse:
    """A store order's stored error (`DomainError.to_dict()`, or the `failed` object) as the store
    API answers it (CONTRACT.md, "Store API"): the rejection's code and status (404 for a missing
    product or order, else 400), or 500 `INTERNAL_ERROR` for an order that `failed`; `details`
    gain the public `order_id`."""
    code = str(error.get("code") or "INVALID_REQUEST")
    params = {**(error.get("details") or {}), **(error.get("params") or {})}
    message = store_message(code, str(error.get("message", "")), params)
    details = {**_store_details(error.get("details") or {}), "order_id": format_order_id(order_id)}
    if failed:
        return JSONResponse(_store_body("INTERNAL_ERROR", message, details), 500)
    cls = templated_class(code)
    return JSONResponse(_store_body(code, message, details), 404 if cls and cls.status == 404 else 400)


# --- validation: one translator, two namings ------------------------------------------------------

_ENTITY_BY_SEGMENT = {"products": "Product", "orders": "Order", "users": "User"}


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


@dataclass(frozen=True)
class FieldName:
    """How one failing field is named. Core API: `field` is the dotted location without `body`
    (`products.0.quantity`), `subject` the entity and the field's last name (`Product price`), `leaf`
    that last name. Store API: all three are the store's path (`products[0].price`)."""

    field: str
    subject: str
    leaf: str
    store: bool


def field_name(err: Mapping[str, Any], *, store: bool, entity: str = "Request") -> FieldName:
    """The naming of one pydantic error (`store`: the store API's, else the core API's for `entity`)."""
    raw = tuple(err.get("loc") or ())
    if store:
        path = "body" if err.get("type") == "json_invalid" else store_field_path(raw)
        return FieldName(path, path, path, True)
    loc = [str(p) for p in raw if p != "body"]
    leaf = loc[-1] if loc else "body"
    dotted = ".".join(loc) if loc else str(raw[0] if raw else "body")
    if err.get("type") == "json_invalid":
        dotted = "body"
    return FieldName(dotted, f"{entity} {leaf.replace('_', ' ')}", leaf, False)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def field_message(err: Mapping[str, Any], name: FieldName) -> str:
    """One sentence, ending in a full stop, for one pydantic error (CONTRACT.md: the core API's
    examples `Product price is required.`, `Cannot set stock to a negative value.`; the store API
    names fields by path: `products[0].price is required.`)."""
    kind = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    msg = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
    subject, at_body = name.subject, name.field == "body"
    if kind == "missing":
        text = f"{subject} is required."
    elif kind == NUL_ERROR_TYPE:
        text = f"{subject} {msg}."
    elif kind == "json_invalid":
        text = "The request body is not valid JSON."
    elif (name.store and at_body and kind in {"model_attributes_type", "dict_type", "model_type"}) or (
        not name.store
        and (kind == "model_attributes_type" or (kind == "dict_type" and not tuple(err.get("loc") or ())[1:]))
    ):
        text = "The request body must be a JSON object."
    elif kind == "extra_forbidden":
        text = f"Unknown field '{name.leaf}'."
    else:
        specific = (
            _store_sentence(kind, ctx, msg, subject) if name.store else _core_sentence(kind, ctx, msg, name)
        )
        text = specific or f"{subject}: {_lower_first(msg) or 'is invalid'}"
    return text if text.endswith(".") else text + "."


def _core_sentence(kind: str, ctx: Mapping[str, Any], msg: str, name: FieldName) -> str | None:
    """The core API's sentences beyond the shared ones."""
    human = name.leaf.replace("_", " ")
    if kind == "greater_than_equal" and ctx.get("ge") in (0, "0"):
        return f"Cannot set {human} to a negative value."
    if kind == "greater_than" and ctx.get("gt") in (0, "0"):
        return f"{name.subject} must be greater than 0."
    if kind == "value_error":
        return msg
    return None


def _store_sentence(kind: str, ctx: Mapping[str, Any], msg: str, field: str) -> str | None:
    """The store API's sentences beyond the shared ones."""
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
            reason = _lower_first(msg.partition(": ")[2])
            return f"{field} is not a valid email address" + (f": {reason}" if reason else ".")
        return f"{field} {msg}" if msg[:1].islower() else f"{field}: {msg}"
    return None


def validation_error(
    errors: Sequence[Mapping[str, Any]], path: str, content_type: str | None = None
) -> InvalidInput:
    """A validation failure as the 400 `Invalid input` of `path` (CONTRACT.md: never a 422). The
    message has a sentence per distinct problem; `details.fields` lists each failing field. Core API:
    `{field, in, type, message}`, fields named with the path's entity (`/products` -> `Product`).
    Store API (`/api/`): `details.field` names the first field that failed and each entry is
    `{field, message, type}`; a body sent with another `Content-Type` than JSON is not read as JSON,
    and its message says so."""
    store = is_store_path(path)
    entity = _ENTITY_BY_SEGMENT.get(path.strip("/").split("/", 1)[0], "Request")
    fields: list[dict[str, Any]] = []
    not_json = store and content_type is not None and "json" not in content_type.lower()
    for err in errors:
        name = field_name(err, store=store, entity=entity)
        text = field_message(err, name)
        if store:
            if name.field == "body" and not_json:
                text = (
                    "The request body must be JSON, sent with Content-Type: application/json "
                    f"(not {content_type})."
                )
            fields.append({"field": name.field, "message": text, "type": err.get("type")})
        else:
            source = str(err["loc"][0]) if err.get("loc") else "body"
            fields.append({"field": name.field, "in": source, "type": err.get("type"), "message": text})
    if store and not fields:
        fields.append({"field": "body", "message": "The request is invalid.", "type": "invalid"})
    messages: list[str] = []
    for f in fields:
        if f["message"] not in messages:
            messages.append(f["message"])
    details: dict[str, Any] = {"field": fields[0]["field"], "fields": fields} if store else {"fields": fields}
    return InvalidInput(" ".join(messages), details)


# --- handlers -------------------------------------------------------------------------------------


def _needs_credentials(route: Any) -> bool:
    """True when the route requires credentials: it depends on `api.deps.current_principal`,
    `api.deps.request_principal` or `api.deps.current_role`, directly or through a role guard."""
    from api.deps import current_principal, current_role, request_principal

    dependant = getattr(route, "dependant", None)
    pending = [dependant] if dependant is not None else []
    while pending:
        node = pending.pop()
        if node.call in (current_principal, request_principal, current_role):
            return True
        pending.extend(node.dependencies)
    return False


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        return error_response(exc, request.url.path)

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
            return error_response(CredentialsRequired(), request.url.path)
        path = request.url.path
        return error_response(validation_error(errors, path, request.headers.get("content-type")), path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # RFC 9110, section 15.5.6: every method of the resource, not only the first route's.
            allow = allowed_methods(request.app.router.routes, request.scope["path"])
            headers["Allow"] = ", ".join(allow) or headers.get("Allow", "")
        return error_response(http_error(exc.status_code), request.url.path, headers)
