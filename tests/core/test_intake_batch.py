"""The intake's group commit (`core.orders.intake.IntakeBatcher`) on the real PostgreSQL: orders that
queue while an intake statement runs are stored by one statement, each decided on its own
(CONTRACT.md, "Orders": the refusals of `POST /orders`; "Processing guarantees": an accepted order is
stored with its lines, its key and its audit row, or not at all).

Each test makes a batcher of one statement at a time on the test app's statement pool: the first
intake of a `gather` runs alone, the rest queue behind it and go together."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select

from core.audit.models import AuditEntry
from core.config import settings
from core.db import libpq_dsn, make_statement_pool
from core.errors import IdempotencyKeyReused, InsufficientStock, ProductDiscontinued, ProductNotFound
from core.orders import intake
from core.orders.intake import Intake, IntakeBatcher, OrderRequest, StatementUnit, submit_order
from core.orders.models import IdempotencyKey, Order, OrderLine
from tests.conftest import make_product
from tests.workers.helpers import lock_waiters


class CountingBatcher(IntakeBatcher):
    """Records the size of every batch statement."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    async def _together(self, orders):  # type: ignore[no-untyped-def]
        self.batches.append(len(orders))
        return await super()._together(orders)


def batcher(app, max_batch: int = 64) -> CountingBatcher:
    return CountingBatcher(app.state.statement_pool, max_batch=max_batch, max_statements=1)


def request(lines: list[tuple[int, int]], *, key: str | None = None, **extra: Any) -> OrderRequest:
    return OrderRequest(lines=lines, actor="admin", user_id=1, idempotency_key=key, **extra)


async def submit_all(app, on: IntakeBatcher, requests: list[OrderRequest]) -> list[Any]:
    def unit() -> StatementUnit:
        return StatementUnit(on, app.state.read_sessionmaker)

    return await asyncio.gather(*(submit_order(unit(), r) for r in requests), return_exceptions=True)


def count(db, model) -> int:
    return db.execute(select(func.count()).select_from(model)).scalar_one()


async def test_queued_orders_are_stored_by_one_statement_each_whole(client, app, db):
    products = [make_product(name=f"P{i}", price=f"{i}.25", stock=100) for i in range(1, 4)]
    ids = [p["id"] for p in products]
    shapes = [[(ids[i % 3], 1 + i % 4)] + ([(ids[(i + 1) % 3], 2)] if i % 2 else []) for i in range(30)]
    on = batcher(app)

    results = await submit_all(app, on, [request(lines) for lines in shapes])

    assert all(isinstance(r, Intake) and not r.replayed for r in results), results
    assert max(on.batches) >= 10, on.batches  # they did go together
    assert len({r.order.id for r in results}) == 30
    db.expire_all()
    for result, lines in zip(results, shapes, strict=True):
        view = result.order
        stored = db.get(Order, view.id)
        assert stored.status == "pending" and stored.user_id == 1
        assert (
            stored.total_price
            == view.total_price
            == sum(
                Decimal(products[ids.index(pid)]["price"]).quantize(Decimal("0.01")) * qty
                for pid, qty in lines
            )
        )
        assert stored.created_at == view.created_at
        rows = db.execute(
            select(OrderLine.product_id, OrderLine.quantity, OrderLine.position, OrderLine.name)
            .where(OrderLine.order_id == view.id)
            .order_by(OrderLine.position)
        ).all()
        assert [(r.product_id, r.quantity, r.position) for r in rows] == [
            (pid, qty, n) for n, (pid, qty) in enumerate(lines)
        ]
        assert [r.name for r in rows] == [line.name for line in view.lines]
    audits = db.execute(select(AuditEntry.entity_id).where(AuditEntry.action == "order.create")).scalars()
    assert sorted(int(a) for a in audits) == sorted(r.order.id for r in results)


async def test_a_refused_order_fails_alone_in_its_batch(client, app, db):
    good = make_product(name="Good", stock=100)
    scarce = make_product(name="Scarce", stock=2)
    gone = make_product(name="Discontinued", discontinued=True)
    requests = [
        request([(good["id"], 1)]),
        request([(good["id"], 1)]),
        request([(good["id"], 1), (scarce["id"], 3)]),  # one line short: the whole order is refused
        request([(good["id"], 1)]),
        request([(gone["id"], 1)]),
        request([(999_999, 1)]),
        request([(good["id"], 1)], manager_id="mgr_other"),  # another manager's product for a store order
        request([(good["id"], 2), (scarce["id"], 2)]),
    ]
    on = batcher(app)

    results = await submit_all(app, on, requests)

    assert on.batches == [7]
    kinds = [type(r) for r in results]
    assert kinds == [
        Intake,
        Intake,
        InsufficientStock,
        Intake,
        ProductDiscontinued,
        ProductNotFound,
        ProductNotFound,
        Intake,
    ]
    stored = [r.order.id for r in results if isinstance(r, Intake)]
    db.expire_all()
    assert count(db, Order) == len(stored) == 4
    assert count(db, OrderLine) == 5
    assert db.execute(select(func.count()).where(AuditEntry.action == "order.create")).scalar_one() == 4


async def test_one_key_twice_in_a_batch_stores_one_order(client, app, db):
    product = make_product(stock=100)
    on = batcher(app)
    unit = StatementUnit(on, app.state.read_sessionmaker)
    first = await submit_order(unit, request([(product["id"], 1)], key="k0"))

    results = await submit_all(
        app,
        on,
        [
            request([(product["id"], 9)]),  # runs alone: the others queue behind it
            request([(product["id"], 1)], key="k1"),
            request([(product["id"], 1)], key="k1"),  # the same key and body
            request([(product["id"], 2)], key="k0"),  # stored before, with another body: 409
            request([(product["id"], 3)]),
        ],
    )

    # The batch failed on the unique key; each of its orders then ran alone, the two uses of k1 at
    # once (either may be the one stored).
    assert on.batches == [4]
    alone, k1, k1_again, k0_other, last = results
    assert isinstance(alone, Intake) and isinstance(last, Intake) and not last.replayed
    assert isinstance(k1, Intake) and isinstance(k1_again, Intake)
    assert sorted([k1.replayed, k1_again.replayed]) == [False, True]
    assert k1.order.id == k1_again.order.id
    assert isinstance(k0_other, IdempotencyKeyReused)
    db.expire_all()
    assert count(db, Order) == 4  # k0, the one alone, k1, the last
    assert count(db, IdempotencyKey) == 2
    assert first.order.id not in {k1.order.id, alone.order.id, last.order.id}


async def test_a_replay_in_a_batch_needs_no_fallback(client, app):
    product = make_product(stock=100)
    on = batcher(app)
    unit = StatementUnit(on, app.state.read_sessionmaker)
    first = await submit_order(unit, request([(product["id"], 1)], key="again"))

    results = await submit_all(
        app, on, [request([(product["id"], 1)])] + [request([(product["id"], 1)], key="again")] * 3
    )

    assert on.batches == [3]
    assert all(r.replayed and r.order.id == first.order.id for r in results[1:])


class RacedBatcher(IntakeBatcher):
    """Runs each intake while another transaction (the rival) has stored an order under the same
    idempotency key and not committed yet, as when two API processes take one new key at the same
    moment: the intake's insert waits on the key's unique index and fails once the rival commits.
    With `rival_body`, the rival's order has another request hash (another body)."""

    def __init__(self, *args: Any, rival_body: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rival_body = rival_body
        self.rival_order_id: int | None = None
        self.waited = False

    async def run(self, params, lines):  # type: ignore[no-untyped-def]
        rival_params = {**params, "hash": "another body"} if self.rival_body else params
        async with await psycopg.AsyncConnection.connect(libpq_dsn(settings.database_url)) as rival:
            row = await (await rival.execute(intake._INTAKE_PG, rival_params)).fetchone()
            self.rival_order_id = row[0]  # `_INTAKE_SQL`: order_id first
            async with self.pool.connection() as conn:
                raced = asyncio.create_task(intake._run(conn, params))
                for _ in range(400):  # until the intake waits on the rival's key
                    if lock_waiters():
                        self.waited = True
                        break
                    await asyncio.sleep(0.01)
                await rival.commit()
                return await raced


@pytest.mark.parametrize("rival_body", [False, True], ids=["same body", "another body"])
async def test_a_key_taken_by_a_concurrent_transaction_is_a_replay_or_a_conflict(client, app, db, rival_body):
    product = make_product(stock=100)
    on = RacedBatcher(app.state.statement_pool, rival_body=rival_body)
    unit = StatementUnit(on, app.state.read_sessionmaker)

    result = await asyncio.gather(
        submit_order(unit, request([(product["id"], 2)], key="raced")), return_exceptions=True
    )

    assert on.waited  # the intake's insert did wait on the rival's key
    if rival_body:
        assert isinstance(result[0], IdempotencyKeyReused), result
    else:
        assert isinstance(result[0], Intake) and result[0].replayed, result
        assert result[0].order.id == on.rival_order_id
    db.expire_all()
    assert count(db, Order) == 1  # the rival's
    assert count(db, IdempotencyKey) == 1


async def test_batches_hold_at_most_max_batch_orders(client, app, db):
    product = make_product(stock=100)
    on = batcher(app, max_batch=3)

    results = await submit_all(app, on, [request([(product["id"], 1)]) for _ in range(11)])

    assert all(isinstance(r, Intake) for r in results)
    assert on.batches and max(on.batches) <= 3
    assert sum(on.batches) <= 10  # the first ran alone
    db.expire_all()
    assert count(db, Order) == 11


async def test_a_cancelled_intake_is_left_out_of_its_batch(client, app, db):
    product = make_product(stock=100)
    on = batcher(app)
    unit = StatementUnit(on, app.state.read_sessionmaker)
    tasks = [asyncio.create_task(submit_order(unit, request([(product["id"], 1)]))) for _ in range(5)]
    await asyncio.sleep(0)  # every task is running or queued
    tasks[2].cancel()

    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(results[2], asyncio.CancelledError)
    assert on.batches == [3]
    db.expire_all()
    assert count(db, Order) == 4


class HeldBatcher(CountingBatcher):
    """Its first intake waits for `release` before it runs, so that the next ones queue."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = asyncio.Event()

    async def _alone(self, params):  # type: ignore[no-untyped-def]
        if not self.release.is_set():
            await self.release.wait()
        return await super()._alone(params)


async def test_a_database_failure_is_every_queued_orders_error(client, app):
    product = make_product(stock=100)
    pool = make_statement_pool(settings)
    assert pool is not None
    await pool.open()
    on = HeldBatcher(pool, max_statements=1)
    unit = StatementUnit(on, app.state.read_sessionmaker)
    tasks = [asyncio.create_task(submit_order(unit, request([(product["id"], 1)]))) for _ in range(4)]
    await asyncio.sleep(0)  # the first holds the one slot, the others are queued
    await pool.close()
    on.release.set()

    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert on.batches == [3]
    assert all(isinstance(r, psycopg.OperationalError) for r in results), results


class SlowBatcher(CountingBatcher):
    """Its batch statements start `delay` seconds late, after their orders left the queue."""

    def __init__(self, *args: Any, delay: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay

    async def _together(self, orders):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay)
        return await super()._together(orders)


async def test_an_order_taken_into_a_statement_is_not_refused_by_the_queue_timeout(client, app, db):
    """The queue's bound (the pool's `timeout`) refuses only orders still queued, never sent: one
    already taken into a statement waits for that statement's outcome, however long it takes."""
    product = make_product(stock=100)
    pool = make_statement_pool(settings.model_copy(update={"db_pool_timeout_seconds": 0.3}))
    assert pool is not None
    await pool.open()
    try:
        on = SlowBatcher(pool, max_statements=1, delay=0.6)

        results = await submit_all(app, on, [request([(product["id"], 1)]) for _ in range(4)])

        assert on.batches == [3]  # the first ran alone, the three queued went together, late
        assert all(isinstance(r, Intake) for r in results), results
    finally:
        await pool.close()
    db.expire_all()
    assert count(db, Order) == 4
