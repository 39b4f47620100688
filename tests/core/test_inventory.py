"""`core.inventory` against the real PostgreSQL test database, through the `db` session: reserve,
release, adjust and the opening stock, each with its ledger rows (CONTRACT.md, "Products": every stock
change is a ledger row in the same transaction; "Processing guarantees": all lines or none, stock never
below zero, one lock order), and the rule that only `core/inventory` writes the ledger (STYLE.md 11)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from core import inventory
from core.db import utcnow
from core.errors import InsufficientStock, InvalidInput, ProductDiscontinued, ProductNotFound
from core.orders import service as orders
from core.products import repository as products_repo
from core.products import service as products
from core.products.models import Product, StockMovement
from core.products.schemas import ProductCreate

#: Each test works only through the `db` session, in one transaction rolled back at its end.
pytestmark = pytest.mark.rolled_back

ROOT = Path(__file__).resolve().parents[2]

#: What writing the ledger looks like in source: an ORM row, a Core INSERT, or SQL naming the table.
LEDGER_WRITE = re.compile(r"StockMovement\(|insert\(\s*StockMovement|stock_movements", re.IGNORECASE)


def make(db: Session, stock: int = 10, name: str = "Product A", **extra: object) -> int:
    data = ProductCreate(name=name, price=Decimal("2.50"), stock=stock, **extra)  # type: ignore[arg-type]
    product_id = products.create_product(db, data, actor="tester").id
    db.flush()  # the opening stock's ledger row goes out now, before the Core INSERTs of a test
    return product_id


def ledger(db: Session, product_id: int) -> list[tuple[int, int, str, int | None, str | None]]:
    """(delta, stock_after, reason, order_id, actor) rows of a product, oldest first."""
    db.flush()
    rows = db.execute(
        select(
            StockMovement.delta,
            StockMovement.stock_after,
            StockMovement.reason,
            StockMovement.order_id,
            StockMovement.actor,
        )
        .where(StockMovement.product_id == product_id)
        .order_by(StockMovement.id)
    ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def stock(db: Session, product_id: int) -> int:
    return db.execute(select(Product.stock).where(Product.id == product_id)).scalar_one()


@contextmanager
def statements(db: Session) -> Iterator[list[str]]:
    """The SQL statements the session's connection runs inside the block."""
    seen: list[str] = []
    engine = db.get_bind()

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


# --- the only ledger writes -------------------------------------------------------------------------


def test_only_core_inventory_writes_the_stock_movement_ledger():
    allowed = {ROOT / "core" / "products" / "models.py"}  # the table's own definition
    writers = []
    for top in ("core", "api", "workers"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path in allowed or (ROOT / "core" / "inventory") in path.parents:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if LEDGER_WRITE.search(line):
                    writers.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert writers == []
    inventory_source = (ROOT / "core" / "inventory" / "repository.py").read_text()
    assert LEDGER_WRITE.search(inventory_source)  # the pattern does find the writes where they are


# --- reserve: decide, then record ------------------------------------------------------------------


def reserve(db: Session, request: dict[int, inventory.OrderLines], at: datetime) -> dict:
    """What the worker's batch does once it holds the orders' locks (`core.orders.reservation`):
    `decide`, then `record` the stock, the ledger and each order's outcome. Returns the decisions."""
    taken = inventory.decide(db, request)
    outcomes = [
        (order_id, "confirmed", None) if error is None else (order_id, "rejected", error.to_dict())
        for order_id, error in taken.decisions.items()
    ]
    inventory.record(db, taken, outcomes, at)
    return taken.decisions


def test_reserve_takes_all_lines_or_none_in_order_id_order(db):
    a, b = make(db, stock=5, name="A"), make(db, stock=3, name="B")
    o1 = orders.place_order(db, [(a, 2), (b, 1)]).order.id
    o2 = orders.place_order(db, [(a, 2), (b, 3)]).order.id  # b has 2 left after o1: rejected whole
    o3 = orders.place_order(db, [(a, 3)]).order.id  # a has 3 left (o2 took nothing)
    now = utcnow()
    request = {
        o1: inventory.OrderLines(None, [(a, 2), (b, 1)]),
        o2: inventory.OrderLines(None, [(a, 2), (b, 3)]),
        o3: inventory.OrderLines(None, [(a, 3)]),
    }

    decisions = reserve(db, request, now)

    assert list(decisions) == [o1, o2, o3]
    assert decisions[o1] is None and decisions[o3] is None
    error = decisions[o2]
    assert isinstance(error, InsufficientStock)
    assert error.details == {"product_id": b, "available": 2, "requested": 3}
    assert (stock(db, a), stock(db, b)) == (0, 2)
    assert ledger(db, a) == [
        (5, 5, "create", None, "tester"),
        (-2, 3, "reservation", o1, "worker"),
        (-3, 0, "reservation", o3, "worker"),
    ]
    assert ledger(db, b) == [(3, 3, "create", None, "tester"), (-1, 2, "reservation", o1, "worker")]
    assert inventory.ledger_sum(db, a) == 0 and inventory.ledger_sum(db, b) == 2


def test_reserve_names_why_an_order_cannot_be_taken(db):
    mine = make(db, stock=5, name="Mine", manager_id="mgr_1")
    theirs = make(db, stock=5, name="Theirs", manager_id="mgr_2")
    stopped = make(db, stock=5, name="Stopped", manager_id="mgr_1", discontinued=True)
    gone = make(db, stock=5, name="Gone")
    products.delete_product(db, gone)
    ids = [orders.place_order(db, [(mine, 1)]).order.id for _ in range(4)]
    request = {
        ids[0]: inventory.OrderLines("mgr_1", [(mine, 1), (theirs, 1)]),  # another manager's
        ids[1]: inventory.OrderLines("mgr_1", [(mine, 1), (stopped, 1)]),
        ids[2]: inventory.OrderLines(None, [(gone, 1)]),
        ids[3]: inventory.OrderLines(None, [(999_999, 1)]),
    }

    decisions = reserve(db, request, utcnow())

    assert [type(decisions[i]) for i in ids] == [
        ProductNotFound,
        ProductDiscontinued,
        ProductNotFound,
        ProductNotFound,
    ]
    assert decisions[ids[0]].details == {"product_id": theirs}  # type: ignore[union-attr]
    assert all(stock(db, p) == 5 for p in (mine, theirs, stopped))
    assert [r[2] for r in ledger(db, mine)] == ["create"]


def test_reserve_runs_one_lock_and_one_write_and_locks_in_ascending_id(db):
    ids = [make(db, stock=9, name=f"P{i}") for i in range(3)]
    order_id = orders.place_order(db, [(ids[0], 1)]).order.id
    db.flush()
    lines = sorted([(ids[2], 1), (ids[0], 2), (ids[1], 3)])

    with statements(db) as seen:
        reserve(db, {order_id: inventory.OrderLines(None, lines)}, utcnow())

    # The lock, then the stock, the ledger and the outcome in one statement of data-modifying CTEs.
    assert [s.split()[0] for s in seen] == ["SELECT", "WITH"]
    assert "ORDER BY products.id" in seen[0] and "FOR NO KEY UPDATE" in seen[0]
    assert "DESC" not in seen[0]
    assert [stock(db, p) for p in ids] == [7, 6, 8]


def test_unorderable_checks_lines_against_available_units():
    row = type("Row", (), {"id": 1, "name": "A", "stock": 5, "discontinued": False, "manager_id": None})
    assert inventory.unorderable([(1, 5)], {1: row}, None) is None
    short = inventory.unorderable([(1, 5)], {1: row}, None, {1: 4})
    assert isinstance(short, InsufficientStock) and short.details["available"] == 4


# --- release --------------------------------------------------------------------------------------


def test_release_gives_reserved_units_back_with_release_rows(db):
    a, b = make(db, stock=4, name="A"), make(db, stock=4, name="B")
    order_id = orders.place_order(db, [(a, 3), (b, 1)]).order.id
    assert orders.reserve_order(db, order_id) == "confirmed"
    products.delete_product(db, b)  # a deleted product still gets its units back

    inventory.release(db, order_id, [(a, 3), (b, 1)], actor="clerk")

    assert (stock(db, a), stock(db, b)) == (4, 4)
    assert ledger(db, a)[-1] == (3, 4, "release", order_id, "clerk")
    assert ledger(db, b)[-1] == (1, 4, "release", order_id, "clerk")
    assert inventory.ledger_sum(db, a) == 4


# --- adjust, opening stock, increment, decrement --------------------------------------------------


def test_adjust_writes_the_difference_and_nothing_when_unchanged(db):
    pid = make(db, stock=10)
    product = products.get_product(db, pid)

    inventory.adjust(db, product, 4, actor="mgr")
    inventory.adjust(db, product, 4, actor="mgr")
    inventory.adjust(db, product, 12, actor=None)
    db.flush()

    assert stock(db, pid) == 12
    assert ledger(db, pid) == [
        (10, 10, "create", None, "tester"),
        (-6, 4, "adjustment", None, "mgr"),
        (8, 12, "adjustment", None, None),
    ]


def test_open_stocks_writes_one_create_row_per_stocked_product_in_one_statement(db):
    now = utcnow()
    items = [Product(name=n, price=Decimal("1.00"), stock=s, created_at=now) for n, s in [("A", 3), ("B", 0)]]
    db.add_all(items)
    db.flush()

    with statements(db) as seen:
        inventory.open_stocks(db, items, actor="demo", at=now)

    assert len(seen) == 1 and seen[0].startswith("INSERT INTO stock_movements")
    assert ledger(db, items[0].id) == [(3, 3, "create", None, "demo")]
    assert ledger(db, items[1].id) == []


def test_increment_and_decrement_are_bounded_and_name_the_product(db):
    pid = make(db, stock=2)
    assert inventory.increment(db, pid, 3, actor="a") == 5
    assert inventory.decrement(db, pid, 5, actor="b") == 0
    with pytest.raises(InsufficientStock):
        inventory.decrement(db, pid, 1, actor="b")
    assert inventory.increment(db, pid, products_repo.MAX_STOCK, actor="a") == products_repo.MAX_STOCK
    with pytest.raises(InvalidInput):
        inventory.increment(db, pid, 1, actor="a")
    with pytest.raises(ProductNotFound):
        inventory.increment(db, 999_999, 1, actor="a")
    assert [r[:3] for r in ledger(db, pid)][1:] == [
        (3, 5, "increment"),
        (-5, 0, "decrement"),
        (products_repo.MAX_STOCK, products_repo.MAX_STOCK, "increment"),
    ]


# --- the store upsert's lock ------------------------------------------------------------------------


def test_lock_for_upsert_locks_ids_and_names_in_one_ascending_statement(db):
    low = make(db, name="Twin", manager_id="mgr_1")
    by_id = make(db, name="Other", manager_id="mgr_2")
    high = make(db, name="Twin", manager_id="mgr_1")  # two of the manager's products share a name
    make(db, name="Twin", manager_id="mgr_2")  # another manager's namesake is not theirs
    db.flush()

    with statements(db) as seen:
        ids, names = products_repo.lock_for_upsert(db, "mgr_1", [by_id], ["Twin", "New"])

    assert len(seen) == 1
    assert "ORDER BY products.id" in seen[0] and "DESC" not in seen[0]
    assert "FOR NO KEY UPDATE" in seen[0]
    assert {p: product.id for p, product in ids.items()} == {by_id: by_id}
    assert {n: product.id for n, product in names.items()} == {"Twin": low}
    assert high != low
