"""Store API use cases (CONTRACT.md, "Store API"): the manager's inventory and order processing.

They are the same products, orders, worker and stock movement ledger as the core API's; only the
shapes differ. Functions take a synchronous `Session`, raise `core.errors` exceptions carrying the
integer ids (the edge, `api.errors`, writes them as public ids `prod_001`, `ord_789`), and never
commit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from core import inventory
from core.db import utcnow
from core.errors import DuplicateInBatch, OrderNotFound, ProductNameTaken, ProductNotFound
from core.events import OrderOutcome
from core.orders import service as orders
from core.orders.intake import Intake, OrderRequest, OrderView, submit_order
from core.orders.models import Order
from core.orders.states import STOCK_HOLDING_STATUSES
from core.products import repository as products_repo
from core.products import service as products
from core.products.models import Product
from core.products.schemas import ProductCreate
from core.store.ids import format_product_id
from core.store.schemas import InventoryBatch, InventoryItem, InventoryItemIn

#: Order statuses the store reports as `processed`: the stock is reserved.
PROCESSED_STATUSES = STOCK_HOLDING_STATUSES


def item_of(product: Product | Any) -> InventoryItem:
    """A product (or an `id, name, price, stock` row) as the store shows it."""
    return InventoryItem(id=product.id, name=product.name, price=product.price, quantity=product.stock)


# --- inventory ------------------------------------------------------------------------------------


def upsert_inventory(
    session: Session, batch: InventoryBatch, actor: str | None
) -> list[tuple[InventoryItem, bool]]:
    """`POST /api/inventory/products`: add or update a manager's products in one transaction.

    An item with `id` updates that product; an item whose name is one of the manager's products
    updates it; any other item creates a product of that manager. `quantity` sets the stock on hand;
    a change is written to the stock movement ledger through `core.inventory` (`create` or
    `adjustment`, actor `actor`). A product's `discontinued` flag is left as it is. The products
    named are locked in one statement, in ascending id order (the global lock order of CONTRACT.md,
    "Processing guarantees"). Every item is checked before anything is written:
    raises ProductNotFound (404) for an `id` that does not exist or is another manager's, and
    DuplicateInBatch (400) for two items naming the same product and ProductNameTaken (400) for an
    update that would give the product the name of another of the manager's products (both with
    `details.field` naming the item).
    Returns (product as the store shows it, created?) in the order of the request.
    """
    manager = batch.manager_id
    items = batch.products
    products_repo.lock_manager(session, manager)
    _check_unique(items)
    ids = [i.id for i in items if i.id is not None]
    names = [i.name for i in items if i.name is not None]
    by_id, by_name = products_repo.lock_for_upsert(session, manager, ids, names)

    targets: list[Product | None] = []
    for index, item in enumerate(items):
        if item.id is not None:
            product = by_id.get(item.id)
            if product is None or product.manager_id != manager:
                missing = ProductNotFound(item.id)
                missing.details["field"] = f"products[{index}].id"
                raise missing
            clash = by_name.get(item.name) if item.name is not None else None
            if clash is not None and clash.id != product.id:
                raise ProductNameTaken(f"products[{index}].name", manager, str(item.name), clash.id)
            targets.append(product)
        else:
            targets.append(by_name.get(item.name))  # type: ignore[arg-type]

    now = utcnow()
    written: list[tuple[Product, bool]] = []
    for item, product in zip(items, targets, strict=True):
        if product is None:
            written.append((_create(session, manager, item, actor), True))
        else:
            written.append((_update(session, product, item, actor, now), False))
    session.flush()
    return [(item_of(p), created) for p, created in written]


def _check_unique(items: list[InventoryItemIn]) -> None:
    seen_ids: dict[int, int] = {}
    seen_names: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.id is not None:
            if item.id in seen_ids:
                raise _duplicate(index, "id", seen_ids[item.id], format_product_id(item.id))
            seen_ids[item.id] = index
        if item.name is not None:
            if item.name in seen_names:
                raise _duplicate(index, "name", seen_names[item.name], item.name)
            seen_names[item.name] = index


def _duplicate(index: int, field: str, first: int, value: str) -> DuplicateInBatch:
    return DuplicateInBatch(f"products[{index}].{field}", value, f"products[{first}]")


def _create(session: Session, manager: str, item: InventoryItemIn, actor: str | None) -> Product:
    """A new product of `manager`, through the core API's use case (opening stock in the ledger)."""
    data = ProductCreate(name=item.name, price=item.price, stock=item.quantity, manager_id=manager)
    return products.create_product(session, data, actor)


def _update(
    session: Session, product: Product, item: InventoryItemIn, actor: str | None, now: Any
) -> Product:
    if item.name is not None:
        product.name = item.name
    if item.price is not None:
        product.price = item.price
    if item.quantity is not None:
        inventory.adjust(session, product, item.quantity, actor)
    product.updated_at = now
    return product


def list_inventory(session: Session, manager_id: str, status: str | None) -> list[InventoryItem]:
    """`GET /api/inventory/products`: the manager's products in id order, filtered by `status`
    (`ProductStatus` value, or None for all)."""
    return [item_of(row) for row in products_repo.listing(session, manager_id, status)]


def discontinue(session: Session, manager_id: str, product_id: int) -> bool:
    """`POST /api/inventory/discontinue`: stop selling a product; orders still pending for it are
    rejected by the worker. Idempotent: returns False when it already was discontinued (nothing
    written). Raises ProductNotFound (404) when the product does not exist or is another manager's."""
    product = products_repo.get(session, product_id, for_update=True)
    if product is None or product.manager_id != manager_id:
        raise ProductNotFound(product_id)
    if product.discontinued:
        return False
    product.discontinued = True
    product.updated_at = utcnow()
    session.flush()
    return True


# --- orders ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreOrder:
    """What the store API needs of an order: its id, status, total and rejection (if any)."""

    id: int
    status: str
    total: Decimal
    error: dict[str, Any] | None
    manager_id: str | None

    @classmethod
    def of(cls, order: Order | OrderView) -> StoreOrder:
        return cls(order.id, order.status, Decimal(order.total_price), order.error, order.manager_id)

    def with_outcome(self, outcome: OrderOutcome) -> StoreOrder:
        """The order after `outcome` (an order event)."""
        return replace(self, status=outcome.status, error=outcome.error)


async def place_order(session: AsyncSession, request: OrderRequest) -> Intake:
    """`POST /api/orders/process`, intake: the core intake (`core.orders.intake.submit_order`) for a
    store order (`request.manager_id` set: only that manager's products can be ordered), so most
    rejections are answered without a trip through the queue; the worker's reservation still decides.
    Raises the domain errors of `submit_order`."""
    return await submit_order(session, request)


def get_order(session: Session, order_id: int) -> StoreOrder:
    """The order as the store sees it. Only store orders (placed for a `manager_id`) are visible
    here: an order of the core API belongs to a user, whom the store API does not know. Raises
    OrderNotFound (404)."""
    try:
        order = orders.get_order(session, order_id)
    except OrderNotFound:
        order = None
    if order is None or order.manager_id is None:
        raise OrderNotFound(order_id)
    return StoreOrder.of(order)
