"""Public ids of the store API (CONTRACT.md, "Store API", IDs are strings).

A product is `prod_` and its integer id zero-padded to three digits (`prod_001`, `prod_1234`); an order
is `ord_` and its id the same way (`ord_789`). Parsing accepts any number of digits (`prod_1`,
`prod_0001`), but nothing else: no sign, no spaces, no other prefix, no bare number.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer

from core.types import MAX_ID, digits_at_most

PRODUCT_PREFIX = "prod_"
ORDER_PREFIX = "ord_"

_DIGITS = re.compile(r"[0-9]+")
#: The digits of an id that can exist (0 to `MAX_ID`, leading zeros allowed).
_ID_DIGITS = digits_at_most(MAX_ID)
_IN_RANGE = re.compile(_ID_DIGITS)
#: The OpenAPI `pattern` of each public id: the same rule as `parse_public_id`.
PRODUCT_ID_PATTERN = f"^{PRODUCT_PREFIX}{_ID_DIGITS}$"
ORDER_ID_PATTERN = f"^{ORDER_PREFIX}{_ID_DIGITS}$"


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
    if not _IN_RANGE.fullmatch(digits):
        raise ValueError(f"is too large: the largest id is '{prefix}{MAX_ID}'")
    return int(digits)


def _product(value: Any) -> int:
    return parse_public_id(value, PRODUCT_PREFIX)


def _order(value: Any) -> int:
    return parse_public_id(value, ORDER_PREFIX)


#: A product id in a store request (`"prod_001"`), validated to its integer id.
ProductRef = Annotated[
    int,
    BeforeValidator(_product),
    PlainSerializer(format_product_id, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": PRODUCT_ID_PATTERN, "examples": ["prod_001"]}),
]

#: An order id in a store request or path (`"ord_789"`), validated to its integer id.
OrderRef = Annotated[
    int,
    BeforeValidator(_order),
    PlainSerializer(format_order_id, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": ORDER_ID_PATTERN, "examples": ["ord_789"]}),
]

#: A product id in a response: the integer id, written as `"prod_001"`.
ProductIdOut = Annotated[
    int,
    PlainSerializer(format_product_id, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": PRODUCT_ID_PATTERN, "examples": ["prod_001"]}),
]

#: An order id in a response: the integer id, written as `"ord_789"`.
OrderIdOut = Annotated[
    int,
    PlainSerializer(format_order_id, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": ORDER_ID_PATTERN, "examples": ["ord_789"]}),
]
