"""Shared pydantic field types."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field, PlainSerializer

#: Money: a non-negative amount with at most two decimals, stored as NUMERIC(12, 2) and written to
#: JSON as a number (not a string), e.g. 44.97.
Money = Annotated[
    Decimal,
    Field(ge=0, max_digits=12, decimal_places=2, examples=[15.99]),
    PlainSerializer(float, return_type=float, when_used="json"),
]

#: The largest quantity of one product in one stock change or order.
MAX_QUANTITY = 1_000_000

#: A quantity of units in a stock change or an order line: a whole JSON number from 1 to
#: 1,000,000 (strict: `true` or `"2"` is a wrong type, not 1 or 2).
Quantity = Annotated[int, Field(ge=1, le=MAX_QUANTITY, strict=True, examples=[2])]

#: A database id in a request body: a positive 31-bit JSON integer (larger ids cannot exist).
Id = Annotated[int, Field(ge=1, le=2_147_483_647, strict=True, examples=[1])]


def money(value: Decimal | int | float | str) -> Decimal:
    """`value` as a Decimal rounded to cents."""
    return Decimal(str(value)).quantize(Decimal("0.01"))
