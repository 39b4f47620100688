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


def _ex(error: str, message: str, code: str, details: dict[str, Any] | None = None) -> dict:
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
