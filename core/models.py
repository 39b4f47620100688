"""Imports every model so that `Base.metadata` is complete (Alembic autogenerate, mappers)."""

from core.audit.models import AuditEntry
from core.orders.models import IdempotencyKey, Order, OrderLine, OrderStatus
from core.products.models import MovementReason, Product, StockMovement
from core.users.models import Role, User

__all__ = [
    "AuditEntry",
    "IdempotencyKey",
    "MovementReason",
    "Order",
    "OrderLine",
    "OrderStatus",
    "Product",
    "Role",
    "StockMovement",
    "User",
]
