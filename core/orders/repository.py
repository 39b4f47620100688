"""SQL for orders, order lines and idempotency keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, joinedload, selectinload

from core.orders.models import IdempotencyKey, Order, OrderLine, OrderStatus


def get(session: Session, order_id: int, *, for_update: bool = False) -> Order | None:
    """The order with its lines loaded; `for_update` locks the order row (not the lines)."""
    stmt = (
        select(Order)
        .where(Order.id == order_id)
        .options(joinedload(Order.lines))
        .execution_options(populate_existing=True)
    )
    if for_update:
        stmt = stmt.with_for_update(of=Order)
    return session.execute(stmt).unique().scalar_one_or_none()


# populate_existing: what a lock returns is the row as it is now, even if this session had read it.
_LOCK_ORDER = (
    select(Order)
    .where(Order.id == bindparam("oid"))
    .with_for_update()
    .execution_options(populate_existing=True)
)
_LINES_BY_PRODUCT = (
    select(OrderLine).where(OrderLine.order_id == bindparam("oid")).order_by(OrderLine.product_id)
)


_LOCK_STATUS = select(Order.status, Order.manager_id).where(Order.id == bindparam("oid")).with_for_update()
_LINE_QUANTITIES = (
    select(OrderLine.product_id, OrderLine.quantity)
    .where(OrderLine.order_id == bindparam("oid"))
    .order_by(OrderLine.product_id)
)
_FINISH_PROCESSING = (
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


def lock_status(session: Session, order_id: int) -> tuple[str, str | None] | None:
    """Lock the order row (SELECT status, manager_id ... FOR UPDATE); (status, manager_id), or None
    when it is missing."""
    row = session.connection().execute(_LOCK_STATUS, {"oid": order_id}).one_or_none()
    return None if row is None else (row.status, row.manager_id)


def line_quantities(session: Session, order_id: int) -> list[tuple[int, int]]:
    """(product_id, quantity) of every line, in product-id order: the fixed lock order that rules
    out deadlocks between workers."""
    rows = session.connection().execute(_LINE_QUANTITIES, {"oid": order_id})
    return [(pid, qty) for pid, qty in rows]


def finish_processing(session: Session, order_id: int, status: str, error: dict | None, at: datetime) -> None:
    """Record the worker's outcome: status, error object, one more attempt, processed/updated at."""
    params = {"oid": order_id, "new_status": status, "new_error": error, "now": at}
    session.connection().execute(_FINISH_PROCESSING, params)


def lock(session: Session, order_id: int) -> Order | None:
    """Lock the order row (SELECT ... FOR UPDATE) without loading its lines."""
    return session.execute(_LOCK_ORDER, {"oid": order_id}).scalar_one_or_none()


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
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
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
