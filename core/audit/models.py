"""The audit log: one row per write of the core API and the store API (CONTRACT.md, "Store API",
last point). See docs/audit.md."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime, utcnow

# BIGINT on PostgreSQL, INTEGER (the rowid alias, so it autoincrements) on SQLite.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class AuditEntry(Base):
    """Who did what to which entity, when, and in which request.

    * `actor`: the username of an authenticated caller, `manager:<manager_id>` for a store call
      without credentials, or `system`;
    * `action`: a dotted verb (`product.create`, `stock.decrement`, `order.cancel`, ...; the full
      list is `AuditAction`);
    * `entity` / `entity_id`: `product`, `order` or `user` and its id as text;
    * `request_id`: the request's `X-Request-ID`, null outside a request;
    * `details`: a small JSON object (e.g. the names of the changed fields); never a password or hash.

    Rows are only ever inserted; nothing in orderflow updates or deletes them.
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_entity_entity_id_id", "entity", "entity_id", "id"),
        Index("ix_audit_log_actor_id", "actor", "id"),
        Index("ix_audit_log_at", "at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class AuditAction:
    """The `action` values of an audit row."""

    PRODUCT_CREATE = "product.create"
    PRODUCT_UPDATE = "product.update"
    PRODUCT_DELETE = "product.delete"
    PRODUCT_DISCONTINUE = "product.discontinue"
    STOCK_INCREMENT = "stock.increment"
    STOCK_DECREMENT = "stock.decrement"
    ORDER_CREATE = "order.create"
    ORDER_STATUS = "order.status"
    ORDER_CANCEL = "order.cancel"
    USER_CREATE = "user.create"
    USER_UPDATE = "user.update"


class AuditEntity:
    """The `entity` values of an audit row."""

    PRODUCT = "product"
    ORDER = "order"
    USER = "user"


#: `actor` when no user is behind a write (a worker task, a start-up job).
SYSTEM_ACTOR = "system"
