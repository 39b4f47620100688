"""The demo catalog behind `orderflow demo`."""

from __future__ import annotations

import random
from decimal import Decimal

from core.db import session_scope
from core.products.schemas import ProductCreate
from core.products.service import create_product

ADJECTIVES = ["Classic", "Organic", "Deluxe", "Compact", "Rugged", "Smart", "Vintage", "Eco"]
NOUNS = ["Mug", "Notebook", "Backpack", "Lamp", "Headphones", "Kettle", "Scarf", "Bottle", "Chair"]


def load_demo_catalog(count: int = 300, seed: int = 7) -> int:
    """Create `count` products with varied prices, stock and managers; returns how many."""
    rng = random.Random(seed)
    with session_scope() as session:
        for i in range(count):
            name = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {i + 1:03d}"
            data = ProductCreate(
                name=name,
                description=f"Demo product {i + 1}",
                price=Decimal(rng.randint(199, 19999)) / 100,
                stock=rng.choice([0, 3, 8, 25, 50, 100, 500]),
                low_stock_threshold=10,
                manager_id=f"mgr_{rng.randint(1, 5):03d}",
            )
            create_product(session, data, actor="demo")
    return count
