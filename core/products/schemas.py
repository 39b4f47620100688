"""Product request and response shapes (CONTRACT.md, "Products")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from core.types import MANAGER_ID_MAX_LENGTH, JsonInteger, Money, Quantity

#: A count in a product body (stock, threshold): a whole JSON number from 0 to 2,147,483,647 (`5` or
#: `5.0`; `true`, `"5"` and `5.5` are wrong types).
Count = Annotated[int, Field(ge=0, le=2_147_483_647, strict=True), JsonInteger]


class ProductCreate(BaseModel):
    """Body of `POST /products`. `stock_quantity` is accepted as an alias of `stock`.

    Counts and flags are strict: a JSON `true` or `"5"` is a wrong type (400), not 1 or 5."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200, examples=["Product A"])
    description: str = Field(default="", max_length=10_000)
    price: Money
    stock: Count = Field(
        default=0,
        validation_alias=AliasChoices("stock", "stock_quantity"),
    )
    low_stock_threshold: Count = 10
    discontinued: bool = Field(default=False, strict=True)
    manager_id: str | None = Field(default=None, min_length=1, max_length=MANAGER_ID_MAX_LENGTH)


class ProductUpdate(BaseModel):
    """Body of `PUT`/`PATCH /products/{id}`: every field optional; a field not given keeps its value."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)
    price: Money | None = None
    stock: Count | None = Field(
        default=None,
        validation_alias=AliasChoices("stock", "stock_quantity"),
    )
    low_stock_threshold: Count | None = None
    discontinued: bool | None = Field(default=None, strict=True)
    manager_id: str | None = Field(default=None, min_length=1, max_length=MANAGER_ID_MAX_LENGTH)


class StockChange(BaseModel):
    """Body of `PATCH /products/increment|decrement/{id}`: `quantity` (aliases `amount`, `change`)."""

    model_config = ConfigDict(extra="forbid")

    quantity: Quantity = Field(strict=True, validation_alias=AliasChoices("quantity", "amount", "change"))


class ProductRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str
    price: Money
    stock: int
    low_stock_threshold: int
    discontinued: bool
    manager_id: str | None
    created_at: datetime
    updated_at: datetime


class StockMovementRead(BaseModel):
    """One ledger row: `delta` in units (signed), `stock_after` once applied."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    product_id: int
    delta: int
    stock_after: int
    reason: str
    order_id: int | None
    actor: str | None
    at: datetime


class ProductFilter(BaseModel):
    """Query of `GET /products`."""

    q: str | None = None
    manager_id: str | None = None
    discontinued: bool | None = None
    in_stock: bool | None = None
