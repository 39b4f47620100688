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

#: A quantity of units in a stock change or an order line: a whole number from 1 to 1,000,000.
Quantity = Annotated[int, Field(ge=1, le=1_000_000, examples=[2])]

#: A database id: a positive 31-bit integer (larger ids cannot exist, so they are refused as input).
Id = Annotated[int, Field(ge=1, le=2_147_483_647, examples=[1])]


def money(value: Decimal | int | float | str) -> Decimal:
    """`value` as a Decimal rounded to cents."""
    return Decimal(str(value)).quantize(Decimal("0.01"))
