"""One fault at a time against the private stack: start the load, inject the fault, stop the load,
wait until every order is final, check the invariants, report one line.

The report lines go to `LINES` (shown in the terminal summary by `tests/conftest.py`, so
they appear in CI output without `-s`), to stdout, and to `faults-report.txt` in pytest's base
temporary directory.
"""

from __future__ import annotations

import ast
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from tests.faults import invariants
from tests.faults.load import Customer, Load, Tally
from tests.faults.stack import ADMIN, DB_NAME, Stack, StackError
from workers.celery_app import ORDERS_QUEUE, PROCESS_ORDER, RESERVE_ORDERS

#: Every order must be final this long after the load stopped (the sweep re-sends an order left
#: pending for ORDER_SWEEP_AFTER_SECONDS, every ORDER_SWEEP_INTERVAL_SECONDS; see stack.py).
DRAIN_BOUND_SECONDS = 60.0
WARMUP_SECONDS = 1.0
COOLDOWN_SECONDS = 1.0
#: The load's clients (see load.py); keyed ones send only keyed orders.
CLIENTS = ("keyed-1", "keyed-2", "plain", "waiting")

LINES: list[str] = []


@dataclass
class PhaseResult:
    name: str
    tally: Tally
    statuses: dict[str, int]
    drain_seconds: float | None
    problems: list[str]
    seconds: float

    def line(self) -> str:
        t = self.tally
        final = ", ".join(f"{s} {n}" for s, n in self.statuses.items()) or "none"
        errors = ", ".join(f"{k}: {v}" for k, v in t.errors().items()) or "none"
        drain = f"{self.drain_seconds:.1f} s" if self.drain_seconds is not None else "NOT DRAINED"
        return (
            f"[{self.name}] orders submitted {t.meant}, answered 202/201 {len(t.accepted)}, "
            f"gave up {t.gave_up}, replayed {t.replayed}, cancelled {len(t.cancelled)} | final: {final} "
            f"| drained {drain} "
            f"after the fault ended | client errors: {errors} | invariants: "
            + ("hold" if not self.problems else f"{len(self.problems)} VIOLATED")
            + f" | phase {self.seconds:.0f} s"
        )


#: Refusals a well-behaved client of this load may get whatever happens: an order for a product that
#: ran out (CONTRACT.md, "Orders": the intake's check) and the cancellation of an order the worker
#: rejected (409).
REFUSALS = {"400 insufficient_stock", "cancel 409"}


def assert_invariants(result: PhaseResult, *, api_unaffected: bool) -> None:
    """The order invariants hold and every order is final (CONTRACT.md, "Processing guarantees").

    Client-visible errors are bounded only where the contract says so. A client never gets another
    4xx than `REFUSALS` (its requests are valid; a service that is down is a 500, CONTRACT.md "Core
    API"). With `api_unaffected` (the fault hits only the workers or the broker), the API answers
    every request as usual: it stores the order and answers 202 without a worker, and an order
    submitted while the broker is down is still accepted (CONTRACT.md, "Processing guarantees").
    """
    assert not result.problems, f"[{result.name}] invariants violated:\n" + "\n".join(result.problems[:50])
    assert result.drain_seconds is not None, f"[{result.name}] orders still pending after the drain bound"
    assert result.tally.accepted, f"[{result.name}] no order was accepted during the phase"
    errors = {k: n for k, n in result.tally.errors().items() if k not in REFUSALS}
    wrong_4xx = {k: n for k, n in errors.items() if k.removeprefix("cancel ").startswith("4")}
    assert not wrong_4xx, f"[{result.name}] valid requests refused: {wrong_4xx}"
    if api_unaffected:
        assert not errors, (
            f"[{result.name}] the API failed requests during a fault it does not depend on: {errors}"
        )


@dataclass
class FaultRun:
    """The private stack with its users, and the tallies of every phase so far."""

    stack: Stack
    report_path: Path
    admin_token: str = ""
    customers: dict[str, Customer] = field(default_factory=dict)
    tallies: list[Tally] = field(default_factory=list)
    direct: Tally = field(default_factory=Tally)  # orders the tests placed themselves
    _products: int = 0

    def __post_init__(self) -> None:
        self.tallies.append(self.direct)
        self.http = httpx.Client(base_url=self.stack.api_url, trust_env=False, timeout=10)

    # -- set-up -------------------------------------------------------------------------------------

    def setup_users(self) -> None:
        self.admin_token = self.login(*ADMIN)
        for name in CLIENTS:
            password = f"{name}-password"
            created = self.http.post("/users", json={"username": f"faults-{name}", "password": password})
            assert created.status_code == 201, created.text
            token = self.login(f"faults-{name}", password)
            self.customers[name] = Customer(name, created.json()["id"], token)

    def login(self, username: str, password: str) -> str:
        response = self.http.post("/login", auth=(username, password))
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def product(self, stock: int) -> int:
        self._products += 1
        body = {"name": f"Faults product {self._products}", "price": 2.5, "stock": stock}
        response = self.http.post("/products", json=body, headers=self.admin)
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def close(self) -> None:
        self.http.close()

    # -- a phase --------------------------------------------------------------------------------------

    def phase(self, name: str, fault: Callable[[], float], seed: int) -> PhaseResult:
        """Run `fault` (it returns the monotonic time the fault ended) under load; drain; check."""
        began = time.monotonic()
        products = [self.product(100_000), self.product(40), self.product(25)]
        with self.stack.pg.connect() as conn:
            start_id = invariants.max_order_id(conn)
        load = Load(self.stack.api_url, self.customers, products, seed).start()
        ended = None
        try:
            time.sleep(WARMUP_SECONDS)
            ended = fault()
            time.sleep(COOLDOWN_SECONDS)
        finally:
            tally = load.stop()
            self.tallies.append(tally)
        stopped = time.monotonic()
        drained = invariants.wait_drained(self.stack.pg.dsn, DRAIN_BOUND_SECONDS)
        drain_seconds = None if drained is None else stopped + drained - (ended or stopped)
        with self.stack.pg.connect() as conn:
            statuses = invariants.statuses_since(conn, start_id)
            keyed = [c.user_id for k, c in self.customers.items() if k.startswith("keyed")]
            problems = invariants.check(conn, self.tallies, keyed)
        problems = self.exited_processes() + problems
        result = PhaseResult(name, tally, statuses, drain_seconds, problems, time.monotonic() - began)
        self.report(result.line())
        for problem in problems[:30]:
            self.report(f"    {problem}")
        return result

    def exited_processes(self) -> list[str]:
        """One problem per process of the stack (API, worker, beat) that exited on its own during
        the phase: a fault must never take a process down for good (a crash would otherwise show only
        as orders left pending)."""
        worker = self.stack.worker
        procs = [self.stack.api, worker.proc if worker else None, self.stack.beat]
        return [
            f"the {proc.name} process exited (code {proc.process.returncode}):\n{proc.log_tail(30)}"
            for proc in procs
            if proc is not None and not proc.alive()
        ]

    def report(self, line: str) -> None:
        LINES.append(line)
        print(line, flush=True)
        with self.report_path.open("a") as f:
            f.write(line + "\n")

    # -- tools of the faults ---------------------------------------------------------------------------

    def place(self, product_id: int, quantity: int = 1) -> int:
        """An order placed by the test itself (as the admin), counted in `direct`."""
        body = {"products": [{"product_id": product_id, "quantity": quantity}]}
        response = self.http.post("/orders", json=body, headers=self.admin)
        assert response.status_code == 202, response.text
        order_id = int(response.json()["id"])
        self.direct.accepted[order_id] = ((product_id, quantity),)
        return order_id

    @contextlib.contextmanager
    def product_locked(self, product_id: int) -> Iterator[None]:
        """Hold the product's row lock (FOR NO KEY UPDATE, the lock a stock writer takes) on a
        connection of the test's own: a reservation that needs it waits inside its transaction,
        while the intake can still store orders for the product (its foreign-key check takes FOR KEY
        SHARE)."""
        conn = psycopg.connect(self.stack.pg.dsn, connect_timeout=5)
        try:
            conn.execute("SELECT id FROM products WHERE id = %s FOR NO KEY UPDATE", (product_id,))
            yield
        finally:
            conn.rollback()
            conn.close()

    def lock_waiters(self) -> int:
        with self.stack.pg.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                (DB_NAME,),
            ).fetchone()
        return int(row[0]) if row else 0

    def wait_lock_waiters(self, count: int, within: float = 20) -> None:
        deadline = time.monotonic() + within
        while self.lock_waiters() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} sessions started waiting on a lock")
            time.sleep(0.05)

    def tasks_holding(self, order_id: int) -> list[dict]:
        """The worker's running reserve_orders/process_order tasks whose ids include `order_id`."""
        found = []
        for task in self.stack.active_tasks():
            args = task.get("args")
            if isinstance(args, str):
                args = ast.literal_eval(args)
            ids = args[0] if task.get("name") == RESERVE_ORDERS else args[:1]
            if task.get("name") in (RESERVE_ORDERS, PROCESS_ORDER) and order_id in ids:
                found.append({**task, "ids": list(ids)})
        return found

    def wait_task_holding(
        self, order_id: int, within: float = 20, count: int = 1, not_pid: int = 0
    ) -> list[dict]:
        """Wait until at least `count` running tasks hold `order_id` (none of pool process `not_pid`)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            tasks = [t for t in self.tasks_holding(order_id) if t.get("worker_pid") != not_pid]
            if len(tasks) >= count:
                return tasks
            time.sleep(0.1)
        raise StackError(f"fewer than {count} running tasks held order {order_id} within {within:g} s")

    def send(self, task: str, *args: object) -> None:
        """Deliver a task to the private broker (the project's task names, the orders queue)."""
        self.stack.on_broker(lambda app: app.send_task(task, args=args, queue=ORDERS_QUEUE))
