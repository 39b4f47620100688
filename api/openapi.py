"""Error response declarations for the OpenAPI document: every route lists its error statuses with
an example of the core envelope (CONTRACT.md, "Core API")."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """The core error envelope."""

    error: str = Field(examples=["Product not found"])
    message: str = Field(examples=["The product with ID 42 does not exist."])
    code: str = Field(examples=["PRODUCT_NOT_FOUND"])
    details: dict[str, Any] = Field(default_factory=dict)
    request_id: str = Field(examples=["8f2c1d0e6b7a4c3e9f1a2b3c4d5e6f70"])


def _ex(error: str, message: str, code: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "error": error,
        "message": message,
        "code": code,
        "details": details or {},
        "request_id": "8f2c1d0e6b7a4c3e9f1a2b3c4d5e6f70",
    }


EXAMPLES: dict[str, dict[str, Any]] = {
    "invalid_input": _ex(
        "Invalid input",
        "Product price is required.",
        "INVALID_REQUEST",
        {
            "fields": [
                {
                    "field": "price",
                    "in": "body",
                    "type": "missing",
                    "message": "Product price is required.",
                }
            ]
        },
    ),
    "negative_stock": _ex(
        "Invalid input",
        "Cannot set stock to a negative value.",
        "INVALID_REQUEST",
        {
            "fields": [
                {
                    "field": "stock",
                    "in": "body",
                    "type": "greater_than_equal",
                    "message": "Cannot set stock to a negative value.",
                }
            ]
        },
    ),
    "product_not_found": _ex(
        "Product not found",
        "The product with ID 42 does not exist.",
        "PRODUCT_NOT_FOUND",
        {"product_id": 42},
    ),
    "order_not_found": _ex(
        "Order not found", "The order with ID 7 does not exist.", "ORDER_NOT_FOUND", {"order_id": 7}
    ),
    "insufficient_stock": _ex(
        "Insufficient stock",
        "There are only 5 units of Product A in stock, but you requested 10.",
        "INSUFFICIENT_STOCK",
        {"product_id": 1, "available": 5, "requested": 10},
    ),
    "discontinued": _ex(
        "Product discontinued",
        "The product Product A (ID 1) is discontinued and cannot be ordered.",
        "PRODUCT_DISCONTINUED",
        {"product_id": 1},
    ),
    "invalid_status": _ex(
        "Invalid status",
        "Order status must be either 'Pending' or 'Completed'.",
        "INVALID_STATUS",
        {"status": "Shipped"},
    ),
    "invalid_transition": _ex(
        "Invalid status transition",
        "Order 7 is rejected and cannot become completed.",
        "INVALID_STATUS_TRANSITION",
        {"order_id": 7, "current": "rejected", "requested": "completed"},
    ),
    "conflict": _ex(
        "Conflict",
        "The idempotency key 'abc' was already used with a different request.",
        "CONFLICT",
        {"idempotency_key": "abc"},
    ),
    "unauthorized": _ex(
        "Unauthorized",
        "Authentication required: send Basic credentials or a Bearer token.",
        "UNAUTHORIZED",
    ),
    "wrong_password": _ex("Unauthorized", "The username or password is wrong.", "UNAUTHORIZED"),
    "invalid_token": _ex("Unauthorized", "The access token has expired; log in again.", "UNAUTHORIZED"),
    "forbidden": _ex(
        "Forbidden", "This action needs the manager or admin role.", "FORBIDDEN", {"role": "customer"}
    ),
    "forbidden_admin": _ex(
        "Forbidden", "This action needs the admin role.", "FORBIDDEN", {"role": "manager"}
    ),
    "forbidden_role": _ex(
        "Forbidden",
        "Only an admin can create a user with the role 'manager'.",
        "FORBIDDEN",
        {"role": "manager"},
    ),
    "user_not_found": _ex(
        "User not found", "The user with ID 3 does not exist.", "USER_NOT_FOUND", {"user_id": 3}
    ),
    "username_taken": _ex(
        "Conflict", "The username 'alice' is already taken.", "CONFLICT", {"username": "alice"}
    ),
    "last_admin": _ex("Conflict", "The last admin cannot lose the admin role.", "CONFLICT", {"user_id": 1}),
    "internal": _ex(
        "Internal Server Error",
        "An unexpected error occurred, please try again later.",
        "INTERNAL_ERROR",
    ),
}


_AUTH_ERRORS: dict[str | None, dict[str, list[str]]] = {
    None: {},
    "user": {"_401": ["unauthorized", "wrong_password", "invalid_token"]},
    "staff": {"_401": ["unauthorized", "wrong_password", "invalid_token"], "_403": ["forbidden"]},
    "admin": {"_401": ["unauthorized", "wrong_password", "invalid_token"], "_403": ["forbidden_admin"]},
}


def responses(auth: str | None = "user", **statuses: list[str]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: `responses(_400=["invalid_input"], _404=[...])`. A 400 with the
    `invalid_input` example (every route validates a body, a query or a path id: CONTRACT.md, "Core
    API", 400 instead of 422) and a 500 are always added; `auth` adds the 401 of a protected route
    (`"user"`, the default) and the 403 of a role guard (`"staff"`, `"admin"`); `None` for public
    routes."""
    out: dict[int | str, dict[str, Any]] = {}
    statuses = {**_AUTH_ERRORS[auth], **statuses}
    bad_request = statuses.get("_400", [])
    if "invalid_input" not in bad_request:
        statuses["_400"] = [*bad_request, "invalid_input"]
    statuses.setdefault("_500", ["internal"])
    for key, names in statuses.items():
        code = int(key.lstrip("_"))
        out[code] = {
            "model": ErrorBody,
            "description": EXAMPLES[names[0]]["error"],
            "content": {
                "application/json": {"examples": {name: {"value": EXAMPLES[name]} for name in names}}
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


def _store_ex(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _field_ex(field: str, message: str, kind: str) -> dict[str, Any]:
    return _store_ex(
        "INVALID_REQUEST",
        message,
        {"field": field, "fields": [{"field": field, "message": message, "type": kind}]},
    )


STORE_EXAMPLES: dict[str, dict[str, Any]] = {
    "invalid_request": _field_ex("products[0].price", "products[0].price is required.", "missing"),
    "duplicate_in_batch": _store_ex(
        "INVALID_REQUEST",
        "products[1].name: 'Product A' is already given by products[0]; name each product once per batch.",
        {"field": "products[1].name", "duplicate_of": "products[0]"},
    ),
    "missing_manager_id": _field_ex("manager_id", "manager_id is required.", "missing"),
    "invalid_status": _field_ex(
        "status", "status: input should be 'in_stock', 'out_of_stock' or 'discontinued'.", "enum"
    ),
    "invalid_email": _field_ex(
        "customer.email",
        "customer.email: value is not a valid email address: an email address must have an @-sign.",
        "value_error",
    ),
    "invalid_order_id": _field_ex(
        "order_id", "order_id must look like 'ord_001': 'ord_' followed by digits.", "value_error"
    ),
    "product_not_found": _store_ex(
        "PRODUCT_NOT_FOUND", "The product with ID prod_042 does not exist.", {"product_id": "prod_042"}
    ),
    "order_not_found": _store_ex(
        "ORDER_NOT_FOUND", "The order with ID ord_789 does not exist.", {"order_id": "ord_789"}
    ),
    "insufficient_stock": _store_ex(
        "INSUFFICIENT_STOCK",
        "There are only 5 units of Product A in stock, but you requested 10.",
        {"product_id": "prod_001", "available": 5, "requested": 10},
    ),
    "discontinued": _store_ex(
        "PRODUCT_DISCONTINUED",
        "The product Product A (ID prod_001) is discontinued and cannot be ordered.",
        {"product_id": "prod_001"},
    ),
    "idempotency_conflict": _store_ex(
        "CONFLICT",
        "The idempotency key 'abc' was already used with a different request.",
        {"idempotency_key": "abc"},
    ),
    "rate_limited": _store_ex(
        "RATE_LIMIT_EXCEEDED",
        "Rate limit of 100 per 1 hour exceeded for manager_id 'mgr_123'; retry in 1312 seconds.",
        {"limit": "100 per 1 hour", "manager_id": "mgr_123", "retry_after_seconds": 1312},
    ),
    "unauthorized": _store_ex(
        "UNAUTHORIZED", "Authentication required: send Basic credentials or a Bearer token."
    ),
    "forbidden": _store_ex(
        "FORBIDDEN",
        "Your account may act for manager_id 'mgr_123' only.",
        {"manager_id": "mgr_999", "bound_manager_id": "mgr_123"},
    ),
    "internal": _store_ex("INTERNAL_ERROR", "An unexpected error occurred, please try again later."),
}

_STORE_DESCRIPTIONS = {
    202: "Still pending after ORDER_WAIT_SECONDS: poll Location",
    400: "Invalid request or a rejected order",
    401: "No or bad credentials (only with STORE_REQUIRE_AUTH=true)",
    403: "Not this manager_id's account (only with STORE_REQUIRE_AUTH=true)",
    404: "Not found",
    409: "Idempotency key reused with another body",
    429: "Rate limit exceeded (see Retry-After)",
    500: "Unexpected error",
}


def store_responses(**statuses: list[str]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a store route, with the nested envelope's examples; 400, 401, 403, 429 and 500
    are always listed. `_202=["pending"]` documents the pending answer of the order routes."""
    out: dict[int | str, dict[str, Any]] = {}
    statuses = {"_401": ["unauthorized"], "_403": ["forbidden"], **statuses}
    statuses.setdefault("_400", ["invalid_request"])
    statuses.setdefault("_429", ["rate_limited"])
    statuses.setdefault("_500", ["internal"])
    for key, names in sorted(statuses.items(), key=lambda kv: int(kv[0].lstrip("_"))):
        code = int(key.lstrip("_"))
        if code == 202:
            out[code] = {
                "description": _STORE_DESCRIPTIONS[202],
                "content": {"application/json": {"example": {"order_id": "ord_789", "status": "pending"}}},
                "headers": {"Location": {"schema": {"type": "string"}, "example": "/api/orders/ord_789"}},
            }
            continue
        out[code] = {
            "model": StoreErrorBody,
            "description": _STORE_DESCRIPTIONS.get(code, STORE_EXAMPLES[names[0]]["error"]["code"]),
            "content": {
                "application/json": {"examples": {name: {"value": STORE_EXAMPLES[name]} for name in names}}
            },
        }
    return out
