"""Whether an order's lines can be taken from stock: the one rule the API's intake check (a courtesy)
and the worker's reservation (the authority) both apply (CONTRACT.md, "Orders"; "Store API": a store
order may take only its manager's products)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from core.errors import DomainError, InsufficientStock, ProductDiscontinued, ProductNotFound


def unorderable(
    lines: Iterable[tuple[int, int]],
    products: Mapping[int, Any],
    manager_id: str | None,
    available: Mapping[int, int] | None = None,
) -> DomainError | None:
    """Why the first line that cannot be ordered cannot be, or None when every line can.

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
