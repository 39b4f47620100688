"""The demo catalogue behind `orderflow demo` (core/demo.py): 300 products in well under 3 s on PostgreSQL
(one transaction, batched through `core.products.service.create_products`), each opening stock in the
ledger; a failed batch loads nothing. The command's printed hints are tested in
tests/orderflow/test_cli.py."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from core.demo import load_demo_catalog
from core.products.models import Product, StockMovement


def test_300_demo_products_load_in_under_3_seconds_with_their_ledger(db):
    started = time.perf_counter()
    ids = load_demo_catalog(300)
    elapsed = time.perf_counter() - started
    assert elapsed < 3, f"loading 300 demo products took {elapsed:.2f} s"
    assert ids == list(range(ids[0], ids[0] + 300))
    assert db.execute(select(func.count()).select_from(Product)).scalar_one() == 300
    stocked = db.execute(select(func.count()).where(Product.stock > 0)).scalar_one()
    movements = db.execute(select(StockMovement.reason, StockMovement.actor, StockMovement.delta)).all()
    assert len(movements) == stocked
    assert {(reason, actor) for reason, actor, _ in movements} == {("create", "demo")}
    assert sum(delta for *_, delta in movements) == db.execute(select(func.sum(Product.stock))).scalar_one()


def test_a_failed_batch_loads_nothing(db):
    calls = []

    def fail_after_the_first_batch(done: int, total: int) -> None:
        calls.append(done)
        if done > 100:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        load_demo_catalog(300, on_progress=fail_after_the_first_batch)
    assert calls == [100, 200]
    assert db.execute(select(func.count()).select_from(Product)).scalar_one() == 0
