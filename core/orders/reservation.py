"""The worker's stock reservation, set-based: a whole batch of orders in one transaction.

Rules from CONTRACT.md, "Processing guarantees" and "Orders":

* Status guard: only orders still `pending` are decided (`states.RESERVABLE_STATUSES`: the statuses
  from which both outcomes, `confirmed` and `rejected`, are moves of `states.TRANSITIONS`); an order
  that left `pending` (a redelivered or duplicated batch, a sweep's re-send, a cancellation that won)
  is left untouched, and a missing id is ignored. The order rows are locked first, so the guard holds
  until the commit.
* Fixed lock order: the orders in id order, then every product the pending orders name in one
  statement, in product-id order. Cancellation locks its order, then its products in id order, so
  no two of them ever wait on each other in a cycle.
* All lines of an order or none: the orders are decided one by one in order-id order against the
  locked rows, with the remaining stock kept in memory. The first failing line, in product-id
  order, gives the rejection's reason: a product that is missing, deleted, or (for a store order,
  one with a `manager_id`) another manager's is `ProductNotFound`; a discontinued one is
  `ProductDiscontinued`; too little stock left is `InsufficientStock` with the units left now.
* Stock never goes below zero: a line is reserved only when the remaining stock covers it (and the
  database CHECK stands behind that).

Round trips per batch on PostgreSQL: lock the orders with their lines (1), lock the products (1),
then at most three writes: the new stock of the products that changed, the ledger rows (one
`reservation` movement per reserved line, `stock_after` in sequence), and the orders' outcomes.
The SQL lives in the repositories; on SQLite (the embedded default) the same steps run as simple
statements.

After the commit the unit of work (`core.uow`) publishes one `OrderOutcome` per decided order and
invalidates the listing cache of every manager whose products' stock changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from core.db import utcnow
from core.events import OrderOutcome
from core.orders import repository as repo
from core.orders.checks import unorderable
from core.orders.states import RESERVABLE_STATUSES, OrderStatus
from core.products import cache
from core.products import repository as products_repo
from core.products.models import MovementReason
from core.uow import effects_of

#: The ledger's `actor` for the worker's reservations.
WORKER_ACTOR = "worker"


@dataclass
class _PendingOrder:
    manager_id: str | None
    lines: list[tuple[int, int]] = field(default_factory=list)  # (product_id, quantity), by product id


def reserve_orders(session: Session, order_ids: Iterable[int]) -> list[OrderOutcome]:
    """Reserve the stock of every order of `order_ids` still `pending` and confirm or reject each,
    in the caller's transaction (never commits). Returns the outcome of each order decided, in
    order-id order; orders that are missing or left `pending` give none. Registers the outcomes and
    the listing invalidations as after-commit effects. Database errors propagate (the caller's
    transaction is then to be rolled back)."""
    pending = _lock_pending_orders(session, order_ids)
    if not pending:
        return []
    product_ids = sorted({pid for order in pending.values() for pid, _ in order.lines})
    products = products_repo.lock_for_reservation(session, product_ids)
    remaining = {pid: row.stock for pid, row in products.items()}
    live = {pid: row for pid, row in products.items() if row.deleted_at is None}

    now = utcnow()
    outcomes: list[OrderOutcome] = []
    movements: list[dict[str, Any]] = []
    for order_id, order in pending.items():
        error = unorderable(order.lines, live, order.manager_id, remaining)
        if error is not None:
            outcomes.append(OrderOutcome(order_id, OrderStatus.REJECTED.value, error.to_dict(), now))
            continue
        for product_id, quantity in order.lines:
            remaining[product_id] -= quantity
            movements.append(
                {
                    "product_id": product_id,
                    "delta": -quantity,
                    "stock_after": remaining[product_id],
                    "reason": MovementReason.RESERVATION,
                    "order_id": order_id,
                    "actor": WORKER_ACTOR,
                    "at": now,
                }
            )
        outcomes.append(OrderOutcome(order_id, OrderStatus.CONFIRMED.value, None, now))

    changed = {pid: stock for pid, stock in remaining.items() if stock != products[pid].stock}
    products_repo.set_stocks(session, changed, now)
    products_repo.add_movements(session, movements)
    repo.record_outcomes(session, [(o.order_id, o.status, o.error) for o in outcomes], now)

    effects = effects_of(session)
    effects.events.extend(outcomes)
    cache.touch(session, *{products[pid].manager_id for pid in changed})
    return outcomes


def _lock_pending_orders(session: Session, order_ids: Iterable[int]) -> dict[int, _PendingOrder]:
    """Lock the orders and return the pending ones with their lines, in order-id order."""
    ids = sorted(set(order_ids))
    pending: dict[int, _PendingOrder] = {}
    for row in repo.lock_for_reservation(session, ids):
        if row.status not in RESERVABLE_STATUSES:
            continue
        order = pending.get(row.id)
        if order is None:
            order = pending[row.id] = _PendingOrder(row.manager_id)
        if row.product_id is not None:
            order.lines.append((row.product_id, row.quantity))
    return pending
