"""Order request and response shapes (CONTRACT.md, "Orders")."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from core.orders.states import SETTABLE_STATUSES
from core.types import MAX_QUANTITY, Id, Money, OrderTotal, Quantity

MAX_ORDER_LINES = 100


def merge_lines(lines: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """(product_id, quantity) pairs in first-seen order, the quantities of a repeated product summed
    (CONTRACT.md, "Orders": one line per product)."""
    merged: dict[int, int] = {}
    for product_id, quantity in lines:
        merged[product_id] = merged.get(product_id, 0) + quantity
    return list(merged.items())


def over_quantity_limit(merged: Iterable[tuple[int, int]]) -> tuple[int, int] | None:
    """The first (product_id, quantity) of `merged` (`merge_lines`' output) with more than
    `MAX_QUANTITY` units, or None: an order takes at most that many units of one product, its lines
    for that product summed (CONTRACT.md, "Orders"). Each surface words the refusal its own way."""
    return next(((pid, quantity) for pid, quantity in merged if quantity > MAX_QUANTITY), None)


class OrderLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: Id
    quantity: Quantity


class OrderCreate(BaseModel):
    """Body of `POST /orders`: `{"products": [{"product_id", "quantity"}, ...]}` or the one-line form
    `{"product_id", "quantity"}`. Lines naming the same product are merged (quantities added)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"products": [{"product_id": 1, "quantity": 2}, {"product_id": 3, "quantity": 1}]},
                {"product_id": 1, "quantity": 2},
            ]
        },
    )

    products: list[OrderLineIn] | None = Field(default=None, min_length=1, max_length=MAX_ORDER_LINES)
    product_id: Id | None = None
    quantity: Quantity | None = None

    @model_validator(mode="after")
    def _one_form(self) -> OrderCreate:
        one_line = self.product_id is not None or self.quantity is not None
        if self.products is not None and one_line:
            raise ValueError("Give either 'products' or 'product_id' and 'quantity', not both.")
        if self.products is None and not one_line:
            raise ValueError("Order products are required.")
        if self.products is None and (self.product_id is None or self.quantity is None):
            missing = "product_id" if self.product_id is None else "quantity"
            raise ValueError(f"Order {missing} is required.")
        over = over_quantity_limit(self.merged_lines())
        if over is not None:
            raise ValueError(
                f"Order quantity of product {over[0]} is {over[1]} in all; "
                f"at most {MAX_QUANTITY} units of one product can be ordered at once."
            )
        return self

    def merged_lines(self) -> list[tuple[int, int]]:
        """(product_id, quantity) pairs in first-seen order, duplicates summed."""
        if self.products is None:
            assert self.product_id is not None and self.quantity is not None
            return [(self.product_id, self.quantity)]
        return merge_lines((line.product_id, line.quantity) for line in self.products)


#: `Pending` or `Completed` (`states.SETTABLE_STATUSES`) in any case, with surrounding whitespace
#: (CONTRACT.md, "Orders"), as a JSON Schema pattern (no inline flags: each letter is a class).
STATUS_UPDATE_PATTERN = (
    r"^\s*(" + "|".join("".join(f"[{c.upper()}{c}]" for c in value) for value in SETTABLE_STATUSES) + r")\s*$"
)


class OrderStatusUpdate(BaseModel):
    """Body of `PUT /orders/{id}/status`; `status` is checked by the service (400 Invalid status)."""

    model_config = ConfigDict(extra="forbid")

    status: Any = Field(
        examples=["Completed"],
        # What the service accepts (`states.SETTABLE_STATUSES`, any case, surrounding spaces
        # ignored); anything else is 400 `Invalid status`, so the document says so.
        json_schema_extra={"type": "string", "pattern": STATUS_UPDATE_PATTERN},
    )


class OrderLineRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    product_id: int
    name: str
    quantity: int
    unit_price: Money


class OrderError(BaseModel):
    """Why an order was rejected or failed: the error object of the domain error."""

    code: str
    error: str
    message: str
    details: dict[str, Any] = {}


class OrderRead(BaseModel):
    """The order body. `product_id`/`quantity` appear only for a one-line order."""

    id: int
    status: str
    products: list[OrderLineRead]
    product_id: int | None = None
    quantity: int | None = None
    total_price: OrderTotal
    user_id: int | None
    customer: dict[str, Any] | None
    error: OrderError | None
    created_at: datetime
    updated_at: datetime

    @model_serializer(mode="wrap")
    def _drop_one_line_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.product_id is None:
            data.pop("product_id", None)
            data.pop("quantity", None)
        return data

    @classmethod
    def of(cls, order: Any) -> OrderRead:
        lines = [OrderLineRead.model_validate(line) for line in order.lines]
        one = lines[0] if len(lines) == 1 else None
        return cls(
            id=order.id,
            status=order.status,
            products=lines,
            product_id=one.product_id if one else None,
            quantity=one.quantity if one else None,
            total_price=Decimal(order.total_price),
            user_id=order.user_id,
            customer=order.customer,
            error=order.error,
            created_at=order.created_at,
            updated_at=order.updated_at,
        )
