"""Products and the stock movement ledger (CONTRACT.md, "Products")."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime, utcnow
from core.types import MANAGER_ID_MAX_LENGTH

# BIGINT on PostgreSQL, INTEGER (the rowid alias, so it autoincrements) on SQLite.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Product(Base):
    """A sellable item. `stock` is the quantity on hand; it never goes below zero (CHECK)."""

    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint("stock >= 0", name="stock_non_negative"),
        CheckConstraint("price >= 0", name="price_non_negative"),
        CheckConstraint("low_stock_threshold >= 0", name="low_stock_threshold_non_negative"),
        Index("ix_products_manager_id_name", "manager_id", "name"),
        Index("ix_products_name", "name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    stock: Mapped[int] = mapped_column(Integer, default=0)
    low_stock_threshold: Mapped[int] = mapped_column(Integer, default=10)
    discontinued: Mapped[bool] = mapped_column(Boolean, default=False)
    manager_id: Mapped[str | None] = mapped_column(String(MANAGER_ID_MAX_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    # Soft delete: a deleted product answers 404 everywhere, but its ledger and order lines stay.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class StockMovement(Base):
    """One change of a product's stock, written in the transaction that made it.

    `delta` is signed units; `stock_after` is the stock once applied, so the ledger can be audited
    row by row; `reason` is one of `MovementReason`.
    """

    __tablename__ = "stock_movements"
    __table_args__ = (Index("ix_stock_movements_product_id_id", "product_id", "id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    delta: Mapped[int] = mapped_column(Integer)
    stock_after: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(32))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True)
    actor: Mapped[str | None] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MovementReason:
    """The `reason` values of a stock movement."""

    CREATE = "create"
    ADJUSTMENT = "adjustment"
    INCREMENT = "increment"
    DECREMENT = "decrement"
    RESERVATION = "reservation"
    RELEASE = "release"
