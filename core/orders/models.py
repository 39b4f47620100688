"""Orders, their lines and idempotency keys (CONTRACT.md, "Orders"). `OrderStatus` and the moves between
statuses are `core.orders.states`; it is importable from here too."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, UTCDateTime, utcnow
from core.orders.states import OrderStatus as OrderStatus  # re-exported: the models name it too
from core.types import MANAGER_ID_MAX_LENGTH
from core.users.models import User  # noqa: F401 - registers `users`, the target of orders.user_id

_STATUS_CHECK = "status IN (" + ", ".join(f"'{s.value}'" for s in OrderStatus) + ")"


class Order(Base):
    """An order. Its row is also the outbox: a `pending` order not yet processed is re-sent by the
    beat sweep once `enqueued_at` is older than `ORDER_SWEEP_AFTER_SECONDS`."""

    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint(_STATUS_CHECK, name="status_valid"),
        CheckConstraint("total_price >= 0", name="total_price_non_negative"),
        Index("ix_orders_status_enqueued_at", "status", "enqueued_at"),
        Index("ix_orders_user_id_id", "user_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=OrderStatus.PENDING.value)
    # Who placed it; null for orders placed outside the core API (the store API, the CLI).
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    manager_id: Mapped[str | None] = mapped_column(String(MANAGER_ID_MAX_LENGTH))
    customer: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    total_price: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    lines: Mapped[list[OrderLine]] = relationship(
        back_populates="order", order_by="OrderLine.position", lazy="raise"
    )


class OrderLine(Base):
    """One product of an order, with the name and unit price snapshotted when it was placed."""

    __tablename__ = "order_lines"
    __table_args__ = (
        UniqueConstraint("order_id", "product_id", name="uq_order_lines_order_id_product_id"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal] = mapped_column(Numeric(12, 2))

    order: Mapped[Order] = relationship(back_populates="lines", lazy="raise")


STORE_SCOPE_PREFIX = "store:"


def idempotency_scope(user_id: int | None, manager_id: str | None) -> str:
    """The key space an `Idempotency-Key` is unique in (a key is the client's: IETF
    draft-ietf-httpapi-idempotency-key-header, section 2; CONTRACT.md, "Orders" and "Store API"):
    `store:<manager_id>` for a store order (every caller acting for that manager shares one key
    space), `user:<id>` for a core API order (every order has a caller). ValueError for an order
    with neither."""
    if manager_id is not None:
        return f"{STORE_SCOPE_PREFIX}{manager_id}"
    if user_id is None:
        raise ValueError("an order has a manager (store API) or a user (core API)")
    return f"user:{user_id}"


#: Width of `idempotency_keys.scope` (`idempotency_scope`): the longest manager id the API accepts
#: must fit after `store:`.
IDEMPOTENCY_SCOPE_MAX_LENGTH = len(STORE_SCOPE_PREFIX) + MANAGER_ID_MAX_LENGTH


class IdempotencyKey(Base):
    """An `Idempotency-Key` seen from one client scope, bound to the order it created.

    `scope` is `idempotency_scope`'s: `user:<id>` for the core API's caller, `store:<manager_id>`
    for the store API; `request_hash` is the SHA-256 of the canonical request body, so a reuse with
    another body is told apart (409).
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("scope", "key", name="uq_idempotency_keys_scope_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(IDEMPOTENCY_SCOPE_MAX_LENGTH))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
