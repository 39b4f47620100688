"""`core.orders.service` against the real PostgreSQL test database, through the `db` session
(CONTRACT.md, "Orders" and "Processing guarantees"; STYLE.md rule 3: tasks re-check state)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.config import Settings
from core.db import make_sync_engine, utcnow
from core.errors import (
    Conflict,
    InsufficientStock,
    InvalidInput,
    InvalidStatus,
    InvalidStatusTransition,
    OrderNotFound,
    ProductDiscontinued,
    ProductNotFound,
)
from core.migrate import upgrade
from core.orders import service
from core.orders.models import IdempotencyKey, Order, OrderStatus
from core.products import service as products
from core.products.models import Product, StockMovement
from core.products.schemas import ProductCreate, ProductUpdate

#: Each test works only through the `db` session, in one transaction rolled back at its end.
pytestmark = pytest.mark.rolled_back


def make_product(db, stock: int = 10, name: str = "Product A", price: str = "15.99", **extra) -> int:
    return products.create_product(db, ProductCreate(name=name, price=price, stock=stock, **extra)).id


def stock(db, product_id: int) -> int:
    return db.execute(select(Product.stock).where(Product.id == product_id)).scalar_one()


def movements(db, order_id: int, reason: str) -> int:
    stmt = select(func.count()).where(StockMovement.order_id == order_id, StockMovement.reason == reason)
    return db.execute(stmt).scalar_one()


def order_row(db, order_id: int) -> Order:
    return db.execute(
        select(Order).where(Order.id == order_id).execution_options(populate_existing=True)
    ).scalar_one()


def order_count(db) -> int:
    return db.execute(select(func.count()).select_from(Order)).scalar_one()


# --- place_order ---------------------------------------------------------------------------------


def test_place_order_snapshots_prices_and_totals_in_cents(db):
    a = make_product(db, name="A", price="15.99")
    b = make_product(db, name="B", price="12.99")

    placed = service.place_order(db, [(a, 2), (b, 1)])

    order = placed.order
    assert placed.replayed is False
    assert order.status == OrderStatus.PENDING
    assert str(order.total_price) == "44.97"
    assert [(line.product_id, line.name, line.quantity, str(line.unit_price)) for line in order.lines] == [
        (a, "A", 2, "15.99"),
        (b, "B", 1, "12.99"),
    ]
    assert order.enqueued_at is not None
    assert stock(db, a) == 10  # intake takes no stock


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("unknown", ProductNotFound),
        ("insufficient", InsufficientStock),
        ("discontinued", ProductDiscontinued),
        ("deleted", ProductNotFound),
    ],
)
def test_place_order_refuses_at_intake(db, case, error):
    pid = make_product(db, stock=10)
    lines = [(pid, 1)]
    if case == "unknown":
        lines = [(pid, 1), (999, 1)]
    elif case == "insufficient":
        lines = [(pid, 11)]
    elif case == "discontinued":
        products.update_product(db, pid, ProductUpdate(discontinued=True))
    else:
        products.delete_product(db, pid)

    with pytest.raises(error):
        service.place_order(db, lines)
    assert order_count(db) == 0


def test_place_order_replays_an_idempotency_key_with_the_same_lines(db):
    pid = make_product(db)
    key = service.IdempotencyRequest("anonymous", "k-1")

    first = service.place_order(db, [(pid, 1)], idempotency=key)
    again = service.place_order(db, [(pid, 1)], idempotency=key)

    assert again.replayed is True
    assert again.order.id == first.order.id
    assert order_count(db) == 1
    with pytest.raises(Conflict) as raised:
        service.place_order(db, [(pid, 2)], idempotency=key)
    assert raised.value.details == {"idempotency_key": "k-1"}
    other_scope = service.place_order(db, [(pid, 1)], idempotency=service.IdempotencyRequest("user:2", "k-1"))
    assert other_scope.order.id != first.order.id
    assert db.execute(select(func.count()).select_from(IdempotencyKey)).scalar_one() == 2


# --- request_fingerprint -------------------------------------------------------------------------


def test_request_fingerprint_is_order_insensitive():
    assert service.request_fingerprint([(1, 2), (3, 1)]) == service.request_fingerprint([(3, 1), (1, 2)])


def test_request_fingerprint_tells_different_requests_apart():
    base = service.request_fingerprint([(1, 2), (3, 1)])
    assert re.fullmatch(r"[0-9a-f]{64}", base), base  # a SHA-256 in lowercase hex
    assert service.request_fingerprint([(1, 1), (3, 2)]) != base
    assert service.request_fingerprint([(1, 2)]) != base
    assert service.request_fingerprint([(1, 2), (3, 1)], {"manager_id": "mgr_1"}) != base
    assert service.request_fingerprint([(1, 2), (3, 1)], {"manager_id": "mgr_1"}) == (
        service.request_fingerprint([(3, 1), (1, 2)], {"manager_id": "mgr_1"})
    )


# --- reserve_order -------------------------------------------------------------------------------


def test_reserve_order_confirms_and_is_idempotent(db):
    pid = make_product(db, stock=10)
    order_id = service.place_order(db, [(pid, 3)]).order.id

    assert service.reserve_order(db, order_id) == "confirmed"
    assert service.reserve_order(db, order_id) == "confirmed"  # a redelivered task

    assert stock(db, pid) == 7
    assert movements(db, order_id, "reservation") == 1
    order = order_row(db, order_id)
    assert order.attempts == 1
    assert order.processed_at is not None
    assert order.error is None


@pytest.mark.parametrize("final", ["cancelled", "rejected", "failed", "completed"])
def test_reserve_order_leaves_an_order_that_left_pending_untouched(db, final):
    pid = make_product(db, stock=10)
    order_id = service.place_order(db, [(pid, 3)]).order.id
    order = order_row(db, order_id)
    order.status = final
    db.flush()

    assert service.reserve_order(db, order_id) == final

    assert stock(db, pid) == 10
    assert movements(db, order_id, "reservation") == 0
    assert order_row(db, order_id).attempts == 0


def test_reserve_order_on_a_missing_order_is_none(db):
    assert service.reserve_order(db, 12345) is None


def test_reserve_order_rejects_all_lines_or_none(db):
    a = make_product(db, name="A", stock=10)
    b = make_product(db, name="B", stock=10)
    order_id = service.place_order(db, [(b, 4), (a, 2)]).order.id
    products.decrement_stock(db, b, 8)  # b: 2 left, 4 ordered

    assert service.reserve_order(db, order_id) == "rejected"

    assert (stock(db, a), stock(db, b)) == (10, 2)
    assert movements(db, order_id, "reservation") == 0
    order = order_row(db, order_id)
    assert order.error == {
        "code": "INSUFFICIENT_STOCK",
        "error": "Insufficient stock",
        "message": "There are only 2 units of B in stock, but you requested 4.",
        "details": {"product_id": b, "available": 2, "requested": 4},
        # The values the sentence was made from, so that the store API can write it with `prod_...`.
        "params": {"name": "B"},
    }
    assert order.attempts == 1
    assert service.reserve_order(db, order_id) == "rejected"
    assert order_row(db, order_id).attempts == 1


# --- mark_failed ---------------------------------------------------------------------------------


def test_mark_failed_fails_a_pending_order(db):
    pid = make_product(db)
    order_id = service.place_order(db, [(pid, 1)]).order.id

    assert service.mark_failed(db, order_id, "OperationalError") == "failed"

    order = order_row(db, order_id)
    assert order.status == "failed"
    assert order.error["code"] == "PROCESSING_FAILED"
    assert order.error["details"] == {"reason": "OperationalError"}
    assert order.processed_at is not None
    assert service.reserve_order(db, order_id) == "failed"
    assert stock(db, pid) == 10


@pytest.mark.parametrize("arrange", ["confirm", "cancel"])
def test_mark_failed_leaves_other_orders_alone(db, arrange):
    pid = make_product(db)
    order_id = service.place_order(db, [(pid, 1)]).order.id
    if arrange == "confirm":
        service.reserve_order(db, order_id)
    else:
        service.cancel_order(db, order_id)
    expected = order_row(db, order_id).status

    assert service.mark_failed(db, order_id, "OperationalError") == expected

    order = order_row(db, order_id)
    assert order.status == expected
    assert order.error is None


def test_mark_failed_on_a_missing_order_is_none(db):
    assert service.mark_failed(db, 12345, "OperationalError") is None


# --- stale_pending_orders (the outbox sweep) -----------------------------------------------------


def test_stale_pending_orders_picks_only_old_pending_orders_and_bumps_them(db):
    pid = make_product(db, stock=100)
    old = service.place_order(db, [(pid, 1)]).order.id
    recent = service.place_order(db, [(pid, 1)]).order.id
    never_sent = service.place_order(db, [(pid, 1)]).order.id
    old_confirmed = service.place_order(db, [(pid, 1)]).order.id
    service.reserve_order(db, old_confirmed)
    long_ago = utcnow() - timedelta(seconds=120)
    for order_id in (old, old_confirmed):
        order_row(db, order_id).enqueued_at = long_ago
    order_row(db, never_sent).enqueued_at = None
    db.flush()
    before = utcnow()

    assert service.stale_pending_orders(db, 30) == [old, never_sent]

    for order_id in (old, never_sent):
        assert order_row(db, order_id).enqueued_at >= before
    assert order_row(db, recent).enqueued_at < before
    assert order_row(db, old_confirmed).enqueued_at == long_ago
    assert service.stale_pending_orders(db, 30) == []  # the next sweep waits again


def test_stale_pending_orders_respects_the_limit(db):
    pid = make_product(db, stock=100)
    ids = [service.place_order(db, [(pid, 1)]).order.id for _ in range(3)]
    for order_id in ids:
        order_row(db, order_id).enqueued_at = None
    db.flush()

    assert service.stale_pending_orders(db, 30, limit=2) == ids[:2]  # oldest first
    assert service.stale_pending_orders(db, 30, limit=2) == ids[2:]
    assert service.stale_pending_orders(db, 30, limit=2) == []


# --- parse_status --------------------------------------------------------------------------------


def test_parse_status_accepts_any_case():
    cases = {
        "CONFIRMED": OrderStatus.CONFIRMED,
        "Pending": OrderStatus.PENDING,
        " rejected ": OrderStatus.REJECTED,
        "completed": OrderStatus.COMPLETED,
        "Cancelled": OrderStatus.CANCELLED,
        "FAILED": OrderStatus.FAILED,
    }
    assert {value: service.parse_status(value) for value in cases} == cases


def test_parse_status_refuses_unknown_values():
    for value in ["shipped", "", None, 5]:
        with pytest.raises(InvalidInput) as raised:
            service.parse_status(value)
        assert raised.value.details == {"status": value}
        assert "pending" in raised.value.message


# --- set_status and cancel_order -----------------------------------------------------------------


def test_set_status_completes_only_a_confirmed_order(db):
    pid = make_product(db)
    order_id = service.place_order(db, [(pid, 1)]).order.id

    with pytest.raises(InvalidStatusTransition):
        service.set_status(db, order_id, "Completed")
    assert service.set_status(db, order_id, "pending").status == "pending"
    service.reserve_order(db, order_id)
    assert service.set_status(db, order_id, "Completed").status == "completed"
    with pytest.raises(InvalidStatus):
        service.set_status(db, order_id, "Shipped")
    with pytest.raises(OrderNotFound):
        service.set_status(db, 12345, "Completed")


def test_cancel_order_releases_a_confirmed_orders_stock_once(db):
    pid = make_product(db, stock=10)
    order_id = service.place_order(db, [(pid, 4)]).order.id
    service.reserve_order(db, order_id)

    assert service.cancel_order(db, order_id, actor="tester").status == "cancelled"
    assert service.cancel_order(db, order_id).status == "cancelled"

    assert stock(db, pid) == 10
    assert movements(db, order_id, "release") == 1
    with pytest.raises(OrderNotFound):
        service.cancel_order(db, 12345)


def test_cancel_order_hides_another_users_order(db):
    pid = make_product(db)
    order_id = service.place_order(db, [(pid, 1)], user_id=1).order.id

    with pytest.raises(OrderNotFound):
        service.cancel_order(db, order_id, user_id=2)
    with pytest.raises(OrderNotFound):
        service.get_order(db, order_id, user_id=2)
    assert service.cancel_order(db, order_id, user_id=1).status == "cancelled"


# --- the status guard on the embedded default (SQLite) -------------------------------------------


def _interleave_on_sqlite(
    tmp_path: Path, outer: Callable[[Session, int], str], inner: Callable[[Session, int], str]
) -> tuple[str, str, int]:
    """Run `outer` on an order of 4 units (stock 10); right after `outer` has read the order row
    (its `repo.lock`), run `inner` to completion on a second connection. A correct status guard makes
    `inner` wait for `outer` (here: fail fast with "database is locked") or makes `outer` see what
    `inner` did. Returns (what `inner` answered, the order's final status, the product's stock)."""
    cfg = Settings(database_url=None, redis_url=None, data_dir=tmp_path)
    upgrade(cfg.sync_database_url)
    engine, other = make_sync_engine(cfg), make_sync_engine(cfg)
    event.listen(other, "connect", lambda conn, _: conn.execute("PRAGMA busy_timeout=300"))
    with Session(engine) as session, session.begin():
        pid = products.create_product(session, ProductCreate(name="A", price="1.00", stock=10)).id
        order_id = service.place_order(session, [(pid, 4)]).order.id
    answered: list[str] = []

    def run_inner(conn, cursor, statement, parameters, context, executemany) -> None:
        if answered or not statement.lstrip().startswith("SELECT") or "FROM orders" not in statement:
            return
        try:
            with Session(other) as session, session.begin():
                answered.append(inner(session, order_id))
        except OperationalError:  # "database is locked": the guard made `inner` wait
            answered.append("locked")

    event.listen(engine, "after_cursor_execute", run_inner)
    try:
        with Session(engine) as session, session.begin():
            outer(session, order_id)
        event.remove(engine, "after_cursor_execute", run_inner)
        with Session(engine) as session:
            final = session.execute(select(Order.status).where(Order.id == order_id)).scalar_one()
            on_hand = session.execute(select(Product.stock).where(Product.id == pid)).scalar_one()
    finally:
        engine.dispose()
        other.dispose()
    return answered[0], final, on_hand


def _reserve(session: Session, order_id: int) -> str:
    return str(service.reserve_order(session, order_id))


def _cancel(session: Session, order_id: int) -> str:
    return service.cancel_order(session, order_id).status


def test_sqlite_cancel_during_reservation_is_not_overwritten(tmp_path):
    """`repo.lock` is SELECT ... FOR UPDATE, which SQLite ignores: without a transaction that takes
    the write lock up front, a cancel committed between the worker's status read and its
    reservation is overwritten (the client was told 'cancelled', the order ends confirmed)."""
    inner, final, on_hand = _interleave_on_sqlite(tmp_path, outer=_reserve, inner=_cancel)

    if inner == "cancelled":
        assert final == "cancelled"
    assert on_hand == (6 if final == "confirmed" else 10)


def test_sqlite_reservation_during_cancel_does_not_leak_stock(tmp_path):
    """The other way round: a reservation committed between the cancel's status read and its write
    would not be released (the order ends cancelled while its units stay taken)."""
    _, final, on_hand = _interleave_on_sqlite(tmp_path, outer=_cancel, inner=_reserve)

    assert on_hand == (6 if final == "confirmed" else 10)
