"""Public ids of the store API (CONTRACT.md, "Store API", IDs are strings).

A product is `prod_` and its integer id zero-padded to three digits (`prod_001`, `prod_1234`); an order
is `ord_` and its id the same way (`ord_789`). Parsing accepts any number of digits (`prod_1`,
`prod_0001`), but nothing else: no sign, no spaces, no other prefix, no bare number.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer

PRODUCT_PREFIX = "prod_"
ORDER_PREFIX = "ord_"

#: The largest id a row can have (`INTEGER` primary keys).
MAX_ID = 2_147_483_647

_DIGITS = re.compile(r"[0-9]{1,32}")


def format_product_id(product_id: int) -> str:
    """`7` -> `"prod_007"`."""
    return f"{PRODUCT_PREFIX}{product_id:03d}"


def format_order_id(order_id: int) -> str:
    """`789` -> `"ord_789"`."""
    return f"{ORDER_PREFIX}{order_id:03d}"


def parse_public_id(value: object, prefix: str) -> int:
    """The integer id in `value` (`"<prefix><digits>"`). Raises ValueError with a sentence naming the
    expected form, or the largest id when the number is beyond it (ids are 32-bit integers)."""
    example = f"{prefix}001"
    if not isinstance(value, str):
        raise ValueError(f"must be a string like '{example}'")
    digits = value[len(prefix) :] if value.startswith(prefix) else None
    if digits is None or not _DIGITS.fullmatch(digits):
        raise ValueError(f"must look like '{example}': '{prefix}' followed by digits")
    number = int(digits)
    if number > MAX_ID:
        raise ValueError(f"is too large: the largest id is '{prefix}{MAX_ID}'")
    return number


def _product(value: Any) -> int:
    return parse_public_id(value, PRODUCT_PREFIX)


def _order(value: Any) -> int:
    return parse_public_id(value, ORDER_PREFIX)


#: A product id in a store request (`"prod_001"`), validated to its integer id.
ProductRef = Annotated[
    int,
    BeforeValidator(_product),
    PlainSerializer(format_product_id, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": r"^prod_[0-9]+$", "examples": ["prod_001"]}),
]

#: An order id in a store request or path (`"ord_789"`), validated to its integer id.
OrderRef = Annotated[
    int,
    BeforeValidator(_order),
    PlainSerializer(format_order_id, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": r"^ord_[0-9]+$", "examples": ["ord_789"]}),
]

#: A product id in a response: the integer id, written as `"prod_001"`.
ProductIdOut = Annotated[
    int,
    PlainSerializer(format_product_id, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": r"^prod_[0-9]+$", "examples": ["prod_001"]}),
]

#: An order id in a response: the integer id, written as `"ord_789"`.
OrderIdOut = Annotated[
    int,
    PlainSerializer(format_order_id, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": r"^ord_[0-9]+$", "examples": ["ord_789"]}),
]
