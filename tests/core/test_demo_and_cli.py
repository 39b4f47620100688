"""`orderflow demo` and the CLI's guard rails."""

from __future__ import annotations

from sqlalchemy import func, select
from typer.testing import CliRunner

from core.cli import app
from core.demo import load_demo_catalog
from core.products.models import Product, StockMovement


def test_demo_catalog_is_loaded_through_the_ledger(db):
    assert load_demo_catalog(25) == 25
    assert db.execute(select(func.count()).select_from(Product)).scalar_one() == 25
    stock = db.execute(select(func.sum(Product.stock))).scalar_one()
    ledger = db.execute(select(func.sum(StockMovement.delta))).scalar_one()
    assert stock == ledger


def test_cli_lists_its_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "worker", "beat", "migrate", "demo", "bench"):
        assert command in result.output
