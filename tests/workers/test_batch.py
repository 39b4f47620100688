"""Batch reservation (`core.orders.reservation.reserve_orders` and the `reserve_orders` task) on the
real stack: PostgreSQL, Redis, and Celery worker subprocesses.

CONTRACT.md, "Processing guarantees": all lines of an order or none, a fixed lock order (no
deadlocks), never negative stock, never processed twice (the status guard), survives a worker killed
mid-task; and the outcomes of a batch reach the waiting requests in one event message.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from core import inventory
from core.config import Settings, settings
from core.db import get_sync_engine, make_sync_engine, session_scope
from core.events import CHANNEL, decode
from core.migrate import upgrade
from core.orders import reservation
from core.orders import service as orders
from core.products import service as products
from core.products.schemas import ProductCreate, ProductUpdate
from core.uow import effects_of
from tests.conftest import start_worker_process, stop_worker_process
from tests.workers.helpers import (
    assert_reserved_once,
    hold_row_lock,
    make_product,
    order_rows,
    place,
    place_copies,
    pool_children,
    reservation_rows,
    state_of,
    stock_of,
    wait_for_lock_waiter,
    wait_until_final,
)
from workers import tasks
from workers.celery_app import RESERVE_ORDERS, enqueue_reserve_orders
from workers.celery_app import app as celery_app

Lines = dict[int, list[tuple[int, int]]]

#: What the worker logs when a batch's transaction failed and its orders went one by one.
FALLBACK_LOG = "processing them one by one"


def decide(initial: dict[int, int], lines: Lines) -> dict[int, tuple[str, dict | None]]:
    """The reference model of one batch: orders in id order, each all lines or none, against the
    stock left by the orders before it. `{order_id: (status, error details or None)}`."""
    left = dict(initial)
    decided: dict[int, tuple[str, dict | None]] = {}
    for order_id in sorted(lines):
        short = [(pid, qty) for pid, qty in sorted(lines[order_id]) if left[pid] < qty]
        if short:
            pid, qty = short[0]
            decided[order_id] = ("rejected", {"product_id": pid, "available": left[pid], "requested": qty})
            continue
        for pid, qty in lines[order_id]:
            left[pid] -= qty
        decided[order_id] = ("confirmed", None)
    return decided


def place_random_orders(product_ids: list[int], count: int, seed: int) -> Lines:
    """`count` pending orders of 1-3 lines of 1-4 units over `product_ids`, lines in random order."""
    rng = random.Random(seed)
    lines: Lines = {}
    for _ in range(count):
        chosen = rng.sample(product_ids, rng.randint(1, min(3, len(product_ids))))
        order_lines = [(pid, rng.randint(1, 4)) for pid in chosen]
        lines[place(order_lines)] = order_lines
    return lines


def worker_log_size(worker) -> int:
    return worker.log_path.stat().st_size


def worker_log_since(worker, offset: int) -> str:
    with worker.log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


# --- the decision rules, in the test process (no worker) ------------------------------------------


def test_each_rule_rejects_with_its_reason_and_a_batch_is_all_or_nothing_per_order():
    with session_scope() as s:
        a = products.create_product(s, ProductCreate(name="A", price="1.00", stock=5)).id
        gone = products.create_product(s, ProductCreate(name="Gone", price="1.00", stock=5)).id
        old = products.create_product(s, ProductCreate(name="Old", price="1.00", stock=5)).id
        mine = products.create_product(
            s, ProductCreate(name="Mine", price="1.00", stock=5, manager_id="mgr_1")
        ).id
        e = products.create_product(s, ProductCreate(name="E", price="1.00", stock=4, manager_id="mgr_2")).id
    confirmed_first = place([(e, 3)])
    deleted = place([(gone, 1)])
    discontinued = place([(old, 1)])
    with session_scope() as s:
        store_order = orders.place_order(s, [(mine, 1)], manager_id="mgr_1").order.id
    short = place([(e, 2)])  # 1 unit of E left after `confirmed_first`
    all_or_nothing = place([(e, 2), (a, 2)])  # A fits, E does not: nothing is taken from A
    first_failing_line = place([(old, 1), (gone, 1)])  # `gone` has the lower id
    confirmed_last = place([(a, 1), (e, 1)])
    with session_scope() as s:
        products.delete_product(s, gone)
        products.update_product(s, old, ProductUpdate(discontinued=True))
        products.update_product(s, mine, ProductUpdate(manager_id="mgr_9"))  # no longer mgr_1's
    ids = [confirmed_first, deleted, discontinued, store_order, short, all_or_nothing, first_failing_line]
    ids.append(confirmed_last)

    with session_scope() as s:
        outcomes = reservation.reserve_orders(s, reversed(ids))
        effects = effects_of(s)
        assert effects.events == outcomes
        assert effects.listings == {"mgr_2"}  # only E's stock changed among managed products

    assert [o.order_id for o in outcomes] == sorted(ids)
    found = {o.order_id: o for o in outcomes}
    assert {i: found[i].status for i in ids} == {
        confirmed_first: "confirmed",
        deleted: "rejected",
        discontinued: "rejected",
        store_order: "rejected",
        short: "rejected",
        all_or_nothing: "rejected",
        first_failing_line: "rejected",
        confirmed_last: "confirmed",
    }
    assert found[deleted].error == {
        "code": "PRODUCT_NOT_FOUND",
        "error": "Product not found",
        "message": f"The product with ID {gone} does not exist.",
        "details": {"product_id": gone},
    }
    assert found[discontinued].error["code"] == "PRODUCT_DISCONTINUED"
    assert found[discontinued].error["details"] == {"product_id": old}
    assert found[store_order].error["code"] == "PRODUCT_NOT_FOUND"
    assert found[store_order].error["details"] == {"product_id": mine}
    assert found[short].error == {
        "code": "INSUFFICIENT_STOCK",
        "error": "Insufficient stock",
        "message": "There are only 1 units of E in stock, but you requested 2.",
        "details": {"product_id": e, "available": 1, "requested": 2},
        "params": {"name": "E"},  # what the sentence needs beyond details (the store API writes it again)
    }
    assert found[all_or_nothing].error["details"] == {"product_id": e, "available": 1, "requested": 2}
    assert found[first_failing_line].error["details"] == {"product_id": gone}
    # What was stored is what was announced.
    stored = order_rows(ids)
    assert {i: (stored[i].status, stored[i].error, stored[i].attempts) for i in ids} == {
        i: (found[i].status, found[i].error, 1) for i in ids
    }
    assert stock_of(a) == 4 and stock_of(e) == 0
    assert reservation_rows(ids) == [
        (confirmed_first, e, -3, 1),
        (confirmed_last, a, -1, 4),
        (confirmed_last, e, -1, 0),
    ]
    for pid in (a, e):
        with session_scope() as s:
            assert inventory.ledger_sum(s, pid) == stock_of(pid)


def test_only_pending_orders_are_decided_and_missing_or_repeated_ids_are_ignored():
    pid = make_product(stock=10)
    pending, confirmed, cancelled = place([(pid, 1)]), place([(pid, 2)]), place([(pid, 3)])
    with session_scope() as s:
        assert orders.reserve_order(s, confirmed) == "confirmed"
        orders.cancel_order(s, cancelled)
    before = state_of([pid], [confirmed, cancelled])

    with session_scope() as s:
        outcomes = reservation.reserve_orders(s, [cancelled, 424242, pending, confirmed, pending])

    assert [(o.order_id, o.status) for o in outcomes] == [(pending, "confirmed")]
    after = state_of([pid], [confirmed, cancelled])
    assert after["orders"] == before["orders"]
    assert stock_of(pid) == 7
    assert reservation_rows([pending, confirmed, cancelled]) == [
        (confirmed, pid, -2, 8),
        (pending, pid, -1, 7),
    ]
    with session_scope() as s:
        assert reservation.reserve_orders(s, [pending, confirmed, 424242]) == []
        assert reservation.reserve_orders(s, []) == []


def test_a_batch_takes_two_locking_reads_and_one_write_whatever_its_size():
    """The round trips of a batch on PostgreSQL: lock the orders with their lines, lock their
    products, then the stock, the ledger and the orders' outcomes in one statement."""
    a, b = make_product(stock=30, name="A"), make_product(stock=30, name="B")
    lines = place_random_orders([a, b], 50, seed=3)
    ids = list(lines)
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    engine = get_sync_engine()
    with session_scope() as s:
        s.connection()  # BEGIN before counting
        event.listen(engine, "before_cursor_execute", count)
        try:
            outcomes = reservation.reserve_orders(s, ids)
            repeated = len(statements)
            reservation.reserve_orders(s, ids)  # nothing pending any more: the locking read only
        finally:
            event.remove(engine, "before_cursor_execute", count)

    assert {o.status for o in outcomes} == {"confirmed", "rejected"}
    assert statements[:repeated] == ["SELECT", "SELECT", "WITH"]
    assert statements[repeated:] == ["SELECT"]
    statuses = assert_reserved_once({a: 30, b: 30}, lines)  # the one write did all three
    assert statuses == {o.order_id: o.status for o in outcomes}


def test_the_embedded_default_sqlite_runs_the_same_batch_with_the_same_outcomes(tmp_path: Path):
    cfg = Settings(database_url=None, redis_url=None, data_dir=tmp_path)
    upgrade(cfg.sync_database_url)
    engine = make_sync_engine(cfg)
    rng = random.Random(11)
    try:
        with Session(engine) as s, s.begin():
            initial = {
                products.create_product(s, ProductCreate(name=f"P{i}", price="1.00", stock=stock)).id: stock
                for i, stock in enumerate([6, 9, 4])
            }
            lines: Lines = {}
            for _ in range(20):
                chosen = rng.sample(list(initial), rng.randint(1, 3))
                order_lines = [(pid, rng.randint(1, 3)) for pid in chosen]
                lines[orders.place_order(s, order_lines).order.id] = order_lines
        with Session(engine) as s, s.begin():
            outcomes = reservation.reserve_orders(s, list(lines))
        with Session(engine) as s, s.begin():
            assert reservation.reserve_orders(s, list(lines)) == []
        expected = decide(initial, lines)
        assert {o.order_id: (o.status, o.error and o.error["details"]) for o in outcomes} == expected
        with Session(engine) as s:
            stored = dict(s.execute(text("SELECT id, status FROM orders")).all())
            assert stored == {i: status for i, (status, _) in expected.items()}
            for pid, start in initial.items():
                taken = sum(
                    q for i, ls in lines.items() if expected[i][0] == "confirmed" for p, q in ls if p == pid
                )
                assert products.get_product(s, pid).stock == start - taken
                assert inventory.ledger_sum(s, pid) == start - taken
    finally:
        engine.dispose()


# --- batches through real worker processes ----------------------------------------------------------


def test_a_batch_of_crossing_orders_confirms_what_the_stock_covers_and_reserves_each_once(celery_worker):
    initial = {make_product(stock, f"P{i}"): stock for i, stock in enumerate([12, 20, 8, 30])}
    lines = place_random_orders(list(initial), 50, seed=7)
    assert any(len(ls) > 1 for ls in lines.values())

    assert enqueue_reserve_orders(list(lines))
    wait_until_final(list(lines))

    statuses = assert_reserved_once(initial, lines)
    expected = decide(initial, lines)
    assert statuses == {i: status for i, (status, _) in expected.items()}
    assert set(statuses.values()) == {"confirmed", "rejected"}
    for order_id, order in order_rows(list(lines)).items():
        if order.status == "rejected":
            assert order.error["code"] == "INSUFFICIENT_STOCK"
            assert order.error["details"] == expected[order_id][1]


def test_overlapping_batches_sent_together_do_not_deadlock_or_reserve_twice(celery_worker):
    """Two batches of different orders crossing the same products, both started behind a held
    product lock so that they run at the same time."""
    initial = {make_product(40, name): 40 for name in ("A", "B", "C")}
    a, b, c = initial
    first = {place(ls): ls for ls in [[(a, 1), (b, 2), (c, 1)]] * 20}
    second = {place(ls): ls for ls in [[(c, 1), (b, 2), (a, 1)]] * 20}
    offset = worker_log_size(celery_worker)

    lock = hold_row_lock("products", a)
    try:
        assert enqueue_reserve_orders(list(first))
        assert enqueue_reserve_orders(list(second))
        wait_for_lock_waiter(count=2)
    finally:
        lock.rollback()
        lock.close()
    wait_until_final([*first, *second])

    statuses = assert_reserved_once(initial, {**first, **second})
    assert list(statuses.values()).count("confirmed") == 20  # B's 40 units cover 20 orders of 2
    assert FALLBACK_LOG not in worker_log_since(celery_worker, offset)  # no deadlock aborted a batch


def test_the_same_batch_twice_while_the_first_holds_its_locks_reserves_once(celery_worker):
    initial = {make_product(10, "A"): 10, make_product(10, "B"): 10}
    a, b = initial
    lines = {place(ls): ls for ls in [[(a, 3)], [(a, 2), (b, 5)], [(b, 4)], [(a, 4), (b, 1)], [(b, 2)]]}
    offset = worker_log_size(celery_worker)

    lock = hold_row_lock("products", b)
    try:
        assert enqueue_reserve_orders(list(lines))
        wait_for_lock_waiter(count=1)  # the first holds the order locks and waits for B
        assert enqueue_reserve_orders(list(lines))
        wait_for_lock_waiter(count=2)  # the copy waits for the order locks
    finally:
        lock.rollback()
        lock.close()
    wait_until_final(list(lines))
    time.sleep(0.5)  # let the copy finish after the orders left pending

    statuses = assert_reserved_once(initial, lines)
    assert statuses == {i: s for i, (s, _) in decide(initial, lines).items()}
    assert all(order.attempts == 1 for order in order_rows(list(lines)).values())
    assert FALLBACK_LOG not in worker_log_since(celery_worker, offset)


def test_a_pool_process_killed_mid_batch_the_batch_is_redelivered_and_reserved_once():
    """Late ack + reject on worker lost: the pool process dies inside the batch's transaction; the
    message goes back to the queue and the batch runs again."""
    initial = {make_product(10, "A"): 10, make_product(6, "B"): 6}
    lines = place_random_orders(list(initial), 8, seed=5)
    worker = start_worker_process(queue="batch-kill-child", concurrency=1)
    try:
        lock = hold_row_lock("products", min(initial))
        try:
            celery_app.send_task(RESERVE_ORDERS, args=(list(lines),), queue="batch-kill-child")
            wait_for_lock_waiter()
            children = pool_children(worker.pid)
            assert children
            for child in children:
                os.kill(child, signal.SIGKILL)
        finally:
            lock.rollback()
            lock.close()
        wait_until_final(list(lines), timeout=30)
    finally:
        stop_worker_process(worker)

    statuses = assert_reserved_once(initial, lines)
    assert statuses == {i: s for i, (s, _) in decide(initial, lines).items()}


def test_the_whole_worker_killed_mid_batch_the_batch_comes_back_after_the_visibility_timeout():
    initial = {make_product(10, "A"): 10, make_product(6, "B"): 6}
    lines = place_random_orders(list(initial), 8, seed=9)
    env = {"BROKER_VISIBILITY_TIMEOUT_SECONDS": "10"}
    first = start_worker_process(queue="batch-kill-all", concurrency=1, extra_env=env)
    lock = hold_row_lock("products", min(initial))
    try:
        celery_app.send_task(RESERVE_ORDERS, args=(list(lines),), queue="batch-kill-all")
        wait_for_lock_waiter()
        for child in pool_children(first.pid):
            os.kill(child, signal.SIGKILL)
        first.kill()
        first.wait(10)
    finally:
        lock.rollback()
        lock.close()
    assert set(wait_until_final(list(lines), timeout=1).values()) == {"pending"}
    second = start_worker_process(queue="batch-kill-all", concurrency=1, extra_env=env)
    try:
        wait_until_final(list(lines), timeout=45)
    finally:
        stop_worker_process(second)

    statuses = assert_reserved_once(initial, lines)
    assert statuses == {i: s for i, (s, _) in decide(initial, lines).items()}


@pytest.fixture
def poisoned_order():
    """A trigger that makes confirming one order fail (an order the batch cannot write); set its
    id with `poison(order_id)`. Dropped at the end."""
    engine = get_sync_engine()

    def poison(order_id: int) -> None:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE FUNCTION orderflow_test_poison() RETURNS trigger LANGUAGE plpgsql AS $$"
                    f" BEGIN IF NEW.id = {int(order_id)} AND NEW.status = 'confirmed' THEN"
                    " RAISE EXCEPTION 'order % is poisoned', NEW.id; END IF; RETURN NEW; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER orderflow_test_poison BEFORE UPDATE ON orders"
                    " FOR EACH ROW EXECUTE FUNCTION orderflow_test_poison()"
                )
            )

    yield poison
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER IF EXISTS orderflow_test_poison ON orders"))
        conn.execute(text("DROP FUNCTION IF EXISTS orderflow_test_poison()"))


def test_a_poisoned_order_fails_alone_and_its_neighbours_are_confirmed(celery_worker, poisoned_order):
    initial = {make_product(50, "A"): 50, make_product(50, "B"): 50}
    a, b = initial
    lines = {place(ls): ls for ls in [[(a, 1)], [(a, 2), (b, 1)], [(b, 3)], [(a, 1), (b, 1)], [(b, 2)]] * 2}
    poisoned = sorted(lines)[3]
    poisoned_order(poisoned)
    offset = worker_log_size(celery_worker)

    assert enqueue_reserve_orders(list(lines))
    wait_until_final(list(lines))

    statuses = assert_reserved_once(initial, lines)
    assert statuses == {i: ("failed" if i == poisoned else "confirmed") for i in lines}
    error = order_rows([poisoned])[poisoned].error
    assert error["code"] == "PROCESSING_FAILED"
    assert error["details"] == {"reason": "ProgrammingError"}  # how psycopg classes RAISE EXCEPTION
    log = worker_log_since(celery_worker, offset)
    assert log.count(FALLBACK_LOG) == 1
    assert "is poisoned" in log


def test_a_batch_whose_transaction_times_out_sends_its_orders_to_process_order_with_backoff():
    """A transient fault (a statement timeout behind a held lock) fails the batch and then each order
    alone; each goes to `process_order` with a backoff countdown and is confirmed once the lock is
    released."""
    initial = {make_product(10, "A"): 10}
    (a,) = initial
    lines = {place([(a, 2)]): [(a, 2)] for _ in range(3)}
    env = {"DB_STATEMENT_TIMEOUT_MS": "300", "TASK_MAX_RETRIES": "5", "TASK_RETRY_BACKOFF_MAX_SECONDS": "1"}
    worker = start_worker_process(queue="batch-transient", concurrency=1, extra_env=env)
    try:
        lock = hold_row_lock("products", a)
        try:
            celery_app.send_task(RESERVE_ORDERS, args=(list(lines),), queue="batch-transient")
            wait_for_lock_waiter()
            time.sleep(1.5)  # the batch and then each order alone time out
        finally:
            lock.rollback()
            lock.close()
        outcome = wait_until_final(list(lines), timeout=30)
    finally:
        stop_worker_process(worker)

    assert set(outcome.values()) == {"confirmed"}
    assert_reserved_once(initial, lines)
    log = worker.log_path.read_text()
    assert FALLBACK_LOG in log
    assert "sent to orderflow.process_order" in log


def test_a_processed_batch_delivered_again_changes_nothing(celery_worker):
    initial = {make_product(9, "A"): 9, make_product(5, "B"): 5}
    lines = place_random_orders(list(initial), 12, seed=1)
    assert enqueue_reserve_orders(list(lines))
    wait_until_final(list(lines))
    before = state_of(list(initial), list(lines))
    assert {row[1] for row in before["orders"].values()} == {"confirmed", "rejected"}

    assert tasks.reserve_orders.apply(args=(list(lines),)).get() == {"unchanged": len(lines)}

    assert state_of(list(initial), list(lines)) == before
    assert_reserved_once(initial, lines)


def test_a_batch_publishes_every_outcome_in_one_message(celery_worker):
    pid = make_product(stock=3)
    ids = [place([(pid, 1)]) for _ in range(5)]
    pubsub = redis.Redis.from_url(settings.redis_url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    assert pubsub.get_message(timeout=5) is None  # the subscription is confirmed (and skipped)
    try:
        assert enqueue_reserve_orders(ids)
        carrying: list[list] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and {o.order_id for m in carrying for o in m} != set(ids):
            message = pubsub.get_message(timeout=1)
            if message is not None and message["type"] == "message":
                outcomes = decode(message["data"])
                if any(o.order_id in ids for o in outcomes):
                    carrying.append(outcomes)
        time.sleep(0.5)
        assert pubsub.get_message(timeout=0.1) is None  # nothing after it
    finally:
        pubsub.close()

    assert len(carrying) == 1
    announced = {o.order_id: o for o in carrying[0]}
    stored = order_rows(ids)
    assert sorted(announced) == ids
    assert {i: (o.status, o.error and o.error["code"]) for i, o in announced.items()} == {
        i: (order.status, order.error and order.error["code"]) for i, order in stored.items()
    }
    assert [announced[i].status for i in ids] == ["confirmed"] * 3 + ["rejected"] * 2
    assert all(announced[i].updated_at == stored[i].updated_at for i in ids)


def test_the_sweep_resends_stale_pending_orders_in_batches_of_at_most_100(monkeypatch):
    pid = make_product(stock=1000)
    ids = place_copies([(pid, 1)], 230)
    sent: list[list[int]] = []
    monkeypatch.setattr(tasks.reserve_orders, "apply_async", lambda args, **_: sent.append(args[0]))

    assert tasks.sweep_pending_orders.run(older_than_seconds=0) == 230

    assert [len(batch) for batch in sent] == [100, 100, 30]
    assert [i for batch in sent for i in batch] == ids


def test_mark_failed_announces_the_failure():
    pid = make_product(stock=1)
    order_id = place([(pid, 1)])
    with session_scope() as s:
        assert orders.mark_failed(s, order_id, "OperationalError") == "failed"
        (outcome,) = effects_of(s).events
    stored = order_rows([order_id])[order_id]
    assert (outcome.order_id, outcome.status, outcome.error) == (order_id, "failed", stored.error)
    assert outcome.error["code"] == "PROCESSING_FAILED"
