"""The order body rendered straight to JSON bytes (`api.routes.orders.render_order`) is byte for byte
what `JSONResponse` made of the order's `model_dump(mode="json")` (CONTRACT.md, "Orders": the order
body), for the values an order can hold: one or several lines, prices up to the largest total,
names with quotes, backslashes, control characters and non-ASCII text, a store customer, a
rejection's error object."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest
from starlette.responses import JSONResponse

from api.routes.orders import render_order
from core.orders.intake import LineView, OrderView
from core.orders.schemas import OrderRead

pytestmark = pytest.mark.pure

NOW = datetime(2026, 11, 30, 12, 34, 56, 789012, tzinfo=UTC)


def _order(lines: list[LineView], **fields: object) -> OrderRead:
    total = sum((line.unit_price * line.quantity for line in lines), Decimal("0.00"))
    view = OrderView(
        id=fields.get("id", 7),  # type: ignore[arg-type]
        status=fields.get("status", "pending"),  # type: ignore[arg-type]
        lines=lines,
        total_price=total,
        user_id=fields.get("user_id", 1),  # type: ignore[arg-type]
        manager_id=None,
        customer=fields.get("customer"),  # type: ignore[arg-type]
        error=fields.get("error"),  # type: ignore[arg-type]
        created_at=NOW,
        updated_at=NOW,
    )
    return OrderRead.of(view)


NAMES = ["plain", 'quote " and \\ backslash', "tab\tnewline\ncontrol\x01\x1f del\x7f", "Café ☕ 日本 \u2028"]
PRICES = ["0.00", "0.01", "0.10", "9.99", "15.5", "1234567.89", "9999999999.99"]


@pytest.mark.parametrize("price", PRICES)
@pytest.mark.parametrize("name", NAMES)
def test_a_one_line_order_renders_as_json_response_did(name: str, price: str) -> None:
    order = _order([LineView(3, name, 1, Decimal(price))])
    assert render_order(order) == JSONResponse(order.model_dump(mode="json")).body


def test_a_multi_line_store_order_with_a_customer_renders_as_json_response_did() -> None:
    lines = [LineView(pid, NAMES[pid % len(NAMES)], pid, Decimal("2.35") * pid) for pid in range(1, 6)]
    for customer in ({"id": "cust_42", "email": "jane@example.com"}, {"id": 42, "email": "j@e.io"}):
        order = _order(lines, customer=customer, user_id=None)
        assert render_order(order) == JSONResponse(order.model_dump(mode="json")).body


def test_a_rejected_order_with_its_error_renders_as_json_response_did() -> None:
    error = {
        "error": "Insufficient stock",
        "message": "There are only 5 units of Product A in stock, but you requested 10.",
        "code": "INSUFFICIENT_STOCK",
        "details": {"product_id": 3, "available": 5, "requested": 10, "ratio": 0.5, "name": "Ä"},
    }
    order = _order([LineView(3, "Product A", 10, Decimal("1.00"))], status="rejected", error=error)
    assert render_order(order) == JSONResponse(order.model_dump(mode="json")).body


def test_an_orm_like_order_renders_as_json_response_did() -> None:
    line = SimpleNamespace(product_id=1, name="x", quantity=2, unit_price=Decimal("3.30"))
    row = SimpleNamespace(
        id=1,
        status="confirmed",
        lines=[line],
        total_price=Decimal("6.60"),
        user_id=1,
        customer=None,
        error=None,
        created_at=NOW,
        updated_at=NOW,
    )
    order = OrderRead.of(row)
    assert render_order(order) == JSONResponse(order.model_dump(mode="json")).body
