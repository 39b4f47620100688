"""The stock rules (CONTRACT.md, "Products", "Orders" and "Processing guarantees"): reserve, release
and adjust, each writing its stock movements to the ledger in the caller's transaction.

* Stock never goes below zero: a reservation takes a line only when the stock left covers it, a
  decrement is one conditional UPDATE, and the database CHECK `stock_non_negative` stands behind both.
  Stock never exceeds `MAX_STOCK` (the 32-bit column).
* Every change is a ledger row `{product_id, delta, stock_after, reason, order_id?, actor, at}`
  (`MovementReason`): `create` (a new product's opening stock), `adjustment` (a new stock level from
  `PUT/PATCH /products/{id}` or `POST /api/inventory/products`), `increment`, `decrement`,
  `reservation` (the worker) and `release` (a cancelled confirmed order).
* Fixed lock order: products are locked in ascending id order ("Processing guarantees").

Functions take a synchronous `Session`, raise `core.errors` exceptions and never commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from core.db import on_postgresql
from core.errors import (
    DomainError,
    InsufficientStock,
    ProductDiscontinued,
    ProductNotFound,
    StockLimitExceeded,
)
from core.inventory import repository as repo
from core.products import cache
from core.products import repository as products_repo
from core.products.models import MovementReason, Product
from core.products.repository import MAX_STOCK

#: The ledger's `actor` for the worker's reservations.
WORKER_ACTOR = "worker"


# --- reserve --------------------------------------------------------------------------------------


def unorderable(
    lines: Iterable[tuple[int, int]],
    products: Mapping[int, Any],
    manager_id: str | None,
    available: Mapping[int, int] | None = None,
) -> DomainError | None:
    """Why the first line that cannot be taken from stock cannot be, or None when every line can: the
    one rule the API's intake check (a courtesy) and the worker's reservation (the authority) both
    apply (CONTRACT.md, "Orders"; "Store API": a store order may take only its manager's products).

    `lines` are (product_id, quantity) pairs, checked in their order; `products` maps the live
    products' ids to rows with `id, name, stock, discontinued, manager_id`; `available` gives the
    units left per product id (default: each row's `stock`). The reasons, in this order:
    ProductNotFound (missing, or another manager's for a store order), ProductDiscontinued,
    InsufficientStock (with the units left)."""
    for product_id, quantity in lines:
        product = products.get(product_id)
        if product is None or (manager_id is not None and product.manager_id != manager_id):
            return ProductNotFound(product_id)
        if product.discontinued:
            return ProductDiscontinued(product.id, product.name)
        stock = product.stock if available is None else available[product_id]
        if stock < quantity:
            return InsufficientStock(product.id, product.name, stock, quantity)
    return None


@dataclass
class OrderLines:
    """What an order asks of the stock: its `manager_id` (a store order: only that manager's
    products) and its `lines`, (product_id, quantity) pairs in product-id order."""

    manager_id: str | None
    lines: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Reservation:
    """What `decide` took from the locked stock, not yet written: `decisions` (`{order_id: None
    (reserved) or the reason it was not}`, in order-id order), `stocks` (`{product_id: new stock}` of
    the products that changed), `movements` (one `(product_id, delta, stock_after, order_id)` per
    reserved line, `stock_after` in sequence) and `managers` (whose listings the change touches)."""

    decisions: dict[int, DomainError | None] = field(default_factory=dict)
    stocks: dict[int, int] = field(default_factory=dict)
    movements: list[tuple[int, int, int, int]] = field(default_factory=list)
    managers: set[str | None] = field(default_factory=set)


def decide(session: Session, orders: Mapping[int, OrderLines]) -> Reservation:
    """Lock the products `orders` (`{order_id: OrderLines}`, in order-id order) name and decide each
    order, all lines or none ("Processing guarantees"), without writing anything.

    Every product is locked in one statement, in ascending id order; the orders are then decided one
    by one against the locked rows with the remaining stock kept in memory. The first failing line,
    in product-id order, is the reason (`unorderable`): a missing, deleted, or (for a store order)
    another manager's product is ProductNotFound; a discontinued one ProductDiscontinued; too little
    stock left InsufficientStock with the units left now. The caller must already hold the orders'
    locks, and writes the result with `record`."""
    product_ids = sorted({pid for order in orders.values() for pid, _ in order.lines})
    products = repo.lock_for_reservation(session, product_ids)
    remaining = {pid: row.stock for pid, row in products.items()}
    live = {pid: row for pid, row in products.items() if row.deleted_at is None}

    taken = Reservation()
    decisions, movements = taken.decisions, taken.movements
    for order_id, order in orders.items():
        error = unorderable(order.lines, live, order.manager_id, remaining)
        decisions[order_id] = error
        if error is not None:
            continue
        for product_id, quantity in order.lines:
            stock_after = remaining[product_id] = remaining[product_id] - quantity
            movements.append((product_id, -quantity, stock_after, order_id))
    if movements:
        taken.stocks = {pid: stock for pid, stock in remaining.items() if stock != products[pid].stock}
        taken.managers = {products[pid].manager_id for pid in taken.stocks}
    return taken


def record(
    session: Session,
    taken: Reservation,
    outcomes: Sequence[tuple[int, str, dict[str, Any] | None]],
    at: datetime,
    actor: str = WORKER_ACTOR,
) -> None:
    """Write what `decide` took and the orders' outcomes `(order_id, status, error object or None)`
    (status, error, one more attempt, processed and updated at `at`): the worker's batch. On
    PostgreSQL one statement (`repo.record_reservation`) whatever the batch's size; elsewhere (the
    embedded SQLite default) the stock, the ledger rows and the outcomes one statement each. Listings
    invalidated after the commit."""
    if on_postgresql(session):
        repo.record_reservation(session, taken.stocks, taken.movements, outcomes, at, actor)
    else:
        repo.set_stocks(session, taken.stocks, at)
        repo.add_movements(session, _ledger_rows(taken, at, actor))
        repo.record_outcomes(session, outcomes, at)
    cache.touch(session, *taken.managers)


def _ledger_rows(taken: Reservation, at: datetime, actor: str) -> list[dict[str, Any]]:
    return [
        {
            "product_id": product_id,
            "delta": delta,
            "stock_after": stock_after,
            "reason": MovementReason.RESERVATION,
            "order_id": order_id,
            "actor": actor,
            "at": at,
        }
        for product_id, delta, stock_after, order_id in taken.movements
    ]


# --- release --------------------------------------------------------------------------------------


def release(session: Session, order_id: int, lines: Iterable[tuple[int, int]], actor: str | None) -> None:
    """Give back the stock a confirmed order held (its cancellation, CONTRACT.md "Orders"): for each
    (product_id, quantity) of `lines`, which must come in ascending product-id order (the lock
    order), one UPDATE and one `release` ledger row for `order_id`, by `actor`. A product deleted
    or discontinued since still gets its units back."""
    for product_id, quantity in lines:
        stock_after = repo.release_stock(session, product_id, quantity)
        repo.add_movement(
            session,
            product_id=product_id,
            delta=quantity,
            stock_after=stock_after,
            reason=MovementReason.RELEASE,
            order_id=order_id,
            actor=actor,
        )


# --- adjust ---------------------------------------------------------------------------------------


def open_stock(session: Session, product: Product, actor: str | None) -> None:
    """Write a new product's opening stock to the ledger (reason `create`; nothing when it is 0).
    `product` must have its id (flushed)."""
    if product.stock:
        repo.add_movement(
            session,
            product_id=product.id,
            delta=product.stock,
            stock_after=product.stock,
            reason=MovementReason.CREATE,
            actor=actor,
        )


def open_stocks(session: Session, products: Sequence[Product], actor: str | None, at: datetime) -> None:
    """`open_stock` for many new products, in one INSERT on PostgreSQL, every row `at` `at`."""
    repo.add_movements(
        session,
        [
            {
                "product_id": product.id,
                "delta": product.stock,
                "stock_after": product.stock,
                "reason": MovementReason.CREATE,
                "order_id": None,
                "actor": actor,
                "at": at,
            }
            for product in products
            if product.stock
        ],
    )


def adjust(session: Session, product: Product, new_stock: int, actor: str | None) -> None:
    """Set `product`'s stock on hand to `new_stock` (units, 0..MAX_STOCK, checked by the caller's
    schema) and write the difference to the ledger (reason `adjustment`); nothing when it is
    unchanged. The caller must hold the product's row lock and flush."""
    if new_stock == product.stock:
        return
    delta = new_stock - product.stock
    product.stock = new_stock
    repo.add_movement(
        session,
        product_id=product.id,
        delta=delta,
        stock_after=new_stock,
        reason=MovementReason.ADJUSTMENT,
        actor=actor,
    )


def increment(session: Session, product_id: int, quantity: int, actor: str | None) -> int:
    """Add `quantity` (>= 1) units in one conditional UPDATE, with an `increment` ledger row.
    Returns the new stock. Raises ProductNotFound, or StockLimitExceeded (an InvalidInput) when the
    stock would exceed `MAX_STOCK` (stock is left unchanged)."""
    return _add(session, product_id, quantity, MovementReason.INCREMENT, actor)


def decrement(session: Session, product_id: int, quantity: int, actor: str | None) -> int:
    """Remove `quantity` (>= 1) units in one conditional UPDATE, with a `decrement` ledger row.
    Returns the new stock. Raises ProductNotFound, or InsufficientStock when fewer than `quantity`
    units are on hand (stock is left unchanged)."""
    return _add(session, product_id, -quantity, MovementReason.DECREMENT, actor)


def _add(session: Session, product_id: int, delta: int, reason: str, actor: str | None) -> int:
    """Change the stock by `delta` units (one conditional UPDATE within 0..MAX_STOCK) and ledger it
    under `reason`; returns the new stock. When the UPDATE took nothing, the reason it could not:
    ProductNotFound, StockLimitExceeded (`delta` > 0) or InsufficientStock (`delta` < 0)."""
    new_stock = repo.add_stock(session, product_id, delta)
    if new_stock is None:
        product = _live_product(session, product_id)
        if delta > 0:
            raise StockLimitExceeded(product.id, product.name, product.stock, delta, MAX_STOCK)
        raise InsufficientStock(product.id, product.name, product.stock, -delta)
    repo.add_movement(
        session, product_id=product_id, delta=delta, stock_after=new_stock, reason=reason, actor=actor
    )
    return new_stock


def _live_product(session: Session, product_id: int) -> Product:
    product = products_repo.get(session, product_id)
    if product is None:
        raise ProductNotFound(product_id)
    return product
