"""Helpers for pipeline tests: arrange orders directly through the domain services (bypassing the
API's pre-check), wait for outcomes, and check the stock invariants."""

from __future__ import annotations

import subprocess
import time

from sqlalchemy import func, select, text

from core.db import get_sync_engine, session_scope
from core.orders import service as orders
from core.orders.models import Order, OrderLine, OrderStatus
from core.products.models import Product, StockMovement
from tests import conftest


def make_product(stock: int, name: str = "Product A", price: str = "15.99") -> int:
    """The id of a product made by the suite's factory (`tests.conftest.make_product`)."""
    return int(conftest.make_product(name=name, price=price, stock=stock)["id"])


def place(lines: list[tuple[int, int]]) -> int:
    """Store a pending order without enqueuing it."""
    with session_scope() as session:
        return orders.place_order(session, lines).order.id


def place_copies(lines: list[tuple[int, int]], count: int) -> list[int]:
    """`count` pending orders of the same `lines`, not enqueued, for tests that need a backlog rather
    than the intake path: the first is stored by the intake service (prices snapshotted, stock and
    total checked), the others are copies of its rows made by two set-based statements in the same
    transaction. Their ids, ascending."""
    order_columns = ", ".join(c.name for c in Order.__table__.columns if c.name != "id")
    line_columns = [c.name for c in OrderLine.__table__.columns if c.name not in ("id", "order_id")]
    copy_orders = text(
        f"INSERT INTO orders ({order_columns}) SELECT {order_columns} FROM orders, generate_series(2, :count)"
        " WHERE id = :first RETURNING id"
    )
    copy_lines = text(
        f"INSERT INTO order_lines (order_id, {', '.join(line_columns)})"
        f" SELECT copy.id, {', '.join('line.' + name for name in line_columns)}"
        " FROM order_lines AS line, unnest(CAST(:ids AS integer[])) AS copy(id) WHERE line.order_id = :first"
    )
    with session_scope() as session:
        first = orders.place_order(session, lines).order.id
        copies = sorted(session.execute(copy_orders, {"count": count, "first": first}).scalars())
        session.execute(copy_lines, {"ids": copies, "first": first})
    return [first, *copies]


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


def lock_waiters() -> int:
    """How many backends of the test database wait on a lock now."""
    sql = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )
    with get_sync_engine().connect() as conn:
        return int(conn.execute(sql).scalar_one())


def wait_for_lock_waiter(timeout: float = 20, count: int = 1) -> None:
    """Block until at least `count` backends of the test database wait on a row lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock_waiters() >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} backends started waiting on a lock")


# --- batches (tests/workers/test_batch.py) --------------------------------------------------------


def hold_row_lock(table: str, row_id: int):
    """Lock one row (`SELECT ... FOR UPDATE`) on a connection of its own; `rollback()` and
    `close()` the returned connection to release it."""
    conn = get_sync_engine().connect()
    conn.execute(text(f"SELECT id FROM {table} WHERE id = :id FOR UPDATE"), {"id": row_id})
    return conn


def pool_children(pid: int) -> list[int]:
    """The pids of a worker's pool processes."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(x) for x in out.stdout.split()]


def order_rows(order_ids: list[int]) -> dict[int, Order]:
    """The orders (without lines), detached."""
    with session_scope() as session:
        found = session.execute(select(Order).where(Order.id.in_(order_ids))).scalars().all()
    return {order.id: order for order in found}


def reservation_rows(order_ids: list[int]) -> list[tuple[int, int, int, int]]:
    """`(order_id, product_id, delta, stock_after)` of the orders' reservation movements, oldest first."""
    m = StockMovement
    stmt = (
        select(m.order_id, m.product_id, m.delta, m.stock_after)
        .where(m.order_id.in_(order_ids), m.reason == "reservation")
        .order_by(m.id)
    )
    with session_scope() as session:
        return [tuple(row) for row in session.execute(stmt)]


def state_of(product_ids: list[int], order_ids: list[int]) -> dict:
    """Everything a repeated batch must leave alone: stock, the whole ledger of the products, and
    each order's status, error, attempts and timestamps."""
    m, o = StockMovement, Order
    stock = select(Product.id, Product.stock).where(Product.id.in_(product_ids))
    ledger = (
        select(m.id, m.product_id, m.delta, m.order_id).where(m.product_id.in_(product_ids)).order_by(m.id)
    )
    orders_ = select(o.id, o.status, o.error, o.attempts, o.updated_at, o.processed_at).where(
        o.id.in_(order_ids)
    )
    with session_scope() as session:
        return {
            "stock": dict(session.execute(stock).all()),
            "ledger": [tuple(row) for row in session.execute(ledger.order_by(m.id))],
            "orders": {row.id: tuple(row) for row in session.execute(orders_.where(o.id.in_(order_ids)))},
        }


def assert_reserved_once(initial: dict[int, int], lines: dict[int, list[tuple[int, int]]]) -> dict[int, str]:
    """The pipeline's invariants for orders `lines` (`{order_id: [(product_id, quantity)]}`) over
    products that held `initial` (`{product_id: stock}`) before them: every order final; each
    confirmed order has exactly one reservation movement per line, with its quantities; a rejected
    or failed order has none and carries its error; each product's stock is its initial stock less
    the confirmed quantities, equals its ledger sum, and is not negative. Returns the statuses."""
    found = order_rows(list(lines))
    assert set(found) == set(lines)
    statuses_ = {order_id: order.status for order_id, order in found.items()}
    assert OrderStatus.PENDING not in statuses_.values(), statuses_
    movements: dict[int, list[tuple[int, int]]] = {}
    for order_id, product_id, delta, _ in reservation_rows(list(lines)):
        movements.setdefault(order_id, []).append((product_id, -delta))
    taken = dict.fromkeys(initial, 0)
    for order_id, order in found.items():
        if order.status == OrderStatus.CONFIRMED:
            assert sorted(movements.get(order_id, [])) == sorted(lines[order_id]), order_id
            assert order.error is None
            assert order.attempts == 1
            for product_id, quantity in lines[order_id]:
                taken[product_id] += quantity
        else:
            assert order.status in (OrderStatus.REJECTED, OrderStatus.FAILED), order.status
            assert order_id not in movements, order_id
            assert order.error is not None and order.error["code"], order_id
    for product_id, start in initial.items():
        on_hand = stock_of(product_id)
        assert on_hand == start - taken[product_id], product_id
        assert on_hand == ledger_sum(product_id), product_id
        assert on_hand >= 0
    return statuses_
