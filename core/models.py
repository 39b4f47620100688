"""Imports every model so that `Base.metadata` is complete (Alembic autogenerate, mappers)."""

from core.orders.models import IdempotencyKey, Order, OrderLine, OrderStatus
from core.products.models import MovementReason, Product, StockMovement

__all__ = [
    "IdempotencyKey",
    "MovementReason",
    "Order",
    "OrderLine",
    "OrderStatus",
    "Product",
    "StockMovement",
]
