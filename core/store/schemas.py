"""Request and response shapes of the store API (CONTRACT.md, "Store API").

Money is a JSON number with at most two decimals, kept as `Decimal` end to end (2 x 15.99 + 12.99 is
exactly 44.97). Counts are strict JSON integers (`true` or `"5"` is a wrong type). Unknown fields are
refused, so a misspelt field is a 400 that names it rather than a value silently ignored.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, EmailStr, Field, model_validator

from core.orders.schemas import merge_lines, over_quantity_limit
from core.products.repository import MAX_STOCK
from core.store.ids import OrderIdOut, ProductIdOut, ProductRef
from core.types import MANAGER_ID_MAX_LENGTH, MAX_QUANTITY, JsonInteger, Money, OrderTotal, Quantity

#: Most products in one `POST /api/inventory/products` batch.
MAX_BATCH = 1000
#: Most lines in one `POST /api/orders/process`.
MAX_ORDER_LINES = 100

#: A store manager's id: 1-64 characters of letters, digits and `_ . : -` (`mgr_123`). The id is
#: also part of cache and rate-limit keys, hence the narrow alphabet.
ManagerId = Annotated[
    str,
    Field(
        min_length=1, max_length=MANAGER_ID_MAX_LENGTH, pattern=r"^[A-Za-z0-9_.:-]+$", examples=["mgr_123"]
    ),
]
#: Units on hand: a whole JSON number from 0 to 2,147,483,647.
StockQuantity = Annotated[int, Field(ge=0, le=MAX_STOCK, strict=True, examples=[10]), JsonInteger]
ProductName = Annotated[str, Field(min_length=1, max_length=200, examples=["Product A"])]


class ProductStatus(StrEnum):
    """`status` of `GET /api/inventory/products`: `in_stock` (on sale, stock > 0), `out_of_stock`
    (on sale, stock 0), `discontinued` (whatever its stock)."""

    IN_STOCK = "in_stock"
    OUT_OF_STOCK = "out_of_stock"
    DISCONTINUED = "discontinued"


class InventoryItemIn(BaseModel):
    """One product of a batch. With `id` it updates that product (fields left out keep their value);
    without, `name`, `price` and `quantity` are required and the item updates the manager's product
    of that name, or creates one. `quantity` is the stock on hand after the write (not a delta)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: ProductRef | None = None
    name: ProductName | None = None
    price: Money | None = None
    quantity: StockQuantity | None = None

    @model_validator(mode="after")
    def _complete(self) -> InventoryItemIn:
        if self.id is None:
            missing = [f for f in ("name", "price", "quantity") if getattr(self, f) is None]
            if missing:
                raise ValueError(
                    f"needs {' and '.join(missing)} to create a product (give 'id' to update an existing one)"
                )
        return self


class InventoryBatch(BaseModel):
    """Body of `POST /api/inventory/products`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "manager_id": "mgr_123",
                    "products": [
                        {"name": "Product A", "price": 15.99, "quantity": 10},
                        {"name": "Product B", "price": 12.99, "quantity": 5},
                    ],
                }
            ]
        },
    )

    manager_id: ManagerId
    products: list[InventoryItemIn] = Field(min_length=1, max_length=MAX_BATCH)


class InventoryItem(BaseModel):
    """A product as the store API shows it: exactly `id`, `name`, `price`, `quantity`."""

    id: ProductIdOut
    name: str
    price: Money
    quantity: int


class InventoryList(BaseModel):
    """`{"products": [...]}`: the body of the inventory routes' 200 and 201."""

    products: list[InventoryItem]


class DiscontinueRequest(BaseModel):
    """Body of `POST /api/inventory/discontinue`."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"manager_id": "mgr_123", "product_id": "prod_001"}]}
    )

    manager_id: ManagerId
    product_id: ProductRef


def _customer_id(value: object) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("must be a string or an integer")
    if isinstance(value, str):
        value = value.strip()
        if not 1 <= len(value) <= 64:
            raise ValueError("must be 1-64 characters long")
    elif not -(2**63) <= value < 2**63:
        raise ValueError("is out of range")
    return value


class Customer(BaseModel):
    """Who the order is for: the store's own customer id (a string or an integer) and an email
    address (checked for form, not deliverability)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: Annotated[str | int, BeforeValidator(_customer_id)] = Field(
        json_schema_extra={
            "anyOf": [{"type": "string", "minLength": 1, "maxLength": 64}, {"type": "integer"}]
        },
        examples=["cust_42"],
    )
    email: EmailStr = Field(max_length=254, examples=["jane@example.com"])


class ProcessLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: ProductRef
    quantity: Quantity


class ProcessOrderRequest(BaseModel):
    """Body of `POST /api/orders/process`. Lines naming the same product are merged."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "manager_id": "mgr_123",
                    "customer": {"id": "cust_42", "email": "jane@example.com"},
                    "products": [
                        {"product_id": "prod_001", "quantity": 2},
                        {"product_id": "prod_002", "quantity": 1},
                    ],
                }
            ]
        },
    )

    manager_id: ManagerId
    customer: Customer
    products: list[ProcessLine] = Field(min_length=1, max_length=MAX_ORDER_LINES)

    @model_validator(mode="after")
    def _merged_within_limit(self) -> ProcessOrderRequest:
        over = over_quantity_limit(self.merged_lines())
        if over is not None:
            raise ValueError(
                f"at most {MAX_QUANTITY} units of one product can be ordered at once "
                f"(product prod_{over[0]:03d} has {over[1]} in all)"
            )
        return self

    def merged_lines(self) -> list[tuple[int, int]]:
        """(product_id, quantity) pairs in first-seen order, duplicates summed."""
        return merge_lines((line.product_id, line.quantity) for line in self.products)

    def customer_record(self) -> dict[str, Any]:
        """The customer as stored on the order (`orders.customer`, JSON)."""
        return {"id": self.customer.id, "email": str(self.customer.email)}


class ProcessedOrder(BaseModel):
    """`{"order_id": "ord_789", "status": "processed", "total_amount": 44.97}`; a pending order has no
    `total_amount` in the contract's 202, so it is left out there."""

    order_id: OrderIdOut
    status: str = Field(examples=["processed"])
    total_amount: OrderTotal | None = None
