"""The reservation's all-or-nothing rule on the embedded default's SQLite, as on PostgreSQL: an order
whose second line cannot be reserved takes no stock for its first."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from core import inventory
from core.config import Settings
from core.db import make_sync_engine
from core.migrate import upgrade
from core.orders import service as orders
from core.products import service as products
from core.products.schemas import ProductCreate


def test_a_failing_line_reserves_none_of_the_order(tmp_path: Path):
    cfg = Settings(database_url=None, redis_url=None, data_dir=tmp_path)
    upgrade(cfg.sync_database_url)
    engine = make_sync_engine(cfg)
    with Session(engine) as session, session.begin():
        a = products.create_product(session, ProductCreate(name="A", price="1.00", stock=5)).id
        b = products.create_product(session, ProductCreate(name="B", price="2.00", stock=5)).id
        order_id = orders.place_order(session, [(a, 2), (b, 4)]).order.id
        products.decrement_stock(session, b, 3)  # b now holds 2, fewer than the 4 ordered
    with Session(engine) as session, session.begin():
        assert orders.reserve_order(session, order_id) == "rejected"
    with Session(engine) as session:
        assert products.get_product(session, a).stock == 5
        assert products.get_product(session, b).stock == 2
        assert inventory.ledger_sum(session, a) == 5
        order = orders.get_order(session, order_id)
        assert order.error["code"] == "INSUFFICIENT_STOCK"
    engine.dispose()
