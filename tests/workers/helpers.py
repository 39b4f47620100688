"""Helpers for pipeline tests: arrange orders directly through the domain services (bypassing the
API's pre-check), wait for outcomes, and check the stock invariants."""

from __future__ import annotations

import time

from sqlalchemy import func, select, text

from core.db import get_sync_engine, session_scope
from core.orders import service as orders
from core.orders.models import Order, OrderStatus
from core.products.models import Product, StockMovement
from core.products.schemas import ProductCreate
from core.products.service import create_product


def make_product(stock: int, name: str = "Product A", price: str = "15.99") -> int:
    with session_scope() as session:
        return create_product(session, ProductCreate(name=name, price=price, stock=stock)).id


def place(lines: list[tuple[int, int]]) -> int:
    """Store a pending order without enqueuing it."""
    with session_scope() as session:
        return orders.place_order(session, lines).order.id


def statuses(order_ids: list[int]) -> dict[int, str]:
    with session_scope() as session:
        rows = session.execute(select(Order.id, Order.status).where(Order.id.in_(order_ids))).all()
    return {order_id: status for order_id, status in rows}


def wait_until_final(order_ids: list[int], timeout: float = 60) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        current = statuses(order_ids)
        if all(s != OrderStatus.PENDING for s in current.values()) or time.monotonic() > deadline:
            return current
        time.sleep(0.1)


def stock_of(product_id: int) -> int:
    with session_scope() as session:
        return session.execute(select(Product.stock).where(Product.id == product_id)).scalar_one()


def ledger_sum(product_id: int) -> int:
    with session_scope() as session:
        stmt = select(func.coalesce(func.sum(StockMovement.delta), 0)).where(
            StockMovement.product_id == product_id
        )
        return int(session.execute(stmt).scalar_one())


def reservations_for(order_id: int) -> int:
    with session_scope() as session:
        stmt = select(func.count()).where(
            StockMovement.order_id == order_id, StockMovement.reason == "reservation"
        )
        return session.execute(stmt).scalar_one()


def wait_for_lock_waiter(timeout: float = 20) -> None:
    """Block until some backend of the test database waits on a row lock."""
    deadline = time.monotonic() + timeout
    sql = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )
    while time.monotonic() < deadline:
        with get_sync_engine().connect() as conn:
            if conn.execute(sql).scalar_one() > 0:
                return
        time.sleep(0.05)
    raise AssertionError("no backend started waiting on the lock")
