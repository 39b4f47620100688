"""`orderflow demo`: 300 products in well under 3 s on PostgreSQL (one transaction, batched through
`core.products.service.create_products`), and hints that run when pasted (core/demo.py, core/cli.py)."""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from core.cli import app
from core.demo import load_demo_catalog
from core.products.models import Product, StockMovement

README = Path(__file__).resolve().parents[2] / "README.md"


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


def _quick_start_serve_command() -> str:
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    return next(line for line in section.splitlines() if "uv run orderflow serve" in line).strip()


def test_the_printed_hints_are_whole_runnable_lines_with_the_quick_start_admin(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal must not break a command
    result = CliRunner().invoke(app, ["demo", "--products", "300"])
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    first = int(re.search(r"\(ids (\d+)-\d+\)", result.output).group(1))

    assert _quick_start_serve_command() in lines
    credentials = "-u admin:'choose-a-long-password'"
    expected = [
        f"curl -s {credentials} 'localhost:8000/products?limit=5'",
        f"ORDER=$(curl -s {credentials} -X POST localhost:8000/orders -H 'content-type: application/json'"
        f""" -d '{{"product_id": {first}, "quantity": 2}}' | jq .id)""",
        f'curl -s {credentials} "localhost:8000/orders/$ORDER?wait=5"',
    ]
    for command in expected:
        assert command in lines, (command, lines)
    for command in [_quick_start_serve_command(), *expected]:
        shlex.split(command)  # balanced quotes
        parsed = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True, check=False)
        assert parsed.returncode == 0, (command, parsed.stderr)
    assert not any(line.endswith(("\\", "-H", "-d", "|")) for line in lines), lines
