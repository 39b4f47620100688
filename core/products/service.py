"""Product use cases (CONTRACT.md, "Products"). Every stock change goes through `core.inventory`,
which writes its stock movement in the same transaction and keeps stock from going below zero.

Functions take a synchronous `Session` (the API runs them through `AsyncSession.run_sync`) and raise
`core.errors` exceptions; they never commit.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from core import inventory
from core.db import utcnow
from core.errors import ProductNotFound
from core.products import repository as repo
from core.products.models import Product, StockMovement
from core.products.schemas import ProductCreate, ProductFilter, ProductUpdate


def get_product(session: Session, product_id: int) -> Product:
    """The live product. Raises ProductNotFound."""
    product = repo.get(session, product_id)
    if product is None:
        raise ProductNotFound(product_id)
    return product


def list_products(session: Session, flt: ProductFilter, limit: int, offset: int) -> tuple[list[Product], int]:
    return repo.list_page(session, flt, limit, offset)


def list_below_requirement(session: Session, limit: int, offset: int) -> tuple[list[Product], int]:
    return repo.list_below_requirement(session, limit, offset)


def create_product(session: Session, data: ProductCreate, actor: str | None = None) -> Product:
    """Create a product; its opening stock is the ledger's first movement (reason `create`)."""
    now = utcnow()
    product = Product(**data.model_dump(), created_at=now, updated_at=now)
    session.add(product)
    session.flush()
    inventory.open_stock(session, product, actor)
    return product


def create_products(session: Session, items: list[ProductCreate], actor: str | None = None) -> list[Product]:
    """Create many products in one flush (batched INSERTs) and write their opening stock to the ledger
    in one statement (reason `create`, as `create_product` does one by one). Returns the products in
    the order of `items`, with their ids."""
    now = utcnow()
    products = [Product(**data.model_dump(), created_at=now, updated_at=now) for data in items]
    session.add_all(products)
    session.flush()
    inventory.open_stocks(session, products, actor, now)
    return products


def update_product(
    session: Session, product_id: int, data: ProductUpdate, actor: str | None = None
) -> Product:
    """Set the fields given in `data` (others keep their value). A new `stock` is an adjustment:
    the row is locked and the difference is written to the ledger. Raises ProductNotFound."""
    product = repo.get(session, product_id, for_update=True)
    if product is None:
        raise ProductNotFound(product_id)
    changes = data.model_dump(exclude_unset=True)
    new_stock = changes.pop("stock", None)
    for field, value in changes.items():
        if value is None and field != "manager_id":
            continue  # an explicit null keeps the value of a non-nullable field
        setattr(product, field, value)
    if new_stock is not None:
        inventory.adjust(session, product, new_stock, actor)
    product.updated_at = utcnow()
    session.flush()
    return product


def delete_product(session: Session, product_id: int) -> None:
    """Soft-delete: the product answers 404 from now on; ledger rows and order lines stay.
    Raises ProductNotFound."""
    product = repo.get(session, product_id, for_update=True)
    if product is None:
        raise ProductNotFound(product_id)
    product.deleted_at = utcnow()
    session.flush()


def increment_stock(session: Session, product_id: int, quantity: int, actor: str | None = None) -> Product:
    """Add `quantity` (>= 1) units (`core.inventory.increment`). Raises ProductNotFound, or
    StockLimitExceeded (an InvalidInput) when the stock would exceed `repository.MAX_STOCK` (stock is
    left unchanged)."""
    inventory.increment(session, product_id, quantity, actor)
    return _refreshed(session, product_id)


def decrement_stock(session: Session, product_id: int, quantity: int, actor: str | None = None) -> Product:
    """Remove `quantity` (>= 1) units (`core.inventory.decrement`). Raises ProductNotFound, or
    InsufficientStock when fewer than `quantity` units are on hand (stock is left unchanged)."""
    inventory.decrement(session, product_id, quantity, actor)
    return _refreshed(session, product_id)


def list_movements(
    session: Session, product_id: int, limit: int, offset: int
) -> tuple[list[StockMovement], int]:
    """The product's stock movement ledger, oldest first. Raises ProductNotFound."""
    get_product(session, product_id)
    return inventory.list_movements(session, product_id, limit, offset)


def _refreshed(session: Session, product_id: int) -> Product:
    product = get_product(session, product_id)
    session.refresh(product)
    return product
