"""The demo catalogue behind `orderflow demo`: products with varied prices, stock and managers."""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import Decimal

from core.db import session_scope
from core.products.schemas import ProductCreate
from core.products.service import create_products

ADJECTIVES = ["Classic", "Organic", "Deluxe", "Compact", "Rugged", "Smart", "Vintage", "Eco"]
NOUNS = ["Mug", "Notebook", "Backpack", "Lamp", "Headphones", "Kettle", "Scarf", "Bottle", "Chair"]
#: Products per flush: each batch is one multi-row INSERT of products and one of ledger rows.
BATCH_SIZE = 100


def demo_products(count: int, seed: int = 7) -> list[ProductCreate]:
    """`count` products, the same for the same `seed`: prices 1.99-199.99, stock 0-500, managers
    `mgr_001`-`mgr_005` (so the store API can list them)."""
    rng = random.Random(seed)
    return [
        ProductCreate(
            name=f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {i + 1:03d}",
            description=f"Demo product {i + 1}",
            price=Decimal(rng.randint(199, 19999)) / 100,
            stock=rng.choice([0, 3, 8, 25, 50, 100, 500]),
            low_stock_threshold=10,
            manager_id=f"mgr_{rng.randint(1, 5):03d}",
        )
        for i in range(count)
    ]


def load_demo_catalog(
    count: int = 300, seed: int = 7, on_progress: Callable[[int, int], None] | None = None
) -> list[int]:
    """Create `count` demo products in one transaction, in batches of `BATCH_SIZE` through
    `core.products.service.create_products` (each opening stock is a `create` movement of the ledger,
    actor `demo`, written by `core.inventory.open_stocks`). `on_progress(done, count)` is called
    after each batch. Returns the new ids."""
    items = demo_products(count, seed)
    ids: list[int] = []
    with session_scope() as session:
        for start in range(0, count, BATCH_SIZE):
            created = create_products(session, items[start : start + BATCH_SIZE], actor="demo")
            ids.extend(product.id for product in created)
            if on_progress is not None:
                on_progress(len(ids), count)
    return ids
