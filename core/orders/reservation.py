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
* All lines of an order or none, and stock never below zero: `core.inventory.decide` decides the
  orders one by one in order-id order against the locked products, with the remaining stock kept
  in memory; the first failing line, in product-id order, gives the rejection's reason
  (`ProductNotFound`, `ProductDiscontinued` or `InsufficientStock`).

Round trips per batch on PostgreSQL: lock the orders with their lines (1), lock the products (1),
then one write (`core.inventory.record`): the new stock of the products that changed, the ledger
rows (one `reservation` movement per reserved line, `stock_after` in sequence) and the orders'
outcomes, as one statement of data-modifying CTEs, on rows the two reads locked. The SQL lives in
`core.orders.repository` and `core.inventory.repository`; on SQLite (the embedded default) the
same steps run as simple statements.

After the commit the unit of work (`core.uow`) publishes one `OrderOutcome` per decided order and
invalidates the listing cache of every manager whose products' stock changed.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from core import inventory
from core.db import utcnow
from core.events import OrderOutcome
from core.orders import repository as repo
from core.orders.states import RESERVABLE_STATUSES, OrderStatus
from core.uow import effects_of


def reserve_orders(session: Session, order_ids: Iterable[int]) -> list[OrderOutcome]:
    """Reserve the stock of every order of `order_ids` still `pending` and confirm or reject each,
    in the caller's transaction (never commits). Returns the outcome of each order decided, in
    order-id order; orders that are missing or left `pending` give none. Registers the outcomes and
    the listing invalidations as after-commit effects. Database errors propagate (the caller's
    transaction is then to be rolled back)."""
    pending = _lock_pending_orders(session, order_ids)
    if not pending:
        return []
    now = utcnow()
    taken = inventory.decide(session, pending)
    outcomes = [
        OrderOutcome(order_id, OrderStatus.CONFIRMED.value, None, now)
        if error is None
        else OrderOutcome(order_id, OrderStatus.REJECTED.value, error.to_dict(), now)
        for order_id, error in taken.decisions.items()
    ]
    inventory.record(session, taken, [(o.order_id, o.status, o.error) for o in outcomes], now)
    effects_of(session).events.extend(outcomes)
    return outcomes


def _lock_pending_orders(session: Session, order_ids: Iterable[int]) -> dict[int, inventory.OrderLines]:
    """Lock the orders and return the pending ones with their lines, in order-id order."""
    ids = sorted(set(order_ids))
    pending: dict[int, inventory.OrderLines] = {}
    for row in repo.lock(session, ids, with_lines=True):
        if row.status not in RESERVABLE_STATUSES:
            continue
        order = pending.get(row.id)
        if order is None:
            order = pending[row.id] = inventory.OrderLines(row.manager_id)
        if row.product_id is not None:
            order.lines.append((row.product_id, row.quantity))
    return pending
