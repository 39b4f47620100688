"""SQL of the inventory: the stock writes of `core.inventory.stock` and the stock movement ledger
(CONTRACT.md, "Products": every stock change is a ledger row in the same transaction). The only
INSERTs into `stock_movements` are here. Every function takes a synchronous `Session` and flushes at
most; the edge commits (STYLE.md rule 1)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, any_, bindparam, cast, column, func, insert, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from core.db import UTCDateTime, on_postgresql, pg_array, utcnow
from core.orders.models import Order
from core.products import cache
from core.products.models import MovementReason, Product, StockMovement
from core.products.repository import MAX_STOCK


def add_stock(session: Session, product_id: int, quantity: int) -> int | None:
    """Add `quantity` units (may be negative) unless that takes stock below zero or above `MAX_STOCK`.

    One conditional UPDATE, so concurrent changes never oversell. The condition compares `stock` with
    a bound instead of computing `stock + quantity`, which would overflow the 32-bit column in SQL.
    Returns the new stock, or None when the product is missing, deleted, or stock would leave
    0..MAX_STOCK.
    """
    in_range = Product.stock <= MAX_STOCK - quantity if quantity >= 0 else Product.stock >= -quantity
    stmt = (
        update(Product)
        .where(
            Product.id == product_id,
            Product.deleted_at.is_(None),
            in_range,
        )
        .values(stock=Product.stock + quantity, updated_at=utcnow())
        .returning(Product.stock, Product.manager_id)
    )
    row = session.execute(stmt).one_or_none()
    if row is None:
        return None
    stock, manager_id = row
    cache.touch(session, manager_id)
    return stock


# --- the worker's batch reservation (core.inventory.stock.record) --------------------------------
# Built once at import: the hot path only binds values (statement construction is a measurable share
# of the worker's CPU time). PostgreSQL gets one set-based statement per step, with arrays bound to
# `= ANY(...)` and `unnest(...)` (one statement text whatever the batch size, so psycopg's prepared
# statements are reused); SQLite, the embedded default's single writer, gets simple statements.

_INT_ARRAY = postgresql.ARRAY(Integer)
_TEXT_ARRAY = postgresql.ARRAY(String)

_RESERVATION_COLUMNS = select(
    Product.id, Product.name, Product.stock, Product.discontinued, Product.deleted_at, Product.manager_id
).order_by(Product.id)
# FOR NO KEY UPDATE is the lock an UPDATE of the row takes: it serialises every stock writer, but,
# unlike FOR UPDATE, it lets the intake insert order lines referencing the product (their foreign-key
# check takes FOR KEY SHARE) while a batch holds it.
_LOCK_FOR_RESERVATION_PG = _RESERVATION_COLUMNS.where(
    Product.id == any_(cast(bindparam("pids", type_=String), _INT_ARRAY))  # a `pg_array` literal
).with_for_update(key_share=True)
_LOCK_FOR_RESERVATION_SQLITE = _RESERVATION_COLUMNS.where(Product.id.in_(bindparam("pids", expanding=True)))

_SET_STOCK_SQLITE = (
    update(Product)
    .where(Product.id == bindparam("pid"))
    .values(stock=bindparam("new_stock"), updated_at=bindparam("now"))
)

_MOVEMENT_COLUMNS = ("product_id", "delta", "stock_after", "reason", "order_id", "actor", "at")
_MOVEMENT_ROWS = (
    func.unnest(
        bindparam("product_id", type_=_INT_ARRAY),
        bindparam("delta", type_=_INT_ARRAY),
        bindparam("stock_after", type_=_INT_ARRAY),
        bindparam("reason", type_=_TEXT_ARRAY),
        bindparam("order_id", type_=_INT_ARRAY),
        bindparam("actor", type_=_TEXT_ARRAY),
        bindparam("at", type_=postgresql.ARRAY(UTCDateTime())),
    )
    .table_valued(
        column("product_id", Integer),
        column("delta", Integer),
        column("stock_after", Integer),
        column("reason", String),
        column("order_id", Integer),
        column("actor", String),
        column("at", UTCDateTime()),
    )
    .render_derived(name="m")
)
_ADD_MOVEMENTS_PG = insert(StockMovement).from_select(
    list(_MOVEMENT_COLUMNS), select(*(_MOVEMENT_ROWS.c[name] for name in _MOVEMENT_COLUMNS))
)


# The worker's batch as one statement (`record_reservation`): the stock of the products that changed,
# one `reservation` ledger row per reserved line, and the orders' outcomes, as data-modifying CTEs. The
# rows it writes are all locked already by this transaction (the orders by `core.orders.repository.lock`,
# the products by `lock_for_reservation`), and the ledger's foreign-key checks take KEY SHARE locks on
# those same rows, so it waits on no one and adds nothing to the lock order. Every part of a data-
# modifying WITH sees the same snapshot; the three touch three different tables. Ledger ids follow the
# order of the arrays (order id, then product id), as the separate INSERT gave them.
_RECORD_RESERVATION_PG = text(
    """
WITH new_stock AS (
    UPDATE products SET stock = v.stock, updated_at = :at
    FROM unnest(CAST(:pids AS integer[]), CAST(:stocks AS integer[])) AS v(id, stock)
    WHERE products.id = v.id
), ledger AS (
    INSERT INTO stock_movements (product_id, delta, stock_after, reason, order_id, actor, at)
    SELECT m.product_id, m.delta, m.stock_after, :reason, m.order_id, :actor, :at
    FROM unnest(
        CAST(:m_pids AS integer[]), CAST(:m_deltas AS integer[]),
        CAST(:m_stocks AS integer[]), CAST(:m_orders AS integer[])
    ) AS m(product_id, delta, stock_after, order_id)
)
UPDATE orders SET status = o.status, error = CAST(o.error AS json), attempts = orders.attempts + 1,
    processed_at = :at, updated_at = :at
FROM unnest(CAST(:o_ids AS integer[]), CAST(:o_statuses AS text[]), CAST(:o_errors AS text[]))
    AS o(id, status, error)
WHERE orders.id = o.id
"""
).bindparams(bindparam("at", type_=UTCDateTime()))
_RECORD_OUTCOME_SQLITE = (
    update(Order)
    .where(Order.id == bindparam("oid"))
    .values(
        status=bindparam("new_status"),
        error=bindparam("new_error", type_=Order.__table__.c.error.type),
        attempts=Order.attempts + 1,
        processed_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
)


def record_reservation(
    session: Session,
    stocks: dict[int, int],
    movements: Sequence[tuple[int, int, int, int]],
    outcomes: Sequence[tuple[int, str, dict[str, Any] | None]],
    at: datetime,
    actor: str,
) -> None:
    """The worker batch's writes in one PostgreSQL statement: the new stock of each product of
    `stocks` (`{product_id: stock}`, `updated_at` = `at`), one `reservation` ledger row per movement
    `(product_id, delta, stock_after, order_id)` (by `actor`, at `at`), and each order's outcome
    `(order_id, status, error object or None)`: status, error, one more attempt, processed and
    updated at `at`. Every row must be locked by this transaction already. Database errors
    propagate."""
    params = {  # arrays as literals (`pg_array`): psycopg's list adaptation was most of this call's CPU
        "pids": pg_array(stocks),
        "stocks": pg_array(stocks.values()),
        "m_pids": pg_array(m[0] for m in movements),
        "m_deltas": pg_array(m[1] for m in movements),
        "m_stocks": pg_array(m[2] for m in movements),
        "m_orders": pg_array(m[3] for m in movements),
        "reason": MovementReason.RESERVATION,
        "actor": actor,
        "o_ids": pg_array(o[0] for o in outcomes),
        "o_statuses": pg_array(o[1] for o in outcomes),
        "o_errors": pg_array(None if o[2] is None else json.dumps(o[2]) for o in outcomes),
        "at": at,
    }
    session.connection().execute(_RECORD_RESERVATION_PG, params)


def record_outcomes(
    session: Session, outcomes: Sequence[tuple[int, str, dict[str, Any] | None]], at: datetime
) -> None:
    """SQLite's part of `record_reservation` for the orders: one UPDATE per outcome."""
    if outcomes:
        rows = [{"oid": o, "new_status": s, "new_error": e, "now": at} for o, s, e in outcomes]
        session.connection().execute(_RECORD_OUTCOME_SQLITE, rows)


def lock_for_reservation(session: Session, product_ids: Sequence[int]) -> dict[int, Any]:
    """Lock the products `product_ids` in one statement, in id order (the one global lock order that
    rules out deadlocks between batches, and with a cancellation, which also locks products in id
    order), and return `{id: row(id, name, stock, discontinued, deleted_at, manager_id)}`, deleted
    products included (the caller decides what they mean). Missing ids are absent. SQLite takes no
    row locks: its `BEGIN IMMEDIATE` transactions already run one at a time."""
    if not product_ids:
        return {}
    if on_postgresql(session):
        rows = session.connection().execute(_LOCK_FOR_RESERVATION_PG, {"pids": pg_array(product_ids)})
    else:
        rows = session.connection().execute(_LOCK_FOR_RESERVATION_SQLITE, {"pids": list(product_ids)})
    return {row.id: row for row in rows}


def set_stocks(session: Session, stocks: dict[int, int], at: datetime) -> None:
    """SQLite's part of `record_reservation` for the products: set the stock of each product in
    `stocks` (`{product_id: new stock}`) and its `updated_at`, one UPDATE per product. The listing
    cache is the caller's (`cache.touch`)."""
    if stocks:
        rows = [{"pid": p, "new_stock": s, "now": at} for p, s in stocks.items()]
        session.connection().execute(_SET_STOCK_SQLITE, rows)


def release_stock(session: Session, product_id: int, quantity: int) -> int:
    """Give back `quantity` reserved units (the product may have been deleted or discontinued since).
    Returns the new stock."""
    stmt = (
        update(Product)
        .where(Product.id == product_id)
        .values(stock=Product.stock + quantity, updated_at=utcnow())
        .returning(Product.stock, Product.manager_id)
    )
    stock, manager_id = session.execute(stmt).one()
    cache.touch(session, manager_id)
    return stock


# --- the ledger -----------------------------------------------------------------------------------


def add_movement(
    session: Session,
    *,
    product_id: int,
    delta: int,
    stock_after: int,
    reason: str,
    order_id: int | None = None,
    actor: str | None = None,
) -> StockMovement:
    """Add one ledger row to the session (written at its next flush), `at` now."""
    movement = StockMovement(
        product_id=product_id,
        delta=delta,
        stock_after=stock_after,
        reason=reason,
        order_id=order_id,
        actor=actor,
        at=utcnow(),
    )
    session.add(movement)
    return movement


def add_movements(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert ledger rows, in one statement on PostgreSQL (`INSERT ... SELECT FROM unnest(...)`).
    `rows`: dicts with every key of `product_id, delta, stock_after, reason, order_id, actor, at`."""
    if not rows:
        return
    if on_postgresql(session):
        columns = {name: [row[name] for row in rows] for name in _MOVEMENT_COLUMNS}
        session.connection().execute(_ADD_MOVEMENTS_PG, columns)
    else:
        session.connection().execute(insert(StockMovement), rows)


def list_movements(
    session: Session, product_id: int, limit: int, offset: int
) -> tuple[list[StockMovement], int]:
    """A product's ledger, oldest first, and its row count."""
    stmt = select(StockMovement).where(StockMovement.product_id == product_id)
    total = session.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
    items = session.execute(stmt.order_by(StockMovement.id).limit(limit).offset(offset)).scalars()
    return list(items), total


def ledger_sum(session: Session, product_id: int) -> int:
    """The sum of a product's movement deltas (equals its stock when the ledger is whole)."""
    stmt = select(func.coalesce(func.sum(StockMovement.delta), 0)).where(
        StockMovement.product_id == product_id
    )
    return int(session.execute(stmt).scalar_one())
