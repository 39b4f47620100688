"""Error responses in the OpenAPI document, generated from the error classes (`core.errors`,
`api.errors`) and rendered by `api.errors`, so that the document shows what the server sends.

A route declares the errors it raises by type, `responses(ProductNotFound, InsufficientStock)`, or
by a named `Example` where one class has several sentences worth showing. Each class gives its
status, code and an example instance (`DomainError.example()`); `InvalidInput` stands for a
validation failure, shown as the translator (`api.errors.validation_error`) writes it. The core
envelope: CONTRACT.md, "Core API"; the store's: "Store API".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

from api.errors import InternalError, RateLimitExceeded, core_envelope, store_envelope, validation_error
from core.errors import (
    CredentialsRequired,
    DomainError,
    InvalidInput,
    ManagerMismatch,
    ManagerUnbound,
    RoleRequired,
    StoreRoleRequired,
    TokenExpired,
    WrongCredentials,
)

#: The request id shown in the core envelope's examples.
EXAMPLE_REQUEST_ID = "8f2c1d0e6b7a4c3e9f1a2b3c4d5e6f70"


class ErrorBody(BaseModel):
    """The core error envelope."""

    error: str = Field(examples=["Product not found"])
    message: str = Field(examples=["The product with ID 42 does not exist."])
    code: str = Field(examples=["PRODUCT_NOT_FOUND"])
    details: dict[str, Any] = Field(default_factory=dict)
    request_id: str = Field(examples=["8f2c1d0e6b7a4c3e9f1a2b3c4d5e6f70"])


@dataclass(frozen=True)
class Example:
    """One named example of an error response: `error` rendered for the route's surface."""

    name: str
    error: DomainError


ErrorSpec = type[DomainError] | Example
Auth = Literal["user", "staff", "admin"] | None


def _validation(path: str, *errors: Mapping[str, Any]) -> DomainError:
    return validation_error(errors, path)


def _missing(*loc: str | int) -> dict[str, Any]:
    return {"type": "missing", "loc": loc, "msg": "Field required"}


def _value_error(msg: str, *loc: str | int) -> dict[str, Any]:
    return {"type": "value_error", "loc": loc, "msg": f"Value error, {msg}"}


# --- the core API ---------------------------------------------------------------------------------

#: A body failing validation (`POST /products` without `price`).
INVALID_INPUT = Example("invalid_input", _validation("/products", _missing("body", "price")))
#: A negative stock (`ge=0`).
NEGATIVE_STOCK = Example(
    "negative_stock",
    _validation(
        "/products",
        {
            "type": "greater_than_equal",
            "loc": ("body", "stock"),
            "msg": "Input should be greater than or equal to 0",
            "ctx": {"ge": 0},
        },
    ),
)
MISSING_CREDENTIALS = Example(CredentialsRequired.example_key(), CredentialsRequired.example())
WRONG_CREDENTIALS = Example(WrongCredentials.example_key(), WrongCredentials.example())
EXPIRED_TOKEN = Example(TokenExpired.example_key(), TokenExpired.example())
STAFF_REQUIRED = Example("forbidden", RoleRequired.staff("customer"))
ADMIN_REQUIRED = Example("forbidden_admin", RoleRequired.admin("manager"))

_AUTH_ERRORS: dict[Auth, tuple[Example, ...]] = {
    None: (),
    "user": (MISSING_CREDENTIALS, WRONG_CREDENTIALS, EXPIRED_TOKEN),
    "staff": (MISSING_CREDENTIALS, WRONG_CREDENTIALS, EXPIRED_TOKEN, STAFF_REQUIRED),
    "admin": (MISSING_CREDENTIALS, WRONG_CREDENTIALS, EXPIRED_TOKEN, ADMIN_REQUIRED),
}


def _example(spec: ErrorSpec, validation: Example) -> Example:
    if isinstance(spec, Example):
        return spec
    if spec is InvalidInput:
        return validation
    return Example(spec.example_key(), spec.example())


def _by_status(
    defaults: Sequence[Example], declared: Sequence[Example], always: Sequence[Example]
) -> dict[int, list[Example]]:
    """The examples of each status: the route's, then for a status it does not declare the
    defaults; `always` are added to their status unless already there."""
    out: dict[int, list[Example]] = {}
    for example in declared:
        out.setdefault(example.error.status, []).append(example)
    for example in defaults:
        if example.error.status not in {e.error.status for e in declared}:
            out.setdefault(example.error.status, []).append(example)
    for example in always:
        group = out.setdefault(example.error.status, [])
        if example.name not in {e.name for e in group}:
            group.append(example)
    return out


def _core_example(error: DomainError) -> dict[str, Any]:
    return {**core_envelope(error), "request_id": EXAMPLE_REQUEST_ID}


def responses(*errors: ErrorSpec | str | None, auth: Auth = "user") -> dict[int | str, dict[str, Any]]:
    """`responses=` for a core API route: `responses("staff", ProductNotFound, InsufficientStock)`.
    A leading `"user"` (the default), `"staff"` or `"admin"` (or `auth=`; `None` for a public route)
    adds the 401 of a protected route and the 403 of a role guard; a status the route declares
    replaces those defaults. A 400 with the `invalid_input` example (every route validates a body, a
    query or a path id: CONTRACT.md, "Core API", 400 instead of 422) and a 500 are always added."""
    specs: list[ErrorSpec] = []
    for item in errors:
        if item is None or isinstance(item, str):
            auth = item  # type: ignore[assignment]
        else:
            specs.append(item)
    declared = [_example(spec, INVALID_INPUT) for spec in specs]
    always = [INVALID_INPUT, Example("internal", InternalError())]
    out: dict[int | str, dict[str, Any]] = {}
    for status, examples in _by_status(_AUTH_ERRORS[auth], declared, always).items():
        out[status] = {
            "model": ErrorBody,
            "description": examples[0].error.title,
            "content": {
                "application/json": {
                    "examples": {e.name: {"value": _core_example(e.error)} for e in examples}
                }
            },
        }
    return out


_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def drop_validation_422(app: FastAPI) -> None:
    """Make `app.openapi()` leave out FastAPI's automatic 422 responses and their schemas: this API
    answers validation failures with 400 `Invalid input` (CONTRACT.md, "Core API"), which the
    routes declare through `responses()`."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    if isinstance(operation, dict):
                        operation.get("responses", {}).pop("422", None)
            schemas = schema.get("components", {}).get("schemas", {})
            for name in _VALIDATION_SCHEMAS:
                schemas.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- the store API (CONTRACT.md, "Store API") -----------------------------------------------------


class StoreErrorDetail(BaseModel):
    code: str = Field(examples=["INVALID_REQUEST"])
    message: str = Field(examples=["products[0].price is required."])
    details: dict[str, Any] = Field(default_factory=dict, examples=[{"field": "products[0].price"}])


class StoreErrorBody(BaseModel):
    """The store API's nested error envelope."""

    error: StoreErrorDetail


#: A body failing validation, as the store names fields.
STORE_INVALID_REQUEST = Example(
    "invalid_request", _validation("/api/inventory/products", _missing("body", "products", 0, "price"))
)
STORE_MISSING_MANAGER_ID = Example(
    "missing_manager_id", _validation("/api/inventory/products", _missing("query", "manager_id"))
)
STORE_INVALID_STATUS = Example(
    "invalid_status",
    _validation(
        "/api/inventory/products",
        {
            "type": "enum",
            "loc": ("query", "status"),
            "msg": "Input should be 'in_stock', 'out_of_stock' or 'discontinued'",
            "ctx": {"expected": "'in_stock', 'out_of_stock' or 'discontinued'"},
        },
    ),
)
STORE_INVALID_EMAIL = Example(
    "invalid_email",
    _validation(
        "/api/orders/process",
        _value_error(
            "value is not a valid email address: An email address must have an @-sign.",
            "body",
            "customer",
            "email",
        ),
    ),
)
STORE_INVALID_ORDER_ID = Example(
    "invalid_order_id",
    _validation(
        "/api/orders/1",
        _value_error("must look like 'ord_001': 'ord_' followed by digits", "path", "order_id"),
    ),
)

_STORE_DEFAULTS = (
    MISSING_CREDENTIALS,
    Example("forbidden", ManagerMismatch.example()),
    Example(StoreRoleRequired.example_key(), StoreRoleRequired.example()),
    Example(ManagerUnbound.example_key(), ManagerUnbound.example()),
    STORE_INVALID_REQUEST,
)
_STORE_ALWAYS = (
    STORE_INVALID_REQUEST,
    Example("rate_limited", RateLimitExceeded.example()),
    Example("internal", InternalError()),
)

_STORE_DESCRIPTIONS = {
    400: "Invalid request or a rejected order",
    401: "No or bad credentials (only with STORE_REQUIRE_AUTH=true)",
    403: "A customer, or not this manager_id's account (only with STORE_REQUIRE_AUTH=true)",
    404: "Not found",
    409: "Idempotency key reused with another body",
    429: "Rate limit exceeded (see Retry-After)",
    500: "Unexpected error",
}

_PENDING: dict[str, Any] = {
    "description": "Still pending after ORDER_WAIT_SECONDS: poll Location",
    "content": {"application/json": {"example": {"order_id": "ord_789", "status": "pending"}}},
    "headers": {"Location": {"schema": {"type": "string"}, "example": "/api/orders/ord_789"}},
}


def store_responses(*errors: ErrorSpec, pending: bool = False) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a store route, with the nested envelope's examples: the route's errors by
    type (or `Example`); 401, 403, 400 (`invalid_request` unless the route declares its own 400s),
    429 and 500 are always listed. `pending=True` documents the 202 of the order routes."""
    declared = [_example(spec, STORE_INVALID_REQUEST) for spec in errors]
    always = [e for e in _STORE_ALWAYS if e is not STORE_INVALID_REQUEST]
    groups = _by_status(_STORE_DEFAULTS, declared, always)
    out: dict[int | str, dict[str, Any]] = {202: _PENDING} if pending else {}
    for status in sorted(groups):
        examples = groups[status]
        out[status] = {
            "model": StoreErrorBody,
            "description": _STORE_DESCRIPTIONS.get(status, examples[0].error.code),
            "content": {
                "application/json": {
                    "examples": {e.name: {"value": store_envelope(e.error)} for e in examples}
                }
            },
        }
    return out
