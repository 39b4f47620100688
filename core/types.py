"""Shared pydantic field types."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import BeforeValidator, Field, PlainSerializer
from pydantic_core import PydanticCustomError

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

#: The largest id a row can have (`INTEGER` primary keys).
MAX_ID = 2_147_483_647

#: A database id in a request body: a positive 31-bit JSON integer (larger ids cannot exist).
Id = Annotated[int, Field(ge=1, le=MAX_ID, strict=True, examples=[1])]

_DIGITS = re.compile(r"[0-9]{1,32}")


def _decimal_digits(value: object) -> object:
    """`value` unchanged unless it is a string other than 1-32 decimal digits: then the same error
    as for `abc` (pydantic's lax integers would read `1.0`, `+1`, ` 1` as 1 and `1_0` as 10)."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise PydanticCustomError(
            "int_parsing", "Input should be a valid integer, unable to parse string as an integer"
        )
    return value


#: Put after `Path(...)` on an integer path parameter (`/products/42`): the segment must be written in
#: decimal digits. (After it, not before: FastAPI then still documents `minimum`/`maximum`.)
DecimalDigits = BeforeValidator(_decimal_digits)


def money(value: Decimal | int | float | str) -> Decimal:
    """`value` as a Decimal rounded to cents."""
    return Decimal(str(value)).quantize(Decimal("0.01"))


#: The longest store manager id (`mgr_123`) the API accepts (CONTRACT.md, "Store API"). It is stored
#: in `products.manager_id`, `orders.manager_id` and `users.manager_id` (varchar(64)) and inside the
#: idempotency scope `store:<manager_id>` (`idempotency_keys.scope`).
MANAGER_ID_MAX_LENGTH = 64
