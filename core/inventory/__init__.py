"""The inventory (STYLE.md rule 11): the stock rules and the only writes to the stock movement ledger.

`decide` and `record` (the worker's batch reservation: what the stock covers, then the stock, the
ledger and the orders' outcomes in one statement), `unorderable` (why an order cannot be reserved),
`release` (a cancelled confirmed order), `adjust`/`open_stock`/`increment`/`decrement` (the core API's
and the store's stock writes) live in `core.inventory.stock`; their SQL and the ledger's reads in
`core.inventory.repository`.
"""

from __future__ import annotations

from core.inventory.repository import ledger_sum, list_movements
from core.inventory.stock import (
    WORKER_ACTOR,
    OrderLines,
    Reservation,
    adjust,
    decide,
    decrement,
    increment,
    open_stock,
    open_stocks,
    record,
    release,
    unorderable,
)

__all__ = [
    "WORKER_ACTOR",
    "OrderLines",
    "Reservation",
    "adjust",
    "decide",
    "decrement",
    "increment",
    "ledger_sum",
    "list_movements",
    "open_stock",
    "open_stocks",
    "record",
    "release",
    "unorderable",
]
