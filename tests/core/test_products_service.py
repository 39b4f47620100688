"""`core.products.service` against the real PostgreSQL through the synchronous `db` session."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core import inventory
from core.db import get_sync_engine
from core.errors import InsufficientStock, InvalidInput, ProductNotFound
from core.products import repository as repo
from core.products import service
from core.products.models import StockMovement
from core.products.schemas import ProductCreate, ProductFilter, ProductUpdate


def ledger(session: Session, product_id: int) -> list[tuple[int, int, str, str | None]]:
    """(delta, stock_after, reason, actor) rows, oldest first, once the session's pending rows are
    flushed (the session does not autoflush; the edge's commit would flush them)."""
    session.flush()
    rows = session.execute(
        select(StockMovement.delta, StockMovement.stock_after, StockMovement.reason, StockMovement.actor)
        .where(StockMovement.product_id == product_id)
        .order_by(StockMovement.id)
    ).all()
    return [tuple(r) for r in rows]


def committed_stock(product_id: int) -> int:
    """The stock another connection sees (what was committed)."""
    with get_sync_engine().connect() as conn:
        return conn.execute(
            text("SELECT stock FROM products WHERE id = :id"), {"id": product_id}
        ).scalar_one()


def make(session: Session, stock: int = 0, **fields) -> int:
    data = ProductCreate(
        name=fields.pop("name", "Product A"), price=fields.pop("price", "15.99"), stock=stock
    )
    return service.create_product(session, data.model_copy(update=fields), actor="tester").id


@pytest.mark.rolled_back
def test_create_writes_a_create_movement_only_when_stock_is_positive(db):
    stocked = make(db, stock=7)
    empty = make(db, stock=0, name="Empty")
    assert ledger(db, stocked) == [(7, 7, "create", "tester")]
    assert ledger(db, empty) == []
    product = service.get_product(db, stocked)
    assert product.price == Decimal("15.99")
    assert product.description == ""
    assert product.low_stock_threshold == 10
    assert product.discontinued is False
    assert product.created_at == product.updated_at
    assert product.created_at.tzinfo is not None


@pytest.mark.rolled_back
def test_update_product_adjustment_delta(db):
    pid = make(db, stock=10)
    before = service.get_product(db, pid).updated_at
    product = service.update_product(db, pid, ProductUpdate(stock=4), actor="mgr")
    assert product.stock == 4
    product = service.update_product(db, pid, ProductUpdate(stock_quantity=9))
    assert product.stock == 9
    service.update_product(db, pid, ProductUpdate(stock=9, name="Same stock"))
    assert ledger(db, pid) == [
        (10, 10, "create", "tester"),
        (-6, 4, "adjustment", "mgr"),
        (5, 9, "adjustment", None),
    ]
    assert inventory.ledger_sum(db, pid) == 9
    product = service.get_product(db, pid)
    assert product.name == "Same stock"
    assert product.updated_at > before


@pytest.mark.rolled_back
def test_update_product_keeps_fields_not_given(db):
    pid = make(db, stock=3, description="keep", manager_id="mgr_1", low_stock_threshold=2)
    product = service.update_product(db, pid, ProductUpdate(price=Decimal("1.50")))
    assert (product.name, product.description, product.stock) == ("Product A", "keep", 3)
    assert (product.manager_id, product.low_stock_threshold, product.price) == ("mgr_1", 2, Decimal("1.50"))
    # An explicit null keeps a non-nullable field and clears the nullable manager_id.
    product = service.update_product(db, pid, ProductUpdate(name=None, price=None, manager_id=None))
    assert product.name == "Product A"
    assert product.price == Decimal("1.50")
    assert product.manager_id is None
    assert ledger(db, pid) == [(3, 3, "create", "tester")]


def test_decrement_insufficient_stock_keeps_stock(db):
    pid = make(db, stock=5)
    db.commit()
    with pytest.raises(InsufficientStock) as caught:
        service.decrement_stock(db, pid, 10)
    err = caught.value
    assert err.message == "There are only 5 units of Product A in stock, but you requested 10."
    assert err.details == {"product_id": pid, "available": 5, "requested": 10}
    assert (err.status, err.code, err.title) == (400, "INSUFFICIENT_STOCK", "Insufficient stock")
    assert service.get_product(db, pid).stock == 5
    assert ledger(db, pid) == [(5, 5, "create", "tester")]
    db.commit()
    assert committed_stock(pid) == 5


@pytest.mark.rolled_back
def test_increment_and_decrement_write_movements(db):
    pid = make(db, stock=2)
    assert service.increment_stock(db, pid, 3, actor="a").stock == 5
    assert service.decrement_stock(db, pid, 5, actor="b").stock == 0
    assert ledger(db, pid) == [
        (2, 2, "create", "tester"),
        (3, 5, "increment", "a"),
        (-5, 0, "decrement", "b"),
    ]
    assert inventory.ledger_sum(db, pid) == 0


@pytest.mark.rolled_back
def test_increment_past_the_column_limit_is_invalid_input(db):
    pid = make(db, stock=repo.MAX_STOCK - 1)
    with pytest.raises(InvalidInput):
        service.increment_stock(db, pid, 2)
    assert service.increment_stock(db, pid, 1).stock == repo.MAX_STOCK
    assert service.get_product(db, pid).stock == repo.MAX_STOCK


@pytest.mark.rolled_back
def test_missing_and_deleted_products_raise_not_found(db):
    pid = make(db, stock=1)
    service.delete_product(db, pid)
    for call in (
        lambda: service.get_product(db, pid),
        lambda: service.update_product(db, pid, ProductUpdate(name="x")),
        lambda: service.delete_product(db, pid),
        lambda: service.increment_stock(db, pid, 1),
        lambda: service.decrement_stock(db, pid, 1),
        lambda: service.list_movements(db, pid, 10, 0),
        lambda: service.get_product(db, 999),
    ):
        with pytest.raises(ProductNotFound):
            call()
    assert service.list_products(db, ProductFilter(), 10, 0) == ([], 0)
    # Soft delete: the row and its ledger stay.
    assert db.execute(
        text("SELECT deleted_at IS NOT NULL FROM products WHERE id = :id"), {"id": pid}
    ).scalar()
    assert ledger(db, pid) == [(1, 1, "create", "tester")]


@pytest.mark.rolled_back
def test_list_products_filters_and_pages(db):
    a = make(db, name="Alpha 50%", stock=0, manager_id="m1")
    b = make(db, name="alphabet", stock=3, manager_id="m1")
    c = make(db, name="Beta", stock=20, manager_id="m2", discontinued=True)

    def ids(**flt) -> tuple[list[int], int]:
        items, total = service.list_products(db, ProductFilter(**flt), 50, 0)
        return [p.id for p in items], total

    assert ids() == ([a, b, c], 3)
    assert ids(q="ALPHA") == ([a, b], 2)
    assert ids(q="50%") == ([a], 1)
    assert ids(q="%") == ([a], 1)
    assert ids(manager_id="m1", in_stock=True) == ([b], 1)
    assert ids(in_stock=False) == ([a], 1)
    assert ids(discontinued=True) == ([c], 1)
    items, total = service.list_products(db, ProductFilter(), 1, 1)
    assert ([p.id for p in items], total) == ([b], 3)
    below, total = service.list_below_requirement(db, 50, 0)
    assert ([p.id for p in below], total) == ([a, b], 2)
