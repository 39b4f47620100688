"""Property-based tests of the reservation rule against the real PostgreSQL test database
(CONTRACT.md, "Processing guarantees": stock never goes below zero, every stock change is a stock
movement, an order is reserved all or nothing and at most once).

Hypothesis drives a state machine through any interleaving of the operations that touch stock:
orders placed, reserved one by one or in batches (with duplicated and redelivered ids), cancelled,
completed, and stock adjusted by managers. Each operation is its own transaction, as in the running
system. After every step, for every product:

* stock >= 0;
* stock == the sum of its ledger (stock movements);
* stock == opening stock + adjustments - the units of its orders that hold a reservation now
  (`confirmed` or `completed`);

and an order that was decided keeps its decision: a redelivered batch never changes it.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)
from sqlalchemy import select, text

from core.db import session_scope
from core.errors import InsufficientStock, InvalidStatusTransition
from core.orders import reservation
from core.orders import service as orders
from core.orders.models import Order, OrderStatus
from core.products import service as products
from core.products.schemas import ProductCreate

#: Order statuses whose lines hold stock.
HOLDING = {OrderStatus.CONFIRMED.value, OrderStatus.COMPLETED.value}
#: Statuses an order never leaves by reservation.
DECIDED = {OrderStatus.CONFIRMED.value, OrderStatus.REJECTED.value}

PRODUCTS = 3


class ReservationMachine(RuleBasedStateMachine):
    """The reservation rule under any sequence of stock-touching operations."""

    orders = Bundle("orders")

    def __init__(self) -> None:
        super().__init__()
        self.product_ids: list[int] = []
        self.opening: dict[int, int] = {}
        self.adjusted: dict[int, int] = defaultdict(int)
        self.decided: dict[int, str] = {}
        self.placed: list[int] = []

    @initialize(stocks=st.lists(st.integers(0, 12), min_size=PRODUCTS, max_size=PRODUCTS))
    def create_products(self, stocks: list[int]) -> None:
        with session_scope() as session:
            for index, stock in enumerate(stocks):
                product = products.create_product(
                    session, ProductCreate(name=f"P{index}", price="2.50", stock=stock)
                )
                self.product_ids.append(product.id)
                self.opening[product.id] = stock

    @rule(
        target=orders,
        lines=st.dictionaries(st.integers(0, PRODUCTS - 1), st.integers(1, 6), min_size=1, max_size=PRODUCTS),
    )
    def place(self, lines: dict[int, int]) -> int | MultipleResults[int]:
        """An order stored `pending`. The intake refuses one that the stock cannot cover now, but
        pending orders are not reservations: several can count on the same units, and the worker
        decides which ones get them."""
        wanted = sorted((self.product_ids[i], qty) for i, qty in lines.items())
        try:
            with session_scope() as session:
                order_id = orders.place_order(session, wanted).order.id
        except InsufficientStock:
            return multiple()
        self.placed.append(order_id)
        return order_id

    @rule(order_id=orders)
    def reserve_one(self, order_id: int) -> None:
        with session_scope() as session:
            orders.reserve_order(session, order_id)

    @rule(batch=st.lists(orders, min_size=1, max_size=6), deliveries=st.integers(1, 2))
    def reserve_batch(self, batch: list[int], deliveries: int) -> None:
        """A batch task, with duplicated ids inside it, delivered once or twice."""
        for _ in range(deliveries):
            with session_scope() as session:
                reservation.reserve_orders(session, batch)

    @rule(order_id=orders)
    def cancel(self, order_id: int) -> None:
        try:
            with session_scope() as session:
                orders.cancel_order(session, order_id, actor="test")
        except InvalidStatusTransition:
            pass

    @rule(order_id=orders)
    def complete(self, order_id: int) -> None:
        try:
            with session_scope() as session:
                orders.set_status(session, order_id, "Completed", actor="test")
        except InvalidStatusTransition:
            pass

    @rule(index=st.integers(0, PRODUCTS - 1), quantity=st.integers(1, 8))
    def increment(self, index: int, quantity: int) -> None:
        product_id = self.product_ids[index]
        with session_scope() as session:
            products.increment_stock(session, product_id, quantity, actor="test")
        self.adjusted[product_id] += quantity

    @rule(index=st.integers(0, PRODUCTS - 1), quantity=st.integers(1, 8))
    def decrement(self, index: int, quantity: int) -> None:
        product_id = self.product_ids[index]
        try:
            with session_scope() as session:
                products.decrement_stock(session, product_id, quantity, actor="test")
        except InsufficientStock:
            return
        self.adjusted[product_id] -= quantity

    @invariant()
    def stock_ledger_and_decisions_agree(self) -> None:
        """After every step, in one read: each product's stock is >= 0, equals the sum of its ledger,
        and equals its opening stock + adjustments - the units its holding orders take; and once
        confirmed or rejected by a reservation, an order only moves on by a user's action (cancel,
        complete), never back by a redelivered or duplicated task."""
        if not self.product_ids:
            return
        with session_scope() as session:
            rows = session.execute(_PRODUCT_TOTALS, {"ids": self.product_ids, "holding": sorted(HOLDING)})
            statuses = dict(
                session.execute(select(Order.id, Order.status).where(Order.id.in_(self.placed))).all()
            )
        for product_id, stock, ledger, held in rows:
            assert stock >= 0
            assert stock == ledger, (product_id, stock, ledger)
            expected = self.opening[product_id] + self.adjusted[product_id] - held
            assert stock == expected, (product_id, stock, expected)
        for order_id, status in statuses.items():
            before = self.decided.get(order_id)
            if before == OrderStatus.CONFIRMED.value:
                assert status in {before, OrderStatus.CANCELLED.value, OrderStatus.COMPLETED.value}
            elif before == OrderStatus.REJECTED.value:
                assert status == before
            if status in DECIDED:
                self.decided.setdefault(order_id, status)


#: Each product's stock, the sum of its ledger (stock movements) and the units of its orders that
#: hold a reservation now.
_PRODUCT_TOTALS = text(
    """
    SELECT p.id, p.stock,
           (SELECT coalesce(sum(m.delta), 0) FROM stock_movements m WHERE m.product_id = p.id),
           (SELECT coalesce(sum(l.quantity), 0) FROM order_lines l JOIN orders o ON o.id = l.order_id
            WHERE l.product_id = p.id AND o.status = ANY(:holding))
    FROM products p WHERE p.id = ANY(:ids)
    """
)


ReservationMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_reservation_rule = ReservationMachine.TestCase
