"""The domain error hierarchy (CONTRACT.md, "Core API" error table).

Each error carries what the HTTP edge needs to render it and nothing about HTTP itself beyond the
status number: `code` (machine-readable, stable), `title` (the contract's exact `error` string),
`message` (a sentence for people) and `details` (a JSON object). `api/errors.py` turns them into the
core envelope `{"error", "message", "code", "details", "request_id"}` or the store envelope.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "INVALID_REQUEST"
    title: ClassVar[str] = "Invalid input"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def to_dict(self) -> dict[str, Any]:
        """The error as stored on a rejected order: `{code, error, message, details}`."""
        return {
            "code": self.code,
            "error": self.title,
            "message": self.message,
            "details": self.details,
        }


class InvalidInput(DomainError):
    status = 400
    code = "INVALID_REQUEST"
    title = "Invalid input"


class NotFound(DomainError):
    status = 404
    code = "NOT_FOUND"
    title = "Not found"


class ProductNotFound(NotFound):
    code = "PRODUCT_NOT_FOUND"
    title = "Product not found"

    def __init__(self, product_id: int | str) -> None:
        super().__init__(f"The product with ID {product_id} does not exist.", {"product_id": product_id})
        self.product_id = product_id


class OrderNotFound(NotFound):
    code = "ORDER_NOT_FOUND"
    title = "Order not found"

    def __init__(self, order_id: int | str) -> None:
        super().__init__(f"The order with ID {order_id} does not exist.", {"order_id": order_id})


class UserNotFound(NotFound):
    code = "USER_NOT_FOUND"
    title = "User not found"

    def __init__(self, user_id: int | str) -> None:
        super().__init__(f"The user with ID {user_id} does not exist.", {"user_id": user_id})


class InsufficientStock(DomainError):
    status = 400
    code = "INSUFFICIENT_STOCK"
    title = "Insufficient stock"

    def __init__(self, product_id: int, name: str, available: int, requested: int) -> None:
        super().__init__(
            f"There are only {available} units of {name} in stock, but you requested {requested}.",
            {"product_id": product_id, "available": available, "requested": requested},
        )


class ProductDiscontinued(DomainError):
    status = 400
    code = "PRODUCT_DISCONTINUED"
    title = "Product discontinued"

    def __init__(self, product_id: int, name: str) -> None:
        super().__init__(
            f"The product {name} (ID {product_id}) is discontinued and cannot be ordered.",
            {"product_id": product_id},
        )


class InvalidStatus(DomainError):
    status = 400
    code = "INVALID_STATUS"
    title = "Invalid status"

    def __init__(self, value: object) -> None:
        super().__init__("Order status must be either 'Pending' or 'Completed'.", {"status": value})


class InvalidStatusTransition(DomainError):
    status = 409
    code = "INVALID_STATUS_TRANSITION"
    title = "Invalid status transition"

    def __init__(self, order_id: int, current: str, target: str) -> None:
        super().__init__(
            f"Order {order_id} is {current} and cannot become {target}.",
            {"order_id": order_id, "current": current, "requested": target},
        )


class Unauthorized(DomainError):
    """No, unreadable or wrong credentials. `challenge` is the `WWW-Authenticate` value (RFC 9110,
    section 11.6.1) the response carries."""

    status = 401
    code = "UNAUTHORIZED"
    title = "Unauthorized"
    challenge: ClassVar[str] = 'Basic realm="orderflow"'


class Forbidden(DomainError):
    status = 403
    code = "FORBIDDEN"
    title = "Forbidden"


class Conflict(DomainError):
    status = 409
    code = "CONFLICT"
    title = "Conflict"
