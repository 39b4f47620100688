"""SQL for orders, order lines and idempotency keys."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, overload

from sqlalchemy import (
    Integer,
    Row,
    String,
    any_,
    bindparam,
    cast,
    func,
    insert,
    outerjoin,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, joinedload, selectinload

from core.db import dialect_insert, on_postgresql, pg_array
from core.orders.models import IdempotencyKey, Order, OrderLine, OrderStatus


def get(session: Session, order_id: int) -> Order | None:
    """The order with its lines loaded, not locked (`lock` is the one way to lock orders)."""
    stmt = (
        select(Order)
        .where(Order.id == order_id)
        .options(joinedload(Order.lines))
        .execution_options(populate_existing=True)
    )
    return session.execute(stmt).unique().scalar_one_or_none()


_LINES_BY_PRODUCT = (
    select(OrderLine).where(OrderLine.order_id == bindparam("oid")).order_by(OrderLine.product_id)
)


# --- the worker's batch reservation (core.orders.reservation) ------------------------------------
# Built once at import (the hot path only binds values). PostgreSQL: arrays bound to `= ANY(...)` and
# `unnest(...)`, one statement text whatever the batch size; SQLite: simple statements.

_INT_ARRAY = postgresql.ARRAY(Integer)

_ORDERS_WITH_LINES = (
    select(Order.id, Order.status, Order.manager_id, OrderLine.product_id, OrderLine.quantity)
    .select_from(outerjoin(Order, OrderLine, OrderLine.order_id == Order.id))
    .order_by(Order.id, OrderLine.product_id)
)
# The one lock of orders (`lock`): rows in ascending order id, FOR NO KEY UPDATE OF orders (the lock an
# UPDATE of a non-key column takes), which conflicts with every other status writer's lock while
# leaving foreign-key checks (lines, ledger rows, idempotency keys naming the order) unblocked. Two
# transactions locking overlapping sets of orders therefore wait on each other in one order and
# cannot deadlock. SQLite ignores row locks: its `BEGIN IMMEDIATE` transactions already serialise.
_PG_IDS = Order.id == any_(cast(bindparam("ids", type_=String), _INT_ARRAY))  # a `pg_array` literal
_SQLITE_IDS = Order.id.in_(bindparam("ids", expanding=True))
_LOCK_ORDERS_WITH_LINES_PG = _ORDERS_WITH_LINES.where(_PG_IDS).with_for_update(
    of=Order.__table__, key_share=True
)
_LOCK_ORDERS_WITH_LINES_SQLITE = _ORDERS_WITH_LINES.where(_SQLITE_IDS)
# populate_existing: a locked order is the row as it is now, even if this session had read it.
_ORDERS = select(Order).order_by(Order.id).execution_options(populate_existing=True)
_LOCK_ORDERS_PG = _ORDERS.where(_PG_IDS).with_for_update(of=Order.__table__, key_share=True)
_LOCK_ORDERS_SQLITE = _ORDERS.where(_SQLITE_IDS)

_CURRENT_OUTCOME = select(Order.status, Order.error, Order.updated_at).where(Order.id == bindparam("oid"))


#: A row of `lock(..., with_lines=True)`: `(id, status, manager_id, product_id, quantity)`.
LockedLine = Row[int, str, str | None, int | None, int | None]


@overload
def lock(
    session: Session, order_ids: Sequence[int], *, with_lines: Literal[False] = False
) -> list[Order]: ...
@overload
def lock(session: Session, order_ids: Sequence[int], *, with_lines: Literal[True]) -> list[LockedLine]: ...
def lock(
    session: Session, order_ids: Sequence[int], *, with_lines: bool = False
) -> list[Order] | list[LockedLine]:
    """Lock the orders `order_ids` in one statement, in ascending id order (PostgreSQL `SELECT ...
    FOR NO KEY UPDATE OF orders`; SQLite's `BEGIN IMMEDIATE` already serialises): the only way to
    lock orders, for one order (a status move, a cancellation, `failed`) and for the worker's batch.
    Missing ids give nothing.

    Returns the `Order` objects (lines not loaded) in id order; with `with_lines`, instead the rows
    `(id, status, manager_id, product_id, quantity)`, one per line, ordered by order id then product
    id (an order without lines gives one row with `product_id` None): what a batch reservation reads,
    in the same round trip."""
    if not order_ids:
        return []
    pg = on_postgresql(session)
    conn = session.connection()
    params = {"ids": pg_array(order_ids) if pg else list(order_ids)}
    if with_lines:
        stmt = _LOCK_ORDERS_WITH_LINES_PG if pg else _LOCK_ORDERS_WITH_LINES_SQLITE
        rows: list[LockedLine] = list(conn.execute(stmt, params))
        return rows
    return list(session.execute(_LOCK_ORDERS_PG if pg else _LOCK_ORDERS_SQLITE, params).scalars())


def current_outcome(session: Session, order_id: int) -> Row[str, dict[str, Any] | None, datetime] | None:
    """`(status, error, updated_at)` of the order, or None when it does not exist."""
    return session.connection().execute(_CURRENT_OUTCOME, {"oid": order_id}).one_or_none()


def lines_by_product(session: Session, order_id: int) -> list[OrderLine]:
    """The order's lines in product-id order: the fixed lock order that rules out deadlocks."""
    return list(session.execute(_LINES_BY_PRODUCT, {"oid": order_id}).scalars())


def list_page(
    session: Session, *, status: str | None, user_id: int | None, limit: int, offset: int
) -> tuple[list[Order], int]:
    """Orders newest first, with their lines, and the total count."""
    stmt = select(Order)
    if status is not None:
        stmt = stmt.where(Order.status == status)
    if user_id is not None:
        stmt = stmt.where(Order.user_id == user_id)
    total = session.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
    page = stmt.options(selectinload(Order.lines)).order_by(Order.id.desc()).limit(limit)
    items = session.execute(page.offset(offset)).scalars().all()
    return list(items), total


_ORDER_COLUMNS = (
    "status", "user_id", "manager_id", "customer", "total_price", "error", "attempts",
    "created_at", "updated_at", "enqueued_at",
)  # fmt: skip
_LINE_COLUMNS = ("order_id", "product_id", "position", "name", "quantity", "unit_price")


def insert_order(session: Session, order: Order) -> int:
    """Insert a new order and its lines with two Core statements (no unit-of-work flush: this is
    the intake's hot path) and set `order.id` and each line's `order_id`. `order` stays transient,
    a snapshot of what was stored. Returns the new id."""
    values = {name: getattr(order, name) for name in _ORDER_COLUMNS}
    conn = session.connection()
    order.id = conn.execute(insert(Order).values(values).returning(Order.id)).scalar_one()
    for line in order.lines:
        line.order_id = order.id
    rows = [{name: getattr(line, name) for name in _LINE_COLUMNS} for line in order.lines]
    conn.execute(insert(OrderLine), rows)
    return order.id


def claim_idempotency_key(session: Session, scope: str, key: str, request_hash: str) -> bool:
    """Insert the key; False when `(scope, key)` is already there.

    `INSERT ... ON CONFLICT DO NOTHING`: on PostgreSQL a second transaction inserting the same key
    waits for the first to commit or roll back, so a replay never sees a half-made order.
    """
    insert = dialect_insert(session)
    stmt = (
        insert(IdempotencyKey)
        .values(scope=scope, key=key, request_hash=request_hash)
        .on_conflict_do_nothing(index_elements=["scope", "key"])
        .returning(IdempotencyKey.id)
    )
    return session.execute(stmt).scalar_one_or_none() is not None


def get_idempotency_key(session: Session, scope: str, key: str) -> IdempotencyKey | None:
    stmt = select(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
    return session.execute(stmt).scalar_one_or_none()


def bind_idempotency_key(session: Session, scope: str, key: str, order_id: int) -> None:
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
        .values(order_id=order_id)
    )


def stale_pending_ids(session: Session, enqueued_before: datetime, limit: int) -> list[int]:
    """Ids of pending orders last sent to the broker before `enqueued_before` (or never), oldest
    first, locked with SKIP LOCKED so that two sweeps never take the same rows."""
    stmt = (
        select(Order.id)
        .where(
            Order.status == OrderStatus.PENDING.value,
            (Order.enqueued_at < enqueued_before) | Order.enqueued_at.is_(None),
        )
        .order_by(Order.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.execute(stmt).scalars())


def mark_enqueued(session: Session, order_ids: list[int], at: datetime) -> None:
    if order_ids:
        session.execute(update(Order).where(Order.id.in_(order_ids)).values(enqueued_at=at))


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Order.status, func.count()).group_by(Order.status)).all()
    return {status: count for status, count in rows}
