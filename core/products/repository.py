"""SQL for products (the stock writes and the stock movement ledger are `core.inventory.repository`'s).
Every function takes a synchronous `Session` and flushes at most; the edge commits (STYLE.md rule 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, and_, bindparam, func, or_, select
from sqlalchemy.orm import Session

from core.db import on_postgresql
from core.products.models import Product
from core.products.schemas import ProductFilter

#: The largest stock a product can hold: `products.stock` is a 32-bit INTEGER.
MAX_STOCK = 2_147_483_647


def _live() -> Select[Product]:
    return select(Product).where(Product.deleted_at.is_(None))


def get(session: Session, product_id: int, *, for_update: bool = False) -> Product | None:
    """The product, or None when it does not exist or was deleted."""
    stmt = _live().where(Product.id == product_id)
    if for_update:
        stmt = stmt.with_for_update()
    return session.execute(stmt).scalar_one_or_none()


_ORDER_SNAPSHOT = select(
    Product.id, Product.name, Product.price, Product.stock, Product.discontinued, Product.manager_id
).where(Product.id.in_(bindparam("ids", expanding=True)), Product.deleted_at.is_(None))


def snapshot_for_order(session: Session, product_ids: Sequence[int]) -> dict[int, Any]:
    """`{id: row(id, name, price, stock, discontinued, manager_id)}` of the live products among `product_ids`
    (the intake check and price snapshot of an order); missing or deleted ids are absent."""
    if not product_ids:
        return {}
    rows = session.connection().execute(_ORDER_SNAPSHOT, {"ids": list(product_ids)})
    return {row.id: row for row in rows}


def _filtered(flt: ProductFilter) -> Select[Product]:
    stmt = _live()
    if flt.q:
        escaped = flt.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(Product.name.ilike(f"%{escaped}%", escape="\\"))
    if flt.manager_id is not None:
        stmt = stmt.where(Product.manager_id == flt.manager_id)
    if flt.discontinued is not None:
        stmt = stmt.where(Product.discontinued.is_(flt.discontinued))
    if flt.in_stock is True:
        stmt = stmt.where(Product.stock > 0)
    elif flt.in_stock is False:
        stmt = stmt.where(Product.stock == 0)
    return stmt


def list_page(session: Session, flt: ProductFilter, limit: int, offset: int) -> tuple[list[Product], int]:
    """One page of products ordered by id, and the total count matching `flt`."""
    stmt = _filtered(flt)
    total = session.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
    items = session.execute(stmt.order_by(Product.id).limit(limit).offset(offset)).scalars().all()
    return list(items), total


def list_below_requirement(session: Session, limit: int, offset: int) -> tuple[list[Product], int]:
    """Products whose stock is at or below their `low_stock_threshold`."""
    stmt = _live().where(Product.stock <= Product.low_stock_threshold)
    total = session.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
    items = session.execute(stmt.order_by(Product.id).limit(limit).offset(offset)).scalars().all()
    return list(items), total


# --- the store API's inventory (CONTRACT.md, "Store API") ---------------------------------------


def lock_manager(session: Session, manager_id: str) -> None:
    """Serialise writers of one manager's inventory until the transaction ends (PostgreSQL: a
    transaction-level advisory lock on the manager id's hash; SQLite already has a single writer).
    Two batches naming the same new product then cannot both create it."""
    if on_postgresql(session):
        session.execute(
            select(func.pg_advisory_xact_lock(func.hashtextextended(f"orderflow:manager:{manager_id}", 0)))
        )


def lock_for_upsert(
    session: Session, manager_id: str, product_ids: Sequence[int], names: Sequence[str]
) -> tuple[dict[int, Product], dict[str, Product]]:
    """The live products the store's inventory upsert names, locked in one statement in ascending id
    order (the one global lock order of CONTRACT.md, "Processing guarantees", shared with the
    reservation and the cancellation). Returns `({id: product}` of those among `product_ids`, any
    manager's; `{name: product}` of `manager_id`'s with one of `names`, exact match`)`; were two of
    the manager's products to share a name, the lowest id wins. The lock is `FOR NO KEY UPDATE`, as
    the reservation's: the upsert changes no key, and an order intake's foreign-key checks
    (`FOR KEY SHARE`, taken in the order's line order) then never wait for it."""
    if not product_ids and not names:
        return {}, {}
    ids, wanted = list(product_ids), list(set(names))
    by_name_clause = and_(Product.manager_id == manager_id, Product.name.in_(wanted))
    if ids and wanted:
        matches = or_(Product.id.in_(ids), by_name_clause)
    else:
        matches = Product.id.in_(ids) if ids else by_name_clause
    stmt = _live().where(matches).order_by(Product.id).with_for_update(key_share=True)
    by_id: dict[int, Product] = {}
    by_name: dict[str, Product] = {}
    id_set, name_set = set(ids), set(wanted)
    for product in session.execute(stmt).scalars():
        if product.id in id_set:
            by_id[product.id] = product
        if product.manager_id == manager_id and product.name in name_set:
            by_name.setdefault(product.name, product)
    return by_id, by_name


def listing(session: Session, manager_id: str, status: str | None) -> list[Any]:
    """Rows (id, name, price, stock) of the manager's live products in id order. `status`:
    `in_stock` (not discontinued, stock > 0), `out_of_stock` (not discontinued, stock 0),
    `discontinued`, or None for all."""
    stmt = select(Product.id, Product.name, Product.price, Product.stock).where(
        Product.manager_id == manager_id, Product.deleted_at.is_(None)
    )
    if status == "in_stock":
        stmt = stmt.where(Product.discontinued.is_(False), Product.stock > 0)
    elif status == "out_of_stock":
        stmt = stmt.where(Product.discontinued.is_(False), Product.stock == 0)
    elif status == "discontinued":
        stmt = stmt.where(Product.discontinued.is_(True))
    return list(session.execute(stmt.order_by(Product.id)))
