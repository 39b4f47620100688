"""Shared pydantic field types."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

#: The largest amount of money a column holds (NUMERIC(12, 2)).
MAX_MONEY = Decimal("9999999999.99")
#: A money amount written as a string: plain decimal digits, at most two after the point.
MONEY_PATTERN = r"^[0-9]{1,10}(\.[0-9]{1,2})?$"
_MONEY_STRING = re.compile(MONEY_PATTERN)


def _money_string(value: object) -> object:
    """`value` unchanged unless it is a string that is not plain digits with at most two decimals
    (`MONEY_PATTERN`): then pydantic's decimal error. Keeps the accepted strings exactly the ones the
    OpenAPI document describes (no `1e2`, ` 1`, `+1` or `NaN`)."""
    if isinstance(value, str) and not _MONEY_STRING.fullmatch(value):
        raise PydanticCustomError("decimal_parsing", "Input should be a valid decimal")
    return value


#: Money: a non-negative amount with at most two decimals, stored as NUMERIC(12, 2) and written to
#: JSON as a number (not a string), e.g. 44.97. A request may also send it as a string of digits
#: (`"44.97"`); the OpenAPI document says exactly which numbers and strings are accepted.
Money = Annotated[
    Decimal,
    BeforeValidator(_money_string),
    Field(ge=0, max_digits=12, decimal_places=2, examples=[15.99]),
    PlainSerializer(float, return_type=float, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": float(MAX_MONEY), "multipleOf": 0.01},
                {"type": "string", "pattern": MONEY_PATTERN},
            ],
            "examples": [15.99],
        },
        mode="validation",
    ),
]


#: The largest order total a column holds (`orders.total_price NUMERIC(14, 2)`); a larger order is
#: refused at intake (`OrderTotalTooLarge`, 400).
MAX_ORDER_TOTAL = Decimal("999999999999.99")

#: An order's total in a response: up to `MAX_ORDER_TOTAL`, two more whole digits than `Money` (a
#: line's quantity times its unit price can exceed one unit price's NUMERIC(12, 2)), written to JSON
#: as a number like `Money`. Only ever built from stored totals, never read from a request.
OrderTotal = Annotated[
    Decimal,
    Field(ge=0, max_digits=14, decimal_places=2, examples=[44.97]),
    PlainSerializer(float, return_type=float, when_used="json"),
    WithJsonSchema(
        {
            "type": "number",
            "minimum": 0,
            "maximum": float(MAX_ORDER_TOTAL),
            "multipleOf": 0.01,
            "examples": [44.97],
        },
        mode="serialization",
    ),
]


def _whole_number(value: object) -> object:
    """A JSON number without a fractional part (`2.0`) as the integer it is (JSON Schema counts it
    as an integer, so the OpenAPI document's `integer` fields accept it); anything else unchanged,
    for the strict integer check that follows (`true`, `"2"` and `1.5` stay wrong types)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: Put after a strict integer's `Field(...)`: `2.0` is read as 2, as JSON Schema reads it. (After it,
#: not before: the document then still gives `minimum`/`maximum`.)
JsonInteger = BeforeValidator(_whole_number)

#: The largest quantity of one product in one stock change or order.
MAX_QUANTITY = 1_000_000

#: A quantity of units in a stock change or an order line: a whole JSON number from 1 to
#: 1,000,000 (strict: `true` or `"2"` is a wrong type, not 1 or 2).
Quantity = Annotated[int, Field(ge=1, le=MAX_QUANTITY, strict=True, examples=[2]), JsonInteger]

#: The largest id a row can have (`INTEGER` primary keys).
MAX_ID = 2_147_483_647

#: A database id in a request body: a positive 31-bit JSON integer (larger ids cannot exist).
Id = Annotated[int, Field(ge=1, le=MAX_ID, strict=True, examples=[1]), JsonInteger]

_DIGITS = re.compile(r"[0-9]{1,32}")


def _decimal_digits(value: object) -> object:
    """`value` unchanged unless it is a string other than 1-32 decimal digits: then the same error
    as for `abc` (pydantic's lax integers would read `1.0`, `+1`, ` 1` as 1 and `1_0` as 10)."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise PydanticCustomError(
            "int_parsing", "Input should be a valid integer, unable to parse string as an integer"
        )
    return value


def digits_at_most(limit: int) -> str:
    """A regular expression (no anchors) for the decimal numbers 0..`limit`, leading zeros allowed:
    `digits_at_most(215)` is
    `0*([0-9]{1,2}|[0-1][0-9]{2}|2[0-0][0-9]{1}|21[0-5])`. For the `pattern` of ids
    written as text, so the OpenAPI document bounds them as the server does."""
    text = str(limit)
    alternatives = [f"[0-9]{{1,{len(text) - 1}}}"] if len(text) > 1 else []
    for position, digit in enumerate(text):
        rest = len(text) - position - 1
        top = int(digit) - (1 if rest else 0)
        if top >= 0:
            tail = f"[0-9]{{{rest}}}" if rest else ""
            alternatives.append(f"{text[:position]}[0-{top}]{tail}")
    return f"0*({'|'.join(alternatives)})"


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
